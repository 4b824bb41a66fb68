use super::error::is_missing_reference;
use super::outbox::{OutboxMessage, enqueue};
use super::{Store, StoreError};
use crate::domain::UserId;

impl Store {
    /// `user` follows `friend`. Following twice is not an error; `events`
    /// are written (in the same transaction) only when something changed.
    pub async fn follow(
        &self,
        user: UserId,
        friend: UserId,
        events: &[OutboxMessage],
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
            enqueue(&tx, events).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// `user` stops following `friend`. Not following is not an error, but an
    /// unknown `friend` is. `events` are written only when something changed.
    pub async fn unfollow(
        &self,
        user: UserId,
        friend: UserId,
        events: &[OutboxMessage],
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
            enqueue(&tx, events).await?;
        }
        tx.commit().await?;
        if deleted == 0 {
            Self::require_user(&client, friend).await?;
        }
        Ok(())
    }

    /// Everyone who follows `author`.
    pub async fn followers(&self, author: UserId) -> Result<Vec<UserId>, StoreError> {
        let client = self.client().await?;
        let select = client
            .prepare_cached("SELECT user_id FROM friends WHERE friend_id = $1")
            .await?;
        let rows = client.query(&select, &[author.as_uuid()]).await?;
        Ok(rows
            .iter()
            .map(|row| UserId::from_uuid(row.get(0)))
            .collect())
    }

    pub async fn is_celebrity(&self, author: UserId) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let select = client
            .prepare_cached("SELECT celebrity FROM users WHERE id = $1")
            .await?;
        let row = client.query_opt(&select, &[author.as_uuid()]).await?;
        Ok(row.is_some_and(|row| row.get(0)))
    }

    /// `author`'s celebrity flag and follower count.
    pub async fn celebrity_status(&self, author: UserId) -> Result<(bool, i64), StoreError> {
        let client = self.client().await?;
        let select = client
            .prepare_cached(
                "SELECT u.celebrity, (SELECT count(*) FROM friends WHERE friend_id = u.id) \
                 FROM users u WHERE u.id = $1",
            )
            .await?;
        let row = client.query_opt(&select, &[author.as_uuid()]).await?;
        Ok(row.map_or((false, 0), |row| (row.get(0), row.get(1))))
    }

    pub async fn set_celebrity(&self, author: UserId, celebrity: bool) -> Result<(), StoreError> {
        let client = self.client().await?;
        let update = client
            .prepare_cached("UPDATE users SET celebrity = $2 WHERE id = $1")
            .await?;
        client
            .execute(&update, &[author.as_uuid(), &celebrity])
            .await?;
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
