//! `rest`: a weighted mix of /post/feed, /post/create, /user/get and
//! /user/search from seeded users, either open-loop at `--rate` (latency
//! from each request's due time: coordinated omission corrected) or, with
//! no rate, as fast as `--concurrency` loops can go (closed loop: latency
//! is plain service time).

mod mix;

use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use uuid::Uuid;

use self::mix::{Mix, OPS, Op};
use crate::cost::{CpuMark, CpuReport, Servers};
use crate::marker::TAG;
use crate::opts::{self, Common, Target};
use crate::pace::{self, Pacer, parse_rate};
use crate::population::Population;
use crate::publish::request_error;
use crate::report::{self, ProgressLine, Report, Verdict, latency_line, tally_line};
use crate::rng::Rng;
use crate::social::follow_graph;
use crate::stats::{Latency, Summary, Tally, add_tally, tally_total};
use crate::token::Minter;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the feed worker may take, after the traffic, to settle the
/// feed events of the posts created: its work is part of each post's cost.
const FEED_DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
const FEED_DRAIN_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    common: Common,
    /// Seeded users the requests act as.
    #[arg(short = 'u', long, default_value_t = 1_000,
          value_parser = clap::value_parser!(u32).range(2..=1_000_000))]
    users: u32,
    /// Users each user follows (their posts make up its feed).
    #[arg(short = 'f', long, default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    follows: u32,
    /// Posts seeded per user before the run.
    #[arg(long, default_value_t = 10,
          value_parser = clap::value_parser!(u32).range(0..=10_000))]
    posts_per_user: u32,
    /// Requests per second (open loop). Without it: as fast as possible.
    #[arg(short = 'r', long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// Requests in flight at most (open loop), or request loops (closed loop).
    #[arg(short = 'c', long, default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: u32,
    /// Seconds of traffic.
    #[arg(short = 'd', long, default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    duration: u64,
    /// Weights of the operations: feed, create, get, search.
    #[arg(long, default_value = "feed=50,create=10,get=25,search=15")]
    mix: Mix,
    /// Act as the users listed in this file (one id a line), the database's
    /// own (e.g. the 1M set's heaviest readers), instead of seeding users:
    /// --users, --follows and --posts-per-user are then unused.
    #[arg(long)]
    readers: Option<std::path::PathBuf>,
}

/// Per-operation results.
#[derive(Default)]
struct Tallies {
    latency: [Latency; 4],
    ok: [u64; 4],
    errors: [Tally; 4],
}

#[derive(Serialize)]
struct RestReport {
    run: String,
    instances: Vec<String>,
    mode: String,
    target_rate: Option<f64>,
    concurrency: u32,
    seconds: f64,
    requests: u64,
    errors: u64,
    achieved_rate: f64,
    /// Open loop: from each request's due time (coordinated omission
    /// corrected); closed loop: service time.
    latency: Summary,
    operations: Vec<OperationReport>,
    /// Operations are requests: of one kind when `--mix` names one.
    cpu: CpuReport,
    /// The operation every request was, if the mix had one only.
    cpu_per: &'static str,
    /// Seconds after the traffic until the instances had settled one feed
    /// event per post created (the last CPU mark waits for it); `None` if
    /// they did not within [`FEED_DRAIN_TIMEOUT`] or could not be asked.
    feed_drained_after: Option<f64>,
}

#[derive(Serialize)]
struct OperationReport {
    name: &'static str,
    ok: u64,
    errors: Tally,
    latency: Summary,
}

impl Report for RestReport {
    fn scenario(&self) -> &'static str {
        "rest"
    }

    fn human(&self, out: &mut String) {
        let _ = writeln!(out, "rest (run {})", self.run);
        let _ = writeln!(out, "  {:<24} {}", "instances", self.instances.join(" "));
        let _ = writeln!(
            out,
            "  {:<24} {}, concurrency {}, {} requests in {:.1}s = {:.0}/s, {} errors",
            "mode",
            self.mode,
            self.concurrency,
            self.requests,
            self.seconds,
            self.achieved_rate,
            self.errors
        );
        match self.feed_drained_after {
            Some(seconds) => {
                let _ = writeln!(
                    out,
                    "  {:<24} {seconds:.1}s after the traffic",
                    "feed queue drained"
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  {:<24} no (CPU mark taken without it)",
                    "feed queue drained"
                );
            }
        }
        latency_line(out, "all", &self.latency);
        for op in &self.operations {
            latency_line(out, op.name, &op.latency);
            tally_line(out, &format!("{} errors", op.name), &op.errors);
        }
        self.cpu.human(out, "cpu", self.cpu_per, "requests");
        self.cpu.load_human(out);
    }

    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.errors > 0 {
            problems.push(format!("{} requests failed", self.errors));
        }
        if self.feed_drained_after.is_none() {
            problems
                .push("the feed queue did not drain: CPU per request leaves work out".to_owned());
        }
        if let Some(rate) = self.target_rate
            && self.achieved_rate < rate * 0.9
        {
            problems.push(format!(
                "achieved {:.0} requests/s of the {rate} asked",
                self.achieved_rate
            ));
        }
        problems
    }
}

/// What every request needs.
struct Caller {
    http: reqwest::Client,
    bases: Vec<String>,
    users: Vec<Uuid>,
    tokens: Vec<String>,
    first_name: String,
    run: String,
    tallies: Mutex<Tallies>,
}

pub async fn run(args: Args) -> anyhow::Result<Verdict> {
    let run = opts::new_run_id();
    let targets = Target::resolve_all(&args.common.urls).await?;
    let mut line = ProgressLine::new();
    let mut rng = Rng::new(args.common.seed);
    let population = match &args.readers {
        Some(path) => {
            let users = read_ids(path)?;
            line.note(&format!("run {run}: {} listed readers", users.len()));
            Population::listed(&args.common, &run, users).await?
        }
        None => {
            let edges = follow_graph(args.users, args.follows, &mut rng);
            line.note(&format!(
                "run {run}: seeding {} users, {} follow edges, {} posts each",
                args.users,
                edges.len(),
                args.posts_per_user
            ));
            Population::seed(&args.common, &run, args.users as usize, &edges).await?
        }
    };
    let outcome = async {
        if args.readers.is_none() {
            population.seed_posts(args.posts_per_user as usize).await?;
        }
        opts::interruptible(traffic(&args, &targets, &population, rng, &mut line)).await
    }
    .await;
    drop(line);
    population.cleanup().await;
    report::conclude(&outcome?, args.common.json)
}

/// The user ids of a `--readers` file, one a line.
fn read_ids(path: &std::path::Path) -> anyhow::Result<Vec<Uuid>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let ids = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| Uuid::parse_str(line.trim()).with_context(|| format!("not a user id: {line}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    anyhow::ensure!(
        ids.len() >= 2,
        "{} lists fewer than 2 readers",
        path.display()
    );
    Ok(ids)
}

async fn traffic(
    args: &Args,
    targets: &[Target],
    population: &Population,
    mut rng: Rng,
    line: &mut ProgressLine,
) -> anyhow::Result<RestReport> {
    let minter = Minter::new(&args.common.jwt_secret)?;
    let servers = Servers::new(&args.common.server_pids, &args.common.stores, targets)?;
    let context = Arc::new(Caller {
        http: crate::http::client(REQUEST_TIMEOUT, args.concurrency as usize)
            .context("building the HTTP client")?,
        bases: targets.iter().map(|t| t.base.clone()).collect(),
        users: population.users.clone(),
        tokens: population.users.iter().map(|u| minter.mint(*u)).collect(),
        first_name: population.first_name(),
        run: population.run.clone(),
        tallies: Mutex::new(Tallies::default()),
    });
    let duration = Duration::from_secs(args.duration);
    let settled_before = feed_settled(&context).await;
    let start = CpuMark::take(&servers, &[]);
    let started = Instant::now();
    let traffic = async {
        match args.rate {
            Some(rate) => {
                open_loop(
                    &context,
                    &args.mix,
                    rate,
                    duration,
                    args.concurrency,
                    &mut rng,
                )
                .await
            }
            None => {
                closed_loop(
                    &context,
                    &args.mix,
                    duration,
                    args.concurrency,
                    args.common.seed,
                )
                .await
            }
        }
    };
    tokio::pin!(traffic);
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            () = &mut traffic => break,
            _ = tick.tick() => {
                let tallies = context.tallies.lock().expect("tallies lock");
                let ok: u64 = tallies.ok.iter().sum();
                let errors: u64 = tallies.errors.iter().map(tally_total).sum();
                drop(tallies);
                line.show(&format!("requests: {ok} ok, {errors} errors"));
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    // Each post created announces one feed event; no other operation does.
    let create = OPS
        .iter()
        .position(|op| *op == Op::Create)
        .expect("create is an op");
    let created = context.tallies.lock().expect("tallies lock").ok[create];
    line.show("waiting for the feed queue to drain");
    let feed_drained_after = match settled_before {
        Ok(before) => wait_for_feed(&context, before + created).await,
        Err(error) => {
            line.note(&format!(
                "cannot read the feed worker's progress: {error:#}"
            ));
            None
        }
    };
    let end = CpuMark::take(&servers, &[]);
    line.end_line();

    let tallies = context.tallies.lock().expect("tallies lock");
    let mut all = Latency::default();
    let mut errors = Tally::new();
    let mut operations = Vec::new();
    for (i, op) in OPS.iter().enumerate() {
        all.merge(&tallies.latency[i]);
        add_tally(&mut errors, &tallies.errors[i]);
        operations.push(OperationReport {
            name: op.name(),
            ok: tallies.ok[i],
            errors: tallies.errors[i].clone(),
            latency: tallies.latency[i].summary(),
        });
    }
    let requests = all.count();
    Ok(RestReport {
        run: population.run.clone(),
        instances: context.bases.clone(),
        mode: match args.rate {
            Some(rate) => format!("open loop at {rate}/s"),
            None => "closed loop, as fast as possible".to_owned(),
        },
        target_rate: args.rate,
        concurrency: args.concurrency,
        seconds,
        requests,
        errors: tally_total(&errors),
        achieved_rate: requests as f64 / seconds,
        latency: all.summary(),
        operations,
        cpu: end.since(&start, &servers, requests),
        cpu_per: args.mix.only().map_or("request", Op::name),
        feed_drained_after,
    })
}

/// Seconds until the instances have settled `target` feed events in all;
/// `None` after [`FEED_DRAIN_TIMEOUT`] or when they cannot be asked.
async fn wait_for_feed(context: &Caller, target: u64) -> Option<f64> {
    let waiting = Instant::now();
    while waiting.elapsed() < FEED_DRAIN_TIMEOUT {
        if feed_settled(context).await.ok()? >= target {
            return Some(waiting.elapsed().as_secs_f64());
        }
        tokio::time::sleep(FEED_DRAIN_POLL).await;
    }
    None
}

/// Feed events settled so far by every instance, from `/metrics`.
async fn feed_settled(context: &Caller) -> anyhow::Result<u64> {
    let mut total = 0;
    for base in &context.bases {
        let text = context
            .http
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .error_for_status()?
            .text()
            .await?;
        total += text
            .lines()
            .find_map(|line| line.strip_prefix("livefeed_feed_events_settled_total "))
            .with_context(|| format!("{base}/metrics has no livefeed_feed_events_settled_total"))?
            .trim()
            .parse::<f64>()? as u64;
    }
    Ok(total)
}

/// Request `i` is due at `i / rate`; the latency counts from then.
async fn open_loop(
    context: &Arc<Caller>,
    mix: &Mix,
    rate: f64,
    duration: Duration,
    concurrency: u32,
    rng: &mut Rng,
) {
    let pacer = Pacer::new(Instant::now(), rate);
    let in_flight = Arc::new(Semaphore::new(concurrency as usize));
    let mut tasks = JoinSet::new();
    for i in 0..pace::count(duration, rate) {
        let due = pacer.due(i);
        // A sleep whose deadline has passed still waits for a turn of the
        // timer driver: one turn per request capped the loop near 6,000/s.
        if due > Instant::now() {
            tokio::time::sleep_until(due).await;
        }
        let permit = in_flight
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let op = mix.pick(rng);
        let who = rng.below(context.users.len() as u64) as usize;
        let other = rng.below(context.users.len() as u64) as usize;
        let context = context.clone();
        tasks.spawn(async move {
            context.call(op, i, who, other, due).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
}

/// `concurrency` loops, each sending its next request when the last answers.
async fn closed_loop(
    context: &Arc<Caller>,
    mix: &Mix,
    duration: Duration,
    concurrency: u32,
    seed: u64,
) {
    let deadline = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for lane in 0..concurrency {
        let context = context.clone();
        let mix = mix.clone();
        let mut rng = Rng::new(seed ^ (u64::from(lane) << 32) ^ 0x5eed);
        tasks.spawn(async move {
            let mut i = u64::from(lane) << 40;
            while Instant::now() < deadline {
                let op = mix.pick(&mut rng);
                let who = rng.below(context.users.len() as u64) as usize;
                let other = rng.below(context.users.len() as u64) as usize;
                context.call(op, i, who, other, Instant::now()).await;
                i += 1;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

impl Caller {
    /// One request as user `who` (about user `other`), timed from `since`.
    async fn call(&self, op: Op, i: u64, who: usize, other: usize, since: Instant) {
        let base = &self.bases[i as usize % self.bases.len()];
        let request = match op {
            Op::Feed => self.http.get(format!("{base}/post/feed?offset=0&limit=10")),
            Op::Create => self
                .http
                .post(format!("{base}/post/create"))
                .json(&json!({ "text": format!("{TAG}{}:rest:{i}", self.run) })),
            Op::Get => self
                .http
                .get(format!("{base}/user/get/{}", self.users[other])),
            Op::Search => self.http.get(format!(
                // Names are U0000000..: a 5-digit prefix matches up to 100.
                "{base}/user/search?first_name={}&last_name=U{:05}",
                self.first_name,
                other / 100
            )),
        };
        let outcome = match request.bearer_auth(&self.tokens[who]).send().await {
            Ok(response) if response.status().is_success() => match response.bytes().await {
                Ok(_) => Ok(()),
                Err(e) => Err(request_error(&e)),
            },
            Ok(response) => Err(format!("http {}", response.status().as_u16())),
            Err(e) => Err(request_error(&e)),
        };
        let elapsed = since.elapsed();
        let slot = op as usize;
        let mut tallies = self.tallies.lock().expect("tallies lock");
        tallies.latency[slot].record(elapsed);
        match outcome {
            Ok(()) => tallies.ok[slot] += 1,
            Err(kind) => *tallies.errors[slot].entry(kind).or_default() += 1,
        }
    }
}
