//! `Idempotency-Key` on `POST /post/create` and `/dialog/{user_id}/send`: a
//! retry answers the first response and writes nothing, even when the
//! first request committed and its response never reached the client.

use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::support::{TestApp, TestUser, expect_error, json_ok, sql};

async fn post_with_key(app: &TestApp, author: &TestUser, text: &str, key: &str) -> Response {
    app.request(
        Method::POST,
        "/post/create",
        Some(&author.token),
        Some(json!({ "text": text })),
    )
    .header("idempotency-key", key)
    .send()
    .await
    .expect("request reaches the server")
}

async fn send_with_key(
    app: &TestApp,
    from: &TestUser,
    to: &TestUser,
    text: &str,
    key: &str,
) -> Response {
    app.request(
        Method::POST,
        &format!("/dialog/{}/send", to.id),
        Some(&from.token),
        Some(json!({ "text": text })),
    )
    .header("idempotency-key", key)
    .send()
    .await
    .expect("request reaches the server")
}

fn replayed(response: &Response) -> bool {
    response.headers().get("idempotent-replayed").is_some()
}

async fn count(app: &TestApp, table: &str) -> i64 {
    sql(&app.database_url)
        .await
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn a_retried_post_answers_the_first_id_and_writes_once() {
    let app = TestApp::spawn().await;
    let author = app.register("Автор", "Повторяющийся").await;

    let first = post_with_key(&app, &author, "один раз", "key-1").await;
    assert!(!replayed(&first));
    let id = json_ok(first).await;
    let again = post_with_key(&app, &author, "один раз", "key-1").await;
    assert!(replayed(&again));
    assert_eq!(json_ok(again).await, id);
    assert_eq!(count(&app, "posts").await, 1);

    // Without a key, or with another, each request writes.
    let other = json_ok(post_with_key(&app, &author, "один раз", "key-2").await).await;
    assert_ne!(other, id);
    app.create_post(&author, "один раз").await;
    assert_eq!(count(&app, "posts").await, 3);
}

/// The first request commits, but its response is lost (the client never
/// reads it and goes away): the retry gets the id of the post that was
/// written, not a second post.
#[tokio::test]
async fn a_retry_after_a_lost_response_does_not_post_twice() {
    let app = TestApp::spawn().await;
    let author = app.register("Автор", "Потерявший").await;
    let address = app.address.strip_prefix("http://").unwrap();
    let body = json!({ "text": "ответ потерян" }).to_string();
    let request = format!(
        "POST /post/create HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\n\
         Idempotency-Key: lost-1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        author.token,
        body.len()
    );
    let mut lost = TcpStream::connect(address).await.unwrap();
    lost.write_all(request.as_bytes()).await.unwrap();
    let db = sql(&app.database_url).await;
    let written: String = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(row) = db
                .query_opt("SELECT id::text FROM posts", &[])
                .await
                .unwrap()
            {
                return row.get(0);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the first request commits");
    drop(lost);

    let retry = post_with_key(&app, &author, "ответ потерян", "lost-1").await;
    assert!(replayed(&retry));
    assert_eq!(json_ok(retry).await, Value::String(written));
    assert_eq!(count(&app, "posts").await, 1);
}

#[tokio::test]
async fn concurrent_requests_with_one_key_write_once() {
    let app = TestApp::spawn().await;
    let author = app.register("Автор", "Торопливый").await;
    let responses = futures_util::future::join_all(
        (0..4).map(|_| post_with_key(&app, &author, "вместе", "race")),
    )
    .await;
    let mut ids = Vec::new();
    for response in responses {
        ids.push(json_ok(response).await);
    }
    assert!(ids.windows(2).all(|pair| pair[0] == pair[1]), "{ids:?}");
    assert_eq!(count(&app, "posts").await, 1);
}

#[tokio::test]
async fn a_key_reused_for_another_request_is_refused() {
    let app = TestApp::spawn().await;
    let author = app.register("Автор", "Путаный").await;
    let friend = app.register("Друг", "Первый").await;
    let other = app.register("Друг", "Второй").await;
    json_ok(post_with_key(&app, &author, "первый текст", "same").await).await;
    let reused = post_with_key(&app, &author, "другой текст", "same").await;
    let message = expect_error(reused, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(message.contains("Idempotency-Key"), "{message}");
    assert_eq!(count(&app, "posts").await, 1);

    let sent = send_with_key(&app, &author, &friend, "привет", "msg").await;
    assert_eq!(sent.status(), StatusCode::OK);
    let again = send_with_key(&app, &author, &friend, "привет", "msg").await;
    assert_eq!(again.status(), StatusCode::OK);
    assert!(replayed(&again));
    assert_eq!(again.text().await.unwrap(), "");
    assert_eq!(count(&app, "dialog_messages").await, 1);
    // The same text to someone else is another request.
    let elsewhere = send_with_key(&app, &author, &other, "привет", "msg").await;
    expect_error(elsewhere, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert_eq!(count(&app, "dialog_messages").await, 1);
}

#[tokio::test]
async fn keys_are_scoped_per_user_and_endpoint() {
    let app = TestApp::spawn().await;
    let alice = app.register("Алиса", "Своя").await;
    let bob = app.register("Боб", "Свой").await;
    let a = json_ok(post_with_key(&app, &alice, "текст", "shared").await).await;
    let b = post_with_key(&app, &bob, "текст", "shared").await;
    assert!(!replayed(&b));
    assert_ne!(json_ok(b).await, a);
    let sent = send_with_key(&app, &alice, &bob, "текст", "shared").await;
    assert_eq!(sent.status(), StatusCode::OK);
    assert!(!replayed(&sent));
    assert_eq!(count(&app, "posts").await, 2);
    assert_eq!(count(&app, "dialog_messages").await, 1);
}

#[tokio::test]
async fn malformed_keys_are_refused() {
    let app = TestApp::spawn().await;
    let author = app.register("Автор", "Небрежный").await;
    let long = "k".repeat(256);
    for key in ["", long.as_str(), "with space", "tab\tinside"] {
        let response = post_with_key(&app, &author, "текст", key).await;
        expect_error(response, StatusCode::BAD_REQUEST).await;
    }
    let non_ascii = app
        .request(
            Method::POST,
            "/post/create",
            Some(&author.token),
            Some(json!({ "text": "текст" })),
        )
        .header(
            "idempotency-key",
            reqwest::header::HeaderValue::from_bytes("ключ".as_bytes()).unwrap(),
        )
        .send()
        .await
        .unwrap();
    expect_error(non_ascii, StatusCode::BAD_REQUEST).await;
    let twice = app
        .request(
            Method::POST,
            "/post/create",
            Some(&author.token),
            Some(json!({ "text": "текст" })),
        )
        .header("idempotency-key", "one")
        .header("idempotency-key", "two")
        .send()
        .await
        .unwrap();
    expect_error(twice, StatusCode::BAD_REQUEST).await;
    let longest = "k".repeat(255);
    json_ok(post_with_key(&app, &author, "текст", &longest).await).await;
    assert_eq!(count(&app, "posts").await, 1);
}

/// Keys live a day: an expired key writes again, and keyed writes purge
/// expired keys as they go.
#[tokio::test]
async fn keys_expire_after_a_day_and_are_purged() {
    let app = TestApp::spawn().await;
    let author = app.register("Автор", "Вчерашний").await;
    let db = sql(&app.database_url).await;
    let first = json_ok(post_with_key(&app, &author, "вчера", "daily").await).await;
    json_ok(post_with_key(&app, &author, "давно", "old").await).await;
    db.execute(
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours'",
        &[],
    )
    .await
    .unwrap();

    let second = json_ok(post_with_key(&app, &author, "вчера", "daily").await).await;
    assert_ne!(second, first, "an expired key writes again");
    let keys: Vec<String> = db
        .query("SELECT key FROM idempotency_keys ORDER BY key", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(keys, ["daily"], "the expired key `old` was purged");
    assert_eq!(count(&app, "posts").await, 3);
}
