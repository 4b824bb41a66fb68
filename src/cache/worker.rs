//! Applies the `Materialize` queue to the cache, in order, a batch of the
//! messages waiting at a time (one query and one Redis pipeline for the new
//! posts among them), and settles each: it must never hold the queue up for
//! long, for one bad event or for a Redis outage, and never acknowledge a
//! message before its Redis work is done.
//!
//! - Applied: acknowledged, once the whole batch is.
//! - Redis unreachable: put aside in the feed backlog (PostgreSQL) and
//!   acknowledged, so the queue neither grows in RabbitMQ nor, in process,
//!   backs up into the outbox relay. The backlog is applied, oldest first,
//!   once Redis answers; every instance looks at it, so events put aside by
//!   an instance that died are applied too.
//! - Any other failure: retried with exponential backoff and jitter; after
//!   [`MAX_ATTEMPTS`] the event is dead-lettered (counted in `/metrics`)
//!   and the cached feeds it touches are dropped, to be rebuilt from the
//!   truth. A database outage does not count against the event: it is
//!   waited out. An undecodable event is dead-lettered at once.
//! - Stopping: handed back (its `done` dropped) for another instance.
//!
//! Events carry ids only and are applied by reading the truth, so applying
//! one late, twice or out of order (backlog and live work interleave)
//! leaves the cache as the truth says.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{FeedEvent, Feeds};
use crate::broker::{Settled, Work};
use crate::metrics::Metrics;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);
/// Attempts at an event that keeps failing for a reason of its own (about
/// three seconds of retries) before it is dead-lettered.
const MAX_ATTEMPTS: u32 = 6;
/// How often the backlog is looked at after it was found empty, or while
/// Redis is still unreachable.
const BACKLOG_POLL: Duration = Duration::from_secs(1);
/// Backlogged events applied between two looks at the work queue, so that
/// live work is not held up behind a long backlog.
const BACKLOG_BATCH: i64 = 32;
/// Messages applied together at most: RabbitMQ's prefetch for the queue,
/// so a batch is whatever it has handed out.
const BATCH: usize = 32;

pub async fn run(
    feeds: Arc<Feeds>,
    mut work: mpsc::Receiver<Work>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut worker = Worker {
        feeds,
        metrics,
        rng: ChaCha8Rng::seed_from_u64(uuid::Uuid::new_v4().as_u64_pair().0),
        stop,
    };
    let mut next_look = Instant::now();
    loop {
        let settled = tokio::select! {
            () = worker.stop.cancelled() => return,
            item = work.recv() => match item {
                Some(item) => {
                    let mut batch = vec![item];
                    while batch.len() < BATCH && let Ok(item) = work.try_recv() {
                        batch.push(item);
                    }
                    worker.take(batch).await
                }
                None => return,
            },
            () = tokio::time::sleep_until(next_look) => match worker.apply_backlog().await {
                Some(Backlog::More) => {
                    next_look = Instant::now();
                    Some(())
                }
                Some(Backlog::Later) => {
                    next_look = Instant::now() + BACKLOG_POLL;
                    Some(())
                }
                None => None,
            },
        };
        if settled.is_none() {
            return;
        }
    }
}

struct Worker {
    feeds: Arc<Feeds>,
    metrics: Arc<Metrics>,
    rng: ChaCha8Rng,
    stop: CancellationToken,
}

/// How applying an event ended.
enum Outcome {
    Applied,
    RedisUnavailable,
    GaveUp,
    Stopping,
}

/// When to look at the backlog again.
enum Backlog {
    /// At once: a batch went through.
    More,
    /// After [`BACKLOG_POLL`]: it is empty, or Redis is still away.
    Later,
}

impl Worker {
    /// Settles a batch of messages of the queue; `None` when stopping.
    async fn take(&mut self, batch: Vec<Work>) -> Option<()> {
        let mut events = Vec::with_capacity(batch.len());
        let mut items = Vec::with_capacity(batch.len());
        for item in batch {
            match FeedEvent::decode(&item.body) {
                Ok(event) => {
                    events.push(event);
                    items.push(item);
                }
                Err(error) => {
                    // Redelivering it would fail the same way forever.
                    tracing::error!(%error, body = ?item.body, "dead-lettering an undecodable feed event");
                    self.dead_lettered();
                    self.settled(1);
                    let _ = item.done.send(Settled::DeadLetter);
                }
            }
        }
        let settled = match self.apply(&events).await {
            Outcome::Applied => vec![Settled::Applied; items.len()],
            Outcome::RedisUnavailable => {
                for item in &items {
                    // Some may have been applied already: applying them
                    // again from the backlog is harmless.
                    self.put_aside(&item.body).await?;
                }
                vec![Settled::Applied; items.len()]
            }
            // One of them keeps failing: find which, one at a time.
            Outcome::GaveUp if events.len() > 1 => {
                let mut settled = Vec::with_capacity(items.len());
                for (event, item) in events.iter().zip(&items) {
                    settled.push(self.settle_alone(*event, &item.body).await?);
                }
                settled
            }
            Outcome::GaveUp => vec![self.give_up(events[0]).await],
            // Dropping `done` hands the messages back.
            Outcome::Stopping => return None,
        };
        self.settled(items.len());
        for (item, settled) in items.into_iter().zip(settled) {
            let _ = item.done.send(settled);
        }
        Some(())
    }

    /// Applies one event of a batch that failed; `None` when stopping.
    async fn settle_alone(&mut self, event: FeedEvent, body: &[u8]) -> Option<Settled> {
        match self.apply(&[event]).await {
            Outcome::Applied => Some(Settled::Applied),
            Outcome::RedisUnavailable => {
                self.put_aside(body).await?;
                Some(Settled::Applied)
            }
            Outcome::GaveUp => Some(self.give_up(event).await),
            Outcome::Stopping => None,
        }
    }

    async fn give_up(&mut self, event: FeedEvent) -> Settled {
        self.feeds.forget(event).await;
        self.dead_lettered();
        Settled::DeadLetter
    }

    /// Applies `events` in order, retrying what may pass.
    async fn apply(&mut self, events: &[FeedEvent]) -> Outcome {
        let mut delay = FIRST_RETRY;
        let mut failures = 0;
        loop {
            let error = match self.feeds.apply_all(events).await {
                Ok(()) => return Outcome::Applied,
                Err(error) => error,
            };
            if error.is_redis_unavailable() {
                return Outcome::RedisUnavailable;
            }
            let outage = error.is_database_unavailable() && self.feeds.store.ping().await.is_err();
            if !outage {
                failures += 1;
                if failures >= MAX_ATTEMPTS {
                    tracing::error!(?events, %error, "giving up on feed events");
                    return Outcome::GaveUp;
                }
            }
            tracing::warn!(?events, %error, failures, "feed update failed, retrying");
            // Jitter keeps instances that failed together from retrying in step.
            let pause = delay.mul_f64(self.rng.random_range(0.5..=1.0));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = self.stop.cancelled() => return Outcome::Stopping,
            }
            delay = (delay * 2).min(LAST_RETRY);
        }
    }

    /// Keeps `body` in the backlog, retrying while the database is away;
    /// `None` when stopping first.
    async fn put_aside(&mut self, body: &[u8]) -> Option<()> {
        let mut delay = FIRST_RETRY;
        loop {
            match self.feeds.store.put_aside_feed_event(body).await {
                Ok(()) => {
                    self.feeds.backlogged.store(true, Ordering::Relaxed);
                    return Some(());
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot put a feed event aside, retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.stop.cancelled() => return None,
            }
            delay = (delay * 2).min(LAST_RETRY);
        }
    }

    /// Applies the oldest batch of the backlog, as far as Redis lets it;
    /// `None` when stopping.
    async fn apply_backlog(&mut self) -> Option<Backlog> {
        let store = self.feeds.store.clone();
        let batch = match store.feed_backlog(BACKLOG_BATCH).await {
            Ok(batch) => batch,
            Err(error) => {
                tracing::warn!(%error, "cannot read the feed backlog");
                return Some(Backlog::Later);
            }
        };
        if batch.is_empty() {
            self.feeds.backlogged.store(false, Ordering::Relaxed);
            return Some(Backlog::Later);
        }
        self.feeds.backlogged.store(true, Ordering::Relaxed);
        let mut settled = Vec::with_capacity(batch.len());
        let mut next = Some(Backlog::More);
        for put_aside in &batch {
            let Ok(event) = FeedEvent::decode(&put_aside.event) else {
                // Only decoded events are put aside.
                tracing::error!(body = ?put_aside.event, "dropping an undecodable backlogged event");
                self.dead_lettered();
                settled.push(put_aside.id);
                continue;
            };
            match self.apply(&[event]).await {
                Outcome::Applied => {}
                Outcome::GaveUp => {
                    // No queue to move it to: the log and the counter tell.
                    self.give_up(event).await;
                }
                Outcome::RedisUnavailable => {
                    next = Some(Backlog::Later);
                    break;
                }
                Outcome::Stopping => {
                    next = None;
                    break;
                }
            }
            settled.push(put_aside.id);
        }
        // If this fails they are applied again later, which is harmless.
        if let Err(error) = store.delete_feed_backlog(&settled).await {
            tracing::warn!(%error, "cannot delete applied backlog events");
        }
        if !settled.is_empty() {
            tracing::info!(applied = settled.len(), "applied backlogged feed events");
        }
        next
    }

    fn settled(&self, events: usize) {
        self.metrics
            .feed_settled
            .fetch_add(events as u64, Ordering::Relaxed);
    }

    fn dead_lettered(&self) {
        self.metrics
            .feed_dead_letters
            .fetch_add(1, Ordering::Relaxed);
    }
}
