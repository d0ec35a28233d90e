//! The readiness check, `GET /v2/health/ready`, and the metrics scrape,
//! `GET /metrics`, over a plain TCP connection (one request, `Connection:
//! close`), so probing needs no HTTP client.

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

/// Most bytes of a replica's `/metrics` read: its own exposition is a few KiB.
const METRICS_LIMIT: u64 = 1 << 20;

/// The Prometheus text the server at `endpoint` answers on `/metrics`
/// within `timeout`; `None` when it does not answer 200 in time.
pub async fn metrics(endpoint: &str, timeout: Duration) -> Option<String> {
    tokio::time::timeout(timeout, scrape(endpoint))
        .await
        .ok()
        .flatten()
}

async fn scrape(endpoint: &str) -> Option<String> {
    let mut stream = TcpStream::connect(endpoint).await.ok()?;
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {endpoint}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream
        .take(METRICS_LIMIT)
        .read_to_end(&mut answer)
        .await
        .ok()?;
    let text = String::from_utf8(answer).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    // axum answers `Connection: close` requests with a plain body unless it
    // is streamed; a chunked body is decoded here.
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return dechunk(body);
    }
    Some(body.to_owned())
}

/// A chunked body's data.
fn dechunk(mut body: &str) -> Option<String> {
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n")?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        if size == 0 {
            return Some(out);
        }
        out.push_str(rest.get(..size)?);
        body = rest.get(size..)?.strip_prefix("\r\n")?;
    }
}

#[cfg(test)]
mod tests {
    use super::dechunk;

    #[test]
    fn a_chunked_body_is_joined_and_a_cut_one_refused() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n").as_deref(),
            Some("hello world")
        );
        assert_eq!(dechunk("5\r\nhel"), None);
        assert_eq!(dechunk("zz\r\nhello\r\n"), None);
    }
}
