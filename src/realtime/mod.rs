//! The live feed: sockets subscribe here, posts arrive from the broker and
//! are fanned out to them. What reaches the broker, and how, is
//! [`crate::outbox`]'s business. Admission is here too: a socket takes a
//! place among the instance's and among its user's, so that one account
//! cannot take every place of an instance.
//!
//! ```text
//! broker ─▶ hub ─▶ registry (author ▶ sockets) ─▶ socket (written by the hub) ─▶ client
//!                                                    └▶ outbox ─▶ session ─▶ client
//! ```

mod batches;
mod burst;
mod catch_up;
pub mod codec;
mod follows;
mod heartbeat;
mod hub;
mod recovery;
mod registry;
mod routing;
mod session;
mod socket;
mod uring;
mod wire;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use dashmap::DashMap;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

// The engine's parts are public for the benchmarks in benches/.
use catch_up::CatchUps;
use follows::FollowReads;
pub use hub::fan_out;
use recovery::Horizon;
pub use registry::Registry;
pub use routing::Routing;
pub use session::Upgraded;
use socket::Ending;
pub use socket::{Push, Socket};

use crate::broker::{Broker, Incoming};
use crate::domain::{PostId, UserId};
use crate::metrics::{Gauges, Metrics};
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct RealtimeSettings {
    /// Frames a socket may fall behind before it is closed as a slow consumer.
    pub queue_capacity: usize,
    pub ping_interval: Duration,
    /// Longest one websocket write may take before the socket is closed.
    pub write_timeout: Duration,
    /// Most websockets this instance holds (503 beyond).
    pub max_sockets: u64,
    /// Most websockets one user holds on this instance (429 beyond).
    pub max_sockets_per_user: u32,
    pub routing: Routing,
    /// Bind every key of bucket routing at start, and keep them.
    pub bind_every_bucket: bool,
}

pub struct Realtime {
    store: Store,
    broker: Broker,
    registry: Arc<Registry>,
    catch_ups: Arc<CatchUps>,
    follow_reads: FollowReads,
    /// Posts older than this, read back to a socket, no recovery sends again.
    horizon: Arc<Horizon>,
    metrics: Arc<Metrics>,
    settings: RealtimeSettings,
    shutdown: CancellationToken,
    /// Every session task, so shutdown can wait for their close frames.
    sessions: TaskTracker,
    /// Open sockets per user; a user with none has no entry.
    per_user: Arc<DashMap<UserId, u32>>,
}

/// The whole life of one websocket's task, as spawned: while the socket
/// is open the task holds this future, so its size is an idle socket's
/// cost (measured in `session`'s memory test).
fn session_task(
    realtime: Arc<Realtime>,
    slot: SocketSlot,
    ws: impl Future<Output = Option<Upgraded>> + Send + 'static,
    since: Option<PostId>,
) -> impl Future<Output = ()> + Send + 'static {
    // Boxed: a future the task holds by value stays in the task's memory
    // after it completed, for as long as the socket is open.
    session::run(realtime, slot, Box::pin(ws), since)
}

/// Why a websocket was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    InstanceFull,
    /// The user holds `max_sockets_per_user` already.
    UserFull(u32),
}

/// A place among the instance's open sockets and among its user's, given
/// back on drop.
pub struct SocketSlot {
    metrics: Arc<Metrics>,
    per_user: Arc<DashMap<UserId, u32>>,
    user: UserId,
}

impl SocketSlot {
    pub fn user(&self) -> UserId {
        self.user
    }
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.metrics.open_sockets.fetch_sub(1, Ordering::Relaxed);
        self.per_user.remove_if_mut(&self.user, |_, open| {
            *open -= 1;
            *open == 0
        });
    }
}

impl Realtime {
    /// Cancelling `shutdown` closes every socket with 1001.
    pub fn new(
        store: Store,
        broker: Broker,
        settings: RealtimeSettings,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Self {
            registry: Arc::new(Registry::new(broker.clone(), settings.routing)),
            catch_ups: Arc::default(),
            follow_reads: FollowReads::default(),
            horizon: Arc::new(Horizon::new(SystemTime::now())),
            store,
            broker,
            metrics,
            settings,
            shutdown,
            sessions: TaskTracker::new(),
            per_user: Arc::default(),
        })
    }

    /// The hub: fans this instance's `Posts` and `Control` deliveries out to
    /// its sockets, and recovers what a broker gap may have lost, until
    /// `incoming` closes. Binds every bucket first, when so configured.
    pub fn hub(&self, incoming: mpsc::Receiver<Incoming>) -> impl Future<Output = ()> + use<> {
        if self.settings.bind_every_bucket {
            for binding in self.registry.pin_every_key().unwrap_or_default() {
                drop(catch_up::after_binding(
                    binding,
                    &self.registry,
                    &self.catch_ups,
                    None,
                ));
            }
        }
        hub::run(
            incoming,
            self.registry.clone(),
            self.catch_ups.clone(),
            self.horizon.clone(),
            self.store.clone(),
            self.metrics.clone(),
            self.shutdown.clone(),
        )
    }

    /// Reads back what subscriptions could not get live (see
    /// [`catch_up`]); runs until dropped.
    pub fn catch_ups(&self) -> impl Future<Output = ()> + use<> {
        self.catch_ups.run(
            self.store.clone(),
            self.horizon.clone(),
            self.metrics.clone(),
        )
    }

    /// Reads the follows of connecting sockets (see [`follows`]); runs
    /// until dropped.
    pub fn follow_reads(&self) -> impl Future<Output = ()> + use<> {
        self.follow_reads.run(self.store.clone())
    }

    /// Pings every live socket once per ping interval and ends the silent
    /// ones; runs until dropped.
    pub fn heartbeat(&self) -> impl Future<Output = ()> + use<> {
        heartbeat::run(
            self.registry.clone(),
            self.horizon.clone(),
            self.settings.ping_interval,
        )
    }

    /// Reserves a socket place for `user`, unless the instance or the user
    /// holds as many as allowed already: one account cannot take every
    /// place of an instance.
    pub fn admit(&self, user: UserId) -> Result<SocketSlot, Refusal> {
        let cap = self.settings.max_sockets_per_user;
        {
            // The entry's shard stays locked until the instance place is
            // taken too, so two sockets of one user cannot both pass.
            let mut open = self.per_user.entry(user).or_insert(0);
            if *open >= cap {
                return Err(Refusal::UserFull(cap));
            }
            if !self.take_instance_place() {
                drop(open);
                self.per_user.remove_if(&user, |_, open| *open == 0);
                return Err(Refusal::InstanceFull);
            }
            *open += 1;
        }
        Ok(SocketSlot {
            metrics: self.metrics.clone(),
            per_user: self.per_user.clone(),
            user,
        })
    }

    fn take_instance_place(&self) -> bool {
        let open = &self.metrics.open_sockets;
        let mut current = open.load(Ordering::Relaxed);
        loop {
            if current >= self.settings.max_sockets {
                return false;
            }
            match open.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Runs an upgraded websocket of `user` until it ends.
    pub fn spawn_session(
        self: &Arc<Self>,
        slot: SocketSlot,
        ws: impl Future<Output = Option<Upgraded>> + Send + 'static,
        since: Option<PostId>,
    ) {
        self.sessions
            .spawn(session_task(self.clone(), slot, ws, since));
    }

    /// Closes every socket with 1001, waiting until `deadline` at most.
    pub async fn close_sockets(&self, deadline: Instant) {
        self.shutdown.cancel();
        for socket in self.registry.sockets_where(|_| true) {
            socket.end(Ending::Shutdown);
        }
        self.sessions.close();
        if tokio::time::timeout_at(deadline, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("sockets still open after the grace period");
        }
    }

    pub async fn gauges(&self) -> Gauges {
        Gauges {
            broker_reconnects: self.broker.reconnects(),
            outbox_depth: self.store.outbox_depth().await.ok(),
        }
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }
}

/// Times `frames` frames of a post published at `published_at_micros` as
/// written to their sockets now: the hub and a catch-up time what they
/// write at once, a session what it flushes later, so every delivery is
/// timed once.
fn time_written(metrics: &Metrics, published_at_micros: u64, frames: u64) {
    metrics.observe_latency_micros(unix_micros().saturating_sub(published_at_micros), frames);
}

pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
