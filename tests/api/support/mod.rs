//! The test harness: a real server on port 0 against a fresh PostgreSQL
//! database per test, and a client that speaks the spec.

mod live;
mod proxy;
mod vhost;

use std::sync::Arc;
use std::time::Duration;

use livefeed::app::App;
use livefeed::broker::{BrokerKind, MemoryBus};
use livefeed::config::Config;
use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use live::{Brokers, FeedClient, instances_connected, proxied_rabbit, rabbit_broker};
pub use proxy::TcpProxy;
pub use vhost::Vhost;

pub const SECRET: &str = "integration-test-secret-integration-test";
pub const PASSWORD: &str = "correct horse battery";

/// Bound on every single request a test makes, so a hang fails the test.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);

pub fn base_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A URL for a new, migrated database that only this test uses.
pub async fn fresh_database() -> String {
    let mut url = url::Url::parse(&base_database_url()).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&format!("livefeed_test_{}", uuid::Uuid::new_v4().simple()));
    let url = url.to_string();
    livefeed::store::migrate(&url)
        .await
        .expect("creating and migrating the test database");
    url
}

/// A connection to the test's database, for arranging data directly.
pub async fn sql(database_url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .expect("connecting to the test database");
    tokio::spawn(connection);
    client
}

pub struct TestApp {
    pub address: String,
    pub database_url: String,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    /// Whatever must outlive the server (a RabbitMQ virtual host).
    resources: Vec<Arc<dyn std::any::Any + Send + Sync>>,
}

#[derive(Debug, Clone)]
pub struct TestUser {
    pub id: String,
    pub token: String,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&fresh_database().await, &[]).await
    }

    /// Starts the real server on port 0 with the given database and extra
    /// `livefeed serve` flags, on a broker of its own inside the process.
    pub async fn spawn_with(database_url: &str, extra_args: &[&str]) -> Self {
        Self::spawn_on_broker(
            database_url,
            extra_args,
            BrokerKind::Memory(MemoryBus::new()),
        )
        .await
    }

    pub async fn spawn_on_broker(
        database_url: &str,
        extra_args: &[&str],
        broker: BrokerKind,
    ) -> Self {
        // `TEST_LOG=debug cargo test ...` shows the servers' logs.
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        // Instances of one test share its database and so its Redis keys;
        // other tests' keys are out of reach.
        let prefix = format!("{}:", database_url.rsplit('/').next().unwrap_or("test"));
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            database_url,
            "--jwt-secret",
            SECRET,
            "--redis-prefix",
            &prefix,
        ];
        args.extend_from_slice(extra_args);
        let config = Config::from_args(args).expect("test configuration is valid");
        let app = App::start(&config, broker).expect("building the app");
        let listener = livefeed::server::bind(config.listen).expect("binding port 0");
        let address = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stop) = oneshot::channel::<()>();
        let server = tokio::spawn(livefeed::server::run(
            listener,
            std::sync::Arc::new(app),
            async {
                let _ = stop.await;
            },
        ));
        Self {
            address,
            database_url: database_url.to_owned(),
            client: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .unwrap(),
            shutdown: Some(shutdown),
            server: Some(server),
            resources: Vec::new(),
        }
    }

    /// Keeps `resource` alive as long as this app.
    pub fn keep(&mut self, resource: Arc<dyn std::any::Any + Send + Sync>) {
        self.resources.push(resource);
    }

    /// Signals shutdown and waits for `server::run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        let server = self.server.take().expect("server still running");
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("server stops within 10 s")
            .expect("server task did not panic")
    }

    pub fn begin_shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    /// Sends a request; `token` becomes a bearer header, `body` JSON.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Response {
        let mut request = self.client.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        request.send().await.expect("request reaches the server")
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

impl Drop for TestApp {
    fn drop(&mut self) {
        self.begin_shutdown();
    }
}

/// Asserts a 200 with a JSON body and returns the body.
pub async fn json_ok(response: Response) -> Value {
    let status = response.status();
    let body = response.text().await.expect("reading the body");
    assert_eq!(status, StatusCode::OK, "body: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

/// Asserts an error response of `status` in the spec's shape
/// `{message, request_id, code}` and returns its message.
pub async fn expect_error(response: Response, status: StatusCode) -> String {
    assert_eq!(response.status(), status, "unexpected status");
    let request_id = response
        .headers()
        .get("x-request-id")
        .expect("x-request-id header")
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        response.headers().get("content-type").unwrap(),
        "application/json"
    );
    let body: Value = response.json().await.expect("error body is JSON");
    assert_eq!(body["request_id"], request_id.as_str(), "{body}");
    assert!(body["code"].is_u64(), "{body}");
    let message = body["message"].as_str().expect("message is a string");
    assert!(!message.is_empty());
    message.to_owned()
}

/// The `text` of each post.
pub fn texts(posts: &[Value]) -> Vec<&str> {
    posts.iter().map(|p| p["text"].as_str().unwrap()).collect()
}

/// The set of keys of a JSON object.
pub fn keys(value: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = value
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}
