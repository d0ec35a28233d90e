//! The readiness check: `GET /v2/health/ready` over a plain TCP connection
//! (one request, `Connection: close`), so probing needs no HTTP client.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server at `endpoint` (host:port) answers 200 on its
/// readiness route within `timeout`.
pub async fn ready(endpoint: &str, timeout: Duration) -> bool {
    tokio::time::timeout(timeout, probe(endpoint))
        .await
        .unwrap_or(false)
}

async fn probe(endpoint: &str) -> bool {
    let Ok(mut stream) = TcpStream::connect(endpoint).await else {
        return false;
    };
    let request =
        format!("GET /v2/health/ready HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut head = [0u8; 12]; // "HTTP/1.1 200"
    stream.read_exact(&mut head).await.is_ok() && &head[9..12] == b"200"
}
