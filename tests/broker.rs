//! The RabbitMQ broker against a real RabbitMQ (`AMQP_URL`, default the
//! local one). Every test uses its own instance ids and routing keys, so
//! tests run in parallel; `Control` messages reach every instance, so tests
//! skip those they did not send.
//!
//! The work queue has a fixed name, so the tests of `Materialize` each run
//! in a virtual host of their own, made with `rabbitmqctl` (`RABBITMQCTL`,
//! default /usr/sbin/rabbitmqctl; it must reach the node behind `AMQP_URL`).
//! Every other instance here leaves the work queue alone: it is started
//! with its work sink closed, so that it never becomes the active consumer
//! of the default vhost's work queue, which other test binaries use.

#[path = "api/support/proxy.rs"]
#[allow(dead_code, reason = "freezing a proxy serves the api tests only")]
mod proxy;
#[path = "api/support/vhost.rs"]
mod vhost;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use amqprs::channel::{BasicConsumeArguments, QueueDeclareArguments, QueueDeleteArguments};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::{FieldTable, FieldValue};
use bytes::Bytes;
use futures_util::future::join_all;
use livefeed::broker::{
    AmqpSettings, Broker, BrokerError, BrokerKind, Delivery, Gap, Incoming, Settled, Topic, Work,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use url::Url;
use uuid::Uuid;

use proxy::TcpProxy;
use vhost::{Rabbitmqctl, Vhost, amqp_url};

/// For anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(10);
/// Under the 5 s a publish may wait for its confirm, with room for a
/// loaded machine.
const PROMPTLY: Duration = Duration::from_secs(3);
/// For conditions with no event to await: how often to look.
const POLL: Duration = Duration::from_millis(20);
const WORK_QUEUE: &str = "feed.materialize";
const QUEUE_EXPIRY: Duration = Duration::from_secs(60);
/// Routing keys one instance binds at once, as when many sockets connect
/// together, each following its authors.
const MANY_KEYS: usize = 2_000;
/// For `MANY_KEYS` binds, with room for a busy machine: on a loaded 2-core
/// machine they took 2 to 6 s applied one at a time, 0.8 to 2.5 s over the
/// broker's binding lanes.
const MANY_KEYS_WAIT: Duration = Duration::from_secs(30);

fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", Uuid::new_v4())
}

struct Instance {
    broker: Broker,
    deliveries: mpsc::Receiver<Incoming>,
    /// The gaps `next` skipped, in order.
    gaps: Vec<Gap>,
    queue: String,
    /// `None`: started with the work sink closed, taking no work.
    work: Option<mpsc::Receiver<Work>>,
}

impl Instance {
    /// Takes no `Materialize` work.
    fn start(url: &str) -> Self {
        Self::start_with(url, false)
    }

    /// Small sinks, so that tests also exercise backpressure.
    fn start_with(url: &str, working: bool) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let instance_id = Uuid::new_v4().to_string();
        let queue = format!("livefeed.instance.{instance_id}");
        let settings = AmqpSettings {
            url: url.to_owned(),
            instance_id,
            queue_expiry: QUEUE_EXPIRY,
        };
        let (sink, deliveries) = mpsc::channel(64);
        let (work_sink, work) = mpsc::channel(4);
        let work = working.then_some(work);
        Self {
            broker: Broker::start(BrokerKind::Amqp(settings), sink, work_sink),
            deliveries,
            gaps: Vec::new(),
            queue,
            work,
        }
    }

    /// Started and connected (a publish is confirmed); takes no work.
    async fn connected(url: &str) -> Self {
        Self::connected_with(url, false).await
    }

    /// Started, connected and consuming the work queue (it is consumed
    /// before a session publishes anything).
    async fn worker(url: &str) -> Self {
        Self::connected_with(url, true).await
    }

    async fn connected_with(url: &str, working: bool) -> Self {
        let instance = Self::start_with(url, working);
        let probe = unique("probe");
        until("the broker connects", || async {
            instance
                .broker
                .publish(Topic::Posts, &probe, Bytes::new())
                .await
                .is_ok()
        })
        .await;
        instance
    }

    async fn publish(&self, topic: Topic, key: &str, body: impl AsRef<[u8]>) {
        let body = Bytes::copy_from_slice(body.as_ref());
        let published = self.broker.publish(topic, key, body);
        match timeout(WAIT, published).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("publish failed: {error}"),
            Err(_) => panic!("publish did not return within {WAIT:?}"),
        }
    }

    async fn bind(&self, key: &str) {
        timeout(WAIT, self.broker.bind(key))
            .await
            .expect("bind applied in time");
    }

    async fn unbind(&self, key: &str) {
        timeout(WAIT, self.broker.unbind(key))
            .await
            .expect("unbind applied in time");
    }

    async fn next_incoming(&mut self) -> Incoming {
        timeout(WAIT, self.deliveries.recv())
            .await
            .expect("a delivery in time")
            .expect("the sink is open")
    }

    /// The next message; gaps on the way are kept in `gaps`.
    async fn next(&mut self) -> Delivery {
        loop {
            match self.next_incoming().await {
                Incoming::Message(delivery) => return delivery,
                Incoming::Gap(gap) => self.gaps.push(gap),
            }
        }
    }

    /// The next gap; the messages before it must not be among `unexpected`.
    async fn next_gap(&mut self, unexpected: &[&[u8]]) -> Gap {
        loop {
            match self.next_incoming().await {
                Incoming::Gap(gap) => return gap,
                Incoming::Message(delivery) => assert!(
                    !unexpected.contains(&&delivery.body[..]),
                    "{delivery:?} came before the gap"
                ),
            }
        }
    }

    /// Skips other tests' `Control` messages.
    async fn next_post(&mut self) -> Bytes {
        loop {
            let delivery = self.next().await;
            if delivery.topic == Topic::Posts {
                return delivery.body;
            }
        }
    }

    async fn expect_control(&mut self, body: &[u8]) {
        loop {
            let delivery = self.next().await;
            if delivery.topic == Topic::Control && delivery.body == body {
                return;
            }
        }
    }

    fn work(&mut self) -> &mut mpsc::Receiver<Work> {
        self.work.as_mut().expect("a worker")
    }

    async fn next_work(&mut self) -> Work {
        timeout(WAIT, self.work().recv())
            .await
            .expect("work in time")
            .expect("the work sink is open")
    }

    /// Takes the next work, checks it and marks it done.
    async fn do_work(&mut self, body: &str) {
        let work = self.next_work().await;
        assert_eq!(work.body, body.as_bytes());
        work.done
            .send(Settled::Applied)
            .expect("the broker waits for done");
    }

    /// Nothing more comes: the broker let go of the work sink.
    async fn expect_work_released(&mut self) {
        let work = timeout(WAIT, self.work().recv())
            .await
            .expect("work sink released in time");
        assert!(work.is_none(), "unexpected work: {work:?}");
    }

    async fn shutdown(&self) {
        timeout(WAIT, self.broker.shutdown())
            .await
            .expect("shutdown in time");
    }
}

/// How many messages wait in the work queue, consumers aside.
async fn ready_work(connection: &Connection) -> u32 {
    ready_in(connection, WORK_QUEUE).await
}

/// How many messages wait in `queue`, consumers aside.
async fn ready_in(connection: &Connection, queue: &str) -> u32 {
    let channel = timeout(WAIT, connection.open_channel(None))
        .await
        .expect("raw channel in time")
        .expect("raw channel opens");
    let declare = QueueDeclareArguments::new(queue).passive(true).finish();
    let (_, ready, _) = timeout(WAIT, channel.queue_declare(declare))
        .await
        .expect("passive declare answered in time")
        .expect("the queue exists")
        .expect("declare-ok");
    ready
}

/// Polls `condition` until it holds; only for conditions without an event
/// to await.
async fn until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + WAIT;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        sleep(POLL).await;
    }
}

fn rabbitmq_url() -> Url {
    Url::parse(&amqp_url()).expect("AMQP_URL is a URL")
}

async fn rabbitmq_address() -> SocketAddr {
    let url = rabbitmq_url();
    let host = url.host_str().expect("AMQP_URL has a host");
    let port = url.port().unwrap_or(5672);
    tokio::net::lookup_host((host, port))
        .await
        .expect("AMQP_URL host resolves")
        .next()
        .expect("AMQP_URL host has an address")
}

fn url_via(address: SocketAddr) -> String {
    vhost_via(&amqp_url(), address)
}

/// `url`, with its vhost, through `address`.
fn vhost_via(url: &str, address: SocketAddr) -> String {
    let mut url = Url::parse(url).expect("a URL");
    url.set_ip_host(address.ip())
        .expect("AMQP_URL takes a host");
    url.set_port(Some(address.port()))
        .expect("AMQP_URL takes a port");
    url.to_string()
}

/// A connection of our own, to look at RabbitMQ behind the broker's back.
async fn raw_connection() -> Connection {
    raw_connection_to(&amqp_url()).await
}

async fn raw_connection_to(url: &str) -> Connection {
    let url = Url::parse(url).expect("a URL");
    let address = rabbitmq_address().await;
    let vhost = match url.path().trim_start_matches('/') {
        "" => "/".to_owned(),
        vhost => vhost.replace("%2f", "/").replace("%2F", "/"),
    };
    let password = url.password().unwrap_or("guest");
    let mut arguments = OpenConnectionArguments::new(
        &address.ip().to_string(),
        address.port(),
        url.username(),
        password,
    );
    arguments.virtual_host(&vhost);
    timeout(WAIT, Connection::open(&arguments))
        .await
        .expect("raw connection in time")
        .expect("raw connection opens")
}

async fn queue_exists(connection: &Connection, queue: &str) -> bool {
    // A failed passive declare closes its channel: one channel per check.
    let channel = timeout(WAIT, connection.open_channel(None))
        .await
        .expect("raw channel in time")
        .expect("raw channel opens");
    let declare = QueueDeclareArguments::new(queue).passive(true).finish();
    timeout(WAIT, channel.queue_declare(declare))
        .await
        .expect("passive declare answered in time")
        .is_ok()
}

#[tokio::test]
async fn posts_reach_only_instances_bound_to_their_key() {
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let key = unique("author");
    let unbound = unique("author");

    b.bind(&key).await;
    a.publish(Topic::Posts, &unbound, b"not for b").await;
    a.publish(Topic::Posts, &key, b"\x00for b\xff").await;
    assert_eq!(b.next_post().await, &b"\x00for b\xff"[..]);

    b.unbind(&key).await;
    let marker = unique("author");
    b.bind(&marker).await;
    a.publish(Topic::Posts, &key, b"after unbind").await;
    a.publish(Topic::Posts, &marker, b"marker").await;
    assert_eq!(b.next_post().await, &b"marker"[..]);
}

#[tokio::test]
async fn binding_changes_apply_in_call_order() {
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let dropped = unique("author");
    let kept = unique("author");

    // Requested in this order, awaited in another: call order decides.
    let bind_dropped = b.broker.bind(&dropped);
    let bind_dropped_again = b.broker.bind(&dropped);
    let unbind_dropped = b.broker.unbind(&dropped);
    let unbind_kept = b.broker.unbind(&kept);
    let bind_kept = b.broker.bind(&kept);
    timeout(WAIT, async {
        bind_kept.await;
        unbind_kept.await;
        unbind_dropped.await;
        bind_dropped_again.await;
        bind_dropped.await;
    })
    .await
    .expect("binding changes applied in time");

    a.publish(Topic::Posts, &dropped, b"dropped").await;
    a.publish(Topic::Posts, &kept, b"kept").await;
    assert_eq!(b.next_post().await, &b"kept"[..]);
}

/// Keys `{prefix}.0` to `{prefix}.{count - 1}`.
fn keys(prefix: &str, count: usize) -> Vec<String> {
    (0..count).map(|n| format!("{prefix}.{n}")).collect()
}

/// Publishes each key as the body of a post with that key, then `marker`
/// (bound by the receiver): once the marker arrives, so has every post the
/// receiver was bound to receive.
async fn publish_keys_then(publisher: &Instance, keys: &[String], marker: &str) {
    let published = keys
        .iter()
        .map(|key| publisher.publish(Topic::Posts, key, key));
    join_all(published).await;
    publisher.publish(Topic::Posts, marker, marker).await;
}

/// The posts received up to `marker`, each once.
async fn posts_until(instance: &mut Instance, marker: &str) -> HashSet<String> {
    let mut received = HashSet::new();
    loop {
        let body = instance.next_post().await;
        let body = String::from_utf8(body.to_vec()).expect("UTF-8");
        if body == marker {
            return received;
        }
        assert!(received.insert(body.clone()), "delivered twice: {body}");
    }
}

fn owned<'a>(keys: impl IntoIterator<Item = &'a String>) -> HashSet<String> {
    keys.into_iter().cloned().collect()
}

#[tokio::test]
async fn many_bindings_requested_at_once_all_apply_in_bounded_time() {
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let keys = keys(&unique("author"), MANY_KEYS);

    let started = Instant::now();
    let applied: Vec<_> = keys.iter().map(|key| b.broker.bind(key)).collect();
    timeout(MANY_KEYS_WAIT, join_all(applied))
        .await
        .expect("every bind applied in time");
    eprintln!("{MANY_KEYS} binds applied in {:?}", started.elapsed());

    // A sample of the keys, then the last one, which is the marker.
    let (last, rest) = keys.split_last().expect("keys");
    let sample: Vec<String> = rest.iter().step_by(97).cloned().collect();
    publish_keys_then(&a, &sample, last).await;
    assert_eq!(posts_until(&mut b, last).await, owned(&sample));
    // Deletes the queue and its bindings.
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn a_repeat_completes_only_once_the_change_it_repeats_is_applied() {
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let marker = unique("marker");
    b.bind(&marker).await;
    let key = unique("author");

    for bound in [true, false] {
        // A backlog on every binding channel, so that the change is applied
        // well after it is requested. Not awaited: still applied.
        let backlog = keys(&unique("backlog"), MANY_KEYS / 4);
        for other in &backlog {
            drop(b.broker.bind(other));
        }
        let change = |broker: &Broker| match bound {
            true => broker.bind(&key),
            false => broker.unbind(&key),
        };
        drop(change(&b.broker));
        // The repeat is a no-op, but completes in turn.
        timeout(MANY_KEYS_WAIT, change(&b.broker))
            .await
            .expect("the repeat completes in time");
        publish_keys_then(&a, std::slice::from_ref(&key), &marker).await;
        let expected = match bound {
            true => HashSet::from([key.clone()]),
            false => HashSet::new(),
        };
        assert_eq!(
            posts_until(&mut b, &marker).await,
            expected,
            "bound: {bound}"
        );
    }
    b.shutdown().await;
    a.shutdown().await;
}

/// What one key is asked in one round, in call order (`true`: bind):
/// bind/unbind alternating, with repeats of the state just asked for.
fn round_calls(round: usize, key: usize) -> &'static [bool] {
    match (round + key) % 4 {
        0 => &[true, false, true],
        1 => &[false, true, false],
        2 => &[true, true],
        _ => &[false, true, false, false],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_changes_of_a_key_end_in_the_state_of_its_last_call() {
    const TASKS: usize = 8;
    const KEYS_PER_TASK: usize = 25;
    const ROUNDS: usize = 12;
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let marker = unique("marker");
    b.bind(&marker).await;
    let prefix = unique("author");

    // Each task owns its keys, so that it knows their last call; the
    // tasks' calls interleave.
    let mut tasks = JoinSet::new();
    for task in 0..TASKS {
        let broker = b.broker.clone();
        let keys = keys(&format!("{prefix}.{task}"), KEYS_PER_TASK);
        tasks.spawn(async move {
            let mut last = HashMap::new();
            for round in 0..ROUNDS {
                let mut this_round = Vec::new();
                for (n, key) in keys.iter().enumerate() {
                    for &bound in round_calls(round, n) {
                        let applied = match bound {
                            true => broker.bind(key),
                            false => broker.unbind(key),
                        };
                        // Dropping the others does not withdraw them.
                        if let Some((_, previous)) = last.insert(key.clone(), (bound, applied)) {
                            this_round.push(previous);
                        }
                    }
                }
                // Now and then, wait for the round's changes (all but each
                // key's last so far) to be applied.
                if round % 3 == 0 {
                    join_all(this_round).await;
                }
                tokio::task::yield_now().await;
            }
            // Only each key's last call is awaited: a repeat completes in
            // turn, after the change it repeats.
            let mut bound = Vec::new();
            for (key, (wanted, applied)) in last {
                applied.await;
                if wanted {
                    bound.push(key);
                }
            }
            (keys, bound)
        });
    }
    let results = timeout(MANY_KEYS_WAIT, tasks.join_all())
        .await
        .expect("binding changes applied in time");

    let all: Vec<String> = results.iter().flat_map(|(keys, _)| keys.clone()).collect();
    let expected = owned(results.iter().flat_map(|(_, bound)| bound));
    assert!(!expected.is_empty() && expected.len() < all.len());
    publish_keys_then(&a, &all, &marker).await;
    assert_eq!(posts_until(&mut b, &marker).await, expected);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn control_reaches_every_instance() {
    let mut a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let body = unique("follow");

    a.publish(Topic::Control, "", &body).await;
    a.expect_control(body.as_bytes()).await;
    b.expect_control(body.as_bytes()).await;
}

#[tokio::test]
async fn publish_fails_promptly_while_rabbitmq_is_unreachable() {
    let broker = Instance::start(&url_via(dead_address())).broker;

    // Spread over connection attempts and backoff; none waits for the
    // confirm timeout.
    for _ in 0..3 {
        let published = timeout(PROMPTLY, broker.publish(Topic::Posts, "k", Bytes::new()))
            .await
            .expect("publish returns promptly");
        assert!(
            matches!(published, Err(BrokerError::Unavailable(_))),
            "{published:?}"
        );
        sleep(Duration::from_millis(150)).await;
    }
    // Disconnected, a binding change completes once recorded.
    timeout(WAIT, broker.bind("k"))
        .await
        .expect("bind recorded in time");
    timeout(WAIT, broker.shutdown())
        .await
        .expect("shutdown in time");
    let published = broker.publish(Topic::Posts, "k", Bytes::new()).await;
    assert!(
        matches!(published, Err(BrokerError::Closed)),
        "{published:?}"
    );
}

/// A local address nothing listens on.
fn dead_address() -> SocketAddr {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = closed.local_addr().expect("bound address");
    drop(closed);
    address
}

#[tokio::test]
async fn with_several_urls_a_dead_node_is_skipped() {
    let urls = format!(
        "{}, {}",
        url_via(dead_address()),
        url_via(rabbitmq_address().await)
    );
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&urls).await;
    let key = unique("author");
    b.bind(&key).await;
    a.publish(Topic::Posts, &key, b"to b").await;
    assert_eq!(b.next_post().await, &b"to b"[..]);
    b.publish(Topic::Posts, &key, b"from b").await;
    assert_eq!(b.next_post().await, &b"from b"[..]);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn an_invalid_url_leaves_the_broker_unavailable() {
    let broker = Instance::start("amqp://guest:guest@127.0.0.1:notaport/%2f").broker;

    let published = broker.publish(Topic::Control, "", Bytes::new()).await;
    assert!(
        matches!(published, Err(BrokerError::Unavailable(_))),
        "{published:?}"
    );
    timeout(WAIT, broker.bind("k"))
        .await
        .expect("bind completes");
    timeout(WAIT, broker.shutdown())
        .await
        .expect("shutdown in time");
    let published = broker.publish(Topic::Control, "", Bytes::new()).await;
    assert!(
        matches!(published, Err(BrokerError::Closed)),
        "{published:?}"
    );
}

#[tokio::test]
async fn reconnects_after_the_connection_is_cut() {
    let mut proxy = TcpProxy::start(rabbitmq_address().await).await;
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&url_via(proxy.address())).await;
    let key = unique("author");
    b.bind(&key).await;
    a.publish(Topic::Posts, &key, b"before").await;
    assert_eq!(b.next_post().await, &b"before"[..]);

    proxy.cut();
    // Probes on a key nobody binds: one that slips through before the cut
    // must not show up among b's posts.
    let probe = unique("probe");
    until("b notices the loss", || async {
        let published = b.broker.publish(Topic::Posts, &probe, Bytes::new()).await;
        matches!(published, Err(BrokerError::Unavailable(_)))
    })
    .await;
    // The queue and its binding outlive the connection.
    a.publish(Topic::Posts, &key, b"while cut").await;
    proxy.restore().await;

    until("b reconnects", || async { b.broker.reconnects() >= 1 }).await;
    // Delivery is at least once: "before" comes again if its ack was lost
    // with the link (the hub skips such repeats).
    let mut next = b.next_post().await;
    while next == b"before"[..] {
        next = b.next_post().await;
    }
    assert_eq!(next, &b"while cut"[..]);
    a.publish(Topic::Posts, &key, b"after").await;
    assert_eq!(b.next_post().await, &b"after"[..]);
    assert_eq!(b.broker.reconnects(), 1);
}

#[tokio::test]
async fn a_gap_comes_ahead_of_every_session_s_messages() {
    let mut proxy = TcpProxy::start(rabbitmq_address().await).await;
    let a = Instance::connected(&amqp_url()).await;
    let before_start = SystemTime::now();
    let mut b = Instance::start(&url_via(proxy.address()));
    timeout(WAIT, b.broker.connected())
        .await
        .expect("connected in time");
    assert!(b.broker.is_connected());
    // Nothing is in the sink before it: not even other tests' `Control`.
    let Incoming::Gap(first) = b.next_incoming().await else {
        panic!("the first thing in the sink is not a gap");
    };
    assert!(before_start <= first.since && first.since <= SystemTime::now());
    assert_eq!(b.broker.gaps(), 1);
    let key = unique("author");
    b.bind(&key).await;
    a.publish(Topic::Posts, &key, b"before").await;
    assert_eq!(b.next_post().await, &b"before"[..]);

    let cut = SystemTime::now();
    proxy.cut();
    let probe = unique("probe");
    until("b notices the loss", || async {
        let published = b.broker.publish(Topic::Posts, &probe, Bytes::new()).await;
        matches!(published, Err(BrokerError::Unavailable(_)))
    })
    .await;
    assert!(!b.broker.is_connected());
    a.publish(Topic::Posts, &key, b"while cut").await;
    proxy.restore().await;
    timeout(WAIT, b.broker.connected())
        .await
        .expect("reconnected in time");

    let second = b.next_gap(&[b"while cut"]).await;
    assert!(second.since <= cut, "{second:?} is later than the cut");
    assert!(first.since <= second.since);
    assert_eq!(b.next_post().await, &b"while cut"[..]);
    assert_eq!(b.broker.gaps(), 2);
    assert_eq!(b.broker.reconnects(), 1);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn an_instance_queue_deleted_from_outside_is_declared_anew_after_a_gap() {
    let raw = raw_connection().await;
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let key = unique("author");
    b.bind(&key).await;
    a.publish(Topic::Posts, &key, b"before").await;
    assert_eq!(b.next_post().await, &b"before"[..]);
    assert_eq!(b.gaps.len(), 1);

    // As when the queue's node dies while b is connected to another one.
    let channel = timeout(WAIT, raw.open_channel(None))
        .await
        .expect("raw channel in time")
        .expect("raw channel opens");
    let deleted = SystemTime::now();
    timeout(
        WAIT,
        channel.queue_delete(QueueDeleteArguments::new(&b.queue)),
    )
    .await
    .expect("delete answered in time")
    .expect("the queue is deleted");

    let gap = b.next_gap(&[]).await;
    assert!(gap.since <= deleted, "{gap:?} is later than the deletion");
    assert!(queue_exists(&raw, &b.queue).await);
    // Its bindings were restored before the gap.
    a.publish(Topic::Posts, &key, b"after").await;
    assert_eq!(b.next_post().await, &b"after"[..]);
    assert_eq!(b.broker.reconnects(), 1);
    assert_eq!(b.broker.gaps(), 2);
    b.shutdown().await;
    a.shutdown().await;
}

/// On the single-threaded test runtime, blocking the thread starves every
/// task of the broker, as a frozen process would.
#[tokio::test]
async fn a_session_that_was_starved_verifies_its_queue_and_carries_on() {
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let key = unique("author");
    b.bind(&key).await;

    // At least 4 s past a tick's schedule (beyond the 3 s after which a
    // late tick checks the queue), well within the heartbeat timeout.
    std::thread::sleep(Duration::from_secs(5));
    a.publish(Topic::Posts, &key, b"after the pause").await;
    assert_eq!(b.next_post().await, &b"after the pause"[..]);
    // No event tells that the check is done: a second tick is due by
    // then, behind it.
    sleep(Duration::from_millis(1_500)).await;
    a.publish(Topic::Posts, &key, b"later").await;
    assert_eq!(b.next_post().await, &b"later"[..]);
    assert_eq!(b.broker.reconnects(), 0);
    assert_eq!(b.broker.gaps(), 1);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn bindings_changed_while_cut_are_restored_on_reconnect() {
    const KEYS: usize = 300;
    let mut proxy = TcpProxy::start(rabbitmq_address().await).await;
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&url_via(proxy.address())).await;
    let marker = unique("marker");
    b.bind(&marker).await;
    let prefix = unique("author");
    let before = keys(&format!("{prefix}.before"), KEYS);
    let applied: Vec<_> = before.iter().map(|key| b.broker.bind(key)).collect();
    timeout(WAIT, join_all(applied))
        .await
        .expect("binds applied in time");

    // Cut while these are still on their way: those the lost session had
    // not applied complete as recorded, and the next session applies them.
    let in_flight = keys(&format!("{prefix}.in-flight"), MANY_KEYS / 2);
    let applied: Vec<_> = in_flight.iter().map(|key| b.broker.bind(key)).collect();
    proxy.cut();
    timeout(WAIT, join_all(applied))
        .await
        .expect("binds applied or recorded in time");
    let probe = unique("probe");
    until("b notices the loss", || async {
        let published = b.broker.publish(Topic::Posts, &probe, Bytes::new()).await;
        matches!(published, Err(BrokerError::Unavailable(_)))
    })
    .await;
    // Recorded while cut: the queue keeps its old bindings meanwhile.
    let (dropped, kept) = before.split_at(KEYS / 2);
    let added = keys(&format!("{prefix}.added"), KEYS);
    for key in dropped {
        b.unbind(key).await;
    }
    for key in &added {
        b.bind(key).await;
    }
    proxy.restore().await;
    until("b reconnects", || async { b.broker.reconnects() >= 1 }).await;

    // Bindings are restored before the reconnect counts.
    let all: Vec<String> = before
        .iter()
        .chain(&added)
        .chain(&in_flight)
        .cloned()
        .collect();
    publish_keys_then(&a, &all, &marker).await;
    let expected = owned(kept.iter().chain(&added).chain(&in_flight));
    assert_eq!(posts_until(&mut b, &marker).await, expected);
    assert_eq!(b.broker.reconnects(), 1);
    b.shutdown().await;
    a.shutdown().await;
}

#[tokio::test]
async fn shutdown_with_binding_changes_on_their_way_completes_them() {
    let raw = raw_connection().await;
    let b = Instance::connected(&amqp_url()).await;
    let keys = keys(&unique("author"), MANY_KEYS);
    let mut applied: Vec<_> = keys.iter().map(|key| b.broker.bind(key)).collect();
    // Once the first change is applied the lanes are going: shut down with
    // requests in hand and queued.
    timeout(WAIT, applied.remove(0))
        .await
        .expect("the first change is applied");

    timeout(WAIT, b.broker.shutdown())
        .await
        .expect("shutdown in time");
    // Applied, or dropped with the session: either way complete.
    timeout(WAIT, join_all(applied))
        .await
        .expect("every change completes");
    assert!(!queue_exists(&raw, &b.queue).await);
}

#[tokio::test]
async fn shutdown_deletes_the_queue_and_stops_the_broker() {
    let raw = raw_connection().await;
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let key = unique("author");
    b.bind(&key).await;
    assert!(queue_exists(&raw, &b.queue).await);

    timeout(WAIT, b.broker.shutdown())
        .await
        .expect("shutdown in time");

    assert!(!queue_exists(&raw, &b.queue).await);
    let published = b.broker.publish(Topic::Posts, &key, Bytes::new()).await;
    assert!(
        matches!(published, Err(BrokerError::Closed)),
        "{published:?}"
    );
    a.publish(Topic::Posts, &key, b"too late").await;
    // The broker lets go of the sink; what is left in it was delivered
    // before the shutdown (other tests' `Control` messages).
    timeout(WAIT, async {
        while let Some(incoming) = b.deliveries.recv().await {
            if let Incoming::Message(delivery) = incoming {
                assert_ne!(delivery.body, &b"too late"[..]);
            }
        }
    })
    .await
    .expect("sink released in time");
    timeout(WAIT, raw.close())
        .await
        .expect("close in time")
        .expect("raw connection closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_publishes_are_each_confirmed_and_delivered_once() {
    const TASKS: usize = 50;
    const PER_TASK: usize = 40;
    let a = Instance::connected(&amqp_url()).await;
    let mut b = Instance::connected(&amqp_url()).await;
    let key = unique("author");
    b.bind(&key).await;

    let mut publishers = JoinSet::new();
    for task in 0..TASKS {
        let (broker, key) = (a.broker.clone(), key.clone());
        publishers.spawn(async move {
            for message in 0..PER_TASK {
                let body = Bytes::from(format!("{task}:{message}"));
                broker.publish(Topic::Posts, &key, body).await?;
            }
            Ok::<_, BrokerError>(())
        });
    }
    let received = timeout(Duration::from_secs(60), async {
        let mut received = HashSet::new();
        while received.len() < TASKS * PER_TASK {
            let body = b.next_post().await;
            assert!(received.insert(body.clone()), "delivered twice: {body:?}");
        }
        received
    })
    .await
    .expect("every message delivered in time");
    let expected: HashSet<Bytes> = (0..TASKS)
        .flat_map(|task| (0..PER_TASK).map(move |message| Bytes::from(format!("{task}:{message}"))))
        .collect();
    assert_eq!(received, expected);
    let published = timeout(WAIT, publishers.join_all())
        .await
        .expect("publishers end in time");
    for result in published {
        result.expect("publish confirmed");
    }

    // Nothing more is queued behind them.
    a.publish(Topic::Posts, &key, b"end").await;
    assert_eq!(b.next_post().await, &b"end"[..]);
}

/// The first work either instance gets, and which of them got it.
async fn first_work(first: &mut Instance, second: &mut Instance) -> (Work, bool) {
    timeout(WAIT, async {
        tokio::select! {
            Some(work) = first.work().recv() => (work, true),
            Some(work) = second.work().recv() => (work, false),
        }
    })
    .await
    .expect("work in time")
}

#[tokio::test]
async fn work_goes_in_order_to_one_active_consumer_then_fails_over() {
    let vhost = Vhost::create().await;
    let raw = raw_connection_to(vhost.url()).await;
    let publisher = Instance::connected(vhost.url()).await;
    let mut first = Instance::worker(vhost.url()).await;
    let mut second = Instance::worker(vhost.url()).await;

    // More than the work sink and the prefetch hold: backpressure, in order.
    let before: Vec<String> = (0..40).map(|n| format!("before {n}")).collect();
    for body in &before {
        publisher.publish(Topic::Materialize, "", body).await;
    }
    let (work, first_is_active) = first_work(&mut first, &mut second).await;
    let (mut active, mut standby) = match first_is_active {
        true => (first, second),
        false => (second, first),
    };
    assert_eq!(work.body, before[0].as_bytes());
    work.done
        .send(Settled::Applied)
        .expect("the broker waits for done");
    let (last, before) = before.split_last().expect("work");
    for body in &before[1..] {
        active.do_work(body).await;
    }
    let last_work = active.next_work().await;
    assert_eq!(last_work.body, last.as_bytes());

    // Done while the instance shuts down: still acked, not given back.
    let probe = unique("probe");
    tokio::join!(active.shutdown(), async {
        until("the shutdown starts", || async {
            let published = active.broker.publish(Topic::Posts, &probe, Bytes::new());
            matches!(published.await, Err(BrokerError::Closed))
        })
        .await;
        let done = last_work.done.send(Settled::Applied);
        done.expect("shutdown waits for the work handed out");
    });
    active.expect_work_released().await;
    let after: Vec<String> = (0..10).map(|n| format!("after {n}")).collect();
    for body in &after {
        publisher.publish(Topic::Materialize, "", body).await;
    }
    // First comes the first of these: the standby got none of the others.
    for body in &after {
        standby.do_work(body).await;
    }

    standby.shutdown().await;
    standby.expect_work_released().await;
    // Everything was acked: a shutdown gives back whatever was not.
    assert_eq!(ready_work(&raw).await, 0);
    publisher.shutdown().await;
}

#[tokio::test]
async fn work_handed_back_is_redelivered_and_acked_once_done() {
    let vhost = Vhost::create().await;
    let raw = raw_connection_to(vhost.url()).await;
    let publisher = Instance::connected(vhost.url()).await;
    let mut first = Instance::worker(vhost.url()).await;
    let mut second = Instance::worker(vhost.url()).await;

    for body in ["one", "two", "three"] {
        publisher.publish(Topic::Materialize, "", body).await;
    }
    let mut seen = Vec::new();
    let mut done = HashSet::new();
    while done.len() < 3 {
        let (work, _) = first_work(&mut first, &mut second).await;
        let body = String::from_utf8(work.body.to_vec()).expect("UTF-8");
        seen.push(body.clone());
        if body == "two" && seen.len() == 2 {
            // Handed back: dropping `done` requeues it.
            drop(work.done);
        } else {
            work.done
                .send(Settled::Applied)
                .expect("the broker waits for done");
            assert!(done.insert(body), "done twice: {seen:?}");
        }
    }
    // "three" was on its way before "two" went back to the queue.
    assert_eq!(seen, ["one", "two", "three", "two"]);

    first.shutdown().await;
    second.shutdown().await;
    first.expect_work_released().await;
    second.expect_work_released().await;
    assert_eq!(ready_work(&raw).await, 0);
    publisher.shutdown().await;
}

#[tokio::test]
async fn work_not_done_before_a_connection_cut_is_redelivered() {
    // More than the broker prefetches: the rest waits in the queue, and an
    // ack that reaches RabbitMQ lets one more out.
    const WORK: usize = 50;
    let vhost = Vhost::create().await;
    let raw = raw_connection_to(vhost.url()).await;
    let mut proxy = TcpProxy::start(rabbitmq_address().await).await;
    let publisher = Instance::connected(vhost.url()).await;
    let mut worker = Instance::worker(&vhost_via(vhost.url(), proxy.address())).await;
    let bodies: Vec<String> = (0..WORK).map(|n| format!("work {n}")).collect();
    for body in &bodies {
        publisher.publish(Topic::Materialize, "", body).await;
    }

    let waiting = ready_work(&raw).await;
    worker.do_work(&bodies[0]).await;
    until("the ack reaches RabbitMQ", || async {
        ready_work(&raw).await < waiting
    })
    .await;
    // Handed out, not done.
    let one = worker.next_work().await;
    let two = worker.next_work().await;
    assert_eq!(
        (&one.body[..], &two.body[..]),
        (bodies[1].as_bytes(), bodies[2].as_bytes())
    );

    proxy.cut();
    let probe = unique("probe");
    until("the worker notices the loss", || async {
        let published = worker
            .broker
            .publish(Topic::Posts, &probe, Bytes::new())
            .await;
        matches!(published, Err(BrokerError::Unavailable(_)))
    })
    .await;
    publisher
        .publish(Topic::Materialize, "", "after the cut")
        .await;
    // RabbitMQ took back what the lost connection held.
    until("all unacked work is back in the queue", || async {
        ready_work(&raw).await == WORK as u32
    })
    .await;
    proxy.restore().await;
    until("the worker reconnects", || async {
        worker.broker.reconnects() >= 1
    })
    .await;

    // Done too late. The new channel numbers its deliveries from 1 again:
    // acking these tags there would ack "work 2" and "work 3" unapplied.
    let _ = two.done.send(Settled::Applied);
    let _ = one.done.send(Settled::Applied);
    let mut expected: Vec<String> = bodies[1..].to_vec();
    expected.push("after the cut".into());
    let mut remaining = expected.clone();
    let mut applied = Vec::new();
    let mut handed_back = false;
    while !remaining.is_empty() {
        let work = worker.next_work().await;
        // Handed out by the lost session and left in the sink: nobody
        // waits for it any more, and it comes again.
        if work.done.is_closed() {
            continue;
        }
        let body = String::from_utf8(work.body.to_vec()).expect("UTF-8");
        // Handed back once more, on the new channel: requeued, not acked.
        if body == bodies[2] && !handed_back {
            handed_back = true;
            drop(work.done);
            continue;
        }
        work.done
            .send(Settled::Applied)
            .expect("the broker waits for done");
        let position = remaining
            .iter()
            .position(|left| *left == body)
            .unwrap_or_else(|| panic!("unexpected or repeated work: {body}"));
        remaining.remove(position);
        applied.push(body);
    }
    // In order, but for the one handed back, which came again later.
    let without = |list: &[String]| -> Vec<String> {
        list.iter()
            .filter(|body| **body != bodies[2])
            .cloned()
            .collect()
    };
    assert_eq!(without(&applied), without(&expected));
    assert_eq!(worker.broker.reconnects(), 1);

    worker.shutdown().await;
    worker.expect_work_released().await;
    assert_eq!(ready_work(&raw).await, 0);
    publisher.shutdown().await;
}

#[tokio::test]
async fn materialize_is_confirmed_persistent_and_unavailable_without_rabbitmq() {
    let vhost = Vhost::create().await;
    let raw = raw_connection_to(vhost.url()).await;
    // Declares the work queue, and takes no work.
    let publisher = Instance::connected(vhost.url()).await;

    for n in 0..3 {
        publisher
            .publish(Topic::Materialize, "ignored", format!("work {n}"))
            .await;
    }
    // Confirmed means queued.
    assert_eq!(ready_work(&raw).await, 3);
    let channel = timeout(WAIT, raw.open_channel(None))
        .await
        .expect("raw channel in time")
        .expect("raw channel opens");
    // Declared as specified: a different declaration would close the channel.
    let mut arguments = FieldTable::new();
    arguments.insert("x-queue-type".try_into().unwrap(), "quorum".into());
    arguments.insert(
        "x-single-active-consumer".try_into().unwrap(),
        FieldValue::t(true),
    );
    arguments.insert("x-delivery-limit".try_into().unwrap(), FieldValue::I(20));
    arguments.insert("x-dead-letter-exchange".try_into().unwrap(), "".into());
    arguments.insert(
        "x-dead-letter-routing-key".try_into().unwrap(),
        "feed.materialize.dead".into(),
    );
    let declare = QueueDeclareArguments::durable_client_named(WORK_QUEUE)
        .arguments(arguments)
        .finish();
    timeout(WAIT, channel.queue_declare(declare))
        .await
        .expect("declare answered in time")
        .expect(
            "the work queue is a durable quorum queue with a single active consumer, \
             dead-lettering to feed.materialize.dead",
        );
    // basic.get is refused on a quorum queue with a single active consumer.
    let consume = BasicConsumeArguments::new(WORK_QUEUE, "")
        .manual_ack(false)
        .finish();
    let (_, mut messages) = timeout(WAIT, channel.basic_consume_rx(consume))
        .await
        .expect("consume answered in time")
        .expect("consume succeeds");
    let message = timeout(WAIT, messages.recv())
        .await
        .expect("a message in time")
        .expect("a message");
    let (Some(properties), Some(body)) = (message.basic_properties, message.content) else {
        panic!("a message with properties and a body");
    };
    assert_eq!(body, b"work 0");
    assert_eq!(properties.delivery_mode(), Some(2), "persistent");

    // Without its queue, work is refused rather than dropped.
    let delete = QueueDeleteArguments::new(WORK_QUEUE);
    timeout(WAIT, channel.queue_delete(delete))
        .await
        .expect("delete answered in time")
        .expect("the work queue is deleted");
    let published = timeout(
        WAIT,
        publisher
            .broker
            .publish(Topic::Materialize, "", Bytes::from_static(b"lost")),
    )
    .await
    .expect("publish returns in time");
    assert!(
        matches!(published, Err(BrokerError::Unavailable(_))),
        "{published:?}"
    );
    // The return did not break the publish channel.
    publisher.publish(Topic::Posts, &unique("probe"), b"").await;
    assert_eq!(publisher.broker.reconnects(), 0);
    publisher.shutdown().await;

    let unreachable = Instance::start_with(&vhost_via(vhost.url(), dead_address()), true);
    let published = timeout(
        PROMPTLY,
        unreachable
            .broker
            .publish(Topic::Materialize, "", Bytes::from_static(b"nowhere")),
    )
    .await
    .expect("publish returns promptly");
    assert!(
        matches!(published, Err(BrokerError::Unavailable(_))),
        "{published:?}"
    );
    unreachable.shutdown().await;
}

/// `rabbitmqctl list_queues` of `vhost`: each queue's type and whether it
/// is durable, by name.
async fn queue_types(vhost: &Vhost) -> HashMap<String, Vec<String>> {
    Rabbitmqctl::local()
        .run(&[
            "list_queues",
            "-p",
            vhost.name(),
            "--no-table-headers",
            "name",
            "type",
            "durable",
        ])
        .await
        .lines()
        .filter_map(|line| line.split_once('\t'))
        .map(|(name, rest)| {
            (
                name.to_owned(),
                rest.split_whitespace().map(str::to_owned).collect(),
            )
        })
        .collect()
}

#[tokio::test]
async fn the_work_queue_is_quorum_and_instance_queues_classic_not_durable() {
    let vhost = Vhost::create().await;
    let instance = Instance::connected(vhost.url()).await;
    let types = queue_types(&vhost).await;
    assert_eq!(types[WORK_QUEUE], ["quorum", "true"], "{types:?}");
    assert_eq!(types[&instance.queue], ["classic", "false"], "{types:?}");
    instance.shutdown().await;
}

#[tokio::test]
async fn closing_the_work_sink_settles_what_was_handed_out_and_fails_over() {
    let vhost = Vhost::create().await;
    let raw = raw_connection_to(vhost.url()).await;
    let publisher = Instance::connected(vhost.url()).await;
    let mut first = Instance::worker(vhost.url()).await;
    let mut second = Instance::worker(vhost.url()).await;

    for body in ["one", "two"] {
        publisher.publish(Topic::Materialize, "", body).await;
    }
    let (one, first_is_active) = first_work(&mut first, &mut second).await;
    let (mut active, mut standby) = match first_is_active {
        true => (first, second),
        false => (second, first),
    };
    assert_eq!(one.body, &b"one"[..]);

    // "two", if already in the sink, is dropped with it: handed back.
    drop(active.work.take());
    // Still awaited: the instance waits for work it handed out.
    one.done
        .send(Settled::Applied)
        .expect("the broker waits for done");
    publisher.publish(Topic::Materialize, "", "three").await;
    // A quorum queue returns work handed back behind what came since.
    let mut done = HashSet::new();
    for _ in 0..2 {
        let work = standby.next_work().await;
        work.done
            .send(Settled::Applied)
            .expect("the broker waits for done");
        done.insert(work.body);
    }
    assert_eq!(
        done,
        HashSet::from([Bytes::from("two"), Bytes::from("three")])
    );
    // The instance itself carries on.
    active.publish(Topic::Posts, &unique("probe"), b"").await;
    assert_eq!(active.broker.reconnects(), 0);

    active.shutdown().await;
    standby.shutdown().await;
    standby.expect_work_released().await;
    assert_eq!(ready_work(&raw).await, 0);
    publisher.shutdown().await;
}

/// The worker settles a batch at once, in any order: the applied runs are
/// acked (one multiple ack each), a dead letter inside the batch goes to
/// the dead-letter queue, and nothing comes back after the worker stops.
#[tokio::test]
async fn a_batch_settled_at_once_is_acked_around_its_dead_letter() {
    let vhost = Vhost::create().await;
    let raw = raw_connection_to(vhost.url()).await;
    let publisher = Instance::connected(vhost.url()).await;
    let mut worker = Instance::worker(vhost.url()).await;
    let bodies = ["one", "two", "three", "four"];
    for body in bodies {
        publisher.publish(Topic::Materialize, "", body).await;
    }
    let mut batch = Vec::new();
    for body in bodies {
        let work = worker.next_work().await;
        assert_eq!(work.body, body.as_bytes());
        batch.push(work);
    }
    let [one, two, three, four] = <[Work; 4]>::try_from(batch).expect("four");
    // "two" done ahead of "one" waits for it rather than being acked alone.
    for (work, settled) in [
        (two, Settled::Applied),
        (one, Settled::Applied),
        (three, Settled::DeadLetter),
        (four, Settled::Applied),
    ] {
        work.done.send(settled).expect("the broker waits for done");
    }
    until("the dead letter reaches its queue", || async {
        ready_in(&raw, "feed.materialize.dead").await == 1
    })
    .await;

    // Closing the channel would requeue anything left unacked.
    worker.shutdown().await;
    worker.expect_work_released().await;
    assert_eq!(ready_work(&raw).await, 0);
    assert_eq!(ready_in(&raw, "feed.materialize.dead").await, 1);
    publisher.shutdown().await;
}
