//! The test harness: a real server on port 0 against a fresh PostgreSQL
//! database per test, and a client that speaks the spec.

mod client;
mod live;
mod proxy;
pub mod vhost;

use std::sync::Arc;
use std::time::Duration;

use livefeed::app::App;
use livefeed::broker::{BrokerKind, MemoryBus};
use livefeed::config::Config;
use reqwest::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use client::{ApiClient, TestUser};
pub use live::{Brokers, FeedClient, instances_connected, proxied_rabbit, rabbit_broker};
pub use proxy::TcpProxy;
pub use vhost::{Rabbitmqctl, Vhost};

pub const SECRET: &str = "integration-test-secret-integration-test";
pub const PASSWORD: &str = "correct horse battery";

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

/// A server inside the test process; its REST calls come through `Deref`.
pub struct TestApp {
    api: ApiClient,
    pub database_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<anyhow::Result<()>>>,
    /// Whatever must outlive the server (a RabbitMQ virtual host).
    resources: Vec<Arc<dyn std::any::Any + Send + Sync>>,
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
        // Tests register and log in from one address far faster than a
        // person: the rate limits apply only where a test sets them.
        for flag in [
            "--register-per-minute",
            "--login-per-minute",
            "--login-per-user-per-minute",
        ] {
            if !extra_args.contains(&flag) {
                args.extend([flag, "1000000"]);
            }
        }
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
            api: ApiClient::new(address),
            database_url: database_url.to_owned(),
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
}

impl std::ops::Deref for TestApp {
    type Target = ApiClient;

    fn deref(&self) -> &ApiClient {
        &self.api
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
/// `{message, request_id, code}`, with the code src/http/error.rs gives the
/// usual error of that status, and returns its message.
pub async fn expect_error(response: Response, status: StatusCode) -> String {
    let code = match status.as_u16() {
        400 => 1000,
        401 => 1100,
        403 => 1103,
        404 => 1104,
        405 => 1106,
        413 => 1001,
        422 => 1122,
        429 => 1129,
        503 => 2001,
        other => panic!("no usual error code for status {other}: use expect_error_code"),
    };
    expect_error_code(response, status, code).await
}

/// Asserts an error response of `status` in the spec's shape with exactly
/// `code`, and returns its message.
pub async fn expect_error_code(response: Response, status: StatusCode, code: u64) -> String {
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
    assert_eq!(body["code"], code, "{body}");
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

/// The counter of outbox events the broker confirmed.
pub const PUBLISHED: &str = "livefeed_outbox_published_total";

/// Waits until the outbox is empty and `relays` together published `total`
/// events.
pub async fn outbox_settles(app: &TestApp, relays: &[&TestApp], total: u64) {
    let mut last = (0, 0);
    let settled = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let mut published = 0;
            for relay in relays {
                published += relay.metric(PUBLISHED).await;
            }
            last = (published, app.metric("livefeed_outbox_depth").await);
            if last == (total, 0) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        settled.is_ok(),
        "published and depth never became ({total}, 0); last {last:?}"
    );
}
