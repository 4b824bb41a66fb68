//! One session: a connection with the topology declared, the publisher,
//! the binding lanes and the consumers set up on it, and the amqprs
//! callbacks that report its loss. A session never reconnects itself: on a
//! loss it is abandoned and the supervisor builds a new one.

use std::sync::Arc;
use std::time::Duration;

use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::{
    BasicCancelArguments, Channel, ExchangeDeclareArguments, ExchangeType, QueueBindArguments,
    QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::error::Error as AmqpError;
use amqprs::{
    Ack, BasicProperties, Cancel, Close, CloseChannel, FieldTable, FieldValue, Nack, Return,
};
use async_trait::async_trait;
use tokio::sync::{Notify, mpsc};
use tokio::time::timeout;

use super::bindings::{Lanes, OnServer};
use super::consume::{InstanceConsumer, WorkConsumer, consume_work, stop_pump};
use super::publish::{Confirms, Publisher};
use super::url::{connection_list, describe};
use super::{
    AmqpSettings, CONTROL_EXCHANGE, MAX_SHORT_STRING, OPERATION_TIMEOUT, POSTS_EXCHANGE,
    SessionError, WORK_QUEUE, within,
};
use crate::broker::{Incoming, Work};

const QUEUE_PREFIX: &str = "livefeed.instance.";
/// Where work that can never be applied goes.
const DEAD_LETTER_QUEUE: &str = "feed.materialize.dead";
const DEAD_LETTERS_KEPT: i32 = 100_000;
/// Deliveries of one work message after which RabbitMQ dead-letters it:
/// far more than the handovers of a healthy message (an instance stopping
/// or losing its link hands back what it held), few enough that a message
/// that crashes every instance taking it is soon out of the way.
const WORK_DELIVERY_LIMIT: i32 = 20;
/// For the round trip that proves the instance queue is still there after
/// this process was frozen or starved.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(5);

/// The validated settings, in the form every connection attempt needs.
pub(super) struct Target {
    /// Tried in turn: several nodes of one cluster, for a deployment
    /// without a balancer in front of them.
    connections: Vec<OpenConnectionArguments>,
    pub(super) queue: String,
    queue_arguments: FieldTable,
    work_queue_arguments: FieldTable,
    dead_letter_queue_arguments: FieldTable,
}

impl Target {
    pub(super) fn new(settings: &AmqpSettings) -> Result<Self, String> {
        let queue = format!("{QUEUE_PREFIX}{}", settings.instance_id);
        if queue.len() > MAX_SHORT_STRING {
            return Err(format!(
                "instance id too long: queue names hold at most {MAX_SHORT_STRING} bytes"
            ));
        }
        let mut connections = connection_list(&settings.url)?;
        for connection in &mut connections {
            connection.connection_name(&format!("livefeed {}", settings.instance_id));
        }
        let expiry = i32::try_from(settings.queue_expiry.as_millis())
            .ok()
            .filter(|expiry| *expiry > 0)
            .ok_or("the queue expiry must be from 1 ms to about 24 days")?;
        // The instance queue carries only live traffic, which the instance
        // recovers by itself when it signals a gap; it may be lost with its
        // node. So it is a classic queue, not durable: a durable classic
        // queue whose node is down cannot be declared again on another node
        // until that node is back, which would keep the instance from
        // reconnecting. Not exclusive and with `x-expires`: a short blip
        // keeps the queue, its bindings and its messages for the next
        // session, while the queue of a crashed or frozen instance goes once
        // unused for the expiry. On the node the client is connected to, so
        // that it lives and dies with the connection's node.
        let queue_arguments = arguments([
            ("x-expires", FieldValue::I(expiry)),
            ("x-queue-master-locator", FieldValue::from("client-local")),
        ])?;
        // A quorum queue: a publisher confirm means the message is on a
        // majority of the nodes, so losing any one node loses no work and
        // (with a new leader elected) stops none. A message nacked without
        // requeue (the worker gave up on it), or delivered more than
        // `WORK_DELIVERY_LIMIT` times (it keeps killing its consumers), goes
        // to the dead-letter queue through the default exchange, out of
        // the way of the work behind it.
        let work_queue_arguments = arguments([
            ("x-queue-type", FieldValue::from("quorum")),
            ("x-single-active-consumer", FieldValue::t(true)),
            ("x-delivery-limit", FieldValue::I(WORK_DELIVERY_LIMIT)),
            ("x-dead-letter-exchange", FieldValue::from("")),
            (
                "x-dead-letter-routing-key",
                FieldValue::from(DEAD_LETTER_QUEUE),
            ),
        ])?;
        // Replicated like the work queue; bounded, dropping its oldest, so
        // a flood of bad events cannot fill RabbitMQ.
        let dead_letter_queue_arguments = arguments([
            ("x-queue-type", FieldValue::from("quorum")),
            ("x-max-length", FieldValue::I(DEAD_LETTERS_KEPT)),
        ])?;
        Ok(Self {
            connections,
            queue,
            queue_arguments,
            work_queue_arguments,
            dead_letter_queue_arguments,
        })
    }

    /// How many URLs there are to try; at least one.
    pub(super) fn places(&self) -> usize {
        self.connections.len()
    }

    /// The URL numbered `place` (wrapping around), for logs.
    pub(super) fn describe(&self, place: usize) -> String {
        describe(&self.connections[place % self.connections.len()])
    }
}

fn arguments<const N: usize>(pairs: [(&str, FieldValue); N]) -> Result<FieldTable, String> {
    let mut table = FieldTable::new();
    for (name, value) in pairs {
        let name = name
            .try_into()
            .map_err(|_| format!("queue argument name too long: {name}"))?;
        table.insert(name, value);
    }
    Ok(table)
}

/// One connection with everything set up on it.
pub(super) struct Session {
    pub(super) connection: Connection,
    /// Declares and consumes; only the supervisor uses it, one request at a
    /// time (amqprs mixes up concurrent requests of one kind on a channel).
    topology: Channel,
    /// Applies binding changes.
    pub(super) lanes: Lanes,
    pub(super) publisher: Arc<Publisher>,
    target: Arc<Target>,
    /// `None` until the supervisor starts it, once it has put the gap of
    /// this session in the sink.
    pub(super) instance: Option<InstanceConsumer>,
    /// `None` while this instance takes no work (its work sink is closed).
    pub(super) work: Option<WorkConsumer>,
    /// Signalled by amqprs callbacks when RabbitMQ closes the connection, a
    /// channel or the consumer.
    pub(super) lost: Arc<Notify>,
}

impl Session {
    /// Connects to the URL numbered `place` (wrapping around).
    pub(super) async fn open(
        target: Arc<Target>,
        place: usize,
        work: mpsc::Sender<Work>,
        on_server: OnServer,
    ) -> Result<Self, SessionError> {
        let arguments = &target.connections[place % target.connections.len()];
        let connection = Connection::open(arguments).await?;
        let lost = Arc::new(Notify::new());
        connection
            .register_callback(ConnectionEvents { lost: lost.clone() })
            .await?;
        let topology = open_channel(&connection, &lost).await?;
        declare(&topology, &target).await?;
        let publisher = Arc::new(Publisher::open(&connection, lost.clone()).await?);
        let lanes = Lanes::open(&connection, &lost, &target, &on_server).await?;
        let work_deliveries = match work.is_closed() {
            true => None,
            false => Some(consume_work(&connection, lost.clone()).await?),
        };
        // Only once nothing can fail any more: no work reaches the sink from
        // a session that is then dropped.
        let work = work_deliveries
            .map(|(channel, deliveries)| WorkConsumer::start(channel, deliveries, work));
        Ok(Self {
            connection,
            topology,
            lanes,
            publisher,
            target,
            instance: None,
            work,
            lost,
        })
    }

    /// Starts consuming the instance queue into `sink`; the consumer
    /// belongs in `instance`.
    pub(super) async fn consume(
        &self,
        sink: mpsc::Sender<Incoming>,
    ) -> Result<InstanceConsumer, SessionError> {
        InstanceConsumer::start(&self.topology, &self.target.queue, sink).await
    }

    /// Proves that the instance queue still exists, with one bounded round
    /// trip: a passive declare, which fails (and closes the channel) if the
    /// queue is gone.
    pub(super) async fn verify(&self) -> Result<(), SessionError> {
        let declare = QueueDeclareArguments::new(&self.target.queue)
            .passive(true)
            .finish();
        match timeout(VERIFY_TIMEOUT, self.topology.queue_declare(declare)).await {
            Ok(reply) => reply.map(|_| ()).map_err(SessionError::from),
            Err(_) => Err(SessionError::Timeout("queue.declare (passive)")),
        }
    }

    /// After a loss: nothing to clean up on the server, which keeps the queue
    /// for the next session (unless it was lost too).
    pub(super) async fn abandon(mut self) {
        self.publisher.confirms.fail_all();
        if let Some(consumer) = self.instance {
            stop_pump(consumer.pump).await;
        }
        // What they had not applied is still wanted: the next session
        // applies it.
        self.lanes.stop().await;
        // RabbitMQ requeues what the lost channel had not acked; the `done`s
        // still out there now fire into nothing.
        if let Some(work) = self.work {
            stop_pump(work.pump).await;
        }
        // Usually gone already; if only a channel failed, this ends the rest.
        let _ = timeout(OPERATION_TIMEOUT, self.connection.close()).await;
    }

    /// For shutdown: stop consuming, delete the queue, close.
    pub(super) async fn leave(mut self) {
        // Deleting the queue deletes every binding: changes still queued
        // are dropped, which completes them.
        self.lanes.stop().await;
        let consumer_tag = match self.instance.take() {
            Some(InstanceConsumer { tag, pump }) => {
                stop_pump(pump).await;
                Some(tag)
            }
            None => None,
        };
        // First, so that another instance takes over the work promptly.
        if let Some(work) = self.work {
            work.stop().await;
        }
        if let Some(tag) = consumer_tag {
            let cancel = BasicCancelArguments::new(&tag);
            if let Err(error) = within("basic.cancel", self.topology.basic_cancel(cancel)).await {
                tracing::warn!(%error, "cannot cancel the consumer");
            }
        }
        let delete = QueueDeleteArguments::new(&self.target.queue);
        match within("queue.delete", self.topology.queue_delete(delete)).await {
            Ok(_) => tracing::info!("left RabbitMQ; queue deleted"),
            Err(error) => tracing::warn!(%error, "cannot delete the queue; it expires unused"),
        }
        self.publisher.confirms.fail_all();
        if let Err(error) = within("connection.close", self.connection.close()).await {
            tracing::debug!(%error, "closing the connection");
        }
    }
}

/// A channel whose closing by RabbitMQ signals `lost`.
pub(super) async fn open_channel(
    connection: &Connection,
    lost: &Arc<Notify>,
) -> Result<Channel, AmqpError> {
    let channel = connection.open_channel(None).await?;
    channel
        .register_callback(ChannelEvents {
            lost: lost.clone(),
            confirms: None,
        })
        .await?;
    Ok(channel)
}

async fn declare(channel: &Channel, target: &Target) -> Result<(), SessionError> {
    let exchanges = [
        (POSTS_EXCHANGE, ExchangeType::Direct),
        (CONTROL_EXCHANGE, ExchangeType::Fanout),
    ];
    for (name, kind) in exchanges {
        let exchange = ExchangeDeclareArguments::of_type(name, kind)
            .durable(true)
            .finish();
        within("exchange.declare", channel.exchange_declare(exchange)).await?;
    }
    let queue = QueueDeclareArguments::new(&target.queue)
        .arguments(target.queue_arguments.clone())
        .finish();
    within("queue.declare", channel.queue_declare(queue)).await?;
    let control = QueueBindArguments::new(&target.queue, CONTROL_EXCHANGE, "");
    within("queue.bind", channel.queue_bind(control)).await?;
    // Declared by every instance, consuming or not, so that work published
    // before any consumer ever connected is kept; the dead-letter queue
    // first, so nothing is dead-lettered into nowhere.
    let dead = QueueDeclareArguments::durable_client_named(DEAD_LETTER_QUEUE)
        .arguments(target.dead_letter_queue_arguments.clone())
        .finish();
    within("queue.declare", channel.queue_declare(dead)).await?;
    let work = QueueDeclareArguments::durable_client_named(WORK_QUEUE)
        .arguments(target.work_queue_arguments.clone())
        .finish();
    within("queue.declare", channel.queue_declare(work)).await?;
    Ok(())
}

/// RabbitMQ refuses to declare a queue with other arguments (such as
/// another type, or no dead-lettering) under an existing name:
/// PRECONDITION_FAILED, "inequivalent arg", naming the first argument that
/// differs.
fn is_older_work_queue(close: &CloseChannel) -> bool {
    const PRECONDITION_FAILED: u16 = 406;
    let text = close.reply_text();
    close.reply_code() == PRECONDITION_FAILED
        && text.contains("inequivalent arg")
        && text.contains(&format!("'{WORK_QUEUE}'"))
}

struct ConnectionEvents {
    lost: Arc<Notify>,
}

#[async_trait]
impl ConnectionCallback for ConnectionEvents {
    async fn close(&mut self, _: &Connection, close: Close) -> Result<(), AmqpError> {
        tracing::warn!(%close, "RabbitMQ is closing the connection");
        self.lost.notify_one();
        Ok(())
    }

    async fn blocked(&mut self, _: &Connection, reason: String) {
        tracing::warn!(%reason, "RabbitMQ blocked publishing on this connection");
    }

    async fn unblocked(&mut self, _: &Connection) {
        tracing::info!("RabbitMQ unblocked publishing on this connection");
    }

    async fn secret_updated(&mut self, _: &Connection) {}
}

/// `confirms` is set on the publish channel only.
pub(super) struct ChannelEvents {
    pub(super) lost: Arc<Notify>,
    pub(super) confirms: Option<Arc<Confirms>>,
}

#[async_trait]
impl ChannelCallback for ChannelEvents {
    async fn close(&mut self, _: &Channel, close: CloseChannel) -> Result<(), AmqpError> {
        tracing::warn!(%close, "RabbitMQ closed a channel");
        if is_older_work_queue(&close) {
            tracing::error!(
                "the {WORK_QUEUE} queue exists with other arguments, left by an older \
                 version (a classic queue, or a quorum queue without dead-lettering)? Stop \
                 the older instances, let them drain it \
                 (rabbitmqctl list_queues name type arguments messages), then delete it \
                 (rabbitmqctl delete_queue {WORK_QUEUE}): the next connection declares it anew"
            );
        }
        if let Some(confirms) = &self.confirms {
            confirms.fail_all();
        }
        self.lost.notify_one();
        Ok(())
    }

    /// RabbitMQ cancels a consumer when its queue is deleted under it (the
    /// instance queue's node died while this connection is on another one)
    /// or, for the work queue, when it cannot keep the consumer through a
    /// leader change. amqprs announces the `consumer_cancel_notify`
    /// capability, without which RabbitMQ would drop the consumer silently.
    /// The session is then lost: the next one declares the queue anew,
    /// behind a gap.
    async fn cancel(&mut self, _: &Channel, cancel: Cancel) -> Result<(), AmqpError> {
        tracing::warn!(consumer = %cancel.consumer_tag(), "RabbitMQ cancelled the consumer");
        self.lost.notify_one();
        Ok(())
    }

    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, AmqpError> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        if let Some(confirms) = &self.confirms {
            confirms.settle(ack.delivery_tag(), ack.mutiple(), true);
        }
    }

    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        if let Some(confirms) = &self.confirms {
            confirms.settle(nack.delivery_tag(), nack.multiple(), false);
        }
    }

    /// Only work is `mandatory`; its message id is its delivery tag.
    async fn publish_return(
        &mut self,
        _: &Channel,
        ret: Return,
        properties: BasicProperties,
        _: Vec<u8>,
    ) {
        tracing::warn!(%ret, "RabbitMQ returned an unroutable message");
        let tag = properties.message_id().and_then(|id| id.parse().ok());
        if let (Some(confirms), Some(tag)) = (&self.confirms, tag) {
            confirms.returned(tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn settings(instance_id: &str, queue_expiry: Duration) -> AmqpSettings {
        AmqpSettings {
            url: "amqp://rabbit".into(),
            instance_id: instance_id.into(),
            queue_expiry,
        }
    }

    #[test]
    fn rejects_names_amqp_cannot_carry() {
        let long = "x".repeat(MAX_SHORT_STRING);
        assert!(Target::new(&settings(&long, Duration::from_secs(60))).is_err());
    }

    #[test]
    fn takes_the_queue_expiry_in_milliseconds_within_bounds() {
        let target = Target::new(&settings("a", Duration::from_secs(90))).unwrap();
        let expires = target
            .queue_arguments
            .as_ref()
            .get(&"x-expires".try_into().unwrap());
        assert!(
            matches!(expires, Some(FieldValue::I(90_000))),
            "{expires:?}"
        );
        for expiry in [Duration::ZERO, Duration::from_secs(30 * 86_400)] {
            assert!(Target::new(&settings("a", expiry)).is_err(), "{expiry:?}");
        }
    }
}
