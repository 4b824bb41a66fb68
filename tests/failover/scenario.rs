//! One scenario, start to verdict: a fresh database and vhost on the
//! cluster, two instances (the first becomes the outbox relay before the
//! second starts), authors and followers, the load flowing, then the fault,
//! a settle period with the load still on, and the drain. Each scenario
//! tears everything down (instances, vhost) when it returns.

use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::Cluster;
use crate::instance::{Deployment, Instance};
use crate::report::Verdict;
use crate::support::vhost::Rabbitmqctl;
use crate::support::{Vhost, fresh_database};
use crate::traffic::{Cast, Traffic};

const AUTHORS: usize = 4;
const FOLLOWERS: usize = 3;
/// What the relay's instance logs once it holds the relay lock.
const RELAY_LEADER_LOG: &str = "this instance now relays the outbox";
/// Bound on the first instance becoming the relay.
const LEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on the load reaching every socket before the fault.
const FLOWING_TIMEOUT: Duration = Duration::from_secs(20);
/// Load kept on after the fault is repaired: the catching-up is measured too.
const SETTLE: Duration = Duration::from_secs(4);
/// Bound on every created post reaching every socket once the load stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// What a scenario changes from the default deployment.
#[derive(Debug, Default, Clone, Copy)]
pub struct Options {
    /// `?heartbeat=N` on the instances' AMQP URL.
    pub heartbeat_secs: Option<u16>,
}

/// What a fault acts on.
pub struct Stage<'c> {
    pub cluster: &'c Cluster,
    /// The scenario's vhost name.
    pub vhost: String,
    /// The first instance: the outbox relay.
    pub a: Instance,
    pub b: Instance,
}

impl Stage<'_> {
    /// Lets the load run with the fault in place for `duration`: how long a
    /// fault lasts is part of the scenario, not a condition to await.
    pub async fn hold(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }
}

/// Runs `fault` (which returns what it hit, for the report) under load and
/// judges what the followers received.
pub async fn run(
    cluster: &Cluster,
    name: &str,
    options: Options,
    fault: impl AsyncFnOnce(&mut Stage<'_>) -> String,
) -> Verdict {
    eprintln!("failover: {name}: setting up");
    let database_url = fresh_database().await;
    let ctl: Rabbitmqctl = cluster.ctl(crate::cluster::NODES[0]);
    let vhost = Vhost::create_on(ctl, &cluster.url().await).await;
    let amqp_url = url::Url::parse(vhost.url()).unwrap();
    let slug: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let deployment = Deployment {
        database_url,
        amqp_url: amqp_url.clone(),
        redis_prefix: format!("failover-{}:", uuid::Uuid::new_v4().simple()),
        heartbeat_secs: options.heartbeat_secs,
        log_dir: std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("failover")
            .join(slug),
    };
    let mut a = Instance::start("A", &deployment).await;
    a.wait_for_log(RELAY_LEADER_LOG, LEADER_TIMEOUT).await;
    let b = Instance::start("B", &deployment).await;
    let mut stage = Stage {
        cluster,
        vhost: amqp_url.path().trim_start_matches('/').to_owned(),
        a,
        b,
    };

    let cast = Cast::register(&stage.a.api, AUTHORS, FOLLOWERS).await;
    let mut traffic = Traffic::start(&cast, &[&stage.a, &stage.b]).await;
    traffic.flowing(AUTHORS, FLOWING_TIMEOUT).await;

    eprintln!("failover: {name}: fault");
    let started = Instant::now();
    let target = fault(&mut stage).await;
    let repaired = Instant::now();
    eprintln!(
        "failover: {name}: {target} repaired after {:?}",
        repaired - started
    );
    tokio::time::sleep(SETTLE).await;
    traffic.stop_posting().await;
    traffic.drain(DRAIN_TIMEOUT).await;

    let verdict = Verdict::judge(
        format!("{name} ({target})"),
        &traffic.ledger.snapshot(),
        &traffic.sockets,
        (started, repaired),
    );
    if !verdict.passed() {
        for instance in [&stage.a, &stage.b] {
            eprintln!(
                "--- instance {} ({}), notable lines of {}:\n{}",
                instance.label,
                instance.id,
                instance.log_path().display(),
                notable_lines(&instance.log_text())
            );
        }
    }
    drop(stage);
    drop(vhost);
    verdict
}

/// Warnings, errors and broker/relay events of a log, at most the last 80.
fn notable_lines(log: &str) -> String {
    let notable: Vec<&str> = log
        .lines()
        .filter(|line| {
            ["WARN", "ERROR", "RabbitMQ", "relay", "recover"]
                .iter()
                .any(|word| line.contains(word))
        })
        .collect();
    notable[notable.len().saturating_sub(80)..].join("\n")
}
