//! Where a subscription starts, in PostgreSQL's commit order: which posts a
//! socket must get (committed after it subscribed) and which it must not
//! (committed before), whatever the writers' clocks say. Owns the reads a
//! subscribing socket needs; never compares post ids or times.

use std::collections::{HashMap, HashSet};

use super::{Store, StoreError};
use crate::domain::{Post, PostId, UserId};

/// The moment a socket's follows were read: the snapshot of that read (who
/// had committed by then) and the post sequence's value at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitMark {
    /// Every post sequenced after this was inserted after the snapshot.
    pub seq: i64,
    xmin: u64,
    xmax: u64,
    in_progress: HashSet<u64>,
}

impl CommitMark {
    pub fn new(seq: i64, xmin: i64, xmax: i64, in_progress: &[i64]) -> Self {
        let xid = |x: i64| x as u64;
        Self {
            seq,
            xmin: xid(xmin),
            xmax: xid(xmax),
            in_progress: in_progress.iter().copied().map(xid).collect(),
        }
    }

    /// Whether the post written by transaction `xid` had committed when the
    /// mark was taken, as `pg_visible_in_snapshot` says (a post's row exists,
    /// so its transaction did not abort). A row written before migration V6
    /// has no `xid`: it is older than any mark.
    pub fn saw(&self, xid: Option<u64>) -> bool {
        xid.is_none_or(|xid| {
            xid < self.xmin || (xid < self.xmax && !self.in_progress.contains(&xid))
        })
    }
}

/// A post with the transaction that wrote it, for [`CommitMark::saw`].
pub struct MarkedPost {
    pub post: Post,
    pub written_by: Option<u64>,
}

/// The read every new websocket makes, for many users at once (see
/// [`Store::follows_and_mark`]): one row per user, all in one snapshot.
pub(super) const FOLLOWS_AND_MARK: &str = "SELECT u.id, ARRAY(SELECT friend_id FROM friends WHERE user_id = u.id), \
            pg_snapshot_xmin(s)::text::bigint, pg_snapshot_xmax(s)::text::bigint, \
            ARRAY(SELECT pg_snapshot_xip(s)::text::bigint), \
            (SELECT last_value FROM posts_seq_seq) \
     FROM pg_current_snapshot() AS s, unnest($1::uuid[]) AS u(id)";

impl Store {
    /// Everyone each of `users` (at least one) follows, in their order, and the mark of
    /// that read: one statement, so the follows, the snapshot and the
    /// sequence value belong to the same moment. Many sockets connecting
    /// at once share it: on these machines a statement's round trip costs
    /// PostgreSQL far more CPU than reading 25 follows (BENCHMARKS.md §22).
    pub async fn follows_and_mark(
        &self,
        users: &[UserId],
    ) -> Result<(Vec<Vec<UserId>>, CommitMark), StoreError> {
        let ids: Vec<uuid::Uuid> = users.iter().map(|user| *user.as_uuid()).collect();
        // `last_value` is read after the statement's snapshot is taken, so
        // a post numbered above it was inserted after the snapshot.
        let rows = self
            .fetch_all(FOLLOWS_AND_MARK, &[&ids], |row| {
                let user: uuid::Uuid = row.get(0);
                let authors: Vec<uuid::Uuid> = row.get(1);
                let in_progress: Vec<i64> = row.get(4);
                let mark = CommitMark::new(row.get(5), row.get(2), row.get(3), &in_progress);
                (user, authors, mark)
            })
            .await?;
        let (_, _, mark) = rows
            .first()
            .expect("one row per user, and callers ask for at least one");
        let mark = mark.clone();
        let by_user: HashMap<uuid::Uuid, Vec<UserId>> = rows
            .into_iter()
            .map(|(user, authors, _)| (user, authors.into_iter().map(UserId::from_uuid).collect()))
            .collect();
        let follows = ids
            .iter()
            // A user may be asked for twice (two tabs connecting at once).
            .map(|id| by_user.get(id).cloned().unwrap_or_default())
            .collect();
        Ok((follows, mark))
    }

    /// The posts of `authors` one of `marks` may not have seen, in sequence
    /// order, at most `limit`: those sequenced after the earliest mark, and
    /// of the `concurrent` last ones of each author at or before it
    /// (inserted before the mark but maybe committed after) those whose
    /// transaction a mark has not seen as committed. The caller keeps, for
    /// each mark, those it did not see.
    pub async fn posts_after_marks<'a>(
        &self,
        authors: &[UserId],
        marks: impl IntoIterator<Item = &'a CommitMark>,
        limit: i64,
        concurrent: i64,
    ) -> Result<Vec<MarkedPost>, StoreError> {
        let Some((seq, xmin)) = marks
            .into_iter()
            .map(|mark| (mark.seq, mark.xmin))
            .reduce(|(seq, xmin), (s, x)| (seq.min(s), xmin.min(x)))
        else {
            return Ok(Vec::new());
        };
        // Every mark saw a transaction below its xmin commit: most rows
        // before the mark end here, without their text read or sent.
        let xmin = xmin as i64;
        let authors: Vec<uuid::Uuid> = authors.iter().map(|a| *a.as_uuid()).collect();
        self.fetch_all(
            "SELECT p.id, p.text, p.author_id, p.written_by::text::bigint \
             FROM unnest($1::uuid[]) AS a(author_id) \
             CROSS JOIN LATERAL ( \
                 (SELECT id, text, author_id, seq, written_by FROM posts \
                  WHERE author_id = a.author_id AND seq > $2 ORDER BY seq LIMIT $3) \
                 UNION ALL \
                 (SELECT * FROM ( \
                      SELECT id, text, author_id, seq, written_by FROM posts \
                      WHERE author_id = a.author_id AND seq <= $2 ORDER BY seq DESC LIMIT $4 \
                  ) before_mark WHERE written_by >= $5::bigint::text::xid8) \
             ) p \
             ORDER BY p.seq LIMIT $3",
            &[&authors, &seq, &limit, &concurrent, &xmin],
            |row| MarkedPost {
                post: Post {
                    id: PostId::from_uuid(row.get(0)),
                    text: row.get(1),
                    author_user_id: UserId::from_uuid(row.get(2)),
                },
                written_by: row.get::<_, Option<i64>>(3).map(|xid| xid as u64),
            },
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_sees_what_committed_before_it() {
        let mark = CommitMark::new(7, 100, 105, &[101, 103]);
        assert!(mark.saw(Some(99)));
        assert!(
            mark.saw(Some(100)),
            "between xmin and xmax, not in progress"
        );
        assert!(!mark.saw(Some(101)), "in progress at the mark");
        assert!(mark.saw(Some(102)));
        assert!(!mark.saw(Some(103)));
        assert!(!mark.saw(Some(105)), "started after the mark");
        assert!(mark.saw(None), "written before V6");
    }
}
