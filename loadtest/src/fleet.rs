//! The parent's side of the worker processes: splits the clients over as
//! many workers as the file-descriptor limit requires, gives each its own
//! source address, and gathers their events.
//!
//! A process may hold at most RLIMIT_NOFILE descriptors (20,000 here), so
//! 2 x 19,000 sockets need several processes; and the kernel gives each
//! source address its own ephemeral port range, so binding worker `i` to
//! 127.0.0.(2+i) keeps any one address far from running out of ports.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::opts::{FleetOptions, Target, fd_limit};
use crate::protocol::{ClientSpec, Command, Event, Job, Progress};
use crate::report::ProgressLine;

/// Descriptors a worker needs besides its sockets (runtime, pipes, stdio).
const FD_MARGIN: u64 = 64;
/// How long a worker gets to exit once its stdin is closed.
const EXIT_GRACE: Duration = Duration::from_secs(5);

/// What every worker's job shares.
pub struct Assignment<'a> {
    pub run: &'a str,
    pub jwt_secret: &'a str,
    pub targets: &'a [Target],
    pub post_count: u32,
}

pub struct Fleet {
    workers: Vec<Worker>,
    events: mpsc::UnboundedReceiver<(usize, Option<Event>)>,
    /// Each worker's latest progress, kept current by its reader task.
    progress: Arc<Mutex<Vec<Progress>>>,
}

struct Worker {
    child: Child,
    stdin: Option<ChildStdin>,
    pid: u32,
    source_ip: Option<IpAddr>,
    clients: usize,
}

impl Fleet {
    pub async fn start(
        assignment: Assignment<'_>,
        options: &FleetOptions,
        mut clients: Vec<ClientSpec>,
    ) -> anyhow::Result<Self> {
        let total = clients.len();
        let count = total.div_ceil(options.clients_per_worker as usize).max(1);
        let largest = total.div_ceil(count) as u64;
        let limit = fd_limit();
        ensure!(
            largest + FD_MARGIN <= limit,
            "a worker would hold {largest} sockets but may open only {limit} files: \
             lower --clients-per-worker (to at most {})",
            limit.saturating_sub(FD_MARGIN)
        );
        let sources = source_ips(options, assignment.targets, count)?;
        let exe = std::env::current_exe().context("finding this executable")?;
        let (sender, events) = mpsc::unbounded_channel();
        let progress = Arc::new(Mutex::new(Vec::with_capacity(count)));
        let concurrency = (options.connect_concurrency as usize).div_ceil(count) as u32;
        let mut workers = Vec::with_capacity(count);
        for (index, source_ip) in sources.into_iter().enumerate() {
            // Even slices: the first `total % count` workers take one more.
            let size = total / count + usize::from(index < total % count);
            let rest = clients.split_off(size);
            let slice = std::mem::replace(&mut clients, rest);
            let job = Job {
                run: assignment.run.to_owned(),
                jwt_secret: assignment.jwt_secret.to_owned(),
                source_ip,
                targets: assignment.targets.to_vec(),
                clients: slice,
                post_count: assignment.post_count,
                connect_concurrency: concurrency.max(1),
                connect_timeout_ms: options.connect_timeout * 1000,
            };
            let (child, pid, mut stdin, stdout) = spawn_self(&exe, "worker")?;
            let mut line = serde_json::to_vec(&job)?;
            line.push(b'\n');
            stdin
                .write_all(&line)
                .await
                .with_context(|| format!("sending worker {index} its job"))?;
            progress.lock().expect("progress lock").push(Progress {
                clients: size as u64,
                ..Progress::default()
            });
            tokio::spawn(read_events(index, stdout, sender.clone(), progress.clone()));
            workers.push(Worker {
                child,
                stdin: Some(stdin),
                pid,
                source_ip,
                clients: size,
            });
        }
        Ok(Self {
            workers,
            events,
            progress,
        })
    }

    pub fn pids(&self) -> Vec<u32> {
        self.workers.iter().map(|worker| worker.pid).collect()
    }

    /// One line per worker: pid, source address and clients.
    pub fn describe(&self) -> Vec<String> {
        self.workers
            .iter()
            .map(|worker| {
                let source = worker
                    .source_ip
                    .map_or_else(|| "default".to_owned(), |ip| ip.to_string());
                format!(
                    "pid {} from {source}: {} clients",
                    worker.pid, worker.clients
                )
            })
            .collect()
    }

    pub fn totals(&self) -> Progress {
        let mut total = Progress::default();
        for progress in self.progress.lock().expect("progress lock").iter() {
            total.add(progress);
        }
        total
    }

    pub async fn send(&mut self, command: &Command) -> anyhow::Result<()> {
        let mut line = serde_json::to_vec(command)?;
        line.push(b'\n');
        for (index, worker) in self.workers.iter_mut().enumerate() {
            let stdin = worker.stdin.as_mut().context("worker already released")?;
            stdin
                .write_all(&line)
                .await
                .with_context(|| format!("worker {index} (pid {}) is gone", worker.pid))?;
        }
        Ok(())
    }

    /// Waits, at most `limit`, for one event that `pick` accepts from every
    /// worker, showing progress meanwhile.
    pub async fn collect<T>(
        &mut self,
        phase: &str,
        limit: Duration,
        line: &mut ProgressLine,
        status: impl Fn(&Progress) -> String,
        mut pick: impl FnMut(Event) -> Option<T>,
    ) -> anyhow::Result<Vec<T>> {
        let deadline = Instant::now() + limit;
        let mut got: Vec<Option<T>> = self.workers.iter().map(|_| None).collect();
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        while got.iter().any(Option::is_none) {
            tokio::select! {
                received = self.events.recv() => match received {
                    Some((index, Some(event))) => match pick(event) {
                        Some(value) => got[index] = Some(value),
                        None => bail!("worker {index} sent an unexpected event while {phase}"),
                    },
                    Some((index, None)) => {
                        let worker = &mut self.workers[index];
                        let status = match worker.child.try_wait() {
                            Ok(Some(status)) => status.to_string(),
                            _ => "closed its output".to_owned(),
                        };
                        bail!("worker {index} (pid {}) ended while {phase}: {status}", worker.pid);
                    }
                    None => bail!("every worker is gone"),
                },
                _ = tick.tick() => line.show(&status(&self.totals())),
                () = tokio::time::sleep_until(deadline) => {
                    let done = got.iter().filter(|g| g.is_some()).count();
                    bail!(
                        "{phase}: timed out after {}s with {done} of {} workers done ({})",
                        limit.as_secs(),
                        got.len(),
                        status(&self.totals())
                    );
                }
            }
        }
        Ok(got.into_iter().flatten().collect())
    }

    /// Closes the workers' stdin (they exit) and waits for them, killing
    /// any that linger.
    pub async fn shutdown(mut self) {
        for worker in &mut self.workers {
            worker.stdin = None;
        }
        for worker in &mut self.workers {
            reap(&mut worker.child, &format!("worker pid {}", worker.pid)).await;
        }
    }
}

/// Starts this binary's `subcommand`, talking to it over its stdin and
/// stdout; it is killed if the handle is dropped.
pub fn spawn_self(
    exe: &Path,
    subcommand: &str,
) -> anyhow::Result<(Child, u32, ChildStdin, ChildStdout)> {
    let mut child = tokio::process::Command::new(exe)
        .arg(subcommand)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting loadtest {subcommand}"))?;
    let pid = child
        .id()
        .with_context(|| format!("loadtest {subcommand} exited at once"))?;
    let stdin = child.stdin.take().context("child stdin")?;
    let stdout = child.stdout.take().context("child stdout")?;
    Ok((child, pid, stdin, stdout))
}

/// Waits for a child told to exit (its stdin closed), killing it if it
/// lingers past [`EXIT_GRACE`].
pub async fn reap(child: &mut Child, name: &str) {
    if tokio::time::timeout(EXIT_GRACE, child.wait())
        .await
        .is_err()
    {
        eprintln!("warning: {name} did not exit; killing it");
        let _ = child.kill().await;
    }
}

async fn read_events(
    index: usize,
    stdout: ChildStdout,
    sender: mpsc::UnboundedSender<(usize, Option<Event>)>,
    progress: Arc<Mutex<Vec<Progress>>>,
) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        match serde_json::from_str::<Event>(&line) {
            Ok(Event::Progress(latest)) => {
                progress.lock().expect("progress lock")[index] = latest;
            }
            Ok(event) => {
                if sender.send((index, Some(event))).is_err() {
                    return;
                }
            }
            Err(e) => eprintln!("warning: unreadable line from worker {index}: {e}"),
        }
    }
    let _ = sender.send((index, None));
}

/// The source address of each of `count` workers.
fn source_ips(
    options: &FleetOptions,
    targets: &[Target],
    count: usize,
) -> anyhow::Result<Vec<Option<IpAddr>>> {
    if options.no_source_ip {
        return Ok(vec![None; count]);
    }
    if !options.source_ips.is_empty() {
        let ips = &options.source_ips;
        return Ok((0..count).map(|i| Some(ips[i % ips.len()])).collect());
    }
    let loopback_v4 = targets
        .iter()
        .all(|target| target.addr.is_ipv4() && target.addr.ip().is_loopback());
    if !loopback_v4 {
        return Ok(vec![None; count]);
    }
    ensure!(
        count <= 253,
        "{count} workers: more than 127.0.0.2-254 can give addresses to"
    );
    Ok((0..count)
        .map(|i| Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + i as u8))))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> FleetOptions {
        FleetOptions {
            clients_per_worker: 10_000,
            source_ips: Vec::new(),
            no_source_ip: false,
            connect_concurrency: 256,
            connect_timeout: 1,
            ready_timeout: 1,
            drain_timeout: 1,
        }
    }

    fn target(addr: &str) -> Target {
        Target {
            base: String::new(),
            ws_url: String::new(),
            addr: addr.parse().unwrap(),
        }
    }

    #[test]
    fn loopback_targets_get_one_address_per_worker() {
        let targets = [target("127.0.0.1:8081"), target("127.0.0.1:8082")];
        let ips = source_ips(&options(), &targets, 3).unwrap();
        let expected: Vec<Option<IpAddr>> = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
            .iter()
            .map(|ip| Some(ip.parse().unwrap()))
            .collect();
        assert_eq!(ips, expected);
        assert!(source_ips(&options(), &targets, 254).is_err());
    }

    #[test]
    fn explicit_or_no_source_addresses() {
        let targets = [target("127.0.0.1:8081")];
        let mut options = options();
        options.source_ips = vec!["127.0.0.9".parse().unwrap()];
        assert_eq!(
            source_ips(&options, &targets, 2).unwrap(),
            vec![Some("127.0.0.9".parse().unwrap()); 2]
        );
        options.source_ips.clear();
        options.no_source_ip = true;
        assert_eq!(source_ips(&options, &targets, 2).unwrap(), vec![None, None]);
        let v6 = [target("[::1]:8081")];
        assert_eq!(source_ips(&self::options(), &v6, 1).unwrap(), vec![None]);
    }
}
