use super::error::is_missing_reference;
use super::outbox::{OutboxMessage, enqueue};
use super::{Store, StoreError};
use crate::domain::UserId;

impl Store {
    /// `user` follows `friend`. Following twice is not an error; `event` is
    /// written (in the same transaction) only when something changed.
    pub async fn follow(
        &self,
        user: UserId,
        friend: UserId,
        event: &OutboxMessage,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let insert = tx
            .prepare_cached(
                "INSERT INTO friends (user_id, friend_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .await?;
        let inserted = match tx
            .execute(&insert, &[user.as_uuid(), friend.as_uuid()])
            .await
        {
            Err(e) if is_missing_reference(&e) => return Err(StoreError::NotFound("user")),
            other => other?,
        };
        if inserted > 0 {
            enqueue(&tx, event).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `user` stops following `friend`. Not following is not an error, but an
    /// unknown `friend` is. `event` is written only when something changed.
    pub async fn unfollow(
        &self,
        user: UserId,
        friend: UserId,
        event: &OutboxMessage,
    ) -> Result<(), StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        let delete = tx
            .prepare_cached("DELETE FROM friends WHERE user_id = $1 AND friend_id = $2")
            .await?;
        let deleted = tx
            .execute(&delete, &[user.as_uuid(), friend.as_uuid()])
            .await?;
        if deleted > 0 {
            enqueue(&tx, event).await?;
        }
        tx.commit().await?;
        if deleted == 0 {
            Self::require_user(&client, friend).await?;
        }
        Ok(())
    }

    /// Everyone `user` follows.
    pub async fn followed_authors(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        let client = self.client().await?;
        let select = client
            .prepare_cached("SELECT friend_id FROM friends WHERE user_id = $1")
            .await?;
        let rows = client.query(&select, &[user.as_uuid()]).await?;
        Ok(rows
            .iter()
            .map(|row| UserId::from_uuid(row.get(0)))
            .collect())
    }
}
