//! Routing keys this instance is bound to, counted by interested author,
//! and while a key's binding is on its way, who waits for it. Never awaits
//! while a key's shard is locked.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

use super::Start;
use crate::broker::{Applied, Broker};
use crate::domain::UserId;
use crate::realtime::routing::Routing;
use crate::realtime::socket::Socket;

/// A broker binding a subscription asked for. Until it is in place, the
/// posts of the authors subscribed meanwhile are routed elsewhere: whoever
/// receives one passes it to the catch-up, which reads them back.
#[must_use = "a binding's catch-up must run, or posts written while it was pending are lost"]
pub struct Binding {
    pub(super) key: String,
    /// Tells this binding from a later one of the same key, after the key
    /// was released and acquired again.
    pub(super) generation: u64,
    pub(super) applied: Applied,
}

/// The authors subscribed while a binding was pending, and the sockets that
/// joined it with where each one's stream starts. A socket may be listed
/// more than once.
pub struct Pending {
    pub authors: Vec<UserId>,
    pub recipients: Vec<(Arc<Socket>, Start)>,
}

/// How a subscription to one author came about.
pub(super) enum Added {
    /// The socket was subscribed already.
    Already,
    /// The author's key is still being bound; the socket is among the
    /// recipients of its catch-up (if it has a start). The binding, when
    /// this subscription asked for it.
    Joined(Option<Binding>),
    /// The key is bound (or the broker needs no binding).
    Live,
}

/// One routing key: how many of the subscribed authors it carries (and
/// one for a pin), and while its binding is on its way, who subscribed
/// meanwhile.
pub(super) struct Route {
    authors: usize,
    pub(super) generation: u64,
    /// The clock reading when the binding was in place.
    pub(super) bound_at: u64,
    pub(super) pending: Option<Pending>,
}

/// Reference counts of routing keys, binding a key on its first interested
/// author and unbinding it after the last. The broker call is made while the
/// key's shard is locked, so binds and unbinds reach the broker in the order
/// the counts changed.
pub(super) struct Interest {
    pub(super) routes: DashMap<String, Route>,
    pub(super) generations: AtomicU64,
    pub(super) broker: Broker,
    pub(super) routing: Routing,
    pub(super) clock: AtomicU64,
}

impl Interest {
    pub(super) fn acquire(&self, author: UserId, joiner: Option<(&Arc<Socket>, &Start)>) -> Added {
        self.hold(self.routing.key(author), Some(author), joiner)
    }

    /// Keeps `key` bound for as long as the instance runs: the pin counts as
    /// one more interested author, so the key is never unbound. The binding,
    /// when this bound it.
    pub(super) fn pin(&self, key: String) -> Option<Binding> {
        match self.hold(key, None, None) {
            Added::Joined(binding) => binding,
            Added::Already | Added::Live => None,
        }
    }

    /// Counts one more interest in `key`: a subscribed `author`, or a pin.
    fn hold(
        &self,
        key: String,
        author: Option<UserId>,
        joiner: Option<(&Arc<Socket>, &Start)>,
    ) -> Added {
        let mut route = self.routes.entry(key.clone()).or_insert(Route {
            authors: 0,
            generation: 0,
            bound_at: 0,
            pending: None,
        });
        route.authors += 1;
        if route.authors > 1 {
            return match &mut route.pending {
                Some(pending) => {
                    pending.authors.extend(author);
                    pending.recipients.extend(recipient(joiner));
                    Added::Joined(None)
                }
                None => Added::Live,
            };
        }
        // Even a binding made at once (the in-process broker's) has its
        // catch-up: a post published before it went to nobody, and a follow
        // change reaches the hub after the posts that follow it may have.
        let applied = self.broker.bind(&key);
        route.generation = self.generations.fetch_add(1, Ordering::Relaxed);
        route.bound_at = u64::MAX;
        route.pending = Some(Pending {
            authors: author.into_iter().collect(),
            recipients: recipient(joiner).into_iter().collect(),
        });
        Added::Joined(Some(Binding {
            key,
            generation: route.generation,
            applied,
        }))
    }

    /// Joins a subscriber of `author` (whose key is held already) to the
    /// key's pending binding, if it is pending.
    pub(super) fn join(&self, author: UserId, joiner: Option<(&Arc<Socket>, &Start)>) -> Added {
        match self.routes.get_mut(&self.routing.key(author)) {
            Some(mut route) => match &mut route.pending {
                Some(pending) => {
                    pending.recipients.extend(recipient(joiner));
                    Added::Joined(None)
                }
                None => Added::Live,
            },
            None => Added::Live,
        }
    }

    /// Whether `author`'s key was bound at or after the clock read `clock`
    /// (posts published before that went elsewhere).
    pub(super) fn bound_since(&self, author: UserId, clock: u64) -> bool {
        self.routes
            .get(&self.routing.key(author))
            .is_some_and(|route| route.bound_at >= clock)
    }

    pub(super) fn release(&self, author: UserId) {
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

fn recipient(joiner: Option<(&Arc<Socket>, &Start)>) -> Option<(Arc<Socket>, Start)> {
    joiner.map(|(socket, start)| (socket.clone(), start.clone()))
}
