//! Encoders beyond BERT embeddings, each checked against the independent
//! numpy reference (`scripts/reference/encoder_numpy.py`): the real
//! all-mpnet-base-v2, and random-weight RoBERTa, XLM-RoBERTa, BERT and MPNet
//! checkpoints (`scripts/reference/tiny_encoders.py`) with every pooling the
//! sentence-transformers files configure, prompts, and sequence-classification
//! heads served as rerankers (`/rerank`, `/v1/rerank`) and classifiers
//! (`/predict`), and through KServe v2 `infer`.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::*;
use modelship_engine::Engine;
use modelship_testkit::{cosine, reference_outputs, tiny_encoder};
use modelship_types::ServingLimits;
use serde_json::{Value, json};

/// The tiny checkpoints' context (positions past the offset).
const TINY_CONTEXT: usize = 64;

fn engine_of(dir: &Path) -> Arc<Engine> {
    load_engine(dir, ServingLimits::default())
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|x| x.as_f64().expect("a number") as f32)
        .collect()
}

fn assert_close(ours: f32, theirs: f64, what: &str) {
    assert!(
        (ours as f64 - theirs).abs() <= 1e-4,
        "{what}: {ours} where the reference has {theirs}"
    );
}

/// A text long enough that any pair holding it passes the tiny context.
fn long_text() -> String {
    "Retrieval systems rank documents by their relevance to a query, again and again. ".repeat(8)
}

#[tokio::test(flavor = "multi_thread")]
async fn mpnet_embeddings_match_the_reference_batched_and_alone() {
    let dir = modelship_testkit::mpnet();
    let engine = engine_of(&dir);
    assert_eq!(engine.card().architecture, "mpnet");
    assert_eq!(engine.card().dimensions, Some(768));
    let inputs = varied_inputs();
    let reference = modelship_testkit::reference_embeddings(&dir, &inputs);
    let batched = post_json(&engine, "/v1/embeddings", json!({"input": inputs})).await;
    assert_eq!(batched.status, 200, "{}", batched.text());
    for (i, (ours, theirs)) in vectors(&batched.json()).iter().zip(&reference).enumerate() {
        let c = cosine(ours, theirs);
        assert!(c >= 0.9999, "input {i} {:?}: cosine {c}", inputs[i]);
    }
    for (i, text) in inputs.iter().enumerate() {
        let alone = post_json(&engine, "/v1/embeddings", json!({"input": text})).await;
        let c = cosine(&vectors(&alone.json())[0], &reference[i]);
        assert!(c >= 0.9999, "input {i} alone: cosine {c}");
    }
}

/// Every pooling mode and both Normalize settings, RoBERTa's byte-level BPE
/// and XLM-RoBERTa's SentencePiece Unigram tokenizers, MPNet's relative
/// positions, and prompts: named in the request or the model's default.
#[tokio::test(flavor = "multi_thread")]
async fn encoder_families_and_poolings_match_the_reference() {
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "naïve café: unicode & punctuation!",
        "Le renard brun saute par-dessus le chien paresseux.",
        "Memory for quality.",
        "a",
    ];
    // (model, architecture, request prompt, normalized)
    let cases = [
        ("roberta-mean", "roberta", None, true),
        ("roberta-mean", "roberta", Some("query"), true),
        ("xlm-roberta-cls", "xlm-roberta", None, false),
        ("xlm-roberta-cls", "xlm-roberta", Some("document"), false),
        ("bert-max", "bert", None, false),
        ("mpnet-last", "mpnet", None, true),
    ];
    for (name, architecture, prompt, normalized) in cases {
        let dir = tiny_encoder(name);
        let engine = engine_of(&dir);
        assert_eq!(engine.card().architecture, architecture);
        let items: Vec<Value> = texts
            .iter()
            .map(|t| match prompt {
                Some(p) => json!({"text": t, "prompt_name": p}),
                None => json!(t),
            })
            .collect();
        let reference: Vec<Vec<f32>> =
            serde_json::from_value(reference_outputs(&dir, &json!(items), None)).unwrap();
        let mut body = json!({"input": texts});
        if let Some(p) = prompt {
            body["prompt_name"] = json!(p);
        }
        let r = post_json(&engine, "/v1/embeddings", body).await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        for (i, (ours, theirs)) in vectors(&r.json()).iter().zip(&reference).enumerate() {
            let c = cosine(ours, theirs);
            assert!(c >= 0.9999, "{name} {prompt:?} input {i}: cosine {c}");
            let norm: f32 = ours.iter().map(|x| x * x).sum::<f32>().sqrt();
            assert_eq!((norm - 1.0).abs() < 1e-4, normalized, "{name}: norm {norm}");
        }
    }
    // A prompt changes the vector; a model's default prompt applies unasked.
    let embed = |engine: Arc<Engine>, body: Value| async move {
        vectors(&post_json(&engine, "/v1/embeddings", body).await.json())[0].clone()
    };
    let engine = engine_of(&tiny_encoder("roberta-mean"));
    let plain = embed(engine.clone(), json!({"input": texts[0]})).await;
    let query = embed(engine, json!({"input": texts[0], "prompt_name": "query"})).await;
    let c = cosine(&plain, &query);
    assert!(c < 0.9999, "the prompt made no difference: cosine {c}");
    let engine = engine_of(&tiny_encoder("xlm-roberta-cls"));
    let unasked = embed(engine.clone(), json!({"input": texts[0]})).await;
    let named = embed(
        engine.clone(),
        json!({"input": texts[0], "prompt_name": "query"}),
    )
    .await;
    let other = embed(
        engine,
        json!({"input": texts[0], "prompt_name": "document"}),
    )
    .await;
    assert!(cosine(&unasked, &named) > 0.999_999);
    assert!(cosine(&unasked, &other) < 0.9999);
}

/// The reference's logits and scores for `items`.
fn reference_scores(dir: &Path, items: &[Value], max_length: Option<usize>) -> Vec<Value> {
    reference_outputs(dir, &json!(items), max_length)
        .as_array()
        .expect("a list")
        .clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn rerankers_match_the_reference_in_every_shape() {
    let query = "What does a reranker do?";
    let texts = vec![
        "A reranker orders retrieved documents by relevance to the query.".to_owned(),
        "The weather is lovely today.".to_owned(),
        "Cross-encoders read the query and the document together.".to_owned(),
        "naïve café".to_owned(),
        long_text(),
    ];
    for name in ["bert-reranker", "mpnet-reranker"] {
        let dir = tiny_encoder(name);
        let engine = engine_of(&dir);
        assert_eq!(engine.card().task, modelship_types::Task::Rerank);
        let items: Vec<Value> = texts.iter().map(|t| json!({"pair": [query, t]})).collect();
        // The long pair is cut by the tokenizer's own longest-first truncation.
        let reference = reference_scores(&dir, &items, Some(TINY_CONTEXT));
        let score = |i: usize| reference[i]["scores"][0].as_f64().unwrap();
        let logit = |i: usize| reference[i]["logits"][0].as_f64().unwrap();

        // TEI's /rerank: sorted by score, with the texts when asked.
        let r = post_json(
            &engine,
            "/rerank",
            json!({"query": query, "texts": texts, "truncate": true, "return_text": true}),
        )
        .await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let ranks = r.json();
        let ranks = ranks.as_array().unwrap();
        assert_eq!(ranks.len(), texts.len());
        for (k, rank) in ranks.iter().enumerate() {
            let i = rank["index"].as_u64().unwrap() as usize;
            assert_close(rank["score"].as_f64().unwrap() as f32, score(i), name);
            assert_eq!(rank["text"], json!(texts[i]));
            if k > 0 {
                assert!(ranks[k - 1]["score"].as_f64() >= rank["score"].as_f64());
            }
        }
        let raw = post_json(
            &engine,
            "/rerank",
            json!({"query": query, "texts": texts, "truncate": true, "raw_scores": true}),
        )
        .await
        .json();
        for rank in raw.as_array().unwrap() {
            let i = rank["index"].as_u64().unwrap() as usize;
            assert_close(rank["score"].as_f64().unwrap() as f32, logit(i), name);
            assert!(rank.get("text").is_none());
        }

        // Cohere's /v1/rerank: truncates on its own, `top_n`, documents as objects.
        let documents: Vec<Value> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                if i % 2 == 0 {
                    json!(t)
                } else {
                    json!({"text": t})
                }
            })
            .collect();
        let r = post_json(
            &engine,
            "/v1/rerank",
            json!({"model": name, "query": query, "documents": documents, "top_n": 3, "return_documents": true}),
        )
        .await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let v = r.json();
        let results = v["results"].as_array().unwrap();
        assert_eq!(results.len(), 3);
        let mut best: Vec<usize> = (0..texts.len()).collect();
        best.sort_by(|&a, &b| score(b).total_cmp(&score(a)));
        for (k, res) in results.iter().enumerate() {
            let i = res["index"].as_u64().unwrap() as usize;
            assert_eq!(i, best[k], "{name}: rank {k}");
            assert_close(
                res["relevance_score"].as_f64().unwrap() as f32,
                score(i),
                name,
            );
            assert_eq!(res["document"]["text"], json!(texts[i]));
        }
        let tokens: u64 = reference
            .iter()
            .map(|r| r["tokens"].as_u64().unwrap())
            .sum();
        assert_eq!(v["usage"]["total_tokens"], json!(tokens));

        // KServe v2: `query` and `text` in, `score` out.
        let r = post_json(
            &engine,
            &format!("/v2/models/{name}/infer"),
            json!({"inputs": [
                {"name": "query", "shape": [1], "datatype": "BYTES", "data": [query]},
                {"name": "text", "shape": [texts.len()], "datatype": "BYTES", "data": texts},
            ], "parameters": {"truncate": true}}),
        )
        .await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let out = &r.json()["outputs"][0];
        assert_eq!(out["name"], "score");
        for (i, s) in floats(&out["data"]).into_iter().enumerate() {
            assert_close(s, score(i), name);
        }

        // The pairs went through the encoder's batching scheduler, counted
        // under the model's task.
        let metrics = get(&engine, "/metrics").await.text();
        assert!(
            metrics.contains("modelship_batch_size") && metrics.contains(r#"task="rerank""#),
            "{metrics}"
        );

        // Without `truncate`, the long pair is refused, naming it.
        let r = post_json(&engine, "/rerank", json!({"query": query, "texts": texts})).await;
        assert_eq!(r.status, 400);
        let (param, _, message) = r.error();
        assert_eq!(param.as_deref(), Some("texts"), "{message}");
        assert!(message.contains("texts[4]"), "{message}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn classifiers_match_the_reference() {
    // (model, activation the reference applies)
    for name in ["bert-classifier", "roberta-multilabel"] {
        let dir = tiny_encoder(name);
        let engine = engine_of(&dir);
        assert_eq!(engine.card().task, modelship_types::Task::Classify);
        let labels = engine.card().labels.clone();
        assert!(labels.len() >= 3, "{labels:?}");
        let premise = "A man is playing a guitar.";
        let hypothesis = "Someone makes music.";
        let items = [
            json!("The quick brown fox."),
            json!({"pair": [premise, hypothesis]}),
            json!("Quantization trades a little quality for a lot of memory."),
        ];
        let reference = reference_scores(&dir, &items, None);
        let check = |got: &Value, i: usize, raw: bool| {
            let key = if raw { "logits" } else { "scores" };
            let want: Vec<f64> = reference[i][key]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap())
                .collect();
            let got = got.as_array().expect("predictions");
            assert_eq!(got.len(), labels.len());
            for (k, p) in got.iter().enumerate() {
                let label = p["label"].as_str().unwrap();
                let id = labels.iter().position(|l| l == label).unwrap();
                assert_close(p["score"].as_f64().unwrap() as f32, want[id], name);
                if k > 0 {
                    assert!(got[k - 1]["score"].as_f64() >= p["score"].as_f64());
                }
            }
        };
        // One text, one pair (TEI reads two strings as a pair), a batch.
        let r = post_json(
            &engine,
            "/predict",
            json!({"inputs": "The quick brown fox."}),
        )
        .await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        check(&r.json(), 0, false);
        let r = post_json(
            &engine,
            "/predict",
            json!({"inputs": [premise, hypothesis]}),
        )
        .await;
        check(&r.json(), 1, false);
        let r = post_json(
            &engine,
            "/predict",
            json!({"inputs": [["The quick brown fox."], [premise, hypothesis], [items[2]]], "raw_scores": true}),
        )
        .await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let batch = r.json();
        for i in 0..3 {
            check(&batch[i], i, true);
        }
        // Scores: softmax sums to one; multi-label sigmoids need not.
        let sum: f64 = reference[0]["scores"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .sum();
        assert_eq!((sum - 1.0).abs() < 1e-6, name == "bert-classifier", "{sum}");

        // KServe v2: `text` (and `text_pair`) in, scores and the best label out.
        let r = post_json(
            &engine,
            &format!("/v2/models/{name}/infer"),
            json!({"inputs": [
                {"name": "text", "shape": [1], "datatype": "BYTES", "data": [premise]},
                {"name": "text_pair", "shape": [1], "datatype": "BYTES", "data": [hypothesis]},
            ]}),
        )
        .await;
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let v = r.json();
        let scores = floats(&v["outputs"][0]["data"]);
        let want = reference[1]["scores"].as_array().unwrap();
        for (s, w) in scores.iter().zip(want) {
            assert_close(*s, w.as_f64().unwrap(), name);
        }
        let best = (0..scores.len())
            .max_by(|&a, &b| scores[a].total_cmp(&scores[b]))
            .unwrap();
        assert_eq!(v["outputs"][1]["data"][0], json!(labels[best]));
        // The listing says what the labels are.
        let m = get(&engine, "/v1/models").await.json();
        assert_eq!(m["data"][0]["labels"], json!(labels));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn dimensions_truncate_and_renormalize() {
    let dir = tiny_encoder("roberta-mean");
    let engine = engine_of(&dir);
    let text = "Matryoshka embeddings keep their meaning in every prefix.";
    let full = modelship_testkit::reference_embeddings(&dir, &[text.to_owned()])[0].clone();
    for d in [8, 32, 64] {
        let r = post_json(
            &engine,
            "/v1/embeddings",
            json!({"input": text, "dimensions": d}),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.text());
        let v = vectors(&r.json())[0].clone();
        assert_eq!(v.len(), d);
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "{d}: norm {norm}");
        let c = cosine(&v, &full[..d]);
        assert!(c >= 0.9999, "{d}: cosine {c} to the reference's prefix");
    }
    let r = post_json(
        &engine,
        "/v1/embeddings",
        json!({"input": text, "dimensions": 65}),
    )
    .await;
    assert_eq!(r.status, 400);
    let (param, _, message) = r.error();
    assert_eq!(param.as_deref(), Some("dimensions"));
    assert!(message.contains("64"), "{message}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_id_inputs_embed_as_their_text_does() {
    let engine = minilm();
    let text = "Token ids are an input OpenAI allows.";
    let ids = post_json(&engine, "/tokenize", json!({"prompt": text}))
        .await
        .json()["tokens"]
        .clone();
    let by_text = post_json(&engine, "/v1/embeddings", json!({"input": text})).await;
    let by_ids = post_json(&engine, "/v1/embeddings", json!({"input": ids})).await;
    assert_eq!(by_ids.status, 200, "{}", by_ids.text());
    let c = cosine(&vectors(&by_text.json())[0], &vectors(&by_ids.json())[0]);
    assert!(c > 0.999_999, "cosine {c}");
    let lists = post_json(
        &engine,
        "/v1/embeddings",
        json!({"input": [ids, [101, 102]]}),
    )
    .await;
    assert_eq!(lists.status, 200, "{}", lists.text());
    assert_eq!(vectors(&lists.json()).len(), 2);
    assert_eq!(
        lists.json()["usage"]["prompt_tokens"],
        json!(ids.as_array().unwrap().len() + 2)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_encoder_requests_name_the_field() {
    let reranker = load_engine(
        &tiny_encoder("bert-reranker"),
        ServingLimits {
            max_inputs: 4,
            ..ServingLimits::default()
        },
    );
    let classifier = engine_of(&tiny_encoder("bert-classifier"));
    let embedder = engine_of(&tiny_encoder("roberta-mean"));
    let five = vec!["a text"; 5];
    let cases: Vec<(&Arc<Engine>, &str, Value, &str, &str)> = vec![
        // More pairs than one request may hold.
        (
            &reranker,
            "/rerank",
            json!({"query": "q", "texts": five}),
            "texts",
            "maximum is 4",
        ),
        (
            &reranker,
            "/v1/rerank",
            json!({"query": "q", "documents": five}),
            "documents",
            "maximum is 4",
        ),
        (
            &reranker,
            "/rerank",
            json!({"query": "  ", "texts": ["a"]}),
            "query",
            "empty",
        ),
        (
            &reranker,
            "/rerank",
            json!({"query": "q", "texts": []}),
            "texts",
            "empty",
        ),
        (
            &reranker,
            "/rerank",
            json!({"query": "q", "texts": ["a", ""]}),
            "texts",
            "texts[1]",
        ),
        (
            &reranker,
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"], "top_n": 0}),
            "top_n",
            "at least 1",
        ),
        (
            &reranker,
            "/rerank",
            json!({"query": "q", "texts": ["a"], "truncation_direction": "left"}),
            "truncation_direction",
            "right",
        ),
        // A classifier is not a reranker, and an embedding model neither.
        (
            &classifier,
            "/rerank",
            json!({"query": "q", "texts": ["a"]}),
            "model",
            "/predict",
        ),
        (
            &classifier,
            "/v1/rerank",
            json!({"query": "q", "documents": ["a"]}),
            "model",
            "classifier",
        ),
        (
            &embedder,
            "/predict",
            json!({"inputs": "a"}),
            "model",
            "embeddings",
        ),
        (
            &embedder,
            "/v1/embeddings",
            json!({"input": "a", "prompt_name": "nope"}),
            "prompt_name",
            "`passage`, `query`",
        ),
        (
            &classifier,
            "/v1/embeddings",
            json!({"input": "a"}),
            "model",
            "classify",
        ),
        (
            &classifier,
            "/predict",
            json!({"inputs": []}),
            "inputs",
            "empty",
        ),
        (
            &classifier,
            "/predict",
            json!({"inputs": [1]}),
            "inputs",
            "",
        ),
    ];
    for (engine, path, body, param, needle) in cases {
        let r = post_json(engine, path, body.clone()).await;
        assert_eq!(r.status, 400, "{path} {body}: {}", r.text());
        let (p, kind, message) = r.error();
        assert_eq!(kind, "invalid_request_error");
        assert_eq!(p.as_deref(), Some(param), "{path} {body}: {message}");
        assert!(message.contains(needle), "{path} {body}: {message}");
    }
}
