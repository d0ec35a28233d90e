//! The decoder families beyond llama on their real GGUF files — Qwen2.5-Coder
//! 0.5B (`qwen2`: QKV biases, ChatML with tools) and Gemma-3-270M (`gemma3`:
//! SentencePiece vocabulary, scaled embeddings, q/k norms, pre/post norms,
//! GELU gating, sliding-window layers with their own rope base) — checked
//! against llama.cpp's tokenization and greedy output on the same files
//! (tests/fixtures/{qwen2,gemma3}_greedy.json, made by
//! scripts/reference/llama_greedy.py with llama-cpp-python); and the same
//! models as Hugging Face checkpoints (scripts/make-checkpoints.sh), whose
//! tokenizer.json and tokenizer_config.json become that same GGUF metadata.

mod common;

use std::sync::{Arc, OnceLock};

use common::*;
use modelship_engine::Engine;
use modelship_types::ServingLimits;
use serde_json::json;

fn engine(path: std::path::PathBuf) -> Arc<Engine> {
    load_engine(
        &path,
        ServingLimits {
            max_concurrent: 4,
            max_context: 2048,
            ..ServingLimits::default()
        },
    )
}

fn qwen2() -> Arc<Engine> {
    static E: OnceLock<Arc<Engine>> = OnceLock::new();
    E.get_or_init(|| engine(modelship_testkit::qwen2())).clone()
}

fn gemma3() -> Arc<Engine> {
    static E: OnceLock<Arc<Engine>> = OnceLock::new();
    E.get_or_init(|| engine(modelship_testkit::gemma3()))
        .clone()
}

#[test]
fn qwen2_tokenizer_matches_llama_cpp() {
    assert_tokenizer_matches(&modelship_testkit::qwen2(), "qwen2_greedy.json");
}

#[test]
fn gemma3_tokenizer_matches_llama_cpp() {
    assert_tokenizer_matches(&modelship_testkit::gemma3(), "gemma3_greedy.json");
}

#[test]
fn fixtures_cover_enough_strings_and_prompts() {
    for f in ["qwen2_greedy.json", "gemma3_greedy.json"] {
        let fx = modelship_testkit::fixture(f);
        assert!(fx["tokenize"].as_array().unwrap().len() >= 25, "{f}");
        assert!(fx["completions"].as_array().unwrap().len() >= 10, "{f}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn qwen2_greedy_output_matches_llama_cpp() {
    assert_greedy_matches(
        &qwen2(),
        &modelship_testkit::qwen2(),
        "qwen2_greedy.json",
        5,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gemma3_greedy_output_matches_llama_cpp() {
    // The ~600-token prompt passes Gemma's 512-position window.
    assert_greedy_matches(
        &gemma3(),
        &modelship_testkit::gemma3(),
        "gemma3_greedy.json",
        5,
    )
    .await;
}

/// The chat template from the GGUF (ChatML, a default system prompt) and the
/// end-of-turn token ending the answer: the README's question gets Paris.
#[tokio::test(flavor = "multi_thread")]
async fn qwen2_chat_answers_and_stops_at_its_end_of_turn() {
    let engine = qwen2();
    let ask = |body| {
        let engine = engine.clone();
        async move { post_json(&engine, "/v1/chat/completions", body).await }
    };
    let r = ask(json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0, "max_tokens": 40
    }))
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{answer:?}");
    assert!(!answer.contains("<|im_end|>"), "{answer:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() < 40);
}

/// A checkpoint's tokenizer (tokenizer.json, or SentencePiece's
/// tokenizer.model), read as llama.cpp's converter reads it, tokenizes as
/// llama.cpp does on the GGUF it came from.
#[test]
fn checkpoint_tokenizers_match_llama_cpp() {
    assert_tokenizer_matches(&modelship_testkit::qwen2_checkpoint(), "qwen2_greedy.json");
    assert_tokenizer_matches(
        &modelship_testkit::smollm_checkpoint_bf16(),
        "llama_greedy.json",
    );
    // SentencePiece: the vocabulary, scores and types from tokenizer.model.
    assert_tokenizer_matches(
        &modelship_testkit::gemma3_checkpoint(),
        "gemma3_greedy.json",
    );
}

/// A Qwen2.5 checkpoint served directly: its chat template (with tools)
/// comes from tokenizer_config.json, its answer names Paris, and generation
/// stops at its end-of-turn token, as on the GGUF.
#[tokio::test(flavor = "multi_thread")]
async fn a_checkpoint_chats_like_its_gguf() {
    let engine = engine(modelship_testkit::qwen2_checkpoint());
    let question = json!([{"role": "user", "content": "What is the capital of France?"}]);
    let r = post_json(
        &engine,
        "/v1/chat/completions",
        json!({"messages": question, "max_tokens": 32, "temperature": 0}),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let answer = v["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(answer.contains("Paris"), "{answer:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert_eq!(v["model"], "Qwen2.5-Coder-0.5B-Instruct-bf16");
}
