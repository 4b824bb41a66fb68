//! `connect-storm`: C websockets opened as fast as the server accepts them
//! (bounded only by `--connect-concurrency`), held until all are ready,
//! then closed. Connects per second, connect times and failures, and what
//! each open socket costs the server.

use std::fmt::Write;
use std::time::Duration;

use serde::Serialize;

use crate::cost::{CpuMark, CpuReport, MemoryReport, Servers};
use crate::fanout::{
    Closing, Connections, close_all, connect_status, memory_human, ready_per_target,
};
use crate::fleet::{Assignment, Fleet};
use crate::opts::{self, Common, FleetOptions, Target};
use crate::population::Population;
use crate::protocol::{ClientSpec, Command, Event};
use crate::report::{self, ProgressLine, Report, Verdict, tally_line};
use crate::stats::{Tally, add_tally, tally_total};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    fleet: FleetOptions,
    /// Connections to open (one seeded user each, following nobody).
    #[arg(short = 'c', long, default_value_t = 5_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    connections: u32,
    /// Seconds to hold the connections open before closing them.
    #[arg(long, default_value_t = 0)]
    hold: u64,
}

#[derive(Serialize)]
struct StormReport {
    run: String,
    instances: Vec<String>,
    workers: Vec<String>,
    connections: Connections,
    memory: Option<MemoryReport>,
    /// Over the connect phase; operations are ready connections.
    cpu: CpuReport,
    /// Ready sockets the server dropped while they were held.
    disconnects: Tally,
    close: Closing,
    /// The instances' RSS a second after every socket closed.
    rss_after_close_bytes: Vec<Option<u64>>,
    /// `livefeed_open_sockets` of all instances while every socket was open.
    server_open_sockets: u64,
}

impl Report for StormReport {
    fn scenario(&self) -> &'static str {
        "connect-storm"
    }

    fn human(&self, out: &mut String) {
        let _ = writeln!(out, "connect-storm (run {})", self.run);
        let _ = writeln!(out, "  {:<24} {}", "instances", self.instances.join(" "));
        for worker in &self.workers {
            let _ = writeln!(out, "  {:<24} {worker}", "worker");
        }
        self.connections.human(out);
        if let Some(memory) = &self.memory {
            memory_human(out, memory);
        }
        self.cpu
            .human(out, "cpu (connect phase)", "connection", "connections");
        self.cpu.load_human(out);
        tally_line(out, "dropped while held", &self.disconnects);
        self.close.human(out);
        let after: Vec<String> = self
            .rss_after_close_bytes
            .iter()
            .map(|rss| rss.map_or_else(|| "-".to_owned(), report::mib))
            .collect();
        let _ = writeln!(
            out,
            "  {:<24} {}",
            "server rss after close",
            after.join(", ")
        );
        let _ = writeln!(
            out,
            "  {:<24} open sockets {}",
            "server /metrics", self.server_open_sockets
        );
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let failed = tally_total(&self.connections.failures);
        if failed > 0 {
            problems.push(format!("{failed} connections failed"));
        }
        let dropped = tally_total(&self.disconnects);
        if dropped > 0 {
            problems.push(format!("{dropped} connections dropped by the server"));
        }
        problems
    }
}

pub async fn run(args: Args) -> anyhow::Result<Verdict> {
    let run = opts::new_run_id();
    let targets = Target::resolve_all(&args.common.urls).await?;
    let mut line = ProgressLine::new();
    line.note(&format!("run {run}: seeding {} users", args.connections));
    let population = Population::seed(&args.common, &run, args.connections as usize, &[]).await?;
    let outcome = opts::interruptible(storm(&args, &targets, &population, &mut line)).await;
    drop(line);
    population.cleanup().await;
    report::conclude(&outcome?, args.common.json)
}

async fn storm(
    args: &Args,
    targets: &[Target],
    population: &Population,
    line: &mut ProgressLine,
) -> anyhow::Result<StormReport> {
    let servers = Servers::new(&args.common.server_pids, &args.common.stores, targets)?;
    let clients: Vec<ClientSpec> = population
        .users
        .iter()
        .enumerate()
        .map(|(i, user)| ClientSpec {
            user: *user,
            target: (i % targets.len()) as u16,
            follows: Vec::new(),
        })
        .collect();
    let before = servers.snapshot().await;
    let start = CpuMark::take(&servers, &[]);
    let assignment = Assignment {
        run: &population.run,
        jwt_secret: &args.common.jwt_secret,
        targets,
        post_count: 0,
    };
    let mut fleet = Fleet::start(assignment, &args.fleet, clients).await?;
    for worker in fleet.describe() {
        line.note(&format!("worker {worker}"));
    }
    let ready = fleet
        .collect(
            "connecting",
            opts::secs(args.fleet.ready_timeout),
            line,
            connect_status,
            |event| match event {
                Event::Ready(report) => Some(report),
                _ => None,
            },
        )
        .await?;
    let connections = Connections::merge(&ready);
    let end = CpuMark::take(&servers, &fleet.pids());
    let cpu = end.since(&start, &servers, connections.ready);
    let loaded = servers.snapshot().await;
    let memory = servers.memory(&before, &loaded, &ready_per_target(&ready));
    line.note(&format!(
        "{} of {} connections ready at {:.0}/s",
        connections.ready, connections.clients, connections.ready_per_second
    ));
    if args.hold > 0 {
        line.note(&format!("holding for {}s", args.hold));
        tokio::time::sleep(Duration::from_secs(args.hold)).await;
    }

    // Nothing was posted: the drain only reports sockets dropped meanwhile.
    fleet
        .send(&Command::Finish {
            posts: Vec::new(),
            drain_ms: 0,
        })
        .await?;
    let drained = fleet
        .collect(
            "checking",
            Duration::from_secs(30),
            line,
            |_| "checking".to_owned(),
            |event| match event {
                Event::Drained(report) => Some(report),
                _ => None,
            },
        )
        .await?;
    let mut disconnects = Tally::new();
    for report in &drained {
        add_tally(&mut disconnects, &report.disconnects);
    }
    let close = close_all(
        &mut fleet,
        &servers,
        Duration::from_secs(args.fleet.connect_timeout),
        line,
    )
    .await?;
    let workers = fleet.describe();
    fleet.shutdown().await;
    // Give the servers a moment to free what the closed sockets held.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = servers.snapshot().await;
    line.end_line();

    Ok(StormReport {
        run: population.run.clone(),
        instances: targets.iter().map(|t| t.base.clone()).collect(),
        workers,
        connections,
        memory,
        cpu,
        disconnects,
        close,
        rss_after_close_bytes: after.usage.iter().map(|u| u.map(|u| u.rss_bytes)).collect(),
        server_open_sockets: loaded
            .counters
            .iter()
            .flatten()
            .map(|c| c.open_sockets)
            .sum(),
    })
}
