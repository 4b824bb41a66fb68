//! The in-process broker: every instance that joined one [`MemoryBus`]
//! hears the others, as instances sharing one RabbitMQ would. Nothing is
//! ever lost in between, so it never signals a gap.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Applied, BrokerError, Delivery, Incoming, Topic, Work};

/// The shared medium. Clone it to let several instances (in one process)
/// talk to each other.
#[derive(Clone, Default)]
pub struct MemoryBus {
    members: Arc<Mutex<Vec<Arc<Member>>>>,
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
        MemoryBroker { bus: self, me }
    }
}

impl MemoryBroker {
    /// Waits while a receiving instance's sink is full: in one process the
    /// reader is the hub, which never blocks, so waiting is brief and no
    /// message is dropped.
    pub(super) async fn publish(
        &self,
        topic: Topic,
        routing_key: &str,
        body: Bytes,
    ) -> Result<(), BrokerError> {
        let members = self.bus.members.lock().expect("bus lock").clone();
        if topic == Topic::Materialize {
            return deliver_work(&members, body).await;
        }
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

/// Hands a work message to the first member still working, in order, as
/// RabbitMQ's single active consumer would. In one process nothing survives
/// a crash anyway, so the acknowledgement is not waited for.
async fn deliver_work(members: &[Arc<Member>], body: Bytes) -> Result<(), BrokerError> {
    for member in members {
        let (done, _applied) = tokio::sync::oneshot::channel();
        if member
            .work
            .send(Work {
                body: body.clone(),
                done,
            })
            .await
            .is_ok()
        {
            return Ok(());
        }
    }
    Err(BrokerError::Unavailable(
        "no instance is consuming feed work".into(),
    ))
}
