//! A histogram of fixed buckets made of atomics: observing is three relaxed
//! adds, no lock (prometheus-client's own histogram takes a mutex per
//! observation, and these are observed on the delivery and request paths).

use std::sync::atomic::{AtomicU64, Ordering};

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};

#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in seconds, ascending; `+Inf` is implied.
    bounds: &'static [f64],
    /// One per bound, then the overflow bucket; not cumulative.
    buckets: Box<[AtomicU64]>,
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe_micros(&self, micros: u64) {
        self.observe_many_micros(micros, 1);
    }

    /// `count` observations of the same value, as for frames written together.
    pub fn observe_many_micros(&self, micros: u64, count: u64) {
        let seconds = micros as f64 / 1e6;
        let bucket = self
            .bounds
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(self.bounds.len());
        self.buckets[bucket].fetch_add(count, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros * count, Ordering::Relaxed);
    }

    /// A copy of the counts now, to hand to a registry that owns its metrics.
    pub fn snapshot(&self) -> Self {
        let load = |n: &AtomicU64| AtomicU64::new(n.load(Ordering::Relaxed));
        Self {
            bounds: self.bounds,
            buckets: self.buckets.iter().map(load).collect(),
            sum_micros: load(&self.sum_micros),
        }
    }
}

impl TypedMetric for Histogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // Loaded one by one, so a scrape racing observations may see a count
        // a little off its buckets' sum; Prometheus tolerates that.
        let buckets: Vec<(f64, u64)> = self
            .bounds
            .iter()
            .copied()
            .chain(std::iter::once(f64::INFINITY))
            .zip(self.buckets.iter().map(|b| b.load(Ordering::Relaxed)))
            .collect();
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
