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
//! authors subscribed meanwhile. Whoever received the [`Binding`] hands it
//! to the hub's catch-up, which reads their posts of that window back from
//! PostgreSQL once the binding is in place.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use indexmap::IndexMap;

use super::routing::Routing;
use super::socket::Socket;
use crate::broker::{Applied, Broker};
use crate::domain::UserId;

/// The local sockets subscribed to one author. Keyed by the socket's
/// address, so a subscribe or an unsubscribe is O(1) however popular the
/// author (an `IndexMap` removes by swapping with the last entry) and
/// iterating stays a walk over contiguous memory.
#[derive(Default)]
pub struct Subscribers(RwLock<IndexMap<usize, Arc<Socket>>>);

impl Subscribers {
    pub fn for_each(&self, mut visit: impl FnMut(&Arc<Socket>)) {
        for socket in self.0.read().expect("subscribers lock").values() {
            visit(socket);
        }
    }

    fn insert(&self, socket: &Arc<Socket>) {
        self.0
            .write()
            .expect("subscribers lock")
            .insert(key(socket), socket.clone());
    }

    /// Removes `socket`; true if none are left.
    fn remove(&self, socket: &Arc<Socket>) -> bool {
        let mut sockets = self.0.write().expect("subscribers lock");
        sockets.swap_remove(&key(socket));
        sockets.is_empty()
    }
}

fn key(socket: &Arc<Socket>) -> usize {
    Arc::as_ptr(socket) as usize
}

pub struct Registry {
    /// Followed author -> local sockets subscribed to them.
    by_author: DashMap<UserId, Arc<Subscribers>>,
    /// User -> their open sockets (several tabs), for follow changes.
    by_user: DashMap<UserId, Vec<Arc<Socket>>>,
    interest: Interest,
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
            },
        }
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
    /// whichever order they arrive. The socket must have every post written
    /// from `since_ms` (Unix ms) on; `None` when its session reads what it
    /// missed itself once its bindings are in place. Returns the new broker
    /// bindings, each for the hub's catch-up.
    pub fn subscribe(
        &self,
        socket: &Arc<Socket>,
        snapshot: &[UserId],
        since_ms: Option<u64>,
    ) -> Vec<Binding> {
        let mut follows = socket.follows.lock().expect("follows lock");
        let changed = follows.changed_while_subscribing.take().unwrap_or_default();
        snapshot
            .iter()
            .filter(|author| !changed.contains_key(author))
            .filter_map(|author| self.add(&mut follows.authors, socket, *author, since_ms))
            .collect()
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
            self.add(&mut state.authors, socket, author, Some(since_ms))
        } else {
            if state.authors.remove(&author) {
                self.remove_subscriber(socket, author);
            }
            None
        }
    }

    /// Subscribes `socket` to `author`; `authors` is its locked follows.
    fn add(
        &self,
        authors: &mut HashSet<UserId>,
        socket: &Arc<Socket>,
        author: UserId,
        since_ms: Option<u64>,
    ) -> Option<Binding> {
        if !authors.insert(author) {
            return None;
        }
        match self.by_author.entry(author) {
            // A binding still pending for this author lists it already, with
            // an earlier `since_ms`.
            Entry::Occupied(entry) => {
                entry.get().insert(socket);
                None
            }
            Entry::Vacant(entry) => {
                let binding = self.interest.acquire(author, since_ms);
                entry.insert(Arc::default()).insert(socket);
                binding
            }
        }
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

    pub fn subscribers(&self, author: UserId) -> Option<Arc<Subscribers>> {
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

/// A broker binding a subscription asked for. Until it is in place, the
/// posts of the authors subscribed meanwhile are routed elsewhere: whoever
/// receives one passes it to the hub's catch-up, which reads them back.
#[must_use = "a binding's catch-up must run, or posts written while it was pending are lost"]
pub struct Binding {
    key: String,
    /// Tells this binding from a later one of the same key, after the key
    /// was released and acquired again.
    generation: u64,
    applied: Applied,
}

/// The authors subscribed while a binding was pending, and the earliest
/// moment (Unix ms) from which one of their subscribers must have every post
/// (`None`: each reads what it missed itself).
pub struct Pending {
    pub since_ms: Option<u64>,
    pub authors: Vec<UserId>,
}

/// One routing key: how many of the subscribed authors it carries, and
/// while its binding is on its way, who subscribed meanwhile.
struct Route {
    authors: usize,
    generation: u64,
    pending: Option<Pending>,
}

/// Reference counts of routing keys, binding a key on its first interested
/// author and unbinding it after the last. The broker call is made while the
/// key's shard is locked, so binds and unbinds reach the broker in the order
/// the counts changed.
struct Interest {
    routes: DashMap<String, Route>,
    generations: AtomicU64,
    broker: Broker,
    routing: Routing,
}

impl Interest {
    fn acquire(&self, author: UserId, since_ms: Option<u64>) -> Option<Binding> {
        let key = self.routing.key(author);
        let mut route = self.routes.entry(key.clone()).or_insert(Route {
            authors: 0,
            generation: 0,
            pending: None,
        });
        route.authors += 1;
        if route.authors > 1 {
            if let Some(pending) = &mut route.pending {
                pending.since_ms = match (pending.since_ms, since_ms) {
                    (Some(earliest), Some(since_ms)) => Some(earliest.min(since_ms)),
                    (earliest, since_ms) => earliest.or(since_ms),
                };
                pending.authors.push(author);
            }
            return None;
        }
        let applied = self.broker.bind(&key);
        // The in-process broker binds at once: nothing can be missed.
        if applied.is_done() {
            return None;
        }
        route.generation = self.generations.fetch_add(1, Ordering::Relaxed);
        route.pending = Some(Pending {
            since_ms,
            authors: vec![author],
        });
        Some(Binding {
            key,
            generation: route.generation,
            applied,
        })
    }

    fn release(&self, author: UserId) {
        let key = self.routing.key(author);
        if let Entry::Occupied(mut entry) = self.routes.entry(key) {
            entry.get_mut().authors -= 1;
            if entry.get().authors == 0 {
                // Dropping the `Applied`: nothing waits for an unbind.
                drop(self.broker.unbind(entry.key()));
                entry.remove();
            }
        }
    }
}
