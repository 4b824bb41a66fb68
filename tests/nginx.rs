//! `deploy/nginx.conf` in front of two instances: the real nginx (Debian's
//! package, installed by `scripts/test`) runs the committed configuration,
//! through a symlink, with test-made include files that point its upstream at
//! two local instances on one database and RabbitMQ. Everything the test does
//! afterwards goes through nginx.

#[allow(dead_code, unused_imports)]
#[path = "api/support/mod.rs"]
mod support;

#[path = "support/nginx.rs"]
mod nginx;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use nginx::{NGINX, Nginx};
use support::{ApiClient, FeedClient, TestApp, Vhost, fresh_database, json_ok, rabbit_broker};

#[tokio::test]
async fn nginx_balances_rest_and_websockets_over_two_instances() {
    assert!(
        Path::new(NGINX).exists(),
        "{NGINX} not found: this test runs Debian's nginx. Run scripts/test, which \
         installs it (or: apt-get install -y nginx)"
    );
    let database = fresh_database().await;
    let vhost = std::sync::Arc::new(Vhost::create().await);
    let mut a = TestApp::spawn_on_broker(&database, &[], rabbit_broker(vhost.url())).await;
    let b = TestApp::spawn_on_broker(&database, &[], rabbit_broker(vhost.url())).await;
    a.keep(vhost);
    let taps = [Tap::start(&a).await, Tap::start(&b).await];
    let nginx = Nginx::start(&[taps[0].address, taps[1].address]).await;
    let gateway = ApiClient::new(format!("http://{}", nginx.address));

    // REST is spread over both instances, on upstream connections that nginx
    // keeps alive between requests, with the forwarding headers set.
    const REQUESTS: usize = 20;
    for n in 0..REQUESTS {
        let mut request = gateway.request(Method::GET, "/healthz", None, None);
        if n == 0 {
            request = request.header("x-request-id", "chosen-by-the-client");
        }
        let response = request.send().await.expect("request reaches nginx");
        let request_id = response
            .headers()
            .get("x-request-id")
            .expect("the app's x-request-id comes through nginx")
            .to_str()
            .unwrap()
            .to_owned();
        // The app answers with the id nginx gave it: the client's, or nginx's own.
        if n == 0 {
            assert_eq!(request_id, "chosen-by-the-client");
        } else {
            assert!(is_nginx_request_id(&request_id), "{request_id}");
        }

        assert_eq!(json_ok(response).await, json!({ "status": "ok" }));
    }
    let traffic = taps.each_ref().map(Tap::traffic);
    let served = traffic
        .each_ref()
        .map(|requests| requests.matches("GET /healthz HTTP/1.1\r\n").count());
    assert_eq!(served.iter().sum::<usize>(), REQUESTS, "{served:?}");
    assert!(
        served.iter().all(|&count| count > 0),
        "the {REQUESTS} requests through nginx went to one instance only: {served:?}"
    );
    let opened: usize = taps.each_ref().map(Tap::connections).iter().sum();
    assert!(
        opened <= 4,
        "{REQUESTS} requests opened {opened} upstream connections: no keepalive?"
    );
    let traffic = traffic.concat();
    let request_ids = header_values(&traffic, "x-request-id");
    assert_eq!(request_ids.len(), REQUESTS, "{request_ids:?}");
    assert!(
        request_ids.contains(&"chosen-by-the-client"),
        "{request_ids:?}"
    );
    let made_by_nginx = request_ids
        .iter()
        .filter(|id| is_nginx_request_id(id))
        .count();
    assert_eq!(made_by_nginx, REQUESTS - 1, "{request_ids:?}");
    // nginx's access line of each request names the id the instance got;
    // nginx writes it as the request finishes, so it may trail the response.
    let logged = |log: &str| {
        request_ids.iter().all(|id| {
            log.lines().any(|line| {
                line.contains("\"GET /healthz\" 200 ")
                    && line.contains(&format!(" request_id={id} "))
            })
        })
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !logged(&nginx.access_log()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(logged(&nginx.access_log()), "{}", nginx.access_log());
    assert_eq!(
        header_values(&traffic, "x-forwarded-for"),
        vec!["127.0.0.1"; REQUESTS]
    );

    // A body over the app's limit (64 KiB) but within nginx's (1 MiB) gets
    // the app's JSON 413, not nginx's HTML one.
    let big = json!({ "first_name": "x".repeat(100 * 1024) });
    let response = gateway
        .call(Method::POST, "/user/register", None, Some(big))
        .await;
    assert!(
        response.headers().contains_key("x-request-id"),
        "nginx answered {} itself, not the app",
        response.status()
    );
    support::expect_error(response, StatusCode::PAYLOAD_TOO_LARGE).await;

    // The live feed: a post reaches the follower's sockets on both instances.
    let author = gateway.register("Автор", "Балансируемый").await;
    let follower = gateway.register("Читатель", "Проксированный").await;
    gateway.follow(&follower, &author).await;
    let mut first = FeedClient::connect(&gateway, &follower.token).await;
    let mut second = FeedClient::connect(&gateway, &follower.token).await;
    // least_conn: the second socket goes to the instance without one.
    assert_eq!(
        (open_sockets(&a).await, open_sockets(&b).await),
        (1, 1),
        "one websocket on each instance"
    );
    let id = gateway.create_post(&author, "пост через nginx").await;
    let expected =
        json!({ "postId": id, "postText": "пост через nginx", "author_user_id": author.id });
    assert_eq!(first.next_post().await, expected);
    assert_eq!(second.next_post().await, expected);

    let errors: Vec<String> = nginx
        .error_log()
        .lines()
        .filter(|line| {
            ["[error]", "[crit]", "[alert]", "[emerg]"]
                .iter()
                .any(|level| line.contains(level))
        })
        // worker_rlimit_nofile above this machine's hard limit: compose raises
        // that limit for the nginx container; here the old one stays.
        .filter(|line| !line.contains("setrlimit(RLIMIT_NOFILE"))
        .map(str::to_owned)
        .collect();
    assert!(
        errors.is_empty(),
        "nginx logged errors:\n{}",
        errors.join("\n")
    );
}

/// `/metrics` and `/readyz` are for operations, reached on the instances
/// themselves: through nginx they do not exist, however the path is spelt,
/// while the public API and `/healthz` go through.
#[tokio::test]
async fn nginx_hides_the_operations_endpoints() {
    let app = TestApp::spawn().await;
    let upstream: SocketAddr = app
        .address
        .strip_prefix("http://")
        .unwrap()
        .parse()
        .unwrap();
    let nginx = Nginx::start(&[upstream]).await;
    let gateway = ApiClient::new(format!("http://{}", nginx.address));

    for path in ["/metrics", "/readyz"] {
        assert_eq!(app.get(path, None).await.status(), StatusCode::OK, "{path}");
    }
    for path in [
        "/metrics",
        "/readyz",
        "/metrics?format=text",
        "//metrics",
        "/%6Detrics",
        "/./readyz",
    ] {
        let response = gateway
            .request(Method::GET, path, None, None)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::NOT_FOUND, "{path}");
        let body: Value = response.json().await.expect("a JSON error body");
        assert_eq!(body["code"], 1105, "{path}: {body}");
        assert!(body["request_id"].is_string(), "{path}: {body}");
    }
    let health = gateway
        .request(Method::GET, "/healthz", None, None)
        .send()
        .await
        .unwrap();
    assert_eq!(json_ok(health).await, json!({ "status": "ok" }));
}

/// 32 hex digits, as nginx's `$request_id`.
fn is_nginx_request_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The values of header `name` in the requests of `traffic`.
fn header_values<'a>(traffic: &'a str, name: &str) -> Vec<&'a str> {
    traffic
        .split("\r\n")
        .filter_map(|line| line.split_once(": "))
        .filter(|(header, _)| header.eq_ignore_ascii_case(name))
        .map(|(_, value)| value)
        .collect()
}

/// `livefeed_open_sockets` of one instance, asked directly.
async fn open_sockets(app: &TestApp) -> u64 {
    let metrics = app
        .get("/metrics", None)
        .await
        .text()
        .await
        .expect("reading /metrics");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("livefeed_open_sockets "))
        .expect("livefeed_open_sockets in /metrics")
        .trim()
        .parse()
        .expect("a count")
}

// ------------------------------------------------------------------- taps ---

/// A TCP forwarder between nginx and one instance that counts the
/// connections nginx opens and records what it sends: which instance
/// requests reach, with which headers, and whether upstream connections are
/// kept alive.
struct Tap {
    address: SocketAddr,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
    forwarding: JoinHandle<()>,
}

impl Tap {
    async fn start(app: &TestApp) -> Self {
        let target: SocketAddr = app.address.trim_start_matches("http://").parse().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let forwarding = tokio::spawn(forward(
            listener,
            target,
            connections.clone(),
            received.clone(),
        ));
        Self {
            address,
            connections,
            received,
            forwarding,
        }
    }

    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// Everything nginx sent to the instance so far.
    fn traffic(&self) -> String {
        String::from_utf8_lossy(&self.received.lock().unwrap()).into_owned()
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        self.forwarding.abort();
    }
}

async fn forward(
    listener: TcpListener,
    target: SocketAddr,
    connections: Arc<AtomicUsize>,
    received: Arc<Mutex<Vec<u8>>>,
) {
    // Connections end when either side closes, or with the test's runtime.
    while let Ok((inbound, _)) = listener.accept().await {
        connections.fetch_add(1, Ordering::SeqCst);
        let received = received.clone();
        tokio::spawn(async move {
            let Ok(outbound) = TcpStream::connect(target).await else {
                return;
            };
            let (mut from_nginx, mut to_nginx) = inbound.into_split();
            let (mut from_app, mut to_app) = outbound.into_split();
            let upstream = async {
                let mut buffer = vec![0; 16 * 1024];
                while let Ok(n @ 1..) = from_nginx.read(&mut buffer).await {
                    received.lock().unwrap().extend_from_slice(&buffer[..n]);
                    if to_app.write_all(&buffer[..n]).await.is_err() {
                        break;
                    }
                }
                let _ = to_app.shutdown().await;
            };
            let downstream = async {
                let _ = tokio::io::copy(&mut from_app, &mut to_nginx).await;
                let _ = to_nginx.shutdown().await;
            };
            tokio::join!(upstream, downstream);
        });
    }
}

// ---------------------------------------------------------------- clients ---
