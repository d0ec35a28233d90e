//! `modelship_requests_in_flight` (the autoscaler's signal) comes back down
//! when a client goes away mid-request: the handler's future is dropped,
//! and the count must not stay up. Alone in its binary: the metrics
//! recorder is process-wide.

mod common;

use std::time::{Duration, Instant};

use common::*;
use std::io::Write;

/// The gauge's value in a `/metrics` text.
fn in_flight(metrics: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("modelship_requests_in_flight "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dropped_request_leaves_the_in_flight_count() {
    let base = spawn_server(smollm()).await;
    let addr = base.trim_start_matches("http://").to_owned();
    let client = reqwest::Client::new();
    let metrics = || async {
        let r = client.get(format!("{base}/metrics")).send().await.unwrap();
        in_flight(&r.text().await.unwrap())
    };
    // What a `/metrics` request sees with nothing else in flight.
    let idle = metrics().await;
    let body = r#"{"prompt": "Once upon a time", "max_tokens": 400, "temperature": 0}"#;
    for _ in 0..3 {
        let mut conn = std::net::TcpStream::connect(&addr).unwrap();
        let request = format!(
            "POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        conn.write_all(request.as_bytes()).unwrap();
        // Generating; then the client goes away without reading.
        tokio::time::sleep(Duration::from_millis(200)).await;
        drop(conn);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = metrics().await;
        if n == idle {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{n} requests counted in flight, {idle} when idle: the dropped ones stayed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
