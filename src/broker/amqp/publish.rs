//! Publishing: one confirm-mode channel per session, and the bookkeeping
//! that matches RabbitMQ's confirms and returns to waiting publishes. A
//! publish never reports success before RabbitMQ has confirmed it.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use amqprs::channel::{BasicPublishArguments, Channel, ConfirmSelectArguments};
use amqprs::connection::Connection;
use amqprs::{BasicProperties, DELIVERY_MODE_PERSISTENT, DELIVERY_MODE_TRANSIENT};
use bytes::Bytes;
use tokio::sync::{Notify, oneshot};
use tokio::time::{Instant, timeout_at};

use super::session::ChannelEvents;
use super::{CONTROL_EXCHANGE, POSTS_EXCHANGE, SessionError, WORK_QUEUE, unavailable, within};
use crate::broker::{BrokerError, Topic};

const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

/// The confirm-mode channel of one session.
pub(super) struct Publisher {
    channel: Channel,
    /// The delivery tag RabbitMQ will give the next publish: it counts the
    /// publishes on the channel, so the lock is held until the message has
    /// been queued for the socket, keeping tags in wire order.
    next_tag: tokio::sync::Mutex<u64>,
    pub(super) confirms: Arc<Confirms>,
}

impl Publisher {
    pub(super) async fn open(
        connection: &Connection,
        lost: Arc<Notify>,
    ) -> Result<Self, SessionError> {
        let channel = connection.open_channel(None).await?;
        let confirms = Arc::new(Confirms::default());
        channel
            .register_callback(ChannelEvents {
                lost,
                confirms: Some(confirms.clone()),
            })
            .await?;
        within(
            "confirm.select",
            channel.confirm_select(ConfirmSelectArguments::default()),
        )
        .await?;
        Ok(Self {
            channel,
            next_tag: tokio::sync::Mutex::new(1),
            confirms,
        })
    }

    pub(super) async fn publish(
        &self,
        topic: Topic,
        routing_key: &str,
        body: Bytes,
    ) -> Result<(), BrokerError> {
        let deadline = Instant::now() + CONFIRM_TIMEOUT;
        let (tag, confirm) = timeout_at(deadline, self.send(topic, routing_key, body))
            .await
            .map_err(|_| unavailable("the connection is too busy to take the message"))??;
        match timeout_at(deadline, confirm).await {
            Ok(Ok(Outcome::Acked)) => Ok(()),
            Ok(Ok(Outcome::Nacked)) => Err(unavailable("RabbitMQ rejected the message (nack)")),
            Ok(Ok(Outcome::Returned)) => Err(unavailable(format!(
                "RabbitMQ could not route the message: is the {WORK_QUEUE} queue missing?"
            ))),
            Ok(Err(_)) => Err(unavailable("the channel closed before RabbitMQ confirmed")),
            Err(_) => {
                self.confirms.forget(tag);
                Err(unavailable("RabbitMQ did not confirm within 5 s"))
            }
        }
    }

    /// Cancel-safe: dropped before the message is queued, the tag stays
    /// unused and the next publish takes it over (and its stale waiter).
    async fn send(
        &self,
        topic: Topic,
        routing_key: &str,
        body: Bytes,
    ) -> Result<(u64, oneshot::Receiver<Outcome>), BrokerError> {
        // Work must survive a RabbitMQ restart, and must not vanish unrouted:
        // it is mandatory, and a return fails the publish.
        let work = topic == Topic::Materialize;
        let (exchange, routing_key) = match topic {
            Topic::Posts => (POSTS_EXCHANGE, routing_key),
            Topic::Control => (CONTROL_EXCHANGE, routing_key),
            Topic::Materialize => ("", WORK_QUEUE),
        };
        let arguments = BasicPublishArguments::new(exchange, routing_key)
            .mandatory(work)
            .finish();
        let mut properties = BasicProperties::default();
        let mut next_tag = self.next_tag.lock().await;
        let tag = *next_tag;
        if work {
            // A return carries no delivery tag: this tells which publish it was.
            properties
                .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
                .with_message_id(&tag.to_string());
        } else {
            properties.with_delivery_mode(DELIVERY_MODE_TRANSIENT);
        }
        // Registered first: the confirm can arrive before `basic_publish`
        // returns.
        let confirm = self.confirms.expect(tag)?;
        if let Err(error) = self
            .channel
            .basic_publish(properties, Vec::from(body), arguments)
            .await
        {
            self.confirms.forget(tag);
            return Err(unavailable(error));
        }
        *next_tag += 1;
        Ok((tag, confirm))
    }
}

/// How RabbitMQ answered a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acked,
    Nacked,
    /// Acked, but returned first: a mandatory message no queue took.
    Returned,
}

/// Publishers waiting for their confirm, by delivery tag. A waiter gets the
/// [`Outcome`], or is dropped (its receiver sees an error) when the channel
/// fails.
#[derive(Default)]
pub(super) struct Confirms(Mutex<ConfirmState>);

#[derive(Default)]
struct ConfirmState {
    waiters: BTreeMap<u64, oneshot::Sender<Outcome>>,
    /// Returned and not yet confirmed: RabbitMQ sends the return first.
    returned: BTreeSet<u64>,
    failed: bool,
}

impl Confirms {
    fn state(&self) -> MutexGuard<'_, ConfirmState> {
        // Every update leaves the map consistent, so a panic elsewhere while
        // holding the lock does not invalidate it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expect(&self, tag: u64) -> Result<oneshot::Receiver<Outcome>, BrokerError> {
        let mut state = self.state();
        if state.failed {
            return Err(unavailable("the publish channel closed"));
        }
        let (waiter, confirm) = oneshot::channel();
        state.waiters.insert(tag, waiter);
        Ok(confirm)
    }

    fn forget(&self, tag: u64) {
        self.state().waiters.remove(&tag);
    }

    pub(super) fn returned(&self, tag: u64) {
        let mut state = self.state();
        if !state.failed {
            state.returned.insert(tag);
        }
    }

    pub(super) fn settle(&self, tag: u64, multiple: bool, acked: bool) {
        let (settled, returned) = {
            let mut state = self.state();
            if multiple {
                let later = tag.saturating_add(1);
                let waiters = state.waiters.split_off(&later);
                let returned = state.returned.split_off(&later);
                (
                    std::mem::replace(&mut state.waiters, waiters),
                    std::mem::replace(&mut state.returned, returned),
                )
            } else {
                let waiter = state.waiters.remove_entry(&tag);
                let returned = state.returned.take(&tag);
                (waiter.into_iter().collect(), returned.into_iter().collect())
            }
        };
        for (tag, waiter) in settled {
            let outcome = match (acked, returned.contains(&tag)) {
                (false, _) => Outcome::Nacked,
                (true, true) => Outcome::Returned,
                (true, false) => Outcome::Acked,
            };
            let _ = waiter.send(outcome);
        }
    }

    pub(super) fn fail_all(&self) {
        let mut state = self.state();
        state.failed = true;
        state.waiters.clear();
        state.returned.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settles_single_and_multiple_confirms() {
        let confirms = Confirms::default();
        let mut receivers: Vec<_> = (1..=4).map(|tag| confirms.expect(tag).unwrap()).collect();
        confirms.settle(2, false, true);
        assert_eq!(receivers[1].try_recv(), Ok(Outcome::Acked));
        assert!(receivers[0].try_recv().is_err());
        confirms.settle(3, true, false);
        assert_eq!(receivers[0].try_recv(), Ok(Outcome::Nacked));
        assert_eq!(receivers[2].try_recv(), Ok(Outcome::Nacked));
        assert!(receivers[3].try_recv().is_err());
        confirms.fail_all();
        assert!(matches!(
            receivers[3].try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(confirms.expect(5).is_err());
    }

    #[test]
    fn a_returned_message_fails_its_confirm_only() {
        let confirms = Confirms::default();
        let mut receivers: Vec<_> = (1..=4).map(|tag| confirms.expect(tag).unwrap()).collect();
        confirms.returned(2);
        confirms.returned(4);
        confirms.settle(2, true, true);
        assert_eq!(receivers[0].try_recv(), Ok(Outcome::Acked));
        assert_eq!(receivers[1].try_recv(), Ok(Outcome::Returned));
        confirms.settle(3, false, true);
        assert_eq!(receivers[2].try_recv(), Ok(Outcome::Acked));
        confirms.settle(4, false, true);
        assert_eq!(receivers[3].try_recv(), Ok(Outcome::Returned));
        assert!(confirms.state().returned.is_empty());
    }
}
