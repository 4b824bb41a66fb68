//! The per-socket delivery queue, shared by the hub (which pushes) and the
//! socket's session task (which drains it).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crossbeam_queue::SegQueue;
use tokio::sync::Notify;

use super::codec::PostFrame;
use crate::domain::UserId;

/// What happened to a pushed frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// The queue was full: this socket just became a slow consumer.
    Overflowed,
    /// The socket is already marked slow; the frame was dropped.
    Dropped,
}

/// One open websocket as the hub sees it.
///
/// The queue is lock-free (crossbeam's `SegQueue`, which allocates nothing
/// while empty, so an idle socket costs no queue memory) and bounded by a
/// counter: a client that falls `capacity` frames behind is marked slow and
/// closed by its session, instead of growing memory or slowing the hub.
pub struct Socket {
    pub user: UserId,
    queue: SegQueue<Arc<PostFrame>>,
    queued: AtomicUsize,
    capacity: usize,
    slow: AtomicBool,
    wake: Notify,
    overflow: Notify,
    /// Authors this socket is subscribed to. Held only for short, sync
    /// registry updates; it serialises follow changes of this socket.
    pub(super) follows: Mutex<Follows>,
}

/// What a socket follows, and how it came to.
pub(super) struct Follows {
    pub(super) authors: HashSet<UserId>,
    /// Until the session's snapshot of the user's follows is applied: the
    /// follow changes applied to this socket meanwhile, the newest per
    /// author. A change can be applied before a snapshot read earlier than
    /// it, and the snapshot must not undo it. `None` once subscribed.
    pub(super) changed_while_subscribing: Option<HashMap<UserId, bool>>,
}

impl Socket {
    pub fn new(user: UserId, capacity: usize) -> Self {
        Self {
            user,
            queue: SegQueue::new(),
            queued: AtomicUsize::new(0),
            capacity,
            slow: AtomicBool::new(false),
            wake: Notify::new(),
            overflow: Notify::new(),
            follows: Mutex::new(Follows {
                authors: HashSet::new(),
                changed_while_subscribing: Some(HashMap::new()),
            }),
        }
    }

    pub fn push(&self, frame: Arc<PostFrame>) -> Push {
        if self.slow.load(Ordering::Relaxed) {
            return Push::Dropped;
        }
        if self.queued.fetch_add(1, Ordering::AcqRel) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            if self.slow.swap(true, Ordering::AcqRel) {
                return Push::Dropped;
            }
            self.wake.notify_one();
            self.overflow.notify_one();
            return Push::Overflowed;
        }
        self.queue.push(frame);
        self.wake.notify_one();
        Push::Queued
    }

    pub fn pop(&self) -> Option<Arc<PostFrame>> {
        let frame = self.queue.pop()?;
        self.queued.fetch_sub(1, Ordering::AcqRel);
        Some(frame)
    }

    pub fn is_slow(&self) -> bool {
        self.slow.load(Ordering::Acquire)
    }

    /// Completes once the queue has overflowed, even while the session is
    /// blocked writing to a client that does not read.
    pub async fn overflowed(&self) {
        self.overflow.notified().await;
    }

    /// Completes after the next push (or at once if one happened since the
    /// last wait: `Notify` keeps a permit).
    pub async fn pushed(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PostId;

    fn frame() -> Arc<PostFrame> {
        Arc::new(PostFrame {
            author: UserId::new_v7(),
            post: PostId::new_v7(),
            published_at_micros: 0,
            text: "{}".into(),
        })
    }

    #[test]
    fn overflow_marks_the_socket_slow_once_and_drops_after() {
        let socket = Socket::new(UserId::new_v7(), 2);
        assert_eq!(socket.push(frame()), Push::Queued);
        assert_eq!(socket.push(frame()), Push::Queued);
        assert_eq!(socket.push(frame()), Push::Overflowed);
        assert!(socket.is_slow());
        assert!(socket.pop().is_some());
        assert_eq!(socket.push(frame()), Push::Dropped);
    }

    #[test]
    fn pops_in_push_order() {
        let socket = Socket::new(UserId::new_v7(), 8);
        let (a, b) = (frame(), frame());
        socket.push(a.clone());
        socket.push(b.clone());
        assert_eq!(socket.pop().unwrap().post, a.post);
        assert_eq!(socket.pop().unwrap().post, b.post);
        assert!(socket.pop().is_none());
    }

    #[tokio::test]
    async fn a_push_before_waiting_is_not_missed() {
        let socket = Socket::new(UserId::new_v7(), 8);
        socket.push(frame());
        tokio::time::timeout(std::time::Duration::from_secs(1), socket.pushed())
            .await
            .expect("the permit from the earlier push wakes the waiter");
    }
}
