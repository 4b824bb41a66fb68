//! Counters for `GET /metrics`, in the Prometheus text format. Plain
//! atomics: recording is a relaxed add on the delivery path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the publish-to-send latency buckets.
const LATENCY_BOUNDS: [f64; 12] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
];

#[derive(Default)]
pub struct Metrics {
    pub open_sockets: AtomicU64,
    pub deliveries: AtomicU64,
    /// Deliveries the kernel did not take at once, left to the session.
    pub queued_deliveries: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    pub socket_write_timeouts: AtomicU64,
    pub published: AtomicU64,
    /// Broker gaps this instance recovered from, and the posts it recovered.
    pub gap_recoveries: AtomicU64,
    pub recovered_posts: AtomicU64,
    /// Feed events given up on (dead-lettered) by this instance's worker.
    pub feed_dead_letters: AtomicU64,
    /// Post events taken from the broker, and posts (from the broker or a
    /// gap recovery) no socket here wanted: bucket routing brings every post
    /// of a bound bucket.
    pub broker_posts: AtomicU64,
    pub unwanted_posts: AtomicU64,
    latency: Histogram,
}

/// Values read elsewhere at scrape time.
pub struct Gauges {
    pub broker_reconnects: u64,
    /// `None` when the database could not be asked.
    pub outbox_depth: Option<i64>,
}

#[derive(Default)]
struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    /// Records the time from a post's creation to its frame being written,
    /// for `frames` frames written at about the same time.
    pub fn observe_latency_micros(&self, micros: u64, frames: u64) {
        let seconds = micros as f64 / 1e6;
        if let Some(bucket) = LATENCY_BOUNDS.iter().position(|bound| seconds <= *bound) {
            self.latency.buckets[bucket].fetch_add(frames, Ordering::Relaxed);
        }
        self.latency.count.fetch_add(frames, Ordering::Relaxed);
        self.latency
            .sum_micros
            .fetch_add(micros * frames, Ordering::Relaxed);
    }

    pub fn render(&self, gauges: &Gauges) -> String {
        let mut out = String::with_capacity(2048);
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        metric(
            &mut out,
            "livefeed_open_sockets",
            "gauge",
            "Open websocket connections.",
            load(&self.open_sockets),
        );
        metric(
            &mut out,
            "livefeed_deliveries_total",
            "counter",
            "Post frames written or queued to sockets.",
            load(&self.deliveries),
        );
        metric(
            &mut out,
            "livefeed_queued_deliveries_total",
            "counter",
            "Post frames the hub could not write at once, written later by the socket's session.",
            load(&self.queued_deliveries),
        );
        metric(
            &mut out,
            "livefeed_slow_consumer_closes_total",
            "counter",
            "Sockets closed for falling behind.",
            load(&self.slow_consumer_closes),
        );
        metric(
            &mut out,
            "livefeed_socket_write_timeouts_total",
            "counter",
            "Sockets closed because a write did not complete in time.",
            load(&self.socket_write_timeouts),
        );
        metric(
            &mut out,
            "livefeed_outbox_published_total",
            "counter",
            "Outbox events confirmed by the broker.",
            load(&self.published),
        );
        metric(
            &mut out,
            "livefeed_gap_recoveries_total",
            "counter",
            "Broker gaps (lost, expired or new instance queue) recovered from PostgreSQL.",
            load(&self.gap_recoveries),
        );
        metric(
            &mut out,
            "livefeed_recovered_posts_total",
            "counter",
            "Posts queued to sockets by gap recoveries.",
            load(&self.recovered_posts),
        );
        metric(
            &mut out,
            "livefeed_feed_dead_letters_total",
            "counter",
            "Feed events that could never be applied, moved to the dead-letter queue.",
            load(&self.feed_dead_letters),
        );
        metric(
            &mut out,
            "livefeed_broker_posts_total",
            "counter",
            "Post events received from the broker.",
            load(&self.broker_posts),
        );
        metric(
            &mut out,
            "livefeed_unwanted_posts_total",
            "counter",
            "Posts that reached no socket of this instance (another author of a bound bucket).",
            load(&self.unwanted_posts),
        );
        metric(
            &mut out,
            "livefeed_broker_reconnects_total",
            "counter",
            "Broker connections re-established.",
            gauges.broker_reconnects,
        );
        if let Some(depth) = gauges.outbox_depth {
            metric(
                &mut out,
                "livefeed_outbox_depth",
                "gauge",
                "Events written but not yet published.",
                depth,
            );
        }

        let name = "livefeed_publish_to_send_seconds";
        let _ = writeln!(
            out,
            "# HELP {name} Time from a post's creation to its frame being written to a socket."
        );
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in LATENCY_BOUNDS.iter().zip(&self.latency.buckets) {
            cumulative += load(bucket);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = load(&self.latency.count);
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            load(&self.latency.sum_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count {count}");
        out
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let metrics = Metrics::default();
        metrics.observe_latency_micros(500, 1);
        metrics.observe_latency_micros(1_500, 1);
        metrics.observe_latency_micros(60_000_000, 1);
        let text = metrics.render(&Gauges {
            broker_reconnects: 3,
            outbox_depth: Some(7),
        });
        assert!(
            text.contains("livefeed_publish_to_send_seconds_bucket{le=\"0.001\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("livefeed_publish_to_send_seconds_bucket{le=\"0.002\"} 2\n"));
        assert!(text.contains("livefeed_publish_to_send_seconds_bucket{le=\"5\"} 2\n"));
        assert!(text.contains("livefeed_publish_to_send_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(text.contains("livefeed_publish_to_send_seconds_count 3\n"));
        assert!(text.contains("livefeed_broker_reconnects_total 3\n"));
        assert!(text.contains("livefeed_outbox_depth 7\n"));
    }
}
