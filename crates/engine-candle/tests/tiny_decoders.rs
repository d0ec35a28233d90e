//! The architectures no package ships a model of — Llama 3 rope scaling,
//! Mistral-style GQA with Q4_0/Q5_0 matrices, Qwen3's q/k norms and wider
//! heads, Qwen2's biases, Gemma 2's soft-capping and alternating sliding
//! window — as small random-weight GGUF files that
//! scripts/reference/tiny_decoders.py writes with PyPI `gguf` (llama.cpp's
//! own writer) and runs through llama.cpp (llama-cpp-python). Our forward
//! pass is teacher-forced along llama.cpp's greedy continuation: at every
//! step our best token is llama.cpp's except at its near-ties, and our logits
//! of its two best tokens stay close to its own.

use std::process::Command;

use modelship_engine::GenerateBackend;
use modelship_engine_candle::{DecoderBackend, Device};
use modelship_model::{DecoderHparams, Family, GgufFile};
use serde_json::Value;

/// Tolerances as on the real models (a near-tie below 0.5, logits within a
/// mean of 0.1 and at most 1.0), scaled up with the logits: the random
/// output matrices here give logits of ~85 where SmolLM2's are ~20, and
/// llama.cpp's 8-bit activations before Q8_0 matrices (ours are 16-bit) err
/// in proportion. Per unit of the mean best logit: 1%, 0.5% and 2%.
struct Tolerance {
    near_tie: f32,
    mean: f64,
    max: f32,
}

impl Tolerance {
    fn for_logits(scale: f32) -> Self {
        Self {
            near_tie: (0.01 * scale).max(0.5),
            mean: (0.005 * scale as f64).max(0.1),
            max: (0.02 * scale).max(1.0),
        }
    }
}

/// Mean magnitude of llama.cpp's best logit over every step.
fn logit_scale(completions: &Value) -> f32 {
    let tops: Vec<f32> = completions
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["top2"].as_array().unwrap().iter())
        .map(|t| t[1].as_f64().unwrap().abs() as f32)
        .collect();
    tops.iter().sum::<f32>() / tops.len() as f32
}

struct Steps {
    total: usize,
    agree: usize,
    worst: f32,
    sum_diff: f64,
    /// Disagreements where llama.cpp's margin was not a near-tie.
    wide: Vec<String>,
}

fn teacher_forced(backend: &DecoderBackend, completions: &Value, near_tie: f32) -> Steps {
    let mut s = Steps {
        total: 0,
        agree: 0,
        worst: 0.0,
        sum_diff: 0.0,
        wide: Vec::new(),
    };
    for c in completions.as_array().unwrap() {
        let prompt: Vec<u32> = serde_json::from_value(c["prompt_tokens"].clone()).unwrap();
        let tokens: Vec<u32> = serde_json::from_value(c["tokens"].clone()).unwrap();
        let mut seq = backend.new_sequence();
        let mut logits = backend.forward(&mut seq, &prompt).unwrap();
        for (j, t) in c["top2"].as_array().unwrap().iter().enumerate() {
            let (a, la, b, lb) = (
                t[0].as_u64().unwrap() as usize,
                t[1].as_f64().unwrap() as f32,
                t[2].as_u64().unwrap() as usize,
                t[3].as_f64().unwrap() as f32,
            );
            let ours = logits
                .iter()
                .enumerate()
                .max_by(|x, y| x.1.total_cmp(y.1))
                .unwrap()
                .0;
            s.total += 1;
            if ours == a {
                s.agree += 1;
            } else if la - lb >= near_tie {
                s.wide.push(format!(
                    "{:?} step {j}: ours {ours}, llama.cpp {a} by a margin of {}",
                    c["prompt"],
                    la - lb
                ));
            }
            for (tok, want) in [(a, la), (b, lb)] {
                let d = (logits[tok] - want).abs();
                s.worst = s.worst.max(d);
                s.sum_diff += d as f64;
            }
            logits = backend.forward(&mut seq, &[tokens[j]]).unwrap();
        }
    }
    s
}

#[test]
fn random_weight_decoders_agree_with_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let script = modelship_testkit::repo_root().join("scripts/reference/tiny_decoders.py");
    let status = Command::new(modelship_testkit::python())
        .arg(&script)
        .arg(modelship_testkit::smollm())
        .arg(dir.path())
        .status()
        .expect("run tiny_decoders.py");
    assert!(status.success(), "tiny_decoders.py failed");
    let reference: Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("reference.json")).unwrap()).unwrap();
    bad_files_are_named_errors(dir.path());
    fused_phi3_equals_its_split_twin(dir.path());
    checkpoints_convert_back_exactly(dir.path(), &reference);
    let expected = ["llama3", "mistral", "qwen3", "qwen2", "gemma2"];
    assert_eq!(reference.as_object().unwrap().len(), expected.len());
    for name in expected {
        let path = dir.path().join(format!("{name}.gguf"));
        let gguf = GgufFile::open(&path).unwrap();
        let hp = DecoderHparams::from_gguf(&gguf).unwrap();
        let arch = reference[name]["architecture"].as_str().unwrap();
        assert_eq!(Some(hp.family), Family::from_architecture(arch), "{name}");
        let backend = DecoderBackend::from_gguf(&gguf, &Device::Cpu, 1024).unwrap();
        let completions = &reference[name]["completions"];
        let tol = Tolerance::for_logits(logit_scale(completions));
        let s = teacher_forced(&backend, completions, tol.near_tie);
        let mean = s.sum_diff / (2 * s.total) as f64;
        eprintln!(
            "{name}: {}/{} steps agree, logit difference mean {mean:.4}, max {:.4} (logits ~{:.1})",
            s.agree,
            s.total,
            s.worst,
            logit_scale(completions)
        );
        assert!(s.wide.is_empty(), "{name}: {:#?}", s.wide);
        assert!(
            s.agree as f64 >= 0.85 * s.total as f64,
            "{name}: {}/{}",
            s.agree,
            s.total
        );
        assert!(
            mean < tol.mean && s.worst < tol.max,
            "{name}: mean {mean}, max {}",
            s.worst
        );
    }
}

/// Each family as a Hugging Face checkpoint (scripts/reference/gguf_to_hf.py,
/// f32) reads back as the GGUF file it was written from: `quantize --to f32`
/// of it holds every tensor of the original bit for bit and the same
/// metadata, by PyPI `gguf`'s reader (Mistral's Q/K rows reordered, Gemma's
/// norms back to 1 + w, Phi-3's fused names), and serving the checkpoint
/// gives that f32 file's logits exactly.
fn checkpoints_convert_back_exactly(dir: &std::path::Path, reference: &Value) {
    let root = modelship_testkit::repo_root();
    for name in ["llama3", "mistral", "qwen3", "qwen2", "gemma2", "phi3"] {
        let original = dir.join(format!("{name}.gguf"));
        let checkpoint = dir.join(format!("{name}-hf"));
        let mut convert = Command::new(modelship_testkit::python());
        convert
            .arg(root.join("scripts/reference/gguf_to_hf.py"))
            .args([&original, &checkpoint])
            .args(["--dtype", "f32"]);
        // Llama 3's rope factors come from config.json's `rope_scaling`,
        // computed again by the checkpoint reader.
        if let Some(scaling) = reference[name].get("rope_scaling") {
            convert.args(["--rope-scaling", &scaling.to_string()]);
        }
        let out = convert.output().expect("run gguf_to_hf.py");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sub = dir.join(format!("{name}-f32"));
        std::fs::create_dir_all(&sub).unwrap();
        let back = modelship_testkit::quantized(&checkpoint, modelship_types::QuantType::F32, &sub);
        let out = Command::new(modelship_testkit::python())
            .arg(root.join("scripts/reference/gguf_check.py"))
            .arg("same")
            .args([&original, &back])
            .output()
            .expect("run gguf_check.py");
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let same: Value = serde_json::from_slice(&out.stdout).unwrap();
        for list in ["missing_tensors", "differing_tensors", "differing_keys"] {
            assert_eq!(same[list], serde_json::json!([]), "{name} {list}: {same}");
        }
        let logits = |path: &std::path::Path| -> Vec<Vec<f32>> {
            let modelship_engine_candle::OpenModel::Generate { backend, .. } =
                modelship_engine_candle::open(path, &Device::Cpu, 512).unwrap()
            else {
                panic!("{name}: not a decoder")
            };
            backend.score(&[1, 504, 3300, 282, 2451, 314]).unwrap()
        };
        assert_eq!(logits(&checkpoint), logits(&back), "{name}");
    }
}

/// What a user sees for a file the engine cannot run: the supported
/// architectures listed, the tensor whose shape disagrees named.
fn bad_files_are_named_errors(dir: &std::path::Path) {
    let err = |name: &str| -> String {
        match modelship_engine_candle::open(&dir.join(name), &Device::Cpu, 512) {
            Ok(_) => panic!("{name} loaded"),
            Err(e) => {
                let mut chain = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    chain.push_str(&format!(": {s}"));
                    source = s.source();
                }
                chain
            }
        }
    };
    let falcon = err("bad_falcon.gguf");
    assert!(
        falcon.contains("`falcon`") && falcon.contains(Family::SUPPORTED),
        "{falcon}"
    );
    let shape = err("bad_shape.gguf");
    assert!(
        shape.contains("blk.0.attn_q.weight") && shape.contains("[160, 128]"),
        "{shape}"
    );
}

/// Phi-3's fused projections split as separate ones would compute: the
/// same logits as a qwen2 file with those rows as separate tensors (whose
/// path the qwen2 file above checks against llama.cpp).
fn fused_phi3_equals_its_split_twin(dir: &std::path::Path) {
    let logits = |name: &str| -> Vec<Vec<f32>> {
        let path = dir.join(name);
        let gguf = GgufFile::open(&path).unwrap();
        let backend = DecoderBackend::from_gguf(&gguf, &Device::Cpu, 1024).unwrap();
        backend.score(&[1, 504, 3300, 282, 2451, 314]).unwrap()
    };
    let (fused, split) = (logits("phi3.gguf"), logits("phi3_split.gguf"));
    assert_eq!(fused.len(), 6);
    let spread = fused[0].iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(spread > 1.0, "logits of a real pass, not zeros: {spread}");
    for (a, b) in fused.iter().zip(&split) {
        let d = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(d < 1e-3, "fused and split phi3 differ by {d}");
    }
}
