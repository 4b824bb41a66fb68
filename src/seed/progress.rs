//! Progress lines on stderr while a table loads.

use std::time::{Duration, Instant};

/// How often a loading table reports.
const EVERY: Duration = Duration::from_secs(2);

pub struct Progress {
    table: &'static str,
    /// What `done` counts (users, followers, posts) and how many there are.
    unit: &'static str,
    total: u64,
    done: u64,
    rows: u64,
    seed_started: Instant,
    started: Instant,
    next_report: Instant,
}

impl Progress {
    pub fn new(table: &'static str, unit: &'static str, total: u64, seed_started: Instant) -> Self {
        let now = Instant::now();
        Self {
            table,
            unit,
            total,
            done: 0,
            rows: 0,
            seed_started,
            started: now,
            next_report: now + EVERY,
        }
    }

    /// One more `unit` done, which wrote `rows` rows.
    pub fn add(&mut self, rows: u64) {
        self.done += 1;
        self.rows += rows;
        if self.done.is_multiple_of(1024) && Instant::now() >= self.next_report {
            self.next_report += EVERY;
            self.report("");
        }
    }

    /// Prints the final line; answers the rows written and the time taken.
    pub fn finish(self) -> (u64, Duration) {
        self.report(" done");
        (self.rows, self.started.elapsed())
    }

    fn report(&self, suffix: &str) {
        let elapsed = self.started.elapsed();
        let rate = self.rows as f64 / elapsed.as_secs_f64().max(1e-3);
        let percent = if self.total == 0 {
            100.0
        } else {
            100.0 * self.done as f64 / self.total as f64
        };
        let left = time_left(self.done, self.total, elapsed).map_or_else(String::new, |left| {
            format!(", ~{:.0} s left", left.as_secs_f64())
        });
        eprintln!(
            "seed: {:<8}{:>12} rows ({percent:5.1}% of {} {}), {:>9} rows/s, {:.1} s{left} (total {:.1} s){suffix}",
            self.table,
            thousands(self.rows),
            thousands(self.total),
            self.unit,
            thousands(rate as u64),
            elapsed.as_secs_f64(),
            self.seed_started.elapsed().as_secs_f64(),
        );
    }
}

/// Time left at the rate so far, with `done` of `total` done after
/// `elapsed`; none before anything is done or once everything is.
pub fn time_left(done: u64, total: u64, elapsed: Duration) -> Option<Duration> {
    if done == 0 || done >= total {
        return None;
    }
    Some(elapsed.mul_f64((total - done) as f64 / done as f64))
}

/// `1234567` as `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{thousands, time_left};

    #[test]
    fn time_left_extrapolates_the_rate_so_far() {
        let ten = Duration::from_secs(10);
        assert_eq!(time_left(25, 100, ten), Some(Duration::from_secs(30)));
        assert_eq!(time_left(0, 100, ten), None);
        assert_eq!(time_left(100, 100, ten), None);
    }

    #[test]
    fn groups_digits_by_three() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1_000), "1,000");
        assert_eq!(thousands(31_234_567), "31,234,567");
    }
}
