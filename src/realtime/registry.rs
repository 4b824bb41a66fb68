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
    /// whichever order they arrive. Returns the new broker bindings: the
    /// session waits for them, so they need no catch-up.
    pub fn subscribe(&self, socket: &Arc<Socket>, snapshot: &[UserId]) -> Vec<Binding> {
        let mut follows = socket.follows.lock().expect("follows lock");
        let changed = follows.changed_while_subscribing.take().unwrap_or_default();
        snapshot
            .iter()
            .filter(|author| !changed.contains_key(author))
            .filter_map(|author| self.add(&mut follows.authors, socket, *author, None))
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

/// Sequences of attaches, snapshots, follow changes and detaches against a
/// plain model of who is subscribed to whom.
#[cfg(test)]
mod properties {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;
    use tokio::sync::mpsc;

    use super::*;
    use crate::broker::{BrokerKind, MemoryBus};

    /// Sockets 0 and 1 are tabs of user 0, 2 and 3 of user 1.
    const SOCKETS: usize = 4;
    const AUTHORS: u8 = 6;

    #[derive(Debug, Clone)]
    enum Op {
        Attach(usize),
        /// The session's snapshot of the user's follows.
        Subscribe(usize, Vec<u8>),
        /// A follow change of a user, applied to each of their sockets.
        Change(usize, u8, bool),
        FollowExactly(usize, Vec<u8>),
        Detach(usize),
    }

    fn authors() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(0..AUTHORS, 0..4)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            1 => (0..SOCKETS).prop_map(Op::Attach),
            1 => (0..SOCKETS, authors()).prop_map(|(s, a)| Op::Subscribe(s, a)),
            3 => (0..2usize, 0..AUTHORS, any::<bool>()).prop_map(|(u, a, f)| Op::Change(u, a, f)),
            1 => (0..2usize, authors()).prop_map(|(u, a)| Op::FollowExactly(u, a)),
            1 => (0..SOCKETS).prop_map(Op::Detach),
        ]
    }

    #[derive(Default, Clone)]
    struct ModelSocket {
        attached: bool,
        gone: bool,
        /// `None` once the snapshot was applied.
        changed: Option<HashMap<u8, bool>>,
        authors: HashSet<u8>,
    }

    impl ModelSocket {
        fn change(&mut self, author: u8, follows: bool) {
            if let Some(changed) = &mut self.changed {
                changed.insert(author, follows);
            }
            if follows {
                self.authors.insert(author);
            } else {
                self.authors.remove(&author);
            }
        }
    }

    fn user_of(socket: usize) -> usize {
        socket / 2
    }

    proptest! {
        #[test]
        fn subscriptions_follow_the_model(ops in proptest::collection::vec(op(), 1..40)) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _entered = runtime.enter();
            let (sink, _incoming) = mpsc::channel(16);
            let (work, _work) = mpsc::channel(16);
            let broker = Broker::start(BrokerKind::Memory(MemoryBus::new()), sink, work);
            let registry = Registry::new(broker, "bucket:2".parse().unwrap());
            let users = [UserId::new_v7(), UserId::new_v7()];
            let author_ids: Vec<UserId> = (0..AUTHORS).map(|_| UserId::new_v7()).collect();
            // Each socket needs a connection; the registry never writes to it.
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let (sockets, _clients): (Vec<Arc<Socket>>, Vec<std::net::TcpStream>) = (0..SOCKETS)
                .map(|s| {
                    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
                    let (server, _) = listener.accept().unwrap();
                    server.set_nonblocking(true).unwrap();
                    let server = tokio::net::TcpStream::from_std(server).unwrap();
                    (Arc::new(Socket::new(users[user_of(s)], 16, server)), client)
                })
                .unzip();
            let mut model = vec![
                ModelSocket { changed: Some(HashMap::new()), ..ModelSocket::default() };
                SOCKETS
            ];
            let ids = |authors: &[u8]| -> Vec<UserId> {
                authors.iter().map(|a| author_ids[usize::from(*a)]).collect()
            };

            for op in ops {
                match op {
                    // A socket is attached once and never comes back after a detach.
                    Op::Attach(s) if !model[s].attached && !model[s].gone => {
                        registry.attach(&sockets[s]);
                        model[s].attached = true;
                    }
                    Op::Subscribe(s, authors) if model[s].attached => {
                        registry.subscribe(&sockets[s], &ids(&authors));
                        let changed = model[s].changed.take().unwrap_or_default();
                        for author in authors {
                            if !changed.contains_key(&author) {
                                model[s].authors.insert(author);
                            }
                        }
                    }
                    Op::Change(user, author, follows) => {
                        for socket in registry.sockets_of(users[user]) {
                            registry.change(&socket, author_ids[usize::from(author)], follows, 0);
                        }
                        for m in model.iter_mut().skip(user * 2).take(2).filter(|m| m.attached) {
                            m.change(author, follows);
                        }
                    }
                    Op::FollowExactly(user, authors) => {
                        let wanted: HashSet<UserId> = ids(&authors).into_iter().collect();
                        registry.follow_exactly(users[user], &wanted, 0);
                        let wanted: HashSet<u8> = authors.into_iter().collect();
                        for m in model.iter_mut().skip(user * 2).take(2).filter(|m| m.attached) {
                            let stale: Vec<u8> = m.authors.difference(&wanted).copied().collect();
                            for author in stale {
                                m.change(author, false);
                            }
                            for author in &wanted {
                                m.change(*author, true);
                            }
                        }
                    }
                    Op::Detach(s) if model[s].attached => {
                        registry.detach(&sockets[s]);
                        model[s].attached = false;
                        model[s].gone = true;
                        model[s].authors.clear();
                    }
                    _ => {}
                }

                for (a, author) in author_ids.iter().enumerate() {
                    let expected: HashSet<usize> = (0..SOCKETS)
                        .filter(|s| model[*s].attached && model[*s].authors.contains(&(a as u8)))
                        .collect();
                    let mut actual = HashSet::new();
                    if let Some(subscribers) = registry.subscribers(*author) {
                        subscribers.for_each(|socket| {
                            actual.insert(sockets.iter().position(|s| Arc::ptr_eq(s, socket)).unwrap());
                        });
                        prop_assert!(!actual.is_empty(), "an empty entry for author {a} stays");
                    }
                    prop_assert_eq!(&actual, &expected, "subscribers of author {}", a);
                }
                let listed: HashSet<UserId> = registry.authors().into_iter().collect();
                let expected: HashSet<UserId> = model
                    .iter()
                    .filter(|m| m.attached)
                    .flat_map(|m| m.authors.iter().map(|a| author_ids[usize::from(*a)]))
                    .collect();
                prop_assert_eq!(listed, expected);
                for (u, user) in users.iter().enumerate() {
                    let open = registry.sockets_of(*user).len();
                    let expected = model.iter().skip(u * 2).take(2).filter(|m| m.attached).count();
                    prop_assert_eq!(open, expected, "sockets of user {}", u);
                }
            }
        }
    }
}
