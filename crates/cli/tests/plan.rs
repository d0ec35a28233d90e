//! `modelship plan` as users run it: the estimate's terms, placements and
//! pending replicas in JSON, and exit 64 naming the field of a bad file.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

mod support;

use support::modelship;

fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).unwrap();
    p
}

fn spec(dir: &Path, extra: &str) -> PathBuf {
    write(
        dir,
        "spec.yaml",
        &format!(
            "apiVersion: modelship.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: minilm\nspec:\n  model:\n    source: {}\n{extra}",
            modelship_testkit::minilm().display()
        ),
    )
}

fn plan(spec: &Path, nodes: &Path) -> Output {
    plan_with_cache(spec, nodes, &modelship_testkit::cache_dir())
}

/// `plan --json` with `MODELSHIP_CACHE` (where capacity profiles live) set.
fn plan_with_cache(spec: &Path, nodes: &Path, cache: &Path) -> Output {
    modelship()
        .env("MODELSHIP_CACHE", cache)
        .args([
            "plan",
            "-f",
            spec.to_str().unwrap(),
            "--nodes",
            nodes.to_str().unwrap(),
            "--json",
        ])
        .output()
        .unwrap()
}

#[test]
fn plan_json_has_every_term_placements_and_pending() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(
        dir.path(),
        "  optimize:\n    quantize: q8_0\n  serving: { max_context: 256, max_batch_tokens: 4096 }\n  replicas: 3\n  node_selector: { zone: a }\n",
    );
    let nodes = write(
        dir.path(),
        "nodes.yaml",
        "nodes:\n  - { name: big, cpu: 8, memory: 8Gi, labels: { zone: a } }\n  - { name: small, cpu: 8, memory: 64Mi, labels: { zone: a } }\n  - { name: other, cpu: 8, memory: 64Gi, labels: { zone: b } }\n",
    );
    let o = plan(&spec, &nodes);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let e = &v["estimate"];
    let terms = [
        "weights_bytes",
        "loading_bytes",
        "kv_cache_bytes",
        "activations_bytes",
        "runtime_bytes",
    ];
    for t in terms {
        assert!(e[t].is_u64(), "{t} in {e}");
    }
    assert_eq!(e["kv_cache_bytes"], 0, "an encoder has no KV cache");
    let weights = e["weights_bytes"].as_u64().unwrap();
    // q8_0: the matrices shrink, the embedding table stays f32 in memory.
    assert!(weights > 45 << 20 && weights < 80 << 20, "{weights}");
    assert!(e["total_bytes"].as_u64().unwrap() >= weights + e["runtime_bytes"].as_u64().unwrap());
    assert_eq!(v["replicas"], 3);
    let placements = v["placements"].as_array().unwrap();
    let pending = v["pending"].as_array().unwrap();
    assert_eq!(placements.len() + pending.len(), 3);
    assert!(
        placements.iter().all(|p| p["node"] == "big"),
        "the selector keeps `other` out, `small` is too small: {v}"
    );
    assert!(pending.is_empty(), "8 GiB holds three replicas: {v}");

    let crowded = write(
        dir.path(),
        "crowded.yaml",
        "nodes:\n  - { name: small, cpu: 8, memory: 64Mi, labels: { zone: a } }\n",
    );
    let v: Value = serde_json::from_slice(&plan(&spec, &crowded).stdout).unwrap();
    let pending = v["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 3);
    assert!(
        pending[0]["reason"]
            .as_str()
            .unwrap()
            .contains("largest free 64.00 MiB on small"),
        "{v}"
    );
}

#[test]
fn bad_specs_and_nodes_files_exit_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let good_spec = spec(dir.path(), "");
    let good_nodes = write(
        dir.path(),
        "n.yaml",
        "nodes:\n  - { name: a, cpu: 2, memory: 4Gi }\n",
    );
    for (nodes, field) in [
        ("nodes:\n  - { name: a, cpu: 2, memory: 4Qi }\n", "4Qi"),
        (
            "nodes:\n  - { name: a, cpu: 0, memory: 4Gi }\n",
            "nodes[0].cpu",
        ),
        (
            "nodes:\n  - { name: a, cpu: 2, memory: 4Gi, zone: x }\n",
            "zone",
        ),
    ] {
        let o = plan(&good_spec, &write(dir.path(), "bad.yaml", nodes));
        let err = String::from_utf8_lossy(&o.stderr).to_string();
        assert_eq!(o.status.code(), Some(64), "{err}");
        assert!(err.contains(field), "{field}: {err}");
    }
    let o = plan(&spec(dir.path(), "  resources: { cpu: -1 }\n"), &good_nodes);
    assert_eq!(o.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&o.stderr).contains("spec.resources.cpu"));
}

#[test]
fn bench_measures_a_profile_that_plan_sizes_an_slo_from() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let minilm = modelship_testkit::minilm();
    let o = modelship()
        .env("MODELSHIP_CACHE", &cache)
        .args([
            "bench",
            minilm.to_str().unwrap(),
            "--levels",
            "1,2",
            "--seconds",
            "0.5",
            "--threads",
            "2",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let profile: Value = serde_json::from_slice(&o.stdout).unwrap();
    let points = profile["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    for p in points {
        let (rps, p50, p99) = (
            p["rps"].as_f64().unwrap(),
            p["p50_ms"].as_f64().unwrap(),
            p["p99_ms"].as_f64().unwrap(),
        );
        assert!(rps > 1.0 && p50 > 0.0 && p99 >= p50, "{p}");
    }
    assert!(cache.join("profiles/all-MiniLM-L6-v2.json").is_file());

    // 10× what one replica sustains, with a generous latency bound.
    let best = points
        .iter()
        .map(|p| p["rps"].as_f64().unwrap())
        .fold(0.0, f64::max);
    let spec = spec(
        dir.path(),
        &format!(
            "  slo: {{ rps: {}, p99_ms: 10000 }}\n",
            (best * 10.0).round()
        ),
    );
    let nodes = write(
        dir.path(),
        "n.yaml",
        "nodes:\n  - { name: a, cpu: 64, memory: 64Gi }\n",
    );
    let o = plan_with_cache(&spec, &nodes, &cache);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let replicas = v["replicas"].as_u64().unwrap();
    assert!((10..=11).contains(&replicas), "{v}");
    assert!(
        v["replicas_reason"].as_str().unwrap().starts_with("slo "),
        "{v}"
    );

    // Without a profile: a message saying how to make one.
    let o = plan_with_cache(&spec, &nodes, &dir.path().join("empty"));
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("modelship bench"));
}
