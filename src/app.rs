//! Everything a request handler needs, built once from the configuration.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Passwords, Throttles, Tokens};
use crate::broker::{Broker, BrokerKind};
use crate::cache::{self, Feeds};
use crate::config::Config;
use crate::http::IpNet;
use crate::metrics::Metrics;
use crate::outbox::{Announcer, Relay};
use crate::realtime::Realtime;
use crate::store::{Store, StoreSettings};

/// Broker deliveries buffered before the hub.
const DELIVERY_BUFFER: usize = 4096;
/// Feed work buffered before the worker (RabbitMQ's prefetch bounds it too).
const WORK_BUFFER: usize = 64;

pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
    /// Kernel send buffer of each websocket (0: the OS default).
    pub ws_send_buffer: usize,
    /// Peers whose forwarding headers name the client.
    pub trusted_proxies: Vec<IpNet>,
}

pub struct App {
    pub store: Store,
    pub tokens: Tokens,
    pub passwords: Passwords,
    pub throttles: Throttles,
    pub feeds: Arc<Feeds>,
    pub realtime: Arc<Realtime>,
    pub announcer: Announcer,
    pub limits: Limits,
    broker: Broker,
    /// Stops the background tasks and closes the sockets.
    shutdown: CancellationToken,
    /// The background tasks (hub, outbox relay, feed worker), awaited at shutdown.
    tasks: TaskTracker,
}

impl App {
    /// Builds the application and starts its background tasks (broker
    /// connection, hub, outbox relay, feed worker). Nothing here waits on the network:
    /// the database is connected on first use and the broker in the
    /// background, so the service starts, and reports 503, while either is down.
    pub fn start(config: &Config, broker: BrokerKind) -> anyhow::Result<Self> {
        let store = Store::new(&StoreSettings {
            database_url: config.database.database_url.clone(),
            pool_size: usize::from(config.db_pool_size),
            acquire_timeout: config.db_timeout(),
            statement_timeout: config.statement_timeout(),
        })
        .context("configuring the database pool")?;
        let secret = match config.token_secret().map_err(anyhow::Error::msg)? {
            Some(secret) => secret.expose().to_vec(),
            None => {
                tracing::warn!(
                    "LIVEFEED_JWT_SECRET is not set: using a random secret, so tokens \
                     are valid on this process only and die with it"
                );
                random_secret()
            }
        };
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let (deliveries, incoming) = mpsc::channel(DELIVERY_BUFFER);
        let (work, work_queue) = mpsc::channel(WORK_BUFFER);
        let broker = Broker::start(broker, deliveries, work);
        let feeds =
            Feeds::new(store.clone(), &config.cache.settings()).context("configuring Redis")?;
        let shutdown = CancellationToken::new();
        let metrics = Arc::new(Metrics::default());
        let settings = config.realtime().map_err(anyhow::Error::msg)?;
        let announcer = Announcer::new(settings.routing);
        let realtime = Realtime::new(
            store.clone(),
            broker.clone(),
            settings,
            metrics.clone(),
            shutdown.clone(),
        );
        let tasks = TaskTracker::new();
        // The broker keeps the delivery channel open while any handle to it
        // lives, so the hub is stopped by the token, like the others.
        tasks.spawn(
            shutdown
                .clone()
                .run_until_cancelled_owned(realtime.hub(incoming)),
        );
        tasks.spawn(
            shutdown
                .clone()
                .run_until_cancelled_owned(realtime.heartbeat()),
        );
        tasks.spawn(
            shutdown
                .clone()
                .run_until_cancelled_owned(realtime.catch_ups()),
        );
        tasks.spawn(
            shutdown
                .clone()
                .run_until_cancelled_owned(realtime.follow_reads()),
        );
        tasks.spawn(shutdown.clone().run_until_cancelled_owned({
            let store = store.clone();
            async move { store.warm_up().await }
        }));
        tasks.spawn(cache::run_worker(
            feeds.clone(),
            work_queue,
            metrics.clone(),
            shutdown.clone(),
        ));
        let relay = Relay::new(store.clone(), broker.clone(), metrics);
        tasks.spawn({
            let stop = shutdown.clone();
            async move { relay.run(stop).await }
        });
        Ok(Self {
            store,
            feeds,
            realtime,
            announcer,
            broker,
            shutdown,
            tasks,
            tokens: Tokens::new(&secret, Duration::from_secs(config.token_ttl_secs))
                .context("configuring token signing")?,
            passwords: Passwords::new(cores),
            throttles: Throttles::new(config.throttles()),
            limits: Limits {
                max_body_bytes: config.max_body_bytes as usize,
                request_timeout: config.request_timeout(),
                max_connections: config.max_connections as usize,
                shutdown_grace: config.shutdown_grace(),
                ws_send_buffer: config.ws_send_buffer as usize,
                trusted_proxies: config.trusted_proxies.clone(),
            },
        })
    }

    /// Stops the background tasks and closes every socket with 1001, waits
    /// for both until `grace` is over at most, then leaves the broker
    /// (deleting this instance's queue) if the grace period leaves time. The relay finishes the batch it is
    /// publishing first, so its rows are not published twice.
    pub async fn shutdown(&self, grace: Duration) {
        let deadline = Instant::now() + grace;
        self.shutdown.cancel();
        self.tasks.close();
        let tasks_done = async {
            if tokio::time::timeout_at(deadline, self.tasks.wait())
                .await
                .is_err()
            {
                tracing::warn!("background tasks still running after the grace period");
            }
        };
        tokio::join!(self.realtime.close_sockets(deadline), tasks_done);
        // Leaving politely deletes this instance's queue; a broker that does
        // not answer in time lets it expire instead.
        if tokio::time::timeout_at(deadline, self.broker.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("left the broker without closing: the grace period is over");
        }
    }
}

fn random_secret() -> Vec<u8> {
    (0..4)
        .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
        .collect()
}
