//! Reading a page of a feed from Redis with plain commands, celebrities'
//! timelines merged in here from this instance's copies of them. Never
//! writes, except to drop a feed whose celebrities key was evicted and to
//! name the timelines' version when Redis has none.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::stored::{self, ID_BYTES, SetState, Tail};
use super::{CacheError, RedisFeeds};
use crate::domain::{PostId, UserId};

/// A page's first round trip: the feed's state and newest ids, its
/// celebrities, and the timelines' and the bodies' tokens.
type PageReply = (Bytes, Bytes, Option<Bytes>, Option<Bytes>, Option<Bytes>);

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
        pipe.get(&celebs)
            .get(self.authors_version())
            .get(self.bodies_version());
        let (head, tail, celebrities, version, bodies_version): PageReply =
            self.query(&pipe).await?;
        let ids = match newest(&head, &tail, wanted) {
            Ok(ids) => ids,
            Err(status) => return Ok(status),
        };
        // The pair is built together; an eviction can take one alone.
        // Without the celebrities the feed cannot be read, and a rebuild
        // would find it present: drop it so the next read rebuilds both.
        let Some(celebrities) = celebrities else {
            self.run(redis::pipe().del(&feed).ignore()).await?;
            return Ok(CachedPage::MissingFeed);
        };
        let celebrities = stored::unpack_users(&celebrities)
            .ok_or_else(|| CacheError::Reply("a celebrities key that is not ids".into()))?;
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
        for (&id, body) in page.iter().zip(bodies) {
            let Some(body) = body else {
                return Ok(CachedPage::Incomplete);
            };
            posts.push((id, body));
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
        ids: &[PostId],
        version: Option<Bytes>,
    ) -> Result<Vec<Option<Bytes>>, CacheError> {
        let mut bodies: Vec<Option<Bytes>> = match &version {
            Some(version) => ids.iter().map(|&id| self.bodies.get(version, id)).collect(),
            None => vec![None; ids.len()],
        };
        let missing: Vec<usize> = (0..ids.len()).filter(|&i| bodies[i].is_none()).collect();
        if missing.is_empty() {
            return Ok(bodies);
        }
        let keys: Vec<String> = missing.iter().map(|&i| self.key("post", ids[i])).collect();
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
                self.bodies.put(&version, ids[i], body.clone());
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
        celebrities: &[UserId],
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
                    .and_then(|version| copies.get(version, *celebrity, wanted));
                if copy.is_none() {
                    stale.push(*celebrity);
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
            newest_commands(&mut pipe, &self.key("author", celebrity), depth);
        }
        let reply: Vec<redis::Value> = self.query(&pipe).await?;
        let mut reply = reply.into_iter();
        let version: Option<Bytes> = parse(reply.next().unwrap_or(redis::Value::Nil))?;
        let version = version.unwrap_or_default();
        let mut reply = reply.map(parse::<Bytes>);
        let mut read = Vec::with_capacity(stale.len());
        for celebrity in stale {
            let (Some(head), Some(tail)) = (reply.next(), reply.next()) else {
                return Err(CacheError::Reply("short timelines reply".into()));
            };
            match Timeline::read(&head?, &tail?, depth) {
                Some(timeline) => read.push((celebrity, Arc::new(timeline))),
                None => return Ok(Err(CachedPage::MissingAuthor(celebrity))),
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
    authors: HashMap<UserId, Arc<Timeline>>,
}

impl Timelines {
    fn get(&self, version: &Bytes, celebrity: UserId, wanted: usize) -> Option<Arc<Timeline>> {
        if *version != self.version {
            return None;
        }
        let timeline = self.authors.get(&celebrity)?;
        timeline.answers(wanted).then(|| timeline.clone())
    }

    fn put(&mut self, version: &Bytes, celebrity: UserId, timeline: Arc<Timeline>) {
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
    tail: Tail,
    /// How many ids were asked for.
    depth: usize,
}

impl Timeline {
    /// From the replies of [`newest_commands`] asked `depth` deep; `None`
    /// if the set is missing or being built.
    fn read(head: &[u8], tail: &[u8], depth: usize) -> Option<Self> {
        let tail = Tail::read(head, tail)?;
        (tail.state != SetState::Building).then_some(Self { tail, depth })
    }

    fn answers(&self, wanted: usize) -> bool {
        wanted <= self.depth || self.tail.whole()
    }

    /// The newest `wanted` ids (fewer if that is every post there is), or
    /// `None` if older posts exist that the cached set does not reach.
    fn newest(&self, wanted: usize) -> Option<&[PostId]> {
        self.tail.newest(wanted)
    }
}

/// The newest `wanted` ids of `sources`, each newest first: a k-way merge
/// of their heads. A post in two sources (around a celebrity change) is
/// kept once: equal ids meet as consecutive picks.
fn merge(sources: &[&[PostId]], wanted: usize) -> Vec<PostId> {
    let mut next = vec![0; sources.len()];
    let mut page: Vec<PostId> = Vec::with_capacity(wanted);
    while page.len() < wanted {
        let mut best: Option<(usize, &PostId)> = None;
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
            page.push(*id);
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

/// Slots read beyond the ids a page wants, so that a few removed ids (whose
/// slots repeat a neighbour, see [`stored`]) do not cut the page short.
const REMOVED_SLACK: usize = 16;

/// Queues the reads [`newest`] needs of a set: its state byte and its
/// newest `wanted` ids and a few more (the whole string if it holds fewer).
fn newest_commands(pipe: &mut redis::Pipeline, key: &str, wanted: usize) {
    let bytes = (ID_BYTES * (wanted + REMOVED_SLACK)) as isize;
    pipe.getrange(key, 0, 0).getrange(key, -bytes, -1);
}

/// The newest `wanted` ids of a set (fewer if it holds every post there
/// is), or why the cache cannot answer from it.
fn newest(head: &[u8], tail: &[u8], wanted: usize) -> Result<Vec<PostId>, CachedPage> {
    let tail = match Tail::read(head, tail) {
        Some(tail) if tail.state != SetState::Building => tail,
        _ => return Err(CachedPage::MissingFeed),
    };
    match tail.newest(wanted) {
        Some(ids) => Ok(ids.to_vec()),
        None => Err(CachedPage::Incomplete),
    }
}

#[cfg(test)]
mod tests {
    use super::super::stored::pack;
    use super::{Timeline, merge, newest};
    use crate::domain::PostId;

    /// Ids whose order is their number's.
    fn ids(numbers: &[u64]) -> Vec<PostId> {
        numbers
            .iter()
            .map(|&n| PostId::first_at(n * 1000))
            .collect()
    }

    /// A stored set as Redis would hold it, with `state` and these ids
    /// (newest first).
    fn set(state: u8, newest_first: &[u64]) -> Vec<u8> {
        let mut raw = vec![state];
        raw.extend(pack(ids(newest_first).into_iter()));
        raw
    }

    #[test]
    fn merge_takes_the_newest_of_all_sources_once() {
        let feed = ids(&[9, 6, 3]);
        let star = ids(&[8, 6, 2]);
        let other = ids(&[7, 5]);
        let sources = [&feed[..], &star[..], &other[..]];
        assert_eq!(merge(&sources, 5), ids(&[9, 8, 7, 6, 5]));
        assert_eq!(merge(&sources, 20), ids(&[9, 8, 7, 6, 5, 3, 2]));
        assert_eq!(merge(&[&[][..], &star[..]], 2), ids(&[8, 6]));
        assert!(merge(&[&[][..], &[][..]], 3).is_empty());
    }

    #[test]
    fn a_timeline_answers_only_as_deep_as_it_was_read() {
        // Read 3 deep from a set holding more: the last 3 slots.
        let raw = set(b'p', &[9, 8, 7, 6]);
        let deep = Timeline::read(&raw[..1], &raw[raw.len() - 48..], 3).unwrap();
        assert_eq!(deep.newest(2).unwrap(), &ids(&[9, 8])[..]);
        assert!(deep.answers(3) && !deep.answers(4));
        // The whole set (fewer than asked for), with older posts beyond it.
        let raw = set(b'p', &[9]);
        let partial = Timeline::read(&raw[..1], &raw, 3).unwrap();
        assert!(partial.answers(50));
        assert_eq!(partial.newest(1).unwrap(), &ids(&[9])[..]);
        assert!(partial.newest(2).is_none(), "older posts are not cached");
        // The whole set, and every post there is.
        let raw = set(b'c', &[9]);
        let complete = Timeline::read(&raw[..1], &raw, 3).unwrap();
        assert_eq!(complete.newest(10).unwrap(), &ids(&[9])[..]);
        // Missing, or being built: no timeline to merge.
        assert!(Timeline::read(b"", b"", 3).is_none());
        let raw = set(b'b', &[9]);
        assert!(Timeline::read(&raw[..1], &raw, 3).is_none());
    }

    #[test]
    fn newest_reads_a_feed_set_like_a_timeline() {
        let raw = set(b'c', &[9]);
        assert_eq!(newest(&raw[..1], &raw, 5), Ok(ids(&[9])));
        let raw = set(b'p', &[9]);
        assert!(newest(&raw[..1], &raw, 5).is_err());
        assert!(newest(b"", b"", 5).is_err());
    }
}
