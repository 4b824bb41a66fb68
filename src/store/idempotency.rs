//! Idempotency keys: a keyed write claims its key, with the response it
//! will answer, inside its own transaction, so the key and the write commit
//! together or not at all. It never answers a stored response to another
//! user, another endpoint, or another request.

use deadpool_postgres::Transaction;

use super::StoreError;
use crate::domain::{IdempotencyKey, UserId};

/// Expired keys each keyed write deletes: more than one, so purging keeps
/// ahead of the keys written.
const PURGE_BATCH: i64 = 4;

/// The writes that take a key; a key is scoped to one of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    CreatePost = 1,
    SendMessage = 2,
}

/// A response as first answered, replayed to retries of its request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A write to be done at most once per key.
pub struct Once<'a> {
    pub user: UserId,
    pub endpoint: Endpoint,
    pub key: &'a IdempotencyKey,
    /// What the write is asked to do: a retry must ask the same.
    pub request: Vec<u8>,
    /// What the write answers when it succeeds.
    pub response: StoredResponse,
}

/// What a keyed write did.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It wrote, and its key now holds its response.
    Written,
    /// An earlier request with the key wrote; this is its response.
    Replayed(StoredResponse),
}

/// Keys live a day (see the migration). Claims `once`'s key in `tx`
/// (replacing an expired claim), and purges a
/// few expired keys. `Some` with the earlier request's response when the
/// key is taken: the caller must not write. A concurrent request with the
/// same key waits here until the first commits or rolls back.
pub(super) async fn claim(
    tx: &Transaction<'_>,
    once: &Once<'_>,
) -> Result<Option<StoredResponse>, StoreError> {
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 6] = [
        once.user.as_uuid(),
        &(once.endpoint as i16),
        &once.key.as_str(),
        &once.request,
        &(once.response.status as i16),
        &once.response.body,
    ];
    let insert = tx
        .prepare_cached(
            "INSERT INTO idempotency_keys (user_id, endpoint, key, request, status, body) \
             VALUES ($1, $2, $3, $4, $5, $6) \
             ON CONFLICT (user_id, endpoint, key) DO UPDATE \
                 SET request = $4, status = $5, body = $6, created_at = now() \
                 WHERE idempotency_keys.created_at < now() - interval '1 day'",
        )
        .await?;
    if tx.execute(&insert, &params).await? == 0 {
        let earlier = tx
            .prepare_cached(
                "SELECT request, status, body FROM idempotency_keys \
                 WHERE user_id = $1 AND endpoint = $2 AND key = $3",
            )
            .await?;
        let row = tx.query_one(&earlier, &params[..3]).await?;
        if row.get::<_, &[u8]>(0) != once.request.as_slice() {
            return Err(StoreError::KeyReused);
        }
        return Ok(Some(StoredResponse {
            status: row.get::<_, i16>(1) as u16,
            body: row.get(2),
        }));
    }
    let purge = tx
        .prepare_cached(
            "DELETE FROM idempotency_keys WHERE ctid IN ( \
                 SELECT ctid FROM idempotency_keys \
                 WHERE created_at < now() - interval '1 day' \
                 ORDER BY created_at LIMIT $1 FOR UPDATE SKIP LOCKED)",
        )
        .await?;
    tx.execute(&purge, &[&PURGE_BATCH]).await?;
    Ok(None)
}
