//! CI smoke run of the load generator, so that it cannot rot unnoticed: the
//! real livefeed server in this process (port 0, the in-process broker, a
//! fresh PostgreSQL database of its own), and the real `loadtest` binary run
//! against it once per scenario with small numbers and `--json`. Flags, the
//! worker processes and their protocol, seeding and cleanup, the JSON report
//! and the lost/duplicate accounting all have to keep working.
//!
//! Needs PostgreSQL (`TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/postgres`) and Redis (`REDIS_URL`,
//! default `redis://127.0.0.1:6379`), as the root crate's API tests do.
//! `TEST_LOG=debug cargo test -p loadtest -- --nocapture` shows the server's
//! logs and the tool's progress.

use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use livefeed::app::App;
use livefeed::broker::{BrokerKind, MemoryBus};
use livefeed::config::Config;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The server's JWT secret, handed to the tool to mint its users' tokens.
const SECRET: &str = "loadtest-smoke-secret-loadtest-smoke-secret";
/// Bound on one run of the tool; past it the tool and its workers are killed.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on creating and migrating the database.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on the server's graceful shutdown.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on each SQL statement the test itself runs.
const SQL_TIMEOUT: Duration = Duration::from_secs(15);

/// Flags of the websocket scenarios: one process per worker, the kernel's
/// choice of source address (no 127.0.0.x aliases needed), and the tool's own
/// timeouts well inside [`RUN_TIMEOUT`] so that it fails first, with a message
/// naming the phase.
const FLEET: &[&str] = &[
    "--no-source-ip",
    "--connect-timeout",
    "10",
    "--ready-timeout",
    "20",
    "--drain-timeout",
    "10",
];

/// A livefeed server on `127.0.0.1:0` with a database of its own.
struct Server {
    url: String,
    database_url: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Server {
    async fn start() -> Self {
        if let Ok(filter) = std::env::var("TEST_LOG") {
            let _ = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_test_writer()
                .try_init();
        }
        let database_url = fresh_database().await;
        let name = database_name(&database_url);
        // Redis is shared with every other test: keys under this database's name.
        let prefix = format!("{name}:");
        let config = Config::from_args([
            "--listen",
            "127.0.0.1:0",
            "--database-url",
            &database_url,
            "--jwt-secret",
            SECRET,
            "--redis-prefix",
            &prefix,
            "--shutdown-grace-secs",
            "5",
        ])
        .expect("the server configuration is valid");
        let app =
            App::start(&config, BrokerKind::Memory(MemoryBus::new())).expect("building the app");
        let listener = livefeed::server::bind(config.listen).expect("binding port 0");
        let url = format!("http://{}", listener.local_addr().expect("bound address"));
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(livefeed::server::run(listener, Arc::new(app), async {
            let _ = stop.await;
        }));
        Self {
            url,
            database_url,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// Signals shutdown and waits (bounded) for `server::run` to return.
    /// The database stays, like the root crate's test databases:
    /// `scripts/test` drops the leftovers before each run. (Dropping it here
    /// costs a forced checkpoint, which took over 15 s on a busy machine.)
    async fn stop(mut self) {
        let _ = self.shutdown.take().expect("not stopped yet").send(());
        let task = self.task.take().expect("not stopped yet");
        tokio::time::timeout(STOP_TIMEOUT, task)
            .await
            .unwrap_or_else(|_| panic!("the server did not stop within {STOP_TIMEOUT:?}"))
            .expect("the server task did not panic")
            .expect("the server shut down cleanly");
    }

    /// Runs `loadtest <scenario>` against this server with `--json`,
    /// asserts that it passed, and returns its report.
    async fn loadtest(&self, scenario: &str, args: &[&str]) -> Value {
        let common = [
            "--url",
            &self.url,
            "--database-url",
            &self.database_url,
            "--jwt-secret",
            SECRET,
            "--json",
        ];
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadtest"));
        command
            .arg(scenario)
            .args(common)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group, shared with its workers: a run that
            // overruns is killed whole.
            .process_group(0)
            .kill_on_drop(true);
        let started = Instant::now();
        let child = command.spawn().expect("starting the loadtest binary");
        let pid = child.id().expect("loadtest is running") as i32;
        let output = child.wait_with_output();
        tokio::pin!(output);
        let finished = tokio::select! {
            output = &mut output => Some(output.expect("reading loadtest's output")),
            () = tokio::time::sleep(RUN_TIMEOUT) => None,
        };
        let Some(output) = finished else {
            // The child is not reaped yet, so its pid still names its group.
            // SAFETY: kill(2) takes no pointers; -pid is the group set up above.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let partial = tokio::time::timeout(Duration::from_secs(5), &mut output).await;
            let stderr = match partial {
                Ok(Ok(output)) => String::from_utf8_lossy(&output.stderr).into_owned(),
                _ => "(unreadable)".to_owned(),
            };
            panic!(
                "loadtest {scenario} ran over {RUN_TIMEOUT:?} and was killed; stderr:\n{stderr}"
            );
        };
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        // Shown with --nocapture, and with the failure otherwise.
        eprintln!(
            "loadtest {scenario} took {:.2}s, {}; stderr:\n{stderr}",
            started.elapsed().as_secs_f64(),
            output.status
        );
        assert!(
            output.status.success(),
            "loadtest {scenario} failed ({}); stdout:\n{stdout}\nstderr:\n{stderr}",
            output.status
        );
        let report: Value = serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("loadtest {scenario}: stdout is not JSON ({e}):\n{stdout}"));
        assert_eq!(report["scenario"], scenario, "{report:#}");
        assert_eq!(report["pass"], true, "{report:#}");
        assert_eq!(report["problems"], json!([]), "{report:#}");
        report
    }

    async fn count(&self, sql: &str, params: &[&(dyn tokio_postgres::types::ToSql + Sync)]) -> i64 {
        let db = connect(&self.database_url).await;
        let row = tokio::time::timeout(SQL_TIMEOUT, db.query_one(sql, params))
            .await
            .unwrap_or_else(|_| panic!("{sql}: no answer within {SQL_TIMEOUT:?}"))
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        row.get(0)
    }

    /// The tool deletes what it seeded (without `--keep`).
    async fn assert_cleaned_up(&self) {
        assert_eq!(self.count("SELECT count(*) FROM users", &[]).await, 0);
        assert_eq!(self.count("SELECT count(*) FROM posts", &[]).await, 0);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
    }
}

fn base_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

fn database_name(url: &str) -> &str {
    url.rsplit('/').next().expect("a URL with a path")
}

/// A URL for a new, migrated database that only this test uses; named like
/// the root crate's test databases, so `scripts/test` drops any left over.
async fn fresh_database() -> String {
    let mut url = reqwest::Url::parse(&base_database_url()).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&format!("livefeed_test_{}", uuid::Uuid::now_v7().simple()));
    let url = url.to_string();
    tokio::time::timeout(SETUP_TIMEOUT, livefeed::store::migrate(&url))
        .await
        .unwrap_or_else(|_| panic!("creating the test database took over {SETUP_TIMEOUT:?}"))
        .expect("creating and migrating the test database");
    url
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio::time::timeout(
        SQL_TIMEOUT,
        tokio_postgres::connect(url, tokio_postgres::NoTls),
    )
    .await
    .unwrap_or_else(|_| panic!("connecting to {url}: no answer within {SQL_TIMEOUT:?}"))
    .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
    tokio::spawn(connection);
    client
}

/// The unsigned integer at `pointer` in `report`.
fn number(report: &Value, pointer: &str) -> u64 {
    report
        .pointer(pointer)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no unsigned integer at {pointer} in {report:#}"))
}

/// A tally (`{"kind": count}`) at `pointer` that must be empty.
fn assert_no_tally(report: &Value, pointer: &str) {
    assert_eq!(
        report.pointer(pointer),
        Some(&json!({})),
        "{pointer} in {report:#}"
    );
}

/// What `broadcast` and `social` report about connections and deliveries,
/// and what livefeed's /metrics say about them.
fn assert_fanout(report: &Value, subscribers: u64, posts: u64, expected: u64) {
    assert_deliveries(report, subscribers, posts, expected);
    // The server's own count agrees with the clients'.
    assert_eq!(
        number(report, "/server_counters/deliveries"),
        expected,
        "{report:#}"
    );
    assert_eq!(
        number(report, "/server_counters/slow_consumer_closes"),
        0,
        "{report:#}"
    );
}

/// Every subscriber ready, every post created, every delivery made once.
fn assert_deliveries(report: &Value, subscribers: u64, posts: u64, expected: u64) {
    assert_eq!(
        number(report, "/connections/clients"),
        subscribers,
        "{report:#}"
    );
    assert_eq!(
        number(report, "/connections/ready"),
        subscribers,
        "{report:#}"
    );
    assert_no_tally(report, "/connections/failures");
    assert_eq!(number(report, "/posts/attempted"), posts, "{report:#}");
    assert_eq!(number(report, "/posts/created"), posts, "{report:#}");
    assert_no_tally(report, "/posts/failures");
    let deliveries = &report["deliveries"];
    assert_eq!(number(deliveries, "/expected"), expected, "{report:#}");
    assert_eq!(number(deliveries, "/received"), expected, "{report:#}");
    for zero in [
        "lost",
        "duplicates",
        "unexpected",
        "foreign",
        "malformed",
        "clients_with_loss",
    ] {
        assert_eq!(
            number(deliveries, &format!("/{zero}")),
            0,
            "{zero} in {report:#}"
        );
    }
    assert_no_tally(deliveries, "/disconnects");
    assert_eq!(deliveries["complete"], true, "{report:#}");
    assert_eq!(number(deliveries, "/latency/count"), expected, "{report:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn broadcast_reaches_every_subscriber_once() {
    let server = Server::start().await;
    let (subscribers, posts) = (50, 5);
    let (n, m) = (subscribers.to_string(), posts.to_string());
    // Two workers of 25 sockets: their reports have to merge.
    // Texts of 200 bytes, and the floor in the same run.
    let mut args = vec![
        "-n",
        &n,
        "-m",
        &m,
        "-r",
        "20",
        "--clients-per-worker",
        "25",
        "--text-bytes",
        "200",
        "--floor",
    ];
    args.extend_from_slice(FLEET);
    let report = server.loadtest("broadcast", &args).await;
    assert_eq!(
        report["workers"].as_array().map(Vec::len),
        Some(2),
        "{report:#}"
    );
    assert_fanout(&report, subscribers, posts, subscribers * posts);
    // The floor got the same subscribers and posts, measured by its pid,
    // and answered every close frame.
    let floor = &report["floor"];
    assert_deliveries(floor, subscribers, posts, subscribers * posts);
    assert_eq!(number(floor, "/cpu/operations"), subscribers * posts);
    assert!(floor["cpu"]["server_us_per_op"].is_f64(), "{report:#}");
    assert_eq!(number(floor, "/close/clean"), subscribers, "{report:#}");
    let ratio = &report["floor_ratio"];
    assert_eq!(
        ratio["other_server_us_per_delivery"], floor["cpu"]["server_us_per_op"],
        "{report:#}"
    );
    // No --server-pid here (the server is this process): no livefeed CPU.
    assert!(
        ratio["livefeed_server_us_per_delivery"].is_null(),
        "{report:#}"
    );
    server.assert_cleaned_up().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn social_delivers_exactly_the_followed_authors_posts() {
    let server = Server::start().await;
    let mut args = vec!["-u", "40", "-f", "5", "-r", "10", "-d", "2", "--keep"];
    args.extend_from_slice(FLEET);
    let report = server.loadtest("social", &args).await;
    // Kept rows: what the server stored says how many deliveries were due,
    // independently of the tool's own accounting.
    let pattern = format!("lt:{}:%", report["run"].as_str().expect("run id"));
    let posts = server
        .count("SELECT count(*) FROM posts WHERE text LIKE $1", &[&pattern])
        .await;
    let due = server
        .count(
            "SELECT count(*) FROM posts p JOIN friends f ON f.friend_id = p.author_id \
             WHERE p.text LIKE $1",
            &[&pattern],
        )
        .await;
    assert_eq!(posts, 20, "2 s at 10/s");
    assert!(due > 0, "nobody followed the authors: {report:#}");
    assert_fanout(&report, 40, posts as u64, due as u64);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn connect_storm_opens_and_closes_every_socket() {
    let server = Server::start().await;
    let mut args = vec!["-c", "100", "--clients-per-worker", "50"];
    args.extend_from_slice(FLEET);
    let report = server.loadtest("connect-storm", &args).await;
    assert_eq!(
        report["workers"].as_array().map(Vec::len),
        Some(2),
        "{report:#}"
    );
    assert_eq!(number(&report, "/connections/clients"), 100, "{report:#}");
    assert_eq!(number(&report, "/connections/ready"), 100, "{report:#}");
    assert_no_tally(&report, "/connections/failures");
    assert_eq!(
        number(&report, "/connections/handshake/count"),
        100,
        "{report:#}"
    );
    assert_no_tally(&report, "/disconnects");
    assert_eq!(number(&report, "/server_open_sockets"), 100, "{report:#}");
    // The server answers each close frame with its own (RFC 6455 5.5.1).
    assert_eq!(number(&report, "/close/clean"), 100, "{report:#}");
    assert_no_tally(&report, "/close/unclean");
    server.assert_cleaned_up().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rest_mix_answers_every_request() {
    let server = Server::start().await;
    // 20 requests, open loop, every operation equally likely. The tool fails
    // a run that achieves under 90% of the rate, counted up to the last
    // answer: at 10/s for 2 s that allows the last request ~0.3 s.
    let args = [
        "-u",
        "50",
        "-f",
        "5",
        "--posts-per-user",
        "3",
        "--mix",
        "feed=1,create=1,get=1,search=1",
        "-r",
        "10",
        "-c",
        "8",
        "-d",
        "2",
    ];
    let report = server.loadtest("rest", &args).await;
    assert_eq!(number(&report, "/requests"), 20, "{report:#}");
    assert_eq!(number(&report, "/errors"), 0, "{report:#}");
    let operations = report["operations"].as_array().expect("operations");
    let names: Vec<&str> = operations
        .iter()
        .map(|op| op["name"].as_str().expect("operation name"))
        .collect();
    assert_eq!(names, ["feed", "create", "get", "search"], "{report:#}");
    let mut ok = 0;
    for op in operations {
        assert_no_tally(op, "/errors");
        ok += number(op, "/ok");
    }
    assert_eq!(ok, 20, "{report:#}");
    server.assert_cleaned_up().await;
    server.stop().await;
}
