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
    // Where render keeps the optimized model (never the working directory).
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
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
        "--data-dir",
        data,
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
        "--data-dir",
        data,
        "-f",
        fixed.to_str().unwrap(),
        "--image",
        "fixed:v1",
    ]);
    std::fs::write(&file, &yaml).unwrap();
    validate(&file);
    assert!(yaml.contains("replicas: 3"), "{yaml}");
    // The spec's memory (1Gi) is both the request and the limit.
    assert!(yaml.contains("memory: 1024Mi"), "{yaml}");
    assert!(!yaml.contains("HorizontalPodAutoscaler"));

    // With API keys: a Secret the pods mount, still valid Kubernetes, and
    // the keys nowhere but in the Secret.
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# team keys\nk8s-key-one\nk8s-key-two\n").unwrap();
    let yaml = run(&[
        "render",
        "kubernetes",
        "--data-dir",
        data,
        "-f",
        fixed.to_str().unwrap(),
        "--image",
        "fixed:v1",
        "--api-keys",
        keys.to_str().unwrap(),
    ]);
    std::fs::write(&file, &yaml).unwrap();
    validate(&file);
    let secret_doc = yaml
        .split("\n---\n")
        .find(|d| d.contains("kind: Secret"))
        .expect("a Secret");
    assert!(secret_doc.contains("k8s-key-one") && secret_doc.contains("fixed-api-keys"));
    assert_eq!(yaml.matches("k8s-key-one").count(), 1, "{yaml}");
    assert!(yaml.contains("MODELSHIP_API_KEYS_FILE"), "{yaml}");
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
            "--data-dir",
            dir.path().join("data").to_str().unwrap(),
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

/// The Kubernetes API stand-in (`support/kube_api_standin.py`): no API
/// server can be installed here, so `deploy`'s wire protocol is checked
/// against a recorder of the calls a real one would get.
struct KubeApi {
    child: std::process::Child,
    url: String,
    log: std::path::PathBuf,
}

impl KubeApi {
    fn start(dir: &Path) -> KubeApi {
        let port_file = dir.join("kube-port");
        let log = dir.join("kube-requests.jsonl");
        let script =
            modelship_testkit::repo_root().join("crates/cli/tests/support/kube_api_standin.py");
        let child = Command::new("python3")
            .arg(script)
            .arg(&port_file)
            .arg(&log)
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let port = loop {
            if let Ok(p) = std::fs::read_to_string(&port_file)
                && !p.is_empty()
            {
                break p;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the API stand-in did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        };
        KubeApi {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
        }
    }

    fn kubeconfig(&self, dir: &Path) -> std::path::PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: test\n\
                 clusters:\n- name: test\n  cluster:\n    server: {}\n\
                 users:\n- name: test\n  user:\n    token: not-a-secret\n\
                 contexts:\n- name: test\n  context:\n    cluster: test\n    user: test\n    namespace: models\n",
                self.url
            ),
        )
        .unwrap();
        path
    }

    fn requests(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    /// The bodies of the Deployment applies so far.
    fn deployment_applies(&self) -> Vec<serde_json::Value> {
        self.requests()
            .into_iter()
            .filter(|r| {
                r["method"] == "PATCH"
                    && r["path"] == "/apis/apps/v1/namespaces/models/deployments/kubetest"
            })
            .map(|r| r["body"].clone())
            .collect()
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn image_of(deployment: &serde_json::Value) -> String {
    deployment["spec"]["template"]["spec"]["containers"][0]["image"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn deploy_server_side_applies_waits_scales_rolls_back_and_deletes() {
    use std::time::{Duration, Instant};
    use support::control_plane::ControlPlane;
    let dir = tempfile::tempdir().unwrap();
    let api = KubeApi::start(dir.path());
    let kubeconfig = api.kubeconfig(dir.path());
    let registry = support::registry::Registry::start();
    // With API keys, which the pods (reached through their Service, not the
    // gateway) must require too.
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "cluster-api-key\n").unwrap();
    let cp = ControlPlane::start_env(
        &dir.path().join("data"),
        &["--api-keys", keys.to_str().unwrap()],
        &[("KUBECONFIG", &kubeconfig)],
    );
    let minilm = modelship_testkit::minilm();
    // `auto`: the precision is decided by the optimize stage, which
    // `render kubernetes` must agree with (below).
    let tail = format!(
        "  optimize: {{ quantize: auto, gate: {{ min_cosine: 0.99 }} }}\n  image: {}/kubetest\n  target: kubernetes\n",
        registry.addr
    );
    let v1 = named_spec(dir.path(), "v1.yaml", "kubetest", &minilm, 2, &tail);
    let out = cp.cli(&["deploy", "-f", v1.to_str().unwrap(), "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // Every object by server-side apply, as modelship's field manager.
    let applies: Vec<serde_json::Value> = api
        .requests()
        .into_iter()
        .filter(|r| r["method"] == "PATCH")
        .collect();
    let paths: Vec<&str> = applies
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            "/api/v1/namespaces/models/serviceaccounts/kubetest",
            "/api/v1/namespaces/models/secrets/kubetest-api-keys",
            "/apis/apps/v1/namespaces/models/deployments/kubetest",
            "/api/v1/namespaces/models/services/kubetest",
            "/apis/policy/v1/namespaces/models/poddisruptionbudgets/kubetest",
            "/apis/networking.k8s.io/v1/namespaces/models/networkpolicies/kubetest",
        ]
    );
    // The key is in the Secret, which the pods mount; nowhere else.
    assert_eq!(
        applies[1]["body"]["stringData"]["keys"],
        "cluster-api-key\n"
    );
    for r in applies.iter().filter(|r| r["body"]["kind"] != "Secret") {
        assert!(!r["body"].to_string().contains("cluster-api-key"), "{r}");
    }
    let pod = &applies[2]["body"]["spec"]["template"]["spec"];
    assert_eq!(
        pod["containers"][0]["env"][0]["name"],
        "MODELSHIP_API_KEYS_FILE"
    );
    for r in &applies {
        assert_eq!(r["content_type"], "application/apply-patch+yaml");
        assert_eq!(r["query"]["fieldManager"], serde_json::json!(["modelship"]));
        assert_eq!(r["query"]["force"], serde_json::json!(["true"]));
    }
    // It waited on the Deployment's status, and the pods run the image the
    // pipeline pushed, pinned by digest, which the registry serves.
    assert!(api.requests().iter().any(|r| r["method"] == "GET"
        && r["path"] == "/apis/apps/v1/namespaces/models/deployments/kubetest"));
    let first = api.deployment_applies().last().unwrap().clone();
    assert_eq!(first["spec"]["replicas"], 2);
    let image = image_of(&first);
    let (repo_tag, digest) = image.split_once('@').expect("pinned by digest");
    assert!(
        repo_tag.starts_with(&format!("{}/kubetest:", registry.addr)),
        "{image}"
    );
    let pulled = std::process::Command::new("curl")
        .args([
            "-sf",
            "-o",
            "/dev/null",
            "-H",
            "Accept: application/vnd.oci.image.manifest.v1+json",
        ])
        .arg(format!(
            "http://{}/v2/kubetest/manifests/{digest}",
            registry.addr
        ))
        .status()
        .unwrap();
    assert!(pulled.success(), "the registry does not serve {image}");

    // `render kubernetes` shows what deploy applied: the same requests and
    // limits, planned from the same optimized model and recorded plan rule.
    let data = dir.path().join("data");
    let rendered = run(&[
        "render",
        "kubernetes",
        "-f",
        v1.to_str().unwrap(),
        "--image",
        &image,
        "--namespace",
        "models",
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let rendered = rendered
        .split("---\n")
        .find(|d| d.contains("kind: Deployment"))
        .map(yaml_to_json)
        .unwrap();
    let rendered: serde_json::Value = serde_json::from_str(&rendered).unwrap();
    let resources =
        |d: &serde_json::Value| d["spec"]["template"]["spec"]["containers"][0]["resources"].clone();
    assert_eq!(resources(&rendered), resources(&first));
    assert_eq!(rendered["spec"]["replicas"], first["spec"]["replicas"]);

    // Scale: the Deployment is applied again with the new count.
    assert!(cp.cli(&["scale", "kubetest", "3"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while api.deployment_applies().last().unwrap()["spec"]["replicas"] != 3 {
        assert!(Instant::now() < deadline, "scale was not applied");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A revision whose pods never become available (the stand-in stalls a
    // Deployment limited to 13Mi): the run fails and revision 1 comes back.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        std::fs::read_to_string(&v1)
            .unwrap()
            .replace("memory: 1Gi", "memory: 13Mi"),
    )
    .unwrap();
    let out = cp.cli(&["deploy", "-f", bad.to_str().unwrap(), "--wait"]);
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(all.contains("did not roll out"), "{all}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let last = api.deployment_applies().last().unwrap().clone();
        let memory =
            &last["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"];
        if memory == "1024Mi" && image_of(&last) == image {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "revision 1 was not applied back: {last}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // With autoscale the cluster's HorizontalPodAutoscaler scales the
    // Deployment; the gateway's autoscaler, whose traffic a cluster's does
    // not pass through, leaves it alone (it would see no load and scale it
    // to its minimum, applying the objects again).
    let auto = named_spec(
        dir.path(),
        "auto.yaml",
        "kubeauto",
        &minilm,
        2,
        &format!(
            "{tail}  autoscale: {{ min: 1, max: 3, target_concurrency: 4, stable_window: 2s, panic_window: 1s }}\n"
        ),
    );
    assert!(
        cp.cli(&["deploy", "-f", auto.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    let applies_of_auto = || {
        api.requests()
            .iter()
            .filter(|r| {
                r["method"] == "PATCH"
                    && r["path"] == "/apis/apps/v1/namespaces/models/deployments/kubeauto"
            })
            .count()
    };
    let after_deploy = applies_of_auto();
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        applies_of_auto(),
        after_deploy,
        "re-applied by an autoscaler"
    );
    let events = cp.json(&["status", "kubeauto"])["events"].to_string();
    assert!(!events.contains("autoscaled"), "{events}");
    assert!(cp.cli(&["delete", "kubeauto"]).status.success());

    // Delete removes every object.
    assert!(cp.cli(&["delete", "kubetest"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let deletes = api
            .requests()
            .into_iter()
            .filter(|r| r["method"] == "DELETE")
            .count();
        // kubeauto's seven (with its HPA), kubetest's six.
        if deletes == 13 {
            break;
        }
        assert!(Instant::now() < deadline, "{deletes} of 13 objects deleted");
        std::thread::sleep(Duration::from_millis(100));
    }
    cp.kill();
}
