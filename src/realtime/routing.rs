//! Which broker routing key carries an author's posts.

use std::num::NonZeroU32;
use std::str::FromStr;

use crate::domain::UserId;

/// `ById`: one key per author, so an instance receives exactly the posts
/// its sockets need but may hold many bindings. `Buckets(n)`: authors hashed
/// into `n` keys, which bounds the bindings per instance at `n` at the cost
/// of receiving (and dropping) posts of other authors in the same bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Routing {
    ById,
    Buckets(NonZeroU32),
}

impl Routing {
    pub fn key(&self, author: UserId) -> String {
        match self {
            Self::ById => author.to_string(),
            Self::Buckets(buckets) => {
                let id = author.as_uuid().as_u128();
                // UUIDv7's low bits are random; fold both halves anyway so
                // any UUID version spreads evenly.
                let hash = (id as u64) ^ ((id >> 64) as u64);
                bucket_key(hash % u64::from(buckets.get()))
            }
        }
    }

    /// Every key authors are routed by: `None` for `ById`, whose keys are
    /// as many as the authors.
    pub fn every_key(&self) -> Option<Vec<String>> {
        match self {
            Self::ById => None,
            Self::Buckets(buckets) => Some((0..u64::from(buckets.get())).map(bucket_key).collect()),
        }
    }
}

fn bucket_key(bucket: u64) -> String {
    format!("b.{bucket}")
}

impl FromStr for Routing {
    type Err = String;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        if raw == "id" {
            return Ok(Self::ById);
        }
        raw.strip_prefix("bucket:")
            .and_then(|n| n.parse::<NonZeroU32>().ok())
            .map(Self::Buckets)
            .ok_or_else(|| format!("routing must be `id` or `bucket:N` with N >= 1, got {raw:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes() {
        assert_eq!("id".parse(), Ok(Routing::ById));
        assert_eq!(
            "bucket:64".parse(),
            Ok(Routing::Buckets(NonZeroU32::new(64).unwrap()))
        );
        for bad in ["", "bucket:0", "bucket:x", "hash"] {
            assert!(bad.parse::<Routing>().is_err(), "{bad}");
        }
    }

    #[test]
    fn buckets_bound_the_keys_and_are_stable() {
        let routing: Routing = "bucket:8".parse().unwrap();
        let keys: std::collections::HashSet<String> =
            (0..1000).map(|_| routing.key(UserId::new_v7())).collect();
        assert_eq!(keys.len(), 8);
        let author = UserId::new_v7();
        assert_eq!(routing.key(author), routing.key(author));
        assert_eq!(Routing::ById.key(author), author.to_string());
        let every: std::collections::HashSet<String> =
            routing.every_key().unwrap().into_iter().collect();
        assert_eq!(every, keys, "every key is one authors are routed by");
        assert_eq!(Routing::ById.every_key(), None);
    }

    /// Every instance must put an author in the same bucket: the values are
    /// pinned (computed apart from this code), so a hash seeded per process
    /// or changed between versions fails here rather than splitting routing.
    #[test]
    fn bucket_keys_are_pinned_across_processes_and_versions() {
        let cases = [
            ("0192f3a4-5b6c-7d8e-9f01-23456789abcd", 1024, "b.579"),
            ("0192f3a4-5b6c-7d8e-9f01-23456789abcd", 1000, "b.883"),
            ("0192f3a4-5b6c-7d8e-9f01-23456789abcd", 8, "b.3"),
            ("018f0000-0000-7000-8000-000000000400", 1000, "b.248"),
            ("ffffffff-ffff-ffff-ffff-fffffffffffe", 1024, "b.1"),
        ];
        for (id, buckets, key) in cases {
            let routing = Routing::Buckets(NonZeroU32::new(buckets).unwrap());
            assert_eq!(routing.key(id.parse().unwrap()), key, "{id} in {buckets}");
        }
    }
}
