//! Latency histograms (HDR, microseconds) that cross the worker pipe as
//! their non-empty buckets and merge exactly, and tallies of failures.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// One hour: anything slower is recorded as one hour.
const HIGHEST_MICROS: u64 = 3_600_000_000;
const SIGNIFICANT_DIGITS: u8 = 3;

/// Microsecond latencies, 3 significant digits.
#[derive(Clone, Serialize, Deserialize)]
#[serde(into = "Buckets", try_from = "Buckets")]
pub struct Latency(Histogram<u64>);

/// A histogram on the wire: `(value, count)` of each non-empty bucket.
#[derive(Serialize, Deserialize)]
pub struct Buckets(Vec<(u64, u64)>);

impl Default for Latency {
    fn default() -> Self {
        Self(
            Histogram::new_with_bounds(1, HIGHEST_MICROS, SIGNIFICANT_DIGITS)
                .expect("constant bounds are valid"),
        )
    }
}

impl Latency {
    pub fn record_micros(&mut self, micros: u64) {
        self.0.saturating_record(micros.max(1));
    }

    pub fn record(&mut self, elapsed: Duration) {
        self.record_micros(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    pub fn merge(&mut self, other: &Latency) {
        self.0
            .add(&other.0)
            .expect("histograms with the same bounds always merge");
    }

    pub fn count(&self) -> u64 {
        self.0.len()
    }

    pub fn summary(&self) -> Summary {
        let h = &self.0;
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            min_us: h.min(),
            mean_us: h.mean().round() as u64,
            p50_us: h.value_at_quantile(0.5),
            p90_us: h.value_at_quantile(0.9),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

impl From<Latency> for Buckets {
    fn from(latency: Latency) -> Self {
        Buckets(
            latency
                .0
                .iter_recorded()
                .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
                .collect(),
        )
    }
}

impl TryFrom<Buckets> for Latency {
    type Error = String;

    fn try_from(buckets: Buckets) -> Result<Self, String> {
        let mut latency = Latency::default();
        for (value, count) in buckets.0 {
            latency
                .0
                .record_n(value, count)
                .map_err(|e| format!("bad histogram bucket {value}: {e}"))?;
        }
        Ok(latency)
    }
}

/// Percentiles of a [`Latency`], in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub min_us: u64,
    pub mean_us: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// Failures by kind (`"http 503"`, `"timeout: ready"`...).
pub type Tally = BTreeMap<String, u64>;

pub fn add_tally(into: &mut Tally, from: &Tally) {
    for (kind, count) in from {
        *into.entry(kind.clone()).or_default() += count;
    }
}

pub fn tally_total(tally: &Tally) -> u64 {
    tally.values().sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merging_shipped_histograms_equals_recording_in_one() {
        let mut whole = Latency::default();
        let mut parts = [Latency::default(), Latency::default(), Latency::default()];
        for i in 0..30_000u64 {
            let micros = 1 + (i * 7919) % 250_000;
            whole.record_micros(micros);
            parts[(i % 3) as usize].record_micros(micros);
        }
        let mut merged = Latency::default();
        for part in parts {
            let wire = serde_json::to_string(&part).unwrap();
            merged.merge(&serde_json::from_str(&wire).unwrap());
        }
        assert_eq!(merged.summary(), whole.summary());
        assert_eq!(merged.count(), 30_000);
    }

    #[test]
    fn percentiles_and_clamping() {
        let mut latency = Latency::default();
        assert_eq!(latency.summary(), Summary::default());
        for micros in 1..=1000 {
            latency.record_micros(micros);
        }
        latency.record_micros(0);
        latency.record_micros(u64::MAX);
        let summary = latency.summary();
        assert_eq!(summary.count, 1002);
        assert_eq!(summary.min_us, 1);
        assert_eq!(summary.p50_us, 500);
        assert!((989..=991).contains(&summary.p99_us), "{summary:?}");
        assert!(summary.max_us >= HIGHEST_MICROS, "{summary:?}");
    }

    #[test]
    fn tallies_add_up() {
        let mut total = Tally::new();
        add_tally(&mut total, &Tally::from([("http 503".into(), 2)]));
        add_tally(
            &mut total,
            &Tally::from([("http 503".into(), 1), ("timeout: ready".into(), 4)]),
        );
        assert_eq!(total["http 503"], 3);
        assert_eq!(tally_total(&total), 7);
    }
}
