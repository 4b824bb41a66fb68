//! Promises of the README and the spec that no other test held to: tokens
//! on the websocket, tokens whose user is gone, the ping timeout, a ping
//! answered only once subscribed, the catch-up cap, and timeouts answered
//! as 503.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{
    FeedClient, SECRET, TestApp, expect_error_code, forged_and_expired, fresh_database, json_ok,
    sign, sql,
};

/// The HTTP status a refused websocket handshake answered.
fn refused_with<T>(opened: Result<T, tokio_tungstenite::tungstenite::Error>) -> u16 {
    match opened {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, but the websocket opened"),
    }
}

#[tokio::test]
async fn the_websocket_refuses_forged_and_expired_tokens_in_the_header_and_the_query() {
    let app = TestApp::spawn().await;
    let user = app.register("Сокет", "Недоверчивый").await;
    let [forged, expired] = forged_and_expired(&user.id);
    for token in [&forged, &expired] {
        assert_eq!(
            refused_with(FeedClient::open(&app, Some(token), "", None).await),
            401
        );
        let query = format!("?token={token}");
        assert_eq!(
            refused_with(FeedClient::open(&app, None, &query, None).await),
            401
        );
    }
    // The same user with a good token gets in either way.
    FeedClient::open(&app, Some(&user.token), "", None)
        .await
        .expect("a header token is accepted");
    FeedClient::open(&app, None, &format!("?token={}", user.token), None)
        .await
        .expect("a query token is accepted");
}

/// A token is checked by its signature and expiry alone (no query per
/// request), so one that outlived its user (the database was replaced under
/// the same secret) still passes. Writes would attach rows to nobody: they
/// answer 401 and write nothing, even when the other user is unknown too.
/// Reads answer what exists for the id: nothing.
#[tokio::test]
async fn a_token_whose_user_is_gone_cannot_write_and_reads_find_nothing() {
    let database = fresh_database().await;
    let app = TestApp::spawn_with(&database, &[]).await;
    let someone = app.register("Живой", "Настоящий").await;
    let now = jsonwebtoken::get_current_timestamp();
    let ghost = uuid::Uuid::now_v7().to_string();
    let token = sign(
        json!({ "sub": ghost, "iat": now, "exp": now + 600 }),
        SECRET,
    );
    let nobody = uuid::Uuid::now_v7();
    let writes = [
        (
            Method::POST,
            "/post/create".to_owned(),
            Some(json!({ "text": "из ниоткуда" })),
        ),
        (Method::PUT, format!("/friend/set/{}", someone.id), None),
        (Method::PUT, format!("/friend/set/{nobody}"), None),
        (
            Method::POST,
            format!("/dialog/{}/send", someone.id),
            Some(json!({ "text": "эй" })),
        ),
        (
            Method::POST,
            format!("/dialog/{nobody}/send"),
            Some(json!({ "text": "эй" })),
        ),
    ];
    for (method, path, body) in writes {
        let refused = app.call(method, &path, Some(&token), body).await;
        let message = expect_error_code(refused, StatusCode::UNAUTHORIZED, 1100).await;
        assert!(message.contains("does not exist"), "{path}: {message}");
    }
    let keyed = app
        .request(
            Method::POST,
            "/post/create",
            Some(&token),
            Some(json!({ "text": "снова" })),
        )
        .header("Idempotency-Key", "ghost-1")
        .send()
        .await
        .unwrap();
    expect_error_code(keyed, StatusCode::UNAUTHORIZED, 1100).await;

    let db = sql(&database).await;
    for table in ["posts", "friends", "dialog_messages", "idempotency_keys"] {
        let rows: i64 = db
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(rows, 0, "{table} holds a row of the unknown user");
    }
    let feed = json_ok(app.get("/post/feed", Some(&token)).await).await;
    assert_eq!(feed, json!([]));
    let dialog = json_ok(
        app.get(&format!("/dialog/{}/list", someone.id), Some(&token))
            .await,
    )
    .await;
    assert_eq!(dialog, json!([]));
}

#[tokio::test]
async fn a_silent_socket_is_closed_at_the_ping_timeout_and_an_answering_one_is_kept() {
    let app = TestApp::spawn_with(&fresh_database().await, &["--ping-interval-secs", "1"]).await;
    let author = app.register("Автор", "Пингующий").await;
    let reader = app.register("Читатель", "Внимательный").await;
    app.follow(&reader, &author).await;
    let mut silent = FeedClient::connect(&app, &reader.token).await;
    let mut answering = FeedClient::connect(&app, &reader.token).await;
    app.metric_reaches("livefeed_open_sockets", 2).await;

    // Reading answers the server's pings; the silent client reads nothing.
    let reads = tokio::spawn(async move {
        let post = answering.next_post().await;
        (answering, post)
    });
    app.metric_reaches("livefeed_open_sockets", 1).await;
    let id = app.create_post(&author, "ты ещё здесь?").await;
    let (_answering, post) = tokio::time::timeout(Duration::from_secs(30), reads)
        .await
        .expect("the answering client reads on")
        .unwrap();
    assert_eq!(post["postId"], id.as_str());
    // A peer that does not answer pings gets no close frame, just the end.
    assert!(silent.closed().await.is_none());
}

/// A ping the client sends in the same write as its upgrade request
/// reaches the server with the request; it is still answered only once the
/// socket is subscribed and caught up: after the catch-up's posts.
#[tokio::test]
async fn a_ping_sent_with_the_upgrade_request_is_answered_after_the_catch_up() {
    let app = TestApp::spawn().await;
    let author = app.register("Автор", "Торопливый").await;
    let reader = app.register("Читатель", "Нетерпеливый").await;
    app.follow(&reader, &author).await;
    let seen = app.create_post(&author, "видел").await;
    let mut missed = Vec::new();
    for text in ["раз", "два", "три"] {
        missed.push(app.create_post(&author, text).await);
    }
    let address = app.address.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut request = format!(
        "GET /post/feed/posted?since={seen} HTTP/1.1\r\nHost: {address}\r\n\
         Upgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {}\r\n\r\n",
        reader.token
    )
    .into_bytes();
    let mask = [7u8, 1, 2, 9];
    request.extend([0x89, 0x80 | 6]);
    request.extend(mask);
    request.extend(
        b"ready?"
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m),
    );
    stream.write_all(&request).await.unwrap();

    let mut frames = ServerFrames::after_101(stream).await;
    let mut texts = Vec::new();
    loop {
        let (opcode, payload) = frames.next().await;
        match opcode {
            0x1 => {
                let post: serde_json::Value = serde_json::from_slice(&payload).unwrap();
                texts.push(post["postId"].as_str().unwrap().to_owned());
            }
            0xA => {
                assert_eq!(payload, b"ready?");
                break;
            }
            other => panic!("unexpected frame {other:#x}"),
        }
    }
    assert_eq!(texts, missed, "the pong came after the whole catch-up");
}

/// Reads a server's unmasked websocket frames off a raw stream.
struct ServerFrames {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
}

impl ServerFrames {
    /// Reads the handshake's answer (a 101) and keeps what follows it.
    async fn after_101(stream: tokio::net::TcpStream) -> Self {
        let mut frames = Self {
            stream,
            buffer: Vec::new(),
        };
        let end = loop {
            if let Some(at) = frames.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            frames.fill().await;
        };
        assert!(
            frames.buffer.starts_with(b"HTTP/1.1 101"),
            "{:?}",
            String::from_utf8_lossy(&frames.buffer)
        );
        frames.buffer.drain(..end);
        frames
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
            .await
            .expect("the server sends within 10 s")
            .unwrap();
        assert!(n > 0, "the server closed the connection");
        self.buffer.extend_from_slice(&chunk[..n]);
    }

    /// The next frame's opcode and payload.
    async fn next(&mut self) -> (u8, Vec<u8>) {
        loop {
            if self.buffer.len() >= 2 {
                let (header, len) = match self.buffer[1] & 0x7f {
                    126 if self.buffer.len() >= 4 => (
                        4,
                        usize::from(u16::from_be_bytes([self.buffer[2], self.buffer[3]])),
                    ),
                    126 => (usize::MAX, 0),
                    127 => panic!("a frame over 64 KiB"),
                    short => (2, usize::from(short)),
                };
                if header != usize::MAX && self.buffer.len() >= header + len {
                    let opcode = self.buffer[0] & 0x0f;
                    let payload = self.buffer[header..header + len].to_vec();
                    self.buffer.drain(..header + len);
                    return (opcode, payload);
                }
            }
            self.fill().await;
        }
    }
}

/// Inserts `count` posts of `authors` in turn, texts `c1`, `c2`..., each
/// in a transaction of its own as the API would (posts of one transaction
/// are all "in flight" for one another, and a catch-up resends those).
async fn insert_posts(database_url: &str, authors: [&str; 2], count: usize) {
    let db = sql(database_url).await;
    let insert = db
        .prepare("INSERT INTO posts (id, author_id, text) VALUES (gen_random_uuid(), $1::text::uuid, $2)")
        .await
        .unwrap();
    for n in 1..=count {
        db.execute(&insert, &[&authors[n % 2], &format!("c{n}")])
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_catch_up_sends_the_oldest_thousand_and_the_next_one_goes_on_from_there() {
    let app = TestApp::spawn().await;
    let one = app.register("Автор", "Первый").await;
    let two = app.register("Автор", "Второй").await;
    let reader = app.register("Читатель", "Отставший").await;
    app.follow(&reader, &one).await;
    app.follow(&reader, &two).await;
    let seen = app.create_post(&one, "видел").await;
    insert_posts(&app.database_url, [&one.id, &two.id], 1005).await;

    let (_first, caught_up) =
        FeedClient::open(&app, Some(&reader.token), &format!("?since={seen}"), None)
            .await
            .unwrap();
    let texts: Vec<&str> = caught_up
        .iter()
        .map(|p| p["postText"].as_str().unwrap())
        .collect();
    let expected: Vec<String> = (1..=1000).map(|n| format!("c{n}")).collect();
    assert_eq!(texts, expected, "the oldest 1000, in order");

    let last = caught_up[999]["postId"].as_str().unwrap();
    let (_second, rest) =
        FeedClient::open(&app, Some(&reader.token), &format!("?since={last}"), None)
            .await
            .unwrap();
    let texts: Vec<&str> = rest
        .iter()
        .map(|p| p["postText"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["c1001", "c1002", "c1003", "c1004", "c1005"]);
}

/// An exclusive lock on `users`, held in a transaction of the test's own:
/// every read of a profile waits on it.
async fn lock_users(database_url: &str) -> tokio_postgres::Client {
    let db = sql(database_url).await;
    db.batch_execute("BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    db
}

#[tokio::test]
async fn a_statement_over_its_timeout_is_a_503() {
    let database = fresh_database().await;
    let app = TestApp::spawn_with(&database, &["--statement-timeout-ms", "1000"]).await;
    let user = app.register("Запрос", "Долгий").await;
    let profile = format!("/user/get/{}", user.id);

    let lock = lock_users(&database).await;
    let response = app.get(&profile, None).await;
    assert!(response.headers().contains_key("retry-after"));
    expect_error_code(response, StatusCode::SERVICE_UNAVAILABLE, 2001).await;
    lock.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(app.get(&profile, None).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_request_over_its_timeout_is_a_503() {
    let database = fresh_database().await;
    let app = TestApp::spawn_with(&database, &["--request-timeout-ms", "1000"]).await;
    let user = app.register("Запрос", "Бесконечный").await;
    let profile = format!("/user/get/{}", user.id);

    let lock = lock_users(&database).await;
    let response = app.get(&profile, None).await;
    assert!(response.headers().contains_key("retry-after"));
    expect_error_code(response, StatusCode::SERVICE_UNAVAILABLE, 2002).await;
    lock.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(app.get(&profile, None).await.status(), StatusCode::OK);
}
