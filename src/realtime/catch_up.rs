//! Reads back from PostgreSQL the posts a subscription could not get live:
//! those routed elsewhere while its key's broker binding was on its way,
//! and those that passed the hub between a fresh socket's read of its
//! follows and its registration. Each recipient gets exactly the posts its
//! [`Start`] admits, of the authors its own catch-up asked for; the seam the
//! registry opened for it drops the copy of one that also came live. Never
//! decides about seams, never waits for the broker before a socket is
//! ready.
//!
//! One reader per instance runs the catch-ups: those that queued up while
//! it read share its next read. A cold instance starts up to 1,024
//! bindings and as many socket catch-ups within a second, each one query
//! (or two) of its own before; beside the sockets' own follows reads on the
//! same pooled connections they were half of the connect storm's
//! PostgreSQL statements (BENCHMARKS.md §21).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::batches::Batched;
use super::codec::stored_post_frame;
use super::recovery::Horizon;
use super::registry::{Binding, Pending, Registry, Start};
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
/// Most authors one shared read asks for: bounds one statement's work.
const BATCH_AUTHORS: usize = 4096;

/// The queue of catch-ups waiting for the instance's reader
/// ([`CatchUps::run`]).
#[derive(Default)]
pub struct CatchUps(Batched<Job>);

/// One catch-up: the posts of `authors` its recipients' starts admit.
struct Job {
    authors: HashSet<UserId>,
    /// One entry per socket: the earliest start of each kind wins.
    marked: Vec<(Arc<Socket>, Arc<CommitMark>)>,
    since: Vec<(Arc<Socket>, u64)>,
    /// Where the posts it sent are counted.
    counter: fn(&Metrics) -> &AtomicU64,
    /// Fires once its posts are sent (or given up on).
    done: oneshot::Sender<()>,
}

impl Job {
    fn new(
        authors: impl IntoIterator<Item = UserId>,
        recipients: Vec<(Arc<Socket>, Start)>,
        counter: fn(&Metrics) -> &AtomicU64,
    ) -> (Self, oneshot::Receiver<()>) {
        let mut marked = HashMap::new();
        let mut since = HashMap::new();
        for (socket, start) in recipients {
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
        let (done, finished) = oneshot::channel();
        let job = Self {
            authors: authors.into_iter().collect(),
            marked: marked.into_values().collect(),
            since: since.into_values().collect(),
            counter,
            done,
        };
        (job, finished)
    }
}

impl CatchUps {
    /// The instance's reader: runs the queued catch-ups, those that queued
    /// up together in one read, until the queue's sender is dropped.
    pub fn run(
        &self,
        store: Store,
        horizon: Arc<Horizon>,
        metrics: Arc<Metrics>,
    ) -> impl Future<Output = ()> + use<> {
        let reader = self.0.reader();
        async move {
            let Some(mut reader) = reader else {
                return;
            };
            while let Some(batch) = reader
                .next_batch(|job: &Job| job.authors.len(), BATCH_AUTHORS)
                .await
            {
                let oldest = horizon.oldest();
                if !read_and_send(&store, &metrics, oldest, &batch).await {
                    // Together, the posts were more than one read returns:
                    // each alone gets what a catch-up of its own would.
                    for job in &batch {
                        read_and_send(&store, &metrics, oldest, std::slice::from_ref(job)).await;
                    }
                }
                for job in batch {
                    let _ = job.done.send(());
                }
            }
        }
    }

    /// Queues `job`; resolves once its posts are sent. A reader that is
    /// gone (the instance is stopping) completes it with nothing sent.
    async fn submit(&self, job: Job, finished: oneshot::Receiver<()>) {
        if self.0.push(job) {
            let _ = finished.await;
        }
    }
}

/// Once `binding` is in place, sends its recipients what their authors
/// wrote while it was pending. With `covered`, the caller reads those posts
/// itself, in order, once the flag is set: a binding in place before that
/// needs no catch-up.
pub(super) fn after_binding(
    binding: Binding,
    registry: &Arc<Registry>,
    catch_ups: &Arc<CatchUps>,
    covered: Option<Arc<AtomicBool>>,
) -> JoinHandle<()> {
    let (registry, catch_ups) = (registry.clone(), catch_ups.clone());
    tokio::spawn(async move {
        let Some(Pending {
            authors,
            recipients,
        }) = registry.bound(binding).await
        else {
            return;
        };
        if recipients.is_empty() || covered.is_some_and(|read| !read.load(Ordering::Acquire)) {
            return;
        }
        let (job, finished) = Job::new(authors, recipients, |metrics| {
            &metrics.binding_catch_up_posts
        });
        catch_ups.submit(job, finished).await;
    })
}

/// Sends a fresh socket the posts of `authors` committed after `mark` that
/// may have passed before it was registered.
pub(super) fn for_socket(
    socket: Arc<Socket>,
    mark: Arc<CommitMark>,
    authors: Vec<UserId>,
    catch_ups: &Arc<CatchUps>,
) -> JoinHandle<()> {
    let catch_ups = catch_ups.clone();
    tokio::spawn(async move {
        let recipient = vec![(socket, Start::Mark(mark))];
        let (job, finished) = Job::new(authors, recipient, |metrics| {
            &metrics.subscribe_catch_up_posts
        });
        catch_ups.submit(job, finished).await;
    })
}

/// One read for all of `jobs` (one per kind of start), then each job's
/// posts to its recipients. Returns false, having sent nothing, when the
/// jobs were several and a read returned as many posts as it may: some of
/// theirs may be missing from it.
/// `horizon` is the oldest post a gap recovery may read back again.
async fn read_and_send(store: &Store, metrics: &Metrics, horizon: PostId, jobs: &[Job]) -> bool {
    let authors = |pick: fn(&Job) -> bool| -> Vec<UserId> {
        let authors: HashSet<UserId> = jobs
            .iter()
            .filter(|job| pick(job))
            .flat_map(|job| job.authors.iter().copied())
            .collect();
        authors.into_iter().collect()
    };
    let first = |ms: u64| PostId::first_at(ms.saturating_sub(CLOCK_SKEW_MS));

    let marked = authors(|job| !job.marked.is_empty());
    let marked_read = if marked.is_empty() {
        None
    } else {
        let readers = readers(jobs.iter().flat_map(|job| &job.marked));
        let marks = || {
            jobs.iter()
                .flat_map(|job| &job.marked)
                .map(|(_, mark)| &**mark)
        };
        let read = || store.posts_after_marks(&marked, marks(), LIMIT, CONCURRENT_PER_AUTHOR);
        read_back(store, &readers, read).await
    };

    let since = authors(|job| !job.since.is_empty());
    let earliest = jobs
        .iter()
        .flat_map(|job| &job.since)
        .map(|(_, ms)| *ms)
        .min();
    let since_read = match earliest {
        Some(ms) if !since.is_empty() => {
            let readers = readers(jobs.iter().flat_map(|job| &job.since));
            let read = || async {
                let posts = store
                    .posts_by_authors_since(&since, first(ms), LIMIT)
                    .await?;
                Ok(posts
                    .into_iter()
                    .map(|post| MarkedPost {
                        post,
                        written_by: None,
                    })
                    .collect())
            };
            read_back(store, &readers, read).await
        }
        _ => None,
    };

    let full =
        |read: &Option<ReadBack>| read.as_ref().is_some_and(|r| r.posts.len() as i64 >= LIMIT);
    if jobs.len() > 1 && (full(&marked_read) || full(&since_read)) {
        return false;
    }
    for job in jobs {
        let mut sent = 0;
        if let Some(read) = &marked_read {
            sent += send(read, job, &job.marked, metrics, horizon, |mark, post| {
                !mark.saw(post.written_by)
            });
        }
        if let Some(read) = &since_read {
            sent += send(read, job, &job.since, metrics, horizon, |ms, post| {
                post.post.id >= first(*ms)
            });
        }
        (job.counter)(metrics).fetch_add(sent, Ordering::Relaxed);
    }
    true
}

/// Posts read back, and which of their recipients' users followed their
/// authors in a read made after them.
struct ReadBack {
    posts: Vec<MarkedPost>,
    follows: HashSet<(UserId, UserId)>,
}

/// The users of `recipients`, once each.
fn readers<'a, S: 'a>(recipients: impl IntoIterator<Item = &'a (Arc<Socket>, S)>) -> Vec<UserId> {
    let users: HashSet<UserId> = recipients
        .into_iter()
        .map(|(socket, _)| socket.user)
        .collect();
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

/// Pushes each post of `job`'s authors (oldest first) to the recipients
/// that follow its author, here and in the read after the posts, and whose
/// start `admits` it; returns how many posts went to any.
fn send<S>(
    read: &ReadBack,
    job: &Job,
    recipients: &[(Arc<Socket>, S)],
    metrics: &Metrics,
    horizon: PostId,
    admits: impl Fn(&S, &MarkedPost) -> bool,
) -> u64 {
    if recipients.is_empty() {
        return 0;
    }
    let mut sent = 0;
    for post in &read.posts {
        let author = post.post.author_user_id;
        if !job.authors.contains(&author) {
            continue;
        }
        let frame = Arc::new(stored_post_frame(&post.post));
        let mut delivered = false;
        for (socket, start) in recipients {
            if !admits(start, post)
                || !read.follows.contains(&(socket.user, author))
                || !follows(socket, author)
            {
                continue;
            }
            match socket.push_read_back(&frame, horizon) {
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
