//! What `modelship quantize` writes, checked by llama.cpp's own tools:
//! PyPI `gguf` re-quantizes q8_0/q4_0/q4_1 to the same bytes and dequantizes
//! the k-quants to the original within each type's error; llama.cpp
//! (llama-cpp-python) loads the files and decodes the llama model greedily to
//! our tokens (up to its own near-ties) and embeds with the BERT model as we
//! do.

use std::path::Path;
use std::process::Command;

use modelship_engine::{EncodeBackend, GenerateBackend, Sequence};
use modelship_engine_candle::{Device, OpenModel, open};
use modelship_types::QuantType;

/// Below this top-two margin llama.cpp's own configurations may pick either
/// token (see engine-candle/tests/llama_cpp_numerics.rs).
const NEAR_TIE: f32 = 0.5;

fn check(args: &[&str]) -> serde_json::Value {
    let script = modelship_testkit::repo_root().join("scripts/reference/gguf_check.py");
    let out = Command::new(modelship_testkit::python())
        .arg(script)
        .args(args)
        .output()
        .expect("run gguf_check.py");
    assert!(
        out.status.success(),
        "gguf_check.py {args:?} failed (scripts/setup-peers.sh installs gguf and llama-cpp-python):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

/// Largest relative RMS error each type may show against the f32 weights.
fn error_bound(ggml_type: &str) -> f64 {
    match ggml_type {
        "Q8_0" => 0.01,
        "Q6_K" => 0.03,
        "Q5_K" | "Q5_0" | "Q5_1" => 0.07,
        "Q4_K" | "Q4_0" | "Q4_1" => 0.15,
        other => panic!("unexpected type {other}"),
    }
}

fn check_blocks(reference: &Path, file: &Path) -> usize {
    let rows = check(&["blocks", path(reference), path(file)]);
    let mut identical = 0;
    for r in rows.as_array().unwrap() {
        let (name, ty) = (r["name"].as_str().unwrap(), r["type"].as_str().unwrap());
        if let Some(same) = r["identical"].as_bool() {
            assert!(
                same,
                "{}: {name} ({ty}) differs from gguf.quants.quantize",
                file.display()
            );
            identical += 1;
        }
        let err = r["rel_rms"].as_f64().unwrap();
        assert!(
            err < error_bound(ty),
            "{}: {name} ({ty}) error {err}",
            file.display()
        );
    }
    identical
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn blocks_match_the_gguf_reference_quantizer() {
    let dir = tempfile::tempdir().unwrap();
    for (name, source) in [
        ("minilm", modelship_testkit::minilm()),
        ("smollm", modelship_testkit::smollm()),
    ] {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let reference = modelship_testkit::quantized(&source, QuantType::F32, &sub);
        let mut identical = 0;
        for to in [
            QuantType::Q8_0,
            QuantType::Q4_0,
            QuantType::Q4_1,
            QuantType::Q4K,
            QuantType::Q5K,
            QuantType::Q6K,
        ] {
            identical += check_blocks(&reference, &modelship_testkit::quantized(&source, to, &sub));
        }
        // Every linear layer of q8_0/q4_0/q4_1 (and the fallbacks to q8_0) was compared.
        assert!(
            identical > 3 * 30,
            "{name}: only {identical} tensors compared byte for byte"
        );
    }
}

/// Our greedy tokens on `file` against llama.cpp's on the same file.
fn greedy_agrees(file: &Path) {
    greedy_agrees_on(file, file);
}

/// Our greedy tokens on `ours` (a GGUF file or a checkpoint) against
/// llama.cpp's on `file` (the same weights as GGUF).
fn greedy_agrees_on(ours: &Path, file: &Path) {
    let prompts = [
        "The capital of France is",
        "def fibonacci(n):",
        "Once upon a time,",
    ];
    let n = 16;
    let mut args = vec!["greedy", path(file), "16"];
    args.extend(prompts);
    let theirs = check(&args);
    let OpenModel::Generate { backend, .. } = open(ours, &Device::Cpu, 512).unwrap() else {
        panic!("a generative model")
    };
    let mut matched = 0;
    for c in theirs.as_array().unwrap() {
        let prompt: Vec<u32> = serde_json::from_value(c["prompt_tokens"].clone()).unwrap();
        let tokens: Vec<u32> = serde_json::from_value(c["tokens"].clone()).unwrap();
        let mut seq = backend.new_sequence();
        let mut logits = backend.forward(&mut seq, &prompt).unwrap();
        for (j, &expected) in tokens.iter().enumerate().take(n) {
            let ours = modelship_engine::sampler::argmax(&logits);
            if ours != expected {
                let t = &c["top2"][j];
                let margin = t[1].as_f64().unwrap() - t[3].as_f64().unwrap();
                assert!(
                    margin < NEAR_TIE as f64,
                    "{}: {:?} step {j}: we pick {ours}, llama.cpp {expected} with margin {margin}",
                    file.display(),
                    c["prompt"]
                );
                break;
            }
            matched += 1;
            logits = backend.forward(&mut seq, &[expected]).unwrap();
        }
    }
    // Divergence is allowed only at llama.cpp's near-ties (asserted above),
    // and those must be the exception.
    eprintln!(
        "{}: {matched}/{} greedy tokens identical",
        file.display(),
        3 * n
    );
    assert!(
        matched >= 3 * n / 2,
        "{}: {matched}/{} tokens identical",
        file.display(),
        3 * n
    );
}

#[test]
fn llama_cpp_runs_our_llama_files_to_our_greedy_tokens() {
    let dir = tempfile::tempdir().unwrap();
    for to in [QuantType::Q8_0, QuantType::Q4K, QuantType::F16] {
        greedy_agrees(&modelship_testkit::quantized(
            &modelship_testkit::smollm(),
            to,
            dir.path(),
        ));
    }
}

/// A Hugging Face checkpoint (scripts/make-checkpoints.sh writes SmolLM2's
/// from its GGUF, dequantized to f32) quantizes to the file llama.cpp's
/// converter writes: back to f32 it is the original GGUF again, by
/// llama.cpp's own reader (every tensor equal to the original's dequantized
/// values, after our Q/K row reordering undid the writer's; the tokenizer,
/// merges, token types, special ids, chat template and hyper-parameters
/// equal); its q8_0/q4_0/q4_1 blocks are gguf.quants' bytes.
#[test]
fn checkpoints_convert_to_the_gguf_they_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = modelship_testkit::smollm_checkpoint();
    let f32_file = modelship_testkit::quantized(&checkpoint, QuantType::F32, dir.path());
    let same = check(&["same", path(&modelship_testkit::smollm()), path(&f32_file)]);
    assert_eq!(same["tensors"], 272, "{same}");
    for list in ["missing_tensors", "differing_tensors", "differing_keys"] {
        assert_eq!(same[list], serde_json::json!([]), "{list}: {same}");
    }
    // The original's `add_space_prefix` steers SentencePiece vocabularies
    // only; llama.cpp's byte-level BPE converter does not write it.
    assert_eq!(
        same["keys_only_in_original"],
        serde_json::json!(["tokenizer.ggml.add_space_prefix"]),
        "{same}"
    );
    let mut identical = 0;
    for to in [QuantType::Q8_0, QuantType::Q4_0, QuantType::Q4_1] {
        identical += check_blocks(
            &f32_file,
            &modelship_testkit::quantized(&checkpoint, to, dir.path()),
        );
    }
    assert!(
        identical > 3 * 30,
        "only {identical} tensors compared byte for byte"
    );
}

/// A checkpoint whose vocabulary is SentencePiece's tokenizer.model
/// (Gemma 3's, written from its GGUF) quantizes to that GGUF's metadata:
/// the pieces, scores and token types, special ids, flags, chat template
/// and hyper-parameters, by PyPI `gguf`'s reader; every tensor is there
/// (their values are bf16's, not the original's Q4_K).
#[test]
fn a_sentencepiece_checkpoint_converts_to_its_gguf_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let bf16 = modelship_testkit::quantized(
        &modelship_testkit::gemma3_checkpoint(),
        QuantType::Bf16,
        dir.path(),
    );
    let same = check(&["same", path(&modelship_testkit::gemma3()), path(&bf16)]);
    for list in ["missing_tensors", "differing_keys", "keys_only_in_original"] {
        assert_eq!(same[list], serde_json::json!([]), "{list}: {same}");
    }
}

/// Checkpoints served directly (bf16 in shards, read as stored; Gemma 3's
/// with its SentencePiece vocabulary) decode greedily to llama.cpp's tokens
/// on the bf16 GGUF `quantize` writes from them, up to its near-ties; and llama.cpp runs our q8_0 file of the Qwen2.5
/// checkpoint to our tokens.
#[test]
fn llama_cpp_runs_checkpoints_to_our_greedy_tokens() {
    let dir = tempfile::tempdir().unwrap();
    for checkpoint in [
        modelship_testkit::smollm_checkpoint_bf16(),
        modelship_testkit::qwen2_checkpoint(),
        modelship_testkit::gemma3_checkpoint(),
    ] {
        let sub = dir.path().join(checkpoint.file_name().unwrap());
        std::fs::create_dir_all(&sub).unwrap();
        let bf16 = modelship_testkit::quantized(&checkpoint, QuantType::Bf16, &sub);
        greedy_agrees_on(&checkpoint, &bf16);
    }
    let q8 = modelship_testkit::quantized(
        &modelship_testkit::qwen2_checkpoint(),
        QuantType::Q8_0,
        dir.path(),
    );
    greedy_agrees(&q8);
}

#[test]
fn llama_cpp_embeds_our_bert_files_as_we_do() {
    let dir = tempfile::tempdir().unwrap();
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "A man is playing a guitar.",
        "naïve café: unicode & punctuation!",
    ];
    for to in [QuantType::F32, QuantType::Q8_0, QuantType::Q4_0] {
        let file = modelship_testkit::quantized(&modelship_testkit::minilm(), to, dir.path());
        let mut args = vec!["embed", path(&file)];
        args.extend(texts);
        let theirs: Vec<Vec<f32>> = serde_json::from_value(check(&args)).unwrap();
        let OpenModel::Encoder {
            tokenizer,
            mut backend,
            ..
        } = open(&file, &Device::Cpu, 512).unwrap()
        else {
            panic!("an embedding model")
        };
        let ids: Vec<Sequence> = texts
            .iter()
            .map(|t| Sequence::single(tokenizer.encode(t, true).unwrap()))
            .collect();
        let refs: Vec<&Sequence> = ids.iter().collect();
        let ours = backend.encode(&refs).unwrap();
        for ((t, a), b) in texts.iter().zip(&ours).zip(&theirs) {
            let cos = modelship_testkit::cosine(a, b);
            assert!(cos > 0.999, "{to} {t:?}: cosine {cos} to llama.cpp");
        }
    }
}
