//! A socket that connects while its user unfollows someone: whichever of
//! the socket's read of the follows and the unfollow reaching its instance
//! comes first, the socket ends up not subscribed to the unfollowed author.

use std::time::Duration;

use uuid::Uuid;

use crate::support::{FeedClient, TestApp, sql};

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
