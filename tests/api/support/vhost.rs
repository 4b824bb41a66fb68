//! A RabbitMQ virtual host per test: exchanges and queues of one test
//! (above all the shared `feed.materialize` work queue, which has a single
//! active consumer) are out of reach of the others running at the same time.

use std::time::Duration;

use tokio::time::timeout;
use url::Url;

pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// `rabbitmqctl` boots an Erlang VM per call: about a second, more on a busy
/// machine.
const RABBITMQCTL_TIMEOUT: Duration = Duration::from_secs(60);

/// How a test runs `rabbitmqctl`: the local one, or through a wrapper that
/// adds arguments of its own (a cluster script's `ctl N`).
#[derive(Debug, Clone)]
pub struct Rabbitmqctl {
    program: String,
    leading: Vec<String>,
}

impl Rabbitmqctl {
    /// The broker's own `rabbitmqctl` (`RABBITMQCTL`, default /usr/sbin's).
    pub fn local() -> Self {
        Self::new(
            std::env::var("RABBITMQCTL").unwrap_or_else(|_| "/usr/sbin/rabbitmqctl".into()),
            Vec::new(),
        )
    }

    /// `program leading... ARGS` runs `rabbitmqctl ARGS`.
    pub fn new(program: String, leading: Vec<String>) -> Self {
        Self { program, leading }
    }

    /// Runs `rabbitmqctl -q ARGS` with a bounded wait; panics unless it
    /// succeeds. Returns its standard output.
    pub async fn run(&self, arguments: &[&str]) -> String {
        let run = tokio::process::Command::new(&self.program)
            .args(&self.leading)
            .arg("-q")
            .args(arguments)
            .kill_on_drop(true)
            .output();
        let output = timeout(RABBITMQCTL_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| panic!("{self:?} {arguments:?} timed out"))
            .unwrap_or_else(|error| panic!("cannot run {self:?} (set RABBITMQCTL): {error}"));
        assert!(
            output.status.success(),
            "{self:?} {arguments:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Like `run`, blocking the thread: for `Drop`.
    fn run_blocking(&self, arguments: &[&str]) -> std::io::Result<std::process::ExitStatus> {
        std::process::Command::new(&self.program)
            .args(&self.leading)
            .arg("-q")
            .args(arguments)
            .status()
    }
}

/// A virtual host of its own, deleted with everything in it when dropped.
pub struct Vhost {
    name: String,
    url: String,
    ctl: Rabbitmqctl,
}

impl Vhost {
    /// On the broker of `AMQP_URL`.
    pub async fn create() -> Self {
        Self::create_on(Rabbitmqctl::local(), &amqp_url()).await
    }

    /// On the broker `ctl` manages, reached at `base_url`.
    pub async fn create_on(ctl: Rabbitmqctl, base_url: &str) -> Self {
        let base = Url::parse(base_url).expect("the AMQP URL is a URL");
        let name = format!("livefeed-test.{}", uuid::Uuid::new_v4());
        ctl.run(&["add_vhost", &name]).await;
        let mut url = base.clone();
        url.set_path(&format!("/{name}"));
        // From here on, dropping it deletes the vhost.
        let vhost = Self {
            name,
            url: url.to_string(),
            ctl,
        };
        let user = match base.username() {
            "" => "guest",
            user => user,
        };
        vhost
            .ctl
            .run(&["set_permissions", "-p", &vhost.name, user, ".*", ".*", ".*"])
            .await;
        vhost
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for Vhost {
    /// Blocking, but brief, and only at the end of a test.
    fn drop(&mut self) {
        let deleted = self.ctl.run_blocking(&["delete_vhost", &self.name]);
        if !matches!(deleted, Ok(status) if status.success()) {
            eprintln!("could not delete vhost {}: {deleted:?}", self.name);
        }
    }
}
