//! `render kubernetes` and `crd`: the objects are valid against the
//! Kubernetes 1.33 JSON schemas (PyPI `kubernetes-validate`, strict), the
//! rendered YAML is snapshotted, and the committed CRD is what the spec's
//! Rust types generate now — and accepts the example spec.

use std::path::Path;
use std::process::Command;

mod support;

use support::control_plane::named_spec;
use support::modelship;

fn run(args: &[&str]) -> String {
    let out = modelship().args(args).output().unwrap();
    assert!(
        out.status.success(),
        "modelship {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Strict validation against Kubernetes 1.33's schemas.
fn validate(file: &Path) {
    let python = modelship_testkit::python();
    let out = Command::new(&python)
        .args(["-m", "kubernetes_validate", "-k", "1.33.0", "--strict"])
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubernetes-validate (installed by scripts/setup-peers.sh): {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn rendered_objects_are_valid_kubernetes_1_33_and_match_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let minilm = modelship_testkit::minilm();
    let spec = named_spec(
        dir.path(),
        "k.yaml",
        "minilm",
        &minilm,
        2,
        "  optimize: { quantize: q8_0 }\n  autoscale: { min: 2, max: 6, target_concurrency: 8 }\n  \
         node_selector: { pool: cpu }\n  target: kubernetes\n",
    );
    let yaml = run(&[
        "render",
        "kubernetes",
        "-f",
        spec.to_str().unwrap(),
        "--image",
        "registry.example/minilm:v1",
        "--namespace",
        "models",
    ]);
    let file = dir.path().join("objects.yaml");
    std::fs::write(&file, &yaml).unwrap();
    validate(&file);
    let kinds: Vec<&str> = yaml
        .lines()
        .filter_map(|l| l.strip_prefix("kind: "))
        .collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "Deployment",
            "Service",
            "PodDisruptionBudget",
            "NetworkPolicy",
            "HorizontalPodAutoscaler"
        ]
    );
    insta::assert_snapshot!("minilm_autoscaled", yaml);

    // Without autoscaling: a fixed count on the Deployment and no HPA.
    let fixed = named_spec(dir.path(), "f.yaml", "fixed", &minilm, 3, "");
    let yaml = run(&[
        "render",
        "kubernetes",
        "-f",
        fixed.to_str().unwrap(),
        "--image",
        "fixed:v1",
    ]);
    std::fs::write(&file, &yaml).unwrap();
    validate(&file);
    assert!(yaml.contains("replicas: 3"), "{yaml}");
    // The spec's memory (1Gi) is the limit; the plan's estimate the request.
    assert!(yaml.contains("memory: 1024Mi"), "{yaml}");
    assert!(!yaml.contains("HorizontalPodAutoscaler"));
}

#[test]
fn a_bad_namespace_is_a_configuration_error() {
    let dir = tempfile::tempdir().unwrap();
    let spec = named_spec(
        dir.path(),
        "k.yaml",
        "minilm",
        &modelship_testkit::minilm(),
        1,
        "",
    );
    let out = modelship()
        .args([
            "render",
            "kubernetes",
            "-f",
            spec.to_str().unwrap(),
            "--image",
            "x:v1",
            "-n",
            "Bad_NS",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--namespace"));
}

#[test]
fn the_committed_crd_is_fresh_valid_and_accepts_the_example() {
    let root = modelship_testkit::repo_root();
    let committed = std::fs::read_to_string(root.join("deploy/crd.yaml")).unwrap();
    let fresh = run(&["crd"]);
    assert!(
        committed == fresh,
        "deploy/crd.yaml is stale: run `target/release/modelship crd > deploy/crd.yaml` and commit it"
    );
    validate(&root.join("deploy/crd.yaml"));

    // The example spec validates against the CRD's schema; a wrong enum
    // value and an unknown-typed field do not.
    let check = |spec: &str| -> bool {
        let out = Command::new(modelship_testkit::python())
            .arg("-c")
            .arg(
                "import sys, json, jsonschema\n\
                 crd, spec = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n\
                 schema = crd['spec']['versions'][0]['schema']['openAPIV3Schema']\n\
                 jsonschema.validate(spec, schema)\n",
            )
            .arg(yaml_to_json(&fresh))
            .arg(spec)
            .output()
            .unwrap();
        out.status.success()
    };
    let example = yaml_to_json(
        &std::fs::read_to_string(root.join("examples/minilm-kubernetes.yaml")).unwrap(),
    );
    assert!(
        check(&example),
        "the example does not validate against the CRD"
    );
    assert!(
        !check(&example.replace("\"kubernetes\"", "\"nomad\"")),
        "target: nomad accepted"
    );
    assert!(
        !check(&example.replace("\"q8_0\"", "\"q3_z\"")),
        "quantize: q3_z accepted"
    );
    assert!(
        !check(&example.replace("\"1Gi\"", "\"lots\"")),
        "memory: lots accepted"
    );
}

/// One YAML document as JSON, through the binary's own YAML reader.
fn yaml_to_json(yaml: &str) -> String {
    let doc = yaml.trim_start_matches("---\n");
    let value: serde_json::Value = serde_saphyr::from_str(doc).unwrap();
    value.to_string()
}
