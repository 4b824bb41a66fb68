//! The parent's side of the floor: starts `loadtest floor` (this binary
//! again), learns its address, and hands it the run's posts at the run's
//! rate, as [`crate::publish::Publisher`] does through `POST /post/create`.

use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin};
use tokio::sync::Mutex;
use uuid::Uuid;

use super::server::Order;
use crate::fleet;
use crate::opts::Target;
use crate::publish::{Peer, Published};

const START_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Floor {
    pub peer: Peer,
    child: Child,
    stdin: Mutex<Option<ChildStdin>>,
    pub pid: u32,
    pub target: Target,
}

impl Floor {
    pub async fn start(run: &str, users: &[Uuid], text_bytes: usize) -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("finding this executable")?;
        let (child, pid, stdin, stdout) = fleet::spawn_self(&exe, "floor")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(START_TIMEOUT, lines.next_line())
            .await
            .context("the floor did not say where it listens")??
            .context("the floor ended before listening")?;
        let target = Target::resolve(&format!("http://{addr}")).await?;
        Ok(Self {
            peer: Peer::new(run, users, text_bytes),
            child,
            stdin: Mutex::new(Some(stdin)),
            pid,
            target,
        })
    }

    async fn order(&self, order: &Order) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(order)?;
        line.push(b'\n');
        let mut stdin = self.stdin.lock().await;
        let stdin = stdin.as_mut().context("the floor was stopped")?;
        stdin.write_all(&line).await.context("the floor is gone")
    }

    /// The run's posts at its rate, as [`Peer::publish`] says.
    pub async fn publish(&self, schedule: &[u32], rate: f64) -> Published {
        self.peer
            .publish(schedule, rate, |author, text| {
                let order = Order::Post { author, text };
                async move {
                    self.order(&order)
                        .await
                        .map_err(|_| "floor gone".to_owned())
                }
            })
            .await
    }

    /// Tells the floor to answer the close frames the clients are about to
    /// send.
    pub async fn closing(&self, timeout: Duration) -> anyhow::Result<()> {
        self.order(&Order::Close {
            timeout_ms: timeout.as_millis() as u64,
        })
        .await
    }

    /// Closes its stdin (it exits) and waits for it, killing it if it lingers.
    pub async fn stop(mut self) {
        self.stdin.lock().await.take();
        fleet::reap(&mut self.child, &format!("the floor (pid {})", self.pid)).await;
    }
}
