//! Options every scenario shares, and the instances they name.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::token::MIN_SECRET_BYTES;

#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Base URL of a livefeed instance, e.g. http://127.0.0.1:8081. Repeat
    /// (or separate with commas) for several: clients and requests are
    /// spread over them round-robin.
    #[arg(long = "url", required = true, value_delimiter = ',')]
    pub urls: Vec<String>,

    /// The instances' PostgreSQL: the tool seeds its users and follow edges
    /// there (COPY) and deletes them at the end.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// The instances' LIVEFEED_JWT_SECRET, to mint the users' tokens.
    #[arg(long, env = "LIVEFEED_JWT_SECRET", hide_env_values = true,
          value_parser = parse_secret)]
    pub jwt_secret: String,

    /// Process id of an instance, for its RSS and CPU time from /proc.
    /// Repeatable; give them in --url order to get per-instance figures.
    #[arg(long = "server-pid", value_delimiter = ',')]
    pub server_pids: Vec<u32>,

    /// A store whose CPU time is reported beside the instances' and added
    /// into the all-in figure: `NAME` counts every tree of processes named
    /// NAME (`postgres`, `redis-server`, `beam.smp`); `LABEL=PID` the tree
    /// rooted at PID (the postmaster, one RabbitMQ node's beam.smp).
    /// Repeatable or comma-separated. A tree is its root's CPU, the CPU of
    /// the children it reaped, and its live descendants'.
    #[arg(long = "store", value_delimiter = ',', value_parser = parse_store)]
    pub stores: Vec<StoreSpec>,

    /// Print the report as JSON on stdout (progress stays on stderr).
    #[arg(long)]
    pub json: bool,

    /// Leave the seeded users, edges and posts in the database.
    #[arg(long)]
    pub keep: bool,

    /// Seed of every random choice (follow graph, authors, request mix).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// A store named on the command line, before its processes are found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreSpec {
    pub label: String,
    /// `None`: every process tree whose root is named `label`.
    pub pid: Option<u32>,
}

fn parse_store(raw: &str) -> Result<StoreSpec, String> {
    let (label, pid) = match raw.split_once('=') {
        Some((label, pid)) => {
            let pid = pid
                .trim()
                .parse()
                .map_err(|_| format!("bad pid {pid:?} in {raw:?} (LABEL=PID)"))?;
            (label.trim(), Some(pid))
        }
        None => (raw.trim(), None),
    };
    if label.is_empty() {
        return Err(format!("{raw:?} names no store"));
    }
    Ok(StoreSpec {
        label: label.to_owned(),
        pid,
    })
}

/// How websocket clients are spread over worker processes.
#[derive(Debug, Clone, Args)]
pub struct FleetOptions {
    /// Most websocket clients one worker process holds. Each is a file
    /// descriptor, and a process may hold at most RLIMIT_NOFILE of them.
    #[arg(long, default_value_t = 10_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub clients_per_worker: u32,

    /// Source address of the worker sockets, one per worker in turn
    /// (repeatable). Default: 127.0.0.2, 127.0.0.3, ... when every URL is
    /// on loopback, so each worker has its own ephemeral port range.
    #[arg(long = "source-ip", value_delimiter = ',')]
    pub source_ips: Vec<IpAddr>,

    /// Let the kernel pick the source address (no bind before connect).
    #[arg(long, conflicts_with = "source_ips")]
    pub no_source_ip: bool,

    /// Connections being opened at once, over all workers. More than the
    /// server's listen backlog in flight overflows it (livefeed listens with
    /// 4096, capped by the kernel's somaxconn), and the dropped SYNs come
    /// back a second later.
    #[arg(long, default_value_t = 128,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub connect_concurrency: u32,

    /// Seconds one client may take to connect, and again to be subscribed
    /// (its ping answered).
    #[arg(long, default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout: u64,

    /// Seconds all clients together may take to be ready.
    #[arg(long, default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub ready_timeout: u64,

    /// Seconds to wait, after the last post, for the deliveries still missing.
    #[arg(long, default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub drain_timeout: u64,
}

fn parse_secret(raw: &str) -> Result<String, String> {
    if raw.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "the instances' secret is at least {MIN_SECRET_BYTES} bytes, got {}",
            raw.len()
        ));
    }
    Ok(raw.to_owned())
}

/// One instance: its REST base and where its websocket lives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Target {
    /// `http://host:port` plus any path prefix, without a trailing slash.
    pub base: String,
    pub ws_url: String,
    pub addr: SocketAddr,
}

impl Target {
    pub async fn resolve(url: &str) -> anyhow::Result<Self> {
        let parsed = reqwest::Url::parse(url).with_context(|| format!("bad --url {url:?}"))?;
        if parsed.scheme() != "http" {
            bail!("--url {url:?}: only http:// instances are supported");
        }
        let host = parsed
            .host_str()
            .with_context(|| format!("--url {url:?} has no host"))?;
        let port = parsed.port_or_known_default().unwrap_or(80);
        let path = parsed.path().trim_end_matches('/');
        let addr = tokio::net::lookup_host((host, port))
            .await
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?;
        Ok(Self {
            base: format!("http://{host}:{port}{path}"),
            ws_url: format!("ws://{host}:{port}{path}/post/feed/posted"),
            addr,
        })
    }

    pub async fn resolve_all(urls: &[String]) -> anyhow::Result<Vec<Self>> {
        let mut targets = Vec::with_capacity(urls.len());
        for url in urls {
            targets.push(Self::resolve(url).await?);
        }
        Ok(targets)
    }
}

/// Every socket is a file descriptor: take all the kernel allows.
pub fn raise_fd_limit() {
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("warning: cannot raise the file descriptor limit: {e}");
    }
}

pub fn fd_limit() -> u64 {
    rlimit::Resource::NOFILE
        .get()
        .map_or(1024, |(soft, _)| soft)
}

/// Runs `work` unless Ctrl-C comes first, so the caller can still clean up.
pub async fn interruptible<T>(work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::select! {
        result = work => result,
        _ = tokio::signal::ctrl_c() => bail!("interrupted"),
    }
}

/// A short random tag naming this run in its posts and users.
pub fn new_run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{:08x}", (nanos ^ std::process::id().rotate_left(16)))
}

pub fn unix_micros() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub fn secs(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_parse_by_name_or_pid() {
        assert_eq!(
            parse_store("postgres"),
            Ok(StoreSpec {
                label: "postgres".into(),
                pid: None
            })
        );
        assert_eq!(
            parse_store("rabbitmq=2972"),
            Ok(StoreSpec {
                label: "rabbitmq".into(),
                pid: Some(2972)
            })
        );
        for bad in ["", "=12", "pg=x", "pg="] {
            assert!(parse_store(bad).is_err(), "{bad}");
        }
    }
}
