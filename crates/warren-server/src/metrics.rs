//! Prometheus metrics (`GET /metrics`, text exposition format 0.0.4):
//! sandboxes by state, create latency, exec counts, API latencies.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::AppState;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with fixed buckets.
#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_nanos
            .fetch_add(d.as_nanos().min(u64::MAX as u128) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {n}");
        let sum = self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {n}");
    }
}

/// Everything the server counts.
#[derive(Default)]
pub struct Metrics {
    pub create_latency: Histogram,
    pub creates_failed: AtomicU64,
    pub execs: AtomicU64,
    pub execs_failed: AtomicU64,
    pub execs_timed_out: AtomicU64,
    /// (method, route, status) → latency.
    http: Mutex<BTreeMap<(String, String, u16), Histogram>>,
}

impl Metrics {
    fn observe_http(&self, method: &str, route: &str, status: u16, d: Duration) {
        let mut m = self.http.lock().expect("metrics lock poisoned");
        m.entry((method.to_string(), route.to_string(), status))
            .or_default()
            .observe(d);
    }
}

/// Middleware: times every request by its route template (never the raw
/// path, so ids do not explode the label set).
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let t = Instant::now();
    let resp = next.run(req).await;
    state
        .metrics
        .observe_http(&method, &route, resp.status().as_u16(), t.elapsed());
    resp
}

/// `GET /metrics`
pub async fn serve(State(state): State<AppState>) -> Response {
    let m = &state.metrics;
    let mut out = String::new();
    out.push_str("# HELP warren_sandboxes Sandboxes by state (all workspaces).\n# TYPE warren_sandboxes gauge\n");
    let counts = state.store.count_by_state().await.unwrap_or_default();
    for s in warren_store::SandboxState::ALL {
        let n = counts
            .iter()
            .find(|(st, _)| *st == s)
            .map(|(_, n)| *n)
            .unwrap_or(0);
        let _ = writeln!(out, "warren_sandboxes{{state=\"{s}\"}} {n}");
    }
    out.push_str("# HELP warren_sandbox_create_seconds Time to create a sandbox through the API until it runs.\n# TYPE warren_sandbox_create_seconds histogram\n");
    m.create_latency
        .render(&mut out, "warren_sandbox_create_seconds", "");
    let counter = |out: &mut String, name: &str, help: &str, v: &AtomicU64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    };
    counter(
        &mut out,
        "warren_sandbox_create_failures_total",
        "Sandbox creates that failed.",
        &m.creates_failed,
    );
    counter(
        &mut out,
        "warren_execs_total",
        "Execs run through the API.",
        &m.execs,
    );
    counter(
        &mut out,
        "warren_exec_failures_total",
        "Execs that could not start.",
        &m.execs_failed,
    );
    counter(
        &mut out,
        "warren_exec_timeouts_total",
        "Execs killed at their timeout.",
        &m.execs_timed_out,
    );
    out.push_str("# HELP warren_http_request_duration_seconds API request latency by route.\n# TYPE warren_http_request_duration_seconds histogram\n");
    for ((method, route, status), h) in m.http.lock().expect("metrics lock poisoned").iter() {
        let labels = format!("method=\"{method}\",route=\"{route}\",status=\"{status}\"");
        h.render(&mut out, "warren_http_request_duration_seconds", &labels);
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
