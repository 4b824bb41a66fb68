//! This instance's copies of post bodies, so that a page read costs Redis
//! the ids only: a feed's posts are read again and again by everyone who
//! follows their authors, and a body changes only when its post is updated
//! or deleted. A copy answers only while Redis' `version:bodies` token is
//! the one it was read under; every change to an existing body sets a fresh
//! token after it (write.rs), so no read that starts after a change is
//! answered with what it replaced. Holds at most [`COPIES_BYTES`].

use bytes::Bytes;
use quick_cache::Weighter;
use quick_cache::sync::Cache;

use crate::domain::PostId;

/// Memory for copies (ids, bodies and tokens, plus an estimate of the
/// cache's own overhead per entry): the bodies of the newest posts of a
/// busy instance's readers' authors, ≈ 100,000 of 300 bytes.
const COPIES_BYTES: u64 = 48 << 20;
const OVERHEAD_PER_COPY: u64 = 64;

#[derive(Clone)]
struct Copy {
    /// The `version:bodies` token read before the body was.
    version: Bytes,
    body: Bytes,
}

#[derive(Clone)]
struct Size;

impl Weighter<PostId, Copy> for Size {
    fn weight(&self, _: &PostId, copy: &Copy) -> u64 {
        (size_of::<PostId>() + copy.version.len() + copy.body.len()) as u64 + OVERHEAD_PER_COPY
    }
}

pub(super) struct BodyCopies {
    copies: Cache<PostId, Copy, Size>,
}

impl Default for BodyCopies {
    fn default() -> Self {
        Self::with_capacity(COPIES_BYTES)
    }
}

impl BodyCopies {
    fn with_capacity(bytes: u64) -> Self {
        let estimated = (bytes / 512) as usize;
        Self {
            copies: Cache::with_weighter(estimated, bytes, Size),
        }
    }

    /// The body of post `id` if it was copied under `version`.
    pub fn get(&self, version: &Bytes, id: PostId) -> Option<Bytes> {
        self.copies
            .get(&id)
            .filter(|copy| copy.version == *version)
            .map(|copy| copy.body)
    }

    /// Keeps `body`, read from Redis after `version` was.
    pub fn put(&self, version: &Bytes, id: PostId, body: Bytes) {
        let copy = Copy {
            version: version.clone(),
            body,
        };
        self.copies.insert(id, copy);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_answers_only_under_the_token_it_was_read_with() {
        let copies = BodyCopies::default();
        let (v1, v2) = (Bytes::from_static(b"v1"), Bytes::from_static(b"v2"));
        let id = PostId::first_at(1);
        copies.put(&v1, id, Bytes::from_static(b"old"));
        assert_eq!(copies.get(&v1, id).as_deref(), Some(&b"old"[..]));
        assert_eq!(copies.get(&v2, id), None, "the body may have changed");
        copies.put(&v2, id, Bytes::from_static(b"new"));
        assert_eq!(copies.get(&v2, id).as_deref(), Some(&b"new"[..]));
        assert_eq!(copies.get(&v1, id), None);
    }

    #[test]
    fn copies_stay_within_their_memory() {
        let copies = BodyCopies::with_capacity(64 << 10);
        let version = Bytes::from_static(b"v");
        for n in 0..10_000 {
            copies.put(&version, PostId::first_at(n), Bytes::from(vec![b'x'; 300]));
        }
        assert!(copies.copies.weight() <= 64 << 10);
        assert!(
            copies.copies.len() < 200,
            "{} copies kept",
            copies.copies.len()
        );
    }
}
