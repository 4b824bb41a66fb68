//! `broadcast`: one author (a celebrity), N subscribers following only
//! them, M posts at rate R. Every subscriber must get all M, once.

use crate::fanout::{self, Plan};
use crate::opts::{self, Common, FleetOptions, Target};
use crate::pace::parse_rate;
use crate::population::{Follow, Population};
use crate::report::{self, ProgressLine, Verdict};

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
    let outcome = opts::interruptible(fanout::run(
        &args.common,
        &args.fleet,
        &targets,
        &population,
        plan,
        &mut line,
    ))
    .await;
    drop(line);
    population.cleanup().await;
    report::conclude(&outcome?.named("broadcast"), args.common.json)
}
