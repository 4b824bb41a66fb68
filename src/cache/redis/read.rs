//! Reading a page of a feed from Redis with plain commands, celebrities'
//! timelines merged in here from this instance's copies of them. Never
//! writes, except to drop a feed whose celebrities set was evicted and to
//! name the timelines' version when Redis has none.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::{CacheError, RedisFeeds, parse_uuid};
use crate::domain::{PostId, UserId};

/// A page's first round trip: the feed's sentinel and newest ids, its
/// celebrities, and the timelines' and the bodies' tokens.
type PageReply = (
    Vec<Bytes>,
    Vec<Bytes>,
    Vec<Bytes>,
    Option<Bytes>,
    Option<Bytes>,
);

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
    /// merged in, with plain commands: the feed, its celebrities and the
    /// timelines' and bodies' version tokens in a MULTI (so a set and its
    /// sentinel are read from one state), then the bodies, from this
    /// instance's copies while their token stands
    /// ([`BodyCopies`](super::bodies::BodyCopies)) and by
    /// MGET for the rest. The celebrities' timelines come from this
    /// instance's copy while their token is unchanged ([`Timelines`]), else
    /// from one more MULTI. A change between the round trips is a change
    /// between reads (a deleted post's body is gone: the page falls back to
    /// SQL).
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
        pipe.smembers(&celebs)
            .get(self.authors_version())
            .get(self.bodies_version());
        let (sentinel, ids, celebrities, version, bodies_version): PageReply =
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
        let celebrities: Vec<Bytes> = celebrities.into_iter().filter(|c| &c[..] != b"!").collect();
        let ids = if celebrities.is_empty() {
            ids
        } else {
            let timelines = match self.timelines(&celebrities, version, wanted).await? {
                Ok(timelines) => timelines,
                Err(status) => return Ok(status),
            };
            let mut sources = vec![&ids[..]];
            for timeline in &timelines {
                match timeline.newest(wanted) {
                    Some(theirs) => sources.push(theirs),
                    None => return Ok(CachedPage::Incomplete),
                }
            }
            merge(&sources, wanted)
        };
        let page = ids.get(offset..).unwrap_or_default();
        if page.is_empty() {
            return Ok(CachedPage::Hit(Vec::new()));
        }
        let bodies = self.bodies(page, bodies_version).await?;
        let mut posts = Vec::with_capacity(page.len());
        for (id, body) in page.iter().zip(bodies) {
            let Some(body) = body else {
                return Ok(CachedPage::Incomplete);
            };
            posts.push((PostId::from_uuid(parse_uuid(id)?), body));
        }
        Ok(CachedPage::Hit(posts))
    }

    /// The bodies of `ids`, in order, `None` where Redis has none: this
    /// instance's copies of those read under `version`, the rest by one
    /// MGET, then copied. Redis without a token (restarted, flushed) is
    /// given one first, in the same round trip, so the bodies are read
    /// after the token they are copied under.
    async fn bodies(
        &self,
        ids: &[Bytes],
        version: Option<Bytes>,
    ) -> Result<Vec<Option<Bytes>>, CacheError> {
        let mut bodies: Vec<Option<Bytes>> = match &version {
            Some(version) => ids.iter().map(|id| self.bodies.get(version, id)).collect(),
            None => vec![None; ids.len()],
        };
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| bodies[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(bodies);
        }
        let keys: Vec<String> = missing
            .iter()
            .map(|&i| format!("{}post:{}", self.prefix, String::from_utf8_lossy(&ids[i])))
            .collect();
        let mut pipe = redis::pipe();
        let (version, fetched) = match version {
            Some(version) => {
                pipe.mget(keys);
                let (fetched,): (Vec<Option<Bytes>>,) = self.query(&pipe).await?;
                (version, fetched)
            }
            None => {
                pipe.cmd("SET")
                    .arg(self.bodies_version())
                    .arg(fresh_version())
                    .arg("NX")
                    .ignore();
                pipe.get(self.bodies_version()).mget(keys);
                self.query(&pipe).await?
            }
        };
        for (i, body) in missing.into_iter().zip(fetched) {
            if let Some(body) = &body {
                self.bodies.put(&version, ids[i].clone(), body.clone());
            }
            bodies[i] = body;
        }
        Ok(bodies)
    }

    /// The timelines of `celebrities`, each read at least `wanted` deep:
    /// this instance's copies while Redis' token is still `version`, the
    /// rest read in one MULTI (which names the token if Redis lost it).
    async fn timelines(
        &self,
        celebrities: &[Bytes],
        version: Option<Bytes>,
        wanted: usize,
    ) -> Result<Result<Vec<Arc<Timeline>>, CachedPage>, CacheError> {
        let mut found = Vec::with_capacity(celebrities.len());
        let mut stale = Vec::new();
        {
            let copies = self.timelines.lock().expect("no panic holds the lock");
            for celebrity in celebrities {
                let copy = version
                    .as_ref()
                    .and_then(|version| copies.get(version, celebrity, wanted));
                if copy.is_none() {
                    stale.push(celebrity);
                }
                found.push(copy);
            }
        }
        if stale.is_empty() {
            return Ok(Ok(found.into_iter().flatten().collect()));
        }
        let depth = wanted.max(TIMELINE_DEPTH);
        let mut pipe = redis::pipe();
        pipe.atomic();
        pipe.cmd("SET")
            .arg(self.authors_version())
            .arg(fresh_version())
            .arg("NX")
            .ignore();
        pipe.get(self.authors_version());
        for celebrity in &stale {
            let key = format!(
                "{}author:{}",
                self.prefix,
                String::from_utf8_lossy(celebrity)
            );
            newest_commands(&mut pipe, &key, depth);
        }
        let reply: Vec<redis::Value> = self.query(&pipe).await?;
        let mut reply = reply.into_iter();
        let version: Option<Bytes> = parse(reply.next().unwrap_or(redis::Value::Nil))?;
        let version = version.unwrap_or_default();
        let mut reply = reply.map(parse::<Vec<Bytes>>);
        let mut read = Vec::with_capacity(stale.len());
        for celebrity in stale {
            let (Some(sentinel), Some(ids)) = (reply.next(), reply.next()) else {
                return Err(CacheError::Reply("short timelines reply".into()));
            };
            match Timeline::read(sentinel?, ids?, depth) {
                Some(timeline) => read.push((celebrity.clone(), Arc::new(timeline))),
                None => {
                    let author = UserId::from_uuid(parse_uuid(celebrity)?);
                    return Ok(Err(CachedPage::MissingAuthor(author)));
                }
            }
        }
        let mut read = read.into_iter();
        let mut copies = self.timelines.lock().expect("no panic holds the lock");
        let timelines = found
            .into_iter()
            .map(|copy| {
                copy.unwrap_or_else(|| {
                    let (celebrity, timeline) = read.next().expect("one read per stale copy");
                    copies.put(&version, celebrity, timeline.clone());
                    timeline
                })
            })
            .collect();
        Ok(Ok(timelines))
    }
}

/// Ids read of a celebrity's timeline at the least, so the next few pages
/// are answered from the same copy.
const TIMELINE_DEPTH: usize = 64;

/// This instance's copies of the celebrity timelines it has read, valid
/// while Redis' `version:authors` token is the one they were read with:
/// every change to any timeline sets a new token after it (see write.rs),
/// so a reader who follows celebrities costs Redis what any reader does,
/// instead of two reads of each celebrity's set (or a merging script) per
/// page. Holds at most the celebrities read since the last change.
#[derive(Default)]
pub(super) struct Timelines {
    version: Bytes,
    authors: HashMap<Bytes, Arc<Timeline>>,
}

impl Timelines {
    fn get(&self, version: &Bytes, celebrity: &Bytes, wanted: usize) -> Option<Arc<Timeline>> {
        if *version != self.version {
            return None;
        }
        let timeline = self.authors.get(celebrity)?;
        timeline.answers(wanted).then(|| timeline.clone())
    }

    fn put(&mut self, version: &Bytes, celebrity: Bytes, timeline: Arc<Timeline>) {
        if *version != self.version {
            self.authors.clear();
            self.version = version.clone();
        }
        self.authors.insert(celebrity, timeline);
    }
}

/// The newest ids of a celebrity's timeline as read from Redis.
#[derive(Debug)]
struct Timeline {
    /// Newest first, without the sentinel.
    ids: Vec<Bytes>,
    /// No older posts exist beyond the cached set (sentinel `!c`).
    complete: bool,
    /// How many ids were asked for: `ids` is the whole set if it holds fewer.
    depth: usize,
}

impl Timeline {
    /// From the replies of [`newest_commands`] asked `depth` deep; `None`
    /// if the set is missing or being built.
    fn read(sentinel: Vec<Bytes>, mut ids: Vec<Bytes>, depth: usize) -> Option<Self> {
        let sentinel = sentinel.into_iter().next()?;
        if &sentinel[..] == b"!b" {
            return None;
        }
        if ids.last() == Some(&sentinel) {
            ids.pop();
        }
        ids.truncate(depth);
        Some(Self {
            ids,
            complete: &sentinel[..] == b"!c",
            depth,
        })
    }

    fn answers(&self, wanted: usize) -> bool {
        wanted <= self.depth || self.ids.len() < self.depth
    }

    /// The newest `wanted` ids (fewer if that is every post there is), or
    /// `None` if older posts exist that the cached set does not reach.
    fn newest(&self, wanted: usize) -> Option<&[Bytes]> {
        let ids = &self.ids[..wanted.min(self.ids.len())];
        (ids.len() == wanted || self.complete).then_some(ids)
    }
}

/// The newest `wanted` ids of `sources`, each newest first: a k-way merge
/// of their heads. A post in two sources (around a celebrity change) is
/// kept once: equal ids meet as consecutive picks.
fn merge(sources: &[&[Bytes]], wanted: usize) -> Vec<Bytes> {
    let mut next = vec![0; sources.len()];
    let mut page: Vec<Bytes> = Vec::with_capacity(wanted);
    while page.len() < wanted {
        let mut best: Option<(usize, &Bytes)> = None;
        for (i, source) in sources.iter().enumerate() {
            if let Some(id) = source.get(next[i])
                && best.is_none_or(|(_, best)| id > best)
            {
                best = Some((i, id));
            }
        }
        let Some((from, id)) = best else {
            break;
        };
        next[from] += 1;
        if page.last() != Some(id) {
            page.push(id.clone());
        }
    }
    page
}

fn parse<T: redis::FromRedisValue>(value: redis::Value) -> Result<T, CacheError> {
    redis::from_redis_value(value).map_err(|e| CacheError::Reply(e.to_string()))
}

/// A token no earlier state of the timelines had.
pub(super) fn fresh_version() -> String {
    uuid::Uuid::new_v4().to_string()
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

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::{Timeline, merge, newest};

    fn ids(names: &[&'static str]) -> Vec<Bytes> {
        names
            .iter()
            .map(|n| Bytes::from_static(n.as_bytes()))
            .collect()
    }

    #[test]
    fn merge_takes_the_newest_of_all_sources_once() {
        let feed = ids(&["9", "6", "3"]);
        let star = ids(&["8", "6", "2"]);
        let other = ids(&["7", "5"]);
        let sources = [&feed[..], &star[..], &other[..]];
        assert_eq!(merge(&sources, 5), ids(&["9", "8", "7", "6", "5"]));
        assert_eq!(
            merge(&sources, 20),
            ids(&["9", "8", "7", "6", "5", "3", "2"])
        );
        assert_eq!(merge(&[&[][..], &star[..]], 2), ids(&["8", "6"]));
        assert!(merge(&[&[][..], &[][..]], 3).is_empty());
    }

    #[test]
    fn a_timeline_answers_only_as_deep_as_it_was_read() {
        // Read 3 deep from a set holding more: ZREVRANGE 0 3 gave 4 ids.
        let deep = Timeline::read(ids(&["!p"]), ids(&["9", "8", "7", "6"]), 3).unwrap();
        assert_eq!(deep.newest(2).unwrap(), &ids(&["9", "8"])[..]);
        assert!(deep.answers(3) && !deep.answers(4));
        // The whole set (fewer than asked for), with older posts beyond it.
        let partial = Timeline::read(ids(&["!p"]), ids(&["9", "!p"]), 3).unwrap();
        assert!(partial.answers(50));
        assert_eq!(partial.newest(1).unwrap(), &ids(&["9"])[..]);
        assert!(partial.newest(2).is_none(), "older posts are not cached");
        // The whole set, and every post there is.
        let complete = Timeline::read(ids(&["!c"]), ids(&["9", "!c"]), 3).unwrap();
        assert_eq!(complete.newest(10).unwrap(), &ids(&["9"])[..]);
        // Missing, or being built: no timeline to merge.
        assert!(Timeline::read(Vec::new(), Vec::new(), 3).is_none());
        assert!(Timeline::read(ids(&["!b"]), ids(&["9", "!b"]), 3).is_none());
    }

    #[test]
    fn newest_reads_a_feed_set_like_a_timeline() {
        assert_eq!(newest(ids(&["!c"]), ids(&["9", "!c"]), 5), Ok(ids(&["9"])));
        assert!(newest(ids(&["!p"]), ids(&["9", "!p"]), 5).is_err());
        assert!(newest(Vec::new(), Vec::new(), 5).is_err());
    }
}
