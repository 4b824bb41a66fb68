//! One fault scenario, start to verdict: a private Redis (and, when asked,
//! a private PostgreSQL), a fresh database, instances of `livefeed serve`
//! (two on RabbitMQ, in a vhost of the scenario's own on the local broker;
//! one on the in-process broker, which cannot span processes), nginx in
//! front when asked, authors and followers, the load flowing, then the
//! fault, a settle period with the load still on, and the drain. Followers
//! reconnect with `?since=` whenever a socket is closed, as real clients
//! do. Everything is torn down when the scenario returns.

use std::time::Duration;

use crate::instance::{self, Deployment, Instance};
use crate::nginx::Nginx;
use crate::report::Verdict;
use crate::services::{PrivatePostgres, PrivateRedis};
use crate::support::{TestUser, Vhost, fresh_database};
use crate::traffic::{self, Cast, Dial, Load};

/// Bound on every created post reaching every socket once the load stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Broker {
    RabbitMq,
    /// The in-process broker: the default configuration (no `AMQP_URL`).
    Memory,
}

impl Broker {
    pub fn name(self) -> &'static str {
        match self {
            Self::RabbitMq => "RabbitMQ",
            Self::Memory => "in-process",
        }
    }
}

/// What a scenario deploys.
pub struct Setup {
    pub broker: Broker,
    /// The database on a PostgreSQL of the scenario's own (to restart it).
    pub private_postgres: bool,
    /// Followers and authors go through nginx (RabbitMQ only).
    pub nginx: bool,
    /// More settings for the instances.
    pub env: Vec<(&'static str, String)>,
    /// A fault that must not hold delivery up: the longest delay allowed.
    pub delay_limit: Option<Duration>,
}

impl Setup {
    pub fn on(broker: Broker) -> Self {
        Self {
            broker,
            private_postgres: false,
            nginx: false,
            env: Vec::new(),
            delay_limit: None,
        }
    }
}

/// What a fault acts on.
pub struct Stage {
    /// The first instance: the outbox relay.
    pub a: Instance,
    /// The second instance (RabbitMQ only).
    pub b: Option<Instance>,
    pub redis: PrivateRedis,
    pub postgres: Option<PrivatePostgres>,
    /// The authors every follower follows.
    pub authors: Vec<TestUser>,
    /// Checks of the fault's own that failed.
    pub failures: Vec<String>,
}

impl Stage {
    /// Lets the load run with the fault in place for `duration`: how long a
    /// fault lasts is part of the scenario, not a condition to await.
    pub async fn hold(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
    }

    pub fn b(&mut self) -> &mut Instance {
        self.b.as_mut().expect("a second instance (RabbitMQ)")
    }
}

/// Runs `fault` (which returns what it hit, for the report) under load and
/// judges what the followers received.
pub async fn run(
    name: &str,
    setup: Setup,
    fault: impl AsyncFnOnce(&mut Stage) -> String,
) -> Verdict {
    let name = format!("{name} [{}]", setup.broker.name());
    eprintln!("faults: {name}: setting up");
    let redis = PrivateRedis::start().await;
    let postgres = match setup.private_postgres {
        true => Some(PrivatePostgres::start().await),
        false => None,
    };
    let database_url = match &postgres {
        Some(postgres) => {
            let url = postgres.url("livefeed_faults");
            livefeed::store::migrate(&url)
                .await
                .expect("migrating the private database");
            url
        }
        None => fresh_database().await,
    };
    let vhost = match setup.broker {
        Broker::RabbitMq => Some(Vhost::create().await),
        Broker::Memory => None,
    };
    let deployment = Deployment {
        database_url,
        amqp_url: vhost.as_ref().map(|vhost| vhost.url().parse().unwrap()),
        redis_url: Some(redis.url()),
        redis_prefix: format!("faults-{}:", uuid::Uuid::new_v4().simple()),
        heartbeat_secs: None,
        env: setup.env.clone(),
        log_dir: instance::log_dir("faults", &name),
    };
    let mut a = Instance::start("A", &deployment).await;
    a.wait_until_relay().await;
    let b = match setup.broker {
        Broker::RabbitMq => Some(Instance::start("B", &deployment).await),
        Broker::Memory => None,
    };
    let nginx = match (setup.nginx, &b) {
        (true, Some(b)) => Some(Nginx::start(&[a.address(), b.address()]).await),
        (true, None) => panic!("nginx balances two instances: RabbitMQ only"),
        (false, _) => None,
    };

    let cast = Cast::register(&a.api).await;
    let (homes, dials) = match (&nginx, &b) {
        (Some(nginx), _) => {
            let address = format!("http://{}", nginx.address);
            let dials = ["nginx 1", "nginx 2"].map(|label| Dial {
                label: label.to_owned(),
                address: address.clone(),
            });
            (vec![address], dials.into())
        }
        (None, Some(b)) => {
            let instances = [&a, b];
            let homes = instances.map(|instance| instance.api.address.clone());
            let dials = instances.map(Instance::dial);
            (homes.into(), dials.into())
        }
        (None, None) => {
            let dials = ["A 1", "A 2"].map(|label| Dial {
                label: label.to_owned(),
                address: a.api.address.clone(),
            });
            (vec![a.api.address.clone()], Vec::from(dials))
        }
    };
    let mut stage = Stage {
        a,
        b,
        redis,
        postgres,
        authors: cast.authors.clone(),
        failures: Vec::new(),
    };
    let mut verdict = traffic::measure(
        "faults",
        &name,
        Load {
            cast: &cast,
            homes: &homes,
            dials: &dials,
            reconnect: true,
            drain_within: DRAIN_TIMEOUT,
        },
        &mut stage,
        fault,
    )
    .await;
    for failure in std::mem::take(&mut stage.failures) {
        verdict.fail(failure);
    }
    if let (Some(limit), Some(longest)) = (setup.delay_limit, verdict.delay_max)
        && longest > limit
    {
        verdict.fail(format!(
            "delivery held up {longest:?} (allowed {limit:?}): the fault stalled the live feed"
        ));
    }
    if !verdict.passed() {
        stage.a.print_notable_lines();
        if let Some(b) = &stage.b {
            b.print_notable_lines();
        }
    }
    drop(nginx);
    drop(stage);
    drop(vhost);
    verdict
}
