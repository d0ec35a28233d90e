//! Completions and chat on the real SmolLM2 Q4_1 GGUF, checked against
//! llama.cpp's tokenization and greedy output (tests/fixtures/llama_greedy.json,
//! made by scripts/reference/llama_greedy.py with llama-cpp-python).

mod common;

use common::*;
use modelship_model::{GgufFile, TextTokenizer};
use serde_json::{Value, json};

fn llama_cpp() -> Value {
    modelship_testkit::fixture("llama_greedy.json")
}

#[test]
fn tokenizer_matches_llama_cpp() {
    assert_tokenizer_matches(&modelship_testkit::smollm(), "llama_greedy.json");
}

#[tokio::test(flavor = "multi_thread")]
async fn greedy_output_matches_llama_cpp() {
    assert_greedy_matches(
        &smollm(),
        &modelship_testkit::smollm(),
        "llama_greedy.json",
        5,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_generations_keep_their_own_caches() {
    let engine = smollm();
    let fx = llama_cpp();
    let prompts: Vec<String> = fx["completions"]
        .as_array()
        .unwrap()
        .iter()
        .take(6)
        .map(|c| c["prompt"].as_str().unwrap().to_owned())
        .collect();
    let mut alone = Vec::new();
    for p in &prompts {
        let v = post_json(
            &engine,
            "/v1/completions",
            json!({"prompt": p, "max_tokens": 24, "temperature": 0}),
        )
        .await
        .json();
        alone.push(v["choices"][0]["text"].clone());
    }
    let base = spawn_server(engine).await;
    let client = reqwest::Client::new();
    let tasks: Vec<_> = prompts
        .iter()
        .map(|p| {
            let client = client.clone();
            let url = format!("{base}/v1/completions");
            let body = json!({"prompt": p, "max_tokens": 24, "temperature": 0});
            tokio::spawn(async move {
                let v: Value = client
                    .post(url)
                    .json(&body)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                v["choices"][0]["text"].clone()
            })
        })
        .collect();
    for (t, expected) in tasks.into_iter().zip(alone) {
        assert_eq!(
            t.await.unwrap(),
            expected,
            "a concurrent greedy run differs from the lone one"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn chat_uses_the_gguf_template() {
    let engine = smollm();
    let r = post_json(
        &engine,
        "/v1/chat/completions",
        json!({
            "messages": [{"role": "user", "content": "What is the tallest mountain in the world?"}],
            "max_tokens": 16, "temperature": 0
        }),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    // The template adds SmolLM's default system turn when none is given.
    let rendered = "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nWhat is the tallest mountain in the world?<|im_end|>\n<|im_start|>assistant\n";
    let tok =
        TextTokenizer::from_gguf(&GgufFile::open(&modelship_testkit::smollm()).unwrap()).unwrap();
    assert_eq!(
        v["usage"]["prompt_tokens"],
        tok.encode(rendered, true).unwrap().len()
    );
    let text = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Everest"), "{text}");
    assert!(!text.contains("<|im_end|>"));
}

/// Parses an SSE body into its `data:` payloads.
fn sse_data(body: &str) -> Vec<String> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn streaming_sends_the_same_text_and_ends_with_done() {
    let engine = smollm();
    let prompt = "Once upon a time, in a small village";
    let whole = post_json(
        &engine,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 20, "temperature": 0}),
    )
    .await
    .json();
    let r = post_json(
        &engine,
        "/v1/completions",
        json!({
            "prompt": prompt, "max_tokens": 20, "temperature": 0, "stream": true,
            "stream_options": {"include_usage": true}
        }),
    )
    .await;
    assert_eq!(r.status, 200);
    assert!(
        r.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let data = sse_data(&r.text());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str())
        .collect();
    assert_eq!(text, whole["choices"][0]["text"].as_str().unwrap());
    assert!(chunks.len() > 5, "streamed in pieces");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["usage"]["completion_tokens"], 20);
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "length"
    );

    let chat = post_json(&engine, "/v1/chat/completions", json!({
        "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 8, "stream": true, "temperature": 0
    })).await;
    let data = sse_data(&chat.text());
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let first: Value = serde_json::from_str(&data[0]).unwrap();
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
}

#[tokio::test(flavor = "multi_thread")]
async fn stop_sequences_cut_the_text() {
    let engine = smollm();
    let prompt = "List of prime numbers: 2, 3, 5, 7,";
    let greedy = post_json(
        &engine,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 32, "temperature": 0}),
    )
    .await
    .json();
    let greedy = greedy["choices"][0]["text"].as_str().unwrap().to_owned();
    let cut = greedy.find(" 19").expect("the primes go past 19");
    let r = post_json(
        &engine,
        "/v1/completions",
        json!({
            "prompt": prompt, "max_tokens": 32, "temperature": 0, "stop": [" 19", "never"]
        }),
    )
    .await
    .json();
    assert_eq!(r["choices"][0]["text"], greedy[..cut]);
    assert_eq!(r["choices"][0]["finish_reason"], "stop");
    // Streamed, the held-back prefix of the stop sequence never leaks.
    let s = post_json(
        &engine,
        "/v1/completions",
        json!({
            "prompt": prompt, "max_tokens": 32, "temperature": 0, "stop": " 19", "stream": true
        }),
    )
    .await;
    let text: String = sse_data(&s.text())
        .iter()
        .filter(|d| *d != "[DONE]")
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(text, greedy[..cut]);
}

#[tokio::test(flavor = "multi_thread")]
async fn sampling_knobs_work() {
    let engine = smollm();
    let ask = |body: Value| {
        let engine = engine.clone();
        async move {
            post_json(&engine, "/v1/completions", body).await.json()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        }
    };
    let prompt = "My favourite animal is";
    let a = ask(json!({"prompt": prompt, "max_tokens": 12, "temperature": 1.0, "seed": 7})).await;
    let b = ask(json!({"prompt": prompt, "max_tokens": 12, "temperature": 1.0, "seed": 7})).await;
    assert_eq!(a, b, "same seed, same text");
    let mut others = Vec::new();
    for seed in [1, 2, 3, 4] {
        others.push(
            ask(json!({"prompt": prompt, "max_tokens": 12, "temperature": 1.2, "seed": seed}))
                .await,
        );
    }
    others.dedup();
    assert!(others.len() > 1, "different seeds all gave {others:?}");
    let greedy = ask(json!({"prompt": prompt, "max_tokens": 12, "temperature": 0})).await;
    let top1 =
        ask(json!({"prompt": prompt, "max_tokens": 12, "temperature": 0.9, "top_k": 1, "seed": 3}))
            .await;
    assert_eq!(greedy, top1);
    let tiny_p = ask(
        json!({"prompt": prompt, "max_tokens": 12, "temperature": 1.0, "top_p": 0.0001, "seed": 5}),
    )
    .await;
    assert_eq!(greedy, tiny_p, "a tiny nucleus holds only the best token");
    let r = post_json(
        &engine,
        "/v1/completions",
        json!({"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}),
    )
    .await
    .json();
    assert_eq!(r["usage"]["completion_tokens"], 5);
    assert_eq!(r["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread")]
async fn limits_and_bad_values_are_400_naming_the_field() {
    let engine = smollm();
    let long_prompt = "word ".repeat(2100);
    let cases = [
        (json!({"prompt": "x", "max_tokens": 100000}), "max_tokens"),
        (json!({"prompt": "x", "max_tokens": 0}), "max_tokens"),
        (json!({"prompt": long_prompt}), "prompt"),
        (json!({"prompt": "x", "temperature": 5}), "temperature"),
        (json!({"prompt": "x", "top_p": 0}), "top_p"),
        (json!({"prompt": "x", "n": 0}), "n"),
        (
            json!({"prompt": "x", "frequency_penalty": -3}),
            "frequency_penalty",
        ),
        (json!({"prompt": "x", "max_tokens": "ten"}), "max_tokens"),
        (json!({"prompt": "x", "stream": "yes"}), "stream"),
    ];
    for (body, param) in cases {
        let r = post_json(&engine, "/v1/completions", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.error().0.as_deref(), Some(param), "{body}: {}", r.text());
    }
    let chat_cases = [
        (json!({"messages": []}), "messages"),
        (
            json!({"messages": [{"role": "wizard", "content": "x"}]}),
            "messages[0].role",
        ),
        (
            json!({"messages": [{"role": "user", "content": 3}]}),
            "messages[0].content",
        ),
    ];
    for (body, param) in chat_cases {
        let r = post_json(&engine, "/v1/chat/completions", body.clone()).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        assert_eq!(r.error().0.as_deref(), Some(param), "{body}");
    }
    let r = post_json(&engine, "/v1/embeddings", json!({"input": "x"})).await;
    assert_eq!(r.error().0.as_deref(), Some("model"));
}

/// What OpenAI clients and UIs send at its defaults is served; a value that
/// asks for something not done here is a 400 naming the field; a field
/// outside OpenAI's schema stays an error.
#[tokio::test(flavor = "multi_thread")]
async fn openai_defaults_are_accepted_and_unsupported_values_named() {
    let engine = smollm();
    let chat = json!({
        "messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 4, "temperature": 0,
        "presence_penalty": 0, "frequency_penalty": 0, "logit_bias": {}, "logprobs": false,
        "top_logprobs": null, "n": 1, "parallel_tool_calls": true, "store": false,
        "metadata": {"app": "ui"}, "user": "u-1", "service_tier": "auto",
        "response_format": {"type": "text"}, "stream_options": null,
    });
    let r = post_json(&engine, "/v1/chat/completions", chat.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let plain = post_json(
        &engine,
        "/v1/chat/completions",
        json!({"messages": chat["messages"], "max_tokens": 4, "temperature": 0}),
    )
    .await;
    assert_eq!(
        r.json()["choices"][0]["message"]["content"],
        plain.json()["choices"][0]["message"]["content"],
        "the inert fields changed the answer"
    );
    let completion = json!({
        "prompt": "Once upon", "max_tokens": 4, "echo": false, "best_of": 1,
        "logprobs": null, "presence_penalty": 0.0, "suffix": null, "user": "u",
    });
    let r = post_json(&engine, "/v1/completions", completion).await;
    assert_eq!(r.status, 200, "{}", r.text());

    for (route, body, param) in [
        (
            "/v1/chat/completions",
            json!({"functions": [{"name": "f"}]}),
            "functions",
        ),
        (
            "/v1/chat/completions",
            json!({"tools": [{"type": "function", "function": {"name": "f"}}]}),
            "tools",
        ),
        ("/v1/chat/completions", json!({"bogus_field": 1}), ""),
        ("/v1/completions", json!({"best_of": 3}), "best_of"),
        ("/v1/completions", json!({"suffix": "end"}), "suffix"),
    ] {
        let mut request = if route == "/v1/completions" {
            json!({"prompt": "x"})
        } else {
            json!({"messages": [{"role": "user", "content": "x"}]})
        };
        for (k, v) in body.as_object().unwrap() {
            request[k] = v.clone();
        }
        let r = post_json(&engine, route, request).await;
        assert_eq!(r.status, 400, "{body}: {}", r.text());
        let (p, _, message) = r.error();
        if param.is_empty() {
            assert!(message.contains("bogus_field"), "{message}");
        } else {
            assert_eq!(p.as_deref(), Some(param), "{message}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn open_inference_protocol_generates_text() {
    let engine = smollm();
    let prompt = "The three primary colors are";
    let openai = post_json(
        &engine,
        "/v1/completions",
        json!({"prompt": prompt, "max_tokens": 32, "temperature": 0}),
    )
    .await
    .json();
    let body = json!({
        "inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [prompt]}],
        "parameters": {"max_tokens": 32, "temperature": 0}
    });
    let r = post_json(&engine, "/v2/models/SmolLM2-135M-Instruct.Q4_1/infer", body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let out = &r.json()["outputs"][0];
    assert_eq!(out["datatype"], "BYTES");
    assert_eq!(out["data"][0], openai["choices"][0]["text"]);
}

#[tokio::test(flavor = "multi_thread")]
async fn generation_metrics_are_exported() {
    let engine = smollm();
    post_json(
        &engine,
        "/v1/completions",
        json!({"prompt": "Hi", "max_tokens": 3}),
    )
    .await;
    let text = get(&engine, "/metrics").await.text();
    for needle in [
        "modelship_generated_tokens_total",
        "modelship_time_to_first_token_seconds_bucket",
        r#"modelship_queue_depth{task="generate"}"#,
        r#"modelship_requests_total{route="/v1/completions",status="200"}"#,
    ] {
        assert!(text.contains(needle), "missing {needle}");
    }
}

/// `/tokenize` gives llama.cpp's ids for the fixture's strings (vLLM's and
/// llama.cpp's request shapes), and `/detokenize` gives the text back.
#[tokio::test(flavor = "multi_thread")]
async fn tokenize_and_detokenize_round_trip_with_llama_cpp_ids() {
    let engine = smollm();
    let fx = modelship_testkit::fixture("llama_greedy.json");
    let mut checked = 0;
    for t in fx["tokenize"].as_array().unwrap() {
        let text = t["text"].as_str().unwrap();
        let expected = &t["tokens"];
        let r = post_json(&engine, "/tokenize", json!({"prompt": text})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        assert_eq!(&v["tokens"], expected, "{text:?}");
        assert_eq!(v["count"], expected.as_array().unwrap().len());
        assert!(v["max_model_len"].as_u64().unwrap() > 0);
        // llama.cpp's shape: `content`, special tokens off by default.
        let r = post_json(
            &engine,
            "/tokenize",
            json!({"content": text, "add_special": true}),
        )
        .await;
        assert_eq!(&r.json()["tokens"], expected, "{text:?}");
        let r = post_json(&engine, "/detokenize", json!({"tokens": expected})).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let back = r.json();
        assert_eq!(back["prompt"], back["content"]);
        assert_eq!(back["prompt"], text, "{text:?}");
        checked += 1;
    }
    assert!(checked >= 5);
    let r = post_json(
        &engine,
        "/detokenize",
        json!({"tokens": [1, 4_000_000_000u32]}),
    )
    .await;
    assert_eq!(r.status, 400);
    let (param, _, message) = r.error();
    assert_eq!(param.as_deref(), Some("tokens"));
    assert!(message.contains("tokens[1]"), "{message}");
    let r = post_json(&engine, "/tokenize", json!({"prompt": "a", "content": "b"})).await;
    assert_eq!(r.status, 400);
    let r = post_json(
        &engine,
        "/tokenize",
        json!({"prompt": "a", "model": "other"}),
    )
    .await;
    assert_eq!(r.status, 404);
}
