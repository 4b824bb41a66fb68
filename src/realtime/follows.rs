//! Reads whom the users of connecting sockets follow, many in one
//! statement.
//!
//! Every new socket reads its user's follows with the mark of that read
//! ([`Store::follows_and_mark`]). In a connect storm these were one
//! statement each, and on these machines PostgreSQL spends its CPU on a
//! statement's round trip, not on reading 25 rows (BENCHMARKS.md §22):
//! the reads that queue up while a statement runs share the next one. A
//! lone socket's read starts at once, as before. When a statement fails
//! because PostgreSQL is down or silent (the store's answer deadline), the
//! reads queued behind it fail with it instead of each waiting out the
//! deadline in turn. Never reads for a socket before it asked: its
//! registry clock reading must come before the snapshot.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::batches::Batched;
use crate::domain::UserId;
use crate::store::{CommitMark, Store, StoreError};

/// Most users one statement reads for.
const MOST_USERS: usize = 256;

/// A user's follows and the mark of the read they came from.
pub(super) type Follows = (Vec<UserId>, Arc<CommitMark>);

/// The queue of follows reads waiting for the instance's reader
/// ([`FollowReads::run`]).
#[derive(Default)]
pub struct FollowReads(Batched<Request>);

struct Request {
    user: UserId,
    reply: oneshot::Sender<Result<Follows, Arc<StoreError>>>,
}

impl FollowReads {
    /// The instance's reader: runs the queued reads, those that queued up
    /// together in one statement, until the queue's sender is dropped. One
    /// statement at a time: with four in flight, a cold storm's statements
    /// carried few reads each, and PostgreSQL spent 120-146 us per connect
    /// against 46-80 us with one (BENCHMARKS.md §22).
    pub fn run(&self, store: Store) -> impl Future<Output = ()> + use<> {
        let reader = self.0.reader();
        async move {
            let Some(mut reader) = reader else {
                return;
            };
            while let Some(batch) = reader.next_batch(|_| 1, MOST_USERS).await {
                if let Err(outage) = answer(&store, batch).await {
                    fail(reader.queued(), &outage);
                }
            }
        }
    }

    /// Whom `user` follows, and the mark of that read.
    pub(super) async fn read(&self, user: UserId) -> Result<Follows, Arc<StoreError>> {
        let (reply, answer) = oneshot::channel();
        let stopping = || Arc::new(StoreError::Unavailable("the instance is stopping".into()));
        if !self.0.push(Request { user, reply }) {
            return Err(stopping());
        }
        answer.await.map_err(|_| stopping())?
    }
}

/// Answers every read of `batch` with one statement; the error if it
/// failed because the database is unavailable.
async fn answer(store: &Store, batch: Vec<Request>) -> Result<(), Arc<StoreError>> {
    let users: Vec<UserId> = batch.iter().map(|request| request.user).collect();
    match store.follows_and_mark(&users).await {
        Ok((follows, mark)) => {
            let mark = Arc::new(mark);
            for (request, authors) in batch.into_iter().zip(follows) {
                let _ = request.reply.send(Ok((authors, mark.clone())));
            }
            Ok(())
        }
        Err(error) => {
            let error = Arc::new(error);
            fail(batch, &error);
            match *error {
                StoreError::Unavailable(_) => Err(error),
                _ => Ok(()),
            }
        }
    }
}

fn fail(requests: Vec<Request>, error: &Arc<StoreError>) {
    for request in requests {
        let _ = request.reply.send(Err(error.clone()));
    }
}
