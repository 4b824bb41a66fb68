//! Faults of the feed cache, on both brokers: Redis taken away (through a
//! proxy the test cuts) must stop neither posting nor live delivery, and the
//! cache must be right again once Redis is back; a feed event that can
//! never be applied is dead-lettered and the others go on.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use livefeed::broker::{Broker, BrokerKind, Incoming, MemoryBus, Topic};
use tokio::sync::mpsc;

use crate::feed_cache::{cached_feed, prefix, redis, redis_url};
use crate::support::{
    Brokers, FeedClient, Rabbitmqctl, TcpProxy, TestApp, TestUser, Vhost, fresh_database,
    instances_connected, rabbit_broker,
};

const DEAD_LETTERS: &str = "livefeed_feed_dead_letters_total";
/// More posts than the in-process work channel and a few dozen besides: the
/// count at which the relay used to stall while Redis was away.
const POSTS_DURING_OUTAGE: usize = 100;

#[tokio::test]
async fn redis_away_stops_neither_posts_nor_live_delivery_memory() {
    redis_away_stops_neither_posts_nor_live_delivery(Brokers::Memory).await;
}

#[tokio::test]
async fn redis_away_stops_neither_posts_nor_live_delivery_rabbitmq() {
    redis_away_stops_neither_posts_nor_live_delivery(Brokers::RabbitMq).await;
}

#[tokio::test]
async fn bad_feed_events_are_dead_lettered_and_the_rest_go_on_memory() {
    bad_feed_events_are_dead_lettered_and_the_rest_go_on(Brokers::Memory).await;
}

#[tokio::test]
async fn bad_feed_events_are_dead_lettered_and_the_rest_go_on_rabbitmq() {
    bad_feed_events_are_dead_lettered_and_the_rest_go_on(Brokers::RabbitMq).await;
}

/// One instance on the chosen broker, and what the test needs to reach
/// that broker itself.
struct Deployment {
    app: TestApp,
    bus: MemoryBus,
    vhost: Option<Arc<Vhost>>,
}

impl Deployment {
    async fn start(brokers: Brokers, extra_args: &[&str]) -> Self {
        let database = fresh_database().await;
        let bus = MemoryBus::new();
        match brokers {
            Brokers::Memory => Self {
                app: TestApp::spawn_on_broker(
                    &database,
                    extra_args,
                    BrokerKind::Memory(bus.clone()),
                )
                .await,
                bus,
                vhost: None,
            },
            Brokers::RabbitMq => {
                let vhost = Arc::new(Vhost::create().await);
                let mut app =
                    TestApp::spawn_on_broker(&database, extra_args, rabbit_broker(vhost.url()))
                        .await;
                app.keep(vhost.clone());
                instances_connected(&vhost, 1).await;
                Self {
                    app,
                    bus,
                    vhost: Some(vhost),
                }
            }
        }
    }

    /// A publisher of the test's own on the same broker, which takes no
    /// work (its work sink is closed). Its deliveries go to the receiver
    /// returned, which must live as long as it: a closed sink stops it.
    async fn publisher(&self) -> (Broker, mpsc::Receiver<Incoming>) {
        let (sink, deliveries) = mpsc::channel(16);
        let (work, _) = mpsc::channel(1);
        let kind = match &self.vhost {
            None => BrokerKind::Memory(self.bus.clone()),
            Some(vhost) => rabbit_broker(vhost.url()),
        };
        let broker = Broker::start(kind, sink, work);
        tokio::time::timeout(Duration::from_secs(10), broker.connected())
            .await
            .expect("the test's publisher connects");
        (broker, deliveries)
    }

    /// Messages in the RabbitMQ queue `name` (ready and unacknowledged).
    async fn queue_depth(&self, name: &str) -> Option<u64> {
        let vhost = self.vhost.as_ref()?;
        let queues = Rabbitmqctl::local()
            .run(&["list_queues", "-p", vhost.name(), "name", "messages"])
            .await;
        queues.lines().find_map(|line| {
            let (queue, messages) = line.split_once('\t')?;
            (queue == name).then(|| messages.trim().parse().unwrap())
        })
    }

    /// Waits until the work queue has no message left (RabbitMQ only).
    async fn work_queue_drains(&self) {
        if self.vhost.is_none() {
            return;
        }
        let mut last = None;
        let drained = tokio::time::timeout(Duration::from_secs(20), async {
            loop {
                last = self.queue_depth("feed.materialize").await;
                if last == Some(0) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
        assert!(
            drained.is_ok(),
            "feed.materialize never drained; last depth {last:?}"
        );
    }

    /// The bodies dead-lettered so far, from the broker itself.
    async fn dead_letters(&self) -> usize {
        match &self.vhost {
            None => self.bus.dead_letters().len(),
            Some(_) => self
                .queue_depth("feed.materialize.dead")
                .await
                .expect("the dead-letter queue exists") as usize,
        }
    }
}

/// Reads `reader`'s feed (which builds it when missing) until the cached
/// feed holds exactly `expected` ids.
async fn cache_holds(app: &TestApp, reader: &TestUser, expected: &[String]) {
    let mut want = expected.to_vec();
    want.sort();
    let mut last = None;
    let held = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            app.feed(reader, "?limit=1").await;
            last = cached_feed(app, reader).await;
            if last.as_deref() == Some(&want[..]) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        held.is_ok(),
        "the cached feed never held the {} posts; last {:?} ids",
        want.len(),
        last.map(|ids| ids.len())
    );
}

async fn redis_away_stops_neither_posts_nor_live_delivery(brokers: Brokers) {
    let redis_address = url::Url::parse(&redis_url()).unwrap();
    let target = format!(
        "{}:{}",
        redis_address.host_str().unwrap(),
        redis_address.port().unwrap_or(6379)
    )
    .parse()
    .unwrap();
    let mut proxy = TcpProxy::start(target).await;
    let through_proxy = format!("redis://{}", proxy.address());
    let deployment = Deployment::start(brokers, &["--redis-url", &through_proxy]).await;
    let app = &deployment.app;
    let author = app.register("Автор", "Неутомимый").await;
    let reader = app.register("Читатель", "Верный").await;
    app.follow(&reader, &author).await;
    let mut live = FeedClient::connect(app, &reader.token).await;
    let mut posts = vec![app.create_post(&author, "до").await];
    assert_eq!(live.next_post().await["postText"], "до");
    cache_holds(app, &reader, &posts).await;

    proxy.cut();
    for n in 0..POSTS_DURING_OUTAGE {
        let text = format!("без Redis {n}");
        posts.push(app.create_post(&author, &text).await);
        assert_eq!(live.next_post().await["postText"], text.as_str());
    }
    // Nothing piles up in RabbitMQ while Redis is away.
    deployment.work_queue_drains().await;
    let mut expected: Vec<String> = (0..POSTS_DURING_OUTAGE)
        .rev()
        .map(|n| format!("без Redis {n}"))
        .collect();
    expected.push("до".into());
    let expected: Vec<&str> = expected.iter().map(String::as_str).collect();
    app.feed_settles_to(&reader, "?limit=1000", &expected).await;

    proxy.restore().await;
    cache_holds(app, &reader, &posts).await;
    app.feed_settles_to(&reader, "?limit=1000", &expected).await;
    let after = app.create_post(&author, "после").await;
    assert_eq!(live.next_post().await["postText"], "после");
    posts.push(after);
    cache_holds(app, &reader, &posts).await;
    assert_eq!(app.metric(DEAD_LETTERS).await, 0);
}

async fn bad_feed_events_are_dead_lettered_and_the_rest_go_on(brokers: Brokers) {
    let deployment = Deployment::start(brokers, &[]).await;
    let app = &deployment.app;
    let author = app.register("Автор", "Первый").await;
    let other = app.register("Автор", "Второй").await;
    let broken = app.register("Читатель", "Сломанный").await;
    let reader = app.register("Читатель", "Обычный").await;
    app.follow(&broken, &author).await;
    app.follow(&reader, &other).await;
    let first = app.create_post(&other, "первый").await;
    cache_holds(app, &reader, std::slice::from_ref(&first)).await;

    // An undecodable body: it can never succeed.
    let (publisher, _deliveries) = deployment.publisher().await;
    publisher
        .publish(Topic::Materialize, "", Bytes::from_static(b"\x09garbage"))
        .await
        .expect("the broker takes it");
    // A feed key of the wrong type: every update of it fails, however
    // often it is retried.
    let broken_key = format!("{}feed:{}", prefix(app), broken.id);
    let _: i64 = redis::cmd("RPUSH")
        .arg(&broken_key)
        .arg("not a feed")
        .query_async(&mut redis().await)
        .await
        .unwrap();
    let poisoned = app.create_post(&author, "отравленный").await;
    let second = app.create_post(&other, "второй").await;

    cache_holds(app, &reader, &[first, second]).await;
    let dead = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if app.metric(DEAD_LETTERS).await == 2 && deployment.dead_letters().await == 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        dead.is_ok(),
        "not both events dead-lettered: metric {}, queue {}",
        app.metric(DEAD_LETTERS).await,
        deployment.dead_letters().await
    );
    // The feed the failing event was about is dropped, so it is rebuilt
    // from the truth rather than kept without the post.
    cache_holds(app, &broken, &[poisoned]).await;
}
