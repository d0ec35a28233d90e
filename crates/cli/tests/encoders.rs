//! Encoders beyond BERT embeddings through the whole path: `inspect` names
//! their task, `plan` sizes them, `deploy` runs the pipeline (a reranker
//! quantized behind the gate) and the gateway routes `/rerank`,
//! `/v1/rerank`, `/predict`, `/v1/embeddings` and KServe v2 by `model`; a
//! spec that contradicts the model's task is refused before anything runs;
//! `build` packages a classifier.

use std::path::Path;

use serde_json::{Value, json};

mod support;

use support::control_plane::{ControlPlane, named_spec};
use support::modelship;

fn inspect(model: &Path) -> Value {
    let out = modelship()
        .args(["inspect", "--json"])
        .arg(model)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn inspect_and_plan_know_every_encoder() {
    for (name, architecture, task) in [
        ("roberta-mean", "roberta", "embeddings"),
        ("xlm-roberta-cls", "xlm-roberta", "embeddings"),
        ("mpnet-last", "mpnet", "embeddings"),
        ("bert-reranker", "bert", "rerank"),
        ("mpnet-reranker", "mpnet", "rerank"),
        ("roberta-multilabel", "roberta", "classify"),
    ] {
        let v = inspect(&modelship_testkit::tiny_encoder(name));
        assert_eq!(v["architecture"], architecture, "{name}");
        assert_eq!(v["task"], task, "{name}");
    }
    let v = inspect(&modelship_testkit::mpnet());
    assert_eq!(
        (v["architecture"].as_str(), v["task"].as_str()),
        (Some("mpnet"), Some("embeddings"))
    );

    let dir = tempfile::tempdir().unwrap();
    let spec = named_spec(
        dir.path(),
        "mpnet.yaml",
        "mpnet",
        &modelship_testkit::mpnet(),
        1,
        "  optimize: { quantize: q8_0 }\n",
    );
    let out = modelship()
        .args(["plan", "--json", "-f"])
        .arg(&spec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: Value = serde_json::from_slice(&out.stdout).unwrap();
    // q8_0 matrices, the word table expanded to f32: between the file and f32.
    let weights = plan["estimate"]["weights_bytes"].as_u64().unwrap();
    assert!((150 << 20..250 << 20).contains(&weights), "{plan}");
}

#[tokio::test(flavor = "multi_thread")]
async fn rerankers_classifiers_and_encoders_deploy_behind_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("data"));
    let deployments = [
        (
            "reranker",
            "bert-reranker",
            "  optimize: { quantize: auto, gate: { min_top1: 0.9 } }\n",
        ),
        ("classifier", "roberta-multilabel", ""),
        ("multilingual", "xlm-roberta-cls", ""),
        ("mpnet", "mpnet-last", "  optimize: { quantize: q8_0 }\n"),
    ];
    for (name, model, extra) in deployments {
        let spec = named_spec(
            dir.path(),
            &format!("{name}.yaml"),
            name,
            &modelship_testkit::tiny_encoder(model),
            1,
            extra,
        );
        let out = cp.cli(&["deploy", "-f", spec.to_str().unwrap(), "--wait"]);
        assert!(
            out.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let client = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        let req = client.post(format!("{}{path}", cp.gateway)).json(&body);
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let documents = [
        "Paris is the capital of France.",
        "Bananas are yellow.",
        "France borders Spain.",
    ];
    let (status, v) = post(
        "/v1/rerank",
        json!({"model": "reranker", "query": "capital of France", "documents": documents, "top_n": 2}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["results"].as_array().unwrap().len(), 2);
    let (status, v) = post(
        "/rerank",
        json!({"model": "reranker", "query": "capital of France", "texts": documents}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v.as_array().unwrap().len(), 3);
    let (status, v) = post(
        "/predict",
        json!({"model": "classifier", "inputs": [["first text"], ["second text"]]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v[0].as_array().unwrap().len(), 4, "{v}");
    let (status, v) = post(
        "/v1/embeddings",
        json!({"model": "multilingual", "input": ["un texte", "ein Text"], "prompt_name": "document", "dimensions": 16}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"][1]["embedding"].as_array().unwrap().len(), 16);
    let (status, v) = post(
        "/v1/embeddings",
        json!({"model": "mpnet", "input": "quantized MPNet"}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 64);
    let (status, v) = post(
        "/v2/models/reranker/infer",
        json!({"inputs": [
            {"name": "query", "shape": [1], "datatype": "BYTES", "data": ["capital"]},
            {"name": "text", "shape": [2], "datatype": "BYTES", "data": documents[..2]},
        ]}),
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["outputs"][0]["shape"], json!([2]));
    // A reranker asked to classify-rerank the wrong way: named, through the hop.
    let (status, v) = post(
        "/rerank",
        json!({"model": "classifier", "query": "q", "texts": ["a"]}),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    assert_eq!(v["error"]["param"], "model");

    // The optimize stage measured the reranker's candidates by their scores
    // (its table's columns) and chose one.
    let runs = cp.json(&["get", "runs"]).to_string();
    assert!(runs.contains("max Δ") && runs.contains("chosen"), "{runs}");

    // A spec whose task contradicts the model fails validation.
    let wrong = named_spec(
        dir.path(),
        "wrong.yaml",
        "wrong",
        &modelship_testkit::tiny_encoder("bert-classifier"),
        1,
        "",
    );
    let text = std::fs::read_to_string(&wrong)
        .unwrap()
        .replace("  model:\n", "  model:\n    task: embeddings\n");
    std::fs::write(&wrong, text).unwrap();
    let out = cp.cli(&["deploy", "-f", wrong.to_str().unwrap(), "--wait"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("spec.model.task is `embeddings`") && err.contains("classify"),
        "{err}"
    );

    for name in ["reranker", "classifier", "mpnet"] {
        assert!(cp.cli(&["delete", name]).status.success());
    }
    cp.delete_and_stop("multilingual");
}

#[test]
fn build_packages_a_classifier() {
    let dir = tempfile::tempdir().unwrap();
    let spec = named_spec(
        dir.path(),
        "classifier.yaml",
        "classifier",
        &modelship_testkit::tiny_encoder("bert-classifier"),
        1,
        "",
    );
    let oci = dir.path().join("oci");
    let out = modelship()
        .args(["build", "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("-f")
        .arg(&spec)
        .arg("--oci-dir")
        .arg(&oci)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(oci.join("index.json").is_file());
}
