use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{PASSWORD, TestApp, expect_error, json_ok, keys, sql};

#[tokio::test]
async fn register_then_get_returns_the_profile_in_the_spec_shape() {
    let app = TestApp::spawn().await;
    let user = app.register("Константин", "Осипов").await;

    let profile = json_ok(app.get(&format!("/user/get/{}", user.id), None).await).await;

    assert_eq!(
        keys(&profile),
        [
            "biography",
            "birthdate",
            "city",
            "first_name",
            "id",
            "second_name"
        ]
    );
    assert_eq!(profile["id"], user.id.as_str());
    assert_eq!(profile["first_name"], "Константин");
    assert_eq!(profile["second_name"], "Осипов");
    assert_eq!(profile["birthdate"], "1990-05-17");
    assert_eq!(profile["city"], "Москва");
    assert_eq!(profile["biography"], "Хобби");
}

#[tokio::test]
async fn register_answers_only_user_id_and_optional_fields_default_to_empty() {
    let app = TestApp::spawn().await;
    let body = json_ok(
        app.call(
            Method::POST,
            "/user/register",
            None,
            Some(json!({
                "first_name": "Анна",
                "second_name": "Иванова",
                "birthdate": "2001-12-31",
                "password": PASSWORD,
            })),
        )
        .await,
    )
    .await;
    assert_eq!(keys(&body), ["user_id"]);
    let id = body["user_id"].as_str().unwrap();
    uuid::Uuid::parse_str(id).expect("user_id is a UUID");

    let profile = json_ok(app.get(&format!("/user/get/{id}"), None).await).await;
    assert_eq!(profile["city"], "");
    assert_eq!(profile["biography"], "");
}

#[tokio::test]
async fn login_answers_a_token_and_refuses_bad_credentials() {
    let app = TestApp::spawn().await;
    let user = app.register("Иван", "Петров").await;

    let wrong = app
        .call(
            Method::POST,
            "/login",
            None,
            Some(json!({ "id": user.id, "password": "not the password" })),
        )
        .await;
    assert_eq!(
        expect_error(wrong, StatusCode::BAD_REQUEST).await,
        "wrong password"
    );

    let unknown = app
        .call(
            Method::POST,
            "/login",
            None,
            Some(json!({ "id": uuid::Uuid::now_v7(), "password": PASSWORD })),
        )
        .await;
    expect_error(unknown, StatusCode::NOT_FOUND).await;

    let missing_password = app
        .call(Method::POST, "/login", None, Some(json!({ "id": user.id })))
        .await;
    expect_error(missing_password, StatusCode::BAD_REQUEST).await;

    let ok = app
        .call(
            Method::POST,
            "/login",
            None,
            Some(json!({ "id": user.id, "password": PASSWORD })),
        )
        .await;
    let body = json_ok(ok).await;
    assert_eq!(keys(&body), ["token"]);
}

#[tokio::test]
async fn get_unknown_user_is_404_and_bad_id_is_400() {
    let app = TestApp::spawn().await;
    let missing = app
        .get(&format!("/user/get/{}", uuid::Uuid::now_v7()), None)
        .await;
    assert_eq!(
        expect_error(missing, StatusCode::NOT_FOUND).await,
        "user not found"
    );
    let bad = app.get("/user/get/12345", None).await;
    assert!(
        expect_error(bad, StatusCode::BAD_REQUEST)
            .await
            .contains("user id must be a UUID")
    );
}

/// Inserts users directly: search needs many rows, and hashing a password
/// per row through the API would only slow the test. Returns their ids,
/// ascending in the order of `names`; the rows go in from the last to the
/// first, so neither insertion order nor physical order is id order.
async fn insert_users(database_url: &str, names: &[(&str, &str)]) -> Vec<String> {
    let db = sql(database_url).await;
    let mut ids: Vec<uuid::Uuid> = names.iter().map(|_| uuid::Uuid::now_v7()).collect();
    ids.sort_unstable();
    for (id, (first, second)) in ids.iter().zip(names).rev() {
        db.execute(
            "INSERT INTO users (id, first_name, second_name, birthdate, password_hash) \
             VALUES ($1, $2, $3, '1990-01-01', 'x')",
            &[id, first, second],
        )
        .await
        .unwrap();
    }
    ids.iter().map(ToString::to_string).collect()
}

#[tokio::test]
async fn search_is_a_case_sensitive_prefix_match_on_both_names_ordered_by_id() {
    let app = TestApp::spawn().await;
    let inserted = insert_users(
        &app.database_url,
        &[
            ("Константин", "Осипов"),
            ("Константин", "Иванов"),
            ("Кон", "Осин"),
            ("константин", "осипов"),
            ("Ко%нстантин", "Осипов"),
            ("Максим", "Осипов"),
        ],
    )
    .await;

    let found = json_ok(
        app.get("/user/search?first_name=Кон&last_name=Оси", None)
            .await,
    )
    .await;
    let names: Vec<(&str, &str)> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|u| {
            (
                u["first_name"].as_str().unwrap(),
                u["second_name"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(names, [("Константин", "Осипов"), ("Кон", "Осин")]);
    let ids: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [&inserted[0], &inserted[2]], "ordered by id");
    assert_eq!(
        keys(&found[0]),
        [
            "biography",
            "birthdate",
            "city",
            "first_name",
            "id",
            "second_name"
        ]
    );

    // A LIKE wildcard in the query is matched literally, not as "anything".
    let literal = json_ok(
        app.get("/user/search?first_name=Ко%25&last_name=", None)
            .await,
    )
    .await;
    assert_eq!(literal.as_array().unwrap().len(), 1);
    assert_eq!(literal[0]["first_name"], "Ко%нстантин");
}

#[tokio::test]
async fn search_is_capped_at_100_rows_and_requires_both_names() {
    let app = TestApp::spawn().await;
    let many: Vec<(&str, &str)> = (0..120).map(|_| ("Пётр", "Сидоров")).collect();
    let inserted = insert_users(&app.database_url, &many).await;

    let found = json_ok(
        app.get("/user/search?first_name=Пёт&last_name=Сид", None)
            .await,
    )
    .await;
    let ids: Vec<&str> = found
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, inserted[..100], "the 100 smallest ids, in order");

    let missing = app.get("/user/search?first_name=Пёт", None).await;
    assert!(
        expect_error(missing, StatusCode::BAD_REQUEST)
            .await
            .contains("last_name")
    );
}
