//! `broadcast`: one author (a celebrity), N subscribers following only
//! them, M posts at rate R. Every subscriber must get all M, once.
//!
//! With `--floor`, the same subscribers, posts, rate and frames go through
//! the floor ([`crate::floor`]) right after livefeed, and the report gives
//! both servers' CPU per delivery and their ratio.

use std::fmt::Write;

use serde::Serialize;

use crate::cost::Servers;
use crate::fanout::{self, FanoutReport, Plan, Stage};
use crate::floor::feed::Floor;
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
}

/// livefeed's run, and the floor's when asked for.
#[derive(Serialize)]
struct BroadcastReport {
    #[serde(flatten)]
    livefeed: FanoutReport,
    floor: Option<FanoutReport>,
    floor_ratio: Option<FloorRatio>,
}

/// Server CPU per delivery, livefeed against the floor.
#[derive(Serialize)]
struct FloorRatio {
    livefeed_server_us_per_delivery: Option<f64>,
    floor_server_us_per_delivery: Option<f64>,
    /// livefeed / floor; `None` without `--server-pid` or when the floor's
    /// CPU was below one clock tick.
    ratio: Option<f64>,
}

impl FloorRatio {
    fn of(livefeed: &FanoutReport, floor: &FanoutReport) -> Self {
        let livefeed = livefeed.cpu.server_us_per_op;
        let floor = floor.cpu.server_us_per_op;
        Self {
            livefeed_server_us_per_delivery: livefeed,
            floor_server_us_per_delivery: floor,
            ratio: livefeed.zip(floor.filter(|f| *f > 0.0)).map(|(l, f)| l / f),
        }
    }
}

impl Report for BroadcastReport {
    fn scenario(&self) -> &'static str {
        "broadcast"
    }

    fn human(&self, out: &mut String) {
        self.livefeed.human(out, "broadcast");
        let (Some(floor), Some(ratio)) = (&self.floor, &self.floor_ratio) else {
            return;
        };
        floor.human(out, "floor: one write() per delivery, same run");
        let us = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2} us"));
        let _ = writeln!(
            out,
            "server cpu per delivery: livefeed {}, floor {}, livefeed/floor {}",
            us(ratio.livefeed_server_us_per_delivery),
            us(ratio.floor_server_us_per_delivery),
            ratio
                .ratio
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}x"))
        );
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = self.livefeed.problems();
        if let Some(floor) = &self.floor {
            problems.extend(floor.problems().into_iter().map(|p| format!("floor: {p}")));
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
    if !args.floor {
        return Ok(BroadcastReport {
            livefeed,
            floor: None,
            floor_ratio: None,
        });
    }
    let floor = Floor::start(&population.run, &population.users, text_bytes).await?;
    line.note(&format!(
        "floor (pid {}) listening on {}",
        floor.pid, floor.target.addr
    ));
    let floor_targets = [floor.target.clone()];
    let stage = Stage {
        targets: &floor_targets,
        // The floor has no /metrics: its CPU and memory only.
        servers: Servers::new(&[floor.pid], &[], &[])?,
        poster: Poster::Floor(Box::new(floor)),
    };
    let measured = fanout::run(&args.common, &args.fleet, &stage, population, plan, line).await;
    if let Poster::Floor(floor) = stage.poster {
        floor.stop().await;
    }
    let floor = measured?;
    Ok(BroadcastReport {
        floor_ratio: Some(FloorRatio::of(&livefeed, &floor)),
        livefeed,
        floor: Some(floor),
    })
}
