//! A livefeed instance as a child process (`livefeed serve`, configured by
//! its environment), reaching the broker through a `TcpProxy` of its own so
//! its link can be cut, and its log kept in a file under
//! `target/failover/` for the report. Killed when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::{Instant, sleep};

use crate::support::{ApiClient, SECRET, TcpProxy};

/// Bound on an instance starting to serve (migrations included).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a log file or `/readyz` is looked at while waiting.
const POLL: Duration = Duration::from_millis(50);

/// What both instances of a scenario share.
pub struct Deployment {
    pub database_url: String,
    /// The broker (balancer) URL with the scenario's vhost; instances reach
    /// its host and port through their own proxy.
    pub amqp_url: url::Url,
    pub redis_prefix: String,
    /// `?heartbeat=N` for the instances, when set.
    pub heartbeat_secs: Option<u16>,
    /// Where the logs go, one file per instance.
    pub log_dir: PathBuf,
}

/// Instance queues expire this long after their instance is gone; short,
/// so the freeze scenario is.
pub const QUEUE_EXPIRY_SECS: u64 = 5;

pub struct Instance {
    pub label: &'static str,
    pub id: String,
    pub api: ApiClient,
    /// This instance's path to the broker.
    pub link: TcpProxy,
    child: Child,
    log: PathBuf,
}

impl Instance {
    pub async fn start(label: &'static str, deployment: &Deployment) -> Self {
        let broker: SocketAddr = {
            let url = &deployment.amqp_url;
            let host = url.host_str().expect("the AMQP URL has a host");
            let port = url.port().unwrap_or(5672);
            tokio::net::lookup_host((host, port))
                .await
                .expect("resolving the broker")
                .next()
                .expect("the broker has an address")
        };
        let link = TcpProxy::start(broker).await;
        let mut amqp_url = deployment.amqp_url.clone();
        amqp_url.set_ip_host(link.address().ip()).unwrap();
        amqp_url.set_port(Some(link.address().port())).unwrap();
        if let Some(seconds) = deployment.heartbeat_secs {
            amqp_url.set_query(Some(&format!("heartbeat={seconds}")));
        }
        let id = format!("failover-{label}-{}", uuid::Uuid::new_v4().simple());
        std::fs::create_dir_all(&deployment.log_dir).expect("creating the log directory");
        let log = deployment.log_dir.join(format!("{label}.log"));
        let file = std::fs::File::create(&log).expect("creating the instance's log");
        let child = Command::new(env!("CARGO_BIN_EXE_livefeed"))
            .arg("serve")
            .env("DATABASE_URL", &deployment.database_url)
            .env("AMQP_URL", amqp_url.as_str())
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
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("starting livefeed serve");
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

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the instance is running");
        let sent = std::process::Command::new("kill")
            .arg(signal)
            .arg(pid.to_string())
            .status()
            .expect("running kill");
        assert!(sent.success(), "kill {signal} {pid} failed");
    }

    pub fn log_path(&self) -> &PathBuf {
        &self.log
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}
