//! The API serves every precision `modelship quantize` writes: MiniLM as a
//! GGUF (quantized matmuls in the BERT path) and SmolLM2 in every type, each
//! answering through the router like the original.

mod common;

use common::{load_engine, post_json, vectors};
use modelship_types::{QuantType, ServingLimits};
use serde_json::json;

/// Lowest cosine to the original each type keeps on short sentences
/// (MiniLM's 384-wide rows send the k-quants to their 32-block fallbacks).
fn min_cosine(t: QuantType) -> f64 {
    match t {
        QuantType::F32 | QuantType::F16 | QuantType::Bf16 => 0.9999,
        QuantType::Q8_0 | QuantType::Q6K => 0.998,
        QuantType::Q5K | QuantType::Q4K => 0.97,
        QuantType::Q4_1 | QuantType::Q4_0 => 0.9,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_precision_of_minilm_serves_embeddings_close_to_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let texts = json!([
        "The quick brown fox jumps over the lazy dog.",
        "Quantized models answer too."
    ]);
    let original = vectors(
        &post_json(&common::minilm(), "/v1/embeddings", json!({"input": texts}))
            .await
            .json(),
    );
    for t in QuantType::ALL {
        let engine = load_engine(
            &modelship_testkit::quantized(&modelship_testkit::minilm(), t, dir.path()),
            ServingLimits::default(),
        );
        let r = post_json(&engine, "/v1/embeddings", json!({"input": texts})).await;
        assert_eq!(r.status, 200, "{t}: {}", r.text());
        for (a, b) in vectors(&r.json()).iter().zip(&original) {
            let cos = modelship_testkit::cosine(a, b);
            assert!(cos >= min_cosine(t), "{t}: cosine {cos}");
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_precision_of_smollm_completes_like_the_original() {
    let dir = tempfile::tempdir().unwrap();
    let ask = json!({"prompt": "The capital of France is", "max_tokens": 3, "temperature": 0});
    let original = post_json(&common::smollm(), "/v1/completions", ask.clone())
        .await
        .json();
    let original = original["choices"][0]["text"].as_str().unwrap().to_owned();
    assert!(original.contains("Paris"), "{original:?}");
    for t in QuantType::ALL {
        let engine = load_engine(
            &modelship_testkit::quantized(&modelship_testkit::smollm(), t, dir.path()),
            ServingLimits::default(),
        );
        let r = post_json(&engine, "/v1/completions", ask.clone()).await;
        assert_eq!(r.status, 200, "{t}: {}", r.text());
        let text = r.json()["choices"][0]["text"].as_str().unwrap().to_owned();
        assert!(!text.is_empty(), "{t}");
        // The answer has a wide margin, which 6 bits and more keep; 4-bit
        // re-quantization of this already 4-bit model may lose it (q4_0
        // answers " capitalised as").
        if t.bits_per_weight() >= 6.0 {
            assert!(text.contains("Paris"), "{t}: {text:?}");
        }
    }
}
