//! The live feed over websockets, across two instances, on both brokers.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::support::{
    Brokers, FeedClient, TestApp, Vhost, fresh_database, instances_connected, outbox_settles,
    proxied_rabbit, rabbit_broker, sql,
};

/// Runs a scenario once on the in-process broker and once on RabbitMQ.
macro_rules! on_both_brokers {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            use crate::support::Brokers;

            #[tokio::test]
            async fn memory() {
                super::$scenario(Brokers::Memory).await;
            }

            #[tokio::test]
            async fn rabbitmq() {
                super::$scenario(Brokers::RabbitMq).await;
            }
        }
    )*};
}

on_both_brokers!(
    a_follower_on_b_receives_a_post_created_on_a,
    a_non_follower_receives_nothing,
    unfollow_on_a_stops_delivery_on_b,
    follow_while_connected_starts_delivery,
    every_socket_of_a_user_receives,
    since_catches_up_without_gap_or_duplicate,
    a_slow_consumer_is_closed_and_others_keep_receiving,
);

async fn a_follower_on_b_receives_a_post_created_on_a(brokers: Brokers) {
    let (a, b) = brokers.spawn_pair(&[]).await;
    let author = a.register("Автор", "Первый").await;
    let follower = a.register("Читатель", "Второй").await;
    a.follow(&follower, &author).await;

    let mut socket = FeedClient::connect(&b, &follower.token).await;
    let id = a.create_post(&author, "живой пост").await;

    assert_eq!(
        socket.next_post().await,
        json!({ "postId": id, "postText": "живой пост", "author_user_id": author.id })
    );
}

async fn a_non_follower_receives_nothing(brokers: Brokers) {
    let (a, b) = brokers.spawn_pair(&[]).await;
    let stranger = a.register("Чужой", "Автор").await;
    let friend = a.register("Свой", "Автор").await;
    let reader = a.register("Читатель", "Разборчивый").await;
    a.follow(&reader, &friend).await;

    let mut socket = FeedClient::connect(&b, &reader.token).await;
    a.create_post(&stranger, "не для тебя").await;
    // Posts are relayed in creation order: had the first one been delivered,
    // it would arrive before this one.
    let marker = a.create_post(&friend, "для тебя").await;

    assert_eq!(socket.next_post().await["postId"], marker.as_str());
}

async fn unfollow_on_a_stops_delivery_on_b(brokers: Brokers) {
    let (a, b) = brokers.spawn_pair(&[]).await;
    let dropped = a.register("Бывший", "Друг").await;
    let kept = a.register("Верный", "Друг").await;
    let reader = a.register("Читатель", "Непостоянный").await;
    a.follow(&reader, &dropped).await;
    a.follow(&reader, &kept).await;

    let mut socket = FeedClient::connect(&b, &reader.token).await;
    let before = a.create_post(&dropped, "ещё читаешь").await;
    assert_eq!(socket.next_post().await["postId"], before.as_str());

    a.unfollow(&reader, &dropped).await;
    a.create_post(&dropped, "уже не читаешь").await;
    let marker = a.create_post(&kept, "а это читаешь").await;
    assert_eq!(socket.next_post().await["postId"], marker.as_str());
}

async fn follow_while_connected_starts_delivery(brokers: Brokers) {
    let (a, b) = brokers.spawn_pair(&[]).await;
    let author = a.register("Новый", "Друг").await;
    let reader = a.register("Читатель", "Общительный").await;

    let mut socket = FeedClient::connect(&b, &reader.token).await;
    a.follow(&reader, &author).await;
    let id = a.create_post(&author, "привет, новый читатель").await;

    assert_eq!(socket.next_post().await["postId"], id.as_str());
}

async fn every_socket_of_a_user_receives(brokers: Brokers) {
    let (a, b) = brokers.spawn_pair(&[]).await;
    let author = a.register("Автор", "Многотабовый").await;
    let reader = a.register("Читатель", "Вкладкин").await;
    a.follow(&reader, &author).await;

    let mut on_a = FeedClient::connect(&a, &reader.token).await;
    let mut on_b = FeedClient::connect(&b, &reader.token).await;
    let mut second_on_b = FeedClient::connect(&b, &reader.token).await;
    let id = a.create_post(&author, "всем вкладкам").await;

    for socket in [&mut on_a, &mut on_b, &mut second_on_b] {
        assert_eq!(socket.next_post().await["postId"], id.as_str());
    }
}

async fn since_catches_up_without_gap_or_duplicate(brokers: Brokers) {
    let (a, b) = brokers.spawn_pair(&[]).await;
    let author = a.register("Автор", "Плодовитый").await;
    let other = a.register("Автор", "Второй").await;
    let reader = a.register("Читатель", "Вернувшийся").await;
    a.follow(&reader, &author).await;
    a.follow(&reader, &other).await;

    let seen = a.create_post(&author, "видел до разрыва").await;
    let mut missed = Vec::new();
    for n in 0..5 {
        let by = if n % 2 == 0 { &author } else { &other };
        missed.push(a.create_post(by, &format!("пропущенный {n}")).await);
    }

    // Posts keep arriving while the client reconnects: each must come
    // exactly once, through the catch-up or live.
    let writer = {
        let author = author.clone();
        let a_address = a.address.clone();
        tokio::spawn(async move {
            let client = crate::support::ApiClient::new(a_address.clone()).client;
            let mut ids = Vec::new();
            for n in 0..10 {
                let id: String = client
                    .post(format!("{a_address}/post/create"))
                    .bearer_auth(&author.token)
                    .json(&json!({ "text": format!("во время {n}") }))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                ids.push(id);
            }
            ids
        })
    };
    let (mut socket, caught_up) =
        FeedClient::open(&b, Some(&reader.token), &format!("?since={seen}"), None)
            .await
            .unwrap();
    let during = tokio::time::timeout(Duration::from_secs(60), writer)
        .await
        .expect("the writer finishes")
        .unwrap();

    let mut received: Vec<String> = caught_up
        .iter()
        .map(|post| post["postId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        received[..missed.len()],
        missed[..],
        "catch-up is oldest first"
    );
    let expected: Vec<String> = missed.iter().chain(&during).cloned().collect();
    while received.len() < expected.len() {
        received.push(
            socket.next_post().await["postId"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(received, expected, "no gap, no duplicate, in order");

    let after = a.create_post(&other, "после").await;
    assert_eq!(socket.next_post().await["postId"], after.as_str());
}

async fn a_slow_consumer_is_closed_and_others_keep_receiving(brokers: Brokers) {
    let (a, b) = brokers
        .spawn_pair(&["--socket-queue", "16", "--ws-send-buffer", "4096"])
        .await;
    let author = a.register("Автор", "Многословный").await;
    let fast_reader = a.register("Читатель", "Быстрый").await;
    let slow_reader = a.register("Читатель", "Медленный").await;
    a.follow(&fast_reader, &author).await;
    a.follow(&slow_reader, &author).await;

    const POSTS: usize = 60;
    let mut fast = FeedClient::connect(&b, &fast_reader.token).await;
    // The slow client never reads: its few kilobytes of buffers fill with
    // the first big posts, then its queue overflows.
    let (mut slow, _) = FeedClient::open(&b, Some(&slow_reader.token), "", Some(4096))
        .await
        .unwrap();
    // The server gives a close frame a couple of seconds to go out: the
    // slow client starts reading as soon as its instance gives up on it.
    let slow_reads = {
        let b = b.address.clone();
        tokio::spawn(async move {
            crate::support::ApiClient::new(b)
                .metric_reaches("livefeed_slow_consumer_closes_total", 1)
                .await;
            let mut received = 0;
            loop {
                match slow.next_event().await {
                    Some(Message::Text(_)) => received += 1,
                    Some(Message::Close(frame)) => return (received, frame),
                    Some(_) => {}
                    None => return (received, None),
                }
            }
        })
    };
    // Each post is written once the fast reader has the one before, so
    // only a reader that stops reading can fall behind: a burst of posts
    // on a loaded machine (deliveries held up, then handed over at once)
    // must not overflow the fast reader's queue of 16 instead.
    let text = "x".repeat(9_000);
    for _ in 0..POSTS {
        let id = a.create_post(&author, &text).await;
        assert_eq!(
            fast.next_post().await["postId"],
            id.as_str(),
            "the fast reader gets every post, in order"
        );
    }
    let metrics = b.get("/metrics", None).await.text().await.unwrap();
    assert!(
        metrics.contains("livefeed_slow_consumer_closes_total 1\n"),
        "{metrics}"
    );
    // The slow client finds its stream cut short by a close frame saying why.
    let (received, close) = tokio::time::timeout(Duration::from_secs(30), slow_reads)
        .await
        .expect("the slow client's stream ends")
        .unwrap();
    assert!(received < POSTS, "the slow client was cut off early");
    let frame = close.expect("a close frame, not just the end of the stream");
    assert_eq!(frame.code, CloseCode::Policy);
    assert!(frame.reason.contains("slow consumer"), "{}", frame.reason);
}

#[tokio::test]
async fn handshake_errors_are_answered_before_upgrading() {
    let app = TestApp::spawn().await;
    let user = app.register("Рукопожатие", "Строгое").await;

    let missing = FeedClient::open(&app, None, "", None).await;
    assert_http_status(missing, StatusCode::UNAUTHORIZED);
    let bad = FeedClient::open(&app, Some("not-a-token"), "", None).await;
    assert_http_status(bad, StatusCode::UNAUTHORIZED);
    let bad_since = FeedClient::open(&app, Some(&user.token), "?since=yesterday", None).await;
    assert_http_status(bad_since, StatusCode::BAD_REQUEST);

    let plain = app.get("/post/feed/posted", Some(&user.token)).await;
    assert_eq!(plain.status(), StatusCode::BAD_REQUEST);
    let bad_key = app
        .client
        .get(app.url("/post/feed/posted"))
        .bearer_auth(&user.token)
        .header("connection", "Upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "not base64 at all!")
        .send()
        .await
        .unwrap();
    assert_eq!(bad_key.status(), StatusCode::BAD_REQUEST);
    let body: serde_json::Value = bad_key.json().await.unwrap();
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("Sec-WebSocket-Key")
    );

    // Browsers cannot set headers: the token may come in the query instead.
    FeedClient::open(&app, None, &format!("?token={}", user.token), None)
        .await
        .expect("a query token is accepted");
}

fn assert_http_status<T>(
    result: Result<T, tokio_tungstenite::tungstenite::Error>,
    expected: StatusCode,
) {
    match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), expected.as_u16());
        }
        Err(other) => panic!("expected HTTP {expected}, got {other}"),
        Ok(_) => panic!("expected HTTP {expected}, but the websocket opened"),
    }
}

#[tokio::test]
async fn sockets_beyond_the_cap_get_503() {
    let app = TestApp::spawn_with(&fresh_database().await, &["--max-sockets", "1"]).await;
    let user = app.register("Единственный", "Сокет").await;
    let _first = FeedClient::connect(&app, &user.token).await;
    let second = FeedClient::open(&app, Some(&user.token), "", None).await;
    assert_http_status(second, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn client_frames_are_ignored_and_oversized_ones_close_with_1009() {
    let app = TestApp::spawn().await;
    let author = app.register("Автор", "Терпеливый").await;
    let reader = app.register("Читатель", "Болтливый").await;
    app.follow(&reader, &author).await;
    let mut socket = FeedClient::connect(&app, &reader.token).await;

    socket.send(Message::Text("hello?".into())).await;
    socket.send(Message::Binary(vec![1, 2, 3].into())).await;
    let id = app.create_post(&author, "всё ещё на связи").await;
    assert_eq!(socket.next_post().await["postId"], id.as_str());

    // The limit is 16 KiB: a message of exactly that much is taken, one
    // byte more closes the socket.
    socket
        .send(Message::Text("x".repeat(16 * 1024).into()))
        .await;
    let id = app.create_post(&author, "лимит не превышен").await;
    assert_eq!(socket.next_post().await["postId"], id.as_str());
    socket
        .send(Message::Text("x".repeat(16 * 1024 + 1).into()))
        .await;
    let frame = socket.closed().await.expect("a close frame");
    assert_eq!(frame.code, CloseCode::Size);
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001() {
    let mut app = TestApp::spawn().await;
    let user = app.register("Последний", "Слушатель").await;
    let mut first = FeedClient::connect(&app, &user.token).await;
    let mut second = FeedClient::connect(&app, &user.token).await;

    app.begin_shutdown();
    for socket in [&mut first, &mut second] {
        let frame = socket.closed().await.expect("a close frame");
        assert_eq!(frame.code, CloseCode::Away);
    }
    app.stop().await.unwrap();
}

#[tokio::test]
async fn metrics_count_sockets_and_deliveries() {
    let app = TestApp::spawn().await;
    let author = app.register("Автор", "Считаемый").await;
    let reader = app.register("Читатель", "Считающий").await;
    app.follow(&reader, &author).await;
    // Once the follow is announced, so that the socket subscribes once: a
    // follow change reaching a socket that is still subscribing also reads
    // back the author's newest posts, and "раз" would be queued twice
    // (and written once).
    outbox_settles(&app, &[&app], 2).await;
    let mut socket = FeedClient::connect(&app, &reader.token).await;
    app.create_post(&author, "раз").await;
    socket.next_post().await;

    let response = app.get("/metrics", None).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    for line in [
        "livefeed_open_sockets 1\n",
        "livefeed_deliveries_total 1\n",
        "livefeed_publish_to_send_seconds_count 1\n",
        // json_ok checked both registrations were 200s.
        "livefeed_http_requests_total{route=\"/user/register\",method=\"POST\",status=\"200\"} 2\n",
        "livefeed_http_request_duration_seconds_count{route=\"/user/register\"} 2\n",
        "livefeed_http_requests_total{route=\"/post/feed/posted\",method=\"GET\",status=\"101\"} 1\n",
    ] {
        assert!(text.contains(line), "missing {line:?} in\n{text}");
    }
    // Two events each for the follow and the post (live, and feed cache).
    // The relay deletes a row and counts it just after the broker confirms
    // it, which may be after the frame went out: wait for the count.
    outbox_settles(&app, &[&app], 4).await;
}

/// RabbitMQ goes away under both instances: posts are still accepted, and
/// reach the follower once it is back, without restarting anything.
#[tokio::test]
async fn posts_created_while_rabbitmq_is_down_arrive_when_it_returns() {
    let vhost = std::sync::Arc::new(Vhost::create().await);
    let (mut proxy, through_proxy) = proxied_rabbit(&vhost).await;

    let database = fresh_database().await;
    let mut a = TestApp::spawn_on_broker(&database, &[], rabbit_broker(&through_proxy)).await;
    let b = TestApp::spawn_on_broker(&database, &[], rabbit_broker(&through_proxy)).await;
    a.keep(vhost);
    let author = a.register("Автор", "Настойчивый").await;
    let reader = a.register("Читатель", "Терпеливый").await;
    a.follow(&reader, &author).await;
    let mut socket = FeedClient::connect(&b, &reader.token).await;
    let before = a.create_post(&author, "до сбоя").await;
    assert_eq!(socket.next_post().await["postId"], before.as_str());

    proxy.cut();
    let during = a.create_post(&author, "во время сбоя").await;
    proxy.restore().await;

    assert_eq!(socket.next_post().await["postId"], during.as_str());
    let after = a.create_post(&author, "после сбоя").await;
    assert_eq!(socket.next_post().await["postId"], after.as_str());
    let metrics = b.get("/metrics", None).await.text().await.unwrap();
    assert!(
        !metrics.contains("livefeed_broker_reconnects_total 0\n"),
        "{metrics}"
    );
}

/// A follow reaches an open socket before its instance's broker binding for
/// the new author is in place: a post the author writes meanwhile is routed
/// elsewhere, so it is read back from PostgreSQL once the binding is in
/// place, and reaches the socket exactly once.
#[tokio::test]
async fn a_post_written_while_the_binding_is_pending_arrives_once() {
    let vhost = std::sync::Arc::new(Vhost::create().await);
    let (proxy, through_proxy) = proxied_rabbit(&vhost).await;
    let database = fresh_database().await;
    // `a` starts first, on RabbitMQ directly: it is the outbox relay, and
    // publishes while `b`'s link is frozen.
    let mut a = TestApp::spawn_on_broker(&database, &[], rabbit_broker(vhost.url())).await;
    a.keep(vhost.clone());
    let author = a.register("Автор", "Торопливый").await;
    let reader = a.register("Читатель", "Ранний").await;
    let b = TestApp::spawn_on_broker(&database, &[], rabbit_broker(&through_proxy)).await;
    instances_connected(&vhost, 2).await;
    // Following nobody yet, the socket is subscribed at once.
    let mut socket = FeedClient::connect(&b, &reader.token).await;

    // `b` hears of the follow, and asks for the author's binding, only once
    // its link thaws; the post is published before that.
    proxy.freeze();
    a.follow(&reader, &author).await;
    let during = a.create_post(&author, "пока привязка в пути").await;
    // Two events each for the follow and the post: the live one and the
    // feed cache's.
    outbox_settles(&a, &[&a], 4).await;
    proxy.thaw();

    assert_eq!(socket.next_post().await["postId"], during.as_str());
    let after = a.create_post(&author, "после привязки").await;
    // Had `during` come twice, its copy would be next.
    assert_eq!(socket.next_post().await["postId"], after.as_str());
    assert_eq!(b.metric("livefeed_binding_catch_up_posts_total").await, 1);
    assert_eq!(b.metric("livefeed_recovered_posts_total").await, 0);
    assert_eq!(b.metric("livefeed_broker_reconnects_total").await, 0);
}

/// A fresh socket is ready before its instance's broker binding is in
/// place, and gets exactly the posts committed after its follows were read:
/// a post committed just before it connected never, one committed while
/// the binding is pending once (read back by commit order once the binding
/// is in place), and the live ones after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_socket_is_ready_before_its_binding_and_gets_exactly_the_later_posts() {
    let vhost = std::sync::Arc::new(Vhost::create().await);
    let (proxy, through_proxy) = proxied_rabbit(&vhost).await;
    let database = fresh_database().await;
    // `a`, on RabbitMQ directly, is the outbox relay.
    let mut a = TestApp::spawn_on_broker(&database, &[], rabbit_broker(vhost.url())).await;
    a.keep(vhost.clone());
    let author = a.register("Автор", "Пунктуальный").await;
    let reader = a.register("Читатель", "Свежий").await;
    a.follow(&reader, &author).await;
    let b = TestApp::spawn_on_broker(&database, &[], rabbit_broker(&through_proxy)).await;
    instances_connected(&vhost, 2).await;

    // Committed (and published) before the socket connects: never its.
    let before = a.create_post(&author, "до подключения").await;
    outbox_settles(&a, &[&a], 4).await;
    // `b` cannot ask RabbitMQ for the author's binding: the socket is
    // ready all the same (`connect` awaits its first pong).
    proxy.freeze();
    let mut socket = FeedClient::connect(&b, &reader.token).await;
    let during = a.create_post(&author, "пока привязка в пути").await;
    outbox_settles(&a, &[&a], 6).await;
    proxy.thaw();

    // Had `before` come, it would be first.
    assert_eq!(socket.next_post().await["postId"], during.as_str());
    let after = a.create_post(&author, "после привязки").await;
    // Had `during` come twice, its copy would be next.
    assert_eq!(socket.next_post().await["postId"], after.as_str());
    assert_ne!(before, during);
    assert_eq!(b.metric("livefeed_binding_catch_up_posts_total").await, 1);
    assert_eq!(b.metric("livefeed_recovered_posts_total").await, 0);
    assert_eq!(b.metric("livefeed_broker_reconnects_total").await, 0);
}

/// A post inserted before a fresh socket's follows were read but committed
/// after (a slow writer) is the socket's: its binding's catch-up reads it
/// back from among the posts sequenced before the mark. Nothing publishes
/// it (no outbox row): the read-back is its only way to the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_committed_after_a_fresh_socket_subscribed_but_inserted_before_arrives() {
    let vhost = std::sync::Arc::new(Vhost::create().await);
    let (proxy, through_proxy) = proxied_rabbit(&vhost).await;
    let database = fresh_database().await;
    let mut a = TestApp::spawn_on_broker(&database, &[], rabbit_broker(vhost.url())).await;
    a.keep(vhost.clone());
    let author = a.register("Автор", "Неторопливый").await;
    let reader = a.register("Читатель", "Свежий").await;
    a.follow(&reader, &author).await;
    let b = TestApp::spawn_on_broker(&database, &[], rabbit_broker(&through_proxy)).await;
    instances_connected(&vhost, 2).await;
    a.create_post(&author, "до подключения").await;
    outbox_settles(&a, &[&a], 4).await;

    let mut slow_writer = sql(&database).await;
    let slow = slow_writer.transaction().await.unwrap();
    let late = uuid::Uuid::now_v7();
    slow.execute(
        "INSERT INTO posts (id, author_id, text) VALUES ($1, $2, 'вставлен до, закоммичен после')",
        &[&late, &author.id.parse::<uuid::Uuid>().unwrap()],
    )
    .await
    .unwrap();
    // The binding waits until the slow writer has committed, so its
    // catch-up reads after the commit.
    proxy.freeze();
    let mut socket = FeedClient::connect(&b, &reader.token).await;
    slow.commit().await.unwrap();
    proxy.thaw();

    assert_eq!(socket.next_post().await["postId"], late.to_string());
    let after = a.create_post(&author, "после привязки").await;
    assert_eq!(socket.next_post().await["postId"], after.as_str());
    assert_eq!(b.metric("livefeed_binding_catch_up_posts_total").await, 1);
}
