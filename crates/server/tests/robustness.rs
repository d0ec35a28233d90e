//! A replica under the failures an adversary or bad luck brings, on a real
//! socket with the real MiniLM: an engine that dies, clients that send half
//! a request or hold a connection idle, and one huge request among small
//! ones.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use modelship_engine::{BackendError, EncodeBackend, Engine, Sequence};
use modelship_engine_candle::EncoderBackend;
use modelship_server::ServeOptions;
use modelship_types::ServingLimits;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The real backend, with a fault: a batch holding a sequence longer than
/// `panics_over` tokens trips an assertion, as a kernel handed a shape it
/// cannot take once did.
struct Faulty {
    inner: EncoderBackend,
    panics_over: usize,
}

impl EncodeBackend for Faulty {
    fn encode(&mut self, batch: &[&Sequence]) -> Result<Vec<Vec<f32>>, BackendError> {
        let longest = batch.iter().map(|s| s.len()).max().unwrap_or(0);
        assert!(longest <= self.panics_over, "a {longest}-token sequence");
        self.inner.encode(batch)
    }
}

fn minilm_engine(limits: ServingLimits, panics_over: usize) -> Arc<Engine> {
    let backend = Faulty {
        inner: minilm_backend(),
        panics_over,
    };
    minilm_engine_around(backend, limits)
}

fn options() -> ServeOptions {
    ServeOptions::new(Duration::from_secs(5), Vec::new())
}

async fn status(client: &reqwest::Client, url: String) -> u16 {
    client.get(url).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_engine_makes_the_replica_unready_and_serve_fail() {
    let engine = minilm_engine(ServingLimits::default(), 16);
    let (base, served) = spawn_server_with(engine, options()).await;
    let client = reqwest::Client::new();
    let embed = |text: String| {
        client
            .post(format!("{base}/v1/embeddings"))
            .json(&json!({ "input": text }))
            .send()
    };
    assert_eq!(
        status(&client, format!("{base}/v2/health/ready")).await,
        200
    );
    assert_eq!(embed("short".into()).await.unwrap().status(), 200);

    // The backend panics: this request fails, and so would every later one.
    let killed = embed("a sentence long enough to trip the fault ".repeat(4))
        .await
        .unwrap();
    assert_eq!(killed.status(), 503);

    // serve returns an error naming the panic (the binary exits 1 with it),
    // and until then readiness is refused.
    let outcome = tokio::time::timeout(Duration::from_secs(20), served)
        .await
        .expect("serve returned after its engine died")
        .unwrap();
    let err = outcome.expect_err("a dead engine is an error");
    let message = err.to_string();
    assert!(
        message.contains("the engine thread panicked") && message.contains("token sequence"),
        "{message}"
    );
    assert!(
        client
            .get(format!("{base}/v2/health/ready"))
            .send()
            .await
            .is_err(),
        "the listener is closed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_follows_the_engine_thread() {
    let engine = minilm_engine(ServingLimits::default(), 16);
    let state = modelship_server::AppState::new(engine.clone(), modelship_server::recorder());
    assert!(state.is_ready());
    let long = "words that overflow the fault's bound ".repeat(4);
    assert!(engine.embed(&[long], false).await.is_err());
    let why = tokio::time::timeout(Duration::from_secs(10), engine.stopped())
        .await
        .unwrap();
    assert!(why.contains("panicked"), "{why}");
    assert!(!state.is_ready());
    let ready = get(&engine, "/v2/health/ready").await;
    assert_eq!(ready.status, 503);
}

/// Reads until the server closes the connection (or `within` passes);
/// returns what arrived.
async fn read_until_closed(conn: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        let mut chunk = [0u8; 4096];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, conn.read(&mut chunk)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&chunk[..n]),
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn half_sent_and_idle_connections_are_closed() {
    let engine = minilm_engine(ServingLimits::default(), usize::MAX);
    let options = ServeOptions {
        header_timeout: Duration::from_millis(400),
        body_timeout: Duration::from_millis(400),
        ..options()
    };
    let (base, _served) = spawn_server_with(engine, options).await;
    let addr = base.trim_start_matches("http://").to_owned();

    // Half a head: closed once the header timeout passes.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: r\r\nContent-")
        .await
        .unwrap();
    let started = Instant::now();
    assert!(
        read_until_closed(&mut conn, Duration::from_secs(5))
            .await
            .is_some(),
        "a half-sent head kept its connection"
    );
    assert!(started.elapsed() >= Duration::from_millis(300));

    // A whole head and a tenth of its body: 408, then closed.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"POST /v1/embeddings HTTP/1.1\r\nHost: r\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"input\":")
        .await
        .unwrap();
    let answer = read_until_closed(&mut conn, Duration::from_secs(5))
        .await
        .expect("a stalled body kept its connection");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("did not arrive"), "{answer}");

    // A kept-alive connection that goes idle after its answer.
    let mut conn = TcpStream::connect(&addr).await.unwrap();
    conn.write_all(b"GET /v2/health/live HTTP/1.1\r\nHost: r\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut conn, Duration::from_secs(5))
        .await
        .expect("an idle connection stayed open");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_huge_request_does_not_hold_back_a_small_one() {
    // Passes of ~35 texts: the huge request needs fifteen.
    let limits = ServingLimits {
        max_inputs: 512,
        max_batch_tokens: 2048,
        ..ServingLimits::default()
    };
    let engine = minilm_engine(limits, usize::MAX);
    let base = spawn_server(engine).await;
    let client = reqwest::Client::new();
    let texts: Vec<String> = (0..512)
        .map(|i| {
            format!(
                "document {i}: {}",
                "a long passage about many things ".repeat(8)
            )
        })
        .collect();
    let url = format!("{base}/v1/embeddings");
    let huge = {
        let (client, url) = (client.clone(), url.clone());
        tokio::spawn(async move {
            let r = client
                .post(url)
                .json(&json!({ "input": texts }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            Instant::now()
        })
    };
    // Let the huge request reach the engine first.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let small_sent = Instant::now();
    let r = client
        .post(&url)
        .json(&json!({ "input": "one word" }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let small_done = Instant::now();
    let huge_done = huge.await.unwrap();
    let lead = huge_done.saturating_duration_since(small_done);
    let took = small_done - small_sent;
    eprintln!("the one-word request took {took:?} and finished {lead:?} before the huge one");
    // Taking turns, it joins the second pass of fifteen: well inside the
    // first half of the huge request's time (in line, it would finish last).
    assert!(
        lead > took,
        "the one-word request waited for most of the 512 texts"
    );
}
