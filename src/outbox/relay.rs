//! Publishes the outbox: the events written with each change, in the same
//! transaction, are sent to the broker after commit and deleted once the
//! broker confirms them. A broker outage only delays them.
//!
//! One instance at a time relays (it holds a PostgreSQL advisory lock), so
//! events go out in one order: a follow change and the post after it arrive
//! in that order everywhere. The others stand by and take over within a
//! second of the relay's instance dying.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::future::join_all;
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
            match self.store.lead_outbox(STANDBY_RETRY, &stop).await {
                Ok(Some(leader)) => {
                    tracing::info!("this instance now relays the outbox");
                    self.lead(&leader, &stop).await;
                }
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay cannot reach the database");
                    tokio::select! {
                        () = tokio::time::sleep(RETRY_AFTER_FAILURE) => {}
                        () = stop.cancelled() => return,
                    }
                }
            }
        }
    }

    async fn lead(&self, leader: &OutboxLeader, stop: &CancellationToken) {
        loop {
            let pause = match self.publish_batch().await {
                Ok(count) if count as i64 == BATCH => continue,
                Ok(_) => IDLE_POLL,
                Err(e) => {
                    tracing::warn!(error = %e, "outbox relay: will retry");
                    RETRY_AFTER_FAILURE
                }
            };
            tokio::select! {
                () = leader.written() => {}
                () = tokio::time::sleep(pause) => {}
                () = leader.lost() => {
                    tracing::warn!("lost the outbox relay lock");
                    return;
                }
                () = stop.cancelled() => return,
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
