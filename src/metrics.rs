//! Counters for `GET /metrics`, encoded by prometheus-client in the
//! OpenMetrics text format. Recording stays a relaxed atomic add on the
//! delivery and request paths: the counters are plain `AtomicU64` fields,
//! read into the crate's types only when scraped.

mod histogram;
mod process;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

pub use histogram::Histogram;

/// The content type of [`Metrics::render`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds (seconds) of the publish-to-send latency buckets.
const LATENCY_BOUNDS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

/// Upper bounds (seconds) of the request duration buckets.
const REQUEST_BOUNDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The commit the binary was built from (build.rs), or `unknown`.
const GIT_COMMIT: &str = env!("LIVEFEED_GIT_COMMIT");

#[derive(Default)]
pub struct Metrics {
    pub open_sockets: AtomicU64,
    pub deliveries: AtomicU64,
    /// Deliveries the kernel did not take at once, left to the session.
    pub queued_deliveries: AtomicU64,
    /// Posts written in one send with the post before them: an author's
    /// posts that waited in the hub's queue together.
    pub joined_posts: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    pub socket_write_timeouts: AtomicU64,
    pub published: AtomicU64,
    /// Broker gaps this instance recovered from, and the posts it recovered.
    pub gap_recoveries: AtomicU64,
    pub recovered_posts: AtomicU64,
    /// Posts read back after a new broker binding, written by the authors
    /// subscribed while it was pending.
    pub binding_catch_up_posts: AtomicU64,
    /// Posts read back for a fresh socket that committed after its mark but
    /// passed the hub (or were routed elsewhere) before it was registered.
    pub subscribe_catch_up_posts: AtomicU64,
    /// Feed events given up on (dead-lettered) by this instance's worker.
    pub feed_dead_letters: AtomicU64,
    /// Feed events this instance's worker settled: applied (or put aside
    /// while Redis was away) or dead-lettered. A load test waits on it.
    pub feed_settled: AtomicU64,
    /// Post events taken from the broker, and posts (from the broker or a
    /// gap recovery) no socket here wanted: bucket routing brings every post
    /// of a bound bucket.
    pub broker_posts: AtomicU64,
    pub unwanted_posts: AtomicU64,
    latency: Latency,
    http: HttpMetrics,
}

/// Values read elsewhere at scrape time.
pub struct Gauges {
    pub broker_reconnects: u64,
    /// `None` when the database could not be asked.
    pub outbox_depth: Option<i64>,
}

/// The connections to the stores, at scrape time.
pub struct Pools {
    pub database: PoolUsage,
    /// New posts handed to the group commit and not yet committed.
    pub posts_waiting: usize,
    /// Redis errors (unreachable, timing out) that sent feed reads to
    /// PostgreSQL: Redis is one multiplexed connection, not a pool.
    pub redis_outages: u64,
}

/// A connection pool's state (deadpool's status).
pub struct PoolUsage {
    pub max: usize,
    /// Connections open, idle or lent out.
    pub open: usize,
    pub idle: usize,
    /// Callers waiting for a connection.
    pub waiting: usize,
}

struct Latency(Histogram);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new(&LATENCY_BOUNDS))
    }
}

/// The labels of one request count. Routes are templates
/// (`/post/get/{id}`) and methods a fixed set, so the series stay few.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: &'static str,
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: &'static str,
}

type Durations = Family<RouteLabel, Histogram, fn() -> Histogram>;

struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    durations: Durations,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            durations: Family::new_with_constructor(|| Histogram::new(&REQUEST_BOUNDS)),
        }
    }
}

impl Metrics {
    /// Records the time from a post's creation to its frame being written,
    /// for `frames` frames written at about the same time.
    pub fn observe_latency_micros(&self, micros: u64, frames: u64) {
        self.latency.0.observe_many_micros(micros, frames);
    }

    /// Records one answered request.
    pub fn observe_request(
        &self,
        route: &'static str,
        method: &'static str,
        status: u16,
        elapsed: Duration,
    ) {
        let labels = RequestLabels {
            route,
            method,
            status,
        };
        self.http.requests.get_or_create(&labels).inc();
        self.http
            .durations
            .get_or_create(&RouteLabel { route })
            .observe_micros(elapsed.as_micros() as u64);
    }

    pub fn render(&self, gauges: &Gauges, pools: &Pools) -> String {
        let mut registry = Registry::default();
        let r = &mut registry;
        gauge(
            r,
            "livefeed_open_sockets",
            "Open websocket connections.",
            &self.open_sockets,
        );
        counter(
            r,
            "livefeed_deliveries",
            "Post frames written or queued to sockets.",
            &self.deliveries,
        );
        counter(
            r,
            "livefeed_queued_deliveries",
            "Post frames the hub could not write at once, written later by the socket's session.",
            &self.queued_deliveries,
        );
        counter(
            r,
            "livefeed_joined_posts",
            "Posts written to their sockets in one send with the post before them (one author's posts that waited together).",
            &self.joined_posts,
        );
        counter(
            r,
            "livefeed_slow_consumer_closes",
            "Sockets closed for falling behind.",
            &self.slow_consumer_closes,
        );
        counter(
            r,
            "livefeed_socket_write_timeouts",
            "Sockets closed because a write did not complete in time.",
            &self.socket_write_timeouts,
        );
        counter(
            r,
            "livefeed_outbox_published",
            "Outbox events confirmed by the broker.",
            &self.published,
        );
        counter(
            r,
            "livefeed_gap_recoveries",
            "Broker gaps (lost, expired or new instance queue) recovered from PostgreSQL.",
            &self.gap_recoveries,
        );
        counter(
            r,
            "livefeed_recovered_posts",
            "Posts queued to sockets by gap recoveries.",
            &self.recovered_posts,
        );
        counter(
            r,
            "livefeed_binding_catch_up_posts",
            "Posts read back after a new broker binding (written while it was pending).",
            &self.binding_catch_up_posts,
        );
        counter(
            r,
            "livefeed_subscribe_catch_up_posts",
            "Posts read back for a fresh socket, committed after its follows were read but passed before it was registered.",
            &self.subscribe_catch_up_posts,
        );
        counter(
            r,
            "livefeed_feed_dead_letters",
            "Feed events that could never be applied, moved to the dead-letter queue.",
            &self.feed_dead_letters,
        );
        counter(
            r,
            "livefeed_feed_events_settled",
            "Feed events taken from the work queue and settled (applied, put aside or dead-lettered).",
            &self.feed_settled,
        );
        counter(
            r,
            "livefeed_broker_posts",
            "Post events received from the broker.",
            &self.broker_posts,
        );
        counter(
            r,
            "livefeed_unwanted_posts",
            "Posts that reached no socket of this instance (another author of a bound bucket).",
            &self.unwanted_posts,
        );
        r.register(
            "livefeed_broker_reconnects",
            "Broker connections re-established.",
            ConstCounter::new(gauges.broker_reconnects),
        );
        if let Some(depth) = gauges.outbox_depth {
            r.register(
                "livefeed_outbox_depth",
                "Events written but not yet published.",
                ConstGauge::new(depth),
            );
        }
        r.register(
            "livefeed_publish_to_send_seconds",
            "Time from a post's creation to its frame being written to a socket.",
            self.latency.0.snapshot(),
        );
        self.register_http(r);
        register_pools(r, pools);
        register_process(r, &process::read());
        r.register(
            "livefeed_build",
            "The running build.",
            Info::new(vec![
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", GIT_COMMIT),
            ]),
        );
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }

    fn register_http(&self, r: &mut Registry) {
        r.register(
            "livefeed_http_requests",
            "Requests answered, by route template, method and status.",
            self.http.requests.clone(),
        );
        r.register(
            "livefeed_http_request_duration_seconds",
            "Time to answer a request (a websocket: to accept it), by route template.",
            self.http.durations.clone(),
        );
    }
}

/// Registers the value `atomic` holds now as a counter; `name` without the
/// `_total` the encoder appends.
fn counter(r: &mut Registry, name: &str, help: &str, atomic: &AtomicU64) {
    r.register(
        name,
        help,
        ConstCounter::new(atomic.load(Ordering::Relaxed)),
    );
}

fn gauge(r: &mut Registry, name: &str, help: &str, atomic: &AtomicU64) {
    let value = i64::try_from(atomic.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
    r.register(name, help, ConstGauge::new(value));
}

fn register_pools(r: &mut Registry, pools: &Pools) {
    let db = &pools.database;
    let count = |n: usize| ConstGauge::new(i64::try_from(n).unwrap_or(i64::MAX));
    r.register(
        "livefeed_db_pool_max_connections",
        "Most PostgreSQL connections the pool opens.",
        count(db.max),
    );
    r.register(
        "livefeed_db_pool_open_connections",
        "PostgreSQL connections open (idle or in use).",
        count(db.open),
    );
    r.register(
        "livefeed_db_pool_idle_connections",
        "PostgreSQL connections open and idle.",
        count(db.idle),
    );
    r.register(
        "livefeed_db_pool_waiting",
        "Requests waiting for a PostgreSQL connection.",
        count(db.waiting),
    );
    r.register(
        "livefeed_db_posts_waiting",
        "New posts waiting for their group commit (queued or being written).",
        count(pools.posts_waiting),
    );
    r.register(
        "livefeed_redis_outages",
        "Redis errors (unreachable, timing out) that sent feed reads to PostgreSQL.",
        ConstCounter::new(pools.redis_outages),
    );
}

/// The names every Prometheus client library uses, so stock dashboards work.
fn register_process(r: &mut Registry, stats: &process::ProcessStats) {
    let gauges = [
        (
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            stats.resident_bytes,
        ),
        ("process_open_fds", "Open file descriptors.", stats.open_fds),
        (
            "process_max_fds",
            "Most file descriptors the process may open.",
            stats.max_fds,
        ),
    ];
    for (name, help, value) in gauges {
        if let Some(value) = value {
            r.register(
                name,
                help,
                ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX)),
            );
        }
    }
    if let Some(seconds) = stats.cpu_seconds {
        r.register(
            "process_cpu_seconds",
            "User and system CPU time spent, in seconds.",
            ConstCounter::new(seconds),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(metrics: &Metrics) -> String {
        metrics.render(
            &Gauges {
                broker_reconnects: 3,
                outbox_depth: Some(7),
            },
            &Pools {
                database: PoolUsage {
                    max: 16,
                    open: 4,
                    idle: 3,
                    waiting: 0,
                },
                posts_waiting: 3,
                redis_outages: 2,
            },
        )
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics.observe_latency_micros(500, 1);
        metrics.observe_latency_micros(1_500, 1);
        metrics.observe_latency_micros(60_000_000, 1);
        let text = render(&metrics);
        assert!(
            text.contains("livefeed_publish_to_send_seconds_bucket{le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("livefeed_publish_to_send_seconds_bucket{le=\"0.002\"} 2\n"));
        assert!(text.contains("livefeed_publish_to_send_seconds_bucket{le=\"5.0\"} 2\n"));
        assert!(text.contains("livefeed_publish_to_send_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("livefeed_publish_to_send_seconds_count 3\n"));
        assert!(text.contains("livefeed_publish_to_send_seconds_sum 60.002\n"));
        assert!(text.contains("livefeed_broker_reconnects_total 3\n"));
        assert!(text.contains("livefeed_outbox_depth 7\n"));
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn counts_requests_per_route_template() {
        let metrics = Metrics::default();
        metrics.deliveries.fetch_add(5, Ordering::Relaxed);
        metrics.open_sockets.fetch_add(2, Ordering::Relaxed);
        let fast = Duration::from_micros(800);
        metrics.observe_request("/post/get/{id}", "GET", 200, fast);
        metrics.observe_request("/post/get/{id}", "GET", 200, Duration::from_secs(3));
        metrics.observe_request("/post/get/{id}", "GET", 404, fast);
        let text = render(&metrics);
        for line in [
            "livefeed_deliveries_total 5\n",
            "livefeed_open_sockets 2\n",
            "livefeed_http_requests_total{route=\"/post/get/{id}\",method=\"GET\",status=\"200\"} 2\n",
            "livefeed_http_requests_total{route=\"/post/get/{id}\",method=\"GET\",status=\"404\"} 1\n",
            "livefeed_http_request_duration_seconds_bucket{le=\"0.001\",route=\"/post/get/{id}\"} 2\n",
            "livefeed_http_request_duration_seconds_bucket{le=\"5.0\",route=\"/post/get/{id}\"} 3\n",
            "livefeed_http_request_duration_seconds_count{route=\"/post/get/{id}\"} 3\n",
            "livefeed_db_pool_open_connections 4\n",
            "livefeed_db_pool_idle_connections 3\n",
            "livefeed_redis_outages_total 2\n",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
        let build = format!(
            "livefeed_build_info{{version=\"{}\",commit=\"{GIT_COMMIT}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        assert!(text.contains(&build), "{text}");
        assert!(text.contains("process_resident_memory_bytes "), "{text}");
        assert!(text.contains("process_cpu_seconds_total "), "{text}");
    }
}
