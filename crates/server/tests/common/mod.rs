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

/// An embedding engine with MiniLM's card and tokenizer around `backend`
/// (MiniLM's own, wrapped to record or to fail).
pub fn minilm_engine_around(
    backend: impl modelship_engine::EncodeBackend,
    limits: ServingLimits,
) -> Arc<Engine> {
    let hf = modelship_model::HfModel::open(&modelship_testkit::minilm()).unwrap();
    let card = modelship_engine::ModelCard {
        name: "minilm".into(),
        task: modelship_types::Task::Embeddings,
        architecture: "bert".into(),
        max_context: limits.max_context,
        dimensions: Some(384),
        labels: Vec::new(),
        created: 0,
    };
    let tokenizer = modelship_model::TextTokenizer::from_file(&hf.tokenizer_path()).unwrap();
    Arc::new(Engine::embeddings(card, limits, tokenizer, backend))
}

/// MiniLM's own backend, as `serve` loads it.
pub fn minilm_backend() -> modelship_engine_candle::EncoderBackend {
    let hf = modelship_model::HfModel::open(&modelship_testkit::minilm()).unwrap();
    let encoder = modelship_model::Encoder::from_hf(&hf).unwrap();
    modelship_engine_candle::EncoderBackend::load(&hf, &encoder, &candle_core_cpu()).unwrap()
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
    let options =
        modelship_server::ServeOptions::new(std::time::Duration::from_secs(5), Vec::new());
    spawn_server_with(engine, options).await.0
}

/// Serves `engine` with `options`; returns its base URL and the server's
/// outcome.
pub async fn spawn_server_with(
    engine: Arc<Engine>,
    options: modelship_server::ServeOptions,
) -> (String, tokio::task::JoinHandle<std::io::Result<()>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = tokio::spawn(modelship_server::serve(
        listener,
        engine,
        std::future::pending(),
        options,
    ));
    (format!("http://{addr}"), served)
}

/// Asserts that our tokenizer of the GGUF at `model` gives llama.cpp's ids
/// for every string and prompt of the greedy fixture `fixture`.
/// The tokenizer `serve` builds for a GGUF file or a decoder checkpoint
/// (from the GGUF metadata the checkpoint converts to).
pub fn tokenizer_of(model: &std::path::Path) -> modelship_model::TextTokenizer {
    use modelship_model::{DecoderCheckpoint, GgufFile, HfModel, TextTokenizer};
    if model.is_dir() {
        let checkpoint = DecoderCheckpoint::open(&HfModel::open(model).unwrap()).unwrap();
        TextTokenizer::from_gguf(&checkpoint.gguf).unwrap()
    } else {
        TextTokenizer::from_gguf(&GgufFile::open(model).unwrap()).unwrap()
    }
}

pub fn assert_tokenizer_matches(model: &std::path::Path, fixture: &str) {
    let tok = tokenizer_of(model);
    let fx = modelship_testkit::fixture(fixture);
    let mut cases: Vec<(String, Vec<u32>)> = Vec::new();
    let strings = fx["tokenize"].as_array().unwrap().iter();
    let prompts = fx["completions"].as_array().unwrap().iter();
    for (t, text, ids) in strings
        .map(|t| (t, "text", "tokens"))
        .chain(prompts.map(|c| (c, "prompt", "prompt_tokens")))
    {
        cases.push((
            t[text].as_str().unwrap().into(),
            serde_json::from_value(t[ids].clone()).unwrap(),
        ));
    }
    assert!(cases.len() >= 10);
    let mut wrong = Vec::new();
    for (text, expected) in &cases {
        let ours = tok.encode(text, true).unwrap();
        if &ours != expected {
            wrong.push(format!("{text:?}: ours {ours:?}, llama.cpp {expected:?}"));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} tokenizations differ from llama.cpp's:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

/// Below this top-two margin llama.cpp's own configurations may pick either
/// token (see engine-candle's llama_cpp_numerics test).
pub const NEAR_TIE: f64 = 0.5;

/// llama.cpp's text up to (not including) its first near-tie step.
fn text_before_first_near_tie(c: &Value, tok: &modelship_model::TextTokenizer) -> String {
    let tokens: Vec<u32> = serde_json::from_value(c["tokens"].clone()).unwrap();
    let first_tie = c["top2"]
        .as_array()
        .unwrap()
        .iter()
        .position(|t| t[1].as_f64().unwrap() - t[3].as_f64().unwrap() < NEAR_TIE)
        .unwrap_or(tokens.len())
        .min(tokens.len());
    tok.decode(&tokens[..first_tie]).unwrap()
}

/// Asserts that every greedy completion of the fixture through `engine`
/// agrees with llama.cpp's up to its first near-tie, and that at least
/// `min_identical` are identical to the last token.
pub async fn assert_greedy_matches(
    engine: &Arc<Engine>,
    model: &std::path::Path,
    fixture: &str,
    min_identical: usize,
) {
    use serde_json::json;
    let tok = tokenizer_of(model);
    let fx = modelship_testkit::fixture(fixture);
    let n = fx["max_tokens"].as_u64().unwrap();
    let completions = fx["completions"].as_array().unwrap();
    let mut identical = 0;
    for c in completions {
        let prompt = c["prompt"].as_str().unwrap();
        let r = post_json(
            engine,
            "/v1/completions",
            json!({"prompt": prompt, "max_tokens": n, "temperature": 0}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let ours = v["choices"][0]["text"].as_str().unwrap();
        assert_eq!(
            v["usage"]["prompt_tokens"],
            c["prompt_tokens"].as_array().unwrap().len()
        );
        if ours == c["text"] {
            identical += 1;
            let generated = c["tokens"].as_array().unwrap().len();
            assert_eq!(v["usage"]["completion_tokens"], generated);
            let finish = if generated as u64 == n {
                "length"
            } else {
                "stop"
            };
            assert_eq!(v["choices"][0]["finish_reason"], finish);
        } else {
            // A divergence may only start at a near-tie of llama.cpp's.
            let agreed = text_before_first_near_tie(c, &tok);
            assert!(
                ours.starts_with(&agreed),
                "{prompt:?}: ours {ours:?} leaves llama.cpp's {agreed:?} before any near-tie"
            );
        }
    }
    eprintln!(
        "{fixture}: {identical}/{} greedy completions of {n} tokens identical to llama.cpp's",
        completions.len()
    );
    assert!(
        identical >= min_identical,
        "only {identical} completions identical"
    );
}

/// Streams `body` to `route` of `engine` served on a real socket; asserts
/// the stream ends with `data: [DONE]` and returns its JSON chunks.
pub async fn stream_chunks(engine: Arc<Engine>, route: &str, body: Value) -> Vec<Value> {
    let base = spawn_server(engine).await;
    let text = reqwest::Client::new()
        .post(format!("{base}{route}"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|d| *d != "[DONE]")
        .map(|d| serde_json::from_str(d).unwrap())
        .collect()
}

/// Inputs of every kind: short, long, unicode, punctuation, whitespace.
pub fn varied_inputs() -> Vec<String> {
    let long = "The quick brown fox jumps over the lazy dog while the committee deliberates \
                the budget for next year's infrastructure, including bridges, tunnels and rail. "
        .repeat(12);
    [
        "a",
        "Hello, world!",
        "What is the capital of France?",
        "Paris is the capital and most populous city of France.",
        "naïve café über Straße — “quotes”",
        "日本語のテキストと中文文本",
        "Emoji: 🚀🎉🔥 and symbols ∑∫√π",
        "!!! ??? ... ;;; ---",
        "   leading and trailing spaces   ",
        "tabs\tand\nnewlines\n\nhere",
        "1234567890 3.14159 1e-10 0xFF",
        "URLs like https://example.com/path?q=1&r=2#frag are common",
        "C'est la vie, n'est-ce pas?",
        "Москва — столица России.",
        "عربى نص للاختبار",
        "def f(x): return x ** 2  # python code",
        "SELECT * FROM users WHERE id = 42;",
        "The the the the the the the",
        "A man is eating food.",
        "A man is riding a horse.",
        "UPPERCASE TEXT SHOULD BE LOWERCASED BY THE TOKENIZER",
        long.as_str(),
        "x",
        "The weather is lovely today, isn't it?",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}
