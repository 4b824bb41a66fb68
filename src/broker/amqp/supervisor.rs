//! The supervisor: the one task that owns an instance's connection. It
//! connects, serves a session until it is lost, and reconnects with
//! backoff, recording binding changes while disconnected. It never touches
//! the sinks itself: only a session's consumers feed them.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, sleep, timeout};

use super::bindings::{Bindings, Change, Lanes};
use super::consume::{PumpEnd, WorkEnd, work_ended};
use super::session::{Session, Target};
use super::{Command, Link, OPERATION_TIMEOUT, Shared};
use crate::broker::{Delivery, Work};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A session that lasted this long was healthy: the next loss starts the
/// backoff over. A shorter one counts as a failed attempt, so a session that
/// keeps breaking right after setup does not reconnect in a tight loop.
const STABLE_SESSION: Duration = Duration::from_secs(5);

/// Why the supervisor stops: a `shutdown` call to answer, or nobody left to
/// serve (every handle dropped, or the sink closed).
struct Stop(Option<oneshot::Sender<()>>);

/// How a connected session ended.
enum Ended {
    Lost(String),
    Stopped(Stop),
}

pub(super) struct Supervisor {
    target: Arc<Target>,
    shared: Arc<Shared>,
    requests: mpsc::UnboundedReceiver<Command>,
    sink: mpsc::Sender<Delivery>,
    work: mpsc::Sender<Work>,
    bindings: Bindings,
    connected_before: bool,
}

impl Supervisor {
    pub(super) fn new(
        target: Target,
        shared: Arc<Shared>,
        requests: mpsc::UnboundedReceiver<Command>,
        sink: mpsc::Sender<Delivery>,
        work: mpsc::Sender<Work>,
    ) -> Self {
        Self {
            target: Arc::new(target),
            shared,
            requests,
            sink,
            work,
            bindings: Bindings::default(),
            connected_before: false,
        }
    }

    pub(super) async fn run(mut self) {
        let Stop(caller) = self.reconnect_until_stopped().await;
        self.shared.link.send_replace(Link::Closed);
        if let Some(caller) = caller {
            let _ = caller.send(());
        }
    }

    /// Tries the URLs in turn: after a failed attempt or a lost session, the
    /// next one, so that a dead node is skipped. The backoff applies once
    /// every URL has failed in a row.
    async fn reconnect_until_stopped(&mut self) -> Stop {
        let mut delay = BACKOFF_MIN;
        let mut place = 0;
        let mut failed_in_row = 0;
        loop {
            let attempt = timeout(
                OPERATION_TIMEOUT,
                Session::open(
                    self.target.clone(),
                    place,
                    self.sink.clone(),
                    self.work.clone(),
                    self.bindings.on_server.clone(),
                ),
            );
            let node = self.target.describe(place);
            place += 1;
            match self.offline(attempt).await {
                Err(stop) => return stop,
                Ok(Ok(Ok(session))) => {
                    failed_in_row = 0;
                    let started = Instant::now();
                    if let Err(stop) = self.serve(session).await {
                        return stop;
                    }
                    if started.elapsed() >= STABLE_SESSION {
                        delay = BACKOFF_MIN;
                    }
                }
                Ok(Ok(Err(error))) => {
                    failed_in_row += 1;
                    tracing::warn!(%error, node, "cannot connect to RabbitMQ");
                }
                Ok(Err(_)) => {
                    failed_in_row += 1;
                    tracing::warn!(node, "connecting to RabbitMQ timed out");
                }
            }
            if failed_in_row % self.target.places() != 0 {
                continue;
            }
            tracing::debug!(retry_in = ?delay, "waiting before connecting again");
            if let Err(stop) = self.offline(sleep(delay)).await {
                return stop;
            }
            delay = (delay * 2).min(BACKOFF_MAX);
        }
    }

    /// Runs `work` while disconnected: binding changes are only recorded
    /// (and reported done: they are applied on connecting), and a shutdown
    /// request abandons `work`.
    async fn offline<T>(&mut self, work: impl Future<Output = T>) -> Result<T, Stop> {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return Ok(output),
                command = self.requests.recv() => match command {
                    Some(Command::Binding { key, bound, applied }) => {
                        self.bindings.want(&key, bound);
                        let _ = applied.send(());
                    }
                    Some(Command::Shutdown { done }) => return Err(Stop(Some(done))),
                    None => return Err(Stop(None)),
                },
            }
        }
    }

    /// Returns once the session is lost and dropped, or with the reason to
    /// stop once it has been shut down for good.
    async fn serve(&mut self, mut session: Session) -> Result<(), Stop> {
        match self.until_ended(&mut session).await {
            Ended::Lost(reason) => {
                self.shared.link.send_replace(Link::Down);
                tracing::warn!(%reason, "lost the connection to RabbitMQ; reconnecting");
                session.abandon().await;
                Ok(())
            }
            Ended::Stopped(stop) => {
                self.shared.link.send_replace(Link::Closed);
                session.leave().await;
                Err(stop)
            }
        }
    }

    async fn until_ended(&mut self, session: &mut Session) -> Ended {
        // Before any request reaches the lanes: restoring uses their
        // channels, which take one request at a time.
        if let Err(error) = session.lanes.restore(self.bindings.to_restore()).await {
            return Ended::Lost(error.to_string());
        }
        session.lanes.start();
        self.shared
            .link
            .send_replace(Link::Up(session.publisher.clone()));
        self.announce_connected();
        let io_failure = session.connection.listen_network_io_failure();
        let mut io_failure = std::pin::pin!(io_failure);
        loop {
            tokio::select! {
                command = self.requests.recv() => match command {
                    Some(Command::Binding { key, bound, applied }) => {
                        self.request(&session.lanes, key, bound, applied);
                    }
                    Some(Command::Shutdown { done }) => return Ended::Stopped(Stop(Some(done))),
                    None => return Ended::Stopped(Stop(None)),
                },
                () = session.lost.notified() => {
                    return Ended::Lost("RabbitMQ closed the connection or a channel".into());
                }
                _ = &mut io_failure => return Ended::Lost("network failure".into()),
                reason = session.lanes.failed() => return Ended::Lost(reason),
                end = &mut session.pump => return match end {
                    Ok(PumpEnd::SinkClosed) => Ended::Stopped(Stop(None)),
                    Ok(PumpEnd::ConsumerEnded) => Ended::Lost("the consumer stopped".into()),
                    Err(error) => Ended::Lost(format!("the delivery task failed: {error}")),
                },
                end = work_ended(&mut session.work) => match end {
                    Ok(WorkEnd::SinkClosed) => {
                        tracing::info!("the work sink is closed; no longer consuming work");
                        let consumer = session.work.take();
                        if let Some(consumer) = consumer
                            && let Err(error) = consumer.close().await
                        {
                            return Ended::Lost(error.to_string());
                        }
                    }
                    Ok(WorkEnd::ConsumerEnded | WorkEnd::Drained) => {
                        return Ended::Lost("the work consumer stopped".into());
                    }
                    Err(error) => {
                        return Ended::Lost(format!("the work task failed: {error}"));
                    }
                },
            }
        }
    }

    fn announce_connected(&mut self) {
        if self.connected_before {
            let reconnects = self.shared.reconnects.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(reconnects, "reconnected to RabbitMQ");
        } else {
            self.connected_before = true;
            tracing::info!("connected to RabbitMQ");
        }
    }

    /// Records the change, then hands it to the lane of its key, behind that
    /// key's earlier changes. A repeat of the wanted state goes there too,
    /// so that it completes in turn, once the change it repeats has.
    fn request(&mut self, lanes: &Lanes, key: String, bound: bool, applied: oneshot::Sender<()>) {
        let change = self.bindings.want(&key, bound).then_some(bound);
        lanes.send(Change {
            key,
            bound: change,
            applied,
        });
    }
}
