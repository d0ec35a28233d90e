//! Prometheus metrics: the process-wide recorder, and a middleware that counts
//! requests and times them by route and status.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::state::AppState;

/// Latency buckets (seconds): 1 ms to 2 minutes.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];
/// Batch-size buckets (sequences or tokens).
const COUNT_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 4096.0, 16384.0, 65536.0,
];

/// Installs the global recorder once per process and returns its handle.
pub fn recorder() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Prefix("modelship_batch".into()),
                        COUNT_BUCKETS,
                    )
                })
                .expect("bucket lists are non-empty")
                .install_recorder()
                .expect("no other metrics recorder is installed in this process")
        })
        .clone()
}

pub(crate) async fn render(State(state): State<AppState>) -> Response {
    if let Some(bytes) = resident_bytes() {
        metrics::gauge!("modelship_resident_memory_bytes").set(bytes as f64);
    }
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// This process's resident memory (`VmRSS` in `/proc/self/status`), read
/// when scraped: what the replica really holds, beside what was planned.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Records `modelship_requests_total` and `modelship_request_duration_seconds`
/// by route template and status. Streams are timed to their first byte.
pub(crate) async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let started = Instant::now();
    let in_flight = InFlight::start();
    let resp = next.run(req).await;
    drop(in_flight);
    let status = resp.status().as_u16().to_string();
    metrics::counter!("modelship_requests_total", "route" => route.clone(), "status" => status.clone())
        .increment(1);
    metrics::histogram!("modelship_request_duration_seconds", "route" => route, "status" => status)
        .record(started.elapsed().as_secs_f64());
    resp
}

/// One request counted in `modelship_requests_in_flight` until dropped: a
/// client that goes away drops the handler's future mid-`await`, and the
/// count must come back down then too (it is the autoscaler's signal).
struct InFlight;

impl InFlight {
    fn start() -> Self {
        metrics::gauge!("modelship_requests_in_flight").increment(1.0);
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("modelship_requests_in_flight").decrement(1.0);
    }
}
