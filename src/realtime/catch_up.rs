//! Reads back from PostgreSQL the posts a subscription could not get live:
//! those routed elsewhere while its key's broker binding was on its way,
//! and those that passed the hub between a fresh socket's read of its
//! follows and its registration. Each recipient gets exactly the posts its
//! [`Start`] admits; the seam the registry opened for it drops the copy of
//! one that also came live. Never decides about seams, never waits for the
//! broker before a socket is ready.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::codec::stored_post_frame;
use super::registry::{Binding, Registry, Start};
use super::socket::{CATCH_UP_LIMIT, Push, Socket};
use super::time_written;
use crate::domain::{PostId, UserId};
use crate::metrics::Metrics;
use crate::store::{CommitMark, MarkedPost, Store, StoreError};

/// Most posts one catch-up sends: those written in a window of
/// milliseconds (seconds when thousands of sockets connect to a fresh
/// instance at once). The socket's seam covers this many.
const LIMIT: i64 = CATCH_UP_LIMIT as i64;
/// Most posts of one author that can be in flight (inserted, not yet
/// committed) at once: how far before a mark's sequence value a read looks.
pub(super) const CONCURRENT_PER_AUTHOR: i64 = 16;
/// A follow's time comes from the clock of the instance that made it; a
/// post written up to this long before the follow may show up after it.
const CLOCK_SKEW_MS: u64 = 1000;
/// A catch-up that cannot read PostgreSQL tries again this many times, the
/// delay doubling from [`RETRY_MIN`]: until it succeeds, posts are missing.
const ATTEMPTS: u32 = 6;
const RETRY_MIN: Duration = Duration::from_millis(200);

/// Once `binding` is in place, sends its recipients what their authors
/// wrote while it was pending. With `covered`, the caller reads those posts
/// itself, in order, once the flag is set: a binding in place before that
/// needs no catch-up.
pub(super) fn after_binding(
    binding: Binding,
    registry: &Arc<Registry>,
    store: &Store,
    metrics: &Arc<Metrics>,
    covered: Option<Arc<AtomicBool>>,
) -> JoinHandle<()> {
    let (registry, store, metrics) = (registry.clone(), store.clone(), metrics.clone());
    tokio::spawn(async move {
        let Some(pending) = registry.bound(binding).await else {
            return;
        };
        if covered.is_some_and(|read| !read.load(Ordering::Acquire)) {
            return;
        }
        // One entry per socket: the earliest start wins.
        let mut marked = HashMap::new();
        let mut since = HashMap::new();
        for (socket, start) in pending.recipients {
            let key = Arc::as_ptr(&socket) as usize;
            match start {
                Start::Mark(mark) => {
                    marked.insert(key, (socket, mark));
                }
                Start::Since(ms) => {
                    let entry = since.entry(key).or_insert((socket, ms));
                    entry.1 = entry.1.min(ms);
                }
            }
        }
        let authors = &pending.authors;
        let mut sent = 0;
        if let Some(seq) = marked.values().map(|(_, mark)| mark.seq).min() {
            let readers = readers(marked.values());
            let read = || store.posts_after_mark(authors, seq, LIMIT, CONCURRENT_PER_AUTHOR);
            if let Some(read) = read_back(&store, &readers, read).await {
                sent += send(&read, marked.values(), &metrics, |mark, post| {
                    !mark.saw(post.written_by)
                });
            }
        }
        if let Some(ms) = since.values().map(|(_, ms)| *ms).min() {
            let first = |ms: u64| PostId::first_at(ms.saturating_sub(CLOCK_SKEW_MS));
            let readers = readers(since.values());
            let store = &store;
            let read = || async move {
                let posts = store
                    .posts_by_authors_since(authors, first(ms), LIMIT)
                    .await?;
                Ok(posts
                    .into_iter()
                    .map(|post| MarkedPost {
                        post,
                        written_by: None,
                    })
                    .collect())
            };
            if let Some(read) = read_back(store, &readers, read).await {
                sent += send(&read, since.values(), &metrics, |ms, post| {
                    post.post.id >= first(*ms)
                });
            }
        }
        metrics
            .binding_catch_up_posts
            .fetch_add(sent, Ordering::Relaxed);
    })
}

/// Sends a fresh socket the posts of `authors` committed after `mark` that
/// may have passed before it was registered.
pub(super) fn for_socket(
    socket: Arc<Socket>,
    mark: Arc<CommitMark>,
    authors: Vec<UserId>,
    store: &Store,
    metrics: &Arc<Metrics>,
) -> JoinHandle<()> {
    let (store, metrics) = (store.clone(), metrics.clone());
    tokio::spawn(async move {
        let read = || store.posts_after_mark(&authors, mark.seq, LIMIT, CONCURRENT_PER_AUTHOR);
        if let Some(read) = read_back(&store, &[socket.user], read).await {
            let recipient = [(socket, mark)];
            let sent = send(&read, recipient.iter(), &metrics, |mark, post| {
                !mark.saw(post.written_by)
            });
            metrics
                .subscribe_catch_up_posts
                .fetch_add(sent, Ordering::Relaxed);
        }
    })
}

/// Posts read back, and which of their recipients' users followed their
/// authors in a read made after them.
struct ReadBack {
    posts: Vec<MarkedPost>,
    follows: HashSet<(UserId, UserId)>,
}

/// The users of `recipients`, once each.
fn readers<'a, S: 'a>(recipients: impl Iterator<Item = &'a (Arc<Socket>, S)>) -> Vec<UserId> {
    let users: HashSet<UserId> = recipients.map(|(socket, _)| socket.user).collect();
    users.into_iter().collect()
}

/// Reads posts with `read`, then which of `readers` follow their authors.
///
/// A socket learns of an unfollow when the hub applies it, and that may
/// come after a post its author wrote after the unfollow is read back
/// here: the live path orders the two (the relay publishes the unfollow
/// first), a read-back does not. The follows are read after the posts, so
/// they show every unfollow that committed before any post read: a post
/// goes to a reader who still follows its author there.
async fn read_back<F>(store: &Store, readers: &[UserId], read: impl Fn() -> F) -> Option<ReadBack>
where
    F: Future<Output = Result<Vec<MarkedPost>, StoreError>>,
{
    let read = &read;
    with_retries(|| async move {
        let posts = read().await?;
        if posts.is_empty() {
            return Ok(ReadBack {
                posts,
                follows: HashSet::new(),
            });
        }
        let authors: HashSet<UserId> = posts.iter().map(|p| p.post.author_user_id).collect();
        let authors: Vec<UserId> = authors.into_iter().collect();
        let follows = store.follows_among(readers, &authors).await?;
        Ok(ReadBack {
            posts,
            follows: follows.into_iter().collect(),
        })
    })
    .await
}

/// Pushes each post (oldest first) to the recipients that follow its author,
/// here and in the read after the posts, and whose start `admits` it;
/// returns how many posts went to any.
fn send<'a, S: 'a>(
    read: &ReadBack,
    recipients: impl Iterator<Item = &'a (Arc<Socket>, S)> + Clone,
    metrics: &Metrics,
    admits: impl Fn(&S, &MarkedPost) -> bool,
) -> u64 {
    let mut sent = 0;
    for post in &read.posts {
        let author = post.post.author_user_id;
        let frame = Arc::new(stored_post_frame(&post.post));
        let mut delivered = false;
        for (socket, start) in recipients.clone() {
            if !admits(start, post)
                || !read.follows.contains(&(socket.user, author))
                || !follows(socket, author)
            {
                continue;
            }
            match socket.push(&frame) {
                pushed @ (Push::Written | Push::Queued) => {
                    delivered = true;
                    metrics.deliveries.fetch_add(1, Ordering::Relaxed);
                    if matches!(pushed, Push::Written) {
                        time_written(metrics, frame.published_at_micros, 1);
                    }
                }
                Push::Overflowed => {
                    metrics.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
                }
                Push::Dropped => {}
            }
        }
        sent += u64::from(delivered);
    }
    sent
}

fn follows(socket: &Socket, author: UserId) -> bool {
    socket
        .follows
        .lock()
        .expect("follows lock")
        .authors
        .contains(&author)
}

/// Runs `read` until it succeeds, [`ATTEMPTS`] times at most.
async fn with_retries<T, F>(read: impl Fn() -> F) -> Option<T>
where
    F: Future<Output = Result<T, StoreError>>,
{
    let mut delay = RETRY_MIN;
    for attempt in 1..=ATTEMPTS {
        match read().await {
            Ok(value) => return Some(value),
            Err(error) if attempt < ATTEMPTS => {
                tracing::warn!(%error, retry_in = ?delay, "cannot read posts to catch up yet");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(error) => tracing::error!(%error, "gave up reading posts to catch up"),
        }
    }
    None
}
