//! Brings this instance's sockets up to date after a broker gap.
//!
//! The broker says when `Posts` and `Control` messages published since some
//! moment may not have reached this instance: its queue was lost with its
//! node, expired while the instance was frozen or cut off, or was declared
//! anew. Before the hub takes any message of the new broker session, it
//! re-reads from PostgreSQL whom the users with open sockets here follow
//! (the follow changes of the gap are lost too), then queues to the sockets
//! the posts their authors wrote in the window they may have missed. No
//! client has to reconnect.
//!
//! Every post the hub fans out, live or recovered, passes through
//! [`Delivered`], so a post that arrives both ways goes out once. This module
//! must never fan out a post without recording it there. A post a socket
//! got read back from PostgreSQL is not in [`Delivered`] (its author's other
//! subscribers may still need the live copy): the socket remembers it
//! itself, until the [`Horizon`] passes it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::future::join_all;
use tokio_util::sync::CancellationToken;

use super::catch_up::{self, CatchUps};
use super::codec::stored_post_frame;
use super::hub::fan_out;
use super::registry::Registry;
use crate::broker::Gap;
use crate::domain::{PostId, UserId};
use crate::metrics::Metrics;
use crate::store::{Store, StoreError};

/// How far before the gap the window opens. Post ids carry the clock of the
/// instance that wrote them, and the relay publishes a post a little after
/// its commit (seconds while it fails over): a post written this long
/// before the gap may still have been published into it.
const MARGIN: Duration = Duration::from_secs(30);
/// How long a delivered id is remembered, in time of live traffic: longer
/// than the window a recovery looks back over.
const RETAIN: Duration = Duration::from_secs(60);
/// Bounds the memory of delivered ids at any post rate (16 bytes and a
/// queue slot each).
const MAX_REMEMBERED: usize = 1_000_000;
/// Most posts one recovery reads; a socket holds at most its queue anyway,
/// and a client that falls that far behind is closed and catches up with
/// `?since=`.
const MAX_RECOVERED: i64 = 10_000;
const AUTHORS_PER_QUERY: usize = 1_000;
/// New bindings (follows made during the gap) and their catch-ups are
/// awaited this long before the posts are read; a binding still pending
/// after it is re-applied by the broker anyway, and its catch-up still runs.
const BINDING_WAIT: Duration = Duration::from_secs(10);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// The oldest post a gap recovery may still read back. It moves in time of
/// live traffic, as [`Delivered`] forgets, and stands still while the
/// broker is cut off: a recovery reads from [`MARGIN`] before the last
/// moment the queue was known alive, and the hub takes live posts from a
/// queue that was alive a moment ago. [`RETAIN`] leaves the difference for
/// the clocks of the instances that wrote the posts.
pub(super) struct Horizon {
    unix_ms: AtomicU64,
}

impl Horizon {
    /// A first recovery reads from shortly before the instance started.
    pub(super) fn new(now: SystemTime) -> Self {
        Self {
            unix_ms: AtomicU64::new(retained_from(now)),
        }
    }

    /// Live traffic reached the hub at `now`.
    pub(super) fn advance(&self, now: SystemTime) {
        self.unix_ms
            .fetch_max(retained_from(now), Ordering::Relaxed);
    }

    pub(super) fn oldest(&self) -> PostId {
        PostId::first_at(self.unix_ms.load(Ordering::Relaxed))
    }
}

fn retained_from(now: SystemTime) -> u64 {
    unix_ms(now.checked_sub(RETAIN).unwrap_or(UNIX_EPOCH))
}

/// Ids of the posts the hub fanned out recently, oldest first.
#[derive(Default)]
pub(super) struct Delivered {
    ids: HashSet<PostId>,
    order: VecDeque<(Instant, PostId)>,
}

impl Delivered {
    /// Records `id`; false if it was delivered already.
    pub(super) fn first_time(&mut self, id: PostId, now: Instant) -> bool {
        if !self.ids.insert(id) {
            return false;
        }
        self.order.push_back((now, id));
        if self.order.len() > MAX_REMEMBERED {
            self.forget_oldest();
        }
        true
    }

    /// Forgets ids delivered more than [`RETAIN`] before `now`. Called on
    /// live deliveries only: while the broker is cut off nothing is
    /// forgotten, so the recovery after a long gap still knows what went
    /// out just before it.
    pub(super) fn forget_old(&mut self, now: Instant) {
        while self
            .order
            .front()
            .is_some_and(|(at, _)| now.saturating_duration_since(*at) > RETAIN)
        {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((_, id)) = self.order.pop_front() {
            self.ids.remove(&id);
        }
    }
}

/// Recovers from `gap`, retrying until it succeeds or `stop` fires: live
/// delivery waits meanwhile, so that no post overtakes an older one of the
/// same author.
pub(super) async fn recover(
    gap: Gap,
    registry: &Arc<Registry>,
    catch_ups: &Arc<CatchUps>,
    store: &Store,
    metrics: &Arc<Metrics>,
    delivered: &mut Delivered,
    stop: &CancellationToken,
) {
    let mut delay = RETRY_MIN;
    loop {
        match recover_once(gap, registry, catch_ups, store, metrics, delivered).await {
            Ok(sent) => {
                metrics.gap_recoveries.fetch_add(1, Ordering::Relaxed);
                metrics.recovered_posts.fetch_add(sent, Ordering::Relaxed);
                if sent > 0 {
                    tracing::info!(sent, since = ?gap.since, "recovered posts missed during a broker gap");
                }
                return;
            }
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "cannot recover from a broker gap yet");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return,
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        }
    }
}

/// Returns how many posts were fanned out.
async fn recover_once(
    gap: Gap,
    registry: &Arc<Registry>,
    catch_ups: &Arc<CatchUps>,
    store: &Store,
    metrics: &Arc<Metrics>,
    delivered: &mut Delivered,
) -> Result<u64, StoreError> {
    let users = registry.users();
    if users.is_empty() {
        return Ok(0);
    }
    let mut follows: HashMap<UserId, HashSet<UserId>> =
        users.iter().map(|user| (*user, HashSet::new())).collect();
    for (follower, author) in store.follows_of(&users).await? {
        follows.entry(follower).or_default().insert(author);
    }
    let window_start_ms = window_start_ms(gap);
    // The read below sends the posts of the new bindings' authors in order
    // with the rest; a binding still pending when it starts gets its own
    // catch-up.
    let read_started = Arc::new(AtomicBool::new(false));
    let catch_ups: Vec<_> = follows
        .iter()
        .flat_map(|(user, authors)| registry.follow_exactly(*user, authors, window_start_ms))
        .map(|binding| {
            catch_up::after_binding(binding, registry, catch_ups, Some(read_started.clone()))
        })
        .collect();
    if tokio::time::timeout(BINDING_WAIT, join_all(catch_ups))
        .await
        .is_err()
    {
        tracing::warn!("broker bindings still pending after a gap; reading posts anyway");
    }

    read_started.store(true, Ordering::Release);
    let since = PostId::first_at(window_start_ms);
    let mut posts = Vec::new();
    for authors in registry.authors().chunks(AUTHORS_PER_QUERY) {
        posts.extend(
            store
                .posts_by_authors_since(authors, since, MAX_RECOVERED)
                .await?,
        );
    }
    posts.sort_unstable_by_key(|post| post.id);
    if posts.len() > MAX_RECOVERED as usize {
        tracing::warn!(
            missed = posts.len(),
            "more posts missed than one recovery sends; the newest are left out"
        );
        posts.truncate(MAX_RECOVERED as usize);
    }
    let now = Instant::now();
    let mut sent = 0;
    for post in &posts {
        if delivered.first_time(post.id, now) {
            fan_out(registry, metrics, Arc::new(stored_post_frame(post)));
            sent += 1;
        }
    }
    Ok(sent)
}

fn window_start_ms(gap: Gap) -> u64 {
    unix_ms(gap.since.checked_sub(MARGIN).unwrap_or(UNIX_EPOCH))
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_post_is_delivered_once() {
        let mut delivered = Delivered::default();
        let id = PostId::new_v7();
        let now = Instant::now();
        assert!(delivered.first_time(id, now));
        assert!(!delivered.first_time(id, now));
    }

    #[test]
    fn ids_are_forgotten_only_by_live_time() {
        let mut delivered = Delivered::default();
        let start = Instant::now();
        let old = PostId::new_v7();
        delivered.first_time(old, start);
        // A long gap: nothing is forgotten until live traffic moves on.
        assert!(!delivered.first_time(old, start + RETAIN * 10));
        delivered.forget_old(start + RETAIN - Duration::from_secs(1));
        assert!(!delivered.first_time(old, start));
        delivered.forget_old(start + RETAIN + Duration::from_secs(1));
        assert!(delivered.first_time(old, start + RETAIN * 2));
    }

    #[test]
    fn the_horizon_stays_behind_every_recovery_window_and_never_moves_back() {
        let start = UNIX_EPOCH + Duration::from_secs(10_000);
        let horizon = Horizon::new(start);
        let gap_now = Gap { since: start };
        assert!(horizon.oldest() < PostId::first_at(window_start_ms(gap_now)));
        horizon.advance(start + Duration::from_secs(100));
        let later = Gap {
            since: start + Duration::from_secs(99),
        };
        assert!(horizon.oldest() < PostId::first_at(window_start_ms(later)));
        assert!(horizon.oldest() > PostId::first_at(window_start_ms(gap_now)));
        let moved = horizon.oldest();
        horizon.advance(start);
        assert_eq!(
            horizon.oldest(),
            moved,
            "a late reading does not move it back"
        );
    }

    #[test]
    fn the_window_opens_a_margin_before_the_gap() {
        let since = UNIX_EPOCH + Duration::from_secs(1_000);
        assert_eq!(
            window_start_ms(Gap { since }),
            (1_000 - MARGIN.as_secs()) * 1_000
        );
        assert_eq!(window_start_ms(Gap { since: UNIX_EPOCH }), 0);
    }
}

/// The hub's duplicate window against a plain model of it.
#[cfg(test)]
mod properties {
    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Step {
        /// A delivery of post `n` of a small pool, `secs` after the last step.
        Deliver { n: u8, secs: u64 },
        /// Live traffic moving on, `secs` after the last step.
        ForgetOld { secs: u64 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => (0u8..16, 0u64..40).prop_map(|(n, secs)| Step::Deliver { n, secs }),
            1 => (0u64..90).prop_map(|secs| Step::ForgetOld { secs }),
        ]
    }

    proptest! {
        #[test]
        fn a_post_is_refused_exactly_while_remembered(steps in proptest::collection::vec(step(), 1..80)) {
            let ids: Vec<PostId> = (0..16).map(|n| PostId::from_uuid(uuid::Uuid::from_u128(n))).collect();
            let start = Instant::now();
            let mut now = start;
            let mut delivered = Delivered::default();
            // (when, which) of every post remembered, as the model sees it.
            let mut model: Vec<(Instant, usize)> = Vec::new();
            for step in steps {
                match step {
                    Step::Deliver { n, secs } => {
                        now += Duration::from_secs(secs);
                        let n = usize::from(n);
                        let fresh = !model.iter().any(|(_, m)| *m == n);
                        prop_assert_eq!(delivered.first_time(ids[n], now), fresh);
                        if fresh {
                            model.push((now, n));
                        }
                    }
                    Step::ForgetOld { secs } => {
                        now += Duration::from_secs(secs);
                        delivered.forget_old(now);
                        model.retain(|(at, _)| now.duration_since(*at) <= RETAIN);
                    }
                }
            }
        }
    }
}
