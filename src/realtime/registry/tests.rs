//! The registry against plain models of it.

/// Which authors a fresh socket must read back itself.
mod uncovered {
    use tokio::sync::mpsc;

    use super::super::*;
    use crate::broker::{BrokerKind, Incoming, MemoryBus, Work};
    use crate::realtime::codec::PostFrame;
    use crate::realtime::socket::Push;

    fn socket(listener: &std::net::TcpListener) -> (Arc<Socket>, std::net::TcpStream) {
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let server = tokio::net::TcpStream::from_std(server).unwrap();
        (Arc::new(Socket::new(UserId::new_v7(), 16, server)), client)
    }

    /// A registry on the in-process broker (its receiving ends kept open),
    /// a listener to make sockets with, and a fresh socket's start.
    struct Fixture {
        registry: Registry,
        listener: std::net::TcpListener,
        start: Start,
        _incoming: mpsc::Receiver<Incoming>,
        _work: mpsc::Receiver<Work>,
    }

    impl Fixture {
        fn new() -> Self {
            let (sink, _incoming) = mpsc::channel(16);
            let (work, _work) = mpsc::channel(16);
            let broker = Broker::start(BrokerKind::Memory(MemoryBus::new()), sink, work);
            Self {
                registry: Registry::new(broker, "bucket:4".parse().unwrap()),
                listener: std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
                start: Start::Mark(Arc::new(CommitMark::new(0, 1, 1, &[]))),
                _incoming,
                _work,
            }
        }
    }

    #[tokio::test]
    async fn a_post_or_a_bind_after_the_clock_read_is_read_back() {
        let Fixture {
            registry,
            listener,
            start,
            _incoming,
            _work,
        } = Fixture::new();
        let author = UserId::new_v7();

        // The first subscriber's key is bound after its clock read: what the
        // broker dropped before that went to nobody, and the binding's
        // catch-up reads it back, even the in-process broker's.
        let (first, _c1) = socket(&listener);
        let clock = registry.clock();
        let subscribed = registry.subscribe(&first, &[author], Some(&start), clock);
        assert!(subscribed.uncovered.is_empty());
        let [binding] = <[Binding; 1]>::try_from(subscribed.bindings).ok().unwrap();
        let pending = registry.bound(binding).await.unwrap();
        assert_eq!(pending.authors, [author]);
        assert!(Arc::ptr_eq(&pending.recipients[0].0, &first));

        // Bound before, nothing passed meanwhile: nothing to read back.
        let (second, _c2) = socket(&listener);
        let subscribed = registry.subscribe(&second, &[author], Some(&start), registry.clock());
        assert!(subscribed.uncovered.is_empty());

        // The hub looked up a post of the author between the clock read and
        // the registration: it may have passed the socket.
        let (third, _c3) = socket(&listener);
        let clock = registry.clock();
        drop(registry.subscribers(author));
        let subscribed = registry.subscribe(&third, &[author], Some(&start), clock);
        assert_eq!(subscribed.uncovered, [author]);

        // A session that reads what it missed itself is never told.
        let (fourth, _c4) = socket(&listener);
        let clock = registry.clock();
        drop(registry.subscribers(author));
        assert!(
            registry
                .subscribe(&fourth, &[author], None, clock)
                .uncovered
                .is_empty()
        );
    }

    /// With every key pinned at start, a subscription never binds and,
    /// once the pins are in place, reads nothing back, even after the last
    /// follower of a key left (an on-demand key would be unbound then).
    #[tokio::test]
    async fn pinned_keys_are_never_bound_again_nor_read_back() {
        let Fixture {
            registry,
            listener,
            start,
            _incoming,
            _work,
        } = Fixture::new();
        let pins = registry.pin_every_key().unwrap();
        assert_eq!(pins.len(), 4, "one per bucket");
        for pin in pins {
            let pending = registry.bound(pin).await.unwrap();
            assert!(pending.authors.is_empty() && pending.recipients.is_empty());
        }
        assert!(registry.pin_every_key().unwrap().is_empty(), "pinned once");

        let author = UserId::new_v7();
        for _ in 0..2 {
            let (socket, _client) = socket(&listener);
            let subscribed = registry.subscribe(&socket, &[author], Some(&start), registry.clock());
            assert!(subscribed.bindings.is_empty());
            assert!(subscribed.uncovered.is_empty());
            registry.detach(&socket);
        }
    }

    /// A follow change can reach a socket before its snapshot does, join a
    /// pending binding and open the seam for that binding's catch-up. The
    /// snapshot, with nothing of its own to read back, must leave that seam
    /// open: closed, a post the catch-up sent would go out again when a
    /// broker gap's recovery reads it back.
    #[tokio::test]
    async fn a_snapshot_closes_only_the_seam_it_opened() {
        let Fixture {
            registry,
            listener,
            start,
            _incoming,
            _work,
        } = Fixture::new();
        let post = || {
            Arc::new(PostFrame {
                author: UserId::new_v7(),
                post: crate::domain::PostId::new_v7(),
                published_at_micros: 1,
                wire: crate::realtime::wire::text(b"post"),
            })
        };

        let (caught_up, _c1) = socket(&listener);
        caught_up.release();
        assert!(caught_up.open_seam(Instant::now() + SEAM_WINDOW));
        let sent = post();
        assert_ne!(caught_up.push(&sent), Push::Dropped);
        let subscribed = registry.subscribe(&caught_up, &[], Some(&start), registry.clock());
        assert!(subscribed.bindings.is_empty() && subscribed.uncovered.is_empty());
        assert_eq!(
            caught_up.push(&sent),
            Push::Dropped,
            "the seam is still open"
        );

        let (plain, _c2) = socket(&listener);
        plain.release();
        registry.subscribe(&plain, &[], Some(&start), registry.clock());
        let once = post();
        assert_ne!(plain.push(&once), Push::Dropped);
        assert_ne!(plain.push(&once), Push::Dropped, "its own seam is closed");
    }
}

/// Sequences of attaches, snapshots, follow changes and detaches against a
/// plain model of who is subscribed to whom.
mod properties {
    use std::collections::{HashMap, HashSet};

    use proptest::prelude::*;
    use tokio::sync::mpsc;

    use super::super::*;
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
                        let subscribed = registry.subscribe(&sockets[s], &ids(&authors), None, 0);
                        drop(subscribed.bindings);
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
                        for socket in &subscribers.to_vec() {
                            actual.insert(sockets.iter().position(|s| Arc::ptr_eq(s, socket)).unwrap());
                        }
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
