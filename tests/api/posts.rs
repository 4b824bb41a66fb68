use reqwest::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

use crate::support::{TestApp, TestUser, expect_error, json_ok, keys, outbox_settles, sql};

#[tokio::test]
async fn create_answers_a_v7_id_and_get_returns_the_post_in_the_spec_shape() {
    let app = TestApp::spawn().await;
    let author = app.register("Лев", "Толстой").await;
    let reader = app.register("Анна", "Каренина").await;

    let id = app
        .create_post(&author, "Все счастливые семьи похожи друг на друга")
        .await;
    let uuid = uuid::Uuid::parse_str(&id).unwrap();
    assert_eq!(uuid.get_version_num(), 7);

    let post = json_ok(
        app.get(&format!("/post/get/{id}"), Some(&reader.token))
            .await,
    )
    .await;
    assert_eq!(keys(&post), ["author_user_id", "id", "text"]);
    assert_eq!(post["id"], id.as_str());
    assert_eq!(post["author_user_id"], author.id.as_str());
    assert_eq!(post["text"], "Все счастливые семьи похожи друг на друга");
}

#[tokio::test]
async fn only_the_author_may_update_or_delete() {
    let app = TestApp::spawn().await;
    let author = app.register("Фёдор", "Достоевский").await;
    let other = app.register("Родион", "Раскольников").await;
    let id = app.create_post(&author, "первая редакция").await;

    let update = |token: String, text: &'static str| {
        let app = &app;
        let id = id.clone();
        async move {
            app.call(
                Method::PUT,
                "/post/update",
                Some(&token),
                Some(json!({ "id": id, "text": text })),
            )
            .await
        }
    };

    let forbidden = update(other.token.clone(), "чужая правка").await;
    expect_error(forbidden, StatusCode::FORBIDDEN).await;
    let deleted_by_other = app
        .call(
            Method::PUT,
            &format!("/post/delete/{id}"),
            Some(&other.token),
            None,
        )
        .await;
    expect_error(deleted_by_other, StatusCode::FORBIDDEN).await;
    let untouched = json_ok(
        app.get(&format!("/post/get/{id}"), Some(&author.token))
            .await,
    )
    .await;
    assert_eq!(
        untouched["text"], "первая редакция",
        "refused changes left no trace"
    );

    let updated = update(author.token.clone(), "вторая редакция").await;
    assert_eq!(updated.status(), StatusCode::OK);
    let post = json_ok(
        app.get(&format!("/post/get/{id}"), Some(&other.token))
            .await,
    )
    .await;
    assert_eq!(post["text"], "вторая редакция");

    let deleted = app
        .call(
            Method::PUT,
            &format!("/post/delete/{id}"),
            Some(&author.token),
            None,
        )
        .await;
    assert_eq!(deleted.status(), StatusCode::OK);
    let gone = app
        .get(&format!("/post/get/{id}"), Some(&author.token))
        .await;
    assert_eq!(
        expect_error(gone, StatusCode::NOT_FOUND).await,
        "post not found"
    );
}

#[tokio::test]
async fn unknown_posts_are_404() {
    let app = TestApp::spawn().await;
    let user = app.register("Николай", "Гоголь").await;
    let missing = uuid::Uuid::now_v7();

    let get = app
        .get(&format!("/post/get/{missing}"), Some(&user.token))
        .await;
    expect_error(get, StatusCode::NOT_FOUND).await;
    let update = app
        .call(
            Method::PUT,
            "/post/update",
            Some(&user.token),
            Some(json!({ "id": missing, "text": "x" })),
        )
        .await;
    expect_error(update, StatusCode::NOT_FOUND).await;
    let delete = app
        .call(
            Method::PUT,
            &format!("/post/delete/{missing}"),
            Some(&user.token),
            None,
        )
        .await;
    expect_error(delete, StatusCode::NOT_FOUND).await;
}

#[tokio::test]
async fn post_text_must_be_present_non_blank_and_bounded() {
    let app = TestApp::spawn().await;
    let user = app.register("Антон", "Чехов").await;
    let cases = [
        (json!({}), "missing field `text`"),
        (json!({ "text": "" }), "text must not be empty"),
        (json!({ "text": "   \n" }), "text must not be empty"),
        (json!({ "text": 42 }), "invalid type"),
        (json!({ "text": "a\u{0}b" }), "NUL"),
        (
            json!({ "text": "я".repeat(10_001) }),
            "at most 10000 characters",
        ),
    ];
    for (body, expected) in cases {
        let response = app
            .call(
                Method::POST,
                "/post/create",
                Some(&user.token),
                Some(body.clone()),
            )
            .await;
        let message = expect_error(response, StatusCode::BAD_REQUEST).await;
        assert!(message.contains(expected), "{body}: {message}");
    }
    // The longest allowed text is accepted (10,000 two-byte characters is
    // still under the default 64 KiB body limit).
    app.create_post(&user, &"я".repeat(10_000)).await;
}

/// Sends a create without waiting for the answer.
fn create_in_background(
    app: &TestApp,
    author: &TestUser,
    text: String,
) -> tokio::task::JoinHandle<reqwest::Result<reqwest::Response>> {
    let request = app.request(
        Method::POST,
        "/post/create",
        Some(&author.token),
        Some(json!({ "text": text })),
    );
    tokio::spawn(request.send())
}

/// Holds a lock that stops every insert into `posts` until the returned
/// transaction ends.
async fn hold_posts(db: &mut tokio_postgres::Client) -> tokio_postgres::Transaction<'_> {
    let tx = db.transaction().await.unwrap();
    tx.batch_execute("LOCK TABLE posts IN SHARE MODE")
        .await
        .unwrap();
    tx
}

/// Waits (bounded) until `count` writes are blocked on [`hold_posts`]'s lock.
async fn writes_blocked(db: &tokio_postgres::Client, count: i64) {
    let blocked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let now: i64 = db
                .query_one(
                    "SELECT count(*) FROM pg_locks \
                     WHERE relation = 'posts'::regclass AND NOT granted",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if now == count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(blocked.is_ok(), "never {count} writes blocked on posts");
}

const POSTS_WAITING: &str = "livefeed_db_posts_waiting";

#[tokio::test]
async fn posts_that_wait_together_are_written_together_and_each_announced() {
    let app = TestApp::spawn().await;
    let authors = [
        app.register("Анна", "Ахматова").await,
        app.register("Марина", "Цветаева").await,
    ];
    let reader = app.register("Читатель", "Стихов").await;
    let mut db = sql(&app.database_url).await;
    let observer = sql(&app.database_url).await;

    let lock = hold_posts(&mut db).await;
    let texts: Vec<String> = (0..24).map(|n| format!("строфа {n}")).collect();
    // The first two take both write slots and block; the rest queue up.
    let mut requests = Vec::new();
    for (n, text) in texts.iter().enumerate() {
        requests.push(create_in_background(&app, &authors[n % 2], text.clone()));
        if n < 2 {
            writes_blocked(&observer, n as i64 + 1).await;
        }
    }
    app.metric_reaches(POSTS_WAITING, 24).await;
    lock.commit().await.unwrap();

    let mut ids = Vec::new();
    for request in requests {
        let response = request.await.unwrap().unwrap();
        ids.push(json_ok(response).await.as_str().unwrap().to_owned());
    }
    app.metric_reaches(POSTS_WAITING, 0).await;
    let transactions: i64 = observer
        .query_one("SELECT count(DISTINCT written_by::text) FROM posts", &[])
        .await
        .unwrap()
        .get(0);
    assert!(
        transactions <= 3,
        "24 posts queued behind two blocked writes took {transactions} transactions"
    );
    for (id, text) in ids.iter().zip(&texts) {
        let post = json_ok(
            app.get(&format!("/post/get/{id}"), Some(&reader.token))
                .await,
        )
        .await;
        assert_eq!(post["text"], text.as_str());
    }
    outbox_settles(&app, &[&app], 2 * 24).await;
}

#[tokio::test]
async fn a_post_whose_author_is_gone_fails_alone_in_its_batch() {
    let app = TestApp::spawn().await;
    let author = app.register("Остаётся", "Автор").await;
    let gone = app.register("Удалённый", "Автор").await;
    let mut db = sql(&app.database_url).await;
    let observer = sql(&app.database_url).await;
    observer
        .execute("DELETE FROM users WHERE id = $1::text::uuid", &[&gone.id])
        .await
        .unwrap();

    let lock = hold_posts(&mut db).await;
    // Two writes take both write slots and block; what comes after them
    // queues up as one batch, the gone author's post in its middle.
    let mut requests = vec![create_in_background(&app, &author, "первый".into())];
    writes_blocked(&observer, 1).await;
    requests.push(create_in_background(&app, &author, "второй".into()));
    writes_blocked(&observer, 2).await;
    for n in 0..4 {
        requests.push(create_in_background(&app, &author, format!("до {n}")));
    }
    app.metric_reaches(POSTS_WAITING, 6).await;
    let orphan = create_in_background(&app, &gone, "ничей".into());
    app.metric_reaches(POSTS_WAITING, 7).await;
    for n in 0..4 {
        requests.push(create_in_background(&app, &author, format!("после {n}")));
    }
    app.metric_reaches(POSTS_WAITING, 11).await;
    lock.commit().await.unwrap();

    expect_error(orphan.await.unwrap().unwrap(), StatusCode::UNAUTHORIZED).await;
    for request in requests {
        json_ok(request.await.unwrap().unwrap()).await;
    }
    let stored: i64 = observer
        .query_one(
            "SELECT count(*) FROM posts WHERE author_id = $1::text::uuid",
            &[&author.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, 10);
    outbox_settles(&app, &[&app], 2 * 10).await;
}
