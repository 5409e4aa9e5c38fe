//! Prometheus metrics, `pe_` prefixed: request counts and latency per route and status, requests
//! in flight per route, batch sizes, queue depth, and items embedded by kind (`rate(pe_items_total{kind="image"}[1m])` is
//! images per second).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Upper bounds of the latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];
/// Upper bounds of the batch-size histogram, in items.
pub(crate) const BATCH_BUCKETS: [f64; 9] = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];

/// The engine's counters, which the HTTP layer reports (kept here, beside their rendering, so
/// that the engine depends on the metrics and not the other way round).
#[derive(Debug)]
pub struct Stats {
    /// Jobs queued and not yet taken by the model thread.
    pub queue_depth: AtomicUsize,
    /// Batches run (each may span several forward passes of at most the batch limit).
    pub batches: AtomicUsize,
    /// Images embedded.
    pub images: AtomicUsize,
    /// Texts embedded.
    pub texts: AtomicUsize,
    pub(crate) batch_size: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            queue_depth: AtomicUsize::new(0),
            batches: AtomicUsize::new(0),
            images: AtomicUsize::new(0),
            texts: AtomicUsize::new(0),
            batch_size: Histogram::new(&BATCH_BUCKETS),
        }
    }
}

/// A fixed-bucket histogram with atomic counters.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    counts: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    total: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            counts: (0..bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| v <= b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros.fetch_add((v * 1e6) as u64, Ordering::Relaxed);
        self.total.fetch_add(1, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            cumulative += c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cumulative}");
        }
        let total = self.total.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let _ = writeln!(out, "{name}_sum{{{labels}}} {}", self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6);
        let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
    }
}

/// Request metrics, keyed by route.
#[derive(Debug, Default)]
pub(crate) struct RequestMetrics {
    counts: Mutex<BTreeMap<(String, u16), u64>>,
    in_flight: Mutex<BTreeMap<String, u64>>,
    latency: Mutex<BTreeMap<String, std::sync::Arc<Histogram>>>,
}

impl RequestMetrics {
    /// Count a request on `route` as in flight until the returned guard is dropped (also when
    /// the client goes away and its handler is cancelled).
    pub(crate) fn start<'a>(&'a self, route: &str) -> InFlight<'a> {
        if let Ok(mut m) = self.in_flight.lock() {
            *m.entry(route.to_string()).or_default() += 1;
        }
        InFlight { metrics: self, route: route.to_string() }
    }

    pub(crate) fn record(&self, route: &str, status: u16, seconds: f64) {
        if let Ok(mut c) = self.counts.lock() {
            *c.entry((route.to_string(), status)).or_default() += 1;
        }
        let h = self.latency.lock().ok().map(|mut l| {
            l.entry(route.to_string()).or_insert_with(|| std::sync::Arc::new(Histogram::new(&LATENCY_BUCKETS))).clone()
        });
        if let Some(h) = h {
            h.observe(seconds);
        }
    }

    pub(crate) fn render(&self, out: &mut String) {
        out.push_str("# HELP pe_requests_total HTTP requests by route and status.\n# TYPE pe_requests_total counter\n");
        if let Ok(c) = self.counts.lock() {
            for ((route, status), n) in c.iter() {
                let _ = writeln!(out, "pe_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
            }
        }
        out.push_str("# HELP pe_requests_in_flight HTTP requests being answered, by route.\n# TYPE pe_requests_in_flight gauge\n");
        if let Ok(m) = self.in_flight.lock() {
            for (route, n) in m.iter() {
                let _ = writeln!(out, "pe_requests_in_flight{{route=\"{route}\"}} {n}");
            }
        }
        out.push_str("# HELP pe_request_duration_seconds Request latency by route.\n# TYPE pe_request_duration_seconds histogram\n");
        if let Ok(l) = self.latency.lock() {
            for (route, h) in l.iter() {
                h.render(out, "pe_request_duration_seconds", &format!("route=\"{route}\""));
            }
        }
    }
}

/// A request counted in [`RequestMetrics`]' in-flight gauge.
pub(crate) struct InFlight<'a> {
    metrics: &'a RequestMetrics,
    route: String,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.metrics.in_flight.lock() {
            if let Some(n) = m.get_mut(&self.route) {
                *n = n.saturating_sub(1);
            }
        }
    }
}

/// Render the served model as an info metric (always 1; the labels carry the facts).
pub(crate) fn render_model(out: &mut String, name: &str, precision: perception_encoder::Precision) {
    // Label values escape backslash, quote and newline (the exposition format's rule); a custom
    // config's name may hold any of them.
    let name = name.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let _ = writeln!(out, "# HELP pe_model_info The served model and its precision.\n# TYPE pe_model_info gauge");
    let _ = writeln!(out, "pe_model_info{{model=\"{name}\",precision=\"{precision}\"}} 1");
}

/// Render the engine's counters.
pub(crate) fn render_engine(out: &mut String, stats: &Stats) {
    let _ = writeln!(out, "# HELP pe_queue_depth Requests waiting for the model thread.\n# TYPE pe_queue_depth gauge");
    let _ = writeln!(out, "pe_queue_depth {}", stats.queue_depth.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP pe_batches_total Forward passes run.\n# TYPE pe_batches_total counter");
    let _ = writeln!(out, "pe_batches_total {}", stats.batches.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP pe_items_total Items embedded, by kind.\n# TYPE pe_items_total counter");
    let _ = writeln!(out, "pe_items_total{{kind=\"image\"}} {}", stats.images.load(Ordering::Relaxed));
    let _ = writeln!(out, "pe_items_total{{kind=\"text\"}} {}", stats.texts.load(Ordering::Relaxed));
    let _ = writeln!(out, "# HELP pe_batch_size Items per forward pass.\n# TYPE pe_batch_size histogram");
    stats.batch_size.render(out, "pe_batch_size", "");
}

/// Render the decode budget: its size, what running decodes hold, and the most held at once.
pub(crate) fn render_decode(out: &mut String, budget: &crate::decode::DecodeBudget) {
    let _ = writeln!(out, "# HELP pe_decode_budget_bytes Memory image and video decoding may hold at once.\n# TYPE pe_decode_budget_bytes gauge");
    let _ = writeln!(out, "pe_decode_budget_bytes {}", budget.total_bytes());
    let _ = writeln!(
        out,
        "# HELP pe_decode_bytes_in_use Memory reserved by decodes running now.\n# TYPE pe_decode_bytes_in_use gauge"
    );
    let _ = writeln!(out, "pe_decode_bytes_in_use {}", budget.in_use.load(Ordering::Relaxed));
    let _ = writeln!(
        out,
        "# HELP pe_decode_bytes_peak Most memory reserved by decodes at once.\n# TYPE pe_decode_bytes_peak gauge"
    );
    let _ = writeln!(out, "pe_decode_bytes_peak {}", budget.peak.load(Ordering::Relaxed));
}
