//! `broadcast`: one author (a celebrity), N subscribers following only
//! them, M posts at rate R. Every subscriber must get all M, once.
//!
//! With `--floor`, the same subscribers, posts, rate and frames go through
//! the floor ([`crate::floor`]) right after livefeed, and with `--nchan`
//! through nginx+nchan ([`crate::nchan`]); the report gives each server's
//! CPU per delivery and livefeed's ratio to it.

use std::fmt::Write;

use serde::Serialize;

use crate::cost::Servers;
use crate::fanout::{self, FanoutReport, Plan, Stage};
use crate::floor::feed::Floor;
use crate::nchan::Nchan;
use crate::opts::{self, Common, FleetOptions, Target};
use crate::pace::parse_rate;
use crate::population::{Follow, Population};
use crate::publish::Poster;
use crate::report::{self, ProgressLine, Report, Verdict};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    fleet: FleetOptions,
    /// Subscribers (websocket clients), spread over the instances.
    #[arg(short = 'n', long, default_value_t = 2_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    subscribers: u32,
    /// Posts the author writes.
    #[arg(short = 'm', long, default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    posts: u32,
    /// Posts per second.
    #[arg(short = 'r', long, default_value_t = 10.0, value_parser = parse_rate)]
    rate: f64,
    /// Pad every post's text to this many bytes (0: the bare marker, about
    /// 40 bytes).
    #[arg(long, default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=10_000))]
    text_bytes: u64,
    /// After livefeed, run the floor (one write() per delivery, nothing
    /// else) with the same subscribers, posts, rate and frames, and report
    /// livefeed's server CPU per delivery against it.
    #[arg(long)]
    floor: bool,
    /// After livefeed (and the floor), run nginx+nchan, the peer, with the
    /// same subscribers, posts, rate and payloads (needs Debian's nginx and
    /// libnginx-mod-nchan; `$NGINX` names another nginx binary).
    #[arg(long)]
    nchan: bool,
}

/// livefeed's run, and the floor's and nchan's when asked for.
#[derive(Serialize)]
struct BroadcastReport {
    #[serde(flatten)]
    livefeed: FanoutReport,
    floor: Option<FanoutReport>,
    floor_ratio: Option<Ratio>,
    nchan: Option<FanoutReport>,
    nchan_ratio: Option<Ratio>,
}

/// Server CPU per delivery and publish→receive p99, livefeed against
/// another server of the same run.
#[derive(Serialize)]
struct Ratio {
    livefeed_server_us_per_delivery: Option<f64>,
    other_server_us_per_delivery: Option<f64>,
    /// livefeed / other; `None` without `--server-pid` or when the other's
    /// CPU was below one clock tick.
    ratio: Option<f64>,
    livefeed_p99_ms: f64,
    other_p99_ms: f64,
}

impl Ratio {
    fn of(livefeed: &FanoutReport, other: &FanoutReport) -> Self {
        let livefeed_cpu = livefeed.cpu.server_us_per_op;
        let other_cpu = other.cpu.server_us_per_op;
        Self {
            livefeed_server_us_per_delivery: livefeed_cpu,
            other_server_us_per_delivery: other_cpu,
            ratio: livefeed_cpu
                .zip(other_cpu.filter(|o| *o > 0.0))
                .map(|(l, o)| l / o),
            livefeed_p99_ms: livefeed.latency_p99_ms(),
            other_p99_ms: other.latency_p99_ms(),
        }
    }

    fn human(&self, out: &mut String, other: &str) {
        let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} us"));
        let _ = writeln!(
            out,
            "server cpu per delivery: livefeed {}, {other} {}, livefeed/{other} {}; \
             p99 livefeed {:.1} ms, {other} {:.1} ms",
            us(self.livefeed_server_us_per_delivery),
            us(self.other_server_us_per_delivery),
            self.ratio
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x")),
            self.livefeed_p99_ms,
            self.other_p99_ms,
        );
    }
}

impl Report for BroadcastReport {
    fn scenario(&self) -> &'static str {
        "broadcast"
    }

    fn human(&self, out: &mut String) {
        self.livefeed.human(out, "broadcast");
        if let (Some(floor), Some(ratio)) = (&self.floor, &self.floor_ratio) {
            floor.human(out, "floor: one write() per delivery, same run");
            ratio.human(out, "floor");
        }
        if let (Some(nchan), Some(ratio)) = (&self.nchan, &self.nchan_ratio) {
            nchan.human(out, "nginx+nchan, same run");
            ratio.human(out, "nchan");
        }
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = self.livefeed.problems();
        for (name, other) in [("floor", &self.floor), ("nchan", &self.nchan)] {
            if let Some(other) = other {
                problems.extend(other.problems().into_iter().map(|p| format!("{name}: {p}")));
            }
        }
        problems
    }
}

pub async fn run(args: Args) -> anyhow::Result<Verdict> {
    let run = opts::new_run_id();
    let targets = Target::resolve_all(&args.common.urls).await?;
    let mut line = ProgressLine::new();
    // User 0 is the author; users 1..=N follow them.
    let subscribers = args.subscribers;
    let follows: Vec<Follow> = (1..=subscribers).map(|user| (user, 0)).collect();
    line.note(&format!(
        "run {run}: seeding 1 author and {subscribers} subscribers"
    ));
    let population =
        Population::seed(&args.common, &run, subscribers as usize + 1, &follows).await?;
    let plan = Plan {
        subscribers: (1..=subscribers).map(|user| (user, vec![0])).collect(),
        schedule: vec![0; args.posts as usize],
        rate: args.rate,
    };
    let outcome = opts::interruptible(both(&args, &targets, &population, &plan, &mut line)).await;
    drop(line);
    population.cleanup().await;
    report::conclude(&outcome?, args.common.json)
}

async fn both(
    args: &Args,
    targets: &[Target],
    population: &Population,
    plan: &Plan,
    line: &mut ProgressLine,
) -> anyhow::Result<BroadcastReport> {
    let text_bytes = args.text_bytes as usize;
    let stage = Stage {
        targets,
        servers: Servers::new(&args.common.server_pids, &args.common.stores, targets)?,
        poster: fanout::rest_poster(&args.common, targets, population, plan, text_bytes)?,
    };
    let livefeed = fanout::run(&args.common, &args.fleet, &stage, population, plan, line).await?;
    let floor = if args.floor {
        Some(other(args, population, plan, line, Other::Floor).await?)
    } else {
        None
    };
    let nchan = if args.nchan {
        Some(other(args, population, plan, line, Other::Nchan).await?)
    } else {
        None
    };
    Ok(BroadcastReport {
        floor_ratio: floor.as_ref().map(|floor| Ratio::of(&livefeed, floor)),
        nchan_ratio: nchan.as_ref().map(|nchan| Ratio::of(&livefeed, nchan)),
        livefeed,
        floor,
        nchan,
    })
}

/// Runs the same clients, posts and rate against another server: the floor
/// or nginx+nchan, started just before and stopped after.
async fn other(
    args: &Args,
    population: &Population,
    plan: &Plan,
    line: &mut ProgressLine,
    server: Other,
) -> anyhow::Result<FanoutReport> {
    let (run, users, text_bytes) = (&population.run, &population.users, args.text_bytes as usize);
    let (target, pids, poster) = match server {
        Other::Floor => {
            let floor = Floor::start(run, users, text_bytes).await?;
            line.note(&format!(
                "floor (pid {}) listening on {}",
                floor.pid, floor.target.addr
            ));
            (
                floor.target.clone(),
                vec![floor.pid],
                Poster::Floor(Box::new(floor)),
            )
        }
        Other::Nchan => {
            let nchan = Nchan::start(run, users, text_bytes).await?;
            line.note(&format!(
                "nginx+nchan (pids {:?}) listening on {}",
                nchan.pids, nchan.target.addr
            ));
            (
                nchan.target.clone(),
                nchan.pids.clone(),
                Poster::Nchan(Box::new(nchan)),
            )
        }
    };
    let targets = [target];
    let stage = Stage {
        targets: &targets,
        // Neither has livefeed's /metrics: their CPU and memory only.
        servers: Servers::new(&pids, &[], &[])?,
        poster,
    };
    let measured = fanout::run(&args.common, &args.fleet, &stage, population, plan, line).await;
    stage.poster.stop().await;
    measured
}

/// The servers livefeed is run beside.
#[derive(Clone, Copy)]
enum Other {
    Floor,
    Nchan,
}
