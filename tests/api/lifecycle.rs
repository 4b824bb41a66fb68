use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::support::{PASSWORD, TestApp, json_ok};

#[tokio::test]
async fn health_and_readiness() {
    let app = TestApp::spawn().await;
    assert_eq!(
        json_ok(app.get("/healthz", None).await).await,
        json!({ "status": "ok" })
    );
    assert_eq!(
        json_ok(app.get("/readyz", None).await).await,
        json!({ "status": "ready" })
    );
}

/// A request whose handler is already running when shutdown begins is
/// finished and answered; then the server stops and refuses new connections.
#[tokio::test]
async fn shutdown_finishes_in_flight_requests_then_stops_accepting() {
    let mut app = TestApp::spawn().await;
    let address = app.address.trim_start_matches("http://").to_owned();
    let body = json!({
        "first_name": "Последний", "second_name": "Запрос",
        "birthdate": "1999-09-09", "password": PASSWORD,
    })
    .to_string();

    let stream = TcpStream::connect(&address).await.unwrap();
    let mut stream = BufReader::new(stream);
    let head = format!(
        "POST /user/register HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    stream.get_mut().write_all(head.as_bytes()).await.unwrap();
    // hyper answers 100 Continue only once the handler asks for the body:
    // from here on the request is in flight.
    let mut status_line = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_line(&mut status_line))
        .await
        .expect("100 Continue arrives")
        .unwrap();
    assert!(status_line.starts_with("HTTP/1.1 100"), "{status_line}");
    let mut blank = String::new();
    stream.read_line(&mut blank).await.unwrap();

    app.begin_shutdown();
    stream.get_mut().write_all(body.as_bytes()).await.unwrap();

    let mut response = String::new();
    tokio::time::timeout(
        Duration::from_secs(10),
        stream.read_to_string(&mut response),
    )
    .await
    .expect("the in-flight request is answered and the connection closed")
    .unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("\"user_id\""), "{response}");

    let server_address = app.address.clone();
    app.stop().await.expect("server::run returns Ok");
    let refused = reqwest::Client::new()
        .get(format!("{server_address}/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await;
    assert!(refused.is_err(), "a stopped server accepts no connections");
}
