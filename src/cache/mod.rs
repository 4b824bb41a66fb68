//! The feed: served from Redis, materialised there by the feed worker from
//! the `Materialize` queue, and read from PostgreSQL whenever the cache
//! cannot answer (not built yet, too far back, Redis down, or events put
//! aside while Redis was down not yet applied).
//!
//! A Redis outage must never hold up posting or live delivery: the worker
//! then puts events aside in PostgreSQL (the feed backlog) and acknowledges
//! them, and applies the backlog once Redis answers again. Until it is
//! applied, this instance reads feeds from PostgreSQL, so that a feed
//! cached before the outage is never served without the posts written
//! during it.

mod events;
mod redis;
mod warm;
mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{BufMut, Bytes, BytesMut};

pub use self::events::FeedEvent;
pub use self::redis::{CacheError, FEED_CAPACITY, SetState, StoredSet, unpack_users};
use self::redis::{CachedPage, RedisFeeds};
pub use self::warm::{WarmOptions, WarmReport, warm};
pub use self::worker::run as run_worker;
use crate::domain::{FeedPage, PostId, UserId};
use crate::store::{FeedIds, Store, StoreError};

#[derive(Debug, Clone)]
pub struct CacheSettings {
    pub redis_url: String,
    /// Prefix of every key, so several deployments (or tests) share a Redis.
    pub key_prefix: String,
    /// Authors with more followers than this are celebrities.
    pub celebrity_threshold: i64,
    /// Posts a feed reaches back; see [`FeedPage::within`].
    pub feed_depth: u32,
}

pub struct Feeds {
    store: Store,
    cache: RedisFeeds,
    celebrity_threshold: i64,
    /// The feed backlog held events when the worker last looked: cached
    /// feeds may lack them.
    backlogged: AtomicBool,
    depth: u32,
}

impl Feeds {
    pub fn new(store: Store, settings: &CacheSettings) -> Result<Arc<Self>, CacheError> {
        Ok(Arc::new(Self {
            store,
            cache: RedisFeeds::new(&settings.redis_url, &settings.key_prefix)?,
            celebrity_threshold: settings.celebrity_threshold,
            backlogged: AtomicBool::new(false),
            depth: settings.feed_depth,
        }))
    }

    /// How many Redis errors (unreachable, timing out) made reads fall back
    /// to PostgreSQL so far.
    pub fn redis_outages(&self) -> u64 {
        self.cache.outages()
    }

    /// A page of `reader`'s feed as the JSON array the API answers. From the
    /// cache when it can answer; from PostgreSQL otherwise (and a missing
    /// feed is rebuilt in the background). The feed is its newest `depth`
    /// posts whichever answers, so PostgreSQL's work per followed author is
    /// bounded by the depth, not by the offset a client asks for.
    pub async fn page(
        self: &Arc<Self>,
        reader: UserId,
        page: FeedPage,
    ) -> Result<Bytes, StoreError> {
        let Some(page) = page.within(self.depth) else {
            return Ok(Bytes::from_static(b"[]"));
        };
        let (offset, limit) = (page.offset() as usize, page.limit() as usize);
        if offset + limit <= FEED_CAPACITY
            && let Some(posts) = self.cached(reader, offset, limit).await
        {
            return Ok(json_array(posts.iter().map(|(_, body)| body.as_ref())));
        }
        let posts = self.store.feed(reader, page).await?;
        Ok(Bytes::from(
            serde_json::to_vec(&posts).expect("posts serialise"),
        ))
    }

    /// The cached page, or `None` after scheduling whatever rebuild it needs.
    async fn cached(
        self: &Arc<Self>,
        reader: UserId,
        offset: usize,
        limit: usize,
    ) -> Option<Vec<(PostId, Bytes)>> {
        if self.backlogged.load(Ordering::Relaxed) {
            return None;
        }
        match self.cache.page(reader, offset, limit).await {
            Ok(CachedPage::Hit(posts)) => return Some(posts),
            Ok(CachedPage::MissingFeed) => {
                let feeds = self.clone();
                tokio::spawn(async move { feeds.rebuild_feed(reader).await });
            }
            Ok(CachedPage::MissingAuthor(author)) => {
                let feeds = self.clone();
                tokio::spawn(async move { feeds.rebuild_author(author).await });
            }
            Ok(CachedPage::Incomplete) => {}
            Err(e) => tracing::debug!(error = %e, "feed cache unavailable, reading PostgreSQL"),
        }
        None
    }

    async fn rebuild_feed(&self, user: UserId) {
        if let Err(e) = self.try_rebuild_feed(user, Bodies::Write).await {
            tracing::warn!(%user, error = %e, "feed rebuild failed");
        }
    }

    async fn try_rebuild_feed(&self, user: UserId, bodies: Bodies) -> Result<(), WorkError> {
        if !self.cache.begin_feed(user).await? {
            return Ok(());
        }
        let source = self.store.feed_source(user, FEED_CAPACITY as i64).await?;
        if bodies == Bodies::Write {
            self.cache.put_posts(&source.posts).await?;
        }
        let complete = source.posts.len() < FEED_CAPACITY;
        self.cache
            .finish_feed(user, &source.posts, complete, &source.celebrities)
            .await?;
        Ok(())
    }

    /// Builds the feeds of `users` afresh from PostgreSQL, replacing cached
    /// ones, by the same claim-read-finish protocol as a read, a chunk at a
    /// time: one round trip to claim them all, two statements to read
    /// them, one round trip to finish them. Every post body must be cached
    /// already ([`Self::warm_posts`]).
    pub async fn warm_feeds(&self, users: &[UserId]) -> Result<(), WorkError> {
        let claimed = self.cache.restart_feeds(users).await?;
        let users: Vec<UserId> = users
            .iter()
            .zip(claimed)
            .filter_map(|(user, claimed)| claimed.then_some(*user))
            .collect();
        let sources = self
            .store
            .feed_sources(&users, FEED_CAPACITY as i64)
            .await?;
        let none = FeedIds::default();
        let feeds: Vec<_> = users
            .iter()
            .map(|user| {
                let source = sources.get(user).unwrap_or(&none);
                let complete = source.posts.len() < FEED_CAPACITY;
                (*user, &source.posts[..], complete, &source.celebrities[..])
            })
            .collect();
        self.cache.finish_feeds(&feeds).await?;
        Ok(())
    }

    /// Builds a celebrity's timeline afresh, replacing a cached one;
    /// every post body must be cached already ([`Self::warm_posts`]).
    pub async fn warm_author(&self, author: UserId) -> Result<(), WorkError> {
        self.cache.invalidate_author(author).await?;
        self.try_rebuild_author(author, Bodies::AlreadyCached).await
    }

    /// Caches the body of every post, oldest first, `chunk` at a time;
    /// `progress` hears how many are done. Feeds then share the bodies
    /// instead of each writing its thousand.
    pub async fn warm_posts(&self, chunk: i64, progress: impl Fn(usize)) -> Result<(), WorkError> {
        let mut after = None;
        let mut done = 0;
        loop {
            let posts = self.store.posts_after(after, chunk).await?;
            let Some(last) = posts.last() else {
                return Ok(());
            };
            after = Some(last.id);
            self.cache.put_posts(&posts).await?;
            done += posts.len();
            progress(done);
        }
    }

    async fn rebuild_author(&self, author: UserId) {
        if let Err(e) = self.try_rebuild_author(author, Bodies::Write).await {
            tracing::warn!(%author, error = %e, "celebrity timeline rebuild failed");
        }
    }

    async fn try_rebuild_author(&self, author: UserId, bodies: Bodies) -> Result<(), WorkError> {
        if !self.cache.begin_author(author).await? {
            return Ok(());
        }
        let posts = self
            .store
            .newest_posts_of(author, FEED_CAPACITY as i64)
            .await?;
        if bodies == Bodies::Write {
            self.cache.put_posts(&posts).await?;
        }
        let complete = posts.len() < FEED_CAPACITY;
        self.cache.finish_author(author, &posts, complete).await?;
        Ok(())
    }

    /// Brings the cache in line with the truth after `events`, in order:
    /// each run of new posts with one query and one pipeline.
    async fn apply_all(&self, events: &[FeedEvent]) -> Result<(), WorkError> {
        let mut created = Vec::new();
        for event in events {
            match event {
                FeedEvent::PostCreated { post } => created.push(*post),
                other => {
                    self.apply_created(&created).await?;
                    created.clear();
                    self.apply(*other).await?;
                }
            }
        }
        self.apply_created(&created).await
    }

    /// Caches new posts (those still there) and adds them to their
    /// audience's cached feeds.
    async fn apply_created(&self, posts: &[PostId]) -> Result<(), WorkError> {
        if posts.is_empty() {
            return Ok(());
        }
        let mut audiences = self.store.post_audiences(posts).await?;
        // Added in id (= time) order, as they were written.
        audiences.sort_unstable_by_key(|audience| audience.post.id);
        self.cache.add_new_posts(&audiences).await?;
        Ok(())
    }

    /// Brings the cache in line with the truth after `event`.
    async fn apply(&self, event: FeedEvent) -> Result<(), WorkError> {
        match event {
            FeedEvent::PostCreated { post } => self.apply_created(&[post]).await?,
            FeedEvent::PostUpdated { post: id } => match self.store.find_post(id).await? {
                Some(post) => self.cache.replace_post(&post).await?,
                None => self.cache.delete_post(id).await?,
            },
            FeedEvent::PostDeleted { post, author } => {
                self.cache.delete_post(post).await?;
                self.cache.remove_from_author(author, post).await?;
                let followers = self.store.followers(author).await?;
                self.cache.remove_from_feeds(&followers, post).await?;
            }
            FeedEvent::FollowChanged { user, author } => {
                // Rebuilt from the truth when next read: the followed
                // author's recent posts appear, or an unfollowed one's go.
                self.cache.invalidate_feeds(&[user]).await?;
                self.reconsider_celebrity(author).await?;
            }
        }
        Ok(())
    }

    /// After giving up on `event`: drops whatever cached state it touches
    /// (the post's body, its author's timeline and the feeds of the
    /// author's followers), so that it is rebuilt from the truth when read
    /// rather than kept without the change. Best effort: logged if it fails.
    async fn forget(&self, event: FeedEvent) {
        let forgotten = async {
            let (post, author) = match event {
                FeedEvent::PostCreated { post } | FeedEvent::PostUpdated { post } => {
                    match self.store.find_post(post).await? {
                        Some(found) => (Some(post), found.author_user_id),
                        None => return Ok(()),
                    }
                }
                FeedEvent::PostDeleted { post, author } => (Some(post), author),
                FeedEvent::FollowChanged { user, author } => {
                    self.cache.invalidate_feeds(&[user]).await?;
                    (None, author)
                }
            };
            if let Some(post) = post {
                self.cache.delete_post(post).await?;
            }
            self.cache.invalidate_author(author).await?;
            let followers = self.store.followers(author).await?;
            self.cache.invalidate_feeds(&followers).await?;
            Ok::<_, WorkError>(())
        };
        if let Err(error) = forgotten.await {
            tracing::error!(
                ?event,
                %error,
                "cannot drop the cached feeds a dead-lettered event touches; they may lack it"
            );
        }
    }

    /// Flips `author`'s celebrity flag when their follower count crossed the
    /// threshold, and drops the feeds that were built the other way.
    async fn reconsider_celebrity(&self, author: UserId) -> Result<(), WorkError> {
        let (celebrity, followers) = self.store.celebrity_status(author).await?;
        let should_be = followers > self.celebrity_threshold;
        if should_be == celebrity {
            return Ok(());
        }
        self.store.set_celebrity(author, should_be).await?;
        tracing::info!(%author, followers, celebrity = should_be, "celebrity status changed");
        let followers = self.store.followers(author).await?;
        self.cache.invalidate_feeds(&followers).await?;
        self.cache.invalidate_author(author).await?;
        Ok(())
    }
}

/// Whether a rebuild writes the bodies of the posts it caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bodies {
    Write,
    /// Warming cached every body beforehand.
    AlreadyCached,
}

#[derive(Debug, thiserror::Error)]
pub enum WorkError {
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl WorkError {
    fn is_redis_unavailable(&self) -> bool {
        matches!(self, Self::Cache(error) if error.is_unavailable())
    }

    fn is_database_unavailable(&self) -> bool {
        matches!(self, Self::Store(StoreError::Unavailable(_)))
    }

    fn is_unavailable(&self) -> bool {
        self.is_redis_unavailable() || self.is_database_unavailable()
    }
}

/// Joins JSON documents into a JSON array without parsing them.
fn json_array<'a>(items: impl Iterator<Item = &'a [u8]>) -> Bytes {
    let mut out = BytesMut::with_capacity(1024);
    out.put_u8(b'[');
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.put_u8(b',');
        }
        out.put_slice(item);
    }
    out.put_u8(b']');
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::json_array;

    #[test]
    fn joins_documents_into_an_array() {
        assert_eq!(&json_array([].into_iter())[..], b"[]");
        let docs: [&[u8]; 2] = [b"{\"a\":1}", b"{\"b\":2}"];
        assert_eq!(&json_array(docs.into_iter())[..], b"[{\"a\":1},{\"b\":2}]");
    }
}
