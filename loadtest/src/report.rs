//! What the user sees: a live progress line on stderr while a scenario
//! runs, then a human summary (or `--json`) and a pass/fail verdict.

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::stats::{Summary, Tally};

/// Off a terminal (a log file, CI), a line every this often instead.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub enum Verdict {
    Pass,
    Fail,
}

/// A scenario's result.
pub trait Report: Serialize {
    /// The scenario's name, as the command line spells it.
    fn scenario(&self) -> &'static str;
    /// The human summary.
    fn human(&self, out: &mut String);
    /// What makes the run a failure (lost or duplicated deliveries,
    /// failed connections, errors); empty for a pass.
    fn problems(&self) -> Vec<String>;
}

#[derive(Serialize)]
struct Envelope<'a, R> {
    scenario: &'static str,
    pass: bool,
    problems: &'a [String],
    #[serde(flatten)]
    report: &'a R,
}

/// Prints `report` (JSON on stdout with `json`), then its problems on stderr.
pub fn conclude<R: Report>(report: &R, json: bool) -> anyhow::Result<Verdict> {
    let problems = report.problems();
    let mut out = String::new();
    if json {
        let envelope = Envelope {
            scenario: report.scenario(),
            pass: problems.is_empty(),
            problems: &problems,
            report,
        };
        out = serde_json::to_string_pretty(&envelope)?;
        out.push('\n');
    } else {
        report.human(&mut out);
    }
    std::io::stdout().write_all(out.as_bytes())?;
    for problem in &problems {
        eprintln!("FAIL: {problem}");
    }
    Ok(if problems.is_empty() {
        Verdict::Pass
    } else {
        Verdict::Fail
    })
}

/// The live status line: rewritten in place on a terminal, printed every
/// few seconds otherwise.
pub struct ProgressLine {
    started: Instant,
    terminal: bool,
    last: Option<Instant>,
    dirty: bool,
}

impl ProgressLine {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            terminal: std::io::stderr().is_terminal(),
            last: None,
            dirty: false,
        }
    }

    pub fn show(&mut self, status: &str) {
        let now = Instant::now();
        let elapsed = now.duration_since(self.started).as_secs_f64();
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let _ = write!(err, "\r\x1b[2K[{elapsed:6.1}s] {status}");
            self.dirty = true;
        } else if self.last.is_none_or(|last| now - last >= PLAIN_EVERY) {
            let _ = writeln!(err, "[{elapsed:6.1}s] {status}");
            self.last = Some(now);
        }
        let _ = err.flush();
    }

    /// A line that stays (a phase done, a note).
    pub fn note(&mut self, message: &str) {
        self.end_line();
        let elapsed = self.started.elapsed().as_secs_f64();
        eprintln!("[{elapsed:6.1}s] {message}");
    }

    pub fn end_line(&mut self) {
        if self.dirty {
            eprintln!();
            self.dirty = false;
        }
    }
}

impl Drop for ProgressLine {
    fn drop(&mut self) {
        self.end_line();
    }
}

pub fn millis(micros: u64) -> String {
    format!("{:.2} ms", micros as f64 / 1000.0)
}

/// `p50 ... p90 ... p99 ... p99.9 ... max ...` of one histogram.
pub fn latency_line(out: &mut String, label: &str, summary: &Summary) {
    if summary.count == 0 {
        let _ = writeln!(out, "  {label:<24} (none)");
        return;
    }
    let _ = writeln!(
        out,
        "  {label:<24} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
        millis(summary.p50_us),
        millis(summary.p90_us),
        millis(summary.p99_us),
        millis(summary.p999_us),
        millis(summary.max_us),
        summary.count
    );
}

pub fn tally_line(out: &mut String, label: &str, tally: &Tally) {
    if tally.is_empty() {
        return;
    }
    let items: Vec<String> = tally
        .iter()
        .map(|(kind, count)| format!("{kind}: {count}"))
        .collect();
    let _ = writeln!(out, "  {label:<24} {}", items.join(", "));
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub fn kib(bytes: f64) -> String {
    format!("{:.1} KiB", bytes / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_latencies_in_milliseconds() {
        let mut out = String::new();
        let summary = Summary {
            count: 3,
            min_us: 1,
            mean_us: 2,
            p50_us: 1500,
            p90_us: 2000,
            p99_us: 12_345,
            p999_us: 20_000,
            max_us: 1_000_000,
        };
        latency_line(&mut out, "publish to receive", &summary);
        assert!(out.contains("p50 1.50 ms"), "{out}");
        assert!(out.contains("p99 12.35 ms"), "{out}");
        assert!(out.contains("max 1000.00 ms  (n=3)"), "{out}");
        out.clear();
        latency_line(&mut out, "x", &Summary::default());
        assert!(out.contains("(none)"));
    }
}
