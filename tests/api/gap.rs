//! Gap recovery: an instance whose RabbitMQ queue expired while its link was
//! down brings its open sockets up to date from PostgreSQL when the link
//! returns, with no client reconnecting: the posts written meanwhile, those
//! of an author followed meanwhile (a follow change lost with the queue),
//! each once and in order, then live posts again.

use std::sync::Arc;
use std::time::Duration;

use livefeed::broker::{AmqpSettings, BrokerKind};

use crate::support::{
    FeedClient, Rabbitmqctl, TestApp, Vhost, fresh_database, instances_connected, proxied_rabbit,
    rabbit_broker,
};

/// The cut instance's queue expiry: short, so the test sees it expire.
const QUEUE_EXPIRY_SECS: u32 = 1;
const GONE_WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_lost_while_cut_off_is_recovered_without_reconnecting() {
    let vhost = Arc::new(Vhost::create().await);
    let (mut proxy, through_proxy) = proxied_rabbit(&vhost).await;
    let database = fresh_database().await;

    // B writes and relays; A holds the follower's socket, through the proxy.
    let mut b = TestApp::spawn_on_broker(&database, &[], rabbit_broker(vhost.url())).await;
    let a_instance = format!("test-{}", uuid::Uuid::new_v4().simple());
    let mut a = TestApp::spawn_on_broker(
        &database,
        &[],
        BrokerKind::Amqp(AmqpSettings {
            url: through_proxy,
            instance_id: a_instance.clone(),
            queue_expiry: Duration::from_secs(QUEUE_EXPIRY_SECS.into()),
        }),
    )
    .await;
    instances_connected(&vhost, 2).await;
    a.keep(vhost.clone());
    b.keep(vhost.clone());

    let author = b.register("Автор", "Первый").await;
    let other = b.register("Автор", "Второй").await;
    let reader = b.register("Читатель", "Терпеливый").await;
    b.follow(&reader, &author).await;
    let mut socket = FeedClient::connect(&a, &reader.token).await;
    let before = b.create_post(&author, "до обрыва").await;
    assert_eq!(socket.next_post().await["postId"], before.as_str());

    proxy.cut();
    queue_gone(&vhost, &a_instance).await;
    let mut missed = vec![b.create_post(&author, "во время обрыва 1").await];
    b.follow(&reader, &other).await;
    missed.push(b.create_post(&other, "от нового друга").await);
    missed.push(b.create_post(&author, "во время обрыва 2").await);
    let recoveries = a.metric("livefeed_gap_recoveries_total").await;
    proxy.restore().await;

    for expected in &missed {
        assert_eq!(socket.next_post().await["postId"], expected.as_str());
    }
    // Live again, and nothing came twice: the next frame is the new post.
    let after = b.create_post(&other, "после обрыва").await;
    assert_eq!(socket.next_post().await["postId"], after.as_str());
    assert!(a.metric("livefeed_gap_recoveries_total").await > recoveries);
    assert!(a.metric("livefeed_recovered_posts_total").await >= missed.len() as u64);
}

/// Waits until RabbitMQ deleted the instance's queue (it expired).
async fn queue_gone(vhost: &Vhost, instance: &str) {
    let queue = format!("livefeed.instance.{instance}");
    let gone = tokio::time::timeout(GONE_WAIT, async {
        loop {
            let queues = Rabbitmqctl::local()
                .run(&["list_queues", "-p", vhost.name(), "name"])
                .await;
            if !queues.lines().any(|line| line == queue) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "{queue} did not expire within {GONE_WAIT:?}");
}
