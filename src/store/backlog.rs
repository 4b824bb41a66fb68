//! The feed backlog: feed events put aside while Redis was unreachable
//! (see `db/migrations/V4__feed_backlog.sql`).

use bytes::Bytes;

use super::{Store, StoreError};

/// One event put aside; delete it by `id` once applied.
#[derive(Debug, Clone)]
pub struct BackloggedEvent {
    pub id: i64,
    pub event: Bytes,
}

impl Store {
    pub async fn put_aside_feed_event(&self, event: &[u8]) -> Result<(), StoreError> {
        self.execute("INSERT INTO feed_backlog (event) VALUES ($1)", &[&event])
            .await?;
        Ok(())
    }

    /// The oldest `limit` events put aside, oldest first.
    pub async fn feed_backlog(&self, limit: i64) -> Result<Vec<BackloggedEvent>, StoreError> {
        self.fetch_all(
            "SELECT id, event FROM feed_backlog ORDER BY id LIMIT $1",
            &[&limit],
            |row| BackloggedEvent {
                id: row.get(0),
                event: Bytes::from(row.get::<_, Vec<u8>>(1)),
            },
        )
        .await
    }

    pub async fn delete_feed_backlog(&self, ids: &[i64]) -> Result<(), StoreError> {
        if !ids.is_empty() {
            self.execute("DELETE FROM feed_backlog WHERE id = ANY($1)", &[&ids])
                .await?;
        }
        Ok(())
    }
}
