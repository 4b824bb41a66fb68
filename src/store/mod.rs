//! PostgreSQL: the source of truth. Everything above this module speaks in
//! domain types; SQL stays here.

mod backlog;
mod connect;
mod dialogs;
mod error;
mod friends;
mod group_commit;
mod idempotency;
mod mark;
mod migrate;
mod outbox;
mod posts;
mod users;

use std::future::Future;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime, Timeouts};
use futures_util::future::join_all;
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

use crate::domain::UserId;
use crate::outbox::OutboxMessage;

pub use backlog::BackloggedEvent;
pub use connect::{Tls, connection, parse_url};
pub use error::StoreError;
pub use idempotency::{Endpoint, Once, Outcome, StoredResponse};
pub use mark::{CommitMark, MarkedPost};
pub use migrate::{create_database_if_missing, migrate};
pub use outbox::{ClaimedMessage, OutboxLeader, RELAY_LOCK};
pub use posts::{Audience, FeedIds, FeedSource, PostAudience};

/// How the service talks to PostgreSQL.
#[derive(Debug, Clone)]
pub struct StoreSettings {
    pub database_url: String,
    pub pool_size: usize,
    /// How long a request may wait for a connection (or to open one) before
    /// the database counts as unavailable.
    pub acquire_timeout: Duration,
    /// Server-side cap on one statement, so a stuck query cannot hold a
    /// pooled connection forever.
    pub statement_timeout: Duration,
}

/// A pool of prepared-statement-caching connections. Connections are opened
/// lazily, so the service starts (and answers 503) while PostgreSQL is down,
/// and heals by itself when it returns.
#[derive(Clone)]
pub struct Store {
    pool: Pool,
    /// For connections that cannot be pooled (the outbox relay's LISTEN).
    config: tokio_postgres::Config,
    tls: Tls,
    /// Longest a read, or the group commit, waits for an answer: a
    /// connection and one statement. The reads of a connecting websocket
    /// have no request deadline above them, and several sockets share each
    /// of them. Writes outside the group commit are left to their
    /// request's deadline: abandoning one does not say whether it
    /// committed.
    answer_deadline: Duration,
    /// Where new posts wait to be written together.
    posts: group_commit::GroupCommit,
    acquire_timeout: Duration,
}

impl Store {
    /// Must be called inside a Tokio runtime: it starts the post writer.
    pub fn new(settings: &StoreSettings) -> Result<Self, StoreError> {
        let (mut pg, tls) = connection(&settings.database_url)?;
        let answer_deadline = settings.acquire_timeout + settings.statement_timeout;
        pg.connect_timeout(settings.acquire_timeout);
        pg.options(format!(
            "-c statement_timeout={}",
            settings.statement_timeout.as_millis()
        ));
        let manager = Manager::from_config(
            pg.clone(),
            tls.clone(),
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size)
            .wait_timeout(Some(settings.acquire_timeout))
            .create_timeout(Some(settings.acquire_timeout))
            .recycle_timeout(Some(settings.acquire_timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| StoreError::Config(e.to_string().into()))?;
        Ok(Self {
            posts: group_commit::GroupCommit::start(pool.clone(), answer_deadline),
            pool,
            config: pg,
            tls,
            answer_deadline,
            acquire_timeout: settings.acquire_timeout,
        })
    }

    /// The pool's connections now, for `/metrics`.
    pub fn pool_usage(&self) -> crate::metrics::PoolUsage {
        let status = self.pool.status();
        crate::metrics::PoolUsage {
            max: status.max_size,
            open: status.size,
            idle: status.available,
            waiting: status.waiting,
        }
    }

    /// New posts waiting for their group commit, for `/metrics`.
    pub fn posts_waiting(&self) -> usize {
        self.posts.waiting()
    }

    /// One round trip to the database: what `/readyz` reports.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }

    /// Opens every connection of the pool at once and runs on each the
    /// read every new websocket makes, so that the first connect storm
    /// after a start does not queue behind the opening of connections (a
    /// fork and a login in PostgreSQL each) and their first plans. Leaves
    /// it to the requests when PostgreSQL is down.
    pub async fn warm_up(&self) {
        let size = self.pool.status().max_size;
        // Only free places: a connection someone holds is not waited for.
        let timeouts = Timeouts {
            wait: Some(Duration::ZERO),
            create: Some(self.acquire_timeout),
            recycle: Some(self.acquire_timeout),
        };
        let clients = join_all((0..size).map(|_| self.pool.timeout_get(&timeouts))).await;
        let prepared = join_all(clients.iter().flatten().map(|client| async move {
            let statement = client.prepare_cached(mark::FOLLOWS_AND_MARK).await?;
            client.query(&statement, &[&vec![uuid::Uuid::nil()]]).await
        }))
        .await;
        let warm = prepared.iter().filter(|done| done.is_ok()).count();
        tracing::debug!(warm, size, "database connections opened ahead of requests");
    }

    async fn client(&self) -> Result<deadpool_postgres::Client, StoreError> {
        Ok(self.pool.get().await?)
    }

    /// Every row `sql` returns, each through `map`, within the answer
    /// deadline.
    async fn fetch_all<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        map: impl Fn(&Row) -> T,
    ) -> Result<Vec<T>, StoreError> {
        within(self.answer_deadline, async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await?;
            let rows = client.query(&statement, params).await?;
            Ok(rows.iter().map(map).collect())
        })
        .await
    }

    /// The row `sql` returns, if any, through `map`, within the answer
    /// deadline.
    async fn fetch_opt<T>(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        map: impl FnOnce(&Row) -> T,
    ) -> Result<Option<T>, StoreError> {
        within(self.answer_deadline, async {
            let client = self.client().await?;
            let statement = client.prepare_cached(sql).await?;
            let row = client.query_opt(&statement, params).await?;
            Ok(row.as_ref().map(map))
        })
        .await
    }

    /// How many rows `sql` changed.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        Ok(client.execute(&statement, params).await?)
    }

    /// Runs the write `sql` and, when it changed any row, stores `events` in
    /// the outbox in the same transaction: the change and its announcement
    /// commit together or not at all. Returns how many rows changed.
    async fn write_announced(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        events: &[OutboxMessage],
    ) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let changed = apply(&tx, sql, params, events).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// [`Self::write_announced`], at most once per idempotency key when
    /// `once` has one: the key is claimed in the write's transaction, and a
    /// key already claimed answers the earlier response without writing.
    async fn write_once(
        &self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        events: &[OutboxMessage],
        once: Option<&Once<'_>>,
    ) -> Result<Outcome, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        if let Some(once) = once
            && let Some(earlier) = idempotency::claim(&tx, once).await?
        {
            return Ok(Outcome::Replayed(earlier));
        }
        apply(&tx, sql, params, events).await?;
        tx.commit().await?;
        Ok(Outcome::Written)
    }

    /// An error for a write that found no row: was the user missing?
    async fn require_user(&self, id: UserId) -> Result<(), StoreError> {
        self.fetch_opt("SELECT 1 FROM users WHERE id = $1", &[id.as_uuid()], |_| ())
            .await?
            .ok_or(StoreError::NotFound("user"))
    }
}

/// Runs the write `sql` in `tx` and, when it changed any row, stores
/// `events` in the outbox. Returns how many rows changed.
async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
    events: &[OutboxMessage],
) -> Result<u64, StoreError> {
    let statement = tx.prepare_cached(sql).await?;
    let changed = tx.execute(&statement, params).await?;
    if changed > 0 {
        outbox::enqueue(tx, events).await?;
    }
    Ok(changed)
}

/// The foreign keys that point at the caller of a write (the follower, the
/// author, the sender), as V1 named them. PostgreSQL checks a row's keys in
/// the order they were declared, and each caller column comes first, so a
/// missing caller is reported even when the other user is missing too.
const CALLER_REFERENCES: [&str; 3] = [
    "friends_user_id_fkey",
    "posts_author_id_fkey",
    "dialog_messages_sender_id_fkey",
];

/// A foreign-key violation means a user the row points to does not exist:
/// the caller, or the user the request names.
fn missing_user(error: StoreError) -> StoreError {
    let StoreError::Query(e) = &error else {
        return error;
    };
    match error::missing_reference(e) {
        Some(key) if CALLER_REFERENCES.contains(&key) => StoreError::UnknownCaller,
        Some(_) => StoreError::NotFound("user"),
        None => error,
    }
}

/// For queries whose only column is a user id.
fn user_id_from_row(row: &Row) -> UserId {
    UserId::from_uuid(row.get(0))
}

/// `work`, failed as an outage if the database has not answered within
/// `deadline`. A connection whose peer went silent, without a reset, never
/// fails by itself: the statement timeout is PostgreSQL's, and a query it
/// never received waits for ever.
async fn within<T>(
    deadline: Duration,
    work: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(deadline, work)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Unavailable(
                "the database did not answer in time".into(),
            ))
        })
}
