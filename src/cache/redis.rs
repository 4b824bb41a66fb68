//! The feed cache in Redis.
//!
//! Keys (under a configurable prefix):
//! - `feed:<user>`: sorted set of the ids of the newest posts (at most
//!   [`FEED_CAPACITY`]) of the non-celebrity authors the user follows;
//! - `celebs:<user>`: set of the celebrities the user follows (merged in at
//!   read time), with a `!` member so an empty set still exists;
//! - `author:<celebrity>`: sorted set of a celebrity's newest post ids;
//! - `post:<id>`: the post as the API shows it (JSON), so an update or a
//!   delete touches one key, not every feed.
//!
//! Every member of a sorted set has score 0, so members sort by their bytes:
//! hyphenated UUIDv7 strings sort by time. Each sorted set also holds one
//! sentinel, which sorts before any id: `!b` while it is being built, `!c`
//! when it holds every post there is, `!p` when older posts exist beyond it.
//! A missing sentinel means a missing (never built, evicted or invalidated)
//! set, which the reader rebuilds from PostgreSQL.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use crate::domain::{Post, PostId, UserId};

/// Most post ids cached per feed and per celebrity.
pub const FEED_CAPACITY: usize = 1000;
/// A build that never finishes (its instance died) expires after this.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30);
/// After a Redis error, readers go straight to PostgreSQL for this long
/// instead of each waiting on a dead connection.
const BACK_OFF: Duration = Duration::from_secs(1);
/// Post ids written per round trip when finishing many feeds at once.
const FINISH_IDS_PER_ROUND_TRIP: usize = 5_000;
/// Followers updated per pipelined round trip.
const FAN_OUT_CHUNK: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis was failing moments ago; not trying again yet")]
    BackingOff,
    #[error("unexpected reply from the feed script: {0}")]
    Reply(String),
}

impl CacheError {
    /// Redis could not be reached (or was not tried, having just failed so):
    /// nothing about the request itself is wrong.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::BackingOff => true,
            Self::Redis(error) => is_outage(error),
            Self::Reply(_) => false,
        }
    }
}

fn is_outage(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_timeout()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
}

/// What the cache could answer for a page of a feed.
#[derive(Debug, PartialEq, Eq)]
pub enum CachedPage {
    /// The posts of the page, newest first: `(id, JSON body)`.
    Hit(Vec<(PostId, Bytes)>),
    /// The feed is not cached (or being built): rebuild it.
    MissingFeed,
    /// A celebrity the user follows has no cached timeline: rebuild it.
    MissingAuthor(UserId),
    /// Cached, but not far enough back, or a post body is gone: ask PostgreSQL.
    Incomplete,
}

pub struct RedisFeeds {
    redis: ConnectionManager,
    prefix: String,
    back_off_until: AtomicU64,
    /// Errors that made the cache back off (Redis unreachable or timing out).
    outages: AtomicU64,
    started: Instant,
    read: Script,
    add: Script,
    begin_build: Script,
    finish_build: Script,
}

impl RedisFeeds {
    /// Connects lazily: the service starts while Redis is down.
    pub fn new(url: &str, prefix: &str) -> Result<Self, CacheError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_secs(2)))
            .set_number_of_retries(1);
        let redis = ConnectionManager::new_lazy_with_config(client(url)?, config)?;
        Ok(Self {
            redis,
            prefix: prefix.to_owned(),
            back_off_until: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            started: Instant::now(),
            read: Script::new(READ),
            add: Script::new(ADD),
            begin_build: Script::new(BEGIN_BUILD),
            finish_build: Script::new(FINISH_BUILD),
        })
    }

    fn key(&self, kind: &str, id: impl std::fmt::Display) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    /// The posts `offset..offset + limit` of `user`'s feed, celebrities
    /// merged in. A reader who follows no celebrity (most readers) is
    /// served with plain commands, in two round trips: the feed and its
    /// celebrities in a MULTI (so a set and its sentinel are read from one
    /// state), then MGET of the bodies; a change between the two is a change
    /// between reads (a deleted post's body is gone: the page falls back to
    /// SQL). Plain commands cost Redis half what the script does.
    pub async fn page(
        &self,
        user: UserId,
        offset: usize,
        limit: usize,
    ) -> Result<CachedPage, CacheError> {
        let wanted = offset + limit;
        let feed = self.key("feed", user);
        let celebs = self.key("celebs", user);
        let mut pipe = redis::pipe();
        pipe.atomic();
        newest_commands(&mut pipe, &feed, wanted);
        pipe.smembers(&celebs);
        let (sentinel, ids, celebrities): (Vec<Bytes>, Vec<Bytes>, Vec<Bytes>) =
            self.query(&pipe).await?;
        let ids = match newest(sentinel, ids, wanted) {
            Ok(ids) => ids,
            Err(status) => return Ok(status),
        };
        // The pair is built together; an eviction can take one alone.
        // Without the celebrities the feed cannot be read, and a rebuild
        // would find it present: drop it so the next read rebuilds both.
        if celebrities.is_empty() {
            self.run(redis::pipe().del(&feed).ignore()).await?;
            return Ok(CachedPage::MissingFeed);
        }
        // Celebrities' timelines are merged where it is cheapest: in Redis,
        // whose script returns the page alone, rather than here, which
        // would fetch and parse `wanted` ids of every celebrity (on the
        // 1M-user data set, ~10 celebrities a reader, that tripled
        // livefeed's CPU per read).
        if celebrities.iter().any(|c| &c[..] != b"!") {
            return self.page_by_script(user, offset, limit).await;
        }
        let page = ids.get(offset..).unwrap_or_default();
        if page.is_empty() {
            return Ok(CachedPage::Hit(Vec::new()));
        }
        let keys: Vec<String> = page
            .iter()
            .map(|id| format!("{}post:{}", self.prefix, String::from_utf8_lossy(id)))
            .collect();
        let mut pipe = redis::pipe();
        pipe.mget(keys);
        let (bodies,): (Vec<Option<Bytes>>,) = self.query(&pipe).await?;
        let mut posts = Vec::with_capacity(page.len());
        for (id, body) in page.iter().zip(bodies) {
            let Some(body) = body else {
                return Ok(CachedPage::Incomplete);
            };
            posts.push((PostId::from_uuid(parse_uuid(id)?), body));
        }
        Ok(CachedPage::Hit(posts))
    }

    /// [`Self::page`] in one script, which merges the timelines of the
    /// celebrities the reader follows into the feed inside Redis.
    async fn page_by_script(
        &self,
        user: UserId,
        offset: usize,
        limit: usize,
    ) -> Result<CachedPage, CacheError> {
        let reply: Vec<Bytes> = self
            .call(
                self.read
                    .key(self.key("feed", user))
                    .key(self.key("celebs", user))
                    .arg(offset)
                    .arg(limit)
                    .arg(&self.prefix),
            )
            .await?;
        let mut reply = reply.into_iter();
        let status = reply.next().unwrap_or_default();
        match &status[..] {
            b"ok" => {
                let mut posts = Vec::with_capacity(reply.len() / 2);
                while let (Some(id), Some(body)) = (reply.next(), reply.next()) {
                    posts.push((PostId::from_uuid(parse_uuid(&id)?), body));
                }
                Ok(CachedPage::Hit(posts))
            }
            b"missing" | b"building" => Ok(CachedPage::MissingFeed),
            b"missing_author" => {
                let author = reply.next().unwrap_or_default();
                Ok(CachedPage::MissingAuthor(UserId::from_uuid(parse_uuid(
                    &author,
                )?)))
            }
            b"partial" | b"bodies" => Ok(CachedPage::Incomplete),
            other => Err(CacheError::Reply(
                String::from_utf8_lossy(other).into_owned(),
            )),
        }
    }

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
        self.finish(finish, posts, complete, &[]).await
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

    pub async fn delete_post(&self, post: PostId) -> Result<(), CacheError> {
        let mut pipe = redis::pipe();
        pipe.del(self.key("post", post)).ignore();
        self.run(&pipe).await
    }

    /// Adds `post` to each cached feed of `users` (uncached ones are left
    /// to be built from PostgreSQL when read).
    pub async fn add_to_feeds(&self, users: &[UserId], post: PostId) -> Result<(), CacheError> {
        let keys: Vec<String> = users.iter().map(|u| self.key("feed", u)).collect();
        self.add_to(&keys, post).await
    }

    pub async fn add_to_author(&self, author: UserId, post: PostId) -> Result<(), CacheError> {
        self.add_to(&[self.key("author", author)], post).await
    }

    async fn add_to(&self, keys: &[String], post: PostId) -> Result<(), CacheError> {
        let id = post.to_string();
        for chunk in keys.chunks(FAN_OUT_CHUNK) {
            let mut pipe = redis::pipe();
            // A pipeline only sends EVALSHA: make sure Redis knows the script
            // (it forgets scripts on restart or SCRIPT FLUSH).
            pipe.load_script(&self.add).ignore();
            for key in chunk {
                pipe.invoke_script(self.add.key(key).arg(&id).arg(FEED_CAPACITY))
                    .ignore();
            }
            self.run(&pipe).await?;
        }
        Ok(())
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
        self.remove_from(&[self.key("author", author)], post).await
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
        self.run(&pipe).await
    }

    async fn call<T: redis::FromRedisValue>(
        &self,
        script: &redis::ScriptInvocation<'_>,
    ) -> Result<T, CacheError> {
        self.check_back_off()?;
        let mut redis = self.redis.clone();
        script
            .invoke_async(&mut redis)
            .await
            .map_err(|e| self.failed(e))
    }

    async fn run(&self, pipe: &redis::Pipeline) -> Result<(), CacheError> {
        self.check_back_off()?;
        let mut redis = self.redis.clone();
        pipe.query_async::<()>(&mut redis)
            .await
            .map_err(|e| self.failed(e))
    }

    /// How many Redis errors made the cache back off so far.
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        pipe: &redis::Pipeline,
    ) -> Result<T, CacheError> {
        self.check_back_off()?;
        let mut redis = self.redis.clone();
        pipe.query_async(&mut redis)
            .await
            .map_err(|e| self.failed(e))
    }

    fn check_back_off(&self) -> Result<(), CacheError> {
        let now = self.started.elapsed().as_millis() as u64;
        if now < self.back_off_until.load(Ordering::Relaxed) {
            return Err(CacheError::BackingOff);
        }
        Ok(())
    }

    fn failed(&self, error: redis::RedisError) -> CacheError {
        if is_outage(&error) {
            self.outages.fetch_add(1, Ordering::Relaxed);
            let until = self.started.elapsed() + BACK_OFF;
            self.back_off_until
                .store(until.as_millis() as u64, Ordering::Relaxed);
        }
        CacheError::Redis(error)
    }
}

/// A client for `url`; `rediss://` is TLS (rustls), trusting the CA file of
/// [`crate::tls`] when one is set, else the system's CA store.
fn client(url: &str) -> Result<Client, CacheError> {
    crate::tls::install_provider();
    Ok(match crate::tls::ca_pem() {
        Some(pem) if url.starts_with("rediss://") => Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(pem.to_vec()),
            },
        )?,
        _ => Client::open(url)?,
    })
}

fn parse_uuid(raw: &[u8]) -> Result<uuid::Uuid, CacheError> {
    uuid::Uuid::try_parse_ascii(raw)
        .map_err(|_| CacheError::Reply(format!("not an id: {}", String::from_utf8_lossy(raw))))
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

/// Queues the reads [`newest`] needs of a sorted set: its sentinel (the
/// lowest member) and its newest `wanted + 1` members.
fn newest_commands(pipe: &mut redis::Pipeline, key: &str, wanted: usize) {
    pipe.zrange(key, 0, 0).zrevrange(key, 0, wanted as isize);
}

/// The newest `wanted` ids of a sorted set (fewer if it holds every post
/// there is), or why the cache cannot answer from it.
fn newest(
    sentinel: Vec<Bytes>,
    mut ids: Vec<Bytes>,
    wanted: usize,
) -> Result<Vec<Bytes>, CachedPage> {
    let Some(sentinel) = sentinel.into_iter().next() else {
        return Err(CachedPage::MissingFeed);
    };
    if &sentinel[..] == b"!b" {
        return Err(CachedPage::MissingFeed);
    }
    if ids.last() == Some(&sentinel) {
        ids.pop();
    }
    ids.truncate(wanted);
    if ids.len() < wanted && &sentinel[..] != b"!c" {
        return Err(CachedPage::Incomplete);
    }
    Ok(ids)
}

/// KEYS: feed, celebs. ARGV: offset, limit, prefix.
/// Replies `ok` then id, body pairs; or a status (and an author id).
const READ: &str = r#"
local offset, limit, prefix = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local wanted = offset + limit
local function newest(key)
    local sentinel = redis.call('ZRANGE', key, 0, 0)[1]
    if not sentinel then return nil, 'missing' end
    if sentinel == '!b' then return nil, 'building' end
    local ids = redis.call('ZREVRANGE', key, 0, wanted)
    if ids[#ids] == sentinel then table.remove(ids) end
    if #ids > wanted then table.remove(ids) end
    if #ids < wanted and sentinel ~= '!c' then return nil, 'partial' end
    return ids
end
local ids, status = newest(KEYS[1])
if not ids then return {status} end
-- The pair is built together; an eviction can take one alone. Without the
-- celebrities the feed cannot be read, and a rebuild would find it present:
-- drop it so the next read rebuilds both.
if redis.call('EXISTS', KEYS[2]) == 0 then
    redis.call('DEL', KEYS[1])
    return {'missing'}
end
-- Each source is newest first; a k-way merge of their heads yields the
-- page without sorting (a Lua comparator sort costs far more than the
-- Redis commands). A post in two sources (around a celebrity change) is
-- skipped the second time: equal ids meet as consecutive picks.
local sources = {ids}
for _, celebrity in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    if celebrity ~= '!' then
        local theirs, why = newest(prefix .. 'author:' .. celebrity)
        if not theirs then
            if why == 'partial' then return {why} end
            return {'missing_author', celebrity}
        end
        sources[#sources + 1] = theirs
    end
end
local page = ids
if #sources > 1 then
    page = {}
    local next_of = {}
    for i = 1, #sources do next_of[i] = 1 end
    local last
    while #page < wanted do
        local best, from
        for i = 1, #sources do
            local id = sources[i][next_of[i]]
            if id and (not best or id > best) then best, from = id, i end
        end
        if not best then break end
        next_of[from] = next_of[from] + 1
        if best ~= last then
            page[#page + 1] = best
            last = best
        end
    end
end
local reply = {'ok'}
local keys = {}
for i = offset + 1, math.min(wanted, #page) do
    keys[#keys + 1] = prefix .. 'post:' .. page[i]
end
if #keys == 0 then return reply end
local bodies = redis.call('MGET', unpack(keys))
for i, body in ipairs(bodies) do
    if not body then return {'bodies'} end
    reply[#reply + 1] = page[offset + i]
    reply[#reply + 1] = body
end
return reply
"#;

/// KEYS: a feed or author set. ARGV: post id, capacity.
const ADD: &str = r#"
local sentinel = redis.call('ZRANGE', KEYS[1], 0, 0)[1]
if not sentinel then return 0 end
redis.call('ZADD', KEYS[1], 0, ARGV[1])
local extra = redis.call('ZCARD', KEYS[1]) - 1 - tonumber(ARGV[2])
if extra > 0 then
    redis.call('ZREMRANGEBYRANK', KEYS[1], 1, extra)
    if sentinel == '!c' then
        redis.call('ZREM', KEYS[1], '!c')
        redis.call('ZADD', KEYS[1], 0, '!p')
    end
end
return 1
"#;

/// KEYS: the set to build. ARGV: build timeout in ms.
const BEGIN_BUILD: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], 0, '!b')
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return 1
"#;

/// KEYS: the set being built [, the user's celebrities set].
/// ARGV: final sentinel, capacity, id count, ids..., celebrities...
const FINISH_BUILD: &str = r#"
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
