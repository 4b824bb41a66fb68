//! Everything a request handler needs, built once from the configuration.

use std::time::Duration;

use crate::auth::{Passwords, Tokens};
use crate::config::Config;
use anyhow::Context;

use crate::store::{Store, StoreSettings};

pub struct Limits {
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub max_connections: usize,
    pub shutdown_grace: Duration,
}

pub struct App {
    pub store: Store,
    pub tokens: Tokens,
    pub passwords: Passwords,
    pub limits: Limits,
}

impl App {
    /// Builds the application without touching the network: the database is
    /// connected on first use, so the service starts and reports 503 while
    /// PostgreSQL is down instead of refusing to start.
    pub fn new(config: &Config) -> anyhow::Result<Self> {
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
        Ok(Self {
            store,
            tokens: Tokens::new(&secret, Duration::from_secs(config.token_ttl_secs))
                .context("configuring token signing")?,
            passwords: Passwords::new(cores),
            limits: Limits {
                max_body_bytes: config.max_body_bytes as usize,
                request_timeout: config.request_timeout(),
                max_connections: config.max_connections as usize,
                shutdown_grace: config.shutdown_grace(),
            },
        })
    }
}

fn random_secret() -> Vec<u8> {
    (0..4)
        .flat_map(|_| uuid::Uuid::new_v4().into_bytes())
        .collect()
}
