//! RabbitMQ through amqprs.
//!
//! One supervisor task per instance owns the connection: it connects,
//! declares the topology, consumes the instance queue and the work queue, and
//! takes binding changes in the order they were requested. amqprs does not
//! reconnect by itself, so on any loss the supervisor drops the session and
//! builds a new one with backoff, re-applying the wanted bindings. Publishes
//! bypass the supervisor: they go straight to the current session's
//! confirm-mode channel, so a slow binding change never holds them up.
//!
//! Binding changes come in bursts (every socket that connects binds the keys
//! of the authors it follows), and each costs a RabbitMQ round trip, which
//! amqprs cannot pipeline on one channel. So a session binds on
//! `BINDING_LANES` channels ("lanes"), each with a worker applying its
//! requests one at a time: a key always goes to the same lane, which keeps
//! the changes of one key in call order while other keys' go ahead in
//! parallel.
//!
//! `Materialize` work lives in one durable queue shared by every instance,
//! with a single active consumer: RabbitMQ hands it, in order, to one
//! instance at a time and fails over to another one's consumer when that
//! instance's channel goes away. Each session consumes it on a channel of its
//! own and acks a message on that channel once its `done` fires; a session
//! that is lost takes its unacknowledged messages with it, and RabbitMQ
//! redelivers them. Delivery is at least once: work that session had put in
//! the sink is still there, its `done` now leading nowhere
//! (`done.is_closed()`), and comes again. Work handed back (`done` dropped)
//! is requeued and comes again after what was already handed out.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use amqprs::callbacks::{ChannelCallback, ConnectionCallback};
use amqprs::channel::{
    BasicAckArguments, BasicCancelArguments, BasicConsumeArguments, BasicNackArguments,
    BasicPublishArguments, BasicQosArguments, Channel, ConfirmSelectArguments, ConsumerMessage,
    ExchangeDeclareArguments, ExchangeType, QueueBindArguments, QueueDeclareArguments,
    QueueDeleteArguments, QueueUnbindArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::error::Error as AmqpError;
use amqprs::{
    Ack, BasicProperties, Cancel, Close, CloseChannel, DELIVERY_MODE_PERSISTENT,
    DELIVERY_MODE_TRANSIENT, FieldTable, FieldValue, Nack, Return,
};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::task::{JoinError, JoinHandle, JoinSet};
use tokio::time::{Instant, sleep, timeout, timeout_at};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::{Applied, BrokerError, Delivery, Topic, Work};

const POSTS_EXCHANGE: &str = "feed.posts";
const CONTROL_EXCHANGE: &str = "feed.control";
const QUEUE_PREFIX: &str = "livefeed.instance.";
/// The `Materialize` work queue, shared by every instance; published to
/// through the default exchange, which routes by queue name.
const WORK_QUEUE: &str = "feed.materialize";
/// Long enough to ride out a network blip or a RabbitMQ restart, short
/// enough that a crashed instance's queue does not collect posts for long.
const QUEUE_EXPIRES_MS: i32 = 60_000;
/// amqprs declares the server dead after two missed heartbeats; RabbitMQ's
/// default of 60 s would leave a silently dropped connection unnoticed for
/// two minutes.
const DEFAULT_HEARTBEAT_SECS: u16 = 10;
/// Bounds the deliveries RabbitMQ pushes ahead of the sink, so that a slow
/// sink holds messages back in the queue rather than in this process.
const PREFETCH: u16 = 256;
/// The same for the work queue, whose messages stay unacknowledged until
/// they have been applied.
const WORK_PREFETCH: u16 = 32;
/// How long a consumer that stops taking work (on `shutdown`, or when the
/// work sink is closed) waits for the work it already handed out to be done
/// before giving the rest back.
const WORK_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// For any single request to RabbitMQ: amqprs itself waits forever.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Binding channels per session: how many binding round trips can be in
/// flight at once. With 2,000 binds at once (RabbitMQ 3.10 on the same two
/// cores), 2 lanes took about 2 s, 4 about 1.2 s, 8 about 0.85 s; 16 and 32
/// gained little more: RabbitMQ itself becomes the limit.
const BINDING_LANES: usize = 8;
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// A session that lasted this long was healthy: the next loss starts the
/// backoff over. A shorter one counts as a failed attempt, so a session that
/// keeps breaking right after setup does not reconnect in a tight loop.
const STABLE_SESSION: Duration = Duration::from_secs(5);
/// AMQP short strings (names, routing keys) hold at most this many bytes;
/// amqprs panics on longer ones.
const MAX_SHORT_STRING: usize = 255;
const DEFAULT_PORT: u16 = 5672;

/// How to reach RabbitMQ and what this instance's queue is called.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:port/vhost`
    pub url: String,
    /// Unique per running instance; names its queue.
    pub instance_id: String,
}

#[derive(Clone)]
pub(super) struct AmqpBroker {
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
}

/// What the handles and the supervisor both see.
struct Shared {
    link: watch::Sender<Link>,
    reconnects: AtomicU64,
}

#[derive(Clone)]
enum Link {
    Down,
    Up(Arc<Publisher>),
    Closed,
}

enum Command {
    Binding {
        key: String,
        bound: bool,
        applied: oneshot::Sender<()>,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

impl AmqpBroker {
    /// A closed `work` sink (its receiver dropped) means this instance does
    /// no `Materialize` work: it does not consume the work queue.
    pub(super) fn start(
        settings: AmqpSettings,
        sink: mpsc::Sender<Delivery>,
        work: mpsc::Sender<Work>,
    ) -> Self {
        let (commands, requests) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            link: watch::Sender::new(Link::Down),
            reconnects: AtomicU64::new(0),
        });
        // Without a supervisor the link stays down and every request is
        // dropped (which completes its `Applied`).
        match Target::new(&settings) {
            Ok(target) => {
                let span = tracing::info_span!("amqp", queue = %target.queue);
                let supervisor = Supervisor::new(target, shared.clone(), requests, sink, work);
                tokio::spawn(supervisor.run().instrument(span));
            }
            Err(error) => {
                tracing::error!(%error, "invalid AMQP settings; the broker stays unavailable");
            }
        }
        Self { shared, commands }
    }

    pub(super) async fn publish(
        &self,
        topic: Topic,
        routing_key: &str,
        body: Bytes,
    ) -> Result<(), BrokerError> {
        if routing_key.len() > MAX_SHORT_STRING {
            return Err(BrokerError::Unavailable(format!(
                "routing key longer than {MAX_SHORT_STRING} bytes"
            )));
        }
        let publisher = match &*self.shared.link.borrow() {
            Link::Up(publisher) => publisher.clone(),
            Link::Down => {
                return Err(BrokerError::Unavailable("not connected to RabbitMQ".into()));
            }
            Link::Closed => return Err(BrokerError::Closed),
        };
        let result = publisher.publish(topic, routing_key, body).await;
        // A publish cut short by `shutdown` reports the shutdown, not the
        // connection it tore down.
        match result {
            Err(_) if self.shared.is_closed() => Err(BrokerError::Closed),
            result => result,
        }
    }

    pub(super) fn change_binding(&self, routing_key: &str, bound: bool) -> Applied {
        if routing_key.len() > MAX_SHORT_STRING {
            tracing::error!(
                routing_key,
                "routing key longer than {MAX_SHORT_STRING} bytes; binding unchanged"
            );
            return Applied::done();
        }
        let (applied, receiver) = oneshot::channel();
        // A stopped supervisor drops the request, and with it `applied`,
        // which completes the returned future.
        let _ = self.commands.send(Command::Binding {
            key: routing_key.to_owned(),
            bound,
            applied,
        });
        Applied::pending(receiver)
    }

    pub(super) fn reconnects(&self) -> u64 {
        self.shared.reconnects.load(Ordering::Relaxed)
    }

    pub(super) async fn shutdown(&self) {
        let (done, finished) = oneshot::channel();
        if self.commands.send(Command::Shutdown { done }).is_ok() {
            let _ = finished.await;
        }
        // Covers a supervisor that never started (bad settings).
        self.shared.link.send_replace(Link::Closed);
    }
}

impl Shared {
    fn is_closed(&self) -> bool {
        matches!(*self.link.borrow(), Link::Closed)
    }
}

/// The validated settings, in the form every connection attempt needs.
struct Target {
    connection: OpenConnectionArguments,
    queue: String,
    queue_arguments: FieldTable,
    work_queue_arguments: FieldTable,
}

impl Target {
    fn new(settings: &AmqpSettings) -> Result<Self, String> {
        let queue = format!("{QUEUE_PREFIX}{}", settings.instance_id);
        if queue.len() > MAX_SHORT_STRING {
            return Err(format!(
                "instance id too long: queue names hold at most {MAX_SHORT_STRING} bytes"
            ));
        }
        let mut connection = connection_arguments(&settings.url)?;
        connection.connection_name(&format!("livefeed {}", settings.instance_id));
        let mut queue_arguments = FieldTable::new();
        let expires = "x-expires"
            .try_into()
            .map_err(|_| "queue argument name too long".to_owned())?;
        queue_arguments.insert(expires, FieldValue::I(QUEUE_EXPIRES_MS));
        let mut work_queue_arguments = FieldTable::new();
        let single_active_consumer = "x-single-active-consumer"
            .try_into()
            .map_err(|_| "queue argument name too long".to_owned())?;
        work_queue_arguments.insert(single_active_consumer, FieldValue::t(true));
        Ok(Self {
            connection,
            queue,
            queue_arguments,
            work_queue_arguments,
        })
    }
}

/// Parses `amqp://user:password@host:port/vhost?heartbeat=N` the way the
/// RabbitMQ URI spec reads it: user, password and vhost are percent-decoded
/// (`%2f` is the default vhost `/`), an absent vhost is `/`. Errors never
/// echo the URL, which holds a password.
fn connection_arguments(url: &str) -> Result<OpenConnectionArguments, String> {
    let rest = url
        .strip_prefix("amqp://")
        .ok_or("the AMQP URL must start with amqp:// (TLS is not supported)")?;
    let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, vhost) = rest.split_once('/').unwrap_or((rest, ""));
    if vhost.contains('/') {
        return Err("a / in the vhost of the AMQP URL must be written %2f".into());
    }
    let (user, password, host_port) = match authority.rsplit_once('@') {
        Some((user_info, host_port)) => {
            let (user, password) = user_info.split_once(':').unwrap_or((user_info, "guest"));
            (percent_decode(user)?, percent_decode(password)?, host_port)
        }
        None => ("guest".to_owned(), "guest".to_owned(), authority),
    };
    let (host, port) = host_and_port(host_port)?;
    let mut arguments = OpenConnectionArguments::new(&host, port, &user, &password);
    let vhost = match percent_decode(vhost)? {
        vhost if vhost.is_empty() => "/".to_owned(),
        vhost => vhost,
    };
    arguments.virtual_host(&vhost);
    arguments.heartbeat(heartbeat(query)?);
    Ok(arguments)
}

/// Keeps the brackets of an IPv6 host: amqprs connects to `host:port`.
fn host_and_port(host_port: &str) -> Result<(String, u16), String> {
    let (host, port) = match host_port.rfind(':') {
        Some(colon) if !host_port[colon..].contains(']') => {
            (&host_port[..colon], &host_port[colon + 1..])
        }
        _ => (host_port, ""),
    };
    if host.is_empty() {
        return Err("the AMQP URL has no host".into());
    }
    let port = match port {
        "" => DEFAULT_PORT,
        port => port
            .parse()
            .map_err(|_| "the port in the AMQP URL is not a number from 0 to 65535")?,
    };
    Ok((percent_decode(host)?, port))
}

/// Other query parameters of the URI spec do not apply to amqprs.
fn heartbeat(query: &str) -> Result<u16, String> {
    let mut heartbeat = DEFAULT_HEARTBEAT_SECS;
    for pair in query.split('&') {
        if let Some(("heartbeat", seconds)) = pair.split_once('=') {
            heartbeat = seconds
                .parse()
                .map_err(|_| "heartbeat in the AMQP URL is not a number of seconds")?;
        }
    }
    Ok(heartbeat)
}

fn percent_decode(text: &str) -> Result<String, String> {
    let mut decoded = Vec::with_capacity(text.len());
    let mut bytes = text.bytes();
    while let Some(byte) = bytes.next() {
        if byte != b'%' {
            decoded.push(byte);
            continue;
        }
        let hex_digit = |digit: Option<u8>| digit.and_then(|digit| char::from(digit).to_digit(16));
        match (hex_digit(bytes.next()), hex_digit(bytes.next())) {
            // Two hex digits make at most 255.
            (Some(high), Some(low)) => decoded.push((high * 16 + low) as u8),
            _ => return Err("the AMQP URL has a % not followed by two hex digits".into()),
        }
    }
    String::from_utf8(decoded).map_err(|_| "the AMQP URL does not decode to UTF-8".into())
}

/// Why the supervisor stops: a `shutdown` call to answer, or nobody left to
/// serve (every handle dropped, or the sink closed).
struct Stop(Option<oneshot::Sender<()>>);

/// How a connected session ended.
enum Ended {
    Lost(String),
    Stopped(Stop),
}

#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error(transparent)]
    Amqp(#[from] AmqpError),
    #[error("{0} timed out")]
    Timeout(&'static str),
}

/// The routing keys this instance wants, and those its queue may still be
/// bound with on the server, so that a reconnect can both restore lost
/// bindings and remove ones dropped while disconnected: the queue and its
/// bindings outlive a brief disconnection.
#[derive(Default)]
struct Bindings {
    /// Updated when a change is requested: the source of truth, in call
    /// order, whatever happens to the session that was to apply it.
    wanted: HashSet<String>,
    on_server: OnServer,
}

impl Bindings {
    /// Returns whether this changed what is wanted.
    fn want(&mut self, key: &str, bound: bool) -> bool {
        if bound {
            // Looked up first: a repeat, the common case, allocates nothing.
            !self.wanted.contains(key) && self.wanted.insert(key.to_owned())
        } else {
            self.wanted.remove(key)
        }
    }

    /// What a new session must do to bring the queue in line with `wanted`:
    /// unbind what is no longer wanted, (re)bind everything that is.
    fn to_restore(&self) -> Vec<(String, bool)> {
        let stale = self.on_server.not_in(&self.wanted);
        let unbinds = stale.into_iter().map(|key| (key, false));
        let binds = self.wanted.iter().map(|key| (key.clone(), true));
        unbinds.chain(binds).collect()
    }
}

/// The routing keys the queue may be bound with on the server: a binding
/// counts from before its bind is sent until its unbind is confirmed. Shared
/// by the supervisor and its lane workers; the changes of one key are only
/// ever applied one at a time (by the worker of the key's lane, or by the
/// supervisor restoring bindings before any worker starts), so each key's
/// entry follows them in order.
#[derive(Clone, Default)]
struct OnServer(Arc<Mutex<HashSet<String>>>);

impl OnServer {
    fn keys(&self) -> MutexGuard<'_, HashSet<String>> {
        // Every update is a single insert or remove: a panic elsewhere while
        // holding the lock leaves the set consistent.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(&self, key: &str) {
        let mut keys = self.keys();
        if !keys.contains(key) {
            keys.insert(key.to_owned());
        }
    }

    fn remove(&self, key: &str) {
        self.keys().remove(key);
    }

    fn not_in(&self, wanted: &HashSet<String>) -> Vec<String> {
        self.keys().difference(wanted).cloned().collect()
    }
}

struct Supervisor {
    target: Arc<Target>,
    shared: Arc<Shared>,
    requests: mpsc::UnboundedReceiver<Command>,
    sink: mpsc::Sender<Delivery>,
    work: mpsc::Sender<Work>,
    bindings: Bindings,
    connected_before: bool,
}

impl Supervisor {
    fn new(
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

    async fn run(mut self) {
        let Stop(caller) = self.reconnect_until_stopped().await;
        self.shared.link.send_replace(Link::Closed);
        if let Some(caller) = caller {
            let _ = caller.send(());
        }
    }

    async fn reconnect_until_stopped(&mut self) -> Stop {
        let mut delay = BACKOFF_MIN;
        loop {
            let attempt = timeout(
                OPERATION_TIMEOUT,
                Session::open(
                    self.target.clone(),
                    self.sink.clone(),
                    self.work.clone(),
                    self.bindings.on_server.clone(),
                ),
            );
            match self.offline(attempt).await {
                Err(stop) => return stop,
                Ok(Ok(Ok(session))) => {
                    let started = Instant::now();
                    if let Err(stop) = self.serve(session).await {
                        return stop;
                    }
                    if started.elapsed() >= STABLE_SESSION {
                        delay = BACKOFF_MIN;
                    }
                }
                Ok(Ok(Err(error))) => {
                    tracing::warn!(%error, retry_in = ?delay, "cannot connect to RabbitMQ");
                }
                Ok(Err(_)) => {
                    tracing::warn!(retry_in = ?delay, "connecting to RabbitMQ timed out");
                }
            }
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

/// One connection with everything set up on it.
struct Session {
    connection: Connection,
    /// Declares and consumes; only the supervisor uses it, one request at a
    /// time (amqprs mixes up concurrent requests of one kind on a channel).
    topology: Channel,
    /// Applies binding changes.
    lanes: Lanes,
    publisher: Arc<Publisher>,
    target: Arc<Target>,
    consumer_tag: String,
    pump: JoinHandle<PumpEnd>,
    /// `None` while this instance takes no work (its work sink is closed).
    work: Option<WorkConsumer>,
    /// Signalled by amqprs callbacks when RabbitMQ closes the connection, a
    /// channel or the consumer.
    lost: Arc<Notify>,
}

impl Session {
    async fn open(
        target: Arc<Target>,
        sink: mpsc::Sender<Delivery>,
        work: mpsc::Sender<Work>,
        on_server: OnServer,
    ) -> Result<Self, SessionError> {
        let connection = Connection::open(&target.connection).await?;
        let lost = Arc::new(Notify::new());
        connection
            .register_callback(ConnectionEvents { lost: lost.clone() })
            .await?;
        let topology = open_channel(&connection, &lost).await?;
        declare(&topology, &target).await?;
        let publisher = Arc::new(Publisher::open(&connection, lost.clone()).await?);
        let lanes = Lanes::open(&connection, &lost, &target, &on_server).await?;
        let work_deliveries = match work.is_closed() {
            true => None,
            false => Some(consume_work(&connection, lost.clone()).await?),
        };
        topology
            .basic_qos(BasicQosArguments::new(0, PREFETCH, false))
            .await?;
        let consume = BasicConsumeArguments::new(&target.queue, "")
            .manual_ack(true)
            .finish();
        let (consumer_tag, deliveries) = topology.basic_consume_rx(consume).await?;
        // Only once nothing can fail any more: nothing reaches the sinks
        // from a session that is then dropped.
        let pump = tokio::spawn(pump(topology.clone(), deliveries, sink).in_current_span());
        let work = work_deliveries
            .map(|(channel, deliveries)| WorkConsumer::start(channel, deliveries, work));
        Ok(Self {
            connection,
            topology,
            lanes,
            publisher,
            target,
            consumer_tag,
            pump,
            work,
            lost,
        })
    }

    /// After a loss: nothing to clean up on the server, which keeps the queue
    /// for the next session.
    async fn abandon(mut self) {
        self.publisher.confirms.fail_all();
        stop_pump(self.pump).await;
        // What they had not applied is still wanted: the next session
        // applies it.
        self.lanes.stop().await;
        // RabbitMQ requeues what the lost channel had not acked; the `done`s
        // still out there now fire into nothing.
        if let Some(work) = self.work {
            stop_pump(work.pump).await;
        }
        // Usually gone already; if only a channel failed, this ends the rest.
        let _ = timeout(OPERATION_TIMEOUT, self.connection.close()).await;
    }

    /// For shutdown: stop consuming, delete the queue, close.
    async fn leave(mut self) {
        // Deleting the queue deletes every binding: changes still queued
        // are dropped, which completes them.
        self.lanes.stop().await;
        stop_pump(self.pump).await;
        // First, so that another instance takes over the work promptly.
        if let Some(work) = self.work {
            work.stop().await;
        }
        let cancel = BasicCancelArguments::new(&self.consumer_tag);
        if let Err(error) = within("basic.cancel", self.topology.basic_cancel(cancel)).await {
            tracing::warn!(%error, "cannot cancel the consumer");
        }
        let delete = QueueDeleteArguments::new(&self.target.queue);
        match within("queue.delete", self.topology.queue_delete(delete)).await {
            Ok(_) => tracing::info!("left RabbitMQ; queue deleted"),
            Err(error) => tracing::warn!(%error, "cannot delete the queue; it expires unused"),
        }
        self.publisher.confirms.fail_all();
        if let Err(error) = within("connection.close", self.connection.close()).await {
            tracing::debug!(%error, "closing the connection");
        }
    }
}

/// A session's binding channels, each with a worker that applies the
/// changes sent to it one at a time, in the order they came.
///
/// A request on a lane is never dropped half-way: amqprs panics (in the
/// channel's own task) when a request is dropped while it registers for its
/// reply. So workers and restores stop between two requests, when `stop`
/// is cancelled, and the request in hand finishes or times out first.
struct Lanes {
    binders: Vec<Binder>,
    /// One queue per lane; a change waits in it until the lane's worker
    /// has applied the ones before it.
    queues: Vec<mpsc::UnboundedSender<Change>>,
    /// The receiving ends, until `start` hands them to the workers.
    idle: Vec<mpsc::UnboundedReceiver<Change>>,
    /// A worker ends with an error when a change fails, which loses the
    /// session, or once stopped.
    workers: JoinSet<Result<(), SessionError>>,
    stop: CancellationToken,
}

/// One binding change on its way to RabbitMQ.
struct Change {
    key: String,
    /// `None`: a repeat of the wanted state; nothing to ask RabbitMQ.
    bound: Option<bool>,
    /// Fires once the change is applied, or dropped with it when the
    /// session goes (the change is recorded, and the next session applies
    /// it).
    applied: oneshot::Sender<()>,
}

impl Lanes {
    async fn open(
        connection: &Connection,
        lost: &Arc<Notify>,
        target: &Arc<Target>,
        on_server: &OnServer,
    ) -> Result<Self, SessionError> {
        let mut lanes = Self {
            binders: Vec::with_capacity(BINDING_LANES),
            queues: Vec::with_capacity(BINDING_LANES),
            idle: Vec::with_capacity(BINDING_LANES),
            workers: JoinSet::new(),
            stop: CancellationToken::new(),
        };
        for _ in 0..BINDING_LANES {
            lanes.binders.push(Binder {
                channel: open_channel(connection, lost).await?,
                target: target.clone(),
                on_server: on_server.clone(),
            });
            let (queue, idle) = mpsc::unbounded_channel();
            lanes.queues.push(queue);
            lanes.idle.push(idle);
        }
        Ok(lanes)
    }

    /// Applies `changes` before the workers start, each on the channel of
    /// its key (the channels in parallel), and fails if any fails.
    async fn restore(&self, changes: Vec<(String, bool)>) -> Result<(), SessionError> {
        let mut by_lane = vec![Vec::new(); self.binders.len()];
        for (key, bound) in changes {
            by_lane[lane_of(&key)].push((key, bound));
        }
        let lanes = self.binders.iter().zip(by_lane);
        let restored = lanes.map(|(binder, changes)| self.restore_lane(binder, changes));
        join_all(restored).await.into_iter().collect()
    }

    /// The first failure stops the other lanes too: the session is lost.
    async fn restore_lane(
        &self,
        binder: &Binder,
        changes: Vec<(String, bool)>,
    ) -> Result<(), SessionError> {
        for (key, bound) in changes {
            if self.stop.is_cancelled() {
                break;
            }
            if let Err(error) = binder.apply(&key, bound).await {
                self.stop.cancel();
                return Err(error);
            }
        }
        Ok(())
    }

    fn start(&mut self) {
        let idle = std::mem::take(&mut self.idle);
        for (binder, changes) in self.binders.iter().zip(idle) {
            let worker = apply_in_order(binder.clone(), changes, self.stop.clone());
            self.workers.spawn(worker.in_current_span());
        }
    }

    /// Queued, to be applied after the earlier changes of the same key.
    fn send(&self, change: Change) {
        // Fails only once the lane's worker has failed, which loses the
        // session: dropping the change completes it, and it stays wanted.
        let _ = self.queues[lane_of(&change.key)].send(change);
    }

    /// Completes when a worker fails, with why; never before `start` (nor
    /// after `stop`).
    async fn failed(&mut self) -> String {
        match self.workers.join_next().await {
            Some(Ok(Err(error))) => error.to_string(),
            Some(Ok(Ok(()))) => "a binding worker stopped".into(),
            Some(Err(error)) => format!("a binding worker failed: {error}"),
            None => std::future::pending().await,
        }
    }

    /// Stops the workers once the requests in hand are answered (a closed
    /// connection fails them at once; at worst they time out), dropping the
    /// changes left queued.
    async fn stop(&mut self) {
        self.stop.cancel();
        while self.workers.join_next().await.is_some() {}
    }
}

/// Which lane a key's changes go to: always the same one (the hasher has
/// fixed keys), so that they are applied in call order.
fn lane_of(key: &str) -> usize {
    let mut hasher = DefaultHasher::new();
    key.hash(&mut hasher);
    // The remainder is below `BINDING_LANES`, a `usize`.
    (hasher.finish() % BINDING_LANES as u64) as usize
}

/// A lane's worker: applies its changes one at a time (amqprs mixes up
/// concurrent requests of one kind on a channel), and stops at the first
/// failure, or between two changes once `stop` is cancelled.
async fn apply_in_order(
    binder: Binder,
    mut changes: mpsc::UnboundedReceiver<Change>,
    stop: CancellationToken,
) -> Result<(), SessionError> {
    loop {
        let change = tokio::select! {
            biased;
            () = stop.cancelled() => return Ok(()),
            change = changes.recv() => change,
        };
        // The supervisor holds the sending end while the worker runs.
        let Some(change) = change else {
            return Ok(());
        };
        let result = match change.bound {
            Some(bound) => binder.apply(&change.key, bound).await,
            None => Ok(()),
        };
        // Confirmed or not: a failed change stays wanted, and the reconnect
        // that follows applies it.
        let _ = change.applied.send(());
        result?;
    }
}

/// Binds and unbinds the instance queue on one channel, keeping track of
/// what may be bound on the server.
#[derive(Clone)]
struct Binder {
    channel: Channel,
    target: Arc<Target>,
    on_server: OnServer,
}

impl Binder {
    async fn apply(&self, key: &str, bound: bool) -> Result<(), SessionError> {
        let queue = &self.target.queue;
        if bound {
            // Counted before it is sent: it may be in place even if no
            // reply comes.
            self.on_server.insert(key);
            let bind = QueueBindArguments::new(queue, POSTS_EXCHANGE, key);
            within("queue.bind", self.channel.queue_bind(bind)).await
        } else {
            let unbind = QueueUnbindArguments::new(queue, POSTS_EXCHANGE, key);
            within("queue.unbind", self.channel.queue_unbind(unbind)).await?;
            self.on_server.remove(key);
            Ok(())
        }
    }
}

/// A channel whose closing by RabbitMQ signals `lost`.
async fn open_channel(connection: &Connection, lost: &Arc<Notify>) -> Result<Channel, AmqpError> {
    let channel = connection.open_channel(None).await?;
    channel
        .register_callback(ChannelEvents {
            lost: lost.clone(),
            confirms: None,
        })
        .await?;
    Ok(channel)
}

async fn declare(channel: &Channel, target: &Target) -> Result<(), SessionError> {
    let exchanges = [
        (POSTS_EXCHANGE, ExchangeType::Direct),
        (CONTROL_EXCHANGE, ExchangeType::Fanout),
    ];
    for (name, kind) in exchanges {
        let exchange = ExchangeDeclareArguments::of_type(name, kind)
            .durable(true)
            .finish();
        within("exchange.declare", channel.exchange_declare(exchange)).await?;
    }
    let queue = QueueDeclareArguments::durable_client_named(&target.queue)
        .arguments(target.queue_arguments.clone())
        .finish();
    within("queue.declare", channel.queue_declare(queue)).await?;
    let control = QueueBindArguments::new(&target.queue, CONTROL_EXCHANGE, "");
    within("queue.bind", channel.queue_bind(control)).await?;
    // Declared by every instance, consuming or not, so that work published
    // before any consumer ever connected is kept.
    let work = QueueDeclareArguments::durable_client_named(WORK_QUEUE)
        .arguments(target.work_queue_arguments.clone())
        .finish();
    within("queue.declare", channel.queue_declare(work)).await?;
    Ok(())
}

async fn within<T>(
    request: &'static str,
    reply: impl Future<Output = Result<T, AmqpError>>,
) -> Result<T, SessionError> {
    match timeout(OPERATION_TIMEOUT, reply).await {
        Ok(reply) => Ok(reply?),
        Err(_) => Err(SessionError::Timeout(request)),
    }
}

enum PumpEnd {
    ConsumerEnded,
    SinkClosed,
}

/// Moves deliveries into the sink, waiting while it is full, and acks them
/// once it has taken them: with the prefetch limit, a full sink holds
/// RabbitMQ back.
async fn pump(
    channel: Channel,
    mut deliveries: mpsc::UnboundedReceiver<ConsumerMessage>,
    sink: mpsc::Sender<Delivery>,
) -> PumpEnd {
    let mut unacked = 0;
    while let Some(message) = deliveries.recv().await {
        // amqprs always fills both in.
        let (Some(deliver), Some(content)) = (message.deliver, message.content) else {
            continue;
        };
        let topic = match deliver.exchange().as_str() {
            POSTS_EXCHANGE => Some(Topic::Posts),
            CONTROL_EXCHANGE => Some(Topic::Control),
            exchange => {
                tracing::warn!(exchange, "dropping a delivery from an unexpected exchange");
                None
            }
        };
        if let Some(topic) = topic {
            let delivery = Delivery {
                topic,
                body: Bytes::from(content),
            };
            if sink.send(delivery).await.is_err() {
                return PumpEnd::SinkClosed;
            }
        }
        unacked += 1;
        // One ack covers everything up to this tag: ack in batches, but not
        // later than when the buffer runs dry.
        if unacked >= PREFETCH / 2 || deliveries.is_empty() {
            let ack = BasicAckArguments::new(deliver.delivery_tag(), true);
            if channel.basic_ack(ack).await.is_err() {
                return PumpEnd::ConsumerEnded;
            }
            unacked = 0;
        }
    }
    PumpEnd::ConsumerEnded
}

/// Waits until the pump has stopped, so that nothing reaches the sink after.
async fn stop_pump<T>(pump: JoinHandle<T>) {
    pump.abort();
    // A pump that ended may have been awaited by the supervisor already, and
    // polling a finished `JoinHandle` again panics.
    if !pump.is_finished() {
        let _ = pump.await;
    }
}

/// Opens a channel of its own for the work queue and consumes the queue on
/// it: acks must go to the channel the messages came from, and its requests
/// must not mix with the supervisor's on the topology channel.
async fn consume_work(
    connection: &Connection,
    lost: Arc<Notify>,
) -> Result<(Channel, mpsc::UnboundedReceiver<ConsumerMessage>), SessionError> {
    let channel = open_channel(connection, &lost).await?;
    channel
        .basic_qos(BasicQosArguments::new(0, WORK_PREFETCH, false))
        .await?;
    let consume = BasicConsumeArguments::new(WORK_QUEUE, "")
        .manual_ack(true)
        .finish();
    let (_, deliveries) = channel.basic_consume_rx(consume).await?;
    Ok((channel, deliveries))
}

/// This session's consumer of the work queue.
struct WorkConsumer {
    /// Only the supervisor makes requests on it (closing it); the pump only
    /// acks and nacks, which get no reply.
    channel: Channel,
    pump: JoinHandle<WorkEnd>,
    drain: oneshot::Sender<()>,
}

impl WorkConsumer {
    fn start(
        channel: Channel,
        deliveries: mpsc::UnboundedReceiver<ConsumerMessage>,
        sink: mpsc::Sender<Work>,
    ) -> Self {
        let (drain, drained) = oneshot::channel();
        let pump = work_pump(channel.clone(), deliveries, sink, drained);
        Self {
            channel,
            pump: tokio::spawn(pump.in_current_span()),
            drain,
        }
    }

    /// For shutdown: stops handing out work and waits, for a while, for the
    /// work handed out to be done, then closes the channel.
    async fn stop(self) {
        let Self {
            channel,
            mut pump,
            drain,
        } = self;
        let _ = drain.send(());
        // The pump bounds its own wait; this only guards against a stuck one.
        if timeout(WORK_DRAIN_TIMEOUT + OPERATION_TIMEOUT, &mut pump)
            .await
            .is_err()
        {
            pump.abort();
        }
        if let Err(error) = within("channel.close", channel.close()).await {
            tracing::debug!(%error, "closing the work channel");
        }
    }

    /// Closing the channel cancels the consumer and has RabbitMQ requeue
    /// every message not acked on it, in queue order, before it moves the
    /// single active consumer on (a `basic.cancel` would let the next
    /// consumer go ahead while these messages are still held here).
    async fn close(self) -> Result<(), SessionError> {
        self.pump.abort();
        within("channel.close", self.channel.close()).await
    }
}

/// Completes when the session's work pump ends; never if there is none.
async fn work_ended(work: &mut Option<WorkConsumer>) -> Result<WorkEnd, JoinError> {
    match work {
        Some(work) => (&mut work.pump).await,
        None => std::future::pending().await,
    }
}

enum WorkEnd {
    /// Asked to stop handing out work; what was handed out is settled, or
    /// was not done in time.
    Drained,
    /// Nobody takes work any more; settled like `Drained`.
    SinkClosed,
    /// The channel or the consumer is gone.
    ConsumerEnded,
}

/// Hands work messages to the sink one at a time, in delivery order, waiting
/// while it is full, and settles each one on its channel as soon as its
/// `done` fires (ack) or is dropped (nack, requeued), in whatever order that
/// happens. With the prefetch limit, work not yet done holds RabbitMQ back.
async fn work_pump(
    channel: Channel,
    mut deliveries: mpsc::UnboundedReceiver<ConsumerMessage>,
    sink: mpsc::Sender<Work>,
    mut drain: oneshot::Receiver<()>,
) -> WorkEnd {
    let mut handed_out = FuturesUnordered::new();
    // Received, waiting for room in the sink.
    let mut next: Option<(u64, Bytes)> = None;
    let end = loop {
        tokio::select! {
            biased;
            Some((tag, done)) = handed_out.next(), if !handed_out.is_empty() => {
                if settle(&channel, tag, done).await.is_err() {
                    return WorkEnd::ConsumerEnded;
                }
            }
            _ = &mut drain => break WorkEnd::Drained,
            () = sink.closed() => break WorkEnd::SinkClosed,
            permit = sink.reserve(), if next.is_some() => match (permit, next.take()) {
                (Ok(permit), Some((tag, body))) => {
                    let (done, applied) = oneshot::channel();
                    permit.send(Work { body, done });
                    handed_out.push(async move { (tag, applied.await.is_ok()) });
                }
                _ => break WorkEnd::SinkClosed,
            },
            message = deliveries.recv(), if next.is_none() => match message {
                // amqprs always fills both in.
                Some(ConsumerMessage {
                    deliver: Some(deliver),
                    content: Some(content),
                    ..
                }) => next = Some((deliver.delivery_tag(), Bytes::from(content))),
                Some(_) => {}
                None => return WorkEnd::ConsumerEnded,
            },
        }
    };
    // Whatever is left unacked (including `next` and what RabbitMQ sent
    // ahead) goes back to the queue when the channel closes.
    let deadline = Instant::now() + WORK_DRAIN_TIMEOUT;
    while !handed_out.is_empty() {
        match timeout_at(deadline, handed_out.next()).await {
            Ok(Some((tag, done))) => {
                if settle(&channel, tag, done).await.is_err() {
                    return WorkEnd::ConsumerEnded;
                }
            }
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    pending = handed_out.len(),
                    "work not done within {WORK_DRAIN_TIMEOUT:?}; giving it back"
                );
                break;
            }
        }
    }
    end
}

/// Acks work that was done, requeues work that was handed back.
async fn settle(channel: &Channel, tag: u64, done: bool) -> Result<(), AmqpError> {
    if done {
        channel.basic_ack(BasicAckArguments::new(tag, false)).await
    } else {
        channel
            .basic_nack(BasicNackArguments::new(tag, false, true))
            .await
    }
}

/// The confirm-mode channel of one session.
struct Publisher {
    channel: Channel,
    /// The delivery tag RabbitMQ will give the next publish: it counts the
    /// publishes on the channel, so the lock is held until the message has
    /// been queued for the socket, keeping tags in wire order.
    next_tag: tokio::sync::Mutex<u64>,
    confirms: Arc<Confirms>,
}

impl Publisher {
    async fn open(connection: &Connection, lost: Arc<Notify>) -> Result<Self, SessionError> {
        let channel = connection.open_channel(None).await?;
        let confirms = Arc::new(Confirms::default());
        channel
            .register_callback(ChannelEvents {
                lost,
                confirms: Some(confirms.clone()),
            })
            .await?;
        within(
            "confirm.select",
            channel.confirm_select(ConfirmSelectArguments::default()),
        )
        .await?;
        Ok(Self {
            channel,
            next_tag: tokio::sync::Mutex::new(1),
            confirms,
        })
    }

    async fn publish(
        &self,
        topic: Topic,
        routing_key: &str,
        body: Bytes,
    ) -> Result<(), BrokerError> {
        let deadline = Instant::now() + CONFIRM_TIMEOUT;
        let (tag, confirm) = timeout_at(deadline, self.send(topic, routing_key, body))
            .await
            .map_err(|_| unavailable("the connection is too busy to take the message"))??;
        match timeout_at(deadline, confirm).await {
            Ok(Ok(Outcome::Acked)) => Ok(()),
            Ok(Ok(Outcome::Nacked)) => Err(unavailable("RabbitMQ rejected the message (nack)")),
            Ok(Ok(Outcome::Returned)) => Err(unavailable(format!(
                "RabbitMQ could not route the message: is the {WORK_QUEUE} queue missing?"
            ))),
            Ok(Err(_)) => Err(unavailable("the channel closed before RabbitMQ confirmed")),
            Err(_) => {
                self.confirms.forget(tag);
                Err(unavailable("RabbitMQ did not confirm within 5 s"))
            }
        }
    }

    /// Cancel-safe: dropped before the message is queued, the tag stays
    /// unused and the next publish takes it over (and its stale waiter).
    async fn send(
        &self,
        topic: Topic,
        routing_key: &str,
        body: Bytes,
    ) -> Result<(u64, oneshot::Receiver<Outcome>), BrokerError> {
        // Work must survive a RabbitMQ restart, and must not vanish unrouted:
        // it is mandatory, and a return fails the publish.
        let work = topic == Topic::Materialize;
        let (exchange, routing_key) = match topic {
            Topic::Posts => (POSTS_EXCHANGE, routing_key),
            Topic::Control => (CONTROL_EXCHANGE, routing_key),
            Topic::Materialize => ("", WORK_QUEUE),
        };
        let arguments = BasicPublishArguments::new(exchange, routing_key)
            .mandatory(work)
            .finish();
        let mut properties = BasicProperties::default();
        let mut next_tag = self.next_tag.lock().await;
        let tag = *next_tag;
        if work {
            // A return carries no delivery tag: this tells which publish it was.
            properties
                .with_delivery_mode(DELIVERY_MODE_PERSISTENT)
                .with_message_id(&tag.to_string());
        } else {
            properties.with_delivery_mode(DELIVERY_MODE_TRANSIENT);
        }
        // Registered first: the confirm can arrive before `basic_publish`
        // returns.
        let confirm = self.confirms.expect(tag)?;
        if let Err(error) = self
            .channel
            .basic_publish(properties, Vec::from(body), arguments)
            .await
        {
            self.confirms.forget(tag);
            return Err(unavailable(error));
        }
        *next_tag += 1;
        Ok((tag, confirm))
    }
}

fn unavailable(reason: impl ToString) -> BrokerError {
    BrokerError::Unavailable(reason.to_string())
}

/// How RabbitMQ answered a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Acked,
    Nacked,
    /// Acked, but returned first: a mandatory message no queue took.
    Returned,
}

/// Publishers waiting for their confirm, by delivery tag. A waiter gets the
/// [`Outcome`], or is dropped (its receiver sees an error) when the channel
/// fails.
#[derive(Default)]
struct Confirms(Mutex<ConfirmState>);

#[derive(Default)]
struct ConfirmState {
    waiters: BTreeMap<u64, oneshot::Sender<Outcome>>,
    /// Returned and not yet confirmed: RabbitMQ sends the return first.
    returned: BTreeSet<u64>,
    failed: bool,
}

impl Confirms {
    fn state(&self) -> MutexGuard<'_, ConfirmState> {
        // Every update leaves the map consistent, so a panic elsewhere while
        // holding the lock does not invalidate it.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn expect(&self, tag: u64) -> Result<oneshot::Receiver<Outcome>, BrokerError> {
        let mut state = self.state();
        if state.failed {
            return Err(unavailable("the publish channel closed"));
        }
        let (waiter, confirm) = oneshot::channel();
        state.waiters.insert(tag, waiter);
        Ok(confirm)
    }

    fn forget(&self, tag: u64) {
        self.state().waiters.remove(&tag);
    }

    fn returned(&self, tag: u64) {
        let mut state = self.state();
        if !state.failed {
            state.returned.insert(tag);
        }
    }

    fn settle(&self, tag: u64, multiple: bool, acked: bool) {
        let (settled, returned) = {
            let mut state = self.state();
            if multiple {
                let later = tag.saturating_add(1);
                let waiters = state.waiters.split_off(&later);
                let returned = state.returned.split_off(&later);
                (
                    std::mem::replace(&mut state.waiters, waiters),
                    std::mem::replace(&mut state.returned, returned),
                )
            } else {
                let waiter = state.waiters.remove_entry(&tag);
                let returned = state.returned.take(&tag);
                (waiter.into_iter().collect(), returned.into_iter().collect())
            }
        };
        for (tag, waiter) in settled {
            let outcome = match (acked, returned.contains(&tag)) {
                (false, _) => Outcome::Nacked,
                (true, true) => Outcome::Returned,
                (true, false) => Outcome::Acked,
            };
            let _ = waiter.send(outcome);
        }
    }

    fn fail_all(&self) {
        let mut state = self.state();
        state.failed = true;
        state.waiters.clear();
        state.returned.clear();
    }
}

struct ConnectionEvents {
    lost: Arc<Notify>,
}

#[async_trait]
impl ConnectionCallback for ConnectionEvents {
    async fn close(&mut self, _: &Connection, close: Close) -> Result<(), AmqpError> {
        tracing::warn!(%close, "RabbitMQ is closing the connection");
        self.lost.notify_one();
        Ok(())
    }

    async fn blocked(&mut self, _: &Connection, reason: String) {
        tracing::warn!(%reason, "RabbitMQ blocked publishing on this connection");
    }

    async fn unblocked(&mut self, _: &Connection) {
        tracing::info!("RabbitMQ unblocked publishing on this connection");
    }

    async fn secret_updated(&mut self, _: &Connection) {}
}

/// `confirms` is set on the publish channel only.
struct ChannelEvents {
    lost: Arc<Notify>,
    confirms: Option<Arc<Confirms>>,
}

#[async_trait]
impl ChannelCallback for ChannelEvents {
    async fn close(&mut self, _: &Channel, close: CloseChannel) -> Result<(), AmqpError> {
        tracing::warn!(%close, "RabbitMQ closed a channel");
        if let Some(confirms) = &self.confirms {
            confirms.fail_all();
        }
        self.lost.notify_one();
        Ok(())
    }

    /// RabbitMQ cancels the consumer when the queue is deleted under it.
    async fn cancel(&mut self, _: &Channel, cancel: Cancel) -> Result<(), AmqpError> {
        tracing::warn!(consumer = %cancel.consumer_tag(), "RabbitMQ cancelled the consumer");
        self.lost.notify_one();
        Ok(())
    }

    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, AmqpError> {
        Ok(active)
    }

    async fn publish_ack(&mut self, _: &Channel, ack: Ack) {
        if let Some(confirms) = &self.confirms {
            confirms.settle(ack.delivery_tag(), ack.mutiple(), true);
        }
    }

    async fn publish_nack(&mut self, _: &Channel, nack: Nack) {
        if let Some(confirms) = &self.confirms {
            confirms.settle(nack.delivery_tag(), nack.multiple(), false);
        }
    }

    /// Only work is `mandatory`; its message id is its delivery tag.
    async fn publish_return(
        &mut self,
        _: &Channel,
        ret: Return,
        properties: BasicProperties,
        _: Vec<u8>,
    ) {
        tracing::warn!(%ret, "RabbitMQ returned an unroutable message");
        let tag = properties.message_id().and_then(|id| id.parse().ok());
        if let (Some(confirms), Some(tag)) = (&self.confirms, tag) {
            confirms.returned(tag);
        }
    }
}

#[cfg(test)]
mod tests {
    use amqprs::security::SecurityCredentials;

    use super::*;

    #[test]
    fn parses_a_full_url() {
        let arguments =
            connection_arguments("amqp://bob:s%40cret@rabbit:5673/feed%2fprod").unwrap();
        assert_eq!(arguments.get_host(), "rabbit");
        assert_eq!(arguments.get_port(), 5673);
        assert_eq!(arguments.get_virtual_host(), "feed/prod");
        assert!(arguments.get_credentials() == &SecurityCredentials::new_plain("bob", "s@cret"));
        assert_eq!(arguments.get_heartbeat(), DEFAULT_HEARTBEAT_SECS);
    }

    #[test]
    fn defaults_port_vhost_and_user() {
        for url in ["amqp://rabbit", "amqp://rabbit/", "amqp://rabbit:/%2f"] {
            let arguments = connection_arguments(url).unwrap();
            assert_eq!(arguments.get_port(), DEFAULT_PORT, "{url}");
            assert_eq!(arguments.get_virtual_host(), "/", "{url}");
            assert!(
                arguments.get_credentials() == &SecurityCredentials::new_plain("guest", "guest")
            );
        }
    }

    #[test]
    fn keeps_ipv6_brackets_and_reads_heartbeat() {
        let arguments = connection_arguments("amqp://u:p@[::1]:5672/v?heartbeat=30&x=y").unwrap();
        assert_eq!(arguments.get_host(), "[::1]");
        assert_eq!(arguments.get_port(), 5672);
        assert_eq!(arguments.get_virtual_host(), "v");
        assert_eq!(arguments.get_heartbeat(), 30);
        assert_eq!(
            connection_arguments("amqp://[::1]").unwrap().get_port(),
            DEFAULT_PORT
        );
    }

    #[test]
    fn rejects_bad_urls_without_echoing_them() {
        for url in [
            "http://u:secret@rabbit/",
            "amqps://u:secret@rabbit/",
            "amqp://u:secret@/",
            "amqp://u:secret@rabbit:99999/",
            "amqp://u:secret@rabbit/a/b",
            "amqp://u:secret@rabbit/%zz",
            "amqp://u:secret@rabbit/%f",
            "amqp://u:secret@rabbit/%ff",
            "amqp://u:secret@rabbit/?heartbeat=often",
        ] {
            let error = connection_arguments(url)
                .err()
                .unwrap_or_else(|| panic!("{url}"));
            assert!(!error.contains("secret"), "{error}");
        }
    }

    #[test]
    fn rejects_names_amqp_cannot_carry() {
        let settings = AmqpSettings {
            url: "amqp://rabbit".into(),
            instance_id: "x".repeat(MAX_SHORT_STRING),
        };
        assert!(Target::new(&settings).is_err());
    }

    #[test]
    fn settles_single_and_multiple_confirms() {
        let confirms = Confirms::default();
        let mut receivers: Vec<_> = (1..=4).map(|tag| confirms.expect(tag).unwrap()).collect();
        confirms.settle(2, false, true);
        assert_eq!(receivers[1].try_recv(), Ok(Outcome::Acked));
        assert!(receivers[0].try_recv().is_err());
        confirms.settle(3, true, false);
        assert_eq!(receivers[0].try_recv(), Ok(Outcome::Nacked));
        assert_eq!(receivers[2].try_recv(), Ok(Outcome::Nacked));
        assert!(receivers[3].try_recv().is_err());
        confirms.fail_all();
        assert!(matches!(
            receivers[3].try_recv(),
            Err(oneshot::error::TryRecvError::Closed)
        ));
        assert!(confirms.expect(5).is_err());
    }

    #[test]
    fn a_returned_message_fails_its_confirm_only() {
        let confirms = Confirms::default();
        let mut receivers: Vec<_> = (1..=4).map(|tag| confirms.expect(tag).unwrap()).collect();
        confirms.returned(2);
        confirms.returned(4);
        confirms.settle(2, true, true);
        assert_eq!(receivers[0].try_recv(), Ok(Outcome::Acked));
        assert_eq!(receivers[1].try_recv(), Ok(Outcome::Returned));
        confirms.settle(3, false, true);
        assert_eq!(receivers[2].try_recv(), Ok(Outcome::Acked));
        confirms.settle(4, false, true);
        assert_eq!(receivers[3].try_recv(), Ok(Outcome::Returned));
        assert!(confirms.state().returned.is_empty());
    }
}
