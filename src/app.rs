//! Everything a request handler needs, built once from the configuration.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::auth::{Passwords, Tokens};
use crate::broker::BrokerKind;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::realtime::Realtime;
use crate::store::{Store, StoreSettings};

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
        let realtime = Realtime::start(
            store.clone(),
            broker,
            config.realtime(),
            Arc::new(Metrics::default()),
        );
        Ok(Self {
            store,
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
