//! Building and updating the cached sets (laid out as [`stored`] says): a
//! build is claimed (state `b`), finished with its ids and final state, and
//! kept current by adds, removes and invalidations. Never reads a page.

use super::stored::{self, SetState};
use super::{BUILD_TIMEOUT, CacheError, FEED_CAPACITY, RedisFeeds};
use crate::domain::{Post, PostId, UserId};
use crate::store::{Audience, PostAudience};

/// Post ids written per round trip when finishing many feeds at once.
const FINISH_IDS_PER_ROUND_TRIP: usize = 5_000;
/// Followers updated per pipelined round trip.
const FAN_OUT_CHUNK: usize = 1000;
/// Ids a set may hold beyond [`FEED_CAPACITY`] before an add trims it back:
/// trimming rewrites the set, appending does not.
const TRIM_SLACK: usize = 64;

impl RedisFeeds {
    /// Claims the building of a feed; false if it exists or is being built.
    pub async fn begin_feed(&self, user: UserId) -> Result<bool, CacheError> {
        self.begin(self.key("feed", user)).await
    }

    pub async fn begin_author(&self, author: UserId) -> Result<bool, CacheError> {
        self.begin(self.key("author", author)).await
    }

    async fn begin(&self, key: String) -> Result<bool, CacheError> {
        let mut pipe = redis::pipe();
        begin_command(&mut pipe, key);
        let (claimed,): (redis::Value,) = self.query(&pipe).await?;
        Ok(claimed == redis::Value::Okay)
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
        for user in users {
            let feed = self.key("feed", user);
            pipe.del(&[feed.clone(), self.key("celebs", user)]).ignore();
            begin_command(&mut pipe, feed);
        }
        let claimed: Vec<redis::Value> = self.query(&pipe).await?;
        Ok(claimed
            .into_iter()
            .map(|reply| reply == redis::Value::Okay)
            .collect())
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
                ids += posts.len() + celebrities.len();
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
            let id = stored::id_bytes(post.id);
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
                add.arg(&id[..])
                    .arg(FEED_CAPACITY)
                    .arg(FEED_CAPACITY + TRIM_SLACK);
                pipe.invoke_script(&add).ignore();
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
        let id = stored::id_bytes(post);
        for chunk in keys.chunks(FAN_OUT_CHUNK) {
            let mut remove = self.remove.prepare_invoke();
            for key in chunk {
                remove.key(key);
            }
            let _: i64 = self.call(remove.arg(&id[..])).await?;
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

/// Claims the building of the set `key` if it does not exist: replies OK
/// if claimed, nil if not. A claim whose instance dies expires.
fn begin_command(pipe: &mut redis::Pipeline, key: String) {
    pipe.cmd("SET")
        .arg(key)
        .arg(&[SetState::Building.byte()][..])
        .arg("NX")
        .arg("PX")
        .arg(BUILD_TIMEOUT.as_millis() as u64);
}

/// FINISH_BUILD's arguments after its keys.
fn finish_args(
    finish: &mut redis::ScriptInvocation<'_>,
    posts: impl DoubleEndedIterator<Item = PostId>,
    complete: bool,
    celebrities: &[UserId],
) {
    let state = if complete {
        SetState::Complete
    } else {
        SetState::Partial
    };
    finish
        .arg(&[state.byte()][..])
        .arg(FEED_CAPACITY)
        .arg(stored::pack(posts))
        .arg(stored::pack_users(celebrities));
}

/// Lua shared by the scripts below, over the layout of [`stored`]: a state
/// byte, then 16-byte ids oldest first.
pub(super) const HELPERS: &str = r#"
-- Is the id a older than the id b (bytes compared unsigned, as memcmp)?
local function older(a, b)
    for k = 1, 16 do
        local x, y = a:byte(k), b:byte(k)
        if x ~= y then return x < y end
    end
    return false
end
-- The set v with id in its place by age, or nil if v holds it already.
local function place(v, id)
    local at = #v + 1
    for i = #v - 15, 2, -16 do
        local other = v:sub(i, i + 15)
        if other == id then return nil end
        if older(other, id) then break end
        at = i
    end
    return v:sub(1, at - 1) .. id .. v:sub(at)
end
-- The set v with only its newest `capacity` ids: a complete set that loses
-- ids becomes partial.
local function trimmed(v, capacity)
    local extra = (#v - 1) / 16 - capacity
    if extra <= 0 then return v end
    local state = v:sub(1, 1)
    if state == 'c' then state = 'p' end
    return state .. v:sub(2 + 16 * extra)
end
"#;

/// KEYS: feed or author sets. ARGV: post id, capacity, the most ids a set
/// holds before it is trimmed to capacity. Adds the id to each set that
/// exists: a newest id (nearly every post) is one APPEND, and a set is
/// rewritten only to trim it once in [`TRIM_SLACK`] adds. A set being built
/// keeps every id added, for FINISH_BUILD to merge.
pub(super) const ADD: &str = r#"
local id, capacity, limit = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local added = 0
for _, key in ipairs(KEYS) do
    local state = redis.call('GETRANGE', key, 0, 0)
    if state ~= '' then
        local newest = redis.call('GETRANGE', key, -16, -1)
        local length
        if #newest < 16 or older(newest, id) then
            length = redis.call('APPEND', key, id)
        elseif newest ~= id then
            local v = place(redis.call('GET', key), id)
            if v then
                redis.call('SET', key, v, 'KEEPTTL')
                length = #v
            end
        end
        if length and state ~= 'b' and (length - 1) / 16 > limit then
            redis.call('SET', key, trimmed(redis.call('GET', key), capacity), 'KEEPTTL')
        end
        added = added + 1
    end
end
return added
"#;

/// KEYS: the set being built [, the user's celebrities key].
/// ARGV: final state, capacity, ids oldest first (packed), celebrities
/// (packed, [`stored::pack_users`]).
/// Merges in the ids added while it was built, trims, and persists it.
pub(super) const FINISH_BUILD: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v or v:sub(1, 1) ~= 'b' then return 0 end
local built = ARGV[1] .. ARGV[3]
for i = 2, #v - 15, 16 do
    built = place(built, v:sub(i, i + 15)) or built
end
redis.call('SET', KEYS[1], trimmed(built, tonumber(ARGV[2])))
if KEYS[2] then redis.call('SET', KEYS[2], ARGV[4]) end
return 1
"#;

/// KEYS: feed or author sets. ARGV: post id. Removes the id from each
/// without rewriting the set (a rewrite of a full set costs Redis ≈ 50 µs
/// in Lua, a hundred deliveries' worth): the id's slots are found by
/// binary search and overwritten with a copy of a neighbouring id, which
/// keeps the order, and readers drop repeated ids ([`stored`]).
pub(super) const REMOVE: &str = r#"
local id = ARGV[1]
for _, key in ipairs(KEYS) do
    local slots = (redis.call('STRLEN', key) - 1) / 16
    local function slot(i)
        return redis.call('GETRANGE', key, 1 + 16 * i, 16 + 16 * i)
    end
    local low, high = 0, math.max(slots, 0)
    while low < high do
        local middle = math.floor((low + high) / 2)
        if older(slot(middle), id) then low = middle + 1 else high = middle end
    end
    local past = low
    while past < slots and slot(past) == id do past = past + 1 end
    if past > low then
        local filler
        if low > 0 then filler = slot(low - 1) elseif past < slots then filler = slot(past) end
        if filler then
            redis.call('SETRANGE', key, 1 + 16 * low, string.rep(filler, past - low))
        else
            redis.call('SET', key, redis.call('GETRANGE', key, 0, 0), 'KEEPTTL')
        end
    end
end
return 0
"#;
