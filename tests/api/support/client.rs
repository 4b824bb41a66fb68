//! The REST client of the tests: the spec's calls against one server
//! address, whether that server runs inside the test or as a process.

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;

use super::{PASSWORD, json_ok, texts};

/// Bound on every single request a test makes, so a hang fails the test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub token: String,
}

pub struct ApiClient {
    /// `http://host:port`
    pub address: String,
    pub client: reqwest::Client,
}

impl ApiClient {
    pub fn new(address: String) -> Self {
        Self {
            address,
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// A request; `token` becomes a bearer header, `body` JSON.
    pub fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> RequestBuilder {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request
    }

    /// Sends a request; panics when it does not reach the server.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        self.request(method, path, token, body)
            .send()
            .await
            .expect("request reaches the server")
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.call(Method::GET, path, token, None).await
    }

    pub async fn register(&self, first_name: &str, second_name: &str) -> TestUser {
        let response = self
            .call(
                Method::POST,
                "/user/register",
                None,
                Some(serde_json::json!({
                    "first_name": first_name,
                    "second_name": second_name,
                    "birthdate": "1990-05-17",
                    "biography": "Хобби",
                    "city": "Москва",
                    "password": PASSWORD,
                })),
            )
            .await;
        let id = json_ok(response).await["user_id"]
            .as_str()
            .expect("user_id is a string")
            .to_owned();
        let token = self.login(&id).await;
        TestUser { id, token }
    }

    pub async fn login(&self, id: &str) -> String {
        let response = self
            .call(
                Method::POST,
                "/login",
                None,
                Some(serde_json::json!({ "id": id, "password": PASSWORD })),
            )
            .await;
        json_ok(response).await["token"]
            .as_str()
            .expect("token is a string")
            .to_owned()
    }

    pub async fn follow(&self, follower: &TestUser, author: &TestUser) {
        let path = format!("/friend/set/{}", author.id);
        let response = self
            .call(Method::PUT, &path, Some(&follower.token), None)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    pub async fn unfollow(&self, follower: &TestUser, author: &TestUser) {
        let path = format!("/friend/delete/{}", author.id);
        let response = self
            .call(Method::PUT, &path, Some(&follower.token), None)
            .await;
        assert_eq!(response.status(), StatusCode::OK);
    }

    pub async fn create_post(&self, author: &TestUser, text: &str) -> String {
        let response = self
            .call(
                Method::POST,
                "/post/create",
                Some(&author.token),
                Some(serde_json::json!({ "text": text })),
            )
            .await;
        json_ok(response)
            .await
            .as_str()
            .expect("/post/create answers the id as a JSON string")
            .to_owned()
    }

    /// Polls `reader`'s feed until its post texts are `expected`: the cache
    /// is updated through the queue, a moment after each write.
    pub async fn feed_settles_to(&self, reader: &TestUser, query: &str, expected: &[&str]) {
        let mut last = Vec::new();
        let settled = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                last = self.feed(reader, query).await;
                if texts(&last) == expected {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(
            settled.is_ok(),
            "feed{query} never became {expected:?}; last: {:?}",
            texts(&last)
        );
    }

    /// Waits (bounded) until the counter or gauge `name` is `value`.
    pub async fn metric_reaches(&self, name: &str, value: u64) {
        let mut last = None;
        let reached = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let now = self.metric(name).await;
                if now == value {
                    return;
                }
                last = Some(now);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        assert!(
            reached.is_ok(),
            "{name} never became {value}; last {last:?}"
        );
    }

    /// The value of the counter or gauge `name` in `/metrics`.
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.get("/metrics", None).await.text().await.unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .parse()
            .unwrap_or_else(|e| panic!("{name} is not a whole number ({e}) in\n{text}"))
    }

    pub async fn feed(&self, reader: &TestUser, query: &str) -> Vec<Value> {
        let response = self
            .get(&format!("/post/feed{query}"), Some(&reader.token))
            .await;
        json_ok(response)
            .await
            .as_array()
            .expect("feed is an array")
            .clone()
    }
}
