use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, expect_error, json_ok, keys};

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
