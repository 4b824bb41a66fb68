//! The feed cache in Redis.
//!
//! Keys (under a configurable prefix):
//! - `feed:<user>`: the ids of the newest posts (at most [`FEED_CAPACITY`],
//!   give or take an untrimmed few) of the non-celebrity authors the user
//!   follows, as one string laid out as [`stored`] says;
//! - `celebs:<user>`: the celebrities the user follows (merged in at read
//!   time), 16 bytes each, an empty string for none;
//! - `author:<celebrity>`: a celebrity's newest post ids, laid out the same;
//! - `post:<id>`: the post as the API shows it (JSON), so an update or a
//!   delete touches one key, not every feed;
//! - `version:authors`: a token set afresh after every change to any
//!   `author:` set, so instances may keep copies of those sets while the
//!   token stands;
//! - `version:bodies`: the same for every change to an existing `post:`
//!   body (an update or a delete), for the instances' copies of bodies.
//!
//! A set's state byte says whether it is being built, holds every post
//! there is, or has older posts beyond it; a missing set (never built,
//! evicted or invalidated) is rebuilt from PostgreSQL by its reader.
//! (Up to 2026-12 sets were sorted sets of hyphenated ids: a Redis that
//! holds those must be flushed before this version serves from it.)
//! This module owns the connection, the key names and the back-off after an
//! outage; [`read`] serves pages and [`write`] builds and updates the sets.
//! Nothing here reads PostgreSQL: callers hand in what to store.

mod bodies;
mod read;
mod stored;
mod write;

pub use read::CachedPage;
pub use stored::{SetState, StoredSet, unpack_users};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

/// Most post ids cached per feed and per celebrity.
pub const FEED_CAPACITY: usize = 1000;
/// A build that never finishes (its instance died) expires after this.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30);
/// After a Redis error, readers go straight to PostgreSQL for this long
/// instead of each waiting on a dead connection.
const BACK_OFF: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis was failing moments ago; not trying again yet")]
    BackingOff,
    #[error("unexpected reply from the feed script: {0}")]
    Reply(String),
}

impl CacheError {
    /// Redis could not be reached (or was not tried, having just failed so):
    /// nothing about the request itself is wrong.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::BackingOff => true,
            Self::Redis(error) => is_outage(error),
            Self::Reply(_) => false,
        }
    }
}

fn is_outage(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
}

pub struct RedisFeeds {
    redis: ConnectionManager,
    prefix: String,
    back_off_until: AtomicU64,
    /// Errors that made the cache back off (Redis unreachable or timing out).
    outages: AtomicU64,
    started: Instant,
    /// Copies of celebrity timelines; see [`read`].
    timelines: std::sync::Mutex<read::Timelines>,
    /// Copies of post bodies; see [`bodies`].
    bodies: bodies::BodyCopies,
    add: Script,
    finish_build: Script,
    remove: Script,
}

impl RedisFeeds {
    /// Connects lazily: the service starts while Redis is down.
    pub fn new(url: &str, prefix: &str) -> Result<Self, CacheError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let redis = ConnectionManager::new_lazy_with_config(client(url)?, config)?;
        Ok(Self {
            redis,
            prefix: prefix.to_owned(),
            back_off_until: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            started: Instant::now(),
            timelines: Default::default(),
            bodies: Default::default(),
            add: script(write::ADD),
            finish_build: script(write::FINISH_BUILD),
            remove: script(write::REMOVE),
        })
    }

    fn key(&self, kind: &str, id: impl std::fmt::Display) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// Set to a fresh token after every change to a celebrity's timeline.
    fn authors_version(&self) -> String {
        self.key("version", "authors")
    }

    /// Set to a fresh token after every change to an existing post body.
    fn bodies_version(&self) -> String {
        self.key("version", "bodies")
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, CacheError> {
        self.check_back_off()?;
        let mut redis = self.redis.clone();
        script
            .invoke_async(&mut redis)
            .await
            .map_err(|e| self.failed(e))
    }

    async fn run(&self, pipe: &redis::Pipeline) -> Result<(), CacheError> {
        self.check_back_off()?;
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis)
            .await
            .map_err(|e| self.failed(e))
    }

    /// How many Redis errors made the cache back off so far.
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, CacheError> {
        self.check_back_off()?;
        let mut redis = self.redis.clone();
        pipe.query_async(&mut redis)
            .await
            .map_err(|e| self.failed(e))
    }

    fn check_back_off(&self) -> Result<(), CacheError> {
        let now = self.started.elapsed().as_millis() as u64;
        if now < self.back_off_until.load(Ordering::Relaxed) {
            return Err(CacheError::BackingOff);
        }
        Ok(())
    }

    fn failed(&self, error: redis::RedisError) -> CacheError {
        if is_outage(&error) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            let until = self.started.elapsed() + BACK_OFF;
            self.back_off_until
                .store(until.as_millis() as u64, Ordering::Relaxed);
        }
        CacheError::Redis(error)
    }
}

fn script(body: &str) -> Script {
    Script::new(&format!("{}{body}", write::HELPERS))
}

/// A client for `url`; `rediss://` is TLS (rustls), trusting the CA file of
/// [`crate::tls`] when one is set, else the system's CA store.
fn client(url: &str) -> Result<Client, CacheError> {
    crate::tls::install_provider();
    Ok(match crate::tls::ca_pem() {
        Some(pem) if url.starts_with("rediss://") => Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        )?,
        _ => Client::open(url)?,
    })
}
