//! The supervisor: the one task that owns an instance's connection. It
//! connects, serves a session until it is lost, and reconnects with
//! backoff, recording binding changes while disconnected.
//!
//! It also keeps the gap mark: the last moment this instance positively
//! knew its queue was alive and consumed. Every new session (the first
//! included) puts `Gap { since: mark }` in the sink once its queue is
//! declared and its bindings restored, before its consumer starts, so the
//! gap comes ahead of every message of that session. During a session a
//! tick advances the mark every second; a tick that comes late (the process
//! was frozen or starved, and the queue may have expired meanwhile) first
//! proves the queue is still there, or ends the session. Apart from the
//! gap, it never feeds the sinks: only a session's consumers do.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Interval, MissedTickBehavior, interval_at, sleep, timeout};

use super::bindings::{Bindings, Change, Lanes};
use super::consume::{PumpEnd, WorkEnd, instance_ended, work_ended};
use super::session::{Session, Target};
use super::{Command, Link, OPERATION_TIMEOUT, Shared};
use crate::broker::{Gap, Incoming, Work};

const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A session that lasted this long was healthy: the next loss starts the
/// backoff over. A shorter one counts as a failed attempt, so a session that
/// keeps breaking right after setup does not reconnect in a tight loop.
const STABLE_SESSION: Duration = Duration::from_secs(5);
/// How often a session advances the gap mark.
const MARK_TICK: Duration = Duration::from_secs(1);
/// A tick this much later than scheduled means the process was frozen or
/// starved: the queue may have expired meanwhile.
const LATE_TICK: Duration = Duration::from_secs(3);

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
    sink: mpsc::Sender<Incoming>,
    work: mpsc::Sender<Work>,
    bindings: Bindings,
    connected_before: bool,
    /// The last moment this instance positively knew its queue was alive
    /// and consumed.
    mark: SystemTime,
}

impl Supervisor {
    pub(super) fn new(
        target: Target,
        shared: Arc<Shared>,
        requests: mpsc::UnboundedReceiver<Command>,
        sink: mpsc::Sender<Incoming>,
        work: mpsc::Sender<Work>,
        started: SystemTime,
    ) -> Self {
        Self {
            target: Arc::new(target),
            shared,
            requests,
            sink,
            work,
            bindings: Bindings::default(),
            connected_before: false,
            mark: started,
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
        let mut gap = Some(Gap { since: self.mark });
        let sink = self.sink.clone();
        // Ticks once the consumer runs.
        let mut ticks: Option<Interval> = None;
        let io_failure = session.connection.listen_network_io_failure();
        let mut io_failure = std::pin::pin!(io_failure);
        loop {
            tokio::select! {
                // A loss is noticed before a tick could advance the mark.
                biased;
                () = session.lost.notified() => {
                    return Ended::Lost(
                        "RabbitMQ closed the connection or a channel, or cancelled a consumer"
                            .into(),
                    );
                }
                _ = &mut io_failure => return Ended::Lost("network failure".into()),
                reason = session.lanes.failed() => return Ended::Lost(reason),
                end = instance_ended(&mut session.instance) => return match end {
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
                scheduled = next_tick(&mut ticks) => {
                    if let Err(reason) = self.advance_mark(session, scheduled).await {
                        return Ended::Lost(reason);
                    }
                }
                permit = sink.reserve(), if gap.is_some() => {
                    let (Ok(permit), Some(gap)) = (permit, gap.take()) else {
                        return Ended::Stopped(Stop(None));
                    };
                    permit.send(Incoming::Gap(gap));
                    let gaps = self.shared.gaps.fetch_add(1, Ordering::Relaxed) + 1;
                    tracing::info!(since = ?gap.since, gaps, "signalled a gap");
                    match session.consume(sink.clone()).await {
                        Ok(consumer) => session.instance = Some(consumer),
                        Err(error) => return Ended::Lost(error.to_string()),
                    }
                    let mut interval = interval_at(Instant::now() + MARK_TICK, MARK_TICK);
                    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
                    ticks = Some(interval);
                }
                command = self.requests.recv() => match command {
                    Some(Command::Binding { key, bound, applied }) => {
                        self.request(&session.lanes, key, bound, applied);
                    }
                    Some(Command::Shutdown { done }) => return Ended::Stopped(Stop(Some(done))),
                    None => return Ended::Stopped(Stop(None)),
                },
            }
        }
    }

    /// On time, a tick moves the mark to now. Late, the session first proves
    /// its queue is still there; failing that, it is lost, and the next
    /// session's gap starts at the old mark.
    async fn advance_mark(&mut self, session: &Session, scheduled: Instant) -> Result<(), String> {
        let now = SystemTime::now();
        let late = scheduled.elapsed();
        if late > LATE_TICK {
            tracing::warn!(?late, "the mark tick came late; checking the queue");
            if let Err(error) = session.verify().await {
                return Err(format!(
                    "the queue could not be verified after a pause: {error}"
                ));
            }
        }
        self.mark = now;
        Ok(())
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

/// The next tick's scheduled time; never while there are no ticks.
async fn next_tick(ticks: &mut Option<Interval>) -> Instant {
    match ticks {
        Some(ticks) => ticks.tick().await,
        None => std::future::pending().await,
    }
}
