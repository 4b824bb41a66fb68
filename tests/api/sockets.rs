//! What one client can cost the others: sockets per user, and sockets that
//! stop taking what the server writes (the outbox, its bound and the write
//! deadline).

use std::time::Duration;

use serde_json::Value;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::support::{ApiClient, FeedClient, TcpProxy, TestApp, TestUser, fresh_database};

/// The default `LIVEFEED_MAX_SOCKETS_PER_USER`.
const PER_USER: usize = 10;

#[tokio::test]
async fn one_user_holds_at_most_ten_sockets_and_a_closed_one_frees_a_place() {
    let app = TestApp::spawn().await;
    let greedy = app.register("Жадный", "Вкладочник").await;
    let modest = app.register("Скромный", "Читатель").await;
    let mut sockets = Vec::new();
    for _ in 0..PER_USER {
        sockets.push(FeedClient::connect(&app, &greedy.token).await);
    }

    let refused = FeedClient::open(&app, Some(&greedy.token), "", None).await;
    let Err(WsError::Http(response)) = refused else {
        panic!("the 11th socket was not refused over HTTP");
    };
    assert_eq!(response.status().as_u16(), 429);
    let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["code"], 1130, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("10 open websockets"),
        "{body}"
    );
    // Another user is not held back by the first one's sockets.
    FeedClient::connect(&app, &modest.token).await;

    sockets.pop().unwrap().close().await;
    let reopened = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match FeedClient::open(&app, Some(&greedy.token), "", None).await {
                Ok((socket, _)) => return socket,
                Err(WsError::Http(response)) if response.status().as_u16() == 429 => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(other) => panic!("unexpected error {other}"),
            }
        }
    })
    .await;
    assert!(reopened.is_ok(), "the closed socket's place never freed");
}

/// A short write deadline, and a small kernel send buffer so that a peer
/// that takes nothing leaves a write pending after kilobytes.
const DEADLINE_ARGS: [&str; 4] = ["--ws-write-timeout-ms", "500", "--ws-send-buffer", "4096"];

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_at_the_write_deadline() {
    let app = TestApp::spawn_with(&fresh_database().await, &DEADLINE_ARGS).await;
    let author = app.register("Автор", "Многословный").await;
    let reader = app.register("Читатель", "Уснувший").await;
    app.follow(&reader, &author).await;
    let (_asleep, _) = FeedClient::open(&app, Some(&reader.token), "", Some(4096))
        .await
        .unwrap();
    write_until_the_socket_is_dropped(&app, &author).await;
}

#[tokio::test]
async fn a_client_that_vanished_is_closed_at_the_write_deadline() {
    let app = TestApp::spawn_with(&fresh_database().await, &DEADLINE_ARGS).await;
    let author = app.register("Автор", "Многословный").await;
    let reader = app.register("Читатель", "Исчезнувший").await;
    app.follow(&reader, &author).await;
    let target = app.address.trim_start_matches("http://").parse().unwrap();
    let proxy = TcpProxy::start_with(target, Some(4096)).await;
    let through_proxy = ApiClient::new(format!("http://{}", proxy.address()));
    let (_gone, _) = FeedClient::open(&through_proxy, Some(&reader.token), "", None)
        .await
        .unwrap();
    proxy.freeze();
    write_until_the_socket_is_dropped(&app, &author).await;
}

/// Posts big enough to fill every buffer between the server and a peer that
/// takes nothing, and few enough never to make it a slow consumer (the
/// queue holds 1024): only the write deadline can end the session, and it
/// must, although nothing else is ever written to it.
async fn write_until_the_socket_is_dropped(app: &TestApp, author: &TestUser) {
    let text = "x".repeat(9_000);
    for _ in 0..40 {
        app.create_post(author, &text).await;
    }
    let dropped = tokio::time::timeout(Duration::from_secs(10), async {
        while app.metric("livefeed_open_sockets").await > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(dropped.is_ok(), "the stuck socket was never closed");
    assert_eq!(app.metric("livefeed_socket_write_timeouts_total").await, 1);
    assert_eq!(app.metric("livefeed_slow_consumer_closes_total").await, 0);
}

/// A client whose buffers are full: posts the kernel does not take wait in
/// its socket's outbox (the session's fallback path, not the hub's direct
/// write). The deadline is long, so only reading or the bound can end it.
async fn paused_reader(queue: &str) -> (TestApp, TestUser, FeedClient) {
    let app = TestApp::spawn_with(
        &fresh_database().await,
        &[
            "--socket-queue",
            queue,
            "--ws-send-buffer",
            "4096",
            "--ws-write-timeout-ms",
            "60000",
        ],
    )
    .await;
    let author = app.register("Автор", "Обстоятельный").await;
    let reader = app.register("Читатель", "Задумчивый").await;
    app.follow(&reader, &author).await;
    let (paused, _) = FeedClient::open(&app, Some(&reader.token), "", Some(4096))
        .await
        .unwrap();
    (app, author, paused)
}

#[tokio::test]
async fn a_reader_that_pauses_gets_every_post_in_order_within_the_queue_bound() {
    let (app, author, mut paused) = paused_reader("64").await;
    const POSTS: usize = 40;
    let text = "x".repeat(9_000);
    let mut ids = Vec::with_capacity(POSTS);
    for _ in 0..POSTS {
        ids.push(app.create_post(&author, &text).await);
    }
    app.metric_reaches("livefeed_deliveries_total", POSTS as u64)
        .await;
    assert!(
        app.metric("livefeed_queued_deliveries_total").await > 0,
        "the kernel's buffers filled and the rest waited in the outbox"
    );

    let mut received = Vec::with_capacity(POSTS);
    for _ in 0..POSTS {
        received.push(
            paused.next_post().await["postId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(received, ids, "everything, once, in order");
    assert_eq!(app.metric("livefeed_slow_consumer_closes_total").await, 0);
    let after = app.create_post(&author, "снова вовремя").await;
    assert_eq!(paused.next_post().await["postId"], after.as_str());
}

#[tokio::test]
async fn a_reader_beyond_the_queue_bound_gets_what_was_queued_then_1008() {
    let (app, author, mut paused) = paused_reader("8").await;
    const POSTS: usize = 30;
    let text = "x".repeat(9_000);
    let mut ids = Vec::with_capacity(POSTS);
    for _ in 0..POSTS {
        ids.push(app.create_post(&author, &text).await);
    }
    app.metric_reaches("livefeed_slow_consumer_closes_total", 1)
        .await;

    let mut received = Vec::new();
    let close = loop {
        match paused.next_event().await {
            Some(Message::Text(text)) => {
                let post: serde_json::Value = serde_json::from_str(&text).unwrap();
                received.push(post["postId"].as_str().unwrap().to_owned());
            }
            Some(Message::Close(frame)) => break frame,
            Some(_) => {}
            None => break None,
        }
    };
    assert!(
        (8..POSTS).contains(&received.len()),
        "the queue's 8 and what the kernel held, not all {POSTS}: {}",
        received.len()
    );
    assert_eq!(received, ids[..received.len()], "in order, none skipped");
    let frame = close.expect("the backlog is followed by a close frame");
    assert_eq!(frame.code, CloseCode::Policy);
    assert!(frame.reason.contains("slow consumer"), "{}", frame.reason);
}
