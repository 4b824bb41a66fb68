//! Everything a request handler needs, built once from the configuration.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::auth::{Passwords, Tokens};
use crate::broker::{Broker, BrokerKind};
use crate::cache::{self, Feeds};
use crate::config::Config;
use crate::metrics::Metrics;
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
}

pub struct App {
    pub store: Store,
    pub tokens: Tokens,
    pub passwords: Passwords,
    pub feeds: Arc<Feeds>,
    pub realtime: Arc<Realtime>,
    pub limits: Limits,
}

impl App {
    /// Builds the application and starts its background tasks (broker
    /// connection, hub, outbox relay). Nothing here waits on the network:
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
        let secret = match &config.jwt_secret {
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
        tokio::spawn(cache::run_worker(
            feeds.clone(),
            work_queue,
            shutdown.clone(),
        ));
        let realtime = Realtime::start(
            store.clone(),
            feeds.clone(),
            broker,
            incoming,
            config.realtime(),
            Arc::new(Metrics::default()),
            shutdown,
        );
        Ok(Self {
            store,
            feeds,
            realtime,
            tokens: Tokens::new(&secret, Duration::from_secs(config.token_ttl_secs))
                .context("configuring token signing")?,
            passwords: Passwords::new(cores),
            limits: Limits {
                max_body_bytes: config.max_body_bytes as usize,
                request_timeout: config.request_timeout(),
                max_connections: config.max_connections as usize,
                shutdown_grace: config.shutdown_grace(),
                ws_send_buffer: config.ws_send_buffer as usize,
            },
        })
    }
}

fn random_secret() -> Vec<u8> {
    (0..4)
        .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
        .collect()
}
