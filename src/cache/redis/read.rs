//! Reading a page of a feed from Redis: plain commands for readers who
//! follow no celebrity, one merging script for those who do. Never writes,
//! except to drop a feed whose celebrities set was evicted.

use bytes::Bytes;

use super::{CacheError, RedisFeeds, parse_uuid};
use crate::domain::{PostId, UserId};

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

impl RedisFeeds {
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
pub(super) const READ: &str = r#"
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
