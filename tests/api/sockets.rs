//! What one client can cost the others: sockets per user, and sockets that
//! stop taking what the server writes.

use std::time::Duration;

use serde_json::Value;
use tokio_tungstenite::tungstenite::Error as WsError;

use crate::support::{FeedClient, TestApp};

/// The default `LIVEFEED_MAX_SOCKETS_PER_USER`.
const PER_USER: usize = 10;

#[tokio::test]
async fn one_user_holds_at_most_ten_sockets_and_a_closed_one_frees_a_place() {
    let app = TestApp::spawn().await;
    let greedy = app.register("Жадный", "Вкладочник").await;
    let modest = app.register("Скромный", "Читатель").await;
    let mut sockets = Vec::new();
    for _ in 0..PER_USER {
        sockets.push(FeedClient::connect(&app, &greedy.token).await);
    }

    let refused = FeedClient::open(&app, Some(&greedy.token), "", None).await;
    let Err(WsError::Http(response)) = refused else {
        panic!("the 11th socket was not refused over HTTP");
    };
    assert_eq!(response.status().as_u16(), 429);
    let body: Value = serde_json::from_slice(response.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["code"], 1129, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("10 open websockets"),
        "{body}"
    );
    // Another user is not held back by the first one's sockets.
    FeedClient::connect(&app, &modest.token).await;

    sockets.pop().unwrap().close().await;
    let reopened = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match FeedClient::open(&app, Some(&greedy.token), "", None).await {
                Ok((socket, _)) => return socket,
                Err(WsError::Http(response)) if response.status().as_u16() == 429 => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(other) => panic!("unexpected error {other}"),
            }
        }
    })
    .await;
    assert!(reopened.is_ok(), "the closed socket's place never freed");
}
