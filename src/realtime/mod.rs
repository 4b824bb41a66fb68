//! The live feed: sockets subscribe here, posts arrive from the broker and
//! are fanned out to them.
//!
//! ```text
//! post/create ─▶ outbox row (same transaction) ─▶ relay ─▶ broker
//! broker ─▶ hub ─▶ registry (author ▶ sockets) ─▶ per-socket queue ─▶ session ─▶ client
//! ```

pub mod codec;
mod hub;
mod registry;
mod relay;
mod routing;
mod session;
mod socket;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

// The engine's parts are public for the benchmarks in benches/.
pub use hub::fan_out;
pub use registry::Registry;
pub use routing::Routing;
pub use socket::{Push, Socket};

use self::codec::FollowChange;
use self::relay::Relay;
use crate::broker::{Broker, Incoming, Topic};
use crate::cache::Feeds;
use crate::domain::{Post, PostId, UserId};
use crate::metrics::{Gauges, Metrics};
use crate::store::{OutboxMessage, Store};

#[derive(Debug, Clone)]
pub struct RealtimeSettings {
    /// Frames a socket may fall behind before it is closed as a slow consumer.
    pub queue_capacity: usize,
    pub ping_interval: Duration,
    /// Most websockets this instance holds (503 beyond).
    pub max_sockets: u64,
    pub routing: Routing,
}

pub struct Realtime {
    store: Store,
    feeds: Arc<Feeds>,
    broker: Broker,
    registry: Arc<Registry>,
    metrics: Arc<Metrics>,
    settings: RealtimeSettings,
    shutdown: CancellationToken,
    /// Every session task, so shutdown can wait for their close frames.
    sessions: TaskTracker,
}

/// A place among the instance's open sockets, given back on drop.
pub struct SocketSlot {
    metrics: Arc<Metrics>,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        self.metrics.open_sockets.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Realtime {
    /// Starts the hub on `deliveries` (this instance's `Posts` and
    /// `Control` messages) and the outbox relay; `shutdown` stops them.
    pub fn start(
        store: Store,
        feeds: Arc<Feeds>,
        broker: Broker,
        incoming: mpsc::Receiver<Incoming>,
        settings: RealtimeSettings,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
    ) -> Arc<Self> {
        let registry = Arc::new(Registry::new(broker.clone(), settings.routing));
        let relay = Relay::new(store.clone(), broker.clone(), metrics.clone());
        tokio::spawn(hub::run(
            incoming,
            registry.clone(),
            store.clone(),
            metrics.clone(),
        ));
        tokio::spawn({
            let stop = shutdown.clone();
            async move { relay.run(stop).await }
        });
        Arc::new(Self {
            store,
            feeds,
            broker,
            registry,
            metrics,
            settings,
            shutdown,
            sessions: TaskTracker::new(),
        })
    }

    /// The outbox event announcing a new post.
    pub fn post_event(&self, post: &Post) -> OutboxMessage {
        OutboxMessage {
            topic: Topic::Posts,
            routing_key: self.settings.routing.key(post.author_user_id),
            body: codec::encode_post(post, unix_micros()),
        }
    }

    /// The outbox event announcing that `follower` now follows `author`
    /// (`follows`) or no longer does.
    pub fn follow_event(&self, follower: UserId, author: UserId, follows: bool) -> OutboxMessage {
        let change = FollowChange {
            follower,
            author,
            follows,
            at_unix_ms: unix_micros() / 1000,
        };
        OutboxMessage {
            topic: Topic::Control,
            routing_key: String::new(),
            body: codec::encode_follow(change),
        }
    }

    /// Reserves a socket place, or `None` when the instance is full.
    pub fn admit(&self) -> Option<SocketSlot> {
        let open = &self.metrics.open_sockets;
        let mut current = open.load(Ordering::Relaxed);
        loop {
            if current >= self.settings.max_sockets {
                return None;
            }
            match open.compare_exchange_weak(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Some(SocketSlot {
                        metrics: self.metrics.clone(),
                    });
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// Runs an upgraded websocket of `user` until it ends.
    pub fn spawn_session<S>(
        self: &Arc<Self>,
        slot: SocketSlot,
        ws: impl Future<Output = Option<WebSocketStream<S>>> + Send + 'static,
        user: UserId,
        since: Option<PostId>,
    ) where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let realtime = self.clone();
        self.sessions.spawn(async move {
            if let Some(ws) = ws.await {
                session::run(realtime, ws, user, since).await;
            }
            drop(slot);
        });
    }

    /// Closes every socket with 1001, stops the relay and leaves the broker
    /// (deleting this instance's queue), waiting at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.shutdown.cancel();
        self.sessions.close();
        if tokio::time::timeout(grace, self.sessions.wait())
            .await
            .is_err()
        {
            tracing::warn!("sockets still open after the grace period");
        }
        self.broker.shutdown().await;
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

pub(crate) fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}
