use super::error::is_missing_reference;
use super::{Store, StoreError};
use crate::domain::UserId;

impl Store {
    /// `user` follows `friend`. Following twice is not an error.
    pub async fn follow(&self, user: UserId, friend: UserId) -> Result<(), StoreError> {
        let client = self.client().await?;
        let insert = client
            .prepare_cached(
                "INSERT INTO friends (user_id, friend_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            )
            .await?;
        match client
            .execute(&insert, &[user.as_uuid(), friend.as_uuid()])
            .await
        {
            Err(e) if is_missing_reference(&e) => Err(StoreError::NotFound("user")),
            other => other.map(drop).map_err(Into::into),
        }
    }

    /// `user` stops following `friend`. Not following is not an error, but an
    /// unknown `friend` is.
    pub async fn unfollow(&self, user: UserId, friend: UserId) -> Result<(), StoreError> {
        let client = self.client().await?;
        let delete = client
            .prepare_cached("DELETE FROM friends WHERE user_id = $1 AND friend_id = $2")
            .await?;
        let deleted = client
            .execute(&delete, &[user.as_uuid(), friend.as_uuid()])
            .await?;
        if deleted == 0 {
            Self::require_user(&client, friend).await?;
        }
        Ok(())
    }
}
