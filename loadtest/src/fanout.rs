//! What `broadcast` and `social` share: connect the subscribers (in worker
//! processes), publish a schedule of posts, and check that every subscriber
//! received exactly the posts of the authors it follows.

use std::fmt::Write;
use std::time::Duration;

use anyhow::ensure;
use serde::Serialize;

use crate::cost::{self, Counters, CpuMark, CpuReport, MemoryReport, Servers};
use crate::fleet::{Assignment, Fleet};
use crate::opts::{Common, FleetOptions, Target};
use crate::population::Population;
use crate::protocol::{ClientSpec, Command, DrainReport, Event, Progress, ReadyReport};
use crate::publish::{Poster, Publisher};
use crate::report::{self, ProgressLine, latency_line, tally_line};
use crate::stats::{Latency, Summary, Tally, add_tally, tally_total};
use crate::token::Minter;

/// Time each socket gets for the server to answer its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who subscribes, what gets posted.
pub struct Plan {
    /// `(user index, authors it follows)` of each websocket client.
    pub subscribers: Vec<(u32, Vec<u32>)>,
    /// The author (user index) of each post, in sequence order.
    pub schedule: Vec<u32>,
    /// Posts per second.
    pub rate: f64,
}

/// A fan-out report under its scenario's name (`broadcast`, `social`).
#[derive(Serialize)]
#[serde(transparent)]
pub struct NamedReport {
    #[serde(skip)]
    scenario: &'static str,
    report: FanoutReport,
}

impl crate::report::Report for NamedReport {
    fn scenario(&self) -> &'static str {
        self.scenario
    }

    fn human(&self, out: &mut String) {
        self.report.human(out, self.scenario);
    }

    fn problems(&self) -> Vec<String> {
        self.report.problems()
    }
}

#[derive(Serialize)]
pub struct FanoutReport {
    pub run: String,
    pub instances: Vec<String>,
    pub workers: Vec<String>,
    pub connections: Connections,
    /// From starting the workers to the last subscriber ready; operations
    /// are ready subscribers.
    pub connect_cpu: CpuReport,
    pub posts: Posts,
    pub deliveries: Deliveries,
    /// Server RSS growth per open socket (needs --server-pid).
    pub memory: Option<MemoryReport>,
    /// From the first post to the last delivery; operations are deliveries.
    pub cpu: CpuReport,
    /// What the instances' /metrics say happened meanwhile.
    pub server_counters: Counters,
    pub close: Closing,
}

impl FanoutReport {
    /// Publish→receive p99 of the run's deliveries.
    pub fn latency_p99_ms(&self) -> f64 {
        self.deliveries.latency.p99_us as f64 / 1000.0
    }
}

/// Closing every socket: whether the server answered, and what it cost.
#[derive(Serialize)]
pub struct Closing {
    /// The server answered our close frame with its own.
    pub clean: u64,
    /// It did not: what happened instead.
    pub unclean: Tally,
    /// The slowest worker's close phase.
    pub seconds: f64,
    /// Operations are sockets closed.
    pub cpu: CpuReport,
}

impl Closing {
    pub fn human(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "  {:<24} {} answered, {} not, in {:.2}s",
            "close",
            self.clean,
            tally_total(&self.unclean),
            self.seconds
        );
        tally_line(out, "close not answered", &self.unclean);
        self.cpu
            .human(out, "cpu (close phase)", "socket", "sockets");
    }
}

/// Has every worker close its sockets, each waiting up to `timeout` for
/// the server's close frame.
pub async fn close_all(
    fleet: &mut Fleet,
    servers: &Servers,
    timeout: Duration,
    line: &mut ProgressLine,
) -> anyhow::Result<Closing> {
    let start = CpuMark::take(servers, &fleet.pids());
    fleet
        .send(&Command::Close {
            timeout_ms: timeout.as_millis() as u64,
        })
        .await?;
    let closed = fleet
        .collect(
            "closing",
            timeout + Duration::from_secs(10),
            line,
            |_| "closing sockets".to_owned(),
            |event| match event {
                Event::Closed(report) => Some(report),
                _ => None,
            },
        )
        .await?;
    let end = CpuMark::take(servers, &fleet.pids());
    let mut unclean = Tally::new();
    for report in &closed {
        add_tally(&mut unclean, &report.unclean);
    }
    let clean = closed.iter().map(|report| report.clean).sum::<u64>();
    let micros = closed.iter().map(|report| report.micros).max().unwrap_or(0);
    Ok(Closing {
        clean,
        cpu: end.since(&start, servers, clean + tally_total(&unclean)),
        unclean,
        seconds: micros as f64 / 1e6,
    })
}

#[derive(Serialize)]
pub struct Connections {
    pub clients: u64,
    pub ready: u64,
    pub failures: Tally,
    pub handshake: Summary,
    pub ready_time: Summary,
    /// Clients ready per second, first attempt to last ready.
    pub ready_per_second: f64,
}

#[derive(Serialize)]
pub struct Posts {
    pub attempted: u64,
    pub created: u64,
    pub failures: Tally,
    pub rate: f64,
    /// Due time to answer, coordinated omission corrected.
    pub create_latency: Summary,
}

#[derive(Serialize)]
pub struct Deliveries {
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub unexpected: u64,
    pub foreign: u64,
    pub malformed: u64,
    pub clients_with_loss: u64,
    pub disconnects: Tally,
    /// Post send time (in its text) to frame read by the subscriber.
    pub latency: Summary,
    /// Unique deliveries over the span from the first post sent to the
    /// last delivery.
    pub per_second: f64,
    pub span_seconds: f64,
    pub complete: bool,
}

impl Connections {
    pub fn merge(reports: &[ReadyReport]) -> Self {
        let mut handshake = Latency::default();
        let mut ready_time = Latency::default();
        let mut failures = Tally::new();
        for report in reports {
            handshake.merge(&report.handshake);
            ready_time.merge(&report.ready_time);
            add_tally(&mut failures, &report.failures);
        }
        let ready: u64 = reports.iter().map(|r| r.ready).sum();
        let first = reports
            .iter()
            .map(|r| r.first_attempt_micros)
            .min()
            .unwrap_or(0);
        let last = reports
            .iter()
            .map(|r| r.last_ready_micros)
            .max()
            .unwrap_or(0);
        let span = last.saturating_sub(first) as f64 / 1e6;
        Self {
            clients: reports.iter().map(|r| r.clients).sum(),
            ready,
            failures,
            handshake: handshake.summary(),
            ready_time: ready_time.summary(),
            ready_per_second: if span > 0.0 { ready as f64 / span } else { 0.0 },
        }
    }

    pub fn human(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "  {:<24} {} of {} ready ({:.0}/s), {} failed",
            "connections",
            self.ready,
            self.clients,
            self.ready_per_second,
            tally_total(&self.failures)
        );
        tally_line(out, "connect failures", &self.failures);
        latency_line(out, "handshake (101)", &self.handshake);
        latency_line(out, "ready (ping answered)", &self.ready_time);
    }
}

pub fn ready_per_target(reports: &[ReadyReport]) -> Vec<u64> {
    let mut per_target: Vec<u64> = Vec::new();
    for report in reports {
        per_target.resize(per_target.len().max(report.ready_per_target.len()), 0);
        for (total, ready) in per_target.iter_mut().zip(&report.ready_per_target) {
            *total += ready;
        }
    }
    per_target
}

pub fn connect_status(progress: &Progress) -> String {
    format!(
        "connecting: {} of {} ready, {} connected, {} failed",
        progress.ready, progress.clients, progress.connected, progress.failed
    )
}

/// Posts through livefeed's `POST /post/create`, texts padded to `text_bytes`.
pub fn rest_poster(
    common: &Common,
    targets: &[Target],
    population: &Population,
    plan: &Plan,
    text_bytes: usize,
) -> anyhow::Result<Poster> {
    let minter = Minter::new(&common.jwt_secret)?;
    Ok(Poster::Rest(Publisher::new(
        targets,
        &population.run,
        &population.users,
        &plan.schedule,
        &minter,
        text_bytes,
    )?))
}

/// What the subscribers connect to, and who measures it.
pub struct Stage<'a> {
    pub targets: &'a [Target],
    /// The processes whose CPU and memory the report gives.
    pub servers: Servers,
    pub poster: Poster,
}

pub async fn run(
    common: &Common,
    fleet_options: &FleetOptions,
    stage: &Stage<'_>,
    population: &Population,
    plan: &Plan,
    line: &mut ProgressLine,
) -> anyhow::Result<FanoutReport> {
    let Stage {
        targets,
        servers,
        poster,
    } = stage;
    let clients: Vec<ClientSpec> = plan
        .subscribers
        .iter()
        .enumerate()
        .map(|(i, (user, follows))| ClientSpec {
            user: population.users[*user as usize],
            target: (i % targets.len()) as u16,
            follows: follows.clone(),
        })
        .collect();
    let before = servers.snapshot().await;
    let connect_start = CpuMark::take(servers, &[]);
    let assignment = Assignment {
        run: &population.run,
        jwt_secret: &common.jwt_secret,
        targets,
        post_count: plan.schedule.len() as u32,
    };
    let mut fleet = Fleet::start(assignment, fleet_options, clients).await?;
    for worker in fleet.describe() {
        line.note(&format!("worker {worker}"));
    }

    let ready = fleet
        .collect(
            "connecting",
            crate::opts::secs(fleet_options.ready_timeout),
            line,
            connect_status,
            |event| match event {
                Event::Ready(report) => Some(report),
                _ => None,
            },
        )
        .await?;
    let connections = Connections::merge(&ready);
    let connect_cpu =
        CpuMark::take(servers, &fleet.pids()).since(&connect_start, servers, connections.ready);
    line.note(&format!(
        "{} of {} subscribers ready",
        connections.ready, connections.clients
    ));
    ensure!(
        connections.ready > 0,
        "no subscriber became ready: {:?}",
        connections.failures
    );
    let loaded = servers.snapshot().await;
    let memory = servers.memory(&before, &loaded, &ready_per_target(&ready));

    let start = CpuMark::take(servers, &fleet.pids());
    let publishing = poster.run(&plan.schedule, plan.rate);
    tokio::pin!(publishing);
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
    let published = loop {
        tokio::select! {
            published = &mut publishing => break published,
            _ = tick.tick() => {
                let progress = fleet.totals();
                let (sent, failed) = poster.counts();
                line.show(&format!(
                    "publishing: {sent} of {} posts sent ({failed} failed), {} deliveries, {} duplicates, {} disconnected",
                    plan.schedule.len(),
                    progress.received,
                    progress.duplicates,
                    progress.disconnected,
                ));
            }
        }
    };
    line.note(&format!(
        "{} of {} posts created in {:.1}s",
        published.posted.len(),
        published.attempted,
        published.seconds
    ));

    let drain_ms = fleet_options.drain_timeout * 1000;
    fleet
        .send(&Command::Finish {
            posts: published.posted.clone(),
            drain_ms,
        })
        .await?;
    let drained = fleet
        .collect(
            "draining",
            crate::opts::secs(fleet_options.drain_timeout + 30),
            line,
            |p| {
                format!(
                    "draining: {} deliveries, {} duplicates",
                    p.received, p.duplicates
                )
            },
            |event| match event {
                Event::Drained(report) => Some(report),
                _ => None,
            },
        )
        .await?;
    let deliveries = Deliveries::merge(&drained, published.first_sent_micros);
    let end = CpuMark::take(servers, &fleet.pids());
    let after = servers.snapshot().await;
    let cpu = end.since(&start, servers, deliveries.received);

    poster.closing(CLOSE_TIMEOUT).await?;
    let close = close_all(&mut fleet, servers, CLOSE_TIMEOUT, line).await?;
    let workers = fleet.describe();
    fleet.shutdown().await;
    line.end_line();

    Ok(FanoutReport {
        run: population.run.clone(),
        instances: targets.iter().map(|t| t.base.clone()).collect(),
        workers,
        connections,
        connect_cpu,
        posts: Posts {
            attempted: published.attempted,
            created: published.posted.len() as u64,
            failures: published.failures,
            rate: plan.rate,
            create_latency: published.create.summary(),
        },
        deliveries,
        memory,
        cpu,
        server_counters: cost::counters_delta(&before, &after),
        close,
    })
}

impl Deliveries {
    fn merge(reports: &[DrainReport], first_sent_micros: u64) -> Self {
        let mut latency = Latency::default();
        let mut disconnects = Tally::new();
        for report in reports {
            latency.merge(&report.latency);
            add_tally(&mut disconnects, &report.disconnects);
        }
        let sum = |field: fn(&DrainReport) -> u64| reports.iter().map(field).sum::<u64>();
        let last = reports
            .iter()
            .map(|r| r.last_delivery_micros)
            .max()
            .unwrap_or(0);
        let span_seconds = last.saturating_sub(first_sent_micros) as f64 / 1e6;
        let received = sum(|r| r.received);
        Self {
            expected: sum(|r| r.expected),
            received,
            lost: sum(|r| r.lost),
            duplicates: sum(|r| r.duplicates),
            unexpected: sum(|r| r.unexpected),
            foreign: sum(|r| r.foreign),
            malformed: sum(|r| r.malformed),
            clients_with_loss: sum(|r| r.clients_with_loss),
            disconnects,
            latency: latency.summary(),
            per_second: if span_seconds > 0.0 {
                received as f64 / span_seconds
            } else {
                0.0
            },
            span_seconds,
            complete: reports.iter().all(|r| r.complete),
        }
    }
}

impl FanoutReport {
    /// This report under the name of the scenario that produced it.
    pub fn named(self, scenario: &'static str) -> NamedReport {
        NamedReport {
            scenario,
            report: self,
        }
    }

    pub fn human(&self, out: &mut String, title: &str) {
        let _ = writeln!(out, "{title} (run {})", self.run);
        let _ = writeln!(out, "  {:<24} {}", "instances", self.instances.join(" "));
        for worker in &self.workers {
            let _ = writeln!(out, "  {:<24} {worker}", "worker");
        }
        self.connections.human(out);
        self.connect_cpu
            .human(out, "cpu (connect phase)", "subscriber", "subscribers");
        let p = &self.posts;
        let _ = writeln!(
            out,
            "  {:<24} {} of {} created at {}/s",
            "posts", p.created, p.attempted, p.rate
        );
        tally_line(out, "post failures", &p.failures);
        latency_line(out, "create (CO-corrected)", &p.create_latency);
        let d = &self.deliveries;
        let _ = writeln!(
            out,
            "  {:<24} {} of {} received, lost {}, duplicates {}, unexpected {}, foreign {}, malformed {}",
            "deliveries",
            d.received,
            d.expected,
            d.lost,
            d.duplicates,
            d.unexpected,
            d.foreign,
            d.malformed
        );
        let _ = writeln!(
            out,
            "  {:<24} {:.0}/s over {:.2}s (first post sent to last delivery)",
            "delivery rate", d.per_second, d.span_seconds
        );
        tally_line(out, "disconnects", &d.disconnects);
        latency_line(out, "publish to receive", &d.latency);
        if let Some(memory) = &self.memory {
            memory_human(out, memory);
        }
        self.cpu.human(out, "cpu", "delivery", "deliveries");
        self.cpu.load_human(out);
        let c = &self.server_counters;
        let _ = writeln!(
            out,
            "  {:<24} deliveries {}, slow-consumer closes {}, outbox published {}, \
             posts joined to the one before {}",
            "server /metrics delta",
            c.deliveries,
            c.slow_consumer_closes,
            c.outbox_published,
            c.joined_posts
        );
        self.close.human(out);
    }

    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        let failures = tally_total(&self.connections.failures);
        if failures > 0 {
            problems.push(format!("{failures} subscribers failed to connect"));
        }
        if self.posts.created < self.posts.attempted {
            problems.push(format!(
                "{} posts failed to create",
                self.posts.attempted - self.posts.created
            ));
        }
        let d = &self.deliveries;
        for (count, what) in [
            (d.lost, "lost deliveries"),
            (d.duplicates, "duplicated deliveries"),
            (d.unexpected, "unexpected deliveries"),
            (d.malformed, "malformed frames"),
        ] {
            if count > 0 {
                problems.push(format!("{count} {what}"));
            }
        }
        let disconnects = tally_total(&d.disconnects);
        if disconnects > 0 {
            problems.push(format!("{disconnects} subscribers dropped by the server"));
        }
        problems
    }
}

pub fn memory_human(out: &mut String, memory: &MemoryReport) {
    for server in &memory.servers {
        let (Some(before), Some(loaded)) = (server.rss_before_bytes, server.rss_loaded_bytes)
        else {
            let _ = writeln!(
                out,
                "  {:<24} pid {}: /proc unreadable",
                "server rss", server.pid
            );
            continue;
        };
        let per = server
            .per_connection_bytes
            .map_or_else(String::new, |b| format!(", {} per socket", report::kib(b)));
        let _ = writeln!(
            out,
            "  {:<24} pid {}: {} -> {}{per}",
            "server rss",
            server.pid,
            report::mib(before),
            report::mib(loaded)
        );
    }
    let per = memory.per_connection_bytes.map_or_else(
        || "not measured: RSS fell meanwhile (measure on fresh instances)".to_owned(),
        report::kib,
    );
    let _ = writeln!(out, "  {:<24} {per}", "server rss per socket");
}
