use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{PASSWORD, TestApp, expect_error, expect_error_code, fresh_database, json_ok};

async fn register_raw(app: &TestApp, body: String) -> reqwest::Response {
    app.client
        .post(app.url("/user/register"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_or_invalid_registrations_are_400_with_a_message() {
    let app = TestApp::spawn().await;
    let valid = json!({
        "first_name": "Имя", "second_name": "Фамилия", "birthdate": "2000-01-01",
        "city": "Москва", "biography": "", "password": PASSWORD,
    });
    let with = |field: &str, value: serde_json::Value| {
        let mut body = valid.clone();
        body[field] = value;
        body.to_string()
    };
    let cases = [
        ("{\"first_name\": ".to_owned(), "EOF while parsing"),
        ("not json".to_owned(), "expected"),
        ("[]".to_owned(), "invalid length 0"),
        (String::new(), "EOF while parsing"),
        (with("first_name", json!(7)), "invalid type"),
        (
            with("first_name", json!("")),
            "first_name must not be empty",
        ),
        (
            with("second_name", json!("я".repeat(101))),
            "second_name must be at most 100",
        ),
        (
            with("birthdate", json!("17.02.2001")),
            "birthdate must be a date YYYY-MM-DD",
        ),
        (
            with("birthdate", json!("2001-02-30")),
            "birthdate must be a date YYYY-MM-DD",
        ),
        (
            with("birthdate", json!("2999-01-01")),
            "between 1900-01-01 and today",
        ),
        (
            with("password", json!("short")),
            "password must be at least 8",
        ),
        (with("city", json!(null)), "invalid type"),
    ];
    for (body, expected) in cases {
        let response = register_raw(&app, body.clone()).await;
        let message = expect_error(response, StatusCode::BAD_REQUEST).await;
        assert!(message.contains(expected), "{body}: {message}");
    }
    // The valid body itself is accepted, so the failures above are the field's.
    assert_eq!(
        register_raw(&app, valid.to_string()).await.status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_whether_declared_or_streamed() {
    let app = TestApp::spawn_with(&fresh_database().await, &["--max-body-bytes", "1024"]).await;
    let big = json!({ "first_name": "x".repeat(2000) }).to_string();

    let declared = register_raw(&app, big.clone()).await;
    expect_error(declared, StatusCode::PAYLOAD_TOO_LARGE).await;

    // No Content-Length: the limit is enforced while the body streams in.
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(100)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let streamed = app
        .client
        .post(app.url("/user/register"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    expect_error(streamed, StatusCode::PAYLOAD_TOO_LARGE).await;
}

#[tokio::test]
async fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
    let app = TestApp::spawn().await;
    let unknown = app.get("/nothing/here", None).await;
    expect_error_code(unknown, StatusCode::NOT_FOUND, 1105).await;

    let wrong = app.call(Method::DELETE, "/post/create", None, None).await;
    assert_eq!(wrong.headers().get("allow").unwrap(), "POST");
    expect_error(wrong, StatusCode::METHOD_NOT_ALLOWED).await;
}

#[tokio::test]
async fn no_input_makes_the_server_fail_or_hang() {
    let app = TestApp::spawn().await;
    let user = app.register("Хаос", "Мартышкин").await;
    let nasty = [
        "%FF%FE",
        "\u{0}",
        "'; DROP TABLE users; --",
        "%",
        "_",
        "\\",
        "ﷺ𝕏🙂",
    ];
    for input in nasty {
        let encoded: String = url::form_urlencoded::byte_serialize(input.as_bytes()).collect();
        for (method, path) in [
            (Method::GET, format!("/user/get/{encoded}")),
            (
                Method::GET,
                format!("/user/search?first_name={encoded}&last_name={encoded}"),
            ),
            (Method::GET, format!("/post/feed?offset={encoded}")),
            (Method::GET, format!("/post/get/{encoded}")),
            (Method::GET, format!("/dialog/{encoded}/list")),
        ] {
            let response = app.call(method, &path, Some(&user.token), None).await;
            assert!(
                response.status().is_success() || response.status().is_client_error(),
                "{path}: {}",
                response.status()
            );
        }
    }
    // LIKE's wildcards are matched literally: no name starts with `%` or
    // `_`, so neither finds the one user there is.
    for wildcard in ["%25", "_"] {
        let found = json_ok(
            app.get(
                &format!("/user/search?first_name={wildcard}&last_name={wildcard}"),
                None,
            )
            .await,
        )
        .await;
        assert_eq!(found, json!([]), "searching for {wildcard}");
    }
    let everyone = json_ok(app.get("/user/search?first_name=&last_name=", None).await).await;
    assert_eq!(everyone.as_array().unwrap().len(), 1, "the user is there");
    // A raw percent-decoded NUL in a search term is a 400, not a database error.
    let nul = app
        .get("/user/search?first_name=%00&last_name=", None)
        .await;
    expect_error(nul, StatusCode::BAD_REQUEST).await;
}
