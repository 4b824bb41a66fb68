//! The outbox relay follows the broker: an instance whose link to RabbitMQ
//! breaks while it relays hands the outbox over to one that can publish.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::support::{
    FeedClient, PUBLISHED, TestApp, Vhost, fresh_database, instances_connected, outbox_settles,
    proxied_rabbit, rabbit_broker,
};

/// The relay steps down after 3 s of failed publishes; a standby asks for
/// the lock every second (the one stepping down sits out 5 s). The rest is
/// slack for a busy machine.
const HANDOVER: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_relay_cut_off_from_rabbitmq_hands_over_and_nothing_is_lost() {
    let vhost = Arc::new(Vhost::create().await);
    let (mut proxy, through_proxy) = proxied_rabbit(&vhost).await;
    let database = fresh_database().await;

    // A starts alone, so it is the relay once it has published something.
    let mut a = TestApp::spawn_on_broker(&database, &[], rabbit_broker(&through_proxy)).await;
    a.keep(vhost.clone());
    let author = a.register("Автор", "Упорный").await;
    let reader = a.register("Читатель", "Внимательный").await;
    a.follow(&reader, &author).await;
    a.create_post(&author, "первый").await;
    outbox_settles(&a, &[&a], 4).await;

    let mut b = TestApp::spawn_on_broker(&database, &[], rabbit_broker(vhost.url())).await;
    instances_connected(&vhost, 2).await;
    b.keep(vhost);
    let mut socket = FeedClient::connect(&b, &reader.token).await;
    let relayed_by_a = b.create_post(&author, "через A").await;
    assert_eq!(socket.next_post().await["postId"], relayed_by_a.as_str());
    assert_eq!(b.metric(PUBLISHED).await, 0, "B stands by while A relays");

    proxy.cut();
    let cut = Instant::now();
    let on_b = b.create_post(&author, "написан на B").await;
    let on_a = a.create_post(&author, "написан на A").await;
    for expected in [&on_b, &on_a] {
        let post = tokio::time::timeout_at(cut + HANDOVER, socket.next_post())
            .await
            .unwrap_or_else(|_| panic!("post {expected} not delivered within {HANDOVER:?}"));
        assert_eq!(post["postId"], expected.as_str());
    }

    proxy.restore().await;
    let after = a.create_post(&author, "после восстановления").await;
    assert_eq!(socket.next_post().await["postId"], after.as_str());
    // The follow and five posts, two events each: every one published once.
    outbox_settles(&a, &[&a, &b], 12).await;
    assert!(b.metric(PUBLISHED).await > 0, "B took the relay over");
}

/// `livefeed_outbox_depth` is read from the ends of the outbox's key, not
/// counted: it still reports every waiting event while the broker is away,
/// and drops to zero once they are published.
#[tokio::test]
async fn outbox_depth_reports_the_backlog_while_rabbitmq_is_away() {
    let vhost = Arc::new(Vhost::create().await);
    let (mut proxy, through_proxy) = proxied_rabbit(&vhost).await;
    let mut app =
        TestApp::spawn_on_broker(&fresh_database().await, &[], rabbit_broker(&through_proxy)).await;
    app.keep(vhost);
    let author = app.register("Автор", "Накопивший").await;
    app.create_post(&author, "до сбоя").await;
    outbox_settles(&app, &[&app], 2).await;

    proxy.cut();
    for n in 0..5 {
        app.create_post(&author, &format!("в очереди {n}")).await;
    }
    // Two events per post (live, feed cache), none publishable.
    assert_eq!(app.metric("livefeed_outbox_depth").await, 10);

    proxy.restore().await;
    outbox_settles(&app, &[&app], 12).await;
}

/// Posts acknowledged while the relay could not publish are still in the
/// outbox when it dies; the next relay publishes every one, and the feed
/// worker files each in the reader's feed.
#[tokio::test]
async fn every_acknowledged_post_is_delivered_after_the_relay_restarts() {
    let vhost = Arc::new(Vhost::create().await);
    let (mut proxy, through_proxy) = proxied_rabbit(&vhost).await;
    let database = fresh_database().await;
    let mut a = TestApp::spawn_on_broker(&database, &[], rabbit_broker(&through_proxy)).await;
    a.keep(vhost.clone());
    let author = a.register("Автор", "Перезапущенный").await;
    let reader = a.register("Читатель", "Терпеливый").await;
    a.follow(&reader, &author).await;
    a.create_post(&author, "до сбоя").await;
    outbox_settles(&a, &[&a], 4).await;
    a.feed_settles_to(&reader, "", &["до сбоя"]).await;
    // Settled, not only applied: an event A applied but had not acked when
    // it stopped would come to B again and count there.
    a.metric_reaches("livefeed_feed_events_settled_total", 2)
        .await;

    proxy.cut();
    let texts: Vec<String> = (0..5).map(|n| format!("неопубликованный {n}")).collect();
    for text in &texts {
        a.create_post(&author, text).await;
    }
    assert_eq!(a.metric("livefeed_outbox_depth").await, 10);
    a.stop().await.expect("A stops");

    let mut b = TestApp::spawn_on_broker(&database, &[], rabbit_broker(vhost.url())).await;
    b.keep(vhost);
    outbox_settles(&b, &[&b], 10).await;
    b.metric_reaches("livefeed_feed_events_settled_total", 5)
        .await;
    let mut expected: Vec<&str> = texts.iter().rev().map(String::as_str).collect();
    expected.push("до сбоя");
    b.feed_settles_to(&reader, "", &expected).await;
}
