//! Building and updating the cached sets: a build is claimed (`!b`),
//! finished with its ids and sentinel, and kept current by adds, removes and
//! invalidations. Never reads a page.

use super::{BUILD_TIMEOUT, CacheError, FEED_CAPACITY, RedisFeeds};
use crate::domain::{Post, PostId, UserId};
use crate::store::{Audience, PostAudience};

/// Post ids written per round trip when finishing many feeds at once.
const FINISH_IDS_PER_ROUND_TRIP: usize = 5_000;
/// Followers updated per pipelined round trip.
const FAN_OUT_CHUNK: usize = 1000;

impl RedisFeeds {
    /// Claims the building of a feed; false if it exists or is being built.
    pub async fn begin_feed(&self, user: UserId) -> Result<bool, CacheError> {
        self.begin(self.key("feed", user)).await
    }

    pub async fn begin_author(&self, author: UserId) -> Result<bool, CacheError> {
        self.begin(self.key("author", author)).await
    }

    async fn begin(&self, key: String) -> Result<bool, CacheError> {
        self.call(
            self.begin_build
                .key(key)
                .arg(BUILD_TIMEOUT.as_millis() as u64),
        )
        .await
    }

    /// Completes a feed claimed with [`Self::begin_feed`]: `posts` are the
    /// newest (at most [`FEED_CAPACITY`]) of its non-celebrity authors,
    /// `complete` says there are no older ones. Does nothing if the feed was
    /// invalidated meanwhile. Their bodies must be cached first, so that a
    /// reader who sees an id finds its body.
    pub async fn finish_feed(
        &self,
        user: UserId,
        posts: &[Post],
        complete: bool,
        celebrities: &[UserId],
    ) -> Result<(), CacheError> {
        let mut finish = self.finish_build.key(self.key("feed", user));
        finish.key(self.key("celebs", user));
        self.finish(finish, posts, complete, celebrities).await
    }

    pub async fn finish_author(
        &self,
        author: UserId,
        posts: &[Post],
        complete: bool,
    ) -> Result<(), CacheError> {
        let finish = self.finish_build.key(self.key("author", author));
        self.finish(finish, posts, complete, &[]).await?;
        self.authors_changed().await
    }

    async fn finish(
        &self,
        mut finish: redis::ScriptInvocation<'_>,
        posts: &[Post],
        complete: bool,
        celebrities: &[UserId],
    ) -> Result<(), CacheError> {
        finish_args(
            &mut finish,
            posts.iter().map(|p| p.id),
            complete,
            celebrities,
        );
        let _: i64 = self.call(&finish).await?;
        Ok(())
    }

    /// Forgets the cached feeds of `users` and claims their building, in
    /// one round trip; true for each claimed (not being built elsewhere).
    pub async fn restart_feeds(&self, users: &[UserId]) -> Result<Vec<bool>, CacheError> {
        let mut pipe = redis::pipe();
        pipe.load_script(&self.begin_build).ignore();
        for user in users {
            let feed = self.key("feed", user);
            pipe.del(&[feed.clone(), self.key("celebs", user)]).ignore();
            pipe.invoke_script(
                self.begin_build
                    .key(feed)
                    .arg(BUILD_TIMEOUT.as_millis() as u64),
            );
        }
        self.query(&pipe).await
    }

    /// [`Self::finish_feed`] for many feeds in one round trip: each is
    /// `(user, post ids newest first, complete, celebrities)`.
    pub async fn finish_feeds(
        &self,
        feeds: &[(UserId, &[PostId], bool, &[UserId])],
    ) -> Result<(), CacheError> {
        let mut feeds = feeds.iter().peekable();
        while feeds.peek().is_some() {
            // Round trips of bounded size: the feeds of the readers who
            // follow the most hold a thousand ids each, and one pipeline of
            // hundreds of them would outlast the response timeout.
            let mut pipe = redis::pipe();
            pipe.load_script(&self.finish_build).ignore();
            let mut ids = 0;
            while ids < FINISH_IDS_PER_ROUND_TRIP
                && let Some(&(user, posts, complete, celebrities)) = feeds.next()
            {
                let mut finish = self.finish_build.key(self.key("feed", user));
                finish.key(self.key("celebs", user));
                finish_args(&mut finish, posts.iter().copied(), complete, celebrities);
                pipe.invoke_script(&finish).ignore();
                ids += posts.len() + celebrities.len() + 1;
            }
            self.run(&pipe).await?;
        }
        Ok(())
    }

    pub async fn put_posts(&self, posts: &[Post]) -> Result<(), CacheError> {
        if posts.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for post in posts {
            let body = serde_json::to_vec(post).expect("posts serialise");
            pipe.set(self.key("post", post.id), body).ignore();
        }
        self.run(&pipe).await
    }

    /// Caches the new body of an updated post.
    pub async fn replace_post(&self, post: &Post) -> Result<(), CacheError> {
        let body = serde_json::to_vec(post).expect("posts serialise");
        let mut pipe = redis::pipe();
        pipe.set(self.key("post", post.id), body).ignore();
        self.bodies_changed(&mut pipe);
        self.run(&pipe).await
    }

    pub async fn delete_post(&self, post: PostId) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        pipe.del(self.key("post", post)).ignore();
        self.bodies_changed(&mut pipe);
        self.run(&pipe).await
    }

    /// Makes every instance drop its copies of post bodies: queued after a
    /// change to an existing body, in the same round trip (before it, a
    /// copy read in between would outlive the change).
    fn bodies_changed(&self, pipe: &mut redis::Pipeline) {
        pipe.set(self.bodies_version(), super::read::fresh_version())
            .ignore();
    }

    /// Caches new posts and adds each to the cached sets of its audience
    /// (its followers' feeds, or a celebrity's timeline; uncached ones are
    /// left to be built from PostgreSQL when read), in order, in as few
    /// round trips as the fan-out allows, and one script call per post and
    /// chunk of its audience. A body goes ahead of its id, so a reader who
    /// sees the id finds the body.
    pub async fn add_new_posts(&self, posts: &[PostAudience]) -> Result<(), CacheError> {
        let mut pipe = self.add_pipeline();
        let mut adds = 0;
        let mut timelines_changed = false;
        for PostAudience { post, audience } in posts {
            let body = serde_json::to_vec(post).expect("posts serialise");
            pipe.set(self.key("post", post.id), body).ignore();
            let id = post.id.to_string();
            let keys = match audience {
                Audience::Celebrity => {
                    timelines_changed = true;
                    vec![self.key("author", post.author_user_id)]
                }
                Audience::Followers(users) => users.iter().map(|u| self.key("feed", u)).collect(),
            };
            for chunk in keys.chunks(FAN_OUT_CHUNK) {
                let mut add = self.add.prepare_invoke();
                for key in chunk {
                    add.key(key);
                }
                pipe.invoke_script(add.arg(&id).arg(FEED_CAPACITY)).ignore();
                adds += chunk.len();
                if adds >= FAN_OUT_CHUNK {
                    self.run(&pipe).await?;
                    pipe = self.add_pipeline();
                    adds = 0;
                }
            }
        }
        // After the adds, in the same last round trip: see authors_changed.
        if timelines_changed {
            pipe.set(self.authors_version(), super::read::fresh_version())
                .ignore();
        }
        self.run(&pipe).await
    }

    fn add_pipeline(&self) -> redis::Pipeline {
        let mut pipe = redis::pipe();
        // A pipeline only sends EVALSHA: make sure Redis knows the script
        // (it forgets scripts on restart or SCRIPT FLUSH).
        pipe.load_script(&self.add).ignore();
        pipe
    }

    pub async fn remove_from_feeds(
        &self,
        users: &[UserId],
        post: PostId,
    ) -> Result<(), CacheError> {
        let keys: Vec<String> = users.iter().map(|u| self.key("feed", u)).collect();
        self.remove_from(&keys, post).await
    }

    pub async fn remove_from_author(&self, author: UserId, post: PostId) -> Result<(), CacheError> {
        self.remove_from(&[self.key("author", author)], post)
            .await?;
        self.authors_changed().await
    }

    async fn remove_from(&self, keys: &[String], post: PostId) -> Result<(), CacheError> {
        let id = post.to_string();
        for chunk in keys.chunks(FAN_OUT_CHUNK) {
            let mut pipe = redis::pipe();
            for key in chunk {
                pipe.zrem(key, &id).ignore();
            }
            self.run(&pipe).await?;
        }
        Ok(())
    }

    /// Forgets the cached feeds of `users`; each is rebuilt when next read.
    pub async fn invalidate_feeds(&self, users: &[UserId]) -> Result<(), CacheError> {
        for chunk in users.chunks(FAN_OUT_CHUNK) {
            let mut pipe = redis::pipe();
            for user in chunk {
                pipe.del(&[self.key("feed", user), self.key("celebs", user)])
                    .ignore();
            }
            self.run(&pipe).await?;
        }
        Ok(())
    }

    pub async fn invalidate_author(&self, author: UserId) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        pipe.del(self.key("author", author)).ignore();
        self.run(&pipe).await?;
        self.authors_changed().await
    }

    /// Makes every instance drop its copies of celebrity timelines; called
    /// after each change to one (before it, a copy read in between would
    /// outlive the change).
    async fn authors_changed(&self) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        pipe.set(self.authors_version(), super::read::fresh_version())
            .ignore();
        self.run(&pipe).await
    }
}

/// FINISH_BUILD's arguments after its keys.
fn finish_args(
    finish: &mut redis::ScriptInvocation<'_>,
    posts: impl ExactSizeIterator<Item = PostId>,
    complete: bool,
    celebrities: &[UserId],
) {
    finish
        .arg(if complete { "!c" } else { "!p" })
        .arg(FEED_CAPACITY)
        .arg(posts.len());
    for post in posts {
        finish.arg(post.to_string());
    }
    for celebrity in celebrities {
        finish.arg(celebrity.to_string());
    }
}

/// KEYS: feed or author sets. ARGV: post id, capacity. Adds the id to
/// each set that exists (has a sentinel), trimming it to capacity.
pub(super) const ADD: &str = r#"
local capacity = tonumber(ARGV[2])
local added = 0
for _, key in ipairs(KEYS) do
    local sentinel = redis.call('ZRANGE', key, 0, 0)[1]
    if sentinel then
        redis.call('ZADD', key, 0, ARGV[1])
        local extra = redis.call('ZCARD', key) - 1 - capacity
        if extra > 0 then
            redis.call('ZREMRANGEBYRANK', key, 1, extra)
            if sentinel == '!c' then
                redis.call('ZREM', key, '!c')
                redis.call('ZADD', key, 0, '!p')
            end
        end
        added = added + 1
    end
end
return added
"#;

/// KEYS: the set to build. ARGV: build timeout in ms.
pub(super) const BEGIN_BUILD: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], 0, '!b')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"#;

/// KEYS: the set being built [, the user's celebrities set].
/// ARGV: final sentinel, capacity, id count, ids..., celebrities...
pub(super) const FINISH_BUILD: &str = r#"
if not redis.call('ZSCORE', KEYS[1], '!b') then return 0 end
local capacity, count = tonumber(ARGV[2]), tonumber(ARGV[3])
for i = 4, 3 + count, 5000 do
    local batch = {}
    for j = i, math.min(i + 4999, 3 + count) do
        batch[#batch + 1] = 0
        batch[#batch + 1] = ARGV[j]
    end
    redis.call('ZADD', KEYS[1], unpack(batch))
end
redis.call('ZREM', KEYS[1], '!b')
local sentinel = ARGV[1]
local extra = redis.call('ZCARD', KEYS[1]) - capacity
if extra > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 0, extra - 1)
    sentinel = '!p'
end
redis.call('ZADD', KEYS[1], 0, sentinel)
redis.call('PERSIST', KEYS[1])
if KEYS[2] then
    redis.call('DEL', KEYS[2])
    redis.call('SADD', KEYS[2], '!')
    for i = 4 + count, #ARGV do redis.call('SADD', KEYS[2], ARGV[i]) end
end
return 1
"#;
