//! Prometheus metrics, kept in a few atomics and rendered in the text exposition format.
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// A monotonically increasing count.
#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.add(1);
    }

    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A histogram with fixed upper bounds (cumulative on output, as Prometheus expects).
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// Sum of observations, as f64 bits.
    sum: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0f64.to_bits()),
        }
    }

    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|b| value <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        let _ = self
            .sum
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |bits| {
                Some((f64::from_bits(bits) + value).to_bits())
            });
    }

    pub fn observe_duration(&self, d: Duration) {
        self.observe(d.as_secs_f64());
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "{name}_sum {}",
            f64::from_bits(self.sum.load(Ordering::Relaxed))
        );
        let _ = writeln!(out, "{name}_count {count}");
    }
}

const SECONDS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];
const BATCH: &[f64] = &[1.0, 2.0, 4.0, 8.0, 10.0];
const ENGINE_BATCH: &[f64] = &[1.0, 2.0, 3.0, 4.0, 8.0, 16.0];

/// Every metric the server exports.
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    pub images_generated: Counter,
    pub cancelled: Counter,
    pub previews_sent: Counter,
    pub previews_dropped: Counter,
    pub engine_failures: Counter,
    /// Jobs stopped or refused at their `--request-timeout`.
    pub timeouts: Counter,
    /// Requests refused up front because their pixels exceed the memory estimate.
    pub refused_too_large: Counter,
    pub queue_wait: Histogram,
    pub step_time: Histogram,
    pub decode_time: Histogram,
    pub time_to_first_preview: Histogram,
    pub batch_size: Histogram,
    /// Requests run together in one engine batch.
    pub engine_batch_requests: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Mutex::new(BTreeMap::new()),
            images_generated: Counter::default(),
            cancelled: Counter::default(),
            previews_sent: Counter::default(),
            previews_dropped: Counter::default(),
            engine_failures: Counter::default(),
            timeouts: Counter::default(),
            refused_too_large: Counter::default(),
            queue_wait: Histogram::new(SECONDS),
            step_time: Histogram::new(SECONDS),
            decode_time: Histogram::new(SECONDS),
            time_to_first_preview: Histogram::new(SECONDS),
            batch_size: Histogram::new(BATCH),
            engine_batch_requests: Histogram::new(ENGINE_BATCH),
        }
    }
}

impl Metrics {
    /// Counts one answered request by route template (not raw path, to bound the label set).
    pub fn record_request(&self, route: &str, status: u16) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((route.to_string(), status)).or_default() += 1;
        }
    }

    pub fn requests(&self, route: &str, status: u16) -> u64 {
        self.requests
            .lock()
            .ok()
            .and_then(|m| m.get(&(route.to_string(), status)).copied())
            .unwrap_or(0)
    }

    /// The text exposition; `queue_depth` and `in_flight` are read live by the caller.
    pub fn render(&self, queue_depth: usize, in_flight: usize) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP imago_requests_total HTTP requests answered, by route and status."
        );
        let _ = writeln!(out, "# TYPE imago_requests_total counter");
        if let Ok(map) = self.requests.lock() {
            for ((route, status), n) in map.iter() {
                let _ = writeln!(
                    out,
                    "imago_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}"
                );
            }
        }
        let counters = [
            (
                "imago_images_generated_total",
                "Images produced.",
                &self.images_generated,
            ),
            (
                "imago_cancelled_total",
                "Jobs cancelled because their client went away (queued or running).",
                &self.cancelled,
            ),
            (
                "imago_previews_sent_total",
                "Preview images sent on streams.",
                &self.previews_sent,
            ),
            (
                "imago_previews_dropped_total",
                "Previews dropped because the client was slower than the engine.",
                &self.previews_dropped,
            ),
            (
                "imago_engine_failures_total",
                "Generations that failed inside the engine.",
                &self.engine_failures,
            ),
            (
                "imago_timeouts_total",
                "Jobs stopped or refused at the request timeout (--request-timeout).",
                &self.timeouts,
            ),
            (
                "imago_refused_too_large_total",
                "Requests refused before queueing: more pixels than the memory estimate allows.",
                &self.refused_too_large,
            ),
        ];
        for (name, help, counter) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                counter.get()
            );
        }
        let _ = writeln!(out, "# HELP imago_queue_depth Jobs waiting for the engine.\n# TYPE imago_queue_depth gauge\nimago_queue_depth {queue_depth}");
        let _ = writeln!(out, "# HELP imago_in_flight Jobs running on the engine.\n# TYPE imago_in_flight gauge\nimago_in_flight {in_flight}");
        self.queue_wait.render(
            &mut out,
            "imago_queue_wait_seconds",
            "Time jobs waited for the engine.",
        );
        self.step_time.render(
            &mut out,
            "imago_step_seconds",
            "Time of one denoising step (whole batch).",
        );
        self.decode_time.render(
            &mut out,
            "imago_decode_seconds",
            "Time of the final VAE decode.",
        );
        self.time_to_first_preview.render(
            &mut out,
            "imago_time_to_first_preview_seconds",
            "From the start of a job to its first preview.",
        );
        self.batch_size
            .render(&mut out, "imago_batch_size", "Images per engine job.");
        self.engine_batch_requests.render(
            &mut out,
            "imago_engine_batch_requests",
            "Requests run together as one engine batch (--max-batch).",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_histograms() {
        let m = Metrics::default();
        m.record_request("/api/v1/images", 200);
        m.record_request("/api/v1/images", 200);
        m.cancelled.inc();
        m.step_time.observe(0.02);
        m.step_time.observe(3.0);
        let text = m.render(2, 1);
        assert!(
            text.contains("imago_requests_total{route=\"/api/v1/images\",status=\"200\"} 2"),
            "{text}"
        );
        assert!(text.contains("imago_cancelled_total 1"));
        assert!(text.contains("imago_queue_depth 2"));
        assert!(text.contains("imago_step_seconds_bucket{le=\"0.025\"} 1"));
        assert!(text.contains("imago_step_seconds_bucket{le=\"5\"} 2"));
        assert!(text.contains("imago_step_seconds_count 2"));
        assert!(text.contains("imago_step_seconds_sum 3.02"));
        m.engine_batch_requests.observe(3.0);
        m.timeouts.inc();
        let text = m.render(0, 0);
        assert!(
            text.contains("imago_engine_batch_requests_bucket{le=\"2\"} 0"),
            "{text}"
        );
        assert!(text.contains("imago_engine_batch_requests_bucket{le=\"3\"} 1"));
        assert!(text.contains("imago_timeouts_total 1"));
        assert!(text.contains("imago_refused_too_large_total 0"));
    }
}
