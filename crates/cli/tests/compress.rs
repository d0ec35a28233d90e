//! `quantize`, `prune`, `eval` and `optimize` as users run them: what they
//! print, what they write, their exit codes, and the written models served.

use std::path::Path;
use std::process::Output;

use serde_json::{Value, json};

mod support;

use support::{modelship, serve, sigterm};

fn run(args: &[&str]) -> Output {
    modelship().args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn quantize_prints_its_policy_and_summary() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("m.gguf");
    let o = run(&[
        "quantize",
        s(&modelship_testkit::minilm()),
        "--to",
        "q4_k",
        "-o",
        s(&out),
        "-v",
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for expected in [
        "blk.0.attn_q.weight",
        "norms and biases stay f32",
        "position / token-type tables stay f32",
        "row length is not a multiple of 256: fallback type",
        "output projection keeps more bits",
        "bits/weight",
        "peak memory",
    ] {
        assert!(t.contains(expected), "missing {expected:?} in:\n{t}");
    }
    assert!(out.exists() && !dir.path().join("m.gguf.partial").exists());
}

#[test]
fn a_failed_quantize_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let not_a_model = dir.path().join("x.gguf");
    std::fs::write(&not_a_model, b"GGUF\x03\x00\x00\x00garbage").unwrap();
    let out = dir.path().join("out.gguf");
    let o = run(&["quantize", s(&not_a_model), "--to", "q8_0", "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("x.gguf"), "{}", text(&o));
    assert!(!out.exists() && !dir.path().join("out.gguf.partial").exists());
}

/// A GGUF without `output_norm.weight` (its name changed in the header):
/// quantize refuses it by that name and writes nothing.
#[test]
fn quantize_refuses_an_incomplete_model() {
    let dir = tempfile::tempdir().unwrap();
    let mut bytes = std::fs::read(modelship_testkit::smollm()).unwrap();
    let name = b"output_norm.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap();
    bytes[at + 10] = b'X'; // output_norX.weight
    let incomplete = dir.path().join("incomplete.gguf");
    std::fs::write(&incomplete, bytes).unwrap();
    let out = dir.path().join("out.gguf");
    let o = run(&["quantize", s(&incomplete), "--to", "q8_0", "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("output_norm.weight"), "{}", text(&o));
    assert!(!out.exists() && !dir.path().join("out.gguf.partial").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn pruned_models_report_sparsity_evaluate_and_serve() {
    let dir = tempfile::tempdir().unwrap();
    let minilm = modelship_testkit::minilm();
    let out = dir.path().join("pruned.gguf");
    let o = run(&[
        "prune",
        s(&minilm),
        "--sparsity",
        "0.5",
        "--pattern",
        "2:4",
        "-o",
        s(&out),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    // Six layers, four linear tensors each, exactly half zero.
    let all = t
        .lines()
        .find(|l| l.starts_with("all"))
        .expect("a total row");
    assert!(all.ends_with("50.00%"), "{t}");
    assert_eq!(
        t.lines().filter(|l| l.ends_with("50.00%")).count(),
        7,
        "{t}"
    );

    let o = run(&[
        "eval",
        s(&out),
        "--reference",
        s(&minilm),
        "--sentences",
        "24",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let cos = v["cosine_mean"].as_f64().unwrap();
    assert!(
        cos < 0.99 && cos > 0.3,
        "2:4 pruning without fine-tuning costs quality: {v}"
    );
    for field in ["cosine_min", "spearman"] {
        assert!(v[field].is_f64(), "{field} in {v}");
    }

    let (mut child, url) = serve(&out);
    let r: Value = reqwest::Client::new()
        .post(format!("{url}/v1/embeddings"))
        .json(&json!({"input": ["a pruned model still answers"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["data"][0]["embedding"].as_array().unwrap().len(),
        384,
        "{r}"
    );
    sigterm(&child);
    assert!(child.wait().unwrap().success());

    let o = run(&["prune", s(&minilm), "--sparsity", "1.5", "-o", s(&out)]);
    assert_eq!(o.status.code(), Some(64), "{}", text(&o));
    assert!(text(&o).contains("--sparsity"), "{}", text(&o));
}

#[test]
fn eval_json_has_every_generation_figure() {
    let dir = tempfile::tempdir().unwrap();
    let smollm = modelship_testkit::smollm();
    let reference = dir.path().join("f16.gguf");
    assert!(
        run(&["quantize", s(&smollm), "--to", "f16", "-o", s(&reference)])
            .status
            .success()
    );
    let o = run(&[
        "eval",
        s(&smollm),
        "--reference",
        s(&reference),
        "--ctx",
        "64",
        "--chunks",
        "2",
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["task"], "generate");
    assert_eq!(v["tokens_scored"], 2 * 31);
    for field in [
        "perplexity",
        "reference_perplexity",
        "kld",
        "top1_agreement",
    ] {
        assert!(
            v[field].as_f64().is_some_and(f64::is_finite),
            "{field} in {v}"
        );
    }
    assert!(v["perplexity"].as_f64().unwrap() > 1.0);
}

fn spec(dir: &Path, name: &str, optimize: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            "apiVersion: modelship.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: {name}\nspec:\n  model:\n    source: {}\n  optimize:\n{optimize}",
            modelship_testkit::minilm().display()
        ),
    )
    .unwrap();
    path
}

#[test]
fn optimize_passes_fails_and_rejects_bad_specs_with_distinct_exit_codes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let optimize = |spec: &Path| run(&["optimize", "-f", s(spec), "--out-dir", s(&out)]);

    let pass = spec(
        dir.path(),
        "pass",
        "    quantize: q8_0\n    gate:\n      min_cosine: 0.999\n",
    );
    let o = optimize(&pass);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("chosen: q8_0"), "{}", text(&o));
    assert!(out.join("pass/all-MiniLM-L6-v2.q8_0.gguf").exists());

    let fail = spec(
        dir.path(),
        "fail",
        "    quantize: q4_0\n    gate:\n      min_cosine: 0.999\n",
    );
    let o = optimize(&fail);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("fail: cosine_mean"), "{}", text(&o));
    assert!(text(&o).contains("no candidate passes"), "{}", text(&o));

    for (name, body, field) in [
        ("typo", "    quantize: q8_0\n    gatee: {}\n", "gatee"),
        (
            "range",
            "    gate:\n      min_top1: 2\n",
            "spec.optimize.gate.min_top1",
        ),
        ("precision", "    quantize: q3_k\n", "q3_k"),
    ] {
        let o = optimize(&spec(dir.path(), name, body));
        assert_eq!(o.status.code(), Some(64), "{name}: {}", text(&o));
        assert!(text(&o).contains(field), "{name}: {}", text(&o));
    }
}

/// `prune --ffn/--heads` and `distill --student-layers` write ordinary,
/// smaller models that `serve` loads; bad counts are usage errors.
#[tokio::test(flavor = "multi_thread")]
async fn structured_pruning_and_dropped_layers_write_smaller_models_that_serve() {
    let dir = tempfile::tempdir().unwrap();
    let minilm = modelship_testkit::minilm();
    let pruned = dir.path().join("structured.gguf");
    let o = run(&[
        "prune",
        s(&minilm),
        "--ffn",
        "0.25",
        "--heads",
        "0.25",
        "-o",
        s(&pruned),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let row = |name: &str| {
        t.lines()
            .find(|l| l.starts_with(name))
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    assert_eq!(row("FFN channels"), "FFN channels 1536 1152", "{t}");
    assert_eq!(row("heads"), "heads (KV) 12 (12) 9 (9)", "{t}");

    let student = dir.path().join("student.gguf");
    let o = run(&[
        "distill",
        s(&minilm),
        "--student-layers",
        "4",
        "-o",
        s(&student),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("keeps 4 of 6 layers: 0,2,3,5"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.starts_with("layers") && l.ends_with(" 6        4")),
        "{t}"
    );

    for model in [&pruned, &student] {
        let (mut child, url) = serve(model);
        let r: Value = reqwest::Client::new()
            .post(format!("{url}/v1/embeddings"))
            .json(&json!({"input": ["a smaller model still answers"]}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(
            r["data"][0]["embedding"].as_array().unwrap().len(),
            384,
            "{r}"
        );
        sigterm(&child);
        assert!(child.wait().unwrap().success());
    }

    for (args, names) in [
        (vec!["prune", s(&minilm), "--ffn", "1.0"], "--ffn"),
        (
            vec!["distill", s(&minilm), "--student-layers", "7"],
            "--student-layers",
        ),
        (
            vec!["distill", s(&minilm), "--drop-layers", "0-5"],
            "--drop-layers",
        ),
        (
            vec!["distill", s(&minilm), "--drop-layers", "2", "--steps", "10"],
            "--steps",
        ),
    ] {
        let mut args = args;
        args.extend(["-o", s(&student)]);
        let o = run(&args);
        assert_eq!(o.status.code(), Some(64), "{args:?}: {}", text(&o));
        assert!(text(&o).contains(names), "{args:?}: {}", text(&o));
    }
    let o = run(&[
        "distill",
        s(&modelship_testkit::gemma3()),
        "--drop-layers",
        "3",
        "-o",
        s(&student),
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("not interchangeable"), "{}", text(&o));
}
