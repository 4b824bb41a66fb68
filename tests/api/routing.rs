//! Which broker routing keys an instance binds, on RabbitMQ.

use std::collections::BTreeSet;
use std::time::Duration;

use livefeed::domain::UserId;
use livefeed::realtime::Routing;

use crate::support::{
    FeedClient, Rabbitmqctl, TestApp, TestUser, Vhost, fresh_database, rabbit_broker,
};

/// Bucket routing on RabbitMQ: the follower's instance binds the bucket of
/// the author it follows, not the author, so it also receives the posts of
/// the other authors of that bucket, and must keep them from the follower.
#[tokio::test]
async fn bucket_routing_keeps_other_authors_of_the_bucket_from_the_follower() {
    let routing: Routing = "bucket:2".parse().unwrap();
    let args = ["--routing", "bucket:2"];
    let vhost = std::sync::Arc::new(Vhost::create().await);
    let database = fresh_database().await;
    let mut a = TestApp::spawn_on_broker(&database, &args, rabbit_broker(vhost.url())).await;
    let b = TestApp::spawn_on_broker(&database, &args, rabbit_broker(vhost.url())).await;
    a.keep(vhost.clone());
    let key = |user: &TestUser| routing.key(user.id.parse::<UserId>().unwrap());
    // Three authors in two buckets: two of them share one.
    let mut authors = Vec::new();
    for name in ["Первый", "Второй", "Третий"] {
        authors.push(a.register("Автор", name).await);
    }
    let (followed, neighbour) = [(0, 1), (0, 2), (1, 2)]
        .into_iter()
        .map(|(x, y)| (&authors[x], &authors[y]))
        .find(|(x, y)| key(x) == key(y))
        .expect("two of three authors share one of two buckets");
    let reader = a.register("Читатель", "Ковшовый").await;
    a.follow(&reader, followed).await;

    let mut socket = FeedClient::connect(&b, &reader.token).await;
    a.create_post(neighbour, "тот же ковш, не для тебя").await;
    let marker = a.create_post(followed, "для тебя").await;

    // Relayed in creation order: the neighbour's post reached b before the
    // marker, was counted there as unwanted, and was not sent.
    assert_eq!(socket.next_post().await["postId"], marker.as_str());
    let metrics = b.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("livefeed_unwanted_posts_total 1\n"),
        "{metrics}"
    );
    assert_eq!(bound_keys(&vhost).await, [key(followed)]);
}

/// With every bucket bound at start, the keys are in place before any
/// socket, a socket's posts arrive without a binding's catch-up, and the
/// keys stay bound after the last follower left.
#[tokio::test]
async fn every_bucket_is_bound_at_start_and_stays_bound() {
    let args = ["--routing", "bucket:4", "--bind-every-bucket", "true"];
    let vhost = std::sync::Arc::new(Vhost::create().await);
    let database = fresh_database().await;
    let mut app = TestApp::spawn_on_broker(&database, &args, rabbit_broker(vhost.url())).await;
    app.keep(vhost.clone());
    let every: Vec<String> = (0..4).map(|bucket| format!("b.{bucket}")).collect();
    let bound = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            if bound_keys(&vhost).await == every {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(bound.is_ok(), "bound: {:?}", bound_keys(&vhost).await);

    let author = app.register("Автор", "Заранее").await;
    let reader = app.register("Читатель", "Заранее").await;
    app.follow(&reader, &author).await;
    let mut socket = FeedClient::connect(&app, &reader.token).await;
    let post = app.create_post(&author, "ключ уже привязан").await;
    assert_eq!(socket.next_post().await["postId"], post.as_str());
    assert_eq!(app.metric("livefeed_binding_catch_up_posts_total").await, 0);

    socket.close().await;
    app.metric_reaches("livefeed_open_sockets", 0).await;
    assert_eq!(bound_keys(&vhost).await, every, "no key is unbound");
}

/// The routing keys bound to `feed.posts` in `vhost`, in order.
async fn bound_keys(vhost: &Vhost) -> Vec<String> {
    let bindings = Rabbitmqctl::local()
        .run(&[
            "list_bindings",
            "-q",
            "-p",
            vhost.name(),
            "source_name",
            "routing_key",
        ])
        .await;
    let keys: BTreeSet<String> = bindings
        .lines()
        .filter_map(|line| line.strip_prefix("feed.posts\t"))
        .map(str::to_owned)
        .collect();
    keys.into_iter().collect()
}
