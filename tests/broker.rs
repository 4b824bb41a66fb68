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
//!
//! This file is the harness (an [`Instance`] of the broker, raw AMQP
//! connections, waiting); the tests are in `broker/`: `routing.rs`,
//! `connection.rs` (cuts, gaps, shutdown) and `work.rs` (the work queue).

#[path = "api/support/ports.rs"]
mod ports;
#[path = "api/support/proxy.rs"]
#[allow(dead_code, reason = "freezing a proxy serves the api tests only")]
mod proxy;
#[path = "api/support/vhost.rs"]
mod vhost;

#[path = "broker/connection.rs"]
mod connection;
#[path = "broker/routing.rs"]
mod routing;
#[path = "broker/work.rs"]
mod work;

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

/// A local address nothing listens on.
fn dead_address() -> SocketAddr {
    ports::free_local_port()
}
