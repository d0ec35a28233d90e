//! The gateway's HTTP/1.1 handling, end to end over loopback: a raw TCP
//! client in front, a real HTTP server (axum on hyper) as the replica behind.
//! What a general-purpose client library would hide is written out byte by
//! byte here: pipelining, `Expect: 100-continue`, chunked request bodies,
//! an HTTP/1.0 client of a chunked stream, hop-by-hop fields, malformed and
//! oversized requests, and a replica restarted under kept-alive connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, Uri};
use axum::routing::{any, get};
use modelship_gateway::{Config, Gateway, Route, serve};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};

/// What the replica saw of a request.
async fn echo(method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Json<Value> {
    let h = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    Json(json!({
        "method": method.as_str(), "uri": uri.to_string(), "host": h("host"),
        "authorization": h("authorization"), "connection": h("connection"),
        "expect": h("expect"), "transfer_encoding": h("transfer-encoding"),
        "content_length": h("content-length"), "custom": h("x-custom"),
        "secret": h("x-secret"), "body": body.len(),
    }))
}

/// Five events, 20 ms apart, in the chunked coding.
async fn stream() -> Body {
    let events = futures::stream::unfold(0, |i| async move {
        if i == 5 {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        Some((Ok::<_, std::io::Error>(format!("data: {i}\n\n")), i + 1))
    });
    Body::from_stream(events)
}

/// Slow requests the replica began, and those dropped before their end.
static SLOW_BEGUN: AtomicUsize = AtomicUsize::new(0);
static SLOW_DROPPED: AtomicUsize = AtomicUsize::new(0);

/// Counts itself dropped unless `finished`.
struct Abandoned {
    finished: bool,
}

impl Drop for Abandoned {
    fn drop(&mut self) {
        if !self.finished {
            SLOW_DROPPED.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// Answers after 10 s, as a long non-streamed generation does.
async fn slow() -> &'static str {
    SLOW_BEGUN.fetch_add(1, Ordering::SeqCst);
    let mut guard = Abandoned { finished: false };
    tokio::time::sleep(Duration::from_secs(10)).await;
    guard.finished = true;
    "done"
}

/// The replica: serves on `listener` until `stop` fires.
fn replica(listener: TcpListener) -> oneshot::Sender<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    let app = axum::Router::new()
        .route("/v2/models/echo/stream", get(stream))
        .route("/v2/models/echo/slow", get(slow))
        .fallback(any(echo));
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
    });
    stop
}

struct Setup {
    gateway: Gateway,
    addr: SocketAddr,
    replica: SocketAddr,
    _stop: watch::Sender<bool>,
}

async fn setup(config: Config) -> (Setup, oneshot::Sender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica_addr = listener.local_addr().unwrap();
    let stop_replica = replica(listener);
    (gateway_to(replica_addr, config), stop_replica)
}

/// A gateway on one thread routing deployment `echo` to `replica_addr`.
fn gateway_to(replica_addr: SocketAddr, config: Config) -> Setup {
    let gateway = Gateway::new(config, None);
    gateway.set_routes(
        &[Route {
            deployment: "echo".into(),
            revision: 1,
            replica: "echo-1-a".into(),
            endpoint: replica_addr.to_string(),
        }],
        &HashMap::new(),
    );
    let (stop, stopped) = watch::channel(false);
    let (addr, serving) = serve(
        gateway.clone(),
        "127.0.0.1:0".parse().unwrap(),
        1,
        None,
        stopped,
    )
    .unwrap();
    tokio::spawn(serving);
    Setup {
        gateway,
        addr,
        replica: replica_addr,
        _stop: stop,
    }
}

/// A response read off a raw connection.
#[derive(Debug)]
struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {:?}", String::from_utf8_lossy(&self.body));
        })
    }
}

/// Reads one response from `conn` (bytes past it stay in `buf`): a
/// content-length body, a chunked one (decoded), or one up to the close.
async fn read_response(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Response {
    let deadline = Instant::now() + Duration::from_secs(10);
    let more = async |conn: &mut TcpStream, buf: &mut Vec<u8>| -> bool {
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout_at(deadline.into(), conn.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .unwrap();
        buf.extend_from_slice(&chunk[..n]);
        n > 0
    };
    let (status, headers, used) = loop {
        let mut fields = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut fields);
        if let httparse::Status::Complete(used) = r.parse(buf).unwrap() {
            let headers: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_owned(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            break (r.code.unwrap(), headers, used);
        }
        assert!(more(conn, buf).await, "closed within a response head");
    };
    buf.drain(..used);
    let mut response = Response {
        status,
        headers,
        body: Vec::new(),
    };
    if let Some(n) = response.header("content-length") {
        let n: usize = n.parse().unwrap();
        while buf.len() < n {
            assert!(more(conn, buf).await, "closed within a body");
        }
        response.body = buf.drain(..n).collect();
    } else if response.header("transfer-encoding") == Some("chunked") {
        loop {
            let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
                assert!(more(conn, buf).await);
                continue;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..eol]).unwrap(), 16).unwrap();
            while buf.len() < eol + 2 + size + 2 {
                assert!(more(conn, buf).await);
            }
            response
                .body
                .extend_from_slice(&buf[eol + 2..eol + 2 + size]);
            buf.drain(..eol + 2 + size + 2);
            if size == 0 {
                break;
            }
        }
    } else if status >= 200 && status != 204 && status != 304 {
        while more(conn, buf).await {}
        response.body = std::mem::take(buf);
    }
    response
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.unwrap()
}

/// Whether the peer has closed `conn` (within a second).
async fn closed(conn: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), conn.read(&mut byte)).await,
        Ok(Ok(0) | Err(_))
    )
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_with_this_hops_fields_rewritten() {
    let (s, _replica) = setup(Config::default()).await;
    let mut conn = connect(s.addr).await;
    let body = r#"{"model": "echo", "input": "x"}"#;
    let two = format!(
        "POST /v1/embeddings?q=1 HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\
         X-Custom: kept\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\n\
         X-Secret: this hop only\r\n\r\n{body}\
         GET /v2/models/echo/ready HTTP/1.1\r\nHost: gw\r\n\r\n",
        body.len()
    );
    conn.write_all(two.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let first = read_response(&mut conn, &mut buf).await.json();
    assert_eq!(first["method"], "POST");
    assert_eq!(first["uri"], "/v1/embeddings?q=1");
    assert_eq!(
        first["host"],
        s.replica.to_string(),
        "Host names the replica"
    );
    assert_eq!(first["custom"], "kept");
    assert_eq!(first["connection"], Value::Null, "Connection is this hop's");
    assert_eq!(first["secret"], Value::Null, "so is what Connection names");
    assert_eq!(first["content_length"], body.len().to_string());
    assert_eq!(first["body"], body.len());
    let second = read_response(&mut conn, &mut buf).await.json();
    assert_eq!(second["method"], "GET");
    assert_eq!(second["uri"], "/v2/models/echo/ready");
    assert_eq!(second["content_length"], Value::Null, "no body, no length");
    assert!(buf.is_empty());
}

#[tokio::test]
async fn expect_continue_and_chunked_bodies_reach_the_replica_whole() {
    let (s, _replica) = setup(Config::default()).await;
    let mut conn = connect(s.addr).await;
    let body = format!(r#"{{"model": "echo", "input": "{}"}}"#, "y".repeat(3000));
    let head = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        body.len()
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    // The go-ahead comes before any byte of the body is sent.
    let mut buf = Vec::new();
    let interim = read_response(&mut conn, &mut buf).await;
    assert_eq!(interim.status, 100);
    conn.write_all(body.as_bytes()).await.unwrap();
    let seen = read_response(&mut conn, &mut buf).await.json();
    assert_eq!(seen["body"], body.len());
    assert_eq!(
        seen["expect"],
        Value::Null,
        "the gateway already answered it"
    );

    // The same body in three chunks, with an extension and a trailer.
    let (a, rest) = body.split_at(10);
    let (b, c) = rest.split_at(1000);
    let chunked = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n\
         {:x};ext=1\r\n{a}\r\n{:x}\r\n{b}\r\n{:x}\r\n{c}\r\n0\r\nX-Trailer: 1\r\n\r\n",
        a.len(),
        b.len(),
        c.len()
    );
    conn.write_all(chunked.as_bytes()).await.unwrap();
    let seen = read_response(&mut conn, &mut buf).await.json();
    assert_eq!(seen["body"], body.len());
    assert_eq!(seen["content_length"], body.len().to_string());
    assert_eq!(seen["transfer_encoding"], Value::Null);
}

#[tokio::test]
async fn streams_pass_through_chunked_and_decoded_for_http_1_0() {
    let (s, _replica) = setup(Config::default()).await;
    let expected: String = (0..5).map(|i| format!("data: {i}\n\n")).collect();

    let mut conn = connect(s.addr).await;
    conn.write_all(b"GET /v2/models/echo/stream HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let chunked = read_response(&mut conn, &mut buf).await;
    assert_eq!(chunked.header("transfer-encoding"), Some("chunked"));
    assert_eq!(String::from_utf8(chunked.body).unwrap(), expected);
    // The connection carries the next request.
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut conn, &mut buf).await.body, b"ok");

    // HTTP/1.0 has no chunked coding: the body comes decoded, ended by the close.
    let mut old = connect(s.addr).await;
    old.write_all(b"GET /v2/models/echo/stream HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let plain = read_response(&mut old, &mut buf).await;
    assert_eq!(plain.header("transfer-encoding"), None);
    assert_eq!(plain.header("connection"), Some("close"));
    assert_eq!(String::from_utf8(plain.body).unwrap(), expected);
}

#[tokio::test]
async fn bad_requests_are_answered_and_closed() {
    let config = Config {
        max_body_bytes: 1000,
        ..Config::default()
    };
    let (s, _replica) = setup(config).await;
    let cases: [(&[u8], u16); 4] = [
        (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
        (
            b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 1001\r\n\r\n",
            413,
        ),
        (
            b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            400,
        ),
        (
            b"POST /v1/embeddings HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            400,
        ),
    ];
    for (request, status) in cases {
        let mut conn = connect(s.addr).await;
        conn.write_all(request).await.unwrap();
        let mut buf = Vec::new();
        let r = read_response(&mut conn, &mut buf).await;
        let what = String::from_utf8_lossy(request);
        assert_eq!(r.status, status, "{what}");
        assert_eq!(r.header("connection"), Some("close"), "{what}");
        assert!(r.json()["error"]["message"].is_string(), "{what}");
        assert!(closed(&mut conn).await, "{what}: still open");
    }
    // Too large in chunks: counted as they are decoded.
    let mut conn = connect(s.addr).await;
    let chunk = "a".repeat(600);
    let request = format!(
        "POST /v1/embeddings HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n258\r\n{chunk}\r\n258\r\n{chunk}\r\n0\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    assert_eq!(read_response(&mut conn, &mut buf).await.status, 413);
}

#[tokio::test]
async fn a_request_that_stalls_gets_408_but_an_idle_connection_waits() {
    let config = Config {
        request_timeout: Duration::from_millis(200),
        ..Config::default()
    };
    let (s, _replica) = setup(config).await;
    let stalls: [&[u8]; 3] = [
        b"GET /v2/models/echo/ready HTTP/1.1\r\nHost: g",
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 10\r\n\r\n{\"mo",
        // The whole head and not a byte of its body.
        b"POST /v1/embeddings HTTP/1.1\r\nContent-Length: 10\r\n\r\n",
    ];
    for stall in stalls {
        let mut conn = connect(s.addr).await;
        conn.write_all(stall).await.unwrap();
        let started = Instant::now();
        let r = read_response(&mut conn, &mut Vec::new()).await;
        assert_eq!(r.status, 408, "{:?}", String::from_utf8_lossy(stall));
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(closed(&mut conn).await);
    }
    // Between requests a kept-alive connection has no such limit.
    let mut conn = connect(s.addr).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut conn, &mut Vec::new()).await.status, 200);
}

/// Sends `bytes` one every 100 ms (stopping when the gateway closes the
/// connection) and returns its answer's status and how long it took.
async fn trickled(addr: SocketAddr, prefix: &[u8], bytes: &[u8]) -> (u16, Duration) {
    let mut conn = connect(addr).await;
    conn.write_all(prefix).await.unwrap();
    let started = Instant::now();
    for byte in bytes {
        if conn.write_all(&[*byte]).await.is_err() || started.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let r = read_response(&mut conn, &mut Vec::new()).await;
    (r.status, started.elapsed())
}

#[tokio::test]
async fn a_slow_head_and_an_idle_connection_are_closed() {
    let config = Config {
        request_timeout: Duration::from_millis(500),
        idle_timeout: Duration::from_millis(300),
        ..Config::default()
    };
    let (s, _replica) = setup(config).await;
    // A byte every 100 ms never stalls one read, but the head as a whole
    // has 500 ms, and so does the body after a whole head.
    let head = b"GET /v2/models/echo/ready HTTP/1.1\r\nHost: gateway\r\nX-Pad: aaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    let body_head = b"POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nContent-Length: 40\r\n\r\n";
    for (prefix, trickle) in [(&b""[..], &head[..]), (&body_head[..], &[b'x'; 40][..])] {
        let (status, took) = trickled(s.addr, prefix, trickle).await;
        assert_eq!(status, 408);
        assert!(took < Duration::from_secs(2), "{took:?}");
    }

    // After its answer, a kept-alive connection has the idle timeout.
    let mut conn = connect(s.addr).await;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    assert_eq!(read_response(&mut conn, &mut Vec::new()).await.status, 200);
    let idle = Instant::now();
    assert!(closed(&mut conn).await, "an idle connection stayed open");
    assert!(idle.elapsed() >= Duration::from_millis(250));
}

#[tokio::test]
async fn a_client_that_leaves_stops_its_request_on_the_replica() {
    let (s, _replica) = setup(Config::default()).await;
    let mut conn = connect(s.addr).await;
    conn.write_all(b"GET /v2/models/echo/slow HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while SLOW_BEGUN.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "the replica got the request");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(conn);
    // The gateway closes its replica connection, and the replica drops
    // the request's work, long before the 10 s it would take.
    let left = Instant::now();
    while SLOW_DROPPED.load(Ordering::SeqCst) == 0 {
        assert!(
            left.elapsed() < Duration::from_secs(3),
            "the replica kept working for a client that left"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_restarted_replica_costs_no_request_and_no_failure() {
    let (s, stop_replica) = setup(Config::default()).await;
    let mut conn = connect(s.addr).await;
    let request = b"GET /v2/models/echo/ready HTTP/1.1\r\nHost: gw\r\n\r\n";
    let mut buf = Vec::new();
    // Two kept-alive connections to the replica in the pool.
    let mut other = connect(s.addr).await;
    conn.write_all(request).await.unwrap();
    other.write_all(request).await.unwrap();
    assert_eq!(read_response(&mut conn, &mut buf).await.status, 200);
    assert_eq!(read_response(&mut other, &mut Vec::new()).await.status, 200);

    // The replica restarts on the same port: its idle connections close.
    stop_replica.send(()).unwrap();
    let listener = loop {
        match TcpListener::bind(s.replica).await {
            Ok(l) => break l,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    };
    let _replica = replica(listener);

    for _ in 0..3 {
        conn.write_all(request).await.unwrap();
        let r = read_response(&mut conn, &mut buf).await;
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    }
    let table = s.gateway.table();
    let endpoint = &table.deployments["echo"][0].endpoints[0];
    assert_eq!(endpoint.consecutive_failures.load(Ordering::Relaxed), 0);
    // The gateway's task finishes its bookkeeping just after the client
    // has the last byte.
    let deadline = Instant::now() + Duration::from_secs(2);
    while endpoint.outstanding.load(Ordering::Relaxed) != 0 {
        assert!(
            Instant::now() < deadline,
            "a request still counts as outstanding"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stats = s.gateway.stats();
    let errors = stats.get("echo", 1).map(|r| r.errors);
    assert_eq!(
        errors,
        Some(0),
        "stale connections are not the replica's errors"
    );
}

#[tokio::test]
async fn a_replica_connection_out_of_step_is_not_reused() {
    // A replica that sends bytes past the length it declared.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica_addr = listener.local_addr().unwrap();
    let (accepted_tx, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = listener.accept().await.unwrap();
            accepted_tx.send(()).unwrap();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                while conn.read(&mut request).await.is_ok_and(|n| n > 0) {
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA";
                    if conn.write_all(answer).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    let s = gateway_to(replica_addr, Config::default());
    let mut conn = connect(s.addr).await;
    let mut buf = Vec::new();
    for _ in 0..2 {
        conn.write_all(b"GET /v2/models/echo/ready HTTP/1.1\r\nHost: gw\r\n\r\n")
            .await
            .unwrap();
        assert_eq!(read_response(&mut conn, &mut buf).await.body, b"ok");
    }
    let mut connections = 0;
    while accepted.try_recv().is_ok() {
        connections += 1;
    }
    assert_eq!(connections, 2, "one replica connection per response");
}

#[tokio::test]
async fn a_replica_that_is_gone_gets_a_bad_gateway_after_the_attempts() {
    let (s, stop_replica) = setup(Config::default()).await;
    stop_replica.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut conn = connect(s.addr).await;
    conn.write_all(b"GET /v2/models/echo/ready HTTP/1.1\r\nHost: gw\r\n\r\n")
        .await
        .unwrap();
    let r = read_response(&mut conn, &mut Vec::new()).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.json()["error"]["type"], "server_error");
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable");
}

/// A POST for deployment `model` on a fresh connection: its status and body.
async fn post_model(addr: SocketAddr, model: &str) -> (u16, Value) {
    let mut conn = connect(addr).await;
    let body = format!(r#"{{"model":"{model}","input":"x"}}"#);
    let request = format!(
        "POST /v1/embeddings HTTP/1.1\r\nHost: gw\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let r = read_response(&mut conn, &mut Vec::new()).await;
    (r.status, r.json())
}

#[tokio::test]
async fn requests_for_a_deployment_at_zero_wait_for_it_boundedly() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica_addr = listener.local_addr().unwrap();
    let _replica = replica(listener);
    let config = Config {
        hold_timeout: Duration::from_millis(400),
        max_held: 2,
        ..Config::default()
    };
    let s = gateway_to(replica_addr, config);
    // `sleepy` exists (a share) but has no ready replica.
    let shares = HashMap::from([(
        ("sleepy".to_owned(), 1),
        modelship_gateway::Share::weight(1),
    )]);
    s.gateway.set_routes(&[], &shares);
    // Not waking: a 503 at once, as before.
    let started = Instant::now();
    assert_eq!(post_model(s.addr, "sleepy").await.0, 503);
    assert!(started.elapsed() < Duration::from_millis(300));

    s.gateway.set_waking(["sleepy".to_owned()].into());
    let holding = s.gateway.holding();
    // Waking: held, and answered by the replica once it is routed.
    let waiter = tokio::spawn(post_model(s.addr, "sleepy"));
    tokio::time::timeout(Duration::from_secs(2), holding.notified())
        .await
        .expect("the controller is told a request waits");
    assert_eq!(s.gateway.held("sleepy"), 1);
    s.gateway.set_routes(
        &[Route {
            deployment: "sleepy".into(),
            revision: 1,
            replica: "sleepy-1-a".into(),
            endpoint: replica_addr.to_string(),
        }],
        &shares,
    );
    let (status, body) = waiter.await.unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.gateway.held("sleepy"), 0, "the count came back down");

    // Never woken: 503 after the hold timeout; beyond `max_held` waiting,
    // 503 at once.
    s.gateway.set_routes(&[], &shares);
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(post_model(s.addr, "sleepy")))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(2);
    while s.gateway.held("sleepy") < 2 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (status, body) = post_model(s.addr, "sleepy").await;
    assert_eq!(status, 503);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already wait")
    );
    for h in held {
        let (status, body) = h.await.unwrap();
        assert_eq!(status, 503);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("did not wake within"),
            "{body}"
        );
    }
    assert_eq!(s.gateway.held("sleepy"), 0);
}
