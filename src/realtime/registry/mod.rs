//! Who on this instance wants whose posts.
//!
//! Lock order, always: a socket's `follows` mutex, then a `by_author` shard,
//! then an author's `Subscribers` lock, then an `Interest` shard. No lock is
//! held across an `.await`. The hub clones an author's `Arc<Subscribers>`
//! out of the map (releasing the shard) and pushes to each socket's queue
//! under that author's read lock: pushing never blocks, so a slow client
//! holds nobody up.
//!
//! A connecting socket's subscriptions come from two sources that race: the
//! session's read of the user's follows from PostgreSQL, and the follow
//! changes the hub applies as they arrive. [`Registry::subscribe`] and
//! [`Registry::change`] commute: a change that reached the socket before its
//! snapshot was applied is never undone by that snapshot.
//!
//! Nobody waits for the broker: a subscription takes effect locally at
//! once, and a routing key whose binding is still on its way records the
//! authors subscribed meanwhile and the sockets that joined it, each with
//! where its stream starts ([`Start`]). Whoever received the [`Binding`]
//! hands it to the catch-up ([`super::catch_up`]), which reads their posts
//! of that window back from PostgreSQL once the binding is in place.
//!
//! The seam (the ids a socket wrote recently, so a post that comes both
//! read back and live goes out once) is decided here and nowhere else: a
//! subscription opens it before anything could be read back for it.
//!
//! A fresh socket is exact by PostgreSQL's commit order, not by time: it
//! gets a post iff the post committed after the snapshot its follows were
//! read in ([`CommitMark`]). Between that read and its registration here,
//! a post may have reached the hub without it, or been routed elsewhere
//! because its key's binding was not in place. [`Registry::subscribe`]
//! tells which authors that may have happened for, from the registry's
//! clock: the hub ticks it for every post it looks subscribers up for, and
//! a binding ticks it when it is in place.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

mod interest;

use interest::{Added, Interest};
pub use interest::{Binding, Pending};

use super::routing::Routing;
use super::socket::Socket;
use crate::broker::Broker;
use crate::domain::UserId;
use crate::store::CommitMark;

/// How long after a subscription a live copy of a post read back for it
/// may still arrive (the broker delivers a post some time after it is
/// committed).
pub(super) const SEAM_WINDOW: Duration = Duration::from_secs(30);
/// Slots of the "a post of this author passed" clock readings; authors
/// share a slot by their id's low bits, which only costs a needless read.
const SEEN_SLOTS: usize = 1024;

/// The local sockets subscribed to one author: a plain list of pointers,
/// 8 bytes a subscription, because most authors have a few subscribers
/// and every socket holds one entry per author its user follows. An
/// unsubscribe scans for the socket and swaps the last entry in: closing
/// all 10,000 subscribers of one author cost 20-26 µs of server CPU per
/// close, against 28-30 µs with an indexed map (BENCHMARKS.md §19).
#[derive(Default)]
pub struct Subscribers(RwLock<Vec<Arc<Socket>>>);

impl Subscribers {
    /// The subscribers right now, for writing a post without the lock.
    pub fn to_vec(&self) -> Vec<Arc<Socket>> {
        self.0.read().expect("subscribers lock").clone()
    }

    /// Adds `socket`, which the caller knows is not among them.
    fn insert(&self, socket: &Arc<Socket>) {
        self.0
            .write()
            .expect("subscribers lock")
            .push(socket.clone());
    }

    /// Removes `socket`; true if none are left.
    fn remove(&self, socket: &Arc<Socket>) -> bool {
        let mut sockets = self.0.write().expect("subscribers lock");
        if let Some(at) = sockets.iter().position(|s| Arc::ptr_eq(s, socket)) {
            sockets.swap_remove(at);
        }
        if sockets.is_empty() {
            // Freed with the entry by the caller.
            return true;
        }
        let left = sockets.len();
        if left * 4 <= sockets.capacity() {
            sockets.shrink_to(left * 2);
        }
        false
    }
}

pub struct Registry {
    /// Followed author -> local sockets subscribed to them.
    by_author: DashMap<UserId, Arc<Subscribers>>,
    /// User -> their open sockets (several tabs), for follow changes.
    by_user: DashMap<UserId, Vec<Arc<Socket>>>,
    interest: Interest,
    /// Per author slot, the clock reading when the hub last looked up a
    /// post's subscribers.
    seen: Box<[AtomicU64]>,
}

/// Where a socket's stream of posts starts, for a catch-up to read from.
#[derive(Clone)]
pub enum Start {
    /// A fresh socket: every post committed after this mark.
    Mark(Arc<CommitMark>),
    /// A follow made at this Unix ms (the follow's own time bounds it).
    Since(u64),
}

/// What [`Registry::subscribe`] did.
pub struct Subscribed {
    /// New broker bindings: each needs its catch-up run.
    pub bindings: Vec<Binding>,
    /// Authors whose posts committed after the socket's mark may have
    /// passed before it was registered (only for a [`Start::Mark`]): the
    /// session reads them back itself.
    pub uncovered: Vec<UserId>,
}

impl Registry {
    pub fn new(broker: Broker, routing: Routing) -> Self {
        Self {
            by_author: DashMap::new(),
            by_user: DashMap::new(),
            interest: Interest {
                routes: DashMap::new(),
                generations: AtomicU64::new(0),
                broker,
                routing,
                clock: AtomicU64::new(0),
            },
            seen: (0..SEEN_SLOTS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    /// The registry's clock: read it before the socket's follows are read,
    /// and pass the reading to [`Registry::subscribe`].
    pub fn clock(&self) -> u64 {
        self.interest.clock.load(Ordering::SeqCst)
    }

    fn seen_slot(&self, author: UserId) -> &AtomicU64 {
        &self.seen[(author.as_uuid().as_u128() as usize) % SEEN_SLOTS]
    }

    /// Makes `socket` findable by its user, so follow changes reach it.
    pub fn attach(&self, socket: &Arc<Socket>) {
        self.by_user
            .entry(socket.user)
            .or_default()
            .push(socket.clone());
    }

    /// Applies the user's follows as the session read them (`snapshot`),
    /// except for the authors a follow change already reached this socket
    /// about since it was attached: such a change may be newer than the
    /// snapshot, and one older than it is in the snapshot anyway. So a
    /// snapshot and the changes around it give the same subscriptions in
    /// whichever order they arrive.
    ///
    /// `start` is where a fresh socket's stream starts (`None`: the session
    /// reads what it missed itself, in order, after awaiting the bindings);
    /// `clock` is [`Registry::clock`] read before the snapshot. Opens the
    /// socket's seam, and closes it again when nothing will be read back,
    /// unless it was open already: a follow change that reached the socket
    /// first may have a catch-up on its way. The follows lock is held
    /// throughout, so no change opens the seam in between.
    pub fn subscribe(
        &self,
        socket: &Arc<Socket>,
        snapshot: &[UserId],
        start: Option<&Start>,
        clock: u64,
    ) -> Subscribed {
        let mut follows = socket.follows.lock().expect("follows lock");
        let opened = socket.open_seam(Instant::now() + SEAM_WINDOW);
        let changed = follows.changed_while_subscribing.take().unwrap_or_default();
        let mut subscribed = Subscribed {
            bindings: Vec::new(),
            uncovered: Vec::new(),
        };
        let mut joined = false;
        let mut live = Vec::new();
        for author in snapshot
            .iter()
            .filter(|author| !changed.contains_key(author))
        {
            match self.add(&mut follows.authors, socket, *author, start) {
                Added::Already => {}
                Added::Joined(binding) => {
                    joined = true;
                    subscribed.bindings.extend(binding);
                }
                Added::Live => live.push(*author),
            }
        }
        if let Some(Start::Mark(_)) = start {
            // The socket is registered for every author now: whatever the
            // hub looks up or the broker routes from here on reaches it.
            subscribed.uncovered = live
                .into_iter()
                .filter(|author| {
                    self.seen_slot(*author).load(Ordering::SeqCst) >= clock
                        || self.interest.bound_since(*author, clock)
                })
                .collect();
            if opened && !joined && subscribed.uncovered.is_empty() {
                socket.close_seam();
            }
        }
        drop(follows);
        subscribed
    }

    /// A follow (`follows`) or unfollow of `author` by the socket's user,
    /// made at `since_ms` (Unix ms). Returns the new broker binding, for the
    /// hub's catch-up, when this made the instance newly interested.
    pub fn change(
        &self,
        socket: &Arc<Socket>,
        author: UserId,
        follows: bool,
        since_ms: u64,
    ) -> Option<Binding> {
        let mut state = socket.follows.lock().expect("follows lock");
        if let Some(changed) = &mut state.changed_while_subscribing {
            changed.insert(author, follows);
        }
        if follows {
            match self.add(
                &mut state.authors,
                socket,
                author,
                Some(&Start::Since(since_ms)),
            ) {
                Added::Joined(binding) => binding,
                Added::Already | Added::Live => None,
            }
        } else {
            if state.authors.remove(&author) {
                self.remove_subscriber(socket, author);
            }
            None
        }
    }

    /// Subscribes `socket` to `author`; `authors` is its locked follows.
    /// A socket that joins a pending binding with a `start` is one of its
    /// catch-up's recipients, its seam open.
    fn add(
        &self,
        authors: &mut HashSet<UserId>,
        socket: &Arc<Socket>,
        author: UserId,
        start: Option<&Start>,
    ) -> Added {
        if !authors.insert(author) {
            return Added::Already;
        }
        let joiner = start.map(|start| (socket, start));
        let added = match self.by_author.entry(author) {
            Entry::Occupied(entry) => {
                entry.get().insert(socket);
                self.interest.join(author, joiner)
            }
            Entry::Vacant(entry) => {
                let added = self.interest.acquire(author, joiner);
                entry.insert(Arc::default()).insert(socket);
                added
            }
        };
        if start.is_some() && matches!(added, Added::Joined(_)) {
            socket.open_seam(Instant::now() + SEAM_WINDOW);
        }
        added
    }

    /// Binds every key authors are routed by, for as long as the instance
    /// runs, so that no socket ever waits for a binding: the binds of a
    /// thousand buckets happen before the first sockets rather than among
    /// a connect storm's. `None` for per-author routing, which has no
    /// fixed set of keys. Returns the bindings, for their catch-ups (a
    /// socket may subscribe before they are in place).
    pub fn pin_every_key(&self) -> Option<Vec<Binding>> {
        let keys = self.interest.routing.every_key()?;
        Some(
            keys.into_iter()
                .filter_map(|key| self.interest.pin(key))
                .collect(),
        )
    }

    /// Waits until `binding` is in place, then returns who subscribed while
    /// it was pending: from then on the broker routes their posts here.
    /// `None` when the key was released meanwhile.
    pub async fn bound(&self, binding: Binding) -> Option<Pending> {
        let Binding {
            key,
            generation,
            applied,
        } = binding;
        applied.await;
        let mut route = self.interest.routes.get_mut(&key)?;
        if route.generation != generation {
            return None;
        }
        route.bound_at = self.interest.clock.fetch_add(1, Ordering::SeqCst);
        route.pending.take()
    }

    /// Unsubscribes `socket` from everything and forgets it.
    pub fn detach(&self, socket: &Arc<Socket>) {
        let mut follows = socket.follows.lock().expect("follows lock");
        for author in follows.authors.drain() {
            self.remove_subscriber(socket, author);
        }
        drop(follows);
        if let Entry::Occupied(mut entry) = self.by_user.entry(socket.user) {
            entry.get_mut().retain(|s| !Arc::ptr_eq(s, socket));
            if entry.get().is_empty() {
                entry.remove();
            }
        }
    }

    /// The local subscribers of `author`, for a post of theirs: ticks the
    /// clock first, so a socket registering meanwhile knows it may have
    /// missed the post.
    pub fn subscribers(&self, author: UserId) -> Option<Arc<Subscribers>> {
        let tick = self.interest.clock.fetch_add(1, Ordering::SeqCst);
        self.seen_slot(author).store(tick, Ordering::SeqCst);
        self.by_author
            .get(&author)
            .map(|entry| entry.value().clone())
    }

    pub fn sockets_of(&self, user: UserId) -> Vec<Arc<Socket>> {
        self.by_user
            .get(&user)
            .map(|entry| entry.value().clone())
            .unwrap_or_default()
    }

    /// The open sockets of the users `pick` chooses, collected first so
    /// that no shard stays locked while the caller writes to them.
    pub fn sockets_where(&self, pick: impl Fn(UserId) -> bool) -> Vec<Arc<Socket>> {
        self.by_user
            .iter()
            .filter(|entry| pick(*entry.key()))
            .flat_map(|entry| entry.value().clone())
            .collect()
    }

    /// Users with at least one open socket here.
    pub fn users(&self) -> Vec<UserId> {
        self.by_user.iter().map(|entry| *entry.key()).collect()
    }

    /// Authors at least one socket here is subscribed to.
    pub fn authors(&self) -> Vec<UserId> {
        self.by_author.iter().map(|entry| *entry.key()).collect()
    }

    /// Makes every socket of `user` follow exactly `authors`, as after the
    /// follow changes it may have missed since `since_ms`. Each difference is
    /// applied as a follow change, so a socket still subscribing keeps it
    /// over its older snapshot, and the live changes that follow override it
    /// in turn. Returns the new broker bindings, for the hub's catch-up.
    pub fn follow_exactly(
        &self,
        user: UserId,
        authors: &HashSet<UserId>,
        since_ms: u64,
    ) -> Vec<Binding> {
        let mut bindings = Vec::new();
        for socket in self.sockets_of(user) {
            let stale: Vec<UserId> = socket
                .follows
                .lock()
                .expect("follows lock")
                .authors
                .difference(authors)
                .copied()
                .collect();
            for author in stale {
                self.change(&socket, author, false, since_ms);
            }
            bindings.extend(
                authors
                    .iter()
                    .filter_map(|author| self.change(&socket, *author, true, since_ms)),
            );
        }
        bindings
    }

    fn remove_subscriber(&self, socket: &Arc<Socket>, author: UserId) {
        if let Entry::Occupied(entry) = self.by_author.entry(author)
            && entry.get().remove(socket)
        {
            entry.remove();
            self.interest.release(author);
        }
    }
}

#[cfg(test)]
mod tests;
