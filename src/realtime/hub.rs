//! Routes this instance's broker deliveries to its sockets.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::codec::{FollowChange, PostFrame, decode_follow, decode_post, stored_post_frame};
use super::recovery::{Delivered, recover};
use super::registry::Registry;
use super::socket::Push;
use crate::broker::{Applied, Incoming, Topic};
use crate::domain::PostId;
use crate::metrics::Metrics;
use crate::store::Store;

/// Most posts sent to a socket that just followed someone: those its
/// author wrote while this instance was binding to them.
const FOLLOW_CATCH_UP_LIMIT: i64 = 100;
/// Clocks of the instances may differ a little; a post written up to this
/// long before a follow may show up after it.
const CLOCK_SKEW_MS: u64 = 1000;

pub(super) async fn run(
    mut incoming: mpsc::Receiver<Incoming>,
    registry: Arc<Registry>,
    store: Store,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut delivered = Delivered::default();
    while let Some(item) = incoming.recv().await {
        let delivery = match item {
            Incoming::Message(delivery) => delivery,
            Incoming::Gap(gap) => {
                recover(gap, &registry, &store, &metrics, &mut delivered, &stop).await;
                continue;
            }
        };
        match delivery.topic {
            Topic::Posts => match decode_post(delivery.body) {
                Ok(frame) => {
                    metrics.broker_posts.fetch_add(1, Ordering::Relaxed);
                    let now = Instant::now();
                    delivered.forget_old(now);
                    // A post recovered after a gap, or published twice by a
                    // relay that failed over, goes out once.
                    if delivered.first_time(frame.post, now) {
                        fan_out(&registry, &metrics, Arc::new(frame));
                    }
                }
                Err(e) => tracing::warn!(error = %e, "dropping an undecodable post event"),
            },
            Topic::Control => match decode_follow(&delivery.body) {
                Ok(change) => apply_follow_change(&registry, &store, &metrics, change),
                Err(e) => tracing::warn!(error = %e, "dropping an undecodable follow change"),
            },
            // Work messages go to the feed worker, never here.
            Topic::Materialize => {}
        }
    }
}

/// One decode per delivery; each subscriber gets a refcount of the same frame.
pub fn fan_out(registry: &Registry, metrics: &Metrics, frame: Arc<PostFrame>) {
    // With bucket routing, posts of authors nobody here follows arrive too.
    let Some(subscribers) = registry.subscribers(frame.author) else {
        metrics.unwanted_posts.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let mut queued = 0;
    subscribers.for_each(|socket| match socket.push(frame.clone()) {
        Push::Queued => queued += 1,
        Push::Overflowed => {
            metrics.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
        }
        Push::Dropped => {}
    });
    metrics.deliveries.fetch_add(queued, Ordering::Relaxed);
}

fn apply_follow_change(
    registry: &Arc<Registry>,
    store: &Store,
    metrics: &Arc<Metrics>,
    change: FollowChange,
) {
    let mut new_binding = None;
    for socket in registry.sockets_of(change.follower) {
        new_binding = new_binding.or(registry.change(&socket, change.author, change.follows));
    }
    if let Some(bound) = new_binding {
        tokio::spawn(catch_up_after_binding(
            bound,
            registry.clone(),
            store.clone(),
            metrics.clone(),
            change,
        ));
    }
}

/// Until this instance's new binding is in place, the author's posts are
/// routed elsewhere; once it is, the ones written since the follow are read
/// back and queued. A post that also arrived live is skipped by the session.
async fn catch_up_after_binding(
    bound: Applied,
    registry: Arc<Registry>,
    store: Store,
    metrics: Arc<Metrics>,
    change: FollowChange,
) {
    bound.await;
    let since = PostId::first_at(change.at_unix_ms.saturating_sub(CLOCK_SKEW_MS));
    match store
        .posts_by_author_since(change.author, since, FOLLOW_CATCH_UP_LIMIT)
        .await
    {
        Ok(posts) => {
            for post in posts {
                fan_out(&registry, &metrics, Arc::new(stored_post_frame(&post)));
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot read posts written during a follow"),
    }
}
