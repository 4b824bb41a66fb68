//! The in-process broker: every instance that joined one [`MemoryBus`]
//! hears the others, as instances sharing one RabbitMQ would. Nothing is
//! ever lost in between, so it never signals a gap.
//!
//! `Materialize` work is queued on the bus, as RabbitMQ queues it, and
//! handed to the workers by a task of the bus's own: publishing it never
//! waits for a worker, so a slow or stalled feed worker can never hold up
//! the outbox relay, and with it the live feed. Work settled as
//! [`Settled::DeadLetter`] is kept, the newest [`DEAD_LETTERS_KEPT`].

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{mpsc, oneshot};

use super::{Applied, BrokerError, Delivery, Incoming, Settled, Topic, Work};

/// Dead letters kept in process; older ones are dropped (and logged when
/// they were dead-lettered).
pub const DEAD_LETTERS_KEPT: usize = 1000;

/// The shared medium. Clone it to let several instances (in one process)
/// talk to each other.
#[derive(Clone)]
pub struct MemoryBus {
    members: Arc<Mutex<Vec<Arc<Member>>>>,
    work: mpsc::UnboundedSender<Bytes>,
    /// Taken by the first instance that joins, which starts the task that
    /// hands work out.
    queued: Arc<Mutex<Option<mpsc::UnboundedReceiver<Bytes>>>>,
    dead_letters: Arc<Mutex<VecDeque<Bytes>>>,
}

impl Default for MemoryBus {
    fn default() -> Self {
        let (work, queued) = mpsc::unbounded_channel();
        Self {
            members: Arc::default(),
            work,
            queued: Arc::new(Mutex::new(Some(queued))),
            dead_letters: Arc::default(),
        }
    }
}

struct Member {
    sink: mpsc::Sender<Incoming>,
    work: mpsc::Sender<Work>,
    bindings: Mutex<HashSet<String>>,
}

#[derive(Clone)]
pub(super) struct MemoryBroker {
    bus: MemoryBus,
    me: Arc<Member>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// The work dead-lettered so far, oldest first.
    pub fn dead_letters(&self) -> Vec<Bytes> {
        let dead = self.dead_letters.lock().expect("dead letters lock");
        dead.iter().cloned().collect()
    }

    /// Must be called inside a Tokio runtime: the first member starts the
    /// task that hands work out.
    pub(super) fn join(
        self,
        sink: mpsc::Sender<Incoming>,
        work: mpsc::Sender<Work>,
    ) -> MemoryBroker {
        let me = Arc::new(Member {
            sink,
            work,
            bindings: Mutex::new(HashSet::new()),
        });
        self.members.lock().expect("bus lock").push(me.clone());
        if let Some(queued) = self.queued.lock().expect("queue lock").take() {
            // Holds the members and dead letters, not the bus: it ends once
            // every handle to the bus (each holding the sender) is gone.
            tokio::spawn(hand_out_work(
                self.members.clone(),
                self.dead_letters.clone(),
                queued,
            ));
        }
        MemoryBroker { bus: self, me }
    }
}

impl MemoryBroker {
    /// Waits while a receiving instance's sink is full: in one process the
    /// reader is the hub, which never blocks, so waiting is brief and no
    /// message is dropped. Work is only queued.
    pub(super) async fn publish(
        &self,
        topic: Topic,
        routing_key: &str,
        body: Bytes,
    ) -> Result<(), BrokerError> {
        if topic == Topic::Materialize {
            return self
                .bus
                .work
                .send(body)
                .map_err(|_| BrokerError::Unavailable("the work queue is gone".into()));
        }
        let members = self.bus.members.lock().expect("bus lock").clone();
        for member in members {
            let wanted = topic == Topic::Control
                || member
                    .bindings
                    .lock()
                    .expect("bindings lock")
                    .contains(routing_key);
            // A closed sink is an instance shutting down: nothing to deliver to.
            if wanted {
                let _ = member
                    .sink
                    .send(Incoming::Message(Delivery {
                        topic,
                        body: body.clone(),
                    }))
                    .await;
            }
        }
        Ok(())
    }

    pub(super) fn bind(&self, routing_key: &str) -> Applied {
        self.me
            .bindings
            .lock()
            .expect("bindings lock")
            .insert(routing_key.to_owned());
        Applied::done()
    }

    pub(super) fn unbind(&self, routing_key: &str) -> Applied {
        self.me
            .bindings
            .lock()
            .expect("bindings lock")
            .remove(routing_key);
        Applied::done()
    }

    pub(super) fn leave(&self) {
        self.bus
            .members
            .lock()
            .expect("bus lock")
            .retain(|member| !Arc::ptr_eq(member, &self.me));
    }
}

/// Hands queued work out in order, one message at a time, each to the
/// first member still working, as RabbitMQ's single active consumer would,
/// and keeps what comes back dead-lettered. In one process nothing survives
/// a crash anyway, so work handed back is not handed out again.
async fn hand_out_work(
    members: Arc<Mutex<Vec<Arc<Member>>>>,
    dead_letters: Arc<Mutex<VecDeque<Bytes>>>,
    mut queued: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut handed_out = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some((body, settled)) = handed_out.next(), if !handed_out.is_empty() => {
                if settled == Ok(Settled::DeadLetter) {
                    let mut dead = dead_letters.lock().expect("dead letters lock");
                    if dead.len() == DEAD_LETTERS_KEPT {
                        dead.pop_front();
                    }
                    dead.push_back(body);
                }
            }
            body = queued.recv() => {
                let Some(body) = body else { return };
                let members = members.lock().expect("bus lock").clone();
                match deliver_work(&members, body.clone()).await {
                    Some(settled) => handed_out.push(async move { (body, settled.await) }),
                    None => tracing::error!("no instance is consuming feed work; dropping it"),
                }
            }
        }
    }
}

/// Hands `body` to the first member still working; `None` if none is.
async fn deliver_work(members: &[Arc<Member>], body: Bytes) -> Option<oneshot::Receiver<Settled>> {
    for member in members {
        let (done, settled) = oneshot::channel();
        let work = Work {
            body: body.clone(),
            done,
        };
        if member.work.send(work).await.is_ok() {
            return Some(settled);
        }
    }
    None
}
