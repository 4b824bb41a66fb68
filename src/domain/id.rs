use std::fmt;
use std::marker::PhantomData;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use super::ValidationError;

/// What an id identifies; only used to name it in error messages and to keep
/// a `PostId` from being passed where a `UserId` is expected.
pub trait IdKind {
    const NAME: &'static str;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UserKind {}
impl IdKind for UserKind {
    const NAME: &'static str = "user id";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PostKind {}
impl IdKind for PostKind {
    const NAME: &'static str = "post id";
}

/// A UUID typed by what it identifies. New ids are UUIDv7, so they sort by
/// creation time and keep B-tree inserts at the right edge of the index.
#[derive(PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Id<K> {
    uuid: Uuid,
    kind: PhantomData<K>,
}

pub type UserId = Id<UserKind>;
pub type PostId = Id<PostKind>;

impl<K> Clone for Id<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K> Copy for Id<K> {}

impl<K> Id<K> {
    pub fn new_v7() -> Self {
        Self::from_uuid(Uuid::now_v7())
    }

    pub fn from_uuid(uuid: Uuid) -> Self {
        Self {
            uuid,
            kind: PhantomData,
        }
    }

    pub fn as_uuid(&self) -> &Uuid {
        &self.uuid
    }

    /// The smallest UUIDv7 of millisecond `unix_ms`: every id created at or
    /// after that instant sorts after it.
    pub fn first_at(unix_ms: u64) -> Self {
        let mut bytes = [0u8; 16];
        bytes[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
        bytes[6] = 0x70; // version 7
        bytes[8] = 0x80; // RFC 4122 variant
        Self::from_uuid(Uuid::from_bytes(bytes))
    }

    /// Milliseconds since the Unix epoch at which a UUIDv7 was made.
    pub fn unix_ms(&self) -> Option<u64> {
        let (seconds, nanos) = self.uuid.get_timestamp()?.to_unix();
        Some(seconds * 1000 + u64::from(nanos) / 1_000_000)
    }
}

impl<K: IdKind> FromStr for Id<K> {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::try_parse(s)
            .map(Self::from_uuid)
            .map_err(|_| ValidationError(format!("{} must be a UUID, got {s:?}", K::NAME)))
    }
}

impl<K> fmt::Display for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.uuid.hyphenated().fmt(f)
    }
}

/// The plain UUID, as in the API: logs that print an event or a gap with
/// `?` then show ids an operator can paste into a query, not `Id { uuid: .. }`.
impl<K> fmt::Debug for Id<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl<K> Serialize for Id<K> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.uuid.hyphenated())
    }
}

impl<'de, K: IdKind> Deserialize<'de> for Id<K> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        raw.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_hyphenated() {
        let id: UserId = "E4D2E6B0-CDE2-42C5-AAC3-0B8316F21E58".parse().unwrap();
        assert_eq!(id.to_string(), "e4d2e6b0-cde2-42c5-aac3-0b8316f21e58");
        assert_eq!(format!("{id:?}"), "e4d2e6b0-cde2-42c5-aac3-0b8316f21e58");
    }

    #[test]
    fn rejects_garbage_naming_the_kind() {
        let err = "42".parse::<PostId>().unwrap_err();
        assert!(err.0.starts_with("post id must be a UUID"), "{err}");
    }

    #[test]
    fn first_at_sorts_before_every_id_of_that_millisecond() {
        let id = PostId::new_v7();
        let ms = id.unix_ms().unwrap();
        assert!(PostId::first_at(ms) <= id);
        assert!(PostId::first_at(ms + 1) > id);
        assert_eq!(PostId::first_at(ms).unix_ms(), Some(ms));
    }

    #[test]
    fn v7_ids_sort_by_creation() {
        let a = PostId::new_v7();
        let b = PostId::new_v7();
        assert!(a < b);
    }
}
