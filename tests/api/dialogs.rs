use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{TestApp, expect_error, json_ok, keys};

#[tokio::test]
async fn both_participants_see_the_conversation_in_order() {
    let app = TestApp::spawn().await;
    let masha = app.register("Маша", "Миронова").await;
    let petya = app.register("Пётр", "Гринёв").await;
    let other = app.register("Алексей", "Швабрин").await;

    for (from, to, text) in [
        (&masha, &petya, "Привет, как дела?"),
        (&petya, &masha, "Хорошо!"),
        (&masha, &other, "не для Петра"),
        (&masha, &petya, "Отлично"),
    ] {
        let response = app
            .call(
                Method::POST,
                &format!("/dialog/{}/send", to.id),
                Some(&from.token),
                Some(json!({ "text": text })),
            )
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    let seen_by_petya = json_ok(
        app.get(&format!("/dialog/{}/list", masha.id), Some(&petya.token))
            .await,
    )
    .await;
    let seen_by_masha = json_ok(
        app.get(&format!("/dialog/{}/list", petya.id), Some(&masha.token))
            .await,
    )
    .await;
    assert_eq!(seen_by_petya, seen_by_masha);
    let messages = seen_by_petya.as_array().unwrap();
    assert_eq!(messages.len(), 3);
    assert_eq!(keys(&messages[0]), ["from", "text", "to"]);
    assert_eq!(messages[0]["from"], masha.id.as_str());
    assert_eq!(messages[0]["to"], petya.id.as_str());
    assert_eq!(messages[1]["text"], "Хорошо!");
    assert_eq!(messages[2]["text"], "Отлично");
}

#[tokio::test]
async fn dialogs_refuse_unknown_users_self_and_bad_text() {
    let app = TestApp::spawn().await;
    let user = app.register("Робинзон", "Крузо").await;
    let nobody = uuid::Uuid::now_v7();

    let send = app
        .call(
            Method::POST,
            &format!("/dialog/{nobody}/send"),
            Some(&user.token),
            Some(json!({ "text": "есть кто?" })),
        )
        .await;
    expect_error(send, StatusCode::NOT_FOUND).await;
    let list = app
        .get(&format!("/dialog/{nobody}/list"), Some(&user.token))
        .await;
    expect_error(list, StatusCode::NOT_FOUND).await;

    let to_self = app
        .call(
            Method::POST,
            &format!("/dialog/{}/send", user.id),
            Some(&user.token),
            Some(json!({ "text": "сам с собой" })),
        )
        .await;
    expect_error(to_self, StatusCode::BAD_REQUEST).await;

    let friday = app.register("Пятница", "Островной").await;
    let empty = app
        .call(
            Method::POST,
            &format!("/dialog/{}/send", friday.id),
            Some(&user.token),
            Some(json!({ "text": "" })),
        )
        .await;
    expect_error(empty, StatusCode::BAD_REQUEST).await;
    let list = json_ok(
        app.get(&format!("/dialog/{}/list", friday.id), Some(&user.token))
            .await,
    )
    .await;
    assert_eq!(list, json!([]));
}
