//! The three-node RabbitMQ cluster of `scripts/rabbitmq-cluster`, driven
//! through that script: faults on its nodes, `rabbitmqctl` against it, and
//! where things live in it (a queue's node, a quorum queue's leader, the node
//! a connection is on). Waiting for a node to be down or back is the
//! script's job; this module never sleeps.

use std::path::PathBuf;
use std::time::Duration;

use tokio::time::timeout;

use crate::support::vhost::Rabbitmqctl;

/// Bound on one script command: starting a node waits for it to rejoin the
/// cluster and the balancer (the script's own waits are 120 s each).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(240);

pub const NODES: [usize; 3] = [1, 2, 3];

/// What happens to a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeFault {
    /// `rabbitmqctl stop`: the node leaves cleanly.
    Stop,
    /// `kill -9` of its Erlang VM.
    Kill,
}

impl NodeFault {
    pub fn verb(self) -> &'static str {
        match self {
            Self::Stop => "stop",
            Self::Kill => "kill",
        }
    }
}

pub struct Cluster {
    script: PathBuf,
    /// Erlang node name of nodes 1..3.
    nodenames: Vec<String>,
}

impl Cluster {
    /// The script at `LIVEFEED_RABBIT_CLUSTER` (default: this repository's
    /// `scripts/rabbitmq-cluster`), with the cluster brought up if it is not
    /// (the script's `up` is idempotent and waits until the three nodes are
    /// one cluster behind the balancer).
    pub async fn up() -> Self {
        let script = std::env::var_os("LIVEFEED_RABBIT_CLUSTER")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-cluster")
            });
        assert!(
            script.exists(),
            "{} not found: set LIVEFEED_RABBIT_CLUSTER to the rabbitmq-cluster script",
            script.display()
        );
        let mut cluster = Self {
            script,
            nodenames: Vec::new(),
        };
        cluster.run(&["up"]).await;
        for n in NODES {
            let name = cluster.run(&["nodename", &n.to_string()]).await;
            cluster.nodenames.push(name.trim().to_owned());
        }
        cluster
    }

    /// The balancer's AMQP URL (`LIVEFEED_CLUSTER_AMQP_URL`, else the script's).
    pub async fn url(&self) -> String {
        match std::env::var("LIVEFEED_CLUSTER_AMQP_URL") {
            Ok(url) => url,
            Err(_) => self.run(&["url"]).await.trim().to_owned(),
        }
    }

    /// `rabbitmqctl` against node `n`.
    pub fn ctl(&self, n: usize) -> Rabbitmqctl {
        Rabbitmqctl::new(
            self.script.display().to_string(),
            vec!["ctl".into(), n.to_string()],
        )
    }

    /// Stops or kills node `n`; returns once it is down.
    pub async fn fault(&self, n: usize, fault: NodeFault) {
        self.run(&[fault.verb(), &n.to_string()]).await;
    }

    /// Starts nodes; returns once each is back in the cluster and the balancer.
    pub async fn start(&self, nodes: &[usize]) {
        let mut arguments = vec!["start".to_owned()];
        arguments.extend(nodes.iter().map(usize::to_string));
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        self.run(&arguments).await;
    }

    /// Stops every node (each is down when this returns).
    pub async fn stop_all(&self) {
        for n in NODES {
            self.fault(n, NodeFault::Stop).await;
        }
    }

    /// The node of queue `queue` in `vhost`: a classic queue's home, a
    /// quorum queue's leader.
    pub async fn node_of_queue(&self, vhost: &str, queue: &str) -> usize {
        let listing = self
            .ctl(self.any_node())
            .run(&[
                "-s",
                "list_queues",
                "-p",
                vhost,
                "name",
                "type",
                "pid",
                "leader",
            ])
            .await;
        let line = listing
            .lines()
            .find(|line| line.split('\t').next() == Some(queue))
            .unwrap_or_else(|| panic!("queue {queue} is not in vhost {vhost}:\n{listing}"));
        let columns: Vec<&str> = line.split('\t').collect();
        let node = match columns.get(1) {
            Some(&"quorum") => columns.get(3).copied().unwrap_or_default(),
            _ => node_of_pid(columns.get(2).copied().unwrap_or_default()),
        };
        self.number_of(node)
            .unwrap_or_else(|| panic!("queue {queue}: no node in {line:?}"))
    }

    /// The node the connection named `connection_name` is on.
    pub async fn node_of_connection(&self, connection_name: &str) -> usize {
        let listing = self
            .ctl(self.any_node())
            .run(&["-s", "list_connections", "pid", "client_properties"])
            .await;
        let quoted = format!("\"{connection_name}\"");
        let line = listing
            .lines()
            .find(|line| line.contains(&quoted))
            .unwrap_or_else(|| panic!("no connection {quoted}:\n{listing}"));
        let pid = line.split('\t').next().unwrap_or_default();
        self.number_of(node_of_pid(pid))
            .unwrap_or_else(|| panic!("connection {quoted}: no node in {line:?}"))
    }

    /// Queries go to a node that is up: between faults, all are.
    fn any_node(&self) -> usize {
        NODES[0]
    }

    fn number_of(&self, nodename: &str) -> Option<usize> {
        self.nodenames
            .iter()
            .position(|name| name == nodename)
            .map(|index| NODES[index])
    }

    async fn run(&self, arguments: &[&str]) -> String {
        let run = tokio::process::Command::new(&self.script)
            .args(arguments)
            .kill_on_drop(true)
            .output();
        let output = timeout(SCRIPT_TIMEOUT, run)
            .await
            .unwrap_or_else(|_| panic!("rabbitmq-cluster {arguments:?} timed out"))
            .unwrap_or_else(|error| panic!("cannot run {}: {error}", self.script.display()));
        assert!(
            output.status.success(),
            "rabbitmq-cluster {arguments:?} failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

/// `<livefeed-rabbit1@localhost.1700.512.0>` → `livefeed-rabbit1@localhost`:
/// an Erlang pid names its node, followed by three numbers.
fn node_of_pid(pid: &str) -> &str {
    let inner = pid.trim().trim_start_matches('<').trim_end_matches('>');
    let mut end = inner.len();
    for _ in 0..3 {
        end = inner[..end].rfind('.').unwrap_or(0);
    }
    &inner[..end]
}
