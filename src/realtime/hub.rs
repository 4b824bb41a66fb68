//! Routes this instance's broker deliveries to its sockets.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::catch_up::{self, CatchUps};
use super::codec::{FollowChange, PostFrame, decode_follow, decode_post};
use super::recovery::{Delivered, Horizon, recover};
use super::registry::Registry;
use super::socket::{Push, Socket};
use super::time_written;
use super::uring;
use crate::broker::{Incoming, Topic};
use crate::metrics::Metrics;
use crate::store::Store;

/// From this many subscribers on, a post is written by every worker thread
/// at once: below it, handing out the work costs more than it saves.
const PARALLEL_FROM: usize = 1024;
/// Pieces per worker a large subscriber list is cut into, so that a worker
/// the machine slows down does not hold the post up alone.
const PIECES_PER_WORKER: usize = 2;

pub(super) async fn run(
    mut incoming: mpsc::Receiver<Incoming>,
    registry: Arc<Registry>,
    catch_ups: Arc<CatchUps>,
    horizon: Arc<Horizon>,
    store: Store,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut delivered = Delivered::default();
    while let Some(item) = incoming.recv().await {
        let delivery = match item {
            Incoming::Message(delivery) => delivery,
            Incoming::Gap(gap) => {
                recover(
                    gap,
                    &registry,
                    &catch_ups,
                    &store,
                    &metrics,
                    &mut delivered,
                    &stop,
                )
                .await;
                continue;
            }
        };
        match delivery.topic {
            Topic::Posts => match decode_post(delivery.body) {
                Ok(frame) => {
                    metrics.broker_posts.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    delivered.forget_old(now);
                    horizon.advance(SystemTime::now());
                    // A post recovered after a gap, or published twice by a
                    // relay that failed over, goes out once.
                    if delivered.first_time(frame.post, now) {
                        broadcast(&registry, &metrics, Arc::new(frame)).await;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "dropping an undecodable post event"),
            },
            Topic::Control => match decode_follow(&delivery.body) {
                Ok(change) => apply_follow_change(&registry, &catch_ups, &change),
                Err(e) => tracing::warn!(error = %e, "dropping an undecodable follow change"),
            },
            // Work messages go to the feed worker, never here.
            Topic::Materialize => {}
        }
    }
}

/// Writes `frame` to every local subscriber of its author. A long list is
/// cut into pieces written by all worker threads at once; the next post
/// waits until every piece is done, so each socket gets posts in order.
pub async fn broadcast(registry: &Registry, metrics: &Arc<Metrics>, frame: Arc<PostFrame>) {
    let Some(subscribers) = registry.subscribers(frame.author) else {
        metrics.unwanted_posts.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let sockets = subscribers.to_vec();
    drop(subscribers);
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    if workers < 2 || sockets.len() < PARALLEL_FROM {
        deliver(&sockets, &frame, metrics);
        return;
    }
    let sockets: Arc<[Arc<Socket>]> = sockets.into();
    let piece = sockets.len().div_ceil(workers * PIECES_PER_WORKER);
    let mut pieces = JoinSet::new();
    // All pieces are spawned, none run here: tokio keeps the last task a
    // worker spawns in a slot no other worker can steal from, and the
    // hub's own worker would write its piece before yielding to it.
    for start in (0..sockets.len()).step_by(piece) {
        let (sockets, frame, metrics) = (sockets.clone(), frame.clone(), metrics.clone());
        pieces.spawn(async move {
            let end = (start + piece).min(sockets.len());
            deliver(&sockets[start..end], &frame, &metrics);
        });
    }
    while pieces.join_next().await.is_some() {}
}

/// Writes `frame` to every local subscriber of its author, on this thread.
pub fn fan_out(registry: &Registry, metrics: &Metrics, frame: Arc<PostFrame>) {
    // With bucket routing, posts of authors nobody here follows arrive too.
    let Some(subscribers) = registry.subscribers(frame.author) else {
        metrics.unwanted_posts.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let sockets = subscribers.to_vec();
    deliver(&sockets, &frame, metrics);
}

fn deliver(sockets: &[Arc<Socket>], frame: &Arc<PostFrame>, metrics: &Metrics) {
    let (mut written, mut queued) = (0, 0);
    uring::deliver(sockets, frame, |push| match push {
        Push::Written => written += 1,
        Push::Queued => queued += 1,
        Push::Overflowed => {
            metrics.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
        }
        Push::Dropped => {}
    });
    metrics
        .deliveries
        .fetch_add(written + queued, Ordering::Relaxed);
    if queued > 0 {
        metrics
            .queued_deliveries
            .fetch_add(queued, Ordering::Relaxed);
    }
    if written > 0 {
        // One clock read for the piece: its frames were written within it.
        time_written(metrics, frame.published_at_micros, written);
    }
}

fn apply_follow_change(registry: &Arc<Registry>, catch_ups: &Arc<CatchUps>, change: &FollowChange) {
    for socket in registry.sockets_of(change.follower) {
        if let Some(binding) =
            registry.change(&socket, change.author, change.follows, change.at_unix_ms)
        {
            catch_up::after_binding(binding, registry, catch_ups, None);
        }
    }
}
