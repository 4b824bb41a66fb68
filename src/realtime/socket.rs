//! One open websocket as the hub sees it, and the only way bytes reach it.
//!
//! A post is written by whoever delivers it: the hub writes the shared,
//! pre-encoded frame straight into the kernel with a non-blocking
//! `try_write` when nothing is waiting before it, so a socket that keeps up
//! costs one syscall per post and no task wake-up. Only what the kernel
//! does not take (all of a frame, or the rest of one) waits in the socket's
//! outbox, in order, for the session task to write when the socket drains.
//! That outbox is bounded: a client that falls `capacity` posts behind is
//! marked slow and closed by its session (1008) instead of growing memory.
//!
//! Nothing here awaits, and the outbox lock is held only around a
//! non-blocking write, so a slow client holds nobody up. An idle socket
//! holds no buffer (an empty `VecDeque` allocates nothing) and no timer:
//! its pings come from the instance's one heartbeat ([`Socket::heartbeat`]),
//! and its session waits on a waker slot, not a future of its own.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::{Buf, Bytes};
use futures_util::task::AtomicWaker;
use tokio::net::TcpStream;

use super::burst::Burst;
use super::codec::PostFrame;
use super::wire;
use crate::domain::{PostId, UserId};

/// Frames written with one `writev` when the outbox drains: a backlog goes
/// out in a few large writes rather than one per post.
const COALESCE: usize = 64;
/// Most posts one catch-up sends, whether a `?since=` or the read-back
/// after a binding.
pub(super) const CATCH_UP_LIMIT: usize = 1000;
/// How many of the post ids written around a seam a socket remembers: a
/// whole catch-up, and as many live posts again. Fewer would let the live
/// copies of a long catch-up's first posts through (RabbitMQ away while
/// posts are written, then back while a reader catches up on them).
const SEAM_POSTS: usize = 2 * CATCH_UP_LIMIT;

/// What happened to a delivered post.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    /// The kernel took the whole frame.
    Written,
    /// It waits in the outbox (the socket is still subscribing, or the
    /// kernel's buffer is full) for the session to write.
    Queued,
    /// The outbox was full: this socket just became a slow consumer.
    Overflowed,
    /// Not delivered: the socket is slow or gone, or had this post already.
    Dropped,
}

/// What writing the outbox came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flushed {
    /// Everything is in the kernel.
    Done,
    /// The kernel's buffer is full; wait until the socket is writable.
    Blocked,
    /// The peer is gone.
    Gone,
}

/// Why a socket is to be closed by a decision made outside its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Its outbox overflowed: the client fell too far behind.
    Slow,
    /// It did not answer the previous ping within a ping interval.
    Silent,
    /// The server is shutting down.
    Shutdown,
}

/// What [`Socket::push`] and [`Socket::try_admit`] make of live posts.
pub(super) enum Admit<'a> {
    /// Nothing waits in the outbox: the caller writes the frame into the
    /// kernel, then settles.
    Direct(Direct<'a>),
    /// Dropped, held or queued: nothing left to do.
    Settled(Push),
}

/// A socket whose outbox is empty and locked, so nothing can be written
/// before the post the holder is writing into the kernel.
pub(super) struct Direct<'a> {
    socket: &'a Socket,
    out: MutexGuard<'a, Outbox>,
}

impl Direct<'_> {
    /// The descriptor to write the frame to, with nothing but a
    /// non-blocking send: the socket stays registered with tokio.
    pub(super) fn fd(&self) -> RawFd {
        self.socket.stream.as_raw_fd()
    }

    /// Settles the write of `burst`'s wire bytes: `written` is what the
    /// kernel answered (bytes taken, or the error). `settled` hears what
    /// became of each post, by its place in the burst.
    pub(super) fn settle(
        mut self,
        written: io::Result<usize>,
        burst: &Burst,
        settled: impl FnMut(usize, Push),
    ) {
        let pieces = burst
            .frames()
            .iter()
            .map(|frame| (&frame.wire, frame.published_at_micros));
        self.socket.settle(&mut self.out, written, pieces, settled);
    }
}

pub struct Socket {
    pub user: UserId,
    stream: TcpStream,
    capacity: usize,
    out: Mutex<Outbox>,
    /// Set, and the session's waker woken, when the outbox needs the
    /// session: frames wait in it, the peer is gone, or the socket is
    /// ending. Stays set until the session sees it, like a permit.
    woken: AtomicBool,
    session: AtomicWaker,
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

#[derive(Default)]
struct Outbox {
    /// What the kernel has not taken yet, in order; the first entry may be
    /// the rest of a partly written frame.
    pending: VecDeque<Pending>,
    /// Posts among `pending`: the bound applies to them, not to control frames.
    posts: usize,
    /// Until the session has subscribed and caught up: the live posts that
    /// arrived meanwhile, which must follow the catch-up.
    held: Option<Vec<Arc<PostFrame>>>,
    seam: Option<Box<Seam>>,
    /// Posts written to this socket from PostgreSQL, and a reconnecting
    /// client's last post, that a gap recovery may read back again: those
    /// at or after the recovery horizon, oldest first. The seam covers a
    /// live copy for [`super::registry::SEAM_WINDOW`]; a recovery comes
    /// after a broker outage of any length.
    read_back: VecDeque<PostId>,
    /// A ping went out that no pong has answered yet.
    awaiting_pong: bool,
    ending: Option<Ending>,
    gone: bool,
}

struct Pending {
    bytes: Bytes,
    /// When its post was published (0 for a control frame).
    published_at_micros: u64,
}

/// Where two streams of posts meet on a socket (a catch-up read from the
/// database and the live posts, which can carry the same post), the ids
/// written recently, so each goes out once. The copies arrive close
/// together, so the seam is closed after a while and its memory freed.
struct Seam {
    /// Oldest first. A seam holds a few dozen ids while it is open, so a
    /// scan is cheaper than a hash set beside it: 16 bytes an id instead of
    /// about 50, kept by every socket that connected in the last 30 s.
    written: VecDeque<PostId>,
    until: Instant,
}

impl Seam {
    fn is_over(&self, now: Instant) -> bool {
        self.until < now
    }

    /// Records `id`; false if it was written already.
    fn first_time(&mut self, id: PostId) -> bool {
        if self.written.contains(&id) {
            return false;
        }
        if self.written.len() == SEAM_POSTS {
            self.written.pop_front();
        }
        self.written.push_back(id);
        true
    }
}

impl Outbox {
    /// Whether a post may come to this socket twice: [`Outbox::first_time`]
    /// tells, at the cost of a clock read the hot path skips otherwise.
    fn may_repeat(&self) -> bool {
        self.seam.is_some() || !self.read_back.is_empty()
    }

    /// False if the post went out on this socket already.
    fn first_time(&mut self, post: PostId, now: Instant) -> bool {
        if self.read_back.contains(&post) {
            return false;
        }
        match &mut self.seam {
            Some(seam) if seam.is_over(now) => {
                self.seam = None;
                true
            }
            Some(seam) => seam.first_time(post),
            None => true,
        }
    }

    /// Remembers `post`, written from PostgreSQL, unless no recovery would
    /// read it back (it is older than `horizon`).
    fn remember_read_back(&mut self, post: PostId, horizon: PostId) {
        if post < horizon {
            return;
        }
        self.forget_read_back(horizon);
        if self.read_back.len() == SEAM_POSTS {
            self.read_back.pop_front();
        }
        self.read_back.push_back(post);
    }

    /// Forgets the posts older than `horizon`, and the memory once none
    /// are left.
    fn forget_read_back(&mut self, horizon: PostId) {
        while self.read_back.front().is_some_and(|post| *post < horizon) {
            self.read_back.pop_front();
        }
        if self.read_back.is_empty() && self.read_back.capacity() > 0 {
            self.read_back = VecDeque::new();
        }
    }
}

impl Socket {
    /// A socket that holds live posts until [`Socket::release`].
    pub fn new(user: UserId, capacity: usize, stream: TcpStream) -> Self {
        Self {
            user,
            stream,
            capacity,
            out: Mutex::new(Outbox {
                held: Some(Vec::new()),
                ..Outbox::default()
            }),
            woken: AtomicBool::new(false),
            session: AtomicWaker::new(),
            follows: Mutex::new(Follows {
                authors: HashSet::new(),
                changed_while_subscribing: Some(HashMap::new()),
            }),
        }
    }

    fn outbox(&self) -> MutexGuard<'_, Outbox> {
        self.out.lock().expect("outbox lock")
    }

    /// The hub's delivery of a live post.
    pub fn push(&self, frame: &Arc<PostFrame>) -> Push {
        match self.admit(self.outbox(), frame) {
            Admit::Direct(mut direct) => {
                let written = self.stream.try_write(&frame.wire);
                let piece = [(&frame.wire, frame.published_at_micros)];
                let mut push = Push::Dropped;
                self.settle(&mut direct.out, written, piece, |_, settled| push = settled);
                push
            }
            Admit::Settled(push) => push,
        }
    }

    /// As [`Socket::push`] for a burst of one post. A longer burst is
    /// `Direct` only if it can go straight into the kernel whole: the
    /// socket is live and nothing waits, holds or dedups in its outbox.
    /// `None` otherwise, and when someone else holds the outbox right now:
    /// then [`Socket::push`] each post later. Whoever writes many sockets
    /// at once holds their outboxes together, and must never wait for one
    /// while holding others.
    pub(super) fn try_admit(&self, burst: &Burst) -> Option<Admit<'_>> {
        let out = match self.out.try_lock() {
            Ok(out) => out,
            Err(TryLockError::WouldBlock) => return None,
            Err(TryLockError::Poisoned(e)) => panic!("outbox lock: {e}"),
        };
        if let [frame] = burst.frames() {
            return Some(self.admit(out, frame));
        }
        let clear = out.ending.is_none()
            && !out.gone
            && out.held.is_none()
            && !out.may_repeat()
            && out.pending.is_empty()
            && burst.frames().len() <= self.capacity;
        clear.then_some(Admit::Direct(Direct { socket: self, out }))
    }

    /// Decides what becomes of a live post: refused, held, queued behind
    /// what waits, or (`Direct`) written into the kernel by the caller.
    fn admit<'a>(&'a self, mut out: MutexGuard<'a, Outbox>, frame: &Arc<PostFrame>) -> Admit<'a> {
        if out.ending.is_some() || out.gone {
            return Admit::Settled(Push::Dropped);
        }
        if let Some(held) = &mut out.held {
            if held.len() >= self.capacity {
                return Admit::Settled(self.overflow(&mut out));
            }
            held.push(frame.clone());
            return Admit::Settled(Push::Queued);
        }
        if out.may_repeat() && !out.first_time(frame.post, Instant::now()) {
            return Admit::Settled(Push::Dropped);
        }
        if out.posts >= self.capacity {
            return Admit::Settled(self.overflow(&mut out));
        }
        if !out.pending.is_empty() {
            return Admit::Settled(Self::queue(
                &mut out,
                frame.wire.clone(),
                frame.published_at_micros,
            ));
        }
        Admit::Direct(Direct { socket: self, out })
    }

    fn overflow(&self, out: &mut Outbox) -> Push {
        out.ending = Some(Ending::Slow);
        self.wake();
        Push::Overflowed
    }

    /// Writes `bytes` at once if nothing waits before it, else queues it.
    fn write_or_queue(&self, out: &mut Outbox, bytes: Bytes, published_at_micros: u64) -> Push {
        if !out.pending.is_empty() {
            return Self::queue(out, bytes, published_at_micros);
        }
        let written = self.stream.try_write(&bytes);
        let mut push = Push::Dropped;
        let piece = [(&bytes, published_at_micros)];
        self.settle(out, written, piece, |_, settled| push = settled);
        push
    }

    /// What a write of `pieces` (frames, each with its post's publish time,
    /// back to back) into an empty outbox came to, told to `settled` piece
    /// by piece: whatever the kernel did not take is queued for the
    /// session, in order. Takes the bytes by reference: a post's frame is
    /// shared by every socket, and counting a reference per socket written
    /// whole would make both cores fight over its counter.
    fn settle<'b>(
        &self,
        out: &mut Outbox,
        written: io::Result<usize>,
        pieces: impl IntoIterator<Item = (&'b Bytes, u64)>,
        mut settled: impl FnMut(usize, Push),
    ) {
        let taken = match written {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => {
                out.gone = true;
                self.wake();
                for (place, _) in pieces.into_iter().enumerate() {
                    settled(place, Push::Dropped);
                }
                return;
            }
        };
        let mut start = 0;
        for (place, (bytes, published_at_micros)) in pieces.into_iter().enumerate() {
            let end = start + bytes.len();
            if end <= taken {
                settled(place, Push::Written);
            } else {
                if start <= taken {
                    self.wake();
                }
                let rest = bytes.slice(taken.saturating_sub(start)..);
                settled(place, Self::queue(out, rest, published_at_micros));
            }
            start = end;
        }
    }

    fn queue(out: &mut Outbox, bytes: Bytes, published_at_micros: u64) -> Push {
        if published_at_micros > 0 {
            out.posts += 1;
        }
        out.pending.push_back(Pending {
            bytes,
            published_at_micros,
        });
        Push::Queued
    }

    /// Sends a frame of the session's own (a catch-up post, a ping, a pong
    /// or a close) after everything sent before it.
    pub fn send(&self, bytes: Bytes) {
        let mut out = self.outbox();
        if !out.gone {
            self.write_or_queue(&mut out, bytes, 0);
        }
    }

    /// Counts `post` as sent without sending it: a reconnecting client's
    /// last post, which a gap recovery may read back (its window opens
    /// before the gap) though no catch-up here sent it. `horizon` is the
    /// oldest post a recovery may still read back.
    pub fn client_has(&self, post: PostId, horizon: PostId) {
        let mut out = self.outbox();
        if out.first_time(post, Instant::now()) {
            out.remember_read_back(post, horizon);
        }
    }

    /// Sends a catch-up post, unless it went out already.
    pub fn send_post(&self, frame: &PostFrame, horizon: PostId) {
        let mut out = self.outbox();
        if !out.gone && out.first_time(frame.post, Instant::now()) {
            out.remember_read_back(frame.post, horizon);
            self.write_or_queue(&mut out, frame.wire.clone(), 0);
        }
    }

    /// As [`Socket::push`], for a post read back from PostgreSQL after a
    /// binding: once delivered, a recovery does not send it again.
    pub fn push_read_back(&self, frame: &Arc<PostFrame>, horizon: PostId) -> Push {
        let pushed = self.push(frame);
        if matches!(pushed, Push::Written | Push::Queued) {
            self.outbox().remember_read_back(frame.post, horizon);
        }
        pushed
    }

    /// Remembers the posts written from now until `until`, and drops any
    /// live post among them that comes again. True if no seam was open:
    /// this call opened it, and nothing else relies on it yet.
    pub fn open_seam(&self, until: Instant) -> bool {
        let mut out = self.outbox();
        match &mut out.seam {
            Some(seam) if !seam.is_over(Instant::now()) => {
                seam.until = seam.until.max(until);
                false
            }
            _ => {
                out.seam = Some(Box::new(Seam {
                    written: VecDeque::new(),
                    until,
                }));
                true
            }
        }
    }

    /// Closes the seam now: nothing will be read back for this socket.
    pub fn close_seam(&self) {
        self.outbox().seam = None;
    }

    /// The heartbeat's visit: a live socket that has not answered the
    /// previous ping is ended as silent, any other gets a ping. A socket
    /// still subscribing is left alone (its session reads nothing yet, so
    /// could not see a pong). Frees the seam's memory once it is over, and
    /// forgets the posts read back before `horizon`.
    pub fn heartbeat(&self, now: Instant, horizon: PostId) {
        let mut out = self.outbox();
        if out.seam.as_ref().is_some_and(|seam| seam.is_over(now)) {
            out.seam = None;
        }
        out.forget_read_back(horizon);
        if out.gone || out.ending.is_some() || out.held.is_some() {
            return;
        }
        if out.awaiting_pong {
            out.ending = Some(Ending::Silent);
            self.wake();
            return;
        }
        out.awaiting_pong = true;
        self.write_or_queue(&mut out, wire::ping(), 0);
    }

    /// The client answered a ping.
    pub fn ponged(&self) {
        self.outbox().awaiting_pong = false;
    }

    /// Has the session close the socket for `why`, unless another
    /// reason came first.
    pub fn end(&self, why: Ending) {
        self.outbox().ending.get_or_insert(why);
        self.wake();
    }

    /// Ends holding: the live posts held so far go out (those the catch-up
    /// did not send already), and the hub writes the next ones directly.
    pub fn release(&self) {
        let mut out = self.outbox();
        let now = Instant::now();
        for frame in out.held.take().unwrap_or_default() {
            if !out.gone && out.first_time(frame.post, now) {
                out.posts += 1;
                out.pending.push_back(Pending {
                    bytes: frame.wire.clone(),
                    published_at_micros: frame.published_at_micros,
                });
            }
        }
    }

    /// Writes as much of the outbox as the kernel takes, coalescing queued
    /// frames into one `writev`. `on_post` gets the publish time of each
    /// post written completely.
    pub fn flush(&self, mut on_post: impl FnMut(u64)) -> Flushed {
        let mut out = self.outbox();
        loop {
            if out.gone {
                return Flushed::Gone;
            }
            if out.pending.is_empty() {
                return Flushed::Done;
            }
            let attempt = {
                let slices: Vec<IoSlice<'_>> = out
                    .pending
                    .iter()
                    .take(COALESCE)
                    .map(|p| IoSlice::new(&p.bytes))
                    .collect();
                self.stream.try_write_vectored(&slices)
            };
            let mut written = match attempt {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Flushed::Blocked,
                Err(_) => {
                    out.gone = true;
                    return Flushed::Gone;
                }
            };
            while written > 0 {
                let first = out.pending.front_mut().expect("written bytes were pending");
                if written < first.bytes.len() {
                    first.bytes.advance(written);
                    break;
                }
                written -= first.bytes.len();
                let done = out.pending.pop_front().expect("checked above");
                if done.published_at_micros > 0 {
                    out.posts -= 1;
                    on_post(done.published_at_micros);
                }
            }
        }
    }

    /// Stops every delivery to this socket: it is closing.
    pub fn shut(&self) {
        self.outbox().gone = true;
    }

    /// Why the socket is to be closed, if something outside its session
    /// decided it should be.
    pub fn ending(&self) -> Option<Ending> {
        self.outbox().ending
    }

    /// Ready once the outbox needs the session (at once if it did since
    /// the last ready: the flag keeps it). Only the session polls this.
    pub fn poll_needs_writing(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        self.session.register(cx.waker());
        if self.woken.swap(false, Ordering::AcqRel) {
            return Poll::Ready(());
        }
        Poll::Pending
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::Release);
        self.session.wake();
    }

    pub(super) fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

#[cfg(test)]
pub(super) mod tests;
