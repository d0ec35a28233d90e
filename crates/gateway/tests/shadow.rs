//! Shadow traffic through a real gateway over loopback, with two real HTTP
//! servers (axum) as the stable and the candidate revision: the client only
//! ever gets the stable revision's answer, every mirrored request is
//! compared, a failing candidate is counted as failing, and a candidate too
//! slow to keep up has samples dropped, counted, without slowing a client.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Json;
use axum::http::StatusCode;
use axum::routing::post;
use modelship_gateway::{Config, Gateway, Route, Share, serve};
use modelship_types::Mirror;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How a test replica answers `/v1/embeddings`.
#[derive(Clone, Copy)]
enum Answers {
    Vector([f32; 2]),
    Slowly([f32; 2], Duration),
    Error,
}

/// A replica answering embeddings requests as `answers` says; returns its
/// address and how many requests it got.
async fn replica(answers: Answers) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let app = axum::Router::new().route(
        "/v1/embeddings",
        post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, Ordering::SeqCst);
                let vector = match answers {
                    Answers::Vector(v) => v,
                    Answers::Slowly(v, wait) => {
                        tokio::time::sleep(wait).await;
                        v
                    }
                    Answers::Error => {
                        return (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            Json(json!({"error": "boom"})),
                        );
                    }
                };
                (
                    StatusCode::OK,
                    Json(json!({"object": "list", "data": [{"index": 0, "embedding": vector}]})),
                )
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// A gateway with deployment `m`: revision 1 at `stable` takes all traffic,
/// revision 2 at `candidate` none, every request mirrored.
fn gateway(stable: &str, candidate: &str) -> (Gateway, String, watch::Sender<bool>) {
    let gateway = Gateway::new(Config::default(), None);
    let route = |revision, replica: &str, endpoint: &str| Route {
        deployment: "m".into(),
        revision,
        replica: replica.into(),
        endpoint: endpoint.into(),
    };
    gateway.set_routes(
        &[route(1, "m-1", stable), route(2, "m-2", candidate)],
        &HashMap::from([
            (("m".to_owned(), 1), Share::weight(100)),
            (("m".to_owned(), 2), Share::weight(0)),
        ]),
    );
    gateway.set_mirrors(HashMap::from([("m".to_owned(), MIRROR)]));
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
    (gateway, format!("http://{addr}/v1/embeddings"), stop)
}

const MIRROR: Mirror = Mirror {
    stable: 1,
    candidate: 2,
    percent: 100.0,
};

async fn embed(client: &reqwest::Client, url: &str, i: usize) -> Value {
    let r = client
        .post(url)
        .json(&json!({"model": "m", "input": format!("text {i}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Waits until `n` requests have been compared (or failed).
async fn compared(gateway: &Gateway, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while gateway.live_count("m", &MIRROR) < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} compared",
            gateway.live_count("m", &MIRROR)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_get_the_stable_answer_and_every_mirrored_one_is_compared() {
    let (stable, stable_seen) = replica(Answers::Vector([1.0, 0.0])).await;
    let (candidate, candidate_seen) = replica(Answers::Vector([0.6, 0.8])).await;
    let (gateway, url, _stop) = gateway(&stable, &candidate);
    let client = reqwest::Client::new();
    for i in 0..40 {
        let v = embed(&client, &url, i).await;
        assert_eq!(
            v["data"][0]["embedding"],
            json!([1.0, 0.0]),
            "a client got the candidate's answer"
        );
    }
    compared(&gateway, 40).await;
    let live = gateway.live_since("m", &MIRROR, 0);
    assert_eq!((live.samples, live.failed), (40, 0));
    let cosine = live.cosine.unwrap();
    assert!(
        (cosine.mean - 0.6).abs() < 1e-6 && (cosine.min - 0.6).abs() < 1e-6,
        "{cosine:?}"
    );
    // The stable revision answered each request once (its answer was kept
    // as it passed), the candidate got each mirrored copy.
    assert_eq!(stable_seen.load(Ordering::SeqCst), 40);
    assert_eq!(candidate_seen.load(Ordering::SeqCst), 40);
    // A window after the first 30: the last 10 only.
    assert_eq!(gateway.live_since("m", &MIRROR, 30).samples, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_candidate_counts_as_failing_and_clients_never_see_it() {
    let (stable, _) = replica(Answers::Vector([1.0, 0.0])).await;
    let (candidate, _) = replica(Answers::Error).await;
    let (gateway, url, _stop) = gateway(&stable, &candidate);
    let client = reqwest::Client::new();
    for i in 0..10 {
        embed(&client, &url, i).await;
    }
    compared(&gateway, 10).await;
    let live = gateway.live_since("m", &MIRROR, 0);
    assert_eq!((live.samples, live.failed), (0, 10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_candidate_has_samples_dropped_without_slowing_a_client() {
    let (stable, _) = replica(Answers::Vector([1.0, 0.0])).await;
    let (candidate, _) = replica(Answers::Slowly([1.0, 0.0], Duration::from_secs(2))).await;
    let (gateway, url, _stop) = gateway(&stable, &candidate);
    let client = reqwest::Client::new();
    let slowest = Arc::new(std::sync::Mutex::new(Duration::ZERO));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (client, url, slowest) = (client.clone(), url.clone(), slowest.clone());
            tokio::spawn(async move {
                for i in 0..20 {
                    let t = Instant::now();
                    embed(&client, &url, c * 100 + i).await;
                    let took = t.elapsed();
                    let mut s = slowest.lock().unwrap();
                    *s = (*s).max(took);
                }
            })
        })
        .collect();
    for c in clients {
        c.await.unwrap();
    }
    // 160 requests in far less than one slow answer: the queue filled and
    // the rest were dropped, counted; no client waited for the candidate.
    let slowest = *slowest.lock().unwrap();
    assert!(
        slowest < Duration::from_millis(1500),
        "a client waited {slowest:?}"
    );
    let dropped = gateway.shadow_dropped();
    assert!(dropped > 0, "nothing dropped");
    let kept = 160 - dropped;
    compared(&gateway, kept).await;
    assert_eq!(gateway.live_since("m", &MIRROR, 0).samples, kept);
}
