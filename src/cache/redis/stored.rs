//! How a cached set of post ids is laid out in Redis: one string, a state
//! byte then the ids as 16 raw bytes each, oldest first. A new post (nearly
//! always the newest) is one `APPEND`, a page is one `GETRANGE` from the end,
//! and an id costs 16 bytes instead of the ≈ 140 of a sorted-set member, so
//! every user's feed fits in memory (issue 11: 1,000,000 feeds, 253 M ids).
//! A removed id's slots hold a copy of a neighbouring id (so a removal
//! writes 16 bytes instead of the set): ids repeat, in order, and readers
//! keep each once.
//! This module owns the layout and nothing else: it never talks to Redis.

use uuid::Uuid;

use crate::domain::{PostId, UserId};

/// Bytes per stored id: the UUIDv7's own bytes, which sort by time.
pub const ID_BYTES: usize = 16;

/// The state byte, first in the string. A missing string is a set that was
/// never built, or was evicted or invalidated: readers rebuild it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetState {
    /// `b`: claimed and being built; ids added meanwhile are kept.
    Building,
    /// `c`: holds every post there is.
    Complete,
    /// `p`: older posts exist beyond the ids held.
    Partial,
}

impl SetState {
    pub fn byte(self) -> u8 {
        match self {
            Self::Building => b'b',
            Self::Complete => b'c',
            Self::Partial => b'p',
        }
    }

    fn from_byte(byte: u8) -> Option<Self> {
        match byte {
            b'b' => Some(Self::Building),
            b'c' => Some(Self::Complete),
            b'p' => Some(Self::Partial),
            _ => None,
        }
    }
}

/// A whole cached set, as a test or a tool reads it back.
#[derive(Debug, PartialEq, Eq)]
pub struct StoredSet {
    pub state: SetState,
    /// Newest first.
    pub ids: Vec<PostId>,
}

impl StoredSet {
    /// `None` for a missing (empty) or malformed string.
    pub fn decode(raw: &[u8]) -> Option<Self> {
        let Tail { state, ids, whole } = Tail::read(raw, raw)?;
        whole.then_some(Self { state, ids })
    }
}

/// Ids as a build hands them to Redis: newest first in, oldest first packed.
pub fn pack(newest_first: impl DoubleEndedIterator<Item = PostId>) -> Vec<u8> {
    newest_first
        .rev()
        .flat_map(|id| id.as_uuid().into_bytes())
        .collect()
}

/// A user's celebrities as `celebs:<user>` holds them: 16 bytes each, in
/// any order (an empty string for none; a missing key is an evicted one).
pub fn pack_users(users: &[UserId]) -> Vec<u8> {
    users
        .iter()
        .flat_map(|u| u.as_uuid().into_bytes())
        .collect()
}

/// `None` if `raw` is not whole ids.
pub fn unpack_users(raw: &[u8]) -> Option<Vec<UserId>> {
    Some(uuids(raw)?.map(UserId::from_uuid).collect())
}

/// One id as the scripts take it.
pub fn id_bytes(id: PostId) -> [u8; ID_BYTES] {
    id.as_uuid().into_bytes()
}

/// The newest end of a set as a page reads it: `GETRANGE key 0 0` (the
/// state) and `GETRANGE key -(16 × n) -1` (the newest `n` slots, or the
/// whole string, state byte first, if it holds fewer).
#[derive(Debug, PartialEq, Eq)]
pub struct Tail {
    pub state: SetState,
    /// Newest first, each once.
    ids: Vec<PostId>,
    /// The read reached the oldest id held.
    whole: bool,
}

impl Tail {
    /// `None` for a missing set.
    pub fn read(head: &[u8], tail: &[u8]) -> Option<Self> {
        let state = SetState::from_byte(*head.first()?)?;
        let whole = tail.len() % ID_BYTES == 1;
        let ids = if whole { &tail[1..] } else { tail };
        Some(Self {
            state,
            ids: newest_first(ids)?,
            whole,
        })
    }

    /// The read holds every id of the set.
    pub fn whole(&self) -> bool {
        self.whole
    }

    /// The newest `wanted` ids, or fewer if they are every post there is;
    /// `None` if the set cannot tell (older posts exist beyond what was
    /// read).
    pub fn newest(&self, wanted: usize) -> Option<&[PostId]> {
        if self.ids.len() >= wanted {
            Some(&self.ids[..wanted])
        } else {
            (self.whole && self.state == SetState::Complete).then_some(&self.ids[..])
        }
    }
}

fn newest_first(ids: &[u8]) -> Option<Vec<PostId>> {
    let mut ids: Vec<PostId> = uuids(ids)?.rev().map(PostId::from_uuid).collect();
    ids.dedup();
    Some(ids)
}

fn uuids(raw: &[u8]) -> Option<impl DoubleEndedIterator<Item = Uuid>> {
    let chunks = raw.chunks_exact(ID_BYTES);
    chunks
        .remainder()
        .is_empty()
        .then(|| chunks.map(|id| Uuid::from_bytes(id.try_into().expect("chunks are 16 bytes"))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> Vec<PostId> {
        (1..=n)
            .rev()
            .map(|ms| PostId::first_at(ms * 1000))
            .collect()
    }

    #[test]
    fn a_packed_set_reads_back_newest_first() {
        let newest_first = ids(3);
        let mut raw = vec![SetState::Partial.byte()];
        raw.extend(pack(newest_first.iter().copied()));
        assert_eq!(raw.len(), 1 + 3 * ID_BYTES);
        assert_eq!(
            StoredSet::decode(&raw),
            Some(StoredSet {
                state: SetState::Partial,
                ids: newest_first.clone()
            })
        );
        // Packed oldest first: the bytes sort as the ids do.
        assert!(raw[1..17] < raw[17..33]);
        assert_eq!(
            PostId::from_uuid(Uuid::from_bytes(id_bytes(newest_first[0]))),
            newest_first[0]
        );
        let users = [UserId::new_v7(), UserId::new_v7()];
        assert_eq!(unpack_users(&pack_users(&users)).unwrap(), users);
        assert_eq!(unpack_users(b"").unwrap(), []);
        assert_eq!(unpack_users(b"123"), None);
    }

    #[test]
    fn a_tail_holds_the_state_only_when_it_is_the_whole_string() {
        let newest_first = ids(3);
        let mut raw = vec![SetState::Complete.byte()];
        raw.extend(pack(newest_first.iter().copied()));
        // Two slots read of three: it cannot answer beyond them, complete
        // or not.
        let part = Tail::read(&raw[..1], &raw[raw.len() - 2 * ID_BYTES..]).unwrap();
        assert!(!part.whole());
        assert_eq!(part.newest(2), Some(&newest_first[..2]));
        assert_eq!(part.newest(3), None);
        // Five asked for: GETRANGE clamps to the whole string.
        let whole = Tail::read(&raw[..1], &raw).unwrap();
        assert!(whole.whole());
        assert_eq!(whole.newest(5), Some(&newest_first[..]));
        raw[0] = SetState::Partial.byte();
        assert_eq!(Tail::read(&raw[..1], &raw).unwrap().newest(5), None);
        let building = Tail::read(b"b", b"b").unwrap();
        assert_eq!(building.state, SetState::Building);
        assert_eq!(Tail::read(b"", b""), None, "missing");
        // A removed id's slot filled with its older neighbour.
        let mut filled = raw.clone();
        filled.copy_within(1..17, 17);
        assert_eq!(
            StoredSet::decode(&filled).unwrap().ids,
            [newest_first[0], newest_first[2]]
        );
        assert_eq!(StoredSet::decode(b""), None);
        assert_eq!(StoredSet::decode(b"x"), None, "not a state");
        assert_eq!(StoredSet::decode(b"c123"), None, "not whole ids");
    }
}
