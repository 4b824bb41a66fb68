//! What a run costs: the instances' memory and CPU (from /proc, given their
//! pids), the CPU of the stores they use (PostgreSQL, Redis, RabbitMQ: whole
//! process trees, given their names or root pids) and the sum of both, the
//! all-in cost; the instances' own counters (GET /metrics); and the load
//! generator's CPU (this process and its workers) over the same phase, so
//! that a client more expensive than the server it measures shows up.

use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use anyhow::bail;

use crate::opts::{StoreSpec, Target};
use crate::procfs::{self, Usage};

const METRICS_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Servers {
    pids: Vec<u32>,
    stores: Vec<Store>,
    bases: Vec<String>,
    http: reqwest::Client,
}

/// A store's process trees, found once: their descendants are read afresh
/// at every mark, so backends that come and go are counted.
struct Store {
    label: String,
    roots: Vec<u32>,
}

impl Store {
    fn find(spec: &StoreSpec) -> anyhow::Result<Self> {
        let roots = match spec.pid {
            Some(pid) => vec![pid],
            None => procfs::roots_named(&spec.label),
        };
        if roots.is_empty() {
            bail!("--store {}: no process has that name", spec.label);
        }
        if let Some(pid) = spec.pid
            && procfs::usage(Some(pid)).is_err()
        {
            bail!("--store {}={pid}: no such process", spec.label);
        }
        Ok(Self {
            label: spec.label.clone(),
            roots,
        })
    }
}

/// The instances at one moment.
pub struct Snapshot {
    /// Per `--server-pid`; `None` if /proc could not be read.
    pub usage: Vec<Option<Usage>>,
    /// Per `--url`; `None` if /metrics did not answer.
    pub counters: Vec<Option<Counters>>,
}

/// The counters of livefeed's /metrics that a run moves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub open_sockets: u64,
    pub deliveries: u64,
    pub slow_consumer_closes: u64,
    pub outbox_published: u64,
    /// Posts the hub wrote in one send with the post before them.
    pub joined_posts: u64,
}

impl Servers {
    /// `stores`: what else the instances make work, for the all-in cost.
    pub fn new(pids: &[u32], stores: &[StoreSpec], targets: &[Target]) -> anyhow::Result<Self> {
        Ok(Self {
            pids: pids.to_vec(),
            stores: stores.iter().map(Store::find).collect::<Result<_, _>>()?,
            bases: targets.iter().map(|t| t.base.clone()).collect(),
            http: crate::http::client(METRICS_TIMEOUT, usize::MAX)?,
        })
    }

    pub fn has_pids(&self) -> bool {
        !self.pids.is_empty()
    }

    pub async fn snapshot(&self) -> Snapshot {
        let usage = self
            .pids
            .iter()
            .map(|pid| procfs::usage(Some(*pid)).ok())
            .collect();
        let mut counters = Vec::with_capacity(self.bases.len());
        for base in &self.bases {
            counters.push(self.counters(base).await);
        }
        Snapshot { usage, counters }
    }

    async fn counters(&self, base: &str) -> Option<Counters> {
        let response = self.http.get(format!("{base}/metrics")).send().await.ok()?;
        let text = response.error_for_status().ok()?.text().await.ok()?;
        Some(parse_metrics(&text))
    }

    fn cpu_micros(&self) -> u64 {
        let pids: Vec<Option<u32>> = self.pids.iter().map(|pid| Some(*pid)).collect();
        procfs::cpu_micros_of(&pids)
    }

    fn store_micros(&self) -> Vec<u64> {
        self.stores
            .iter()
            .map(|store| procfs::tree_cpu_micros(&store.roots))
            .collect()
    }

    /// Memory of each instance before and after `ready_per_target` sockets
    /// were opened on it.
    pub fn memory(
        &self,
        before: &Snapshot,
        loaded: &Snapshot,
        ready_per_target: &[u64],
    ) -> Option<MemoryReport> {
        if self.pids.is_empty() {
            return None;
        }
        // Per instance only when the pids line up with the URLs.
        let per_target = self.pids.len() == ready_per_target.len();
        let servers: Vec<ServerMemory> = self
            .pids
            .iter()
            .enumerate()
            .map(|(i, pid)| {
                let before = before.usage[i].map(|u| u.rss_bytes);
                let loaded = loaded.usage[i].map(|u| u.rss_bytes);
                let connections = per_target.then(|| ready_per_target[i]);
                ServerMemory {
                    pid: *pid,
                    rss_before_bytes: before,
                    rss_loaded_bytes: loaded,
                    connections,
                    per_connection_bytes: match (before, loaded, connections) {
                        (Some(b), Some(l), Some(c)) if c > 0 && l >= b => {
                            Some(growth(b, l) / c as f64)
                        }
                        _ => None,
                    },
                }
            })
            .collect();
        let connections: u64 = ready_per_target.iter().sum();
        let grown: Option<f64> = servers
            .iter()
            .map(|s| Some(growth(s.rss_before_bytes?, s.rss_loaded_bytes?)))
            .sum();
        Some(MemoryReport {
            // RSS that fell meanwhile (the allocator returning an earlier
            // run's memory) says nothing about the sockets.
            per_connection_bytes: grown
                .filter(|g| connections > 0 && *g >= 0.0)
                .map(|g| g / connections as f64),
            servers,
        })
    }
}

fn growth(before: u64, after: u64) -> f64 {
    after as f64 - before as f64
}

/// Reads livefeed's counters out of the Prometheus text format.
pub fn parse_metrics(text: &str) -> Counters {
    let mut counters = Counters::default();
    for line in text.lines().filter(|line| !line.starts_with('#')) {
        let Some((name, value)) = line.split_once(' ') else {
            continue;
        };
        let Ok(value) = value.trim().parse::<f64>() else {
            continue;
        };
        let value = value as u64;
        match name {
            "livefeed_open_sockets" => counters.open_sockets = value,
            "livefeed_deliveries_total" => counters.deliveries = value,
            "livefeed_slow_consumer_closes_total" => counters.slow_consumer_closes = value,
            "livefeed_joined_posts_total" => counters.joined_posts = value,
            "livefeed_outbox_published_total" => counters.outbox_published = value,
            _ => {}
        }
    }
    counters
}

/// How much every instance's counters moved between two snapshots (summed
/// over the instances that answered both times).
pub fn counters_delta(before: &Snapshot, after: &Snapshot) -> Counters {
    let mut delta = Counters::default();
    for (b, a) in before.counters.iter().zip(&after.counters) {
        if let (Some(b), Some(a)) = (b, a) {
            delta.deliveries += a.deliveries.saturating_sub(b.deliveries);
            delta.slow_consumer_closes += a
                .slow_consumer_closes
                .saturating_sub(b.slow_consumer_closes);
            delta.outbox_published += a.outbox_published.saturating_sub(b.outbox_published);
            delta.joined_posts += a.joined_posts.saturating_sub(b.joined_posts);
            delta.open_sockets += a.open_sockets;
        }
    }
    delta
}

#[derive(Serialize)]
pub struct MemoryReport {
    /// Growth of all instances' RSS over the sockets opened on them; `None`
    /// when it fell (measure on fresh instances).
    pub per_connection_bytes: Option<f64>,
    pub servers: Vec<ServerMemory>,
}

#[derive(Serialize)]
pub struct ServerMemory {
    pub pid: u32,
    pub rss_before_bytes: Option<u64>,
    pub rss_loaded_bytes: Option<u64>,
    pub connections: Option<u64>,
    pub per_connection_bytes: Option<f64>,
}

/// CPU time used so far by the instances and by the load generator.
pub struct CpuMark {
    at: Instant,
    server_micros: u64,
    /// Per store, in `--store` order.
    store_micros: Vec<u64>,
    client_micros: u64,
}

impl CpuMark {
    /// `workers`: the worker pids; this process is counted too.
    pub fn take(servers: &Servers, workers: &[u32]) -> Self {
        let mut clients: Vec<Option<u32>> = vec![None];
        clients.extend(workers.iter().map(|pid| Some(*pid)));
        Self {
            at: Instant::now(),
            server_micros: servers.cpu_micros(),
            store_micros: servers.store_micros(),
            client_micros: procfs::cpu_micros_of(&clients),
        }
    }

    /// The CPU used between `start` and this mark, per one of `operations`.
    pub fn since(&self, start: &CpuMark, servers: &Servers, operations: u64) -> CpuReport {
        let seconds = self.at.duration_since(start.at).as_secs_f64();
        let server = self.server_micros.saturating_sub(start.server_micros);
        let client = self.client_micros.saturating_sub(start.client_micros);
        let per_op = |micros: u64| (operations > 0).then(|| micros as f64 / operations as f64);
        let cores = |micros: u64| (seconds > 0.0).then(|| micros as f64 / 1e6 / seconds);
        let has_servers = servers.has_pids();
        let stores: Vec<StoreCpu> = servers
            .stores
            .iter()
            .zip(self.store_micros.iter().zip(&start.store_micros))
            .map(|(store, (end, start))| {
                let micros = end.saturating_sub(*start);
                StoreCpu {
                    label: store.label.clone(),
                    roots: store.roots.clone(),
                    cpu_seconds: micros as f64 / 1e6,
                    cores: cores(micros),
                    us_per_op: per_op(micros),
                }
            })
            .collect();
        let store_total: u64 = self
            .store_micros
            .iter()
            .zip(&start.store_micros)
            .map(|(end, start)| end.saturating_sub(*start))
            .sum();
        let all_in = (has_servers && !stores.is_empty()).then_some(server + store_total);
        CpuReport {
            seconds,
            operations,
            server_cpu_seconds: has_servers.then(|| server as f64 / 1e6),
            server_cores: cores(server).filter(|_| has_servers),
            server_us_per_op: per_op(server).filter(|_| has_servers),
            stores,
            all_in_cores: all_in.and_then(cores),
            all_in_us_per_op: all_in.and_then(per_op),
            client_cpu_seconds: client as f64 / 1e6,
            client_cores: cores(client),
            client_us_per_op: per_op(client),
            load_average: procfs::load_average(),
        }
    }
}

/// CPU over a phase. `cores` is CPU seconds per wall second (2.0 is both
/// cores of this machine). Servers' figures need `--server-pid`.
#[derive(Serialize)]
pub struct CpuReport {
    pub seconds: f64,
    /// Deliveries, connections or requests, as the scenario counts them.
    pub operations: u64,
    pub server_cpu_seconds: Option<f64>,
    pub server_cores: Option<f64>,
    pub server_us_per_op: Option<f64>,
    /// Per `--store`.
    pub stores: Vec<StoreCpu>,
    /// The instances plus every store: needs `--server-pid` and `--store`.
    pub all_in_cores: Option<f64>,
    pub all_in_us_per_op: Option<f64>,
    pub client_cpu_seconds: f64,
    pub client_cores: Option<f64>,
    pub client_us_per_op: Option<f64>,
    /// The machine's 1-minute load average at the end of the phase: CPU
    /// time the instances wanted but other processes got shows here.
    pub load_average: Option<f64>,
}

/// One store's CPU over a phase.
#[derive(Serialize)]
pub struct StoreCpu {
    pub label: String,
    pub roots: Vec<u32>,
    pub cpu_seconds: f64,
    pub cores: Option<f64>,
    pub us_per_op: Option<f64>,
}

impl CpuReport {
    /// `op` names one operation, `ops` several.
    pub fn human(&self, out: &mut String, label: &str, op: &str, ops: &str) {
        use std::fmt::Write;
        let per =
            |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1} us"));
        let cores =
            |value: Option<f64>| value.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"));
        let _ = writeln!(
            out,
            "  {label:<24} server {} per {op} ({} cores)   client {} per {op} ({} cores)   over {:.1}s, {} {ops}",
            per(self.server_us_per_op),
            cores(self.server_cores),
            per(self.client_us_per_op),
            cores(self.client_cores),
            self.seconds,
            self.operations
        );
        for store in &self.stores {
            let _ = writeln!(
                out,
                "  {:<24} {} per {op} ({} cores)",
                format!("{label}: {}", store.label),
                per(store.us_per_op),
                cores(store.cores)
            );
        }
        if self.all_in_us_per_op.is_some() {
            let _ = writeln!(
                out,
                "  {:<24} {} per {op} ({} cores): instances + stores",
                format!("{label}: all-in"),
                per(self.all_in_us_per_op),
                cores(self.all_in_cores)
            );
        }
    }

    /// The machine's load average: how much other work competed.
    pub fn load_human(&self, out: &mut String) {
        use std::fmt::Write;
        if let Some(load) = self.load_average {
            let _ = writeln!(
                out,
                "  {:<24} {load:.2} (1 min, every process of the machine)",
                "load average"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_livefeed_counters() {
        let text = "# HELP livefeed_open_sockets Open websocket connections.\n\
                    # TYPE livefeed_open_sockets gauge\n\
                    livefeed_open_sockets 19000\n\
                    livefeed_deliveries_total 4200\n\
                    livefeed_slow_consumer_closes_total 0\n\
                    livefeed_publish_to_send_seconds_bucket{le=\"0.001\"} 1\n\
                    livefeed_publish_to_send_seconds_sum 0.5\n\
                    livefeed_outbox_published_total 21\n\
                    livefeed_joined_posts_total 3\n";
        assert_eq!(
            parse_metrics(text),
            Counters {
                open_sockets: 19000,
                deliveries: 4200,
                slow_consumer_closes: 0,
                outbox_published: 21,
                joined_posts: 3,
            }
        );
    }
}
