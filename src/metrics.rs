//! Counters and histograms for `/metrics` (Prometheus text format), kept in one process-wide
//! registry: the parts of the server record what happened as it happens (a few atomic adds), and
//! `/metrics` renders everything at scrape time. Pure core: no actix, no I/O.
//!
//! Label values are `&'static str` from closed sets (operations, outcomes, stages, kinds), so a
//! client can never grow the number of series.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the latency buckets: 100 µs to 2 minutes.
const BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
    30.0, 120.0,
];

/// A latency histogram: cumulative counts per bucket at render time, sum in microseconds.
#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum_micros: u64,
}

impl Histogram {
    fn observe(&mut self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| secs <= *b) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum_micros += d.as_micros() as u64;
    }
}

type Labels = Vec<(&'static str, &'static str)>;

struct Family<T> {
    help: &'static str,
    series: BTreeMap<Labels, T>,
}

/// The process-wide registry. Use [`metrics()`].
pub struct Metrics {
    counters: Mutex<BTreeMap<&'static str, Family<u64>>>,
    histograms: Mutex<BTreeMap<&'static str, Family<Histogram>>>,
    /// Open WebSocket connections.
    pub ws_connections: AtomicI64,
    /// Operations waiting for a script thread.
    pub script_queue: AtomicI64,
    /// Embedding requests waiting or running.
    pub embed_queue: AtomicI64,
}

static METRICS: Metrics = Metrics {
    counters: Mutex::new(BTreeMap::new()),
    histograms: Mutex::new(BTreeMap::new()),
    ws_connections: AtomicI64::new(0),
    script_queue: AtomicI64::new(0),
    embed_queue: AtomicI64::new(0),
};

/// The registry.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    /// Adds `by` to the counter `name` with `labels`.
    pub fn count(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &'static str)],
        by: u64,
    ) {
        let mut all = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        *series(&mut all, name, help, labels) += by;
    }

    /// Records one duration in the histogram `name` with `labels`.
    pub fn observe(
        &self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &'static str)],
        d: Duration,
    ) {
        let mut all = self.histograms.lock().unwrap_or_else(|p| p.into_inner());
        series(&mut all, name, help, labels).observe(d);
    }

    /// The value of a counter series (tests and benchmarks).
    pub fn counter(&self, name: &str, labels: &[(&'static str, &'static str)]) -> u64 {
        let all = self.counters.lock().unwrap_or_else(|p| p.into_inner());
        all.get(name)
            .and_then(|f| f.series.get(labels))
            .copied()
            .unwrap_or(0)
    }

    /// Every counter and histogram, and the gauges kept here, in Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, help, value) in [
            (
                "telos_ws_connections",
                "Open WebSocket connections.",
                self.ws_connections.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "telos_script_queue_depth",
                "Operations waiting for a script thread.",
                self.script_queue.load(Ordering::Relaxed).max(0) as u64,
            ),
            (
                "telos_embed_queue_depth",
                "Embedding requests waiting or running.",
                self.embed_queue.load(Ordering::Relaxed).max(0) as u64,
            ),
        ] {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}\n"
            );
        }
        for (name, family) in self
            .counters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = write!(
                out,
                "# HELP {name} {}\n# TYPE {name} counter\n",
                family.help
            );
            for (labels, value) in &family.series {
                let _ = writeln!(out, "{name}{} {value}", render_labels(labels, None));
            }
        }
        for (name, family) in self
            .histograms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = write!(
                out,
                "# HELP {name} {}\n# TYPE {name} histogram\n",
                family.help
            );
            for (labels, h) in &family.series {
                let mut cumulative = 0;
                for (bound, n) in BUCKETS.iter().zip(h.counts) {
                    cumulative += n;
                    let le = format!("{bound}");
                    let _ = writeln!(
                        out,
                        "{name}_bucket{} {cumulative}",
                        render_labels(labels, Some(&le))
                    );
                }
                let _ = writeln!(
                    out,
                    "{name}_bucket{} {}",
                    render_labels(labels, Some("+Inf")),
                    h.count
                );
                let _ = writeln!(
                    out,
                    "{name}_sum{} {}",
                    render_labels(labels, None),
                    h.sum_micros as f64 / 1e6
                );
                let _ = writeln!(
                    out,
                    "{name}_count{} {}",
                    render_labels(labels, None),
                    h.count
                );
            }
        }
        out
    }
}

/// The series of `name` with `labels`, made (empty) on first use; the labels are copied only
/// then.
fn series<'a, T: Default>(
    all: &'a mut BTreeMap<&'static str, Family<T>>,
    name: &'static str,
    help: &'static str,
    labels: &[(&'static str, &'static str)],
) -> &'a mut T {
    let family = all.entry(name).or_insert_with(|| Family {
        help,
        series: BTreeMap::new(),
    });
    if !family.series.contains_key(labels) {
        family.series.insert(labels.to_vec(), T::default());
    }
    family.series.get_mut(labels).expect("just made")
}

/// `{a="x",le="0.5"}`, or nothing for no labels. Label values are static identifiers: nothing
/// to escape.
fn render_labels(labels: &[(&'static str, &'static str)], le: Option<&str>) -> String {
    let mut parts: Vec<String> = labels.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Decrements a gauge when dropped (a connection closed, a queued job taken).
pub struct Held(&'static AtomicI64);

impl Held {
    pub fn new(gauge: &'static AtomicI64) -> Held {
        gauge.fetch_add(1, Ordering::Relaxed);
        Held(gauge)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets_a_sum_and_a_count() {
        let m = Metrics {
            counters: Mutex::new(BTreeMap::new()),
            histograms: Mutex::new(BTreeMap::new()),
            ws_connections: AtomicI64::new(0),
            script_queue: AtomicI64::new(0),
            embed_queue: AtomicI64::new(0),
        };
        let labels = [("op", "send")];
        m.observe("t_seconds", "T.", &labels, Duration::from_micros(300));
        m.observe("t_seconds", "T.", &labels, Duration::from_millis(40));
        m.count("t_total", "N.", &[("outcome", "done")], 2);
        let text = m.render();
        assert!(text.contains("# TYPE t_seconds histogram"), "{text}");
        assert!(
            text.contains("t_seconds_bucket{op=\"send\",le=\"0.0005\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{op=\"send\",le=\"0.05\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("t_seconds_bucket{op=\"send\",le=\"+Inf\"} 2"),
            "{text}"
        );
        assert!(text.contains("t_seconds_count{op=\"send\"} 2"), "{text}");
        assert!(text.contains("t_seconds_sum{op=\"send\"} 0.0403"), "{text}");
        assert!(text.contains("t_total{outcome=\"done\"} 2"), "{text}");
        assert_eq!(m.counter("t_total", &[("outcome", "done")]), 2);
    }

    #[test]
    fn a_held_gauge_counts_while_held() {
        static G: AtomicI64 = AtomicI64::new(0);
        let a = Held::new(&G);
        let b = Held::new(&G);
        assert_eq!(G.load(Ordering::Relaxed), 2);
        drop(a);
        drop(b);
        assert_eq!(G.load(Ordering::Relaxed), 0);
    }
}
