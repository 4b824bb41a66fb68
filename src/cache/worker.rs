//! Applies the `Materialize` queue to the cache, one message at a time in
//! order, acknowledging each only once Redis has it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{FeedEvent, Feeds};
use crate::broker::Work;

const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(5);

pub async fn run(feeds: Arc<Feeds>, mut work: mpsc::Receiver<Work>, stop: CancellationToken) {
    loop {
        let item = tokio::select! {
            item = work.recv() => match item {
                Some(item) => item,
                None => return,
            },
            () = stop.cancelled() => return,
        };
        let event = match FeedEvent::decode(&item.body) {
            Ok(event) => event,
            Err(e) => {
                // Redelivering it would fail the same way forever.
                tracing::error!(error = %e, "dropping an undecodable feed event");
                let _ = item.done.send(());
                continue;
            }
        };
        let mut retry = FIRST_RETRY;
        loop {
            match feeds.apply(event).await {
                Ok(()) => {
                    let _ = item.done.send(());
                    break;
                }
                Err(e) => {
                    // Redis or PostgreSQL is down: the queue waits (in order)
                    // until it is back. Stopping drops `done`, so the broker
                    // hands the message to another instance.
                    tracing::warn!(?event, error = %e, "feed update failed, retrying");
                    tokio::select! {
                        () = tokio::time::sleep(retry) => {}
                        () = stop.cancelled() => return,
                    }
                    retry = (retry * 2).min(LAST_RETRY);
                }
            }
        }
    }
}
