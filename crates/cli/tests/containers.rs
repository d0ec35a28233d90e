//! Images and container targets against a real Docker engine, a real
//! single-node Swarm and a real registry (Debian's `docker.io` and
//! `docker-registry`, set up by `scripts/setup-services.sh`): builds are
//! reproducible and share the model layer, images load into Docker, push to
//! and pull from a registry, and serve; deployments on the `docker` and
//! `swarm` targets answer through the gateway, scale, roll out, roll back
//! and leave nothing behind when deleted.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::control_plane::{ControlPlane, named_spec, spec_with_resources};
use support::modelship;
use support::registry::Registry;

/// A `docker` command that must succeed; its stdout, trimmed.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("the docker CLI is missing: run scripts/setup-services.sh");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Fails loudly when no engine answers, rather than skipping.
fn require_engine() {
    let ok = Command::new("docker")
        .args(["info", "--format", "{{.Swarm.LocalNodeState}}"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == "active");
    assert!(
        ok,
        "no Docker engine in Swarm mode answers: run scripts/setup-services.sh (installs docker.io, starts dockerd, swarm init)"
    );
}

fn build(spec: &Path, data: &Path, flags: &[&str]) -> Value {
    let out = modelship()
        .args(["build", "-f"])
        .arg(spec)
        .arg("--data-dir")
        .arg(data)
        .args(flags)
        .args(["-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "build {flags:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn layer<'a>(built: &'a Value, role: &str) -> &'a Value {
    built["layers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["role"] == role)
        .unwrap_or_else(|| panic!("no {role} layer in {built}"))
}

fn blob(layout: &Path, digest: &str) -> PathBuf {
    layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

/// The paths in a gzipped layer tar.
fn layer_paths(path: &Path) -> Vec<String> {
    let out = Command::new("tar").arg("-tzf").arg(path).output().unwrap();
    assert!(out.status.success(), "tar -tzf {}", path.display());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

const Q8: &str = "  optimize: { quantize: q8_0 }\n";

#[test]
fn builds_are_reproducible_and_revisions_share_the_model_layer() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let minilm = modelship_testkit::minilm();
    let a = named_spec(dir.path(), "a.yaml", "repro", &minilm, 1, Q8);
    let oci1 = dir.path().join("oci1");
    let oci2 = dir.path().join("oci2");
    let first = build(&a, &data, &["--oci-dir", oci1.to_str().unwrap()]);
    let second = build(&a, &data, &["--oci-dir", oci2.to_str().unwrap()]);
    assert_eq!(
        first["manifest"], second["manifest"],
        "same inputs, another digest"
    );
    let manifest = first["manifest"].as_str().unwrap();
    assert_eq!(
        std::fs::read(blob(&oci1, manifest)).unwrap(),
        std::fs::read(blob(&oci2, manifest)).unwrap()
    );

    // Only what the image needs: a stripped runtime well under 40 MB, a
    // non-root user, no base image, the model and the deployment record.
    let runtime = layer(&first, "runtime");
    assert!(runtime["size"].as_u64().unwrap() <= 40 << 20, "{runtime}");
    let runtime_files = layer_paths(&blob(&oci1, runtime["digest"].as_str().unwrap()));
    for want in ["usr/local/bin/modelship", "etc/passwd", "tmp/"] {
        assert!(
            runtime_files.iter().any(|p| p == want),
            "{want} not in {runtime_files:?}"
        );
    }
    assert!(
        runtime_files.iter().any(|p| p.ends_with("/libc.so.6")),
        "{runtime_files:?}"
    );
    let model_files = layer_paths(&blob(
        &oci1,
        layer(&first, "model")["digest"].as_str().unwrap(),
    ));
    assert!(
        model_files.contains(&"models/all-MiniLM-L6-v2.q8_0.gguf".to_owned()),
        "{model_files:?}"
    );
    let manifest_json: Value =
        serde_json::from_slice(&std::fs::read(blob(&oci1, manifest)).unwrap()).unwrap();
    let config: Value = serde_json::from_slice(
        &std::fs::read(blob(
            &oci1,
            manifest_json["config"]["digest"].as_str().unwrap(),
        ))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config["config"]["User"], "65532:65532");
    assert_eq!(config["rootfs"]["diff_ids"].as_array().unwrap().len(), 3);
    assert_eq!(
        config["config"]["Cmd"][1],
        "/models/all-MiniLM-L6-v2.q8_0.gguf"
    );
    assert_eq!(config["created"], "1970-01-01T00:00:00Z");
    assert_eq!(
        manifest_json["annotations"]["dev.modelship.deployment"],
        "repro"
    );
    let deployment_files = layer_paths(&blob(
        &oci1,
        layer(&first, "deployment")["digest"].as_str().unwrap(),
    ));
    assert!(deployment_files.contains(&"etc/modelship/deployment.json".to_owned()));

    // A new revision with the same weights: a new image, the same model
    // and runtime layers.
    let b = named_spec(
        dir.path(),
        "b.yaml",
        "repro",
        &minilm,
        3,
        &format!("{Q8}  serving: {{ max_queue: 64 }}\n"),
    );
    let changed = build(&b, &data, &["--oci-dir", oci1.to_str().unwrap()]);
    assert_ne!(changed["manifest"], first["manifest"]);
    assert_eq!(
        layer(&changed, "model")["digest"],
        layer(&first, "model")["digest"]
    );
    assert_eq!(
        layer(&changed, "runtime")["digest"],
        layer(&first, "runtime")["digest"]
    );
    assert_ne!(
        layer(&changed, "deployment")["digest"],
        layer(&first, "deployment")["digest"]
    );

    // SOURCE_DATE_EPOCH stamps the image (reproducible-builds.org).
    let out = modelship()
        .args(["build", "-f"])
        .arg(&a)
        .arg("--data-dir")
        .arg(&data)
        .args(["--oci-dir", oci2.to_str().unwrap(), "-o", "json"])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .output()
        .unwrap();
    assert!(out.status.success());
    let stamped: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(stamped["manifest"], first["manifest"]);
    let cfg: Value = serde_json::from_slice(
        &std::fs::read(blob(&oci2, stamped["config"].as_str().unwrap())).unwrap(),
    )
    .unwrap();
    assert_eq!(cfg["created"], "2023-11-14T22:13:20Z");
}

async fn embed(base: &str, model: &str, text: &str) -> Vec<f32> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = reqwest::Client::new()
            .post(format!("{base}/v1/embeddings"))
            .json(&json!({"model": model, "input": text}))
            .send()
            .await;
        if let Ok(r) = r
            && r.status() == 200
        {
            let v: Value = r.json().await.unwrap();
            return v["data"][0]["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "{base} does not answer embeddings"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The optimized model `build` cached under `data`.
fn cached_gguf(data: &Path) -> PathBuf {
    for entry in std::fs::read_dir(data.join("artifacts")).unwrap() {
        for f in std::fs::read_dir(entry.unwrap().path()).unwrap() {
            let f = f.unwrap().path();
            if f.extension().is_some_and(|e| e == "gguf") {
                return f;
            }
        }
    }
    panic!("no optimized model under {}", data.display());
}

#[tokio::test]
async fn images_load_into_docker_serve_and_travel_through_a_registry() {
    require_engine();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let minilm = modelship_testkit::minilm();
    let spec = named_spec(dir.path(), "img.yaml", "imgtest", &minilm, 1, Q8);
    let archive = dir.path().join("img.tar");
    let built = build(
        &spec,
        &data,
        &["--docker-archive", archive.to_str().unwrap()],
    );
    let reference = built["reference"].as_str().unwrap().to_owned();
    let loaded = docker(&["load", "-i", archive.to_str().unwrap()]);
    assert!(loaded.contains(&reference), "{loaded}");
    // Docker's image id is the config's digest: the archive loaded as built.
    assert_eq!(
        docker(&["image", "inspect", "--format", "{{.Id}}", &reference]),
        built["config"].as_str().unwrap()
    );

    // It runs read-only as the non-root user and serves what the same
    // model serves outside a container.
    let name = format!("modelship-imgtest-{}", std::process::id());
    let _container = RemoveContainer(name.clone());
    docker(&[
        "run",
        "-d",
        "--rm",
        "--read-only",
        "--name",
        &name,
        "-p",
        "127.0.0.1::8080",
        &reference,
    ]);
    let port = docker(&["port", &name, "8080/tcp"]);
    let port = port
        .lines()
        .next()
        .unwrap()
        .rsplit(':')
        .next()
        .unwrap()
        .to_owned();
    let in_container = embed(
        &format!("http://127.0.0.1:{port}"),
        "imgtest",
        "a container",
    )
    .await;
    let gguf = cached_gguf(&data);
    let (local, url) = support::serve(&gguf);
    let local = KillOnDrop(local);
    // Outside a container the server answers to the file's stem.
    let file_name = gguf.file_stem().unwrap().to_string_lossy().into_owned();
    let outside = embed(&url, &file_name, "a container").await;
    drop(local);
    let cos = modelship_testkit::cosine(&in_container, &outside);
    assert!(cos > 0.9999, "cosine {cos}");
    assert_eq!(
        docker(&["inspect", "--format", "{{.Config.User}}", &name]),
        "65532:65532"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while docker(&["inspect", "--format", "{{.State.Health.Status}}", &name]) != "healthy" {
        assert!(
            Instant::now() < deadline,
            "the image's health check never passed"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    docker(&["rm", "-f", &name]);

    // Pushed to a registry; a second push uploads nothing; a revision with
    // the same weights uploads everything but the model layer.
    let registry = Registry::start();
    let repo = format!("{}/imgtest", registry.addr);
    let pushed = build(&spec, &data, &["--push", &format!("{repo}:v1")]);
    assert_eq!(
        pushed["pushed"]["uploaded"].as_array().unwrap().len(),
        4,
        "{pushed}"
    );
    let again = build(&spec, &data, &["--push", &format!("{repo}:v1")]);
    assert_eq!(
        again["pushed"]["uploaded"].as_array().unwrap().len(),
        0,
        "{again}"
    );
    let spec2 = named_spec(
        dir.path(),
        "img2.yaml",
        "imgtest",
        &minilm,
        2,
        &format!("{Q8}  serving: {{ max_queue: 64 }}\n"),
    );
    let v2 = build(&spec2, &data, &["--push", &format!("{repo}:v2")]);
    let model = layer(&v2, "model")["digest"].clone();
    assert!(
        v2["pushed"]["skipped"].as_array().unwrap().contains(&model),
        "{v2}"
    );
    assert!(
        !v2["pushed"]["uploaded"]
            .as_array()
            .unwrap()
            .contains(&model),
        "{v2}"
    );

    // Docker pulls it back: the same image.
    docker(&["rmi", &reference]);
    docker(&["pull", &format!("{repo}:v1")]);
    assert_eq!(
        docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            &format!("{repo}:v1")
        ]),
        built["config"].as_str().unwrap()
    );
    docker(&["rmi", &format!("{repo}:v1")]);
}

/// Kills a child process when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Removes a container when the test ends, passed or not.
struct RemoveContainer(String);

impl Drop for RemoveContainer {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["rm", "-f", &self.0])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// What the engine still runs for `deployment`: containers and services.
fn engine_objects(deployment: &str) -> String {
    let label = format!("label=dev.modelship.deployment={deployment}");
    let containers = docker(&["ps", "-a", "--filter", &label, "--format", "{{.Names}}"]);
    let services = docker(&["service", "ls", "--filter", &label, "--format", "{{.Name}}"]);
    format!("{containers}{services}")
}

/// Removes what a failed test left in the engine.
struct EngineCleanup(String);

impl Drop for EngineCleanup {
    fn drop(&mut self) {
        let label = format!("label=dev.modelship.deployment={}", self.0);
        for (list, rm) in [
            (
                vec!["service", "ls", "-q", "--filter", &label],
                vec!["service", "rm"],
            ),
            (vec!["ps", "-aq", "--filter", &label], vec!["rm", "-f"]),
        ] {
            if let Ok(out) = Command::new("docker").args(&list).output() {
                for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("docker")
                        .args(&rm)
                        .arg(id)
                        .stdout(Stdio::null())
                        .status();
                }
            }
        }
    }
}

/// Deploy, serve, scale, roll out, roll back and delete on `target`;
/// `image` names a repository to push to (the engine then pulls), else the
/// image is loaded into the engine.
async fn lifecycle(
    target: &str,
    name: &str,
    image: Option<&str>,
    check_engine: impl Fn(&str, u32),
) {
    require_engine();
    let _cleanup = EngineCleanup(name.to_owned());
    let dir = tempfile::tempdir().unwrap();
    let minilm = modelship_testkit::minilm();
    let cp = ControlPlane::start(&dir.path().join("data"));
    let mut tail = format!("  target: {target}\n");
    if let Some(repository) = image {
        tail += &format!("  image: {repository}\n");
    }
    // Half a CPU each: reserved on the machine, and each container's quota.
    let resources = "{ cpu: 0.5, memory: 1Gi }";
    let v1 = spec_with_resources(
        dir.path(),
        "v1.yaml",
        name,
        &minilm,
        1,
        resources,
        &format!("{Q8}{tail}"),
    );
    assert!(
        cp.cli(&["deploy", "-f", v1.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    let ready = cp.wait_ready(1, 1, Duration::from_secs(60));
    assert_eq!(ready[0]["target"], target);
    let e1 = embed(&cp.gateway, name, "through the gateway").await;
    assert_eq!(e1.len(), 384);
    check_engine(name, 1);
    if target == "docker" {
        // Replica output through the Engine's log stream.
        let logs = cp.cli(&["logs", name]);
        let logs = String::from_utf8_lossy(&logs.stdout);
        assert!(logs.contains("modelship: serving"), "{logs}");
    }

    assert!(cp.cli(&["scale", name, "2"]).status.success());
    cp.wait_ready(2, 1, Duration::from_secs(60));
    check_engine(name, 2);

    // A new revision (f16 weights, a new image), rolled out.
    let v2 = spec_with_resources(
        dir.path(),
        "v2.yaml",
        name,
        &minilm,
        1,
        resources,
        &format!("  optimize: {{ quantize: f16 }}\n{tail}"),
    );
    assert!(
        cp.cli(&["deploy", "-f", v2.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    cp.wait_ready(1, 2, Duration::from_secs(60));
    let e2 = embed(&cp.gateway, name, "through the gateway").await;
    assert!(modelship_testkit::cosine(&e1, &e2) > 0.99);

    // Rolled back: revision 3 runs revision 1's image again.
    assert!(cp.cli(&["rollback", name]).status.success());
    cp.wait_ready(1, 3, Duration::from_secs(60));
    let history = cp.json(&["history", name]);
    let revs = history["revisions"].as_array().unwrap();
    assert_eq!(revs[2]["cause"], "rollback to revision 1");
    assert_eq!(revs[2]["image"], revs[0]["image"]);
    assert_ne!(revs[1]["image"], revs[0]["image"]);
    let e3 = embed(&cp.gateway, name, "through the gateway").await;
    assert!(modelship_testkit::cosine(&e1, &e3) > 0.9999);

    cp.delete_and_stop(name);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !engine_objects(name).is_empty() {
        assert!(
            Instant::now() < deadline,
            "left behind: {}",
            engine_objects(name)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for image in revs.iter().filter_map(|r| r["image"].as_str()) {
        let _ = Command::new("docker")
            .args(["rmi", image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

#[tokio::test]
async fn docker_target_serves_scales_rolls_out_back_and_cleans_up() {
    lifecycle("docker", "dockertest", None, |name, replicas| {
        let label = format!("label=dev.modelship.deployment={name}");
        let ids = docker(&["ps", "-q", "--filter", &label]);
        let ids: Vec<&str> = ids.lines().collect();
        assert_eq!(ids.len(), replicas as usize, "{ids:?}");
        let c: Value = serde_json::from_str(&docker(&["inspect", ids[0]])).unwrap();
        let host = &c[0]["HostConfig"];
        assert_eq!(host["NanoCpus"], 500_000_000u64);
        assert_eq!(host["Memory"], 1u64 << 30);
        assert_eq!(host["ReadonlyRootfs"], true);
        assert_eq!(host["RestartPolicy"]["Name"], "on-failure");
        assert_eq!(c[0]["Config"]["User"], "65532:65532");
        assert!(
            c[0]["Config"]["Healthcheck"]["Test"]
                .to_string()
                .contains("probe")
        );
        assert!(c[0]["NetworkSettings"]["Networks"]["modelship"].is_object());
    })
    .await;
}

#[tokio::test]
async fn swarm_target_serves_scales_rolls_out_back_and_cleans_up() {
    // Through a registry, as a Swarm of several nodes needs.
    let registry = Registry::start();
    let repository = format!("{}/swarmtest", registry.addr);
    lifecycle("swarm", "swarmtest", Some(&repository), |name, replicas| {
        let service = format!("modelship-{name}-r1");
        let s: Value = serde_json::from_str(&docker(&["service", "inspect", &service])).unwrap();
        let spec = &s[0]["Spec"];
        assert_eq!(spec["Mode"]["Replicated"]["Replicas"], replicas);
        let res = &spec["TaskTemplate"]["Resources"];
        assert_eq!(res["Limits"]["NanoCPUs"], 500_000_000u64);
        assert_eq!(res["Limits"]["MemoryBytes"], 1u64 << 30);
        assert!(res["Reservations"]["MemoryBytes"].as_u64().unwrap() > 0);
        assert_eq!(spec["UpdateConfig"]["FailureAction"], "rollback");
        let image = spec["TaskTemplate"]["ContainerSpec"]["Image"]
            .as_str()
            .unwrap();
        assert!(
            image.starts_with(&format!("{repository}:")) && image.contains("@sha256:"),
            "the service does not pull the pushed image by digest: {image}"
        );
        let running = docker(&[
            "service",
            "ps",
            &service,
            "--filter",
            "desired-state=running",
            "-q",
        ]);
        assert_eq!(running.lines().count(), replicas as usize);
    })
    .await;
}
