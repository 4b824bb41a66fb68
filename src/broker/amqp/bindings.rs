//! Binding changes: the routing keys this instance wants, those that may
//! be bound on the server, and the lanes that apply changes in call order
//! per key. Never drops a request half-way on a lane (amqprs panics).

use std::collections::HashSet;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use amqprs::channel::{Channel, QueueBindArguments, QueueUnbindArguments};
use amqprs::connection::Connection;
use futures_util::future::join_all;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::session::{Target, open_channel};
use super::{POSTS_EXCHANGE, SessionError, within};

/// Binding channels per session: how many binding round trips can be in
/// flight at once. With 2,000 binds at once (RabbitMQ 3.10 on the same two
/// cores), 2 lanes took about 2 s, 4 about 1.2 s, 8 about 0.85 s; 16 and 32
/// gained little more: RabbitMQ itself becomes the limit.
const BINDING_LANES: usize = 8;

/// The routing keys this instance wants, and those its queue may still be
/// bound with on the server, so that a reconnect can both restore lost
/// bindings and remove ones dropped while disconnected: the queue and its
/// bindings outlive a brief disconnection.
#[derive(Default)]
pub(super) struct Bindings {
    /// Updated when a change is requested: the source of truth, in call
    /// order, whatever happens to the session that was to apply it.
    wanted: HashSet<String>,
    pub(super) on_server: OnServer,
}

impl Bindings {
    /// Returns whether this changed what is wanted.
    pub(super) fn want(&mut self, key: &str, bound: bool) -> bool {
        if bound {
            // Looked up first: a repeat, the common case, allocates nothing.
            !self.wanted.contains(key) && self.wanted.insert(key.to_owned())
        } else {
            self.wanted.remove(key)
        }
    }

    /// What a new session must do to bring the queue in line with `wanted`:
    /// unbind what is no longer wanted, (re)bind everything that is.
    pub(super) fn to_restore(&self) -> Vec<(String, bool)> {
        let stale = self.on_server.not_in(&self.wanted);
        let unbinds = stale.into_iter().map(|key| (key, false));
        let binds = self.wanted.iter().map(|key| (key.clone(), true));
        unbinds.chain(binds).collect()
    }
}

/// The routing keys the queue may be bound with on the server: a binding
/// counts from before its bind is sent until its unbind is confirmed. Shared
/// by the supervisor and its lane workers; the changes of one key are only
/// ever applied one at a time (by the worker of the key's lane, or by the
/// supervisor restoring bindings before any worker starts), so each key's
/// entry follows them in order.
#[derive(Clone, Default)]
pub(super) struct OnServer(Arc<Mutex<HashSet<String>>>);

impl OnServer {
    fn keys(&self) -> MutexGuard<'_, HashSet<String>> {
        // Every update is a single insert or remove: a panic elsewhere while
        // holding the lock leaves the set consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, key: &str) {
        let mut keys = self.keys();
        if !keys.contains(key) {
            keys.insert(key.to_owned());
        }
    }

    fn remove(&self, key: &str) {
        self.keys().remove(key);
    }

    fn not_in(&self, wanted: &HashSet<String>) -> Vec<String> {
        self.keys().difference(wanted).cloned().collect()
    }
}

/// A session's binding channels, each with a worker that applies the
/// changes sent to it one at a time, in the order they came.
///
/// A request on a lane is never dropped half-way: amqprs panics (in the
/// channel's own task) when a request is dropped while it registers for its
/// reply. So workers and restores stop between two requests, when `stop`
/// is cancelled, and the request in hand finishes or times out first.
pub(super) struct Lanes {
    binders: Vec<Binder>,
    /// One queue per lane; a change waits in it until the lane's worker
    /// has applied the ones before it.
    queues: Vec<mpsc::UnboundedSender<Change>>,
    /// The receiving ends, until `start` hands them to the workers.
    idle: Vec<mpsc::UnboundedReceiver<Change>>,
    /// A worker ends with an error when a change fails, which loses the
    /// session, or once stopped.
    workers: JoinSet<Result<(), SessionError>>,
    stop: CancellationToken,
}

/// One binding change on its way to RabbitMQ.
pub(super) struct Change {
    pub(super) key: String,
    /// `None`: a repeat of the wanted state; nothing to ask RabbitMQ.
    pub(super) bound: Option<bool>,
    /// Fires once the change is applied, or dropped with it when the
    /// session goes (the change is recorded, and the next session applies
    /// it).
    pub(super) applied: oneshot::Sender<()>,
}

impl Lanes {
    pub(super) async fn open(
        connection: &Connection,
        lost: &Arc<Notify>,
        target: &Arc<Target>,
        on_server: &OnServer,
    ) -> Result<Self, SessionError> {
        let mut lanes = Self {
            binders: Vec::with_capacity(BINDING_LANES),
            queues: Vec::with_capacity(BINDING_LANES),
            idle: Vec::with_capacity(BINDING_LANES),
            workers: JoinSet::new(),
            stop: CancellationToken::new(),
        };
        for _ in 0..BINDING_LANES {
            lanes.binders.push(Binder {
                channel: open_channel(connection, lost).await?,
                target: target.clone(),
                on_server: on_server.clone(),
            });
            let (queue, idle) = mpsc::unbounded_channel();
            lanes.queues.push(queue);
            lanes.idle.push(idle);
        }
        Ok(lanes)
    }

    /// Applies `changes` before the workers start, each on the channel of
    /// its key (the channels in parallel), and fails if any fails.
    pub(super) async fn restore(&self, changes: Vec<(String, bool)>) -> Result<(), SessionError> {
        let mut by_lane = vec![Vec::new(); self.binders.len()];
        for (key, bound) in changes {
            by_lane[lane_of(&key)].push((key, bound));
        }
        let lanes = self.binders.iter().zip(by_lane);
        let restored = lanes.map(|(binder, changes)| self.restore_lane(binder, changes));
        join_all(restored).await.into_iter().collect()
    }

    /// The first failure stops the other lanes too: the session is lost.
    async fn restore_lane(
        &self,
        binder: &Binder,
        changes: Vec<(String, bool)>,
    ) -> Result<(), SessionError> {
        for (key, bound) in changes {
            if self.stop.is_cancelled() {
                break;
            }
            if let Err(error) = binder.apply(&key, bound).await {
                self.stop.cancel();
                return Err(error);
            }
        }
        Ok(())
    }

    pub(super) fn start(&mut self) {
        let idle = std::mem::take(&mut self.idle);
        for (binder, changes) in self.binders.iter().zip(idle) {
            let worker = apply_in_order(binder.clone(), changes, self.stop.clone());
            self.workers.spawn(worker.in_current_span());
        }
    }

    /// Queued, to be applied after the earlier changes of the same key.
    pub(super) fn send(&self, change: Change) {
        // Fails only once the lane's worker has failed, which loses the
        // session: dropping the change completes it, and it stays wanted.
        let _ = self.queues[lane_of(&change.key)].send(change);
    }

    /// Completes when a worker fails, with why; never before `start` (nor
    /// after `stop`).
    pub(super) async fn failed(&mut self) -> String {
        match self.workers.join_next().await {
            Some(Ok(Err(error))) => error.to_string(),
            Some(Ok(Ok(()))) => "a binding worker stopped".into(),
            Some(Err(error)) => format!("a binding worker failed: {error}"),
            None => std::future::pending().await,
        }
    }

    /// Stops the workers once the requests in hand are answered (a closed
    /// connection fails them at once; at worst they time out), dropping the
    /// changes left queued.
    pub(super) async fn stop(&mut self) {
        self.stop.cancel();
        while self.workers.join_next().await.is_some() {}
    }
}

/// Which lane a key's changes go to: always the same one (the hasher has
/// fixed keys), so that they are applied in call order.
fn lane_of(key: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    // The remainder is below `BINDING_LANES`, a `usize`.
    (hasher.finish() % BINDING_LANES as u64) as usize
}

/// A lane's worker: applies its changes one at a time (amqprs mixes up
/// concurrent requests of one kind on a channel), and stops at the first
/// failure, or between two changes once `stop` is cancelled.
async fn apply_in_order(
    binder: Binder,
    mut changes: mpsc::UnboundedReceiver<Change>,
    stop: CancellationToken,
) -> Result<(), SessionError> {
    loop {
        let change = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(()),
            change = changes.recv() => change,
        };
        // The supervisor holds the sending end while the worker runs.
        let Some(change) = change else {
            return Ok(());
        };
        let result = match change.bound {
            Some(bound) => binder.apply(&change.key, bound).await,
            None => Ok(()),
        };
        // Confirmed or not: a failed change stays wanted, and the reconnect
        // that follows applies it.
        let _ = change.applied.send(());
        result?;
    }
}

/// Binds and unbinds the instance queue on one channel, keeping track of
/// what may be bound on the server.
#[derive(Clone)]
struct Binder {
    channel: Channel,
    target: Arc<Target>,
    on_server: OnServer,
}

impl Binder {
    async fn apply(&self, key: &str, bound: bool) -> Result<(), SessionError> {
        let queue = &self.target.queue;
        if bound {
            // Counted before it is sent: it may be in place even if no
            // reply comes.
            self.on_server.insert(key);
            let bind = QueueBindArguments::new(queue, POSTS_EXCHANGE, key);
            within("queue.bind", self.channel.queue_bind(bind)).await
        } else {
            let unbind = QueueUnbindArguments::new(queue, POSTS_EXCHANGE, key);
            within("queue.unbind", self.channel.queue_unbind(unbind)).await?;
            self.on_server.remove(key);
            Ok(())
        }
    }
}
