//! Shared helpers: real engines on the real test models, and requests through
//! the in-process router.
#![allow(dead_code)]

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode, header::HeaderMap};
use http_body_util::BodyExt;
use modelship_engine::Engine;
use modelship_engine_candle::{LoadOptions, load};
use modelship_server::{AppState, recorder, router};
use modelship_types::ServingLimits;
use serde_json::Value;
use tower::ServiceExt;

pub fn load_engine(path: &std::path::Path, limits: ServingLimits) -> Arc<Engine> {
    let opts = LoadOptions {
        name: None,
        device: candle_core_cpu(),
        limits,
    };
    Arc::new(load(path, &opts).expect("load the test model"))
}

fn candle_core_cpu() -> modelship_engine_candle::Device {
    modelship_engine_candle::parse_device("cpu").expect("cpu")
}

/// One MiniLM engine shared by the tests of a binary (default limits).
pub fn minilm() -> Arc<Engine> {
    static E: OnceLock<Arc<Engine>> = OnceLock::new();
    E.get_or_init(|| load_engine(&modelship_testkit::minilm(), ServingLimits::default()))
        .clone()
}

/// One SmolLM2 engine shared by the tests of a binary.
pub fn smollm() -> Arc<Engine> {
    static E: OnceLock<Arc<Engine>> = OnceLock::new();
    E.get_or_init(|| {
        load_engine(
            &modelship_testkit::smollm(),
            ServingLimits {
                max_concurrent: 4,
                ..ServingLimits::default()
            },
        )
    })
    .clone()
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The error body's `param` and `type`, asserting the OpenAI shape.
    pub fn error(&self) -> (Option<String>, String, String) {
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string(), "error body without message: {v}");
        (
            e["param"].as_str().map(str::to_owned),
            e["type"].as_str().expect("type").to_owned(),
            e["message"].as_str().unwrap().to_owned(),
        )
    }
}

pub async fn send(engine: &Arc<Engine>, req: Request<Body>) -> Reply {
    send_to(AppState::new(engine.clone(), recorder()), req).await
}

pub async fn send_to(state: AppState, req: Request<Body>) -> Reply {
    let app = router(state);
    let resp = app.oneshot(req).await.expect("infallible router");
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes()
        .to_vec();
    Reply {
        status,
        headers,
        body,
    }
}

pub async fn post(engine: &Arc<Engine>, path: &str, body: impl Into<Body>) -> Reply {
    let req = Request::post(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap();
    send(engine, req).await
}

pub async fn post_json(engine: &Arc<Engine>, path: &str, body: Value) -> Reply {
    post(engine, path, body.to_string()).await
}

pub async fn get(engine: &Arc<Engine>, path: &str) -> Reply {
    send(engine, Request::get(path).body(Body::empty()).unwrap()).await
}

/// Vectors from an OpenAI embeddings response.
pub fn vectors(v: &Value) -> Vec<Vec<f32>> {
    v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| {
            d["embedding"]
                .as_array()
                .expect("float embedding")
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect()
        })
        .collect()
}

/// Serves `engine` on a real loopback socket; returns its base URL.
pub async fn spawn_server(engine: Arc<Engine>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let options = modelship_server::ServeOptions {
        drain: std::time::Duration::from_secs(5),
        api_key: None,
    };
    tokio::spawn(modelship_server::serve(
        listener,
        engine,
        std::future::pending(),
        options,
    ));
    format!("http://{addr}")
}
