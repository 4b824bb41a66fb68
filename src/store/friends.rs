use super::{Store, StoreError, missing_user, user_id_from_row};
use crate::domain::UserId;
use crate::outbox::OutboxMessage;

impl Store {
    /// `user` follows `friend`. Following twice is not an error; `events`
    /// are written (in the same transaction) only when something changed.
    pub async fn follow(
        &self,
        user: UserId,
        friend: UserId,
        events: &[OutboxMessage],
    ) -> Result<(), StoreError> {
        self.write_announced(
            "INSERT INTO friends (user_id, friend_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
            &[user.as_uuid(), friend.as_uuid()],
            events,
        )
        .await
        .map_err(missing_user)?;
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
        let deleted = self
            .write_announced(
                "DELETE FROM friends WHERE user_id = $1 AND friend_id = $2",
                &[user.as_uuid(), friend.as_uuid()],
                events,
            )
            .await?;
        if deleted == 0 {
            self.require_user(friend).await?;
        }
        Ok(())
    }

    /// Everyone who follows `author`.
    pub async fn followers(&self, author: UserId) -> Result<Vec<UserId>, StoreError> {
        self.fetch_all(
            "SELECT user_id FROM friends WHERE friend_id = $1",
            &[author.as_uuid()],
            user_id_from_row,
        )
        .await
    }

    /// Every author flagged as a celebrity.
    pub async fn celebrities(&self) -> Result<Vec<UserId>, StoreError> {
        self.fetch_all(
            "SELECT id FROM users WHERE celebrity",
            &[],
            user_id_from_row,
        )
        .await
    }

    /// `author`'s celebrity flag and follower count.
    pub async fn celebrity_status(&self, author: UserId) -> Result<(bool, i64), StoreError> {
        let status = self
            .fetch_opt(
                "SELECT u.celebrity, (SELECT count(*) FROM friends WHERE friend_id = u.id) \
                 FROM users u WHERE u.id = $1",
                &[author.as_uuid()],
                |row| (row.get(0), row.get(1)),
            )
            .await?;
        Ok(status.unwrap_or((false, 0)))
    }

    pub async fn set_celebrity(&self, author: UserId, celebrity: bool) -> Result<(), StoreError> {
        self.execute(
            "UPDATE users SET celebrity = $2 WHERE id = $1",
            &[author.as_uuid(), &celebrity],
        )
        .await?;
        Ok(())
    }

    /// Everyone `user` follows.
    pub async fn followed_authors(&self, user: UserId) -> Result<Vec<UserId>, StoreError> {
        self.fetch_all(
            "SELECT friend_id FROM friends WHERE user_id = $1",
            &[user.as_uuid()],
            user_id_from_row,
        )
        .await
    }

    /// Which of `users` follow which of `authors`, as (follower, author)
    /// pairs.
    pub async fn follows_among(
        &self,
        users: &[UserId],
        authors: &[UserId],
    ) -> Result<Vec<(UserId, UserId)>, StoreError> {
        let users: Vec<uuid::Uuid> = users.iter().map(|u| *u.as_uuid()).collect();
        let authors: Vec<uuid::Uuid> = authors.iter().map(|a| *a.as_uuid()).collect();
        self.fetch_all(
            "SELECT user_id, friend_id FROM friends \
             WHERE user_id = ANY($1) AND friend_id = ANY($2)",
            &[&users, &authors],
            follow_pair,
        )
        .await
    }

    /// Who each of `users` follows, as (follower, author) pairs.
    pub async fn follows_of(&self, users: &[UserId]) -> Result<Vec<(UserId, UserId)>, StoreError> {
        let users: Vec<uuid::Uuid> = users.iter().map(|u| *u.as_uuid()).collect();
        self.fetch_all(
            "SELECT user_id, friend_id FROM friends WHERE user_id = ANY($1)",
            &[&users],
            follow_pair,
        )
        .await
    }
}

fn follow_pair(row: &tokio_postgres::Row) -> (UserId, UserId) {
    (UserId::from_uuid(row.get(0)), UserId::from_uuid(row.get(1)))
}
