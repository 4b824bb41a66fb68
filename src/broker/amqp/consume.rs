//! Consumers: the pump that moves the instance queue's deliveries into the
//! sink, and the work consumer of the `Materialize` queue. They only feed
//! sinks and ack; they never declare or bind anything.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use amqprs::channel::{
    BasicAckArguments, BasicConsumeArguments, BasicNackArguments, BasicQosArguments, Channel,
    ConsumerMessage,
};
use amqprs::connection::Connection;
use amqprs::error::Error as AmqpError;
use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::{JoinError, JoinHandle};
use tokio::time::{Instant, timeout, timeout_at};
use tracing::Instrument;

use super::session::open_channel;
use super::{
    CONTROL_EXCHANGE, OPERATION_TIMEOUT, POSTS_EXCHANGE, SessionError, WORK_QUEUE, within,
};
use crate::broker::{Delivery, Incoming, Settled, Topic, Work};

/// Bounds the deliveries RabbitMQ pushes ahead of the sink, so that a slow
/// sink holds messages back in the queue rather than in this process.
pub(super) const PREFETCH: u16 = 256;
/// The same for the work queue, whose messages stay unacknowledged until
/// they have been applied.
const WORK_PREFETCH: u16 = 32;
/// How long a consumer that stops taking work (on `shutdown`, or when the
/// work sink is closed) waits for the work it already handed out to be done
/// before giving the rest back.
const WORK_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

pub(super) enum PumpEnd {
    ConsumerEnded,
    SinkClosed,
}

/// This session's consumer of the instance queue.
pub(super) struct InstanceConsumer {
    pub(super) tag: String,
    pub(super) pump: JoinHandle<PumpEnd>,
}

impl InstanceConsumer {
    /// Consumes `queue` on `channel`, whose requests only the supervisor
    /// makes (the pump only acks, which gets no reply).
    pub(super) async fn start(
        channel: &Channel,
        queue: &str,
        sink: mpsc::Sender<Incoming>,
    ) -> Result<Self, SessionError> {
        let qos = BasicQosArguments::new(0, PREFETCH, false);
        within("basic.qos", channel.basic_qos(qos)).await?;
        let consume = BasicConsumeArguments::new(queue, "")
            .manual_ack(true)
            .finish();
        let (tag, deliveries) = within("basic.consume", channel.basic_consume_rx(consume)).await?;
        let pump = tokio::spawn(pump(channel.clone(), deliveries, sink).in_current_span());
        Ok(Self { tag, pump })
    }
}

/// Completes when the session's instance-queue pump ends; never if it has
/// not started.
pub(super) async fn instance_ended(
    consumer: &mut Option<InstanceConsumer>,
) -> Result<PumpEnd, JoinError> {
    match consumer {
        Some(consumer) => (&mut consumer.pump).await,
        None => std::future::pending().await,
    }
}

/// Moves deliveries into the sink, waiting while it is full, and acks them
/// once it has taken them: with the prefetch limit, a full sink holds
/// RabbitMQ back.
async fn pump(
    channel: Channel,
    mut deliveries: mpsc::UnboundedReceiver<ConsumerMessage>,
    sink: mpsc::Sender<Incoming>,
) -> PumpEnd {
    let mut unacked = 0;
    while let Some(message) = deliveries.recv().await {
        // amqprs always fills both in.
        let (Some(deliver), Some(content)) = (message.deliver, message.content) else {
            continue;
        };
        let topic = match deliver.exchange().as_str() {
            POSTS_EXCHANGE => Some(Topic::Posts),
            CONTROL_EXCHANGE => Some(Topic::Control),
            exchange => {
                tracing::warn!(exchange, "dropping a delivery from an unexpected exchange");
                None
            }
        };
        if let Some(topic) = topic {
            let delivery = Delivery {
                topic,
                body: Bytes::from(content),
            };
            if sink.send(Incoming::Message(delivery)).await.is_err() {
                return PumpEnd::SinkClosed;
            }
        }
        unacked += 1;
        // One ack covers everything up to this tag: ack in batches, but not
        // later than when the buffer runs dry.
        if unacked >= PREFETCH / 2 || deliveries.is_empty() {
            let ack = BasicAckArguments::new(deliver.delivery_tag(), true);
            if channel.basic_ack(ack).await.is_err() {
                return PumpEnd::ConsumerEnded;
            }
            unacked = 0;
        }
    }
    PumpEnd::ConsumerEnded
}

/// Waits until the pump has stopped, so that nothing reaches the sink after.
pub(super) async fn stop_pump<T>(pump: JoinHandle<T>) {
    pump.abort();
    // A pump that ended may have been awaited by the supervisor already, and
    // polling a finished `JoinHandle` again panics.
    if !pump.is_finished() {
        let _ = pump.await;
    }
}

/// Opens a channel of its own for the work queue and consumes the queue on
/// it: acks must go to the channel the messages came from, and its requests
/// must not mix with the supervisor's on the topology channel.
pub(super) async fn consume_work(
    connection: &Connection,
    lost: Arc<Notify>,
) -> Result<(Channel, mpsc::UnboundedReceiver<ConsumerMessage>), SessionError> {
    let channel = open_channel(connection, &lost).await?;
    channel
        .basic_qos(BasicQosArguments::new(0, WORK_PREFETCH, false))
        .await?;
    let consume = BasicConsumeArguments::new(WORK_QUEUE, "")
        .manual_ack(true)
        .finish();
    let (_, deliveries) = channel.basic_consume_rx(consume).await?;
    Ok((channel, deliveries))
}

/// This session's consumer of the work queue.
pub(super) struct WorkConsumer {
    /// Only the supervisor makes requests on it (closing it); the pump only
    /// acks and nacks, which get no reply.
    channel: Channel,
    pub(super) pump: JoinHandle<WorkEnd>,
    drain: oneshot::Sender<()>,
}

impl WorkConsumer {
    pub(super) fn start(
        channel: Channel,
        deliveries: mpsc::UnboundedReceiver<ConsumerMessage>,
        sink: mpsc::Sender<Work>,
    ) -> Self {
        let (drain, drained) = oneshot::channel();
        let pump = work_pump(channel.clone(), deliveries, sink, drained);
        Self {
            channel,
            pump: tokio::spawn(pump.in_current_span()),
            drain,
        }
    }

    /// For shutdown: stops handing out work and waits, for a while, for the
    /// work handed out to be done, then closes the channel.
    pub(super) async fn stop(self) {
        let Self {
            channel,
            mut pump,
            drain,
        } = self;
        let _ = drain.send(());
        // The pump bounds its own wait; this only guards against a stuck one.
        if timeout(WORK_DRAIN_TIMEOUT + OPERATION_TIMEOUT, &mut pump)
            .await
            .is_err()
        {
            pump.abort();
        }
        if let Err(error) = within("channel.close", channel.close()).await {
            tracing::debug!(%error, "closing the work channel");
        }
    }

    /// Closing the channel cancels the consumer and has RabbitMQ requeue
    /// every message not acked on it, in queue order, before it moves the
    /// single active consumer on (a `basic.cancel` would let the next
    /// consumer go ahead while these messages are still held here).
    pub(super) async fn close(self) -> Result<(), SessionError> {
        self.pump.abort();
        within("channel.close", self.channel.close()).await
    }
}

/// Completes when the session's work pump ends; never if there is none.
pub(super) async fn work_ended(work: &mut Option<WorkConsumer>) -> Result<WorkEnd, JoinError> {
    match work {
        Some(work) => (&mut work.pump).await,
        None => std::future::pending().await,
    }
}

pub(super) enum WorkEnd {
    /// Asked to stop handing out work; what was handed out is settled, or
    /// was not done in time.
    Drained,
    /// Nobody takes work any more; settled like `Drained`.
    SinkClosed,
    /// The channel or the consumer is gone.
    ConsumerEnded,
}

/// Hands work messages to the sink one at a time, in delivery order, waiting
/// while it is full, and settles them on its channel in delivery order as
/// their `done` fires (ack; or, dead-lettered, nack without requeue, which
/// has RabbitMQ move it to the dead-letter queue) or is dropped (nack,
/// requeued): a run of applied messages done together (the worker's batch)
/// is one multiple ack. With the prefetch limit, work not yet done holds
/// RabbitMQ back.
async fn work_pump(
    channel: Channel,
    mut deliveries: mpsc::UnboundedReceiver<ConsumerMessage>,
    sink: mpsc::Sender<Work>,
    mut drain: oneshot::Receiver<()>,
) -> WorkEnd {
    let mut handed_out = FuturesUnordered::new();
    let mut settler = InOrder::default();
    // Received, waiting for room in the sink.
    let mut next: Option<(u64, Bytes)> = None;
    let end = loop {
        tokio::select! {
            biased;
            Some((tag, done)) = handed_out.next(), if !handed_out.is_empty() => {
                settler.done(tag, done);
                // The rest of a batch is done by now too: one ack for it.
                while let Some(Some((tag, done))) = handed_out.next().now_or_never() {
                    settler.done(tag, done);
                }
                if settler.settle(&channel).await.is_err() {
                    return WorkEnd::ConsumerEnded;
                }
            }
            _ = &mut drain => break WorkEnd::Drained,
            () = sink.closed() => break WorkEnd::SinkClosed,
            permit = sink.reserve(), if next.is_some() => match (permit, next.take()) {
                (Ok(permit), Some((tag, body))) => {
                    let (done, applied) = oneshot::channel();
                    permit.send(Work { body, done });
                    settler.handed_out(tag);
                    handed_out.push(async move { (tag, applied.await.ok()) });
                }
                _ => break WorkEnd::SinkClosed,
            },
            message = deliveries.recv(), if next.is_none() => match message {
                // amqprs always fills both in.
                Some(ConsumerMessage {
                    deliver: Some(deliver),
                    content: Some(content),
                    ..
                }) => next = Some((deliver.delivery_tag(), Bytes::from(content))),
                Some(_) => {}
                None => return WorkEnd::ConsumerEnded,
            },
        }
    };
    // Whatever is left unacked (including `next` and what RabbitMQ sent
    // ahead) goes back to the queue when the channel closes.
    let deadline = Instant::now() + WORK_DRAIN_TIMEOUT;
    while !handed_out.is_empty() {
        match timeout_at(deadline, handed_out.next()).await {
            Ok(Some((tag, done))) => {
                settler.done(tag, done);
                if settler.settle(&channel).await.is_err() {
                    return WorkEnd::ConsumerEnded;
                }
            }
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    pending = handed_out.len(),
                    "work not done within {WORK_DRAIN_TIMEOUT:?}; giving it back"
                );
                break;
            }
        }
    }
    end
}

/// Work handed out, settled on the channel in delivery order: a multiple
/// ack covers every unsettled delivery up to its tag, so it may only cover
/// a run of messages all applied, with everything before them settled.
#[derive(Debug, Default)]
struct InOrder {
    /// Tags handed out and not yet settled on the channel, oldest first,
    /// with how each was done once it is.
    waiting: VecDeque<(u64, Option<Option<Settled>>)>,
}

impl InOrder {
    fn handed_out(&mut self, tag: u64) {
        self.waiting.push_back((tag, None));
    }

    fn done(&mut self, tag: u64, done: Option<Settled>) {
        if let Some(entry) = self.waiting.iter_mut().find(|(t, _)| *t == tag) {
            entry.1 = Some(done);
        }
    }

    /// Settles the done messages at the front; a later message done before
    /// an earlier one waits for it.
    async fn settle(&mut self, channel: &Channel) -> Result<(), AmqpError> {
        let mut applied_up_to = None;
        while let Some(&(tag, Some(done))) = self.waiting.front() {
            self.waiting.pop_front();
            if done == Some(Settled::Applied) {
                applied_up_to = Some(tag);
                continue;
            }
            if let Some(up_to) = applied_up_to.take() {
                channel
                    .basic_ack(BasicAckArguments::new(up_to, true))
                    .await?;
            }
            // Dead-lettered (nack without requeue: RabbitMQ moves it to the
            // dead-letter queue), or handed back (`None`: requeued).
            let requeue = done.is_none();
            channel
                .basic_nack(BasicNackArguments::new(tag, false, requeue))
                .await?;
        }
        if let Some(up_to) = applied_up_to {
            channel
                .basic_ack(BasicAckArguments::new(up_to, true))
                .await?;
        }
        Ok(())
    }
}
