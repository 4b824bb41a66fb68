//! `?since=` catch-up: what a reconnecting client missed comes from
//! PostgreSQL, in the order PostgreSQL sequenced the posts, whatever the
//! clocks of the instances that wrote them and whatever the cache holds.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;
use uuid::{NoContext, Timestamp, Uuid};

use crate::support::{
    FeedClient, TestApp, TestUser, Vhost, fresh_database, proxied_rabbit, rabbit_broker, sql,
};

#[tokio::test]
async fn since_reads_the_truth_whatever_the_writers_clocks() {
    let app = TestApp::spawn().await;
    let author = app.register("Автор", "Спешащий").await;
    let reader = app.register("Читатель", "Вернувшийся").await;
    app.follow(&reader, &author).await;
    app.create_post(&author, "давно прочитан").await;
    let seen = app.create_post(&author, "последний увиденный").await;
    // The reader's feed is cached now; what follows reaches PostgreSQL only,
    // as a post whose feed event the worker has not handled yet.
    app.get("/post/feed?offset=0&limit=10", Some(&reader.token))
        .await;

    // Written after `seen` by an instance whose clock is a minute behind:
    // its id is older than `seen`'s.
    let minute_ago = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 60;
    let behind = Uuid::new_v7(Timestamp::from_unix(NoContext, minute_ago, 0));
    let db = sql(&app.database_url).await;
    insert_post(&db, behind, &author, "часы отстают").await;
    let uncached = Uuid::now_v7();
    insert_post(&db, uncached, &author, "ещё не в кэше").await;

    let (_socket, caught_up) =
        FeedClient::open(&app, Some(&reader.token), &format!("?since={seen}"), None)
            .await
            .unwrap();
    assert_eq!(
        post_ids(&caught_up),
        [behind.to_string(), uncached.to_string()]
    );
}

/// A post inserted before `since` but committed after it may have been
/// published after it: the catch-up sends it.
#[tokio::test]
async fn since_sends_a_post_that_committed_after_it() {
    let app = TestApp::spawn().await;
    let author = app.register("Автор", "Медленный").await;
    let other = app.register("Автор", "Быстрый").await;
    let reader = app.register("Читатель", "Внимательный").await;
    app.follow(&reader, &author).await;
    app.follow(&reader, &other).await;
    app.create_post(&author, "прочитан до всего").await;

    let mut slow_writer = sql(&app.database_url).await;
    let slow = slow_writer.transaction().await.unwrap();
    let late = Uuid::now_v7();
    slow.execute(
        "INSERT INTO posts (id, author_id, text) VALUES ($1, $2, 'закоммичен позже')",
        &[&late, &author.id.parse::<Uuid>().unwrap()],
    )
    .await
    .unwrap();
    let seen = app.create_post(&other, "опубликован раньше").await;
    slow.commit().await.unwrap();

    let (_socket, caught_up) =
        FeedClient::open(&app, Some(&reader.token), &format!("?since={seen}"), None)
            .await
            .unwrap();
    assert_eq!(post_ids(&caught_up), [late.to_string()]);
}

/// A catch-up can overlap the live stream by many posts: here RabbitMQ is
/// away while 100 posts are written (acknowledged, waiting in the outbox),
/// a reader reconnects and gets all 100 from PostgreSQL, then RabbitMQ
/// returns and the same 100 arrive live. Each reaches the reader once.
#[tokio::test]
async fn a_catch_up_overlapping_the_live_stream_by_a_hundred_posts_sends_each_once() {
    const POSTS: usize = 100;
    let vhost = Arc::new(Vhost::create().await);
    let (mut proxy, through_proxy) = proxied_rabbit(&vhost).await;
    let mut app =
        TestApp::spawn_on_broker(&fresh_database().await, &[], rabbit_broker(&through_proxy)).await;
    app.keep(vhost);
    let author = app.register("Автор", "Плодовитый").await;
    let reader = app.register("Читатель", "Вернувшийся").await;
    let witness = app.register("Читатель", "Постоянный").await;
    app.follow(&reader, &author).await;
    app.follow(&witness, &author).await;
    // The witness stays, so the author's posts stay routed here and the
    // reader's new socket needs no new binding.
    let mut stays = FeedClient::connect(&app, &witness.token).await;
    let mut leaves = FeedClient::connect(&app, &reader.token).await;
    let seen = app.create_post(&author, "до разрыва").await;
    assert_eq!(leaves.next_post().await["postId"], seen.as_str());
    assert_eq!(stays.next_post().await["postId"], seen.as_str());
    leaves.close().await;

    proxy.cut();
    let mut written = Vec::with_capacity(POSTS);
    for n in 0..POSTS {
        written.push(app.create_post(&author, &format!("в разрыве {n}")).await);
    }
    let (mut returned, caught_up) =
        FeedClient::open(&app, Some(&reader.token), &format!("?since={seen}"), None)
            .await
            .unwrap();
    assert_eq!(
        post_ids(&caught_up),
        written,
        "the catch-up sent all, in order"
    );

    proxy.restore().await;
    for id in &written {
        assert_eq!(
            stays.next_post().await["postId"],
            id.as_str(),
            "live copies arrived"
        );
    }
    let after = app.create_post(&author, "после").await;
    assert_eq!(stays.next_post().await["postId"], after.as_str());
    assert_eq!(
        returned.next_post().await["postId"],
        after.as_str(),
        "no live copy of a caught-up post came again"
    );
}

async fn insert_post(db: &tokio_postgres::Client, id: Uuid, author: &TestUser, text: &str) {
    db.execute(
        "INSERT INTO posts (id, author_id, text) VALUES ($1, $2, $3)",
        &[&id, &author.id.parse::<Uuid>().unwrap(), &text],
    )
    .await
    .unwrap();
}

fn post_ids(posts: &[Value]) -> Vec<String> {
    posts
        .iter()
        .map(|post| post["postId"].as_str().unwrap().to_owned())
        .collect()
}
