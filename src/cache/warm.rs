//! `livefeed warm-cache`: builds cached feeds ahead of their first read,
//! after a Redis flush or on a new deployment. Uses the same build protocol
//! as a read, so it is safe while the service serves traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;

use super::Feeds;
use crate::seed::progress::time_left;
use crate::store::Store;

/// Post bodies written per round trip.
const POST_CHUNK: i64 = 5000;
/// Feeds claimed, read and finished together.
const FEED_CHUNK: usize = 500;
/// Tries of a chunk while Redis or PostgreSQL times out or is away, and the
/// pause between them: on a loaded machine one slow round trip must not
/// fail the chunk, nor (through the cache's back-off) every chunk after it.
const CHUNK_TRIES: u32 = 5;
const RETRY_PAUSE: Duration = Duration::from_secs(2);

pub struct WarmOptions {
    /// Only the users who follow the most others (their feeds cost the most
    /// to build from PostgreSQL); all users when `None`.
    pub users: Option<i64>,
    /// Chunks of feeds built at once.
    pub concurrency: usize,
}

#[derive(Debug, Default)]
pub struct WarmReport {
    pub built: u64,
    pub failed: u64,
    pub elapsed: Duration,
}

pub async fn warm(
    store: &Store,
    feeds: &Arc<Feeds>,
    options: &WarmOptions,
) -> anyhow::Result<WarmReport> {
    let started = Instant::now();
    eprintln!("caching post bodies");
    feeds
        .warm_posts(POST_CHUNK, |done| eprint!("\r{done} posts   "))
        .await?;
    eprintln!();
    // Celebrity timelines first: every feed that follows one merges it.
    let celebrities = store.celebrities().await?;
    eprintln!("warming {} celebrity timelines", celebrities.len());
    for author in celebrities {
        feeds.warm_author(author).await?;
    }
    let users = store.users_by_follows(options.users).await?;
    let total = users.len();
    eprintln!(
        "warming {total} feeds, {} chunks of {FEED_CHUNK} at a time",
        options.concurrency
    );
    let built = AtomicU64::new(0);
    let failed = AtomicU64::new(0);
    let feeds_started = Instant::now();
    let progress = async {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            let done = built.load(Ordering::Relaxed) + failed.load(Ordering::Relaxed);
            let elapsed = feeds_started.elapsed();
            let rate = done as f64 / elapsed.as_secs_f64().max(0.001);
            let left = time_left(done, total as u64, elapsed).map_or_else(String::new, |left| {
                format!(", ~{:.0} s left", left.as_secs_f64())
            });
            eprint!(
                "\r{done}/{total} feeds, {rate:.0}/s{left}, {} failed   ",
                failed.load(Ordering::Relaxed)
            );
        }
    };
    let chunks = users.chunks(FEED_CHUNK);
    let work = futures_util::stream::iter(chunks).for_each_concurrent(options.concurrency, |chunk| {
        let (built, failed) = (&built, &failed);
        async move {
            match warm_chunk(feeds, chunk).await {
                Ok(()) => built.fetch_add(chunk.len() as u64, Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(users = chunk.len(), error = %e, "cannot warm a chunk of feeds");
                    failed.fetch_add(chunk.len() as u64, Ordering::Relaxed)
                }
            };
        }
    });
    tokio::select! {
        () = work => {}
        () = progress => {}
    }
    eprintln!();
    Ok(WarmReport {
        built: built.into_inner(),
        failed: failed.into_inner(),
        elapsed: started.elapsed(),
    })
}

/// [`Feeds::warm_feeds`], tried again after a pause while a store is
/// unavailable (a rebuild of the same chunk is harmless: it claims afresh).
async fn warm_chunk(
    feeds: &Feeds,
    chunk: &[crate::domain::UserId],
) -> Result<(), super::WorkError> {
    let mut tries = 1;
    loop {
        match feeds.warm_feeds(chunk).await {
            Err(e) if tries < CHUNK_TRIES && e.is_unavailable() => {
                tracing::debug!(error = %e, tries, "warming a chunk again");
                tries += 1;
                tokio::time::sleep(RETRY_PAUSE).await;
            }
            outcome => return outcome,
        }
    }
}
