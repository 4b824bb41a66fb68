//! RabbitMQ through amqprs.
//!
//! One supervisor task per instance owns the connection: it connects,
//! declares the topology, consumes the instance queue and the work queue, and
//! takes binding changes in the order they were requested. amqprs does not
//! reconnect by itself, so on any loss the supervisor drops the session and
//! builds a new one with backoff, re-applying the wanted bindings. Publishes
//! bypass the supervisor: they go straight to the current session's
//! confirm-mode channel, so a slow binding change never holds them up.
//!
//! Binding changes come in bursts (every socket that connects binds the keys
//! of the authors it follows), and each costs a RabbitMQ round trip, which
//! amqprs cannot pipeline on one channel. So a session binds on
//! `BINDING_LANES` channels ("lanes"), each with a worker applying its
//! requests one at a time: a key always goes to the same lane, which keeps
//! the changes of one key in call order while other keys' go ahead in
//! parallel.
//!
//! `Materialize` work lives in one quorum queue shared by every instance
//! (replicated: a confirm means a majority of the nodes has it, and it
//! survives losing any one node), with a single active consumer: RabbitMQ
//! hands it, in order, to one
//! instance at a time and fails over to another one's consumer when that
//! instance's channel goes away. Each session consumes it on a channel of its
//! own and acks a message on that channel once its `done` fires; a session
//! that is lost takes its unacknowledged messages with it, and RabbitMQ
//! redelivers them. Delivery is at least once: work that session had put in
//! the sink is still there, its `done` now leading nowhere
//! (`done.is_closed()`), and comes again. Work handed back (`done` dropped)
//! is requeued and comes again after what was already handed out (a quorum
//! queue may also put it behind work published since). Work settled as
//! dead, or delivered more than the queue's delivery limit, is moved by
//! RabbitMQ to the `feed.materialize.dead` quorum queue (bounded, oldest
//! dropped), where it waits for a person.
//!
//! # Layout
//!
//! - `mod.rs`: the [`AmqpBroker`] handle, what it shares with the
//!   supervisor (the link state), and the names every part uses.
//! - `url`: parses `AMQP_URL` into connection arguments.
//! - `supervisor`: the task that owns the connection, reconnects, and
//!   signals a gap ahead of every session's messages.
//! - `session`: one connection with its topology declared and its
//!   consumers started; amqprs callbacks that report a loss.
//! - `bindings`: the wanted routing keys and the lanes that apply them.
//! - `consume`: the instance-queue pump and the work consumer.
//! - `publish`: the confirm-mode publisher and its confirm bookkeeping.

mod bindings;
mod consume;
mod publish;
mod session;
mod supervisor;
mod url;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use amqprs::error::Error as AmqpError;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::timeout;
use tracing::Instrument;

use super::{Applied, BrokerError, Incoming, Topic, Work};
use publish::Publisher;
use session::Target;
use supervisor::Supervisor;

const POSTS_EXCHANGE: &str = "feed.posts";
const CONTROL_EXCHANGE: &str = "feed.control";
/// The `Materialize` work queue, shared by every instance; published to
/// through the default exchange, which routes by queue name.
const WORK_QUEUE: &str = "feed.materialize";
/// For any single request to RabbitMQ: amqprs itself waits forever.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// AMQP short strings (names, routing keys) hold at most this many bytes;
/// amqprs panics on longer ones.
const MAX_SHORT_STRING: usize = 255;

/// How to reach RabbitMQ and what this instance's queue is called.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:port/vhost`, or several such URLs
    /// separated by commas (nodes of one cluster, tried in turn).
    pub url: String,
    /// Unique per running instance; names its queue.
    pub instance_id: String,
    /// How long this instance's queue outlives its last consumer: long
    /// enough to ride out a network blip or a RabbitMQ restart, short
    /// enough that a crashed instance's queue does not collect posts for
    /// long. At least 1 ms, at most about 24 days.
    pub queue_expiry: Duration,
}

impl AmqpSettings {
    /// Checks `url` as the broker will read it (see [`AmqpSettings::url`]),
    /// so that a mistake is reported at start-up. The error never echoes a
    /// URL: it holds a password.
    pub fn validate_url(url: &str) -> Result<(), String> {
        url::check_list(url)
    }
}

#[derive(Clone)]
pub(super) struct AmqpBroker {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
}

/// What the handles and the supervisor both see.
struct Shared {
    link: watch::Sender<Link>,
    reconnects: AtomicU64,
    gaps: AtomicU64,
}

#[derive(Clone)]
enum Link {
    Down,
    Up(Arc<Publisher>),
    Closed,
}

enum Command {
    Binding {
        key: String,
        bound: bool,
        applied: oneshot::Sender<()>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

impl AmqpBroker {
    /// A closed `work` sink (its receiver dropped) means this instance does
    /// no `Materialize` work: it does not consume the work queue.
    pub(super) fn start(
        settings: AmqpSettings,
        sink: mpsc::Sender<Incoming>,
        work: mpsc::Sender<Work>,
    ) -> Self {
        // Nothing can have been missed before the handle existed.
        let started = SystemTime::now();
        let (commands, requests) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            link: watch::Sender::new(Link::Down),
            reconnects: AtomicU64::new(0),
            gaps: AtomicU64::new(0),
        });
        // Without a supervisor the link stays down and every request is
        // dropped (which completes its `Applied`).
        match Target::new(&settings) {
            Ok(target) => {
                let span = tracing::info_span!("amqp", queue = %target.queue);
                let supervisor =
                    Supervisor::new(target, shared.clone(), requests, sink, work, started);
                tokio::spawn(supervisor.run().instrument(span));
            }
            Err(error) => {
                tracing::error!(%error, "invalid AMQP settings; the broker stays unavailable");
            }
        }
        Self { shared, commands }
    }

    pub(super) async fn publish(
        &self,
        topic: Topic,
        routing_key: &str,
        body: Bytes,
    ) -> Result<(), BrokerError> {
        if routing_key.len() > MAX_SHORT_STRING {
            return Err(BrokerError::Unavailable(format!(
                "routing key longer than {MAX_SHORT_STRING} bytes"
            )));
        }
        let publisher = match &*self.shared.link.borrow() {
            Link::Up(publisher) => publisher.clone(),
            Link::Down => {
                return Err(BrokerError::Unavailable("not connected to RabbitMQ".into()));
            }
            Link::Closed => return Err(BrokerError::Closed),
        };
        let result = publisher.publish(topic, routing_key, body).await;
        // A publish cut short by `shutdown` reports the shutdown, not the
        // connection it tore down.
        match result {
            Err(_) if self.shared.is_closed() => Err(BrokerError::Closed),
            result => result,
        }
    }

    pub(super) fn change_binding(&self, routing_key: &str, bound: bool) -> Applied {
        if routing_key.len() > MAX_SHORT_STRING {
            tracing::error!(
                routing_key,
                "routing key longer than {MAX_SHORT_STRING} bytes; binding unchanged"
            );
            return Applied::done();
        }
        let (applied, receiver) = oneshot::channel();
        // A stopped supervisor drops the request, and with it `applied`,
        // which completes the returned future.
        let _ = self.commands.send(Command::Binding {
            key: routing_key.to_owned(),
            bound,
            applied,
        });
        Applied::pending(receiver)
    }

    pub(super) fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    pub(super) fn gaps(&self) -> u64 {
        self.shared.gaps.load(Ordering::Relaxed)
    }

    pub(super) fn is_connected(&self) -> bool {
        matches!(*self.shared.link.borrow(), Link::Up(_))
    }

    pub(super) async fn connected(&self) {
        let mut link = self.shared.link.subscribe();
        // `Shared` holds the sender for as long as this handle exists.
        let _ = link.wait_for(|link| matches!(link, Link::Up(_))).await;
    }

    pub(super) async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Shutdown { done }).is_ok() {
            let _ = finished.await;
        }
        // Covers a supervisor that never started (bad settings).
        self.shared.link.send_replace(Link::Closed);
    }
}

impl Shared {
    fn is_closed(&self) -> bool {
        matches!(*self.link.borrow(), Link::Closed)
    }
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("{0} timed out")]
    Timeout(&'static str),
}

async fn within<T>(
    request: &'static str,
    reply: impl Future<Output = Result<T, AmqpError>>,
) -> Result<T, SessionError> {
    match timeout(OPERATION_TIMEOUT, reply).await {
        Ok(reply) => Ok(reply?),
        Err(_) => Err(SessionError::Timeout(request)),
    }
}

fn unavailable(reason: impl ToString) -> BrokerError {
    BrokerError::Unavailable(reason.to_string())
}
