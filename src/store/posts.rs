use std::collections::HashMap;

use tokio_postgres::Row;

use super::{Once, Outcome, Store, StoreError, missing_user, user_id_from_row};
use crate::domain::{FeedPage, Post, PostId, PostText, UserId};
use crate::outbox::OutboxMessage;

impl Store {
    /// Stores the post and, in the same transaction, the events announcing
    /// it (and its idempotency key, if any). Posts without a key are
    /// written together with whatever other posts are waiting.
    pub async fn create_post(
        &self,
        post: &Post,
        events: &[OutboxMessage],
        once: Option<&Once<'_>>,
    ) -> Result<Outcome, StoreError> {
        match once {
            None => self
                .posts
                .write(post, events)
                .await
                .map(|()| Outcome::Written),
            Some(once) => {
                self.write_once(
                    "INSERT INTO posts (id, author_id, text) VALUES ($1, $2, $3)",
                    &[post.id.as_uuid(), post.author_user_id.as_uuid(), &post.text],
                    events,
                    Some(once),
                )
                .await
            }
        }
        .map_err(missing_user)
    }

    pub async fn update_post(
        &self,
        author: UserId,
        id: PostId,
        text: &PostText,
        events: &[OutboxMessage],
    ) -> Result<(), StoreError> {
        let updated = self
            .write_announced(
                "UPDATE posts SET text = $3, updated_at = now() WHERE id = $1 AND author_id = $2",
                &[id.as_uuid(), author.as_uuid(), &text.as_str()],
                events,
            )
            .await?;
        if updated == 0 {
            return Err(self.why_not_authored(id).await);
        }
        Ok(())
    }

    pub async fn delete_post(
        &self,
        author: UserId,
        id: PostId,
        events: &[OutboxMessage],
    ) -> Result<(), StoreError> {
        let deleted = self
            .write_announced(
                "DELETE FROM posts WHERE id = $1 AND author_id = $2",
                &[id.as_uuid(), author.as_uuid()],
                events,
            )
            .await?;
        if deleted == 0 {
            return Err(self.why_not_authored(id).await);
        }
        Ok(())
    }

    pub async fn post(&self, id: PostId) -> Result<Post, StoreError> {
        self.find_post(id)
            .await?
            .ok_or(StoreError::NotFound("post"))
    }

    pub async fn find_post(&self, id: PostId) -> Result<Option<Post>, StoreError> {
        self.fetch_opt(
            "SELECT id, text, author_id FROM posts WHERE id = $1",
            &[id.as_uuid()],
            post_from_row,
        )
        .await
    }

    /// New posts and whose cached feeds each goes into, in one statement
    /// for a whole batch (the feed worker applies a batch of posts written
    /// at once). Posts gone since are absent; the order is unspecified.
    pub async fn post_audiences(&self, ids: &[PostId]) -> Result<Vec<PostAudience>, StoreError> {
        let ids: Vec<uuid::Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
        self.fetch_all(
            "SELECT p.id, p.text, p.author_id, u.celebrity, \
                    CASE WHEN u.celebrity THEN '{}'::uuid[] \
                         ELSE ARRAY(SELECT user_id FROM friends WHERE friend_id = p.author_id) END \
             FROM posts p JOIN users u ON u.id = p.author_id WHERE p.id = ANY($1)",
            &[&ids],
            |row| {
                let post = post_from_row(row);
                let audience = if row.get(3) {
                    Audience::Celebrity
                } else {
                    let followers: Vec<uuid::Uuid> = row.get(4);
                    Audience::Followers(followers.into_iter().map(UserId::from_uuid).collect())
                };
                PostAudience { post, audience }
            },
        )
        .await
    }

    /// What a cached feed is built from: the newest `limit` posts of the
    /// non-celebrity authors `reader` follows, newest first, and the
    /// celebrities they follow (merged in at read time instead).
    pub async fn feed_source(&self, reader: UserId, limit: i64) -> Result<FeedSource, StoreError> {
        let posts = self
            .fetch_all(
                "SELECT p.id, p.text, p.author_id \
                 FROM friends f \
                 JOIN users u ON u.id = f.friend_id AND NOT u.celebrity \
                 CROSS JOIN LATERAL ( \
                     SELECT id, text, author_id FROM posts \
                     WHERE author_id = f.friend_id \
                     ORDER BY id DESC LIMIT $2 \
                 ) p \
                 WHERE f.user_id = $1 \
                 ORDER BY p.id DESC LIMIT $2",
                &[reader.as_uuid(), &limit],
                post_from_row,
            )
            .await?;
        let celebrities = self
            .fetch_all(
                "SELECT f.friend_id FROM friends f \
                 JOIN users u ON u.id = f.friend_id AND u.celebrity \
                 WHERE f.user_id = $1",
                &[reader.as_uuid()],
                user_id_from_row,
            )
            .await?;
        Ok(FeedSource { posts, celebrities })
    }

    /// [`Self::feed_source`] for many readers at once, ids only (warming
    /// caches every body first): two statements for a whole chunk of
    /// readers instead of two per reader. Each reader's posts come newest
    /// first, at most `limit` of them; readers who follow no one are absent.
    pub async fn feed_sources(
        &self,
        readers: &[UserId],
        limit: i64,
    ) -> Result<HashMap<UserId, FeedIds>, StoreError> {
        let readers: Vec<uuid::Uuid> = readers.iter().map(|r| *r.as_uuid()).collect();
        let edges = self
            .fetch_all(
                "SELECT f.user_id, p.id \
                 FROM friends f \
                 JOIN users u ON u.id = f.friend_id AND NOT u.celebrity \
                 CROSS JOIN LATERAL ( \
                     SELECT id FROM posts \
                     WHERE author_id = f.friend_id \
                     ORDER BY id DESC LIMIT $2 \
                 ) p \
                 WHERE f.user_id = ANY($1)",
                &[&readers, &limit],
                |row| (UserId::from_uuid(row.get(0)), PostId::from_uuid(row.get(1))),
            )
            .await?;
        let mut sources: HashMap<UserId, FeedIds> = HashMap::new();
        for (reader, post) in edges {
            sources.entry(reader).or_default().posts.push(post);
        }
        for source in sources.values_mut() {
            source.posts.sort_unstable_by(|a, b| b.cmp(a));
            source.posts.truncate(limit as usize);
        }
        let celebrities = self
            .fetch_all(
                "SELECT f.user_id, f.friend_id FROM friends f \
                 JOIN users u ON u.id = f.friend_id AND u.celebrity \
                 WHERE f.user_id = ANY($1)",
                &[&readers],
                |row| (UserId::from_uuid(row.get(0)), UserId::from_uuid(row.get(1))),
            )
            .await?;
        for (reader, celebrity) in celebrities {
            sources
                .entry(reader)
                .or_default()
                .celebrities
                .push(celebrity);
        }
        Ok(sources)
    }

    /// Up to `limit` posts with ids after `after` (from the first when
    /// `None`), oldest first: a walk over every post in keyset pages.
    pub async fn posts_after(
        &self,
        after: Option<PostId>,
        limit: i64,
    ) -> Result<Vec<Post>, StoreError> {
        let after = after.map(|id| *id.as_uuid()).unwrap_or_default();
        self.fetch_all(
            "SELECT id, text, author_id FROM posts WHERE id > $1 ORDER BY id LIMIT $2",
            &[&after, &limit],
            post_from_row,
        )
        .await
    }

    /// The newest `limit` posts of `author`, newest first.
    pub async fn newest_posts_of(
        &self,
        author: UserId,
        limit: i64,
    ) -> Result<Vec<Post>, StoreError> {
        self.fetch_all(
            "SELECT id, text, author_id FROM posts WHERE author_id = $1 ORDER BY id DESC LIMIT $2",
            &[author.as_uuid(), &limit],
            post_from_row,
        )
        .await
    }

    /// The newest posts of the users `reader` follows, newest first.
    pub async fn feed(&self, reader: UserId, page: FeedPage) -> Result<Vec<Post>, StoreError> {
        let offset = i64::from(page.offset());
        let limit = i64::from(page.limit());
        // Each followed author contributes at most offset + limit of their own
        // newest posts (an index range on posts_author_id_id_idx), so the
        // cost grows with the page, not with how much the authors wrote.
        self.fetch_all(
            "SELECT p.id, p.text, p.author_id \
             FROM friends f \
             CROSS JOIN LATERAL ( \
                 SELECT id, text, author_id FROM posts \
                 WHERE author_id = f.friend_id \
                 ORDER BY id DESC LIMIT $2::bigint + $3::bigint \
             ) p \
             WHERE f.user_id = $1 \
             ORDER BY p.id DESC OFFSET $2 LIMIT $3",
            &[reader.as_uuid(), &offset, &limit],
            post_from_row,
        )
        .await
    }

    /// Posts of the users `reader` follows that a live client whose last
    /// post was `since` may not have, in the order PostgreSQL sequenced them,
    /// at most `limit`: those inserted after `since`, and the few (at most
    /// `concurrent` per author) inserted before it but still uncommitted when
    /// it was written. Ids are not compared: they carry their writer's clock.
    /// An unknown `since` (a deleted post) counts from the first post with a
    /// greater id.
    pub async fn posts_since(
        &self,
        reader: UserId,
        since: PostId,
        limit: i64,
        concurrent: i64,
    ) -> Result<Vec<Post>, StoreError> {
        self.fetch_all(
            "WITH since AS ( \
                 SELECT seq, snapshot FROM ( \
                     (SELECT seq, snapshot, true AS exact FROM posts WHERE id = $2) \
                     UNION ALL \
                     (SELECT seq - 1, NULL, false FROM posts WHERE id > $2 ORDER BY id LIMIT 1) \
                 ) found ORDER BY exact DESC LIMIT 1 \
             ) \
             SELECT p.id, p.text, p.author_id \
             FROM since \
             CROSS JOIN friends f \
             CROSS JOIN LATERAL ( \
                 (SELECT id, text, author_id, seq FROM posts \
                  WHERE author_id = f.friend_id AND seq > since.seq \
                  ORDER BY seq LIMIT $3) \
                 UNION ALL \
                 (SELECT id, text, author_id, seq FROM ( \
                      SELECT id, text, author_id, seq, written_by FROM posts \
                      WHERE author_id = f.friend_id AND seq < since.seq \
                      ORDER BY seq DESC LIMIT $4 \
                  ) before_since \
                  WHERE NOT pg_visible_in_snapshot(written_by, since.snapshot)) \
             ) p \
             WHERE f.user_id = $1 \
             ORDER BY p.seq LIMIT $3",
            &[reader.as_uuid(), since.as_uuid(), &limit, &concurrent],
            post_from_row,
        )
        .await
    }

    /// Posts of `author` newer than `since`, oldest first.
    pub async fn posts_by_author_since(
        &self,
        author: UserId,
        since: PostId,
        limit: i64,
    ) -> Result<Vec<Post>, StoreError> {
        self.fetch_all(
            "SELECT id, text, author_id FROM posts \
             WHERE author_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            &[author.as_uuid(), since.as_uuid(), &limit],
            post_from_row,
        )
        .await
    }

    /// Posts of any of `authors` newer than `since`, oldest first, at most
    /// `limit`: what this instance's sockets may have missed while its
    /// broker queue was gone.
    pub async fn posts_by_authors_since(
        &self,
        authors: &[UserId],
        since: PostId,
        limit: i64,
    ) -> Result<Vec<Post>, StoreError> {
        let authors: Vec<uuid::Uuid> = authors.iter().map(|a| *a.as_uuid()).collect();
        self.fetch_all(
            "SELECT p.id, p.text, p.author_id \
             FROM unnest($1::uuid[]) AS a(author_id) \
             CROSS JOIN LATERAL ( \
                 SELECT id, text, author_id FROM posts \
                 WHERE author_id = a.author_id AND id > $2 \
                 ORDER BY id LIMIT $3 \
             ) p \
             ORDER BY p.id LIMIT $3",
            &[&authors, since.as_uuid(), &limit],
            post_from_row,
        )
        .await
    }

    /// After an author-scoped write touched no row: was the post missing, or
    /// someone else's?
    async fn why_not_authored(&self, id: PostId) -> StoreError {
        match self
            .fetch_opt("SELECT 1 FROM posts WHERE id = $1", &[id.as_uuid()], |_| ())
            .await
        {
            Ok(Some(())) => StoreError::NotAuthor,
            Ok(None) => StoreError::NotFound("post"),
            Err(e) => e,
        }
    }
}

/// See [`Store::post_audiences`].
pub struct PostAudience {
    pub post: Post,
    pub audience: Audience,
}

/// Where a new post is cached.
pub enum Audience {
    /// Merged into feeds at read time: only its author's timeline.
    Celebrity,
    /// Pushed into each follower's feed.
    Followers(Vec<UserId>),
}

/// See [`Store::feed_sources`].
#[derive(Debug, Default)]
pub struct FeedIds {
    /// Newest first.
    pub posts: Vec<PostId>,
    pub celebrities: Vec<UserId>,
}

/// See [`Store::feed_source`].
pub struct FeedSource {
    pub posts: Vec<Post>,
    pub celebrities: Vec<UserId>,
}

fn post_from_row(row: &Row) -> Post {
    Post {
        id: PostId::from_uuid(row.get(0)),
        text: row.get(1),
        author_user_id: UserId::from_uuid(row.get(2)),
    }
}
