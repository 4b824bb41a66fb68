//! Carries events between server instances.
//!
//! Three topics: `Posts`, routed by a key derived from the author (each
//! instance binds only the keys its sockets need); `Control`, which every
//! instance hears (follow changes; rare); and `Materialize`, a durable work
//! queue whose messages are each handled once, in order, by one instance at
//! a time (feed cache updates), and moved to a dead-letter queue when the
//! instance gives up on one ([`Settled::DeadLetter`]). Two implementations behind one handle: an
//! in-process [`MemoryBus`] (the default, and for tests) and RabbitMQ.
//!
//! With RabbitMQ, an instance's queue carries only live traffic and may be
//! lost (its node died, it expired while the instance was cut off or
//! frozen, it was declared anew): the broker then hands the hub a [`Gap`]
//! ahead of the messages that follow it, and the hub recovers what it may
//! have missed from the database. The broker only signals; it never
//! recovers anything itself.

mod amqp;
mod memory;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

pub use amqp::AmqpSettings;
pub use memory::MemoryBus;

/// Which stream of events a message belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// New posts; delivered only where the routing key is bound.
    Posts,
    /// Follow changes; delivered to every instance.
    Control,
    /// Feed cache work; each message goes to one instance, as a [`Work`].
    Materialize,
}

/// One message received by this instance. The body is exactly what was
/// published, shared, not copied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub topic: Topic,
    pub body: Bytes,
}

/// What this instance's broker hands the hub, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A `Posts` or `Control` message.
    Message(Delivery),
    /// `Posts` and `Control` messages published since `since` may not have
    /// reached this instance: its queue may have been lost, expired or
    /// declared anew.
    Gap(Gap),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    pub since: std::time::SystemTime,
}

/// One message of the `Materialize` queue. Send on `done` once it is
/// settled; dropping `done` instead hands the message back to be redelivered.
#[derive(Debug)]
pub struct Work {
    pub body: Bytes,
    pub done: oneshot::Sender<Settled>,
}

/// How a piece of work was settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// Applied, or nothing left to do for it: gone from the queue.
    Applied,
    /// It can never be applied: moved to the dead-letter queue
    /// (`feed.materialize.dead`; in process, [`MemoryBus::dead_letters`]),
    /// where it waits for a person, out of the way of the work behind it.
    DeadLetter,
}

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Not connected, or the broker did not confirm the message: retry later.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker shut this handle down (the instance is stopping).
    #[error("broker closed")]
    Closed,
}

/// Which broker to use.
pub enum BrokerKind {
    Memory(MemoryBus),
    Amqp(AmqpSettings),
}

/// A cheap-to-clone handle to this instance's broker connection.
#[derive(Clone)]
pub struct Broker {
    inner: Inner,
}

#[derive(Clone)]
enum Inner {
    Memory(memory::MemoryBroker),
    Amqp(amqp::AmqpBroker),
}

impl Broker {
    /// Starts the broker for this instance: `Posts` and `Control` deliveries
    /// (and, with RabbitMQ, a [`Gap`] ahead of every new session's
    /// messages) go to `sink`, `Materialize` messages to `work`. Returns at
    /// once: with RabbitMQ down, the connection is retried in the background
    /// and publishes fail with `Unavailable` until it is up.
    pub fn start(kind: BrokerKind, sink: mpsc::Sender<Incoming>, work: mpsc::Sender<Work>) -> Self {
        let inner = match kind {
            BrokerKind::Memory(bus) => Inner::Memory(bus.join(sink, work)),
            BrokerKind::Amqp(settings) => {
                Inner::Amqp(amqp::AmqpBroker::start(settings, sink, work))
            }
        };
        Self { inner }
    }

    /// Publishes one message. `Ok` means the broker has taken responsibility
    /// for it (RabbitMQ: a publisher confirm arrived).
    pub async fn publish(
        &self,
        topic: Topic,
        routing_key: &str,
        body: Bytes,
    ) -> Result<(), BrokerError> {
        match &self.inner {
            Inner::Memory(broker) => broker.publish(topic, routing_key, body).await,
            Inner::Amqp(broker) => broker.publish(topic, routing_key, body).await,
        }
    }

    /// Starts receiving `Posts` published with `routing_key`.
    ///
    /// The request is queued when this is called, not when the returned
    /// future is polled: binds and unbinds take effect in call order, so a
    /// caller that orders its calls under a lock gets that order. The future
    /// completes once the binding is in place (or, while disconnected, once
    /// it is recorded: every binding is re-applied on reconnect).
    pub fn bind(&self, routing_key: &str) -> Applied {
        match &self.inner {
            Inner::Memory(broker) => broker.bind(routing_key),
            Inner::Amqp(broker) => broker.change_binding(routing_key, true),
        }
    }

    /// Stops receiving `Posts` with `routing_key`; ordered like [`Broker::bind`].
    pub fn unbind(&self, routing_key: &str) -> Applied {
        match &self.inner {
            Inner::Memory(broker) => broker.unbind(routing_key),
            Inner::Amqp(broker) => broker.change_binding(routing_key, false),
        }
    }

    /// How many times the connection to the broker was re-established.
    pub fn reconnects(&self) -> u64 {
        match &self.inner {
            Inner::Memory(_) => 0,
            Inner::Amqp(broker) => broker.reconnects(),
        }
    }

    /// How many gaps were signalled to the sink (one per RabbitMQ session,
    /// the first included).
    pub fn gaps(&self) -> u64 {
        match &self.inner {
            Inner::Memory(_) => 0,
            Inner::Amqp(broker) => broker.gaps(),
        }
    }

    /// Whether a session with the broker is up (in-process: always).
    pub fn is_connected(&self) -> bool {
        match &self.inner {
            Inner::Memory(_) => true,
            Inner::Amqp(broker) => broker.is_connected(),
        }
    }

    /// Completes once a session with the broker is up (in-process: at
    /// once). Never completes after `shutdown`: select it against your own
    /// stop signal.
    pub async fn connected(&self) {
        match &self.inner {
            Inner::Memory(_) => {}
            Inner::Amqp(broker) => broker.connected().await,
        }
    }

    /// Leaves the broker: this instance's queue is deleted and nothing more
    /// is delivered.
    pub async fn shutdown(&self) {
        match &self.inner {
            Inner::Memory(broker) => broker.leave(),
            Inner::Amqp(broker) => broker.shutdown().await,
        }
    }
}

/// Completes when a binding change has been applied.
pub struct Applied(Option<oneshot::Receiver<()>>);

impl Applied {
    pub(crate) fn done() -> Self {
        Self(None)
    }

    pub(crate) fn pending(receiver: oneshot::Receiver<()>) -> Self {
        Self(Some(receiver))
    }
}

impl std::future::Future for Applied {
    type Output = ();

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        match &mut self.0 {
            None => std::task::Poll::Ready(()),
            // A dropped sender means the broker stopped: nothing left to wait for.
            Some(receiver) => std::pin::Pin::new(receiver).poll(cx).map(|_| ()),
        }
    }
}
