//! A socket that connects while its user unfollows someone: whichever of
//! the socket's read of the follows, the unfollow reaching its instance and
//! the catch-ups of its subscriptions comes first, the unfollowed author's
//! later posts do not reach it.

use std::sync::Arc;
use std::time::Duration;

use livefeed::store::RELAY_LOCK;
use uuid::Uuid;

use crate::support::{
    FeedClient, TestApp, Vhost, fresh_database, instances_connected, proxied_rabbit, rabbit_broker,
    sql,
};

/// Users the reader follows besides the two authors of the test: they make
/// the socket's subscription long enough for an unfollow to land inside it.
const OTHERS: i64 = 20_000;
const ROUNDS: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfollow_racing_a_connecting_socket_always_wins() {
    let app = TestApp::spawn().await;
    let reader = app.register("Читатель", "Переменчивый").await;
    let kept = app.register("Автор", "Постоянный").await;
    let dropped = app.register("Автор", "Отписанный").await;
    app.follow(&reader, &kept).await;
    let db = sql(&app.database_url).await;
    let reader_id: Uuid = reader.id.parse().unwrap();
    let dropped_id: Uuid = dropped.id.parse().unwrap();
    db.execute(
        "WITH others AS ( \
             INSERT INTO users (id, first_name, second_name, birthdate, password_hash) \
             SELECT gen_random_uuid(), 'Другой', 'Автор', '2000-01-01', '-' \
             FROM generate_series(1, $2::bigint) RETURNING id) \
         INSERT INTO friends (user_id, friend_id) SELECT $1, id FROM others",
        &[&reader_id, &OTHERS],
    )
    .await
    .unwrap();

    for round in 0..ROUNDS {
        // Followed again without announcing it: no socket is open.
        db.execute(
            "INSERT INTO friends (user_id, friend_id) VALUES ($1, $2)",
            &[&reader_id, &dropped_id],
        )
        .await
        .unwrap();
        let unfollow = async {
            // Spread over the rounds so that some unfollow lands while the
            // socket is between its read of the follows and its subscription.
            tokio::time::sleep(Duration::from_millis(round * 3)).await;
            app.unfollow(&reader, &dropped).await;
        };
        let ((mut socket, _), ()) = tokio::join!(
            async {
                FeedClient::open(&app, Some(&reader.token), "", None)
                    .await
                    .unwrap()
            },
            unfollow
        );
        // The unfollow is announced before these posts, so it has reached
        // the hub when they do.
        app.create_post(&dropped, "уже не для тебя").await;
        let marker = app.create_post(&kept, "для тебя").await;
        assert_eq!(
            socket.next_post().await["postId"],
            marker.as_str(),
            "round {round}: the socket still follows the unfollowed author"
        );
        socket.close().await;
    }
}

/// The other side of the race, made certain: a socket's broker bindings are
/// held back (RabbitMQ frozen) and the relay is kept from publishing (the
/// test holds its lock) while its user unfollows an author who then posts.
/// When the bindings land, their catch-ups read both authors' posts back
/// from PostgreSQL before the hub could have heard of the unfollow; the
/// unfollowed author's post must still not reach the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_read_back_after_an_unfollow_the_hub_has_not_heard_of_is_not_sent() {
    let vhost = Arc::new(Vhost::create().await);
    let (proxy, through_proxy) = proxied_rabbit(&vhost).await;
    let database = fresh_database().await;
    let relay_lock = sql(&database).await;
    relay_lock
        .execute("SELECT pg_advisory_lock($1)", &[&RELAY_LOCK])
        .await
        .unwrap();
    let mut app = TestApp::spawn_on_broker(&database, &[], rabbit_broker(&through_proxy)).await;
    instances_connected(&vhost, 1).await;
    app.keep(vhost);
    let reader = app.register("Читатель", "Передумавший").await;
    let kept = app.register("Автор", "Оставленный").await;
    let dropped = app.register("Автор", "Брошенный").await;
    // Followed in SQL: nothing is relayed while the test holds the lock.
    let db = sql(&database).await;
    for author in [&kept, &dropped] {
        let (reader_id, author_id): (Uuid, Uuid) =
            (reader.id.parse().unwrap(), author.id.parse().unwrap());
        db.execute(
            "INSERT INTO friends (user_id, friend_id) VALUES ($1, $2)",
            &[&reader_id, &author_id],
        )
        .await
        .unwrap();
    }

    proxy.freeze();
    // A fresh socket is ready without waiting for its bindings.
    let mut socket = FeedClient::connect(&app, &reader.token).await;
    app.unfollow(&reader, &dropped).await;
    app.create_post(&dropped, "уже не для тебя").await;
    let read_back = app.create_post(&kept, "прочитан из базы").await;
    proxy.thaw();
    assert_eq!(socket.next_post().await["postId"], read_back.as_str());
    // Read back, not relayed: counted and timed as a live delivery is.
    app.metric_reaches("livefeed_deliveries_total", 1).await;
    app.metric_reaches("livefeed_publish_to_send_seconds_count", 1)
        .await;

    // Now the unfollow and the posts are relayed, in that order.
    relay_lock
        .execute("SELECT pg_advisory_unlock($1)", &[&RELAY_LOCK])
        .await
        .unwrap();
    let live = app.create_post(&kept, "живьём").await;
    assert_eq!(
        socket.next_post().await["postId"],
        live.as_str(),
        "neither the unfollowed author's post nor a second copy of the one read back"
    );
}
