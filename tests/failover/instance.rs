//! A livefeed instance as a child process (`livefeed serve`, configured by
//! its environment): on RabbitMQ it reaches the broker through a `TcpProxy`
//! of its own so its link can be cut; without a broker URL it runs the
//! in-process broker. Its log is kept in a file under the scenario's log
//! directory for the report. It can be frozen, thawed and killed with -9;
//! killed when dropped. Shared by tests/failover.rs and tests/faults.rs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use crate::support::{ApiClient, SECRET, TcpProxy};
use crate::traffic::Dial;

/// Bound on an instance starting to serve (migrations included).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// What an instance logs once it holds the outbox relay lock.
const RELAY_LEADER_LOG: &str = "this instance now relays the outbox";
/// Bound on the first instance of a scenario becoming the relay.
const LEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a log file or `/readyz` is looked at while waiting.
const POLL: Duration = Duration::from_millis(50);

/// What both instances of a scenario share.
pub struct Deployment {
    pub database_url: String,
    /// The broker (balancer) URL with the scenario's vhost; instances reach
    /// its host and port through their own proxy. `None`: the in-process
    /// broker (one instance only: it cannot span processes).
    pub amqp_url: Option<url::Url>,
    /// `None`: `REDIS_URL` of the environment, else the default.
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    /// `?heartbeat=N` for the instances, when set.
    pub heartbeat_secs: Option<u16>,
    /// More `LIVEFEED_*` settings of the scenario.
    pub env: Vec<(&'static str, String)>,
    /// Where the logs go, one file per instance.
    pub log_dir: PathBuf,
}

/// `target/tmp/<suite>/<scenario, as a file name>`: where a scenario's
/// instance logs go.
pub fn log_dir(suite: &str, scenario: &str) -> PathBuf {
    let slug: String = scenario
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(suite)
        .join(slug)
}

/// Instance queues expire this long after their instance is gone; short,
/// so the freeze scenario is.
pub const QUEUE_EXPIRY_SECS: u64 = 5;

pub struct Instance {
    pub label: &'static str,
    pub id: String,
    pub api: ApiClient,
    /// This instance's path to the broker (on RabbitMQ).
    link: Option<TcpProxy>,
    child: Child,
    log: PathBuf,
}

impl Instance {
    pub async fn start(label: &'static str, deployment: &Deployment) -> Self {
        let id = format!("livefeed-{label}-{}", uuid::Uuid::new_v4().simple());
        std::fs::create_dir_all(&deployment.log_dir).expect("creating the log directory");
        let log = deployment.log_dir.join(format!("{label}.log"));
        let file = std::fs::File::create(&log).expect("creating the instance's log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_livefeed"));
        command
            .arg("serve")
            .env("DATABASE_URL", &deployment.database_url)
            .env("LIVEFEED_REDIS_PREFIX", &deployment.redis_prefix)
            .env("LIVEFEED_LISTEN", "127.0.0.1:0")
            .env("LIVEFEED_JWT_SECRET", SECRET)
            .env("LIVEFEED_INSTANCE_ID", &id)
            .env("LIVEFEED_LOG", "info")
            .env(
                "LIVEFEED_AMQP_QUEUE_EXPIRY_SECS",
                QUEUE_EXPIRY_SECS.to_string(),
            )
            // Plain log lines, to read the listening address from.
            .env("NO_COLOR", "1")
            .envs(deployment.env.iter().map(|(name, value)| (name, value)))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true);
        if let Some(redis_url) = &deployment.redis_url {
            command.env("REDIS_URL", redis_url);
        }
        let link = match &deployment.amqp_url {
            Some(url) => {
                let (link, amqp_url) = linked(url, deployment.heartbeat_secs).await;
                command.env("AMQP_URL", amqp_url.as_str());
                Some(link)
            }
            None => {
                command.env_remove("AMQP_URL");
                None
            }
        };
        let child = command.spawn().expect("starting livefeed serve");
        let mut instance = Self {
            label,
            id,
            api: ApiClient::new(String::new()),
            link,
            child,
            log,
        };
        let line = instance.wait_for_log("listening", START_TIMEOUT).await;
        let address = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("address="))
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        instance.api = ApiClient::new(format!("http://{address}"));
        instance.wait_until_ready().await;
        instance
    }

    /// The name of its AMQP connection, as RabbitMQ lists it.
    pub fn connection_name(&self) -> String {
        format!("livefeed {}", self.id)
    }

    /// Its own queue's name.
    pub fn queue(&self) -> String {
        format!("livefeed.instance.{}", self.id)
    }

    /// Its path to RabbitMQ, to cut and restore.
    pub fn link(&mut self) -> &mut TcpProxy {
        self.link.as_mut().expect("an instance on RabbitMQ")
    }

    /// Its followers' sockets connect to it directly.
    pub fn dial(&self) -> Dial {
        Dial {
            label: self.label.to_owned(),
            address: self.api.address.clone(),
        }
    }

    /// Where it listens, for a balancer's upstream.
    pub fn address(&self) -> SocketAddr {
        self.api
            .address
            .trim_start_matches("http://")
            .parse()
            .expect("an instance address")
    }

    /// Waits until it relays the outbox: started first, it must, and a
    /// second instance started after that stands by.
    pub async fn wait_until_relay(&mut self) {
        self.wait_for_log(RELAY_LEADER_LOG, LEADER_TIMEOUT).await;
    }

    /// Waits until a log line contains `needle`; returns the line. Panics
    /// (with the log) after `within`, or when the process has exited.
    pub async fn wait_for_log(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(line) = self.log_text().lines().find(|line| line.contains(needle)) {
                return line.to_owned();
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "instance {} exited ({status}):\n{}",
                    self.label,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "instance {} logged no {needle:?} within {within:?}:\n{}",
                self.label,
                self.log_text()
            );
            sleep(POLL).await;
        }
    }

    async fn wait_until_ready(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let ready = self.api.client.get(self.api.url("/readyz")).send().await;
            if matches!(ready, Ok(response) if response.status().is_success()) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "instance {} not ready within {START_TIMEOUT:?}:\n{}",
                self.label,
                self.log_text()
            );
            sleep(POLL).await;
        }
    }

    /// SIGSTOP: the process stays, doing nothing, sockets open.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// SIGKILL; returns once the process is gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().expect("killing the instance");
        self.child
            .wait()
            .await
            .expect("waiting for the killed instance");
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the instance is running");
        let sent = std::process::Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill {signal} {pid} failed");
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Warnings, errors and broker/relay events of its log, the last 80.
    pub fn notable_lines(&self) -> String {
        let log = self.log_text();
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

    /// Prints its notable lines: for a scenario that failed.
    pub fn print_notable_lines(&self) {
        eprintln!(
            "--- instance {} ({}), notable lines of {}:\n{}",
            self.label,
            self.id,
            self.log.display(),
            self.notable_lines()
        );
    }
}

/// A proxy of its own to the broker of `url`, and the URL through it.
async fn linked(url: &url::Url, heartbeat_secs: Option<u16>) -> (TcpProxy, url::Url) {
    let host = url.host_str().expect("the AMQP URL has a host");
    let port = url.port().unwrap_or(5672);
    let broker: SocketAddr = tokio::net::lookup_host((host, port))
        .await
        .expect("resolving the broker")
        .next()
        .expect("the broker has an address");
    let link = TcpProxy::start(broker).await;
    let mut amqp_url = url.clone();
    amqp_url.set_ip_host(link.address().ip()).unwrap();
    amqp_url.set_port(Some(link.address().port())).unwrap();
    if let Some(seconds) = heartbeat_secs {
        amqp_url.set_query(Some(&format!("heartbeat={seconds}")));
    }
    (link, amqp_url)
}
