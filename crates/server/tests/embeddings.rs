//! /v1/embeddings and /v2 infer on the real all-MiniLM-L6-v2, checked against
//! an independent numpy implementation of BERT.

mod common;

use std::sync::{Arc, Mutex};

use base64::Engine as _;
use common::*;
use modelship_engine::{BackendError, EncodeBackend, Engine, Sequence};
use modelship_engine_candle::EncoderBackend;
use modelship_types::ServingLimits;
use serde_json::json;

#[tokio::test(flavor = "multi_thread")]
async fn embeddings_match_an_independent_reference() {
    let engine = minilm();
    let inputs = varied_inputs();
    assert!(inputs.len() >= 20);
    // One request with every input (a batch of mixed lengths)...
    let batched = post_json(&engine, "/v1/embeddings", json!({"input": inputs})).await;
    assert_eq!(batched.status, 200, "{}", batched.text());
    let batched = vectors(&batched.json());
    // ...and a few alone, so padding cannot hide in both.
    let reference = modelship_testkit::reference_embeddings(&modelship_testkit::minilm(), &inputs);
    for (i, (ours, theirs)) in batched.iter().zip(&reference).enumerate() {
        let c = modelship_testkit::cosine(ours, theirs);
        assert!(c >= 0.9999, "input {i} {:?}: cosine {c}", inputs[i]);
        let norm: f32 = ours.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!(
            (norm - 1.0).abs() < 1e-4,
            "normalized per modules.json: {norm}"
        );
    }
    for i in [0, 5, 21] {
        let alone = post_json(&engine, "/v1/embeddings", json!({"input": inputs[i]})).await;
        let alone = vectors(&alone.json());
        let c = modelship_testkit::cosine(&alone[0], &reference[i]);
        assert!(c >= 0.9999, "input {i} alone: cosine {c}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn response_has_the_openai_shape_and_usage() {
    let engine = minilm();
    let r = post_json(
        &engine,
        "/v1/embeddings",
        json!({"input": ["hello world", "hi"], "model": "all-MiniLM-L6-v2"}),
    )
    .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], "all-MiniLM-L6-v2");
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["object"], "embedding");
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 384);
    // [CLS] hello world [SEP] + [CLS] hi [SEP]
    assert_eq!(v["usage"]["prompt_tokens"], 7);
    assert_eq!(v["usage"]["total_tokens"], 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn base64_encoding_carries_the_same_floats() {
    let engine = minilm();
    let float = post_json(&engine, "/v1/embeddings", json!({"input": "same text"})).await;
    let b64 = post_json(
        &engine,
        "/v1/embeddings",
        json!({"input": "same text", "encoding_format": "base64"}),
    )
    .await;
    assert_eq!(b64.status, 200);
    let s = b64.json()["data"][0]["embedding"]
        .as_str()
        .expect("a base64 string")
        .to_owned();
    let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(decoded, vectors(&float.json())[0]);
}

#[tokio::test(flavor = "multi_thread")]
async fn over_long_input_is_a_4xx_unless_truncation_is_asked() {
    let engine = minilm();
    let long = "word ".repeat(600);
    let r = post_json(&engine, "/v1/embeddings", json!({"input": ["short", long]})).await;
    assert_eq!(r.status, 400);
    let (param, kind, message) = r.error();
    assert_eq!(param.as_deref(), Some("input"));
    assert_eq!(kind, "invalid_request_error");
    assert!(
        message.contains("input[1] has 602 tokens") && message.contains("512"),
        "{message}"
    );

    let r = post_json(
        &engine,
        "/v1/embeddings",
        json!({"input": long, "truncate": true}),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["usage"]["prompt_tokens"], 512);
    // Truncation keeps the first tokens: same vector as the text cut by hand.
    let cut = "word ".repeat(510);
    let by_hand = post_json(&engine, "/v1/embeddings", json!({"input": cut})).await;
    let c = modelship_testkit::cosine(&vectors(&r.json())[0], &vectors(&by_hand.json())[0]);
    assert!(c > 0.99999, "{c}");
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_name_the_field() {
    let engine = minilm();
    let cases = [
        (json!({"input": 5}), Some("input")),
        (json!({"input": [1, "a"]}), Some("input")),
        (json!({"input": ["a", 1]}), Some("input")),
        (json!({"input": [[1], 2]}), Some("input")),
        (json!({"input": [99_999_999]}), Some("input")),
        (json!({"input": [[]]}), Some("input")),
        (json!({"input": []}), Some("input")),
        (json!({"input": ""}), Some("input")),
        (
            json!({"input": "x", "encoding_format": "hex"}),
            Some("encoding_format"),
        ),
        (json!({"input": "x", "dimensions": 385}), Some("dimensions")),
        (json!({"input": "x", "dimensions": 0}), Some("dimensions")),
        (
            json!({"input": "x", "prompt_name": "query"}),
            Some("prompt_name"),
        ),
        (json!({"input": "x", "truncate": "yes"}), Some("truncate")),
        (json!({"input": "x", "bogus": 1}), None),
        (json!({}), None),
    ];
    for (body, param) in cases {
        let r = post_json(&engine, "/v1/embeddings", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let (p, kind, message) = r.error();
        assert_eq!(kind, "invalid_request_error");
        if let Some(param) = param {
            assert_eq!(p.as_deref(), Some(param), "{body}: {message}");
        }
    }
    let r = post(&engine, "/v1/embeddings", "{\"input\": ").await;
    assert_eq!(r.status, 400);
    assert!(r.error().2.contains("not valid JSON"));
    // A null field is valid JSON: `encoding_format: null` is the default,
    // and a null where a value is required is named as a null.
    let r = post_json(
        &engine,
        "/v1/embeddings",
        json!({"input": "x", "encoding_format": null}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["data"][0]["embedding"].is_array());
    let r = post_json(&engine, "/v1/embeddings", json!({"input": null})).await;
    assert_eq!(r.status, 400);
    let (param, _, message) = r.error();
    assert_eq!(param.as_deref(), Some("input"), "{message}");
    assert!(
        message.contains("null") && !message.contains("not valid JSON"),
        "{message}"
    );
    let r = post_json(
        &engine,
        "/v1/embeddings",
        json!({"input": "x", "model": "other"}),
    )
    .await;
    assert_eq!(r.status, 404);
    let r = post_json(&engine, "/v1/completions", json!({"prompt": "x"})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error().0.as_deref(), Some("model"));
}

#[tokio::test(flavor = "multi_thread")]
async fn body_size_and_input_count_are_limited() {
    let engine = load_engine(
        &modelship_testkit::minilm(),
        ServingLimits {
            max_body_bytes: 1024,
            max_inputs: 3,
            max_context: 512,
            max_batch_tokens: 1024,
            ..Default::default()
        },
    );
    let r = post_json(
        &engine,
        "/v1/embeddings",
        json!({"input": "x".repeat(2000)}),
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert!(r.error().2.contains("larger than the limit"));
    let r = post_json(
        &engine,
        "/v1/embeddings",
        json!({"input": ["a", "b", "c", "d"]}),
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(r.error().2.contains("4 inputs"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread")]
async fn open_inference_protocol_embeds_bytes_into_fp32() {
    let engine = minilm();
    let body = json!({
        "id": "req-1",
        "inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hello world", "hi"]}]
    });
    let r = post_json(&engine, "/v2/models/all-MiniLM-L6-v2/infer", body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["id"], "req-1");
    assert_eq!(v["model_name"], "all-MiniLM-L6-v2");
    let out = &v["outputs"][0];
    assert_eq!(out["datatype"], "FP32");
    assert_eq!(out["shape"], json!([2, 384]));
    let flat: Vec<f32> = out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    let openai = vectors(
        &post_json(
            &engine,
            "/v1/embeddings",
            json!({"input": ["hello world", "hi"]}),
        )
        .await
        .json(),
    );
    assert_eq!(&flat[384..], openai[1].as_slice());

    let bad_type =
        json!({"inputs": [{"name": "text", "shape": [1], "datatype": "FP32", "data": ["x"]}]});
    let r = post_json(&engine, "/v2/models/all-MiniLM-L6-v2/infer", bad_type).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error().0.as_deref(), Some("inputs[0].datatype"));
    let bad_shape =
        json!({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES", "data": ["x"]}]});
    let r = post_json(&engine, "/v2/models/all-MiniLM-L6-v2/infer", bad_shape).await;
    assert_eq!(r.error().0.as_deref(), Some("inputs[0].shape"));
    let r = post_json(&engine, "/v2/models/nope/infer", json!({"inputs": []})).await;
    assert_eq!(r.status, 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn health_metadata_and_model_list() {
    let engine = minilm();
    assert_eq!(get(&engine, "/v2/health/live").await.status, 200);
    assert_eq!(get(&engine, "/v2/health/ready").await.json()["ready"], true);
    assert_eq!(
        get(&engine, "/v2/models/all-MiniLM-L6-v2/ready")
            .await
            .status,
        200
    );
    let meta = get(&engine, "/v2/models/all-MiniLM-L6-v2").await.json();
    assert_eq!(meta["inputs"][0]["datatype"], "BYTES");
    assert_eq!(meta["outputs"][0]["shape"], json!([-1, 384]));
    let models = get(&engine, "/v1/models").await.json();
    assert_eq!(models["data"][0]["id"], "all-MiniLM-L6-v2");
    assert_eq!(
        get(&engine, "/v1/models/all-MiniLM-L6-v2").await.status,
        200
    );
    let r = get(&engine, "/v1/models/gpt-4").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["code"], "model_not_found");
    // A route that does not exist is not a missing model, and a wrong
    // method is a 405; both answer in OpenAI's shape.
    let r = get(&engine, "/nope").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"]["message"], "Invalid URL (GET /nope)");
    assert_eq!(r.json()["error"]["code"], serde_json::Value::Null);
    let r = get(&engine, "/v1/embeddings").await;
    assert_eq!(r.status, 405);
    assert_eq!(r.json()["error"]["type"], "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_count_requests_by_route_and_status() {
    let engine = minilm();
    post_json(&engine, "/v1/embeddings", json!({"input": "count me"})).await;
    post_json(&engine, "/v1/embeddings", json!({"input": 5})).await;
    let m = get(&engine, "/metrics").await;
    assert_eq!(m.status, 200);
    let text = m.text();
    for needle in [
        r#"modelship_requests_total{route="/v1/embeddings",status="200"}"#,
        r#"modelship_requests_total{route="/v1/embeddings",status="400"}"#,
        r#"modelship_request_duration_seconds_bucket{route="/v1/embeddings",status="200",le="0.005"}"#,
        r#"modelship_batch_size_bucket{task="embeddings""#,
        r#"modelship_queue_depth{task="embeddings"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

/// (sequences, padded tokens) of each forward pass.
type BatchLog = Arc<Mutex<Vec<(usize, usize)>>>;

/// Wraps the real backend to record the batches the scheduler forms.
struct Recording {
    inner: EncoderBackend,
    batches: BatchLog,
}

impl EncodeBackend for Recording {
    fn encode(&mut self, batch: &[&Sequence]) -> Result<Vec<Vec<f32>>, BackendError> {
        let longest = batch.iter().map(|b| b.len()).max().unwrap_or(0);
        self.batches
            .lock()
            .unwrap()
            .push((batch.len(), longest * batch.len()));
        std::thread::sleep(std::time::Duration::from_millis(5));
        self.inner.encode(batch)
    }
}

fn recording_engine(limits: ServingLimits) -> (Arc<Engine>, BatchLog) {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let backend = Recording {
        inner: minilm_backend(),
        batches: batches.clone(),
    };
    (minilm_engine_around(backend, limits), batches)
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_are_batched_under_the_token_budget() {
    let limits = ServingLimits {
        max_context: 128,
        max_batch_tokens: 256,
        ..Default::default()
    };
    let (engine, batches) = recording_engine(limits);
    let texts: Vec<String> = (0..32)
        .map(|i| format!("request number {i} about {}", "topic ".repeat(i % 7)))
        .collect();
    let alone = engine.embed(&texts[..1], false).await.unwrap().vectors;
    batches.lock().unwrap().clear();
    let tasks: Vec<_> = texts
        .iter()
        .map(|t| {
            let e = engine.clone();
            let t = t.clone();
            tokio::spawn(async move { e.embed(&[t], false).await })
        })
        .collect();
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap().unwrap().vectors.remove(0));
    }
    let c = modelship_testkit::cosine(&results[0], &alone[0]);
    assert!(c > 0.99999, "batched result differs from the lone one: {c}");
    let batches = batches.lock().unwrap().clone();
    let sequences: usize = batches.iter().map(|b| b.0).sum();
    assert_eq!(sequences, 32);
    assert!(
        batches.iter().any(|b| b.0 > 1),
        "no batching happened: {batches:?}"
    );
    assert!(
        batches.iter().all(|&(n, padded)| n == 1 || padded <= 256),
        "a batch exceeded the budget: {batches:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_queue_answers_429_with_retry_after() {
    let limits = ServingLimits {
        max_queue: 2,
        max_context: 512,
        ..Default::default()
    };
    let (engine, _) = recording_engine(limits);
    let base = spawn_server(engine).await;
    let client = reqwest::Client::new();
    let long = "overload ".repeat(200);
    let tasks: Vec<_> = (0..12)
        .map(|_| {
            let c = client.clone();
            let url = format!("{base}/v1/embeddings");
            let body = json!({"input": [long.clone(), long.clone()]});
            tokio::spawn(async move { c.post(url).json(&body).send().await.unwrap() })
        })
        .collect();
    let mut ok = 0;
    let mut rejected = 0;
    for t in tasks {
        let r = t.await.unwrap();
        match r.status().as_u16() {
            200 => ok += 1,
            429 => {
                assert_eq!(r.headers()["retry-after"], "1");
                let v: serde_json::Value = r.json().await.unwrap();
                assert_eq!(v["error"]["type"], "rate_limit_error");
                rejected += 1;
            }
            s => panic!("unexpected status {s}"),
        }
    }
    assert!(ok >= 2, "the queue admits up to its bound: {ok}");
    assert!(
        rejected >= 1,
        "12 concurrent requests on a queue of 2 must overflow"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_api_key_guards_the_api_but_not_health_or_metrics() {
    use axum::body::Body;
    use axum::http::Request;
    let state = || {
        modelship_server::AppState::new(minilm(), modelship_server::recorder())
            .with_api_keys(vec!["s3cret".into()])
    };
    let embed = |auth: Option<&str>| {
        let mut r = Request::post("/v1/embeddings").header("content-type", "application/json");
        if let Some(a) = auth {
            r = r.header("authorization", a);
        }
        r.body(Body::from(r#"{"input": "hi"}"#)).unwrap()
    };
    let r = send_to(state(), embed(None)).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.error().1, "authentication_error");
    assert_eq!(
        send_to(state(), embed(Some("Bearer wrong"))).await.status,
        401
    );
    assert_eq!(
        send_to(state(), embed(Some("Bearer s3cret"))).await.status,
        200
    );
    for open in ["/v2/health/live", "/v2/health/ready", "/metrics"] {
        let r = send_to(state(), Request::get(open).body(Body::empty()).unwrap()).await;
        assert_eq!(r.status, 200, "{open}");
    }
}
