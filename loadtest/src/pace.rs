//! Open-loop pacing. The i-th event is due at `start + i / rate` whatever
//! happened to the ones before it, so a slow server cannot slow the schedule
//! down; a latency measured from the due time (not from when the request
//! finally went out) includes the wait a real client would have seen. That
//! is the coordinated-omission correction.

use std::time::Duration;

use tokio::time::Instant;

#[derive(Debug, Clone, Copy)]
pub struct Pacer {
    start: Instant,
    /// `start` on the wall clock, for stamps other processes read.
    start_unix_micros: u64,
    rate: f64,
}

impl Pacer {
    /// `rate` events per second; must be positive.
    pub fn new(start: Instant, rate: f64) -> Self {
        assert!(rate > 0.0, "a pacer needs a positive rate");
        let behind = start.elapsed().as_micros() as u64;
        let start_unix_micros = crate::opts::unix_micros().saturating_sub(behind);
        Self {
            start,
            start_unix_micros,
            rate,
        }
    }

    pub fn due(&self, index: u64) -> Instant {
        self.start + offset(index, self.rate)
    }

    /// When the `index`-th event is due, in Unix microseconds: the stamp a
    /// post carries, so that its receivers measure from the schedule.
    pub fn due_unix_micros(&self, index: u64) -> u64 {
        self.start_unix_micros + offset(index, self.rate).as_micros() as u64
    }
}

/// When the `index`-th event is due, counted from the start.
pub fn offset(index: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(index as f64 / rate)
}

/// How many events a run of `duration` at `rate` holds (at least one).
pub fn count(duration: Duration, rate: f64) -> u64 {
    ((duration.as_secs_f64() * rate).round() as u64).max(1)
}

/// Positive rates only, for clap.
pub fn parse_rate(raw: &str) -> Result<f64, String> {
    match raw.parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 => Ok(rate),
        _ => Err(format!(
            "expected a positive number per second, got {raw:?}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_evenly_spaced_from_the_start() {
        assert_eq!(offset(0, 10.0), Duration::ZERO);
        assert_eq!(offset(10, 10.0), Duration::from_secs(1));
        assert_eq!(offset(3, 2.0), Duration::from_millis(1500));
        assert_eq!(offset(1, 4000.0), Duration::from_micros(250));
        let start = Instant::now();
        let pacer = Pacer::new(start, 50.0);
        assert_eq!(pacer.due(50) - start, Duration::from_secs(1));
        assert!((1..1000).all(|i| pacer.due(i) > pacer.due(i - 1)));
        assert_eq!(
            pacer.due_unix_micros(50) - pacer.due_unix_micros(0),
            1_000_000
        );
    }

    #[test]
    fn no_drift_over_long_schedules() {
        // One rounding per event would drift; the offset is computed from
        // the index each time instead.
        let late = offset(3_600_000, 1000.0);
        assert_eq!(late, Duration::from_secs(3600));
    }

    #[test]
    fn counts_and_rates() {
        assert_eq!(count(Duration::from_secs(10), 50.0), 500);
        assert_eq!(count(Duration::from_millis(10), 1.0), 1);
        assert_eq!(parse_rate("12.5"), Ok(12.5));
        for bad in ["0", "-1", "nan", "inf", "fast"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }
}
