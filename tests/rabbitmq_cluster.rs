//! The local RabbitMQ cluster of `scripts/rabbitmq-cluster` (what
//! `./scripts/test` starts): its three nodes are one cluster, and a message
//! confirmed into a quorum queue through the balancer outlives a stop and a
//! restart of the node its connection went to, then a `kill -9` of the
//! queue's leader.
//!
//! Needs that cluster up: `LIVEFEED_RABBIT_CLUSTER` names the script (default
//! `scripts/rabbitmq-cluster` of this checkout); a missing cluster fails the
//! test. One test only: it takes nodes down, one at a time, and always starts
//! them again, even when it fails.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use amqprs::callbacks::ChannelCallback;
use amqprs::channel::{
    BasicGetArguments, BasicPublishArguments, Channel, ConfirmSelectArguments,
    QueueDeclareArguments, QueueDeleteArguments,
};
use amqprs::connection::{Connection, OpenConnectionArguments};
use amqprs::error::Error as AmqpError;
use amqprs::{
    Ack, BasicProperties, Cancel, CloseChannel, DELIVERY_MODE_PERSISTENT, FieldTable, FieldValue,
    Nack, Return,
};
use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::{Instant, sleep, timeout};
use url::Url;
use uuid::Uuid;

/// For a confirm, a connection, a queue declaration.
const WAIT: Duration = Duration::from_secs(10);
/// For a quorum queue to answer again after one of its members left: a
/// leader election, on a busy machine.
const FAILOVER: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);

fn script() -> PathBuf {
    std::env::var_os("LIVEFEED_RABBIT_CLUSTER").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/rabbitmq-cluster"),
        PathBuf::from,
    )
}

/// Runs the cluster script (blocking: its commands wait for the cluster) and
/// returns what it printed.
fn cluster(arguments: &[&str]) -> String {
    let script = script();
    let output = Command::new(&script)
        .args(arguments)
        .output()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", script.display()));
    assert!(
        output.status.success(),
        "{} {arguments:?} failed (is the cluster up? run: scripts/rabbitmq-cluster up): {}",
        script.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).expect("the script prints UTF-8")
}

async fn cluster_async(arguments: &[&str]) -> String {
    let arguments: Vec<String> = arguments.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let arguments: Vec<&str> = arguments.iter().map(String::as_str).collect();
        cluster(&arguments)
    })
    .await
    .expect("the script's task does not panic")
}

fn json(output: &str) -> serde_json::Value {
    serde_json::from_str(output).unwrap_or_else(|error| panic!("not JSON ({error}): {output}"))
}

const NODES: [&str; 3] = ["1", "2", "3"];

/// Starts the node again when the test ends, however it ends.
struct Restart(&'static str);

impl Drop for Restart {
    fn drop(&mut self) {
        let started = Command::new(script()).args(["start", self.0]).status();
        if !matches!(started, Ok(status) if status.success()) {
            eprintln!("could not start node {} again: {started:?}", self.0);
        }
    }
}

/// Sends the broker's publisher confirms to the test.
struct Confirms(mpsc::UnboundedSender<bool>);

#[async_trait]
impl ChannelCallback for Confirms {
    async fn close(&mut self, _: &Channel, _: CloseChannel) -> Result<(), AmqpError> {
        Ok(())
    }
    async fn cancel(&mut self, _: &Channel, _: Cancel) -> Result<(), AmqpError> {
        Ok(())
    }
    async fn flow(&mut self, _: &Channel, active: bool) -> Result<bool, AmqpError> {
        Ok(active)
    }
    async fn publish_ack(&mut self, _: &Channel, _: Ack) {
        let _ = self.0.send(true);
    }
    async fn publish_nack(&mut self, _: &Channel, _: Nack) {
        let _ = self.0.send(false);
    }
    async fn publish_return(&mut self, _: &Channel, _: Return, _: BasicProperties, _: Vec<u8>) {}
}

async fn connect(url: &str, name: &str) -> Connection {
    timeout(WAIT, try_connect(url, name))
        .await
        .expect("connecting timed out")
        .expect("connected")
}

async fn try_connect(url: &str, name: &str) -> Result<Connection, AmqpError> {
    let url = Url::parse(url).expect("the script prints a URL");
    let mut arguments = OpenConnectionArguments::new(
        url.host_str().expect("the URL has a host"),
        url.port().expect("the URL has a port"),
        url.username(),
        url.password().expect("the URL has a password"),
    );
    arguments.connection_name(name);
    Connection::open(&arguments).await
}

/// The node (1..3) that serves the connection named `name`: the one whose
/// AMQP port the connection reached.
async fn node_of(name: &str) -> &'static str {
    let connections = json(
        &cluster_async(&[
            "ctl",
            "1",
            "-q",
            "list_connections",
            "client_properties",
            "port",
            "--formatter",
            "json",
        ])
        .await,
    );
    let port = connections
        .as_array()
        .expect("a list of connections")
        .iter()
        // The client's name is one of its properties, however they are printed.
        .find(|c| c["client_properties"].to_string().contains(name))
        .unwrap_or_else(|| panic!("no connection {name} in {connections}"))["port"]
        .as_u64()
        .expect("a port");
    for node in NODES {
        let url = cluster_async(&["node-url", node]).await;
        if Url::parse(url.trim()).expect("a URL").port() == Some(port as u16) {
            return node;
        }
    }
    panic!("port {port} is no node's")
}

/// The node (1..3) leading the quorum queue `queue` of the default vhost.
async fn leader_of(queue: &str) -> &'static str {
    let queues = json(
        &cluster_async(&[
            "ctl",
            "1",
            "-q",
            "list_queues",
            "name",
            "leader",
            "--formatter",
            "json",
        ])
        .await,
    );
    let leader = queues
        .as_array()
        .expect("a list of queues")
        .iter()
        .find(|q| q["name"] == queue)
        .unwrap_or_else(|| panic!("no queue {queue} in {queues}"))["leader"]
        .as_str()
        .expect("a leader's node name")
        .to_string();
    for node in NODES {
        if cluster_async(&["nodename", node]).await.trim() == leader {
            return node;
        }
    }
    panic!("{leader} is no node of the cluster")
}

/// The body of the next message in `queue`, asked through the balancer until
/// the queue answers with one.
async fn get(url: &str, queue: &str) -> Vec<u8> {
    let deadline = Instant::now() + FAILOVER;
    loop {
        let attempt = async {
            // The balancer may still send a connection to the killed node.
            let name = format!("cluster-test-get-{}", Uuid::new_v4());
            let connection = try_connect(url, &name).await.ok()?;
            let channel = connection.open_channel(None).await.ok()?;
            let got = channel
                .basic_get(BasicGetArguments::new(queue).no_ack(true).finish())
                .await
                .ok()?;
            let _ = connection.close().await;
            got.map(|(_, _, body)| body)
        };
        if let Ok(Some(body)) = timeout(WAIT, attempt).await {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "no message in {queue} within {FAILOVER:?}"
        );
        sleep(POLL).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_confirmed_message_outlives_a_restart_of_its_node_and_a_kill_of_its_leader() {
    let mut running: Vec<String> = json(
        &cluster_async(&["ctl", "1", "-q", "cluster_status", "--formatter", "json"]).await,
    )["running_nodes"]
        .as_array()
        .expect("running_nodes is a list")
        .iter()
        .map(|node| node.as_str().expect("a node name").to_string())
        .collect();
    running.sort();
    let mut expected = Vec::new();
    for node in NODES {
        expected.push(cluster_async(&["nodename", node]).await.trim().to_string());
    }
    assert_eq!(running, expected, "the three nodes are one running cluster");

    let url = cluster_async(&["url"]).await.trim().to_string();
    let name = format!("cluster-test-publish-{}", Uuid::new_v4());
    let queue = format!("cluster-test.{}", Uuid::new_v4());
    let body = Uuid::new_v4().to_string().into_bytes();

    let connection = connect(&url, &name).await;
    let channel = connection.open_channel(None).await.expect("a channel");
    let (confirms, mut confirmed) = mpsc::unbounded_channel();
    channel
        .register_callback(Confirms(confirms))
        .await
        .expect("callback registered");
    channel
        .confirm_select(ConfirmSelectArguments::default())
        .await
        .expect("confirm mode");
    let mut quorum = FieldTable::new();
    quorum.insert(
        "x-queue-type".try_into().expect("a short name"),
        FieldValue::S("quorum".try_into().expect("a short value")),
    );
    channel
        .queue_declare(
            QueueDeclareArguments::durable_client_named(&queue)
                .arguments(quorum)
                .finish(),
        )
        .await
        .expect("quorum queue declared");
    let mut properties = BasicProperties::default();
    properties.with_delivery_mode(DELIVERY_MODE_PERSISTENT);
    channel
        .basic_publish(
            properties,
            body.clone(),
            BasicPublishArguments::new("", &queue),
        )
        .await
        .expect("published");
    let acked = timeout(WAIT, confirmed.recv())
        .await
        .expect("RabbitMQ confirmed within the wait")
        .expect("the confirm arrived");
    assert!(
        acked,
        "RabbitMQ acked the publish (a nack means not stored)"
    );

    let node = node_of(&name).await;
    let _ = connection.close().await;
    let restart = Restart(node);
    cluster_async(&["stop", node]).await;
    drop(restart);

    let leader = leader_of(&queue).await;
    let restart = Restart(leader);
    cluster_async(&["kill", leader]).await;
    assert_eq!(
        get(&url, &queue).await,
        body,
        "the message, after node {node} stopped and started again, and with its leader {leader} killed"
    );
    drop(restart);

    let connection = connect(&url, &format!("cluster-test-cleanup-{}", Uuid::new_v4())).await;
    let channel = connection.open_channel(None).await.expect("a channel");
    channel
        .queue_delete(QueueDeleteArguments::new(&queue))
        .await
        .expect("queue deleted");
    let _ = connection.close().await;
}
