//! Rate limits of `/login` and `/user/register`: 429 with `Retry-After` and
//! the spec's error body, per client address (as the trusted proxy reports
//! it) and per user.

use reqwest::{Method, Response, StatusCode};
use serde_json::json;

use crate::support::{PASSWORD, TestApp, expect_error, json_ok};

async fn register_from(app: &TestApp, address: &str) -> Response {
    app.request(
        Method::POST,
        "/user/register",
        None,
        Some(json!({
            "first_name": "Спамер",
            "second_name": "Ограниченный",
            "birthdate": "1990-05-17",
            "password": PASSWORD,
        })),
    )
    .header("x-real-ip", address)
    .send()
    .await
    .expect("request reaches the server")
}

async fn login_from(app: &TestApp, address: &str, id: &str, password: &str) -> Response {
    app.request(
        Method::POST,
        "/login",
        None,
        Some(json!({ "id": id, "password": password })),
    )
    .header("x-forwarded-for", format!("10.0.0.1, {address}"))
    .send()
    .await
    .expect("request reaches the server")
}

/// Asserts a 429 in the spec's error shape with a `Retry-After` of whole
/// seconds within `at_most`.
async fn expect_limited(response: Response, at_most: u64) {
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .expect("a Retry-After header")
        .to_str()
        .unwrap()
        .parse()
        .expect("Retry-After in seconds");
    assert!(
        (1..=at_most).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    expect_error(response, StatusCode::TOO_MANY_REQUESTS).await;
}

#[tokio::test]
async fn registrations_are_limited_per_client_address() {
    let app = TestApp::spawn_with(
        &crate::support::fresh_database().await,
        &["--register-per-minute", "2"],
    )
    .await;
    for _ in 0..2 {
        json_ok(register_from(&app, "198.51.100.1").await).await;
    }
    // Two a minute: the next one is allowed 30 s later.
    expect_limited(register_from(&app, "198.51.100.1").await, 30).await;
    json_ok(register_from(&app, "198.51.100.2").await).await;
}

#[tokio::test]
async fn logins_are_limited_per_address_then_per_user() {
    let app = TestApp::spawn_with(
        &crate::support::fresh_database().await,
        &[
            "--login-per-minute",
            "3",
            "--login-per-user-per-minute",
            "5",
        ],
    )
    .await;
    // Each registers and logs in once, from the test's own address.
    let user = app.register("Пользователь", "Угадываемый").await;
    let other = app.register("Пользователь", "Другой").await;
    // Wrong passwords count as much as right ones.
    for password in ["guess-one", "guess-two", PASSWORD] {
        let response = login_from(&app, "203.0.113.1", &user.id, password).await;
        assert_ne!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    }
    expect_limited(
        login_from(&app, "203.0.113.1", &other.id, PASSWORD).await,
        20,
    )
    .await;
    // From elsewhere, the user's own allowance (5, one left) applies.
    json_ok(login_from(&app, "203.0.113.2", &user.id, PASSWORD).await).await;
    expect_limited(
        login_from(&app, "203.0.113.3", &user.id, PASSWORD).await,
        12,
    )
    .await;
    json_ok(login_from(&app, "203.0.113.3", &other.id, PASSWORD).await).await;
}

/// A peer that is not a trusted proxy cannot choose its address with a
/// header: its requests count against the peer itself.
#[tokio::test]
async fn forwarding_headers_from_untrusted_peers_are_ignored() {
    let app = TestApp::spawn_with(
        &crate::support::fresh_database().await,
        &[
            "--register-per-minute",
            "1",
            "--trusted-proxies",
            "192.0.2.1",
        ],
    )
    .await;
    json_ok(register_from(&app, "198.51.100.1").await).await;
    expect_limited(register_from(&app, "198.51.100.2").await, 60).await;
}
