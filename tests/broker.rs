//! The RabbitMQ broker against a real RabbitMQ (`AMQP_URL`, default the
//! local one). Every test uses its own instance ids and routing keys, so
//! tests run in parallel; `Control` messages reach every instance, so tests
//! skip those they did not send.

#[path = "api/support/proxy.rs"]
mod proxy;

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use amqprs::channel::QueueDeclareArguments;
use amqprs::connection::{Connection, OpenConnectionArguments};
use bytes::Bytes;
use livefeed::broker::{AmqpSettings, Broker, BrokerError, BrokerKind, Delivery, Topic};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, timeout};
use url::Url;
use uuid::Uuid;

use proxy::TcpProxy;

/// For anything that should happen promptly.
const WAIT: Duration = Duration::from_secs(10);
/// Well under the 5 s a publish may wait for its confirm.
const PROMPTLY: Duration = Duration::from_secs(1);
/// For conditions with no event to await: how often to look.
const POLL: Duration = Duration::from_millis(20);

fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", Uuid::new_v4())
}

struct Instance {
    broker: Broker,
    deliveries: mpsc::Receiver<Delivery>,
    queue: String,
}

impl Instance {
    /// A small sink, so that tests also exercise backpressure.
    fn start(url: &str) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .try_init();
        let instance_id = Uuid::new_v4().to_string();
        let queue = format!("livefeed.instance.{instance_id}");
        let settings = AmqpSettings {
            url: url.to_owned(),
            instance_id,
        };
        let (sink, deliveries) = mpsc::channel(64);
        Self {
            broker: Broker::start(BrokerKind::Amqp(settings), sink),
            deliveries,
            queue,
        }
    }

    /// Started and connected (a publish is confirmed).
    async fn connected(url: &str) -> Self {
        let instance = Self::start(url);
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

    async fn next(&mut self) -> Delivery {
        timeout(WAIT, self.deliveries.recv())
            .await
            .expect("a delivery in time")
            .expect("the sink is open")
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
    let mut url = rabbitmq_url();
    url.set_ip_host(address.ip())
        .expect("AMQP_URL takes a host");
    url.set_port(Some(address.port()))
        .expect("AMQP_URL takes a port");
    url.to_string()
}

/// A connection of our own, to look at RabbitMQ behind the broker's back.
async fn raw_connection() -> Connection {
    let url = rabbitmq_url();
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
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let address = closed.local_addr().expect("bound address");
    drop(closed);
    let broker = Instance::start(&url_via(address)).broker;

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
    assert_eq!(b.next_post().await, &b"while cut"[..]);
    a.publish(Topic::Posts, &key, b"after").await;
    assert_eq!(b.next_post().await, &b"after"[..]);
    assert_eq!(b.broker.reconnects(), 1);
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
        while let Some(delivery) = b.deliveries.recv().await {
            assert_ne!(delivery.body, &b"too late"[..]);
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
