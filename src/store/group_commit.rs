//! Group commit for new posts: the posts that arrive while a write is in
//! flight go to PostgreSQL together, as one statement writing every post
//! row and every outbox row, one transaction and one WAL flush for all of
//! them. Under load that is most of what a post costs the database; alone,
//! a post still waits for nothing but its own statement.
//!
//! Owns the batching and what a failed batch means for each post in it. A
//! post is answered only after the transaction holding it commits; it must
//! never answer one post with another's error.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::StoreError;
use super::outbox::{OutboxRows, insert_rows};
use crate::domain::Post;
use crate::outbox::OutboxMessage;

/// Writes in flight at once: one filling while one commits keeps the
/// database busy without taking more of the pool than a burst needs.
const WRITES_IN_FLIGHT: usize = 2;
/// Posts in one statement: bounds its parameters and how long it holds locks.
const MAX_BATCH: usize = 256;
/// Posts waiting for a write; a request past this waits for room.
const QUEUE: usize = 4096;

/// One post waiting to be written, and whom to tell when it has been.
struct Pending {
    post: Post,
    events: Vec<OutboxMessage>,
    written: oneshot::Sender<Result<(), StoreError>>,
}

/// The queue of posts to write; the writer ends when every handle is gone.
#[derive(Clone)]
pub(super) struct GroupCommit {
    queue: mpsc::Sender<Pending>,
    /// Posts handed over and not yet answered (queued or being written).
    waiting: Arc<AtomicUsize>,
}

/// Counts one post in [`GroupCommit::waiting`] for as long as it lives, so
/// a request given up on while it waits is uncounted too.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn count(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        Self(waiting)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl GroupCommit {
    /// Starts the writer; must be called inside a Tokio runtime. A write
    /// that has not finished within `deadline` fails its posts with 503 and
    /// frees its slot, so a database that stops answering (rather than
    /// refusing) cannot hold every later post in the queue.
    pub fn start(pool: Pool, deadline: Duration) -> Self {
        let (queue, pending) = mpsc::channel(QUEUE);
        tokio::spawn(batch_and_write(pool, deadline, pending));
        Self {
            queue,
            waiting: Arc::default(),
        }
    }

    /// Posts waiting for their write to commit, for `/metrics`.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    /// Stores `post` and the `events` announcing it; `Ok` once committed.
    pub async fn write(&self, post: &Post, events: &[OutboxMessage]) -> Result<(), StoreError> {
        let _waiting = Waiting::count(&self.waiting);
        let (written, outcome) = oneshot::channel();
        let pending = Pending {
            post: post.clone(),
            events: events.to_vec(),
            written,
        };
        self.queue.send(pending).await.map_err(|_| stopped())?;
        outcome.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable("the post writer has stopped".into())
}

/// Takes whatever has queued up since the last write began, up to
/// [`MAX_BATCH`], whenever a write slot is free.
async fn batch_and_write(pool: Pool, deadline: Duration, mut pending: mpsc::Receiver<Pending>) {
    let slots = Arc::new(Semaphore::new(WRITES_IN_FLIGHT));
    while let Some(first) = pending.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let pool = pool.clone();
        tokio::spawn(async move {
            write_batch(&pool, deadline, batch).await;
            drop(slot);
        });
    }
}

/// Writes `batch` in one statement and answers each post. A batch refused
/// for one post's sake (its author was deleted meanwhile) is written again
/// post by post, so only that post fails.
async fn write_batch(pool: &Pool, deadline: Duration, batch: Vec<Pending>) {
    match insert(pool, deadline, &batch).await {
        Ok(()) => {
            for post in batch {
                let _ = post.written.send(Ok(()));
            }
        }
        Err(StoreError::Unavailable(e)) => {
            let reason = e.to_string();
            for post in batch {
                let _ = post
                    .written
                    .send(Err(StoreError::Unavailable(reason.clone().into())));
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(post) = batch.into_iter().next() {
                let _ = post.written.send(Err(e));
            }
        }
        Err(_) => {
            for post in batch {
                let outcome = insert(pool, deadline, std::slice::from_ref(&post)).await;
                let _ = post.written.send(outcome);
            }
        }
    }
}

/// [`insert_now`], failed as an outage if it takes longer than `deadline`.
async fn insert(pool: &Pool, deadline: Duration, batch: &[Pending]) -> Result<(), StoreError> {
    super::within(deadline, insert_now(pool, batch)).await
}

/// One statement, so one transaction: the posts and their events commit
/// together or not at all, in the order they were queued.
async fn insert_now(pool: &Pool, batch: &[Pending]) -> Result<(), StoreError> {
    static INSERT: LazyLock<String> = LazyLock::new(|| {
        format!(
            "WITH written AS ( \
                 INSERT INTO posts (id, author_id, text) \
                 SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[]) \
             ) {}",
            insert_rows(4)
        )
    });
    let ids: Vec<uuid::Uuid> = batch.iter().map(|p| *p.post.id.as_uuid()).collect();
    let authors: Vec<uuid::Uuid> = batch
        .iter()
        .map(|p| *p.post.author_user_id.as_uuid())
        .collect();
    let texts: Vec<&str> = batch.iter().map(|p| p.post.text.as_str()).collect();
    let events = OutboxRows::of(batch.iter().flat_map(|p| &p.events));
    let client = pool.get().await?;
    let statement = client.prepare_cached(&INSERT).await?;
    client
        .execute(
            &statement,
            &[
                &ids,
                &authors,
                &texts,
                &events.topics,
                &events.keys,
                &events.bodies,
            ],
        )
        .await?;
    Ok(())
}
