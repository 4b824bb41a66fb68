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

/// A virtual host of its own, deleted with everything in it when dropped.
pub struct Vhost {
    name: String,
    url: String,
}

impl Vhost {
    pub async fn create() -> Self {
        let base = Url::parse(&amqp_url()).expect("AMQP_URL is a URL");
        let name = format!("livefeed-test.{}", uuid::Uuid::new_v4());
        rabbitmqctl(&["add_vhost", &name]).await;
        let mut url = base.clone();
        url.set_path(&format!("/{name}"));
        // From here on, dropping it deletes the vhost.
        let vhost = Self {
            name,
            url: url.to_string(),
        };
        let user = match base.username() {
            "" => "guest",
            user => user,
        };
        rabbitmqctl(&["set_permissions", "-p", &vhost.name, user, ".*", ".*", ".*"]).await;
        vhost
    }

    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for Vhost {
    /// Blocking, but brief, and only at the end of a test.
    fn drop(&mut self) {
        let deleted = std::process::Command::new(rabbitmqctl_path())
            .args(["-q", "delete_vhost", &self.name])
            .status();
        if !matches!(deleted, Ok(status) if status.success()) {
            eprintln!("could not delete vhost {}: {deleted:?}", self.name);
        }
    }
}

fn rabbitmqctl_path() -> String {
    std::env::var("RABBITMQCTL").unwrap_or_else(|_| "/usr/sbin/rabbitmqctl".into())
}

/// Runs `rabbitmqctl -q` with `arguments`; returns what it printed.
pub async fn rabbitmqctl(arguments: &[&str]) -> String {
    let path = rabbitmqctl_path();
    let run = tokio::process::Command::new(&path)
        .arg("-q")
        .args(arguments)
        .kill_on_drop(true)
        .output();
    let output = timeout(RABBITMQCTL_TIMEOUT, run)
        .await
        .unwrap_or_else(|_| panic!("{path} {arguments:?} timed out"))
        .unwrap_or_else(|error| panic!("cannot run {path} (set RABBITMQCTL): {error}"));
    assert!(
        output.status.success(),
        "{path} {arguments:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
