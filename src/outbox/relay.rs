//! Publishes the outbox: the events written with each change, in the same
//! transaction, are sent to the broker after commit and deleted once the
//! broker confirms them. A broker outage only delays them.
//!
//! One instance at a time relays (it holds a PostgreSQL advisory lock), so
//! events go out in one order: a follow change and the post after it arrive
//! in that order everywhere. The others stand by and take over within a
//! second of the relay's instance dying.
//!
//! Leadership follows the broker: a relay that has failed to publish for
//! [`STEP_DOWN_AFTER`] gives the lock up and sits out [`COOLDOWN`], so one
//! instance's broken link to the broker never stalls the posts written on
//! the others; a standby asks for the lock only while its broker link is up.
//! It must never delete a row the broker has not confirmed.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError};
use crate::metrics::Metrics;
use crate::store::{OutboxLeader, Store, StoreError};

const BATCH: i64 = 256;
/// How long a claim protects rows from other relays; longer than any batch
/// takes to publish.
const LEASE: Duration = Duration::from_secs(30);
/// Commits wake the relay; this catches rows whose claim lapsed.
const IDLE_POLL: Duration = Duration::from_secs(5);
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);
/// How often a standby instance tries to become the relay.
const STANDBY_RETRY: Duration = Duration::from_secs(1);
/// How long publishes may keep failing before the relay hands over: longer
/// than a reconnect to a healthy broker takes, short enough that posts are
/// not held up for long when only this instance's link is broken.
const STEP_DOWN_AFTER: Duration = Duration::from_secs(3);
/// How long a relay that stepped down leaves the lock to the others, so a
/// healthy standby (retrying every `STANDBY_RETRY`) wins it.
const COOLDOWN: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

pub struct Relay {
    store: Store,
    broker: Broker,
    metrics: Arc<Metrics>,
}

impl Relay {
    pub fn new(store: Store, broker: Broker, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            broker,
            metrics,
        }
    }

    pub async fn run(&self, stop: CancellationToken) {
        while !stop.is_cancelled() {
            // Only an instance that reaches the broker asks for the lock, so
            // one whose link is down never takes the relay from one that can
            // publish.
            tokio::select! {
                () = self.broker.connected() => {}
                () = stop.cancelled() => return,
            }
            let pause = match self.store.lead_outbox(STANDBY_RETRY, &stop).await {
                Ok(Some(leader)) => {
                    tracing::info!("this instance now relays the outbox");
                    // Rows the last relay claimed and never settled (it was
                    // killed, or lost its link) would wait out their lease:
                    // up to 30 s of posts held back. Should it still be
                    // publishing them, they go out twice, and the hub and the
                    // feed worker take a repeat as a no-op.
                    if let Err(e) = self.store.release_all_outbox_claims().await {
                        tracing::warn!(error = %e, "cannot free the last relay's claims");
                    }
                    match self.lead(&leader, &stop).await {
                        Tenure::Ended => continue,
                        // Dropping the leader closes its connection, which
                        // releases the lock for a standby to take.
                        Tenure::SteppedDown => COOLDOWN,
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay cannot reach the database");
                    RETRY_AFTER_FAILURE
                }
            };
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = stop.cancelled() => return,
            }
        }
    }

    async fn lead(&self, leader: &OutboxLeader, stop: &CancellationToken) -> Tenure {
        let mut failing = FailingSince::default();
        loop {
            let attempt = Instant::now();
            // After a failure the relay waits out its pause: woken by every
            // commit it would claim and release the same rows each time a
            // post is written, for as long as the broker is away.
            let (pause, woken_by_writes) = match self.publish_batch().await {
                Ok(count) => {
                    failing.reset();
                    if count as i64 == BATCH {
                        continue;
                    }
                    (IDLE_POLL, true)
                }
                Err(RelayError::Broker(e))
                    if failing.failed(attempt, Instant::now()) >= STEP_DOWN_AFTER =>
                {
                    tracing::warn!(
                        error = %e,
                        "outbox relay cannot publish: handing over to another instance"
                    );
                    return Tenure::SteppedDown;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: will retry");
                    (RETRY_AFTER_FAILURE, false)
                }
            };
            tokio::select! {
                () = leader.written(), if woken_by_writes => {}
                () = tokio::time::sleep(pause) => {}
                () = leader.lost() => {
                    tracing::warn!("lost the outbox relay lock");
                    return Tenure::Ended;
                }
                () = stop.cancelled() => return Tenure::Ended,
            }
        }
    }

    /// Publishes one batch; returns how many rows it claimed.
    async fn publish_batch(&self) -> Result<usize, RelayError> {
        let claimed = self.store.claim_outbox(BATCH, LEASE).await?;
        if claimed.is_empty() {
            return Ok(0);
        }
        // Publishes are issued in order on one channel; confirms are awaited together.
        let results = join_all(claimed.iter().map(|row| {
            let message = &row.message;
            self.broker
                .publish(message.topic, &message.routing_key, message.body.clone())
        }))
        .await;
        let (published, failed): (Vec<_>, Vec<_>) = claimed
            .iter()
            .zip(&results)
            .partition(|(_, result)| result.is_ok());
        let published: Vec<i64> = published.into_iter().map(|(row, _)| row.id).collect();
        let failed: Vec<i64> = failed.into_iter().map(|(row, _)| row.id).collect();
        if !published.is_empty() {
            self.store.delete_outbox(&published).await?;
            self.metrics
                .published
                .fetch_add(published.len() as u64, Ordering::Relaxed);
        }
        if !failed.is_empty() {
            // Give the rows back at once rather than when the lease lapses,
            // so they go out as soon as the broker is back.
            self.store.release_outbox(&failed).await?;
        }
        match results.into_iter().find_map(Result::err) {
            Some(e) => Err(e.into()),
            None => Ok(claimed.len()),
        }
    }
}

/// How a turn as the relay ended.
enum Tenure {
    /// The lock was lost, or the instance is stopping.
    Ended,
    /// Publishing kept failing: the lock was given up for a while.
    SteppedDown,
}

/// When the current run of failed publishes began.
#[derive(Debug, Default)]
struct FailingSince(Option<Instant>);

impl FailingSince {
    /// Nothing is held up: every claimed row was published, or none was
    /// waiting.
    fn reset(&mut self) {
        self.0 = None;
    }

    /// Records an attempt begun at `attempt` that failed at `now`; returns
    /// how long publishing has been failing: since the first failed attempt
    /// of the run began, so a publish that hangs until it times out counts
    /// the time it hung.
    fn failed(&mut self, attempt: Instant, now: Instant) -> Duration {
        let since = *self.0.get_or_insert(attempt);
        now.saturating_duration_since(since)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn failures_count_from_the_start_of_the_first_failed_attempt() {
        let start = Instant::now();
        let mut failing = FailingSince::default();
        assert_eq!(failing.failed(start, start), Duration::ZERO);
        assert_eq!(
            failing.failed(start + 2 * SECOND, start + 2 * SECOND),
            2 * SECOND
        );
        let hung = start + 4 * SECOND;
        assert_eq!(failing.failed(start + 3 * SECOND, hung), 4 * SECOND);
    }

    #[test]
    fn a_publish_that_hangs_counts_the_time_it_hung() {
        let start = Instant::now();
        let mut failing = FailingSince::default();
        assert!(failing.failed(start, start + 5 * SECOND) >= STEP_DOWN_AFTER);
    }

    #[test]
    fn a_batch_without_failures_ends_the_run() {
        let start = Instant::now();
        let mut failing = FailingSince::default();
        failing.failed(start, start + 2 * SECOND);
        failing.reset();
        let later = start + 10 * SECOND;
        assert_eq!(failing.failed(later, later), Duration::ZERO);
        assert_eq!(failing.failed(later + SECOND, later + SECOND), SECOND);
    }
}
