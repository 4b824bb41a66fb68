//! One scenario, start to verdict: a fresh database and vhost on the
//! cluster, two instances (the first becomes the outbox relay before the
//! second starts), authors and followers, the load flowing, then the fault,
//! a settle period with the load still on, and the drain. Each scenario
//! tears everything down (instances, vhost) when it returns.

use std::time::Duration;

use crate::cluster::Cluster;
use crate::instance::{self, Deployment, Instance};
use crate::report::Verdict;
use crate::support::vhost::Rabbitmqctl;
use crate::support::{Vhost, fresh_database};
use crate::traffic::{self, Cast, Load};

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
    let deployment = Deployment {
        database_url,
        amqp_url: Some(amqp_url.clone()),
        redis_url: None,
        redis_prefix: format!("failover-{}:", uuid::Uuid::new_v4().simple()),
        heartbeat_secs: options.heartbeat_secs,
        env: Vec::new(),
        log_dir: instance::log_dir("failover", name),
    };
    let mut a = Instance::start("A", &deployment).await;
    a.wait_until_relay().await;
    let b = Instance::start("B", &deployment).await;
    let mut stage = Stage {
        cluster,
        vhost: amqp_url.path().trim_start_matches('/').to_owned(),
        a,
        b,
    };

    let cast = Cast::register(&stage.a.api).await;
    let instances = [&stage.a, &stage.b];
    let homes = instances.map(|instance| instance.api.address.clone());
    let dials = instances.map(Instance::dial);
    let verdict = traffic::measure(
        "failover",
        name,
        Load {
            cast: &cast,
            homes: &homes,
            dials: &dials,
            reconnect: false,
            drain_within: DRAIN_TIMEOUT,
        },
        &mut stage,
        fault,
    )
    .await;
    if !verdict.passed() {
        stage.a.print_notable_lines();
        stage.b.print_notable_lines();
    }
    drop(stage);
    drop(vhost);
    verdict
}
