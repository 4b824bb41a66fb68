//! The test harness: a real server on port 0 against a fresh PostgreSQL
//! database per test, and a client that speaks the spec.

mod client;
mod live;
mod ports;
mod proxy;
mod tokens;
pub mod vhost;

pub use tokens::{forged_and_expired, sign};

use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use livefeed::app::App;
use livefeed::broker::{BrokerKind, MemoryBus};
use livefeed::config::Config;
use reqwest::{Response, StatusCode};
use serde_json::Value;
use tokio::sync::oneshot;

pub use client::{ApiClient, TestUser};
pub use live::{Brokers, FeedClient, instances_connected, proxied_rabbit, rabbit_broker};
pub use ports::free_local_port;
pub use proxy::TcpProxy;
pub use vhost::{Rabbitmqctl, Vhost};

pub const SECRET: &str = "integration-test-secret-integration-test";
pub const PASSWORD: &str = "correct horse battery";

pub fn base_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// What names this process's test databases (and, through them, the Redis
/// key prefixes): `livefeed_test_<pid>_`. scripts/test drops the leftovers
/// of processes that are gone, never those of a run still going on.
fn own_prefix() -> String {
    format!("livefeed_test_{}_", std::process::id())
}

/// A URL for a new, migrated database that only this test uses. It is
/// dropped, with the Redis keys of its prefix, when the test process exits.
pub async fn fresh_database() -> String {
    static CLEAN_UP: std::sync::Once = std::sync::Once::new();
    // SAFETY: `clean_up_at_exit` is an `extern "C" fn()` that never unwinds
    // out (it joins a thread and ignores the thread's outcome).
    CLEAN_UP.call_once(|| unsafe {
        libc::atexit(clean_up_at_exit);
    });
    let mut url = url::Url::parse(&base_database_url()).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&format!(
        "{}{}",
        own_prefix(),
        uuid::Uuid::new_v4().simple()
    ));
    let url = url.to_string();
    livefeed::store::migrate(&url)
        .await
        .expect("creating and migrating the test database");
    url
}

/// Drops this process's test databases and Redis keys. Runs from `atexit`,
/// where the main thread's thread-locals (a Tokio runtime's among them) may
/// already be gone: the work runs on a thread of its own.
extern "C" fn clean_up_at_exit() {
    let _ = std::thread::spawn(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the clean-up");
        runtime.block_on(async {
            if tokio::time::timeout(Duration::from_secs(60), drop_own_databases_and_keys())
                .await
                .is_err()
            {
                eprintln!(
                    "cleaning up the test databases took over 60 s; scripts/test drops the rest"
                );
            }
        });
    })
    .join();
}

async fn drop_own_databases_and_keys() {
    let prefix = own_prefix();
    if let Ok((db, connection)) =
        tokio_postgres::connect(&base_database_url(), tokio_postgres::NoTls).await
    {
        tokio::spawn(connection);
        let pattern = format!("{}%", prefix.replace('_', "\\_"));
        let names: Vec<String> = db
            .query(
                "SELECT datname FROM pg_database WHERE datname LIKE $1",
                &[&pattern],
            )
            .await
            .map(|rows| rows.iter().map(|row| row.get(0)).collect())
            .unwrap_or_default();
        for name in names {
            let drop = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
            if let Err(e) = db.batch_execute(&drop).await {
                eprintln!("could not drop {name}: {e}");
            }
        }
    }
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let Ok(mut redis) = async {
        redis::Client::open(redis_url)?
            .get_multiplexed_async_connection()
            .await
    }
    .await
    else {
        return;
    };
    let mut cursor = 0u64;
    loop {
        let Ok((next, keys)): redis::RedisResult<(u64, Vec<String>)> = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(format!("{prefix}*"))
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await
        else {
            return;
        };
        if !keys.is_empty() {
            let _: redis::RedisResult<()> =
                redis::cmd("UNLINK").arg(keys).query_async(&mut redis).await;
        }
        if next == 0 {
            return;
        }
        cursor = next;
    }
}

/// A connection to the test's database, for arranging data directly.
pub async fn sql(database_url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(database_url, tokio_postgres::NoTls)
        .await
        .expect("connecting to the test database");
    tokio::spawn(connection);
    client
}

/// Bound on a server's shutdown: draining, its runtime's tasks, and
/// dropping what it kept (a virtual host's deletion boots `rabbitmqctl`).
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// Whatever must outlive a server (a RabbitMQ virtual host).
type Resources = Arc<Mutex<Vec<Arc<dyn std::any::Any + Send + Sync>>>>;

/// A server inside the test process; its REST calls come through `Deref`.
///
/// Each server runs in a thread of its own on a multi-threaded runtime of
/// its own, as in production: its registry, hub and socket queues race as
/// they do there, whatever runtime the test itself is on. Dropping it stops
/// the server and waits for it; what it kept is dropped after that, on the
/// server's thread once its runtime is gone (never on a runtime thread).
pub struct TestApp {
    api: ApiClient,
    pub database_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    /// What `server::run` returned, once the server thread is done.
    finished: Option<mpsc::Receiver<anyhow::Result<()>>>,
    resources: Resources,
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
        let (started, address) = oneshot::channel::<Result<String, String>>();
        let (shutdown, stop) = oneshot::channel::<()>();
        let (finish, finished) = mpsc::channel();
        let resources = Resources::default();
        let kept = resources.clone();
        std::thread::Builder::new()
            .name("test-server".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .expect("building the server's runtime");
                let result = runtime.block_on(async {
                    let app = App::start(&config, broker).map_err(|e| format!("{e:#}"));
                    let listener = livefeed::server::bind(config.listen)
                        .map_err(|e| format!("binding port 0: {e}"));
                    let (app, listener) = match (app, listener) {
                        (Ok(app), Ok(listener)) => (app, listener),
                        (Err(e), _) | (_, Err(e)) => {
                            let _ = started.send(Err(e.clone()));
                            return Err(anyhow::anyhow!(e));
                        }
                    };
                    let address = format!("http://{}", listener.local_addr().unwrap());
                    let _ = started.send(Ok(address));
                    livefeed::server::run(listener, Arc::new(app), async {
                        let _ = stop.await;
                    })
                    .await
                });
                runtime.shutdown_timeout(Duration::from_secs(5));
                kept.lock().expect("resources lock").clear();
                let _ = finish.send(result);
            })
            .expect("starting the server thread");
        let address = address
            .await
            .expect("the server thread reports its start")
            .unwrap_or_else(|e| panic!("starting the server: {e}"));
        Self {
            api: ApiClient::new(address),
            database_url: database_url.to_owned(),
            shutdown: Some(shutdown),
            finished: Some(finished),
            resources,
        }
    }

    /// Keeps `resource` alive as long as this app's server.
    pub fn keep(&mut self, resource: Arc<dyn std::any::Any + Send + Sync>) {
        self.resources
            .lock()
            .expect("resources lock")
            .push(resource);
    }

    /// Signals shutdown and waits for `server::run` to return.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.begin_shutdown();
        let finished = self.finished.take().expect("server still running");
        tokio::task::spawn_blocking(move || finished.recv_timeout(SHUTDOWN_TIMEOUT))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("the server did not stop within {SHUTDOWN_TIMEOUT:?}: {e}"))
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
    /// Blocks the test's thread (the server runs on threads of its own)
    /// until the server and what it kept are gone, so the next test does
    /// not start beside a server still shutting down.
    fn drop(&mut self) {
        self.begin_shutdown();
        if let Some(finished) = self.finished.take()
            && finished.recv_timeout(SHUTDOWN_TIMEOUT).is_err()
        {
            eprintln!(
                "the server at {} did not stop within {SHUTDOWN_TIMEOUT:?}",
                self.api.address
            );
        }
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
