//! The verdict on one scenario: what each follower's sockets received,
//! against what the authors sent. Lost posts, duplicates and per-author
//! order violations must all be zero; the delivery delay (create sent →
//! post received) of the posts sent during the fault is measured, not
//! judged. A scenario may add failures of its own (a check beside the
//! delivery figures). Printed as one table per test.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Duration;

use tokio::time::Instant;

use crate::traffic::{Outcome, Sent, Socket};

/// The figures of one scenario.
#[derive(Debug)]
pub struct Verdict {
    pub scenario: String,
    /// Posts answered 200, and those whose create failed (either way is fine).
    pub created: usize,
    pub uncertain: usize,
    pub lost: usize,
    pub duplicates: usize,
    pub out_of_order: usize,
    /// Received texts no author sent.
    pub strays: usize,
    /// Sockets that ended for good before the test stopped reading.
    pub ended: Vec<String>,
    /// Reconnections of the sockets (a client closed by the fault connects
    /// again with `?since=`): counted, not judged.
    pub reconnects: usize,
    /// Posts a reconnect's catch-up sent again (dropped by the client, as
    /// the README says): counted, not judged.
    pub resent: usize,
    /// What the scenario found wrong beside delivery.
    pub failures: Vec<String>,
    /// Over the posts sent between the fault's start and its repair, every socket.
    pub delay_p99: Option<Duration>,
    pub delay_max: Option<Duration>,
    /// The first few problems, to say what went wrong.
    pub examples: Vec<String>,
}

const EXAMPLES: usize = 8;

impl Verdict {
    pub fn judge(
        scenario: String,
        ledger: &HashMap<String, Sent>,
        sockets: &[Socket],
        fault: (Instant, Instant),
    ) -> Self {
        let created: Vec<&String> = ledger
            .iter()
            .filter(|(_, sent)| sent.outcome == Outcome::Created)
            .map(|(text, _)| text)
            .collect();
        let mut verdict = Self {
            scenario,
            created: created.len(),
            uncertain: ledger.len() - created.len(),
            lost: 0,
            duplicates: 0,
            out_of_order: 0,
            strays: 0,
            ended: Vec::new(),
            reconnects: 0,
            resent: 0,
            failures: Vec::new(),
            delay_p99: None,
            delay_max: None,
            examples: Vec::new(),
        };
        let mut delays = Vec::new();
        for socket in sockets {
            let reception = socket.reception.lock().unwrap();
            if let Some(why) = &reception.ended {
                verdict.ended.push(format!("{}: {why}", socket.name));
            }
            verdict.reconnects += reception.reconnects.len();
            verdict.resent += reception.resent;
            let mut seen = HashSet::new();
            let mut last_seq: HashMap<usize, u64> = HashMap::new();
            for (text, at) in &reception.posts {
                let Some(sent) = ledger.get(text) else {
                    verdict.strays += 1;
                    verdict.example(format!("{}: a post nobody sent: {text:?}", socket.name));
                    continue;
                };
                if !seen.insert(text) {
                    verdict.duplicates += 1;
                    verdict.example(format!("{}: {text} twice", socket.name));
                    continue;
                }
                let last = last_seq.entry(sent.author).or_default();
                if sent.seq < *last {
                    verdict.out_of_order += 1;
                    verdict.example(format!(
                        "{}: {text} after {}/{last}",
                        socket.name, sent.author
                    ));
                }
                *last = (*last).max(sent.seq);
                if (fault.0..=fault.1).contains(&sent.at) {
                    delays.push(at.saturating_duration_since(sent.at));
                }
            }
            for text in &created {
                if !seen.contains(text) {
                    verdict.lost += 1;
                    verdict.example(format!("{}: lost {text}", socket.name));
                }
            }
        }
        delays.sort_unstable();
        if !delays.is_empty() {
            let p99 = (delays.len() * 99).div_ceil(100).max(1) - 1;
            verdict.delay_p99 = Some(delays[p99]);
            verdict.delay_max = delays.last().copied();
        }
        verdict
    }

    fn example(&mut self, problem: String) {
        if self.examples.len() < EXAMPLES {
            self.examples.push(problem);
        }
    }

    /// Records a failed check of the scenario's own.
    pub fn fail(&mut self, problem: String) {
        self.failures.push(problem);
    }

    pub fn passed(&self) -> bool {
        self.failures.is_empty()
            && self.lost == 0
            && self.duplicates == 0
            && self.out_of_order == 0
            && self.strays == 0
            && self.ended.is_empty()
    }
}

/// The table of a test's scenarios, then the problems of those that failed.
pub fn table(verdicts: &[Verdict]) -> String {
    let ms = |delay: Option<Duration>| {
        delay.map_or_else(|| "-".to_owned(), |d| d.as_millis().to_string())
    };
    let mut out = format!(
        "\n{:<72} {:>7} {:>5} {:>5} {:>5} {:>5} {:>7} {:>7} {:>6} {:>6} {:>6}\n",
        "scenario",
        "created",
        "uncer",
        "lost",
        "dup",
        "order",
        "p99 ms",
        "max ms",
        "recon",
        "resent",
        "closed"
    );
    for v in verdicts {
        let _ = writeln!(
            out,
            "{:<72} {:>7} {:>5} {:>5} {:>5} {:>5} {:>7} {:>7} {:>6} {:>6} {:>6}",
            v.scenario,
            v.created,
            v.uncertain,
            v.lost,
            v.duplicates,
            v.out_of_order + v.strays,
            ms(v.delay_p99),
            ms(v.delay_max),
            v.reconnects,
            v.resent,
            v.ended.len(),
        );
    }
    for v in verdicts.iter().filter(|v| !v.passed()) {
        let _ = writeln!(out, "\nFAILED {}:", v.scenario);
        for line in v.failures.iter().chain(&v.ended).chain(&v.examples) {
            let _ = writeln!(out, "  {line}");
        }
    }
    out
}

/// Prints the table, then fails if any scenario lost, doubled or
/// reordered a post, or failed a check of its own.
pub fn conclude(verdicts: &[Verdict]) {
    let output = table(verdicts);
    println!("{output}");
    assert!(verdicts.iter().all(Verdict::passed), "{output}");
}
