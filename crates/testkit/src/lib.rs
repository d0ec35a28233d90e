//! Test support shared by the integration tests: the cached test models
//! (fetched by `scripts/fetch-models.sh`), committed fixtures, and the Python
//! reference tools (installed by `scripts/setup-peers.sh`). A missing piece is a
//! loud failure saying which script installs it, never a skipped test.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// `MODELSHIP_CACHE`, or `~/.cache/modelship`.
pub fn cache_dir() -> PathBuf {
    match std::env::var_os("MODELSHIP_CACHE") {
        Some(p) => PathBuf::from(p),
        None => {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/modelship")
        }
    }
}

fn require(path: PathBuf, installed_by: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `{installed_by}` first (the test command `scripts/test.sh` does)",
        path.display()
    );
    path
}

/// all-MiniLM-L6-v2, an HF directory (f32 safetensors).
pub fn minilm() -> PathBuf {
    require(
        cache_dir().join("models/all-MiniLM-L6-v2"),
        "scripts/fetch-models.sh",
    )
}

/// all-mpnet-base-v2, an HF directory (MPNet, f32 safetensors).
pub fn mpnet() -> PathBuf {
    require(
        cache_dir().join("models/all-mpnet-base-v2"),
        "scripts/fetch-models.sh",
    )
}

/// A small random-weight encoder checkpoint written by
/// `scripts/reference/tiny_encoders.py` (`roberta-mean`, `bert-reranker`, …).
pub fn tiny_encoder(name: &str) -> PathBuf {
    require(
        cache_dir().join("models/hf/tiny-encoders").join(name),
        "scripts/make-checkpoints.sh",
    )
}

/// SmolLM2-135M-Instruct, a GGUF file (Q4_1).
pub fn smollm() -> PathBuf {
    require(
        cache_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf"),
        "scripts/fetch-models.sh",
    )
}

/// Qwen2.5-Coder-0.5B-Instruct, a GGUF file (Q4_K_M: Q5_0, Q8_0, Q4_K, Q6_K).
pub fn qwen2() -> PathBuf {
    require(
        cache_dir().join("models/Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"),
        "scripts/fetch-models.sh",
    )
}

/// Gemma-3-270M, a GGUF file (Q4_K_M).
pub fn gemma3() -> PathBuf {
    require(
        cache_dir().join("models/gemma-3-270m.Q4_K_M.gguf"),
        "scripts/fetch-models.sh",
    )
}

/// SmolLM2-135M-Instruct as a Hugging Face checkpoint: its GGUF's weights
/// dequantized to f32, one `model.safetensors`.
pub fn smollm_checkpoint() -> PathBuf {
    require(
        cache_dir().join("models/hf/SmolLM2-135M-Instruct-f32"),
        "scripts/make-checkpoints.sh",
    )
}

/// SmolLM2-135M-Instruct as a bf16 checkpoint in three shards with an index.
pub fn smollm_checkpoint_bf16() -> PathBuf {
    require(
        cache_dir().join("models/hf/SmolLM2-135M-Instruct-bf16"),
        "scripts/make-checkpoints.sh",
    )
}

/// Qwen2.5-Coder-0.5B-Instruct as a bf16 checkpoint in two shards.
pub fn qwen2_checkpoint() -> PathBuf {
    require(
        cache_dir().join("models/hf/Qwen2.5-Coder-0.5B-Instruct-bf16"),
        "scripts/make-checkpoints.sh",
    )
}

/// Gemma-3-270M as a bf16 checkpoint whose vocabulary is SentencePiece's
/// `tokenizer.model` (no tokenizer.json).
pub fn gemma3_checkpoint() -> PathBuf {
    require(
        cache_dir().join("models/hf/gemma-3-270m-bf16"),
        "scripts/make-checkpoints.sh",
    )
}

/// `source` written as `to` into `dir/{to}.gguf` by `modelship quantize`'s
/// library; returns the file.
pub fn quantized(source: &Path, to: modelship_types::QuantType, dir: &Path) -> PathBuf {
    use modelship_quant::{QuantizeOptions, Source, quantize};
    let out = dir.join(format!("{to}.gguf"));
    let src = Source::open(source).expect("open the source model");
    quantize(
        &src,
        &out,
        QuantizeOptions { to, prune: None },
        &mut |_, _, _| {},
    )
    .expect("quantize the test model");
    out
}

/// The Python of the peers' virtual environment.
pub fn python() -> PathBuf {
    require(
        cache_dir().join("venv/bin/python"),
        "scripts/setup-peers.sh",
    )
}

/// The repository root: the first ancestor of the running test's crate
/// (cargo sets `CARGO_MANIFEST_DIR` when it runs a test) holding Cargo.lock.
/// Read at run time, not compile time: a build cache shared between checkouts
/// must not send one checkout's tests to another's files.
pub fn repo_root() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    start
        .ancestors()
        .find(|d| d.join("Cargo.lock").is_file())
        .unwrap_or_else(|| panic!("no Cargo.lock above {}", start.display()))
        .to_owned()
}

/// A committed fixture under `tests/fixtures/`, parsed.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = repo_root().join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("fixture is JSON")
}

/// Embeddings of `texts` by the independent numpy encoder reference.
pub fn reference_embeddings(model_dir: &Path, texts: &[String]) -> Vec<Vec<f32>> {
    let items = serde_json::to_value(texts).expect("texts");
    serde_json::from_value(reference_outputs(model_dir, &items, None)).expect("vectors")
}

/// What the numpy encoder reference (`scripts/reference/encoder_numpy.py`)
/// computes for `items` (texts, `{"text", "prompt_name"}`, `{"pair": [a, b]}`),
/// inputs cut to `max_length` tokens by the tokenizer's own truncation when
/// given: a vector per input for an embedding model, `{"logits", "scores",
/// "tokens"}` for a classifier.
pub fn reference_outputs(
    model_dir: &Path,
    items: &serde_json::Value,
    max_length: Option<usize>,
) -> serde_json::Value {
    let script = repo_root().join("scripts/reference/encoder_numpy.py");
    let mut cmd = Command::new(python());
    cmd.arg(&script).arg(model_dir);
    if let Some(n) = max_length {
        cmd.arg("--max-length").arg(n.to_string());
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the numpy reference");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(items.to_string().as_bytes())
            .expect("write the inputs");
    }
    let out = child.wait_with_output().expect("reference output");
    assert!(out.status.success(), "the numpy reference failed");
    serde_json::from_slice(&out.stdout).expect("reference prints JSON")
}

/// Cosine similarity.
pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "vectors of different lengths");
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}
