use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::support::{SECRET, TestApp, expect_error, forged_and_expired, sign};

fn base64url(value: &serde_json::Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(value.to_string())
}

async fn feed_with_header(app: &TestApp, authorization: Option<&str>) -> reqwest::Response {
    let mut request = app.client.get(app.url("/post/feed"));
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    request.send().await.unwrap()
}

#[tokio::test]
async fn protected_paths_refuse_missing_malformed_forged_unsigned_and_expired_tokens() {
    let app = TestApp::spawn().await;
    let user = app.register("Олег", "Смирнов").await;
    let now = jsonwebtoken::get_current_timestamp();

    let [forged, expired] = forged_and_expired(&user.id);
    let unsigned = format!(
        "{}.{}.",
        base64url(&json!({ "alg": "none", "typ": "JWT" })),
        base64url(&json!({ "sub": user.id, "exp": now + 600 }))
    );
    let no_subject = sign(json!({ "exp": now + 600 }), SECRET);

    let cases = [
        (None, "missing bearer token"),
        (
            Some("Basic b2xlZzpwYXNz".to_owned()),
            "authorization header is not a bearer token",
        ),
        (
            Some("Bearer".to_owned()),
            "authorization header is not a bearer token",
        ),
        (Some("Bearer not-a-jwt".to_owned()), "invalid token"),
        (Some(format!("Bearer {forged}")), "invalid token"),
        (Some(format!("Bearer {unsigned}")), "invalid token"),
        (Some(format!("Bearer {no_subject}")), "invalid token"),
        (Some(format!("Bearer {expired}")), "token has expired"),
    ];
    for (header, expected) in cases {
        let response = feed_with_header(&app, header.as_deref()).await;
        assert_eq!(
            expect_error(response, StatusCode::UNAUTHORIZED).await,
            expected,
            "header {header:?}"
        );
    }

    let valid = feed_with_header(&app, Some(&format!("Bearer {}", user.token))).await;
    assert_eq!(valid.status(), StatusCode::OK);
}

#[tokio::test]
async fn every_protected_endpoint_requires_a_token_before_looking_at_input() {
    let app = TestApp::spawn().await;
    // Ids deliberately malformed: authentication is checked first, so each is a 401.
    let protected = [
        (Method::PUT, "/friend/set/not-a-uuid"),
        (Method::PUT, "/friend/delete/not-a-uuid"),
        (Method::POST, "/post/create"),
        (Method::PUT, "/post/update"),
        (Method::PUT, "/post/delete/not-a-uuid"),
        (Method::GET, "/post/get/not-a-uuid"),
        (Method::GET, "/post/feed?limit=0"),
        (Method::POST, "/dialog/not-a-uuid/send"),
        (Method::GET, "/dialog/not-a-uuid/list"),
    ];
    for (method, path) in protected {
        let response = app.call(method.clone(), path, None, Some(json!({}))).await;
        assert_eq!(
            expect_error(response, StatusCode::UNAUTHORIZED).await,
            "missing bearer token",
            "{method} {path}"
        );
    }
}

#[tokio::test]
async fn a_token_from_one_instance_is_accepted_by_another_sharing_the_secret() {
    let first = TestApp::spawn().await;
    let second = TestApp::spawn_with(&first.database_url, &[]).await;
    let user = first.register("Вера", "Кузнецова").await;

    let response = second.get("/post/feed", Some(&user.token)).await;
    assert_eq!(response.status(), StatusCode::OK);
}
