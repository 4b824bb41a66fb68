//! Consecutive live posts of one author, written to each socket with one
//! send.
//!
//! While the hub keeps up, a burst is one post. When posts arrive faster
//! than a large audience can be written (a celebrity on a busy machine),
//! the ones already waiting behind the first go out with it: a backlog
//! then costs one syscall per socket, not one per post, so it shrinks
//! instead of growing. Only posts of one author that follow each other in
//! the broker's order are joined, so no socket sees posts in another
//! order than one at a time would have given it.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::codec::PostFrame;
use crate::domain::UserId;

/// Most posts one burst joins; each socket's outbox bound is far above it.
pub(super) const MOST_POSTS: usize = 16;

pub struct Burst {
    frames: Vec<Arc<PostFrame>>,
    /// Every frame's bytes, one after the other.
    wire: Bytes,
}

impl Burst {
    /// `frames` in order, all of one author; there is at least one.
    pub fn new(frames: Vec<Arc<PostFrame>>) -> Self {
        let wire = match frames.as_slice() {
            [] => panic!("a burst holds at least one post"),
            [frame] => frame.wire.clone(),
            [first, rest @ ..] => {
                debug_assert!(rest.iter().all(|frame| frame.author == first.author));
                let mut wire = BytesMut::with_capacity(frames.iter().map(|f| f.wire.len()).sum());
                for frame in &frames {
                    wire.extend_from_slice(&frame.wire);
                }
                wire.freeze()
            }
        };
        Self { frames, wire }
    }

    pub fn one(frame: Arc<PostFrame>) -> Self {
        Self::new(vec![frame])
    }

    pub fn author(&self) -> UserId {
        self.frames[0].author
    }

    /// The posts, in the order they are written.
    pub fn frames(&self) -> &[Arc<PostFrame>] {
        &self.frames
    }

    /// What one send writes to each socket.
    pub fn wire(&self) -> &Bytes {
        &self.wire
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PostId;
    use crate::realtime::wire;

    fn frame(author: UserId, text: &[u8]) -> Arc<PostFrame> {
        Arc::new(PostFrame {
            author,
            post: PostId::new_v7(),
            published_at_micros: 1,
            wire: wire::text(text),
        })
    }

    #[test]
    fn a_burst_writes_its_frames_back_to_back_and_one_post_is_not_copied() {
        let author = UserId::new_v7();
        let (a, b) = (frame(author, b"first"), frame(author, b"second"));
        let burst = Burst::new(vec![a.clone(), b.clone()]);
        assert_eq!(burst.wire(), &[&a.wire[..], &b.wire[..]].concat()[..]);
        assert_eq!(burst.author(), author);
        let one = Burst::one(a.clone());
        assert_eq!(one.wire().as_ptr(), a.wire.as_ptr());
    }
}
