//! The control plane with real replicas: `modelship up`, `deploy`, the
//! gateway under a steady load while a rolling update, a `kill -9` of a
//! replica and a restart of the control plane happen, a revision that cannot
//! load rolled back, and `delete` leaving no process behind.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::alive;
use support::control_plane::{ControlPlane, named_spec, spec};
use support::etcd::EtcdServer;
use support::load::Load;
use support::modelship;

/// The memory limit of `pid`'s cgroup (v1 or v2), as the kernel reports it.
fn memory_limit(pid: u64) -> Option<u64> {
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let file = if controllers.split(',').any(|c| c == "memory") {
            format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes")
        } else if controllers.is_empty()
            && std::path::Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
        {
            format!("/sys/fs/cgroup{path}/memory.max")
        } else {
            continue;
        };
        return std::fs::read_to_string(file).ok()?.trim().parse().ok();
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollouts_crashes_and_restarts_lose_no_request() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cp = ControlPlane::start(&data);
    let minilm = modelship_testkit::minilm();

    // Deploy: the pipeline's stages are recorded; replicas serve.
    let v1 = spec(dir.path(), "v1.yaml", &minilm, 2, "");
    let out = cp.cli(&["deploy", "-f", v1.to_str().unwrap(), "--wait"]);
    assert!(out.status.success());
    let replicas = cp.wait_ready(2, 1, Duration::from_secs(30));
    for r in &replicas {
        assert_eq!(r["deployment"], "minilm");
        let endpoint = r["endpoint"].as_str().unwrap();
        assert!(
            endpoint.parse::<std::net::SocketAddr>().is_ok(),
            "{endpoint}"
        );
        let pid = r["pid"].as_u64().unwrap();
        assert!(alive(pid));
        // spec.resources.memory, enforced by the replica's cgroup.
        assert_eq!(
            memory_limit(pid),
            Some(1 << 30),
            "replica {pid}'s cgroup memory limit"
        );
    }
    // `status` says how limits are enforced.
    let status = String::from_utf8(cp.cli(&["status", "minilm"]).stdout).unwrap();
    assert!(status.contains("resource limits: cgroup"), "{status}");
    let run = cp.json(&["get", "runs", "1"]);
    let stages: Vec<&str> = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(stages, ["validate", "optimize", "plan", "rollout"]);
    assert!(
        run["stages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["status"] == "succeeded"
                && s["inputs_digest"].as_str().unwrap().starts_with("sha256:")
                && s["duration_ms"].is_u64())
    );

    // A rolling update to q8_0 under steady load: no request fails.
    let load = Load::start(&cp.gateway, 3);
    let v2 = spec(
        dir.path(),
        "v2.yaml",
        &minilm,
        2,
        "  optimize: { quantize: q8_0, gate: { min_cosine: 0.999 } }\n",
    );
    let out = cp.cli(&["deploy", "-f", v2.to_str().unwrap(), "--wait"]);
    assert!(out.status.success());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed during the rollout: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 20, "only {ok} requests during the rollout");
    cp.wait_ready(2, 2, Duration::from_secs(30));
    let stats = cp.json(&["status", "minilm"])["stats"].clone();
    let served_by = |rev: u64| {
        stats
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["revision"] == rev)
            .map_or(0, |s| s["requests"].as_u64().unwrap())
    };
    assert!(served_by(1) > 0 && served_by(2) > 0, "{stats}");

    // kill -9 one of three replicas under load: no request fails and a
    // replacement is ready within 10 s.
    assert!(cp.cli(&["scale", "minilm", "3"]).status.success());
    let before = cp.wait_ready(3, 2, Duration::from_secs(30));
    let load = Load::start(&cp.gateway, 3);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let victim = before[0]["pid"].as_u64().unwrap();
    let killed = Instant::now();
    assert!(
        std::process::Command::new("kill")
            .args(["-9", &victim.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let after = loop {
        let rs = cp.replicas();
        if rs.len() == 3
            && rs
                .iter()
                .all(|r| r["state"] == "ready" && r["pid"].as_u64() != Some(victim))
        {
            break rs;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "no replacement within 10 s: {rs:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let replaced_in = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} failed after kill -9: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 10);
    eprintln!("replacement ready {replaced_in:?} after kill -9");
    let restarted = after.iter().find(|r| r["id"] == before[0]["id"]).unwrap();
    assert_eq!(restarted["restarts"], 1);

    // The control plane killed and restarted: replicas keep running and are
    // adopted as they are.
    let ids = |rs: &[Value]| {
        let mut v: Vec<(String, u64, u64)> = rs
            .iter()
            .map(|r| {
                (
                    r["id"].as_str().unwrap().to_owned(),
                    r["pid"].as_u64().unwrap(),
                    r["restarts"].as_u64().unwrap(),
                )
            })
            .collect();
        v.sort();
        v
    };
    let before = ids(&after);
    cp.kill();
    assert!(
        before.iter().all(|(_, pid, _)| alive(*pid)),
        "replicas died with the control plane"
    );
    let cp = ControlPlane::start(&data);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let adopted = cp.wait_ready(3, 2, Duration::from_secs(10));
    assert_eq!(
        ids(&adopted),
        before,
        "replicas were restarted, not adopted"
    );
    let d = cp.json(&["get", "deployments"]);
    assert_eq!(d[0]["revision"], 2);
    assert_eq!(
        cp.json(&["history", "minilm"])["revisions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let r = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", cp.gateway))
        .json(&json!({"model": "minilm", "input": "after the restart"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Rollback to revision 1 serves its model again, as revision 3.
    assert!(
        cp.cli(&["rollback", "minilm", "--to", "1"])
            .status
            .success()
    );
    cp.wait_ready(3, 3, Duration::from_secs(30));
    let history = cp.json(&["history", "minilm"]);
    let last = &history["revisions"][2];
    assert_eq!(last["cause"], "rollback to revision 1");
    assert_eq!(last["artifact"], minilm.to_str().unwrap());

    // Delete leaves no replica process behind.
    let pids: Vec<u64> = cp
        .replicas()
        .iter()
        .map(|r| r["pid"].as_u64().unwrap())
        .collect();
    assert!(cp.cli(&["delete", "minilm"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cp.replicas().is_empty() || pids.iter().any(|&p| alive(p)) {
        assert!(Instant::now() < deadline, "replicas left after delete");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let gone = reqwest::Client::new()
        .post(format!("{}/v1/embeddings", cp.gateway))
        .json(&json!({"model": "minilm", "input": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(gone.status(), 404);
    cp.kill();
}

/// A MiniLM GGUF with one tensor renamed: it inspects and plans like the
/// real one, and fails when a replica loads it.
fn unloadable(dir: &Path) -> PathBuf {
    let good = modelship_testkit::quantized(
        &modelship_testkit::minilm(),
        modelship_types::QuantType::Q8_0,
        dir,
    );
    let mut bytes = std::fs::read(good).unwrap();
    let name = b"blk.0.ffn_down.weight";
    let at = bytes.windows(name.len()).position(|w| w == name).unwrap();
    bytes[at + 13] = b'X'; // blk.0.ffn_dowX.weight
    let bad = dir.join("unloadable.gguf");
    std::fs::write(&bad, bytes).unwrap();
    bad
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_specs_and_unloadable_revisions_leave_serving_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("data"));
    let v1 = spec(dir.path(), "v1.yaml", &modelship_testkit::minilm(), 1, "");
    assert!(
        cp.cli(&["deploy", "-f", v1.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    let serving = cp.wait_ready(1, 1, Duration::from_secs(30));

    // A spec with an unknown field: exit 64 naming it, nothing recorded.
    let typo = spec(
        dir.path(),
        "typo.yaml",
        &modelship_testkit::minilm(),
        1,
        "  replcias: 2\n",
    );
    let out = cp.cli(&["deploy", "-f", typo.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("replcias"));
    // Replicas that fit no node: the run fails at plan, saying why.
    let huge = dir.path().join("huge.yaml");
    let text = std::fs::read_to_string(&v1)
        .unwrap()
        .replace("memory: 1Gi", "memory: 100Ti");
    std::fs::write(&huge, text).unwrap();
    let out = cp.cli(&["deploy", "-f", huge.to_str().unwrap(), "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("plan failed") && err.contains("can never be placed"),
        "{err}"
    );
    // A model that fails the gate: the run fails at optimize.
    let strict = spec(
        dir.path(),
        "strict.yaml",
        &modelship_testkit::minilm(),
        1,
        "  optimize: { quantize: q4_0, gate: { min_cosine: 0.9999 } }\n",
    );
    let out = cp.cli(&["deploy", "-f", strict.to_str().unwrap(), "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("optimize failed") && err.contains("no precision passes the gate"),
        "{err}"
    );

    // A revision whose replicas cannot load is rolled back, with the reason.
    let load = Load::start(&cp.gateway, 2);
    let bad = spec(dir.path(), "bad.yaml", &unloadable(dir.path()), 1, "");
    let out = cp.cli(&["deploy", "-f", bad.to_str().unwrap(), "--wait"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("exited") && err.contains("rolled back to revision 1"),
        "{err}"
    );
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty() && ok > 0,
        "{ok} ok, failures {failures:?}"
    );
    let runs = cp.json(&["get", "runs"]);
    let failed = runs
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["status"] == "failed" && r["error"].as_str().unwrap().contains("rollout"))
        .unwrap();
    assert!(failed["error"].as_str().unwrap().contains("rolled back"));
    // What served before still serves, untouched.
    let now = cp.wait_ready(1, 1, Duration::from_secs(30));
    assert_eq!(now[0]["pid"], serving[0]["pid"]);
    assert_eq!(cp.json(&["get", "deployments"])[0]["revision"], 1);
    let events = cp.json(&["status", "minilm"])["events"].to_string();
    assert!(events.contains("rollout of revision"), "{events}");

    cp.delete_and_stop("minilm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_and_blue_green_rollouts() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("data"));
    let minilm = modelship_testkit::minilm();
    let v1 = spec(dir.path(), "v1.yaml", &minilm, 1, "");
    assert!(
        cp.cli(&["deploy", "-f", v1.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    let stable = cp.wait_ready(1, 1, Duration::from_secs(30));

    // A canary whose every answer is an error (injected at the gateway) is
    // judged at its first step and rolled back, with the reason recorded.
    let canary = "  rollout:\n    strategy: canary\n    canary: { steps: [50, 100], interval: 2s, max_error_rate: 0.05 }\n";
    let failing = spec(
        dir.path(),
        "failing.yaml",
        &minilm,
        1,
        &format!("{canary}  fault: {{ abort_percent: 100 }}\n"),
    );
    let load = Load::start(&cp.gateway, 2);
    let out = cp.cli(&["deploy", "-f", failing.to_str().unwrap(), "--wait"]);
    let (ok, failures) = load.finish().await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("canary step 50%") && err.contains("rolled back to revision 1"),
        "{err}"
    );
    assert!(ok > 0, "the stable revision served nothing");
    assert!(
        !failures.is_empty()
            && failures
                .iter()
                .all(|f| f.starts_with("500") && f.contains("fault injected")),
        "{failures:?}"
    );
    let now = cp.wait_ready(1, 1, Duration::from_secs(30));
    assert_eq!(
        now[0]["pid"], stable[0]["pid"],
        "the stable replica was touched"
    );
    let events = cp.json(&["status", "minilm"])["events"].to_string();
    assert!(events.contains("rollout of revision 2 failed"), "{events}");

    // A healthy canary goes through its steps under load without a failure.
    let healthy = spec(
        dir.path(),
        "healthy.yaml",
        &minilm,
        1,
        &canary.replace("2s", "1s"),
    );
    let load = Load::start(&cp.gateway, 2);
    let out = cp.cli(&["deploy", "-f", healthy.to_str().unwrap(), "--wait"]);
    let (ok, failures) = load.finish().await;
    assert!(out.status.success());
    assert!(failures.is_empty() && ok > 0, "{ok} ok, {failures:?}");
    cp.wait_ready(1, 3, Duration::from_secs(30));
    let run = cp.json(&["get", "runs"])[0].clone();
    let rollout = &run["stages"][3]["detail"];
    assert!(
        rollout
            .as_str()
            .unwrap()
            .contains("50%: canary error rate 0.0%"),
        "{rollout}"
    );

    // Blue-green: the new revision starts in full, takes all traffic at once,
    // and the old one keeps running, so a rollback is instant.
    let bg = spec(
        dir.path(),
        "bg.yaml",
        &minilm,
        1,
        "  rollout: { strategy: blue-green, scale_down_delay: 60s }\n  optimize: { quantize: q8_0 }\n",
    );
    let before = cp.wait_ready(1, 3, Duration::from_secs(5));
    let out = cp.cli(&["deploy", "-f", bg.to_str().unwrap()]);
    assert!(out.status.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let d = cp.json(&["get", "deployments"])[0].clone();
        if d["revision"] == 4 && d["traffic"] == 100 && d["stable"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "no switch: {d}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let out = cp.json(&["rollback", "minilm"]);
    assert_eq!(out["instant"], true, "{out}");
    let back = cp.wait_ready(1, 3, Duration::from_secs(30));
    assert_eq!(
        back[0]["pid"], before[0]["pid"],
        "rollback restarted revision 3's replica"
    );

    cp.delete_and_stop("minilm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn autoscaling_follows_the_load() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("data"));
    let scaled = spec(
        dir.path(),
        "auto.yaml",
        &modelship_testkit::minilm(),
        1,
        "  autoscale: { min: 1, max: 3, target_concurrency: 1, stable_window: 4s, panic_window: 1s }\n",
    );
    assert!(
        cp.cli(&["deploy", "-f", scaled.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    cp.wait_ready(1, 1, Duration::from_secs(30));

    // Eight clients keep ~8 requests in flight: far above one per replica.
    let load = Load::start(&cp.gateway, 8);
    let up = cp.wait_ready(3, 1, Duration::from_secs(20));
    let (ok, failures) = load.finish().await;
    assert!(failures.is_empty() && ok > 0, "{ok} ok, {failures:?}");
    assert_eq!(up.len(), 3);
    // Idle: back to the minimum once the windows have passed.
    cp.wait_ready(1, 1, Duration::from_secs(30));
    let events = cp.json(&["status", "minilm"])["events"].to_string();
    assert!(
        events.contains("autoscaled from 1 to") && events.contains("panic"),
        "{events}"
    );
    assert!(events.contains("to 1 replicas"), "{events}");

    cp.delete_and_stop("minilm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_authenticates_streams_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "# one key a line\nsecret-1\n").unwrap();
    let cp = ControlPlane::start_with(
        &dir.path().join("data"),
        &["--api-keys", keys.to_str().unwrap()],
    );
    let smol = named_spec(
        dir.path(),
        "smol.yaml",
        "smol",
        &modelship_testkit::smollm(),
        1,
        "",
    );
    assert!(
        cp.cli(&["deploy", "-f", smol.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    let client = reqwest::Client::new();
    let chat = json!({"model": "smol", "messages": [{"role": "user", "content": "Count from one to twenty."}],
                      "max_tokens": 48, "temperature": 0, "stream": true});
    let url = format!("{}/v1/chat/completions", cp.gateway);

    let r = client.post(&url).json(&chat).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = client
        .post(&url)
        .bearer_auth("wrong")
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // One vocabulary: the gateway, the control API and a replica name the
    // same failure with the same type.
    let gateway_401: Value = r.json().await.unwrap();
    let api_401: Value = client
        .get(format!("{}/v1/deployments", cp.api))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let replica = cp.replicas()[0]["endpoint"].as_str().unwrap().to_owned();
    let replica_401: Value = client
        .post(format!("http://{replica}/v1/chat/completions"))
        .bearer_auth("wrong")
        .json(&chat)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for body in [&gateway_401, &api_401, &replica_401] {
        assert_eq!(body["error"]["type"], "authentication_error", "{body}");
        assert_eq!(body["error"]["code"], "invalid_api_key", "{body}");
    }
    let unknown = |base: String| {
        let client = client.clone();
        async move {
            client
                .post(base)
                .bearer_auth("secret-1")
                .json(&json!({"model": "nobody", "prompt": "x"}))
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    let gateway_404 = unknown(format!("{}/v1/completions", cp.gateway)).await;
    assert_eq!(gateway_404["error"]["type"], "invalid_request_error");
    assert_eq!(gateway_404["error"]["code"], "model_not_found");

    // The stream passes through as the replica writes it: events arrive
    // spread over the generation (~47 tokens), not in one burst at the end.
    // (A ratio of first-event to total time is not robust when other tests
    // load the machine: the prompt's prefill slows with them.)
    let started = Instant::now();
    let mut r = client
        .post(&url)
        .bearer_auth("secret-1")
        .json(&chat)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let (mut first, mut events, mut text, mut reads) = (None, 0, String::new(), 0);
    while let Some(chunk) = r.chunk().await.unwrap() {
        first.get_or_insert(started.elapsed());
        reads += 1;
        let chunk = String::from_utf8_lossy(&chunk).into_owned();
        events += chunk.matches("data: ").count();
        text.push_str(&chunk);
    }
    let total = started.elapsed();
    let first = first.unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    assert!(events > 10, "{events} events");
    let spread = total - first;
    assert!(
        reads > 10 && spread > Duration::from_millis(50),
        "{reads} reads over {spread:?} after the first at {first:?}: buffered, not streamed"
    );

    // An unknown model is a 404 naming it; a body without one, a 400.
    let r = client
        .post(&url)
        .bearer_auth("secret-1")
        .json(&json!({"model": "nope", "messages": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(r.text().await.unwrap().contains("`nope` is not deployed"));
    let r = client
        .post(&url)
        .bearer_auth("secret-1")
        .body("{")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    // The scheme is case-insensitive (RFC 9110).
    let r = client
        .post(format!("{}/v1/completions", cp.gateway))
        .header("authorization", "bearer secret-1")
        .json(&json!({"model": "smol", "prompt": "Hi", "max_tokens": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // The control API wants a key too: nothing changes without one.
    let api = |path: &str| format!("{}{path}", cp.api);
    for (method, path) in [
        (reqwest::Method::POST, "/v1/deployments"),
        (reqwest::Method::DELETE, "/v1/deployments/smol"),
        (reqwest::Method::POST, "/v1/deployments/smol/scale"),
        (reqwest::Method::GET, "/v1/replicas"),
        (reqwest::Method::GET, "/v1/status"),
    ] {
        let r = client
            .request(method.clone(), api(path))
            .json(&json!({"replicas": 3, "spec": {}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{method} {path}");
        assert_eq!(
            r.json::<Value>().await.unwrap()["error"]["type"],
            "authentication_error"
        );
    }
    let health = client.get(api("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    // With the key, a malformed body or path is a JSON error naming it.
    for (method, path, body) in [
        (reqwest::Method::POST, "/v1/deployments", "{"),
        (reqwest::Method::GET, "/v1/runs/abc", ""),
    ] {
        let r = client
            .request(method, api(path))
            .bearer_auth("secret-1")
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{path}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error", "{path}: {v}");
    }
    let unkeyed = modelship()
        .args(["get", "replicas", "--api", &cp.api])
        .env_remove("MODELSHIP_API_KEY")
        .output()
        .unwrap();
    assert!(!unkeyed.status.success());
    assert!(String::from_utf8_lossy(&unkeyed.stderr).contains("API key"));
    // The deployment is untouched, and the CLI with the key sees it.
    let replicas = cp.replicas();
    assert_eq!(replicas.len(), 1, "{replicas:?}");

    // A replica's own port bypasses nothing: it wants the replica key
    // (DATA_DIR/replica.key), which only the gateway sends.
    let endpoint = replicas[0]["endpoint"].as_str().unwrap();
    let direct = format!("http://{endpoint}/v1/completions");
    let one = json!({"prompt": "Hi", "max_tokens": 1});
    for key in [None, Some("secret-1")] {
        let mut req = client.post(&direct).json(&one);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "key {key:?}");
    }
    let replica_key = std::fs::read_to_string(dir.path().join("data/replica.key")).unwrap();
    assert_eq!(replica_key.len(), 64, "32 random bytes in hex");
    let r = client
        .post(&direct)
        .bearer_auth(replica_key.trim())
        .json(&one)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // An empty key would guard nothing: a configuration error.
    let empty = modelship()
        .args([
            "serve",
            modelship_testkit::smollm().to_str().unwrap(),
            "--api-key",
            "",
        ])
        .output()
        .unwrap();
    assert_eq!(
        empty.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&empty.stderr)
    );

    // `/metrics` is behind the key too (`--public-metrics` opens it).
    let r = client
        .get(format!("{}/metrics", cp.gateway))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Its own metrics, per deployment, revision and replica.
    let metrics = client
        .get(format!("{}/metrics", cp.gateway))
        .bearer_auth("secret-1")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line = metrics
        .lines()
        .find(|l| {
            l.starts_with("modelship_gateway_requests_total") && l.contains("deployment=\"smol\"")
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(
        line.contains("revision=\"1\"")
            && line.contains("replica=\"smol-1-")
            && line.contains("code=\"200\""),
        "{line}"
    );

    cp.delete_and_stop("smol");
}

/// The entries a control plane published, with their leases.
async fn published(etcd: &str) -> Vec<(String, String)> {
    let e = modelship_gateway::etcd::Etcd::parse(etcd).unwrap();
    let (_, kvs) = e.list("/modelship/replicas/").await.unwrap();
    kvs.into_iter().map(|(k, _, lease)| (k, lease)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gateways_share_replicas_through_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = EtcdServer::start(&dir.path().join("etcd"));
    let cp = ControlPlane::start_with(&dir.path().join("data"), &["--discovery", &etcd.url]);
    let v1 = spec(dir.path(), "v1.yaml", &modelship_testkit::minilm(), 2, "");
    assert!(
        cp.cli(&["deploy", "-f", v1.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    let replicas = cp.wait_ready(2, 1, Duration::from_secs(30));

    // Each ready replica is published under a lease.
    let deadline = Instant::now() + Duration::from_secs(10);
    let entries = loop {
        let e = published(&etcd.url).await;
        if e.len() == 2 {
            break e;
        }
        assert!(Instant::now() < deadline, "published: {e:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(entries.iter().all(|(_, lease)| lease != "0"), "{entries:?}");

    // A second gateway, fed only by etcd, serves the deployment.
    let (mut second, url) = support::etcd::gateway(&etcd.url);
    let client = reqwest::Client::new();
    let embed = |base: String| {
        let client = client.clone();
        async move {
            client
                .post(format!("{base}/v1/embeddings"))
                .json(&json!({"model": "minilm", "input": "shared"}))
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while embed(url.clone()).await != 200 {
        assert!(Instant::now() < deadline, "the second gateway never routed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load = Load::start(&url, 2);
    assert!(cp.cli(&["scale", "minilm", "1"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    while published(&etcd.url).await.len() != 1 {
        assert!(Instant::now() < deadline, "scale-down not published");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty() && ok > 0,
        "through the second gateway: {ok} ok, {failures:?}"
    );

    // The control plane gone, its lease expires and the entries with it.
    cp.kill();
    let deadline = Instant::now() + Duration::from_secs(modelship_gateway::etcd::LEASE_TTL_S + 10);
    while !published(&etcd.url).await.is_empty() {
        assert!(Instant::now() < deadline, "entries outlived the lease");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while embed(url.clone()).await == 200 {
        assert!(
            Instant::now() < deadline,
            "the second gateway still routes to unmanaged replicas"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    second.kill().unwrap();
    second.wait().unwrap();
    // The replicas outlived the control plane by design; stop them here.
    for r in replicas {
        let pid = r["pid"].as_u64().unwrap();
        let _ = std::process::Command::new("kill")
            .arg(pid.to_string())
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_gateway_serves_https() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl is missing (Debian package openssl)");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let cp = ControlPlane::start_with(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert!(cp.gateway.starts_with("https://"), "{}", cp.gateway);
    let v1 = spec(dir.path(), "v1.yaml", &modelship_testkit::minilm(), 1, "");
    assert!(
        cp.cli(&["deploy", "-f", v1.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    let curl = |scheme_url: &str| {
        std::process::Command::new("curl")
            .args([
                "-sS",
                "--max-time",
                "10",
                "--cacert",
                cert.to_str().unwrap(),
            ])
            .args([
                "-H",
                "content-type: application/json",
                "-d",
                r#"{"model":"minilm","input":"over TLS"}"#,
            ])
            .arg(format!("{scheme_url}/v1/embeddings"))
            .output()
            .expect("curl is missing (Debian package curl)")
    };
    let out = curl(&cp.gateway);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 384);
    // Plain HTTP to the TLS port gets no answer.
    let plain = curl(&cp.gateway.replace("https://", "http://"));
    assert!(
        !plain.status.success() || !String::from_utf8_lossy(&plain.stdout).contains("embedding")
    );

    cp.delete_and_stop("minilm");
}

/// This machine's memory, as /proc/meminfo says.
fn machine_memory() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kib * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_that_do_not_fit_wait_and_are_admitted_when_room_frees() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("data"));
    let minilm = modelship_testkit::minilm();

    // No resources at all: three replicas share this machine's cores,
    // whatever their number.
    let shared = dir.path().join("shared.yaml");
    std::fs::write(
        &shared,
        format!(
            "apiVersion: modelship.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: shared\n\
             spec:\n  model:\n    source: {}\n  replicas: 3\n",
            minilm.display()
        ),
    )
    .unwrap();
    let out = cp.cli(&["deploy", "-f", shared.to_str().unwrap(), "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let run = cp.json(&["get", "runs"])[0].clone();
    let plan = run["stages"][2]["detail"].as_str().unwrap();
    assert!(plan.contains("reserves 0 CPU"), "{plan}");

    // Memory is a hard budget: two deployments of 60% of it each cannot
    // both run; the second waits, saying why, until the first goes.
    let share = format!("{{ memory: {} }}", machine_memory() * 6 / 10);
    let big = |name: &str| {
        support::control_plane::spec_with_resources(
            dir.path(),
            &format!("{name}.yaml"),
            name,
            &minilm,
            1,
            &share,
            "",
        )
    };
    let (a, b) = (big("big-a"), big("big-b"));
    assert!(
        cp.cli(&["deploy", "-f", a.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    // `deploy --wait` gives up after its timeout, naming where the run is;
    // the run itself goes on.
    let out = cp.cli(&[
        "deploy",
        "-f",
        b.to_str().unwrap(),
        "--wait",
        "--timeout",
        "3s",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("did not finish within 3s: still in its rollout stage"),
        "{err}"
    );
    assert!(
        err.trim_end().ends_with("it goes on without this command"),
        "{err}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let waiting = loop {
        let rs = cp.json(&["get", "replicas", "big-b"]);
        if let Some(r) = rs.as_array().and_then(|a| a.first())
            && r["state"] == "pending"
            && r["reason"].as_str().is_some_and(|w| w.contains("memory"))
        {
            break r.clone();
        }
        assert!(Instant::now() < deadline, "big-b never pending: {rs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(waiting["pid"].is_null(), "{waiting}");
    let status = String::from_utf8(cp.cli(&["status", "big-b"]).stdout).unwrap();
    assert!(
        status.contains("1 pending") && status.contains("memory"),
        "{status}"
    );
    // Three shared replicas and big-a still serve.
    assert_eq!(
        cp.json(&["get", "replicas", "shared"])
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "ready")
            .count(),
        3
    );
    assert!(cp.cli(&["delete", "big-a"]).status.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let rs = cp.json(&["get", "replicas", "big-b"]);
        if rs
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0]["state"] == "ready")
        {
            break;
        }
        assert!(Instant::now() < deadline, "big-b never admitted: {rs}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let events = cp.json(&["status", "big-b"])["events"].to_string();
    assert!(events.contains("pending: needs"), "{events}");
    assert!(cp.cli(&["delete", "big-b"]).status.success());
    cp.delete_and_stop("shared");
}

/// One embedding request through `gateway` for `model`: its status.
async fn embed_status(gateway: &str, model: &str) -> u16 {
    let r = reqwest::Client::new()
        .post(format!("{gateway}/v1/embeddings"))
        .json(&json!({"model": model, "input": "are you awake?"}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let body: Value = r.json().await.unwrap_or_default();
    if status == 200 {
        assert_eq!(body["data"][0]["embedding"].as_array().unwrap().len(), 384);
    }
    status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_deployments_scale_to_zero_and_wake_on_the_next_request() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("data"));
    let minilm = modelship_testkit::minilm();
    let autoscale = "  autoscale: { min: 0, max: 2, target_concurrency: 4, stable_window: 4s, panic_window: 1s, idle_window: 2s }\n";
    let v1 = spec(dir.path(), "v1.yaml", &minilm, 1, autoscale);
    assert!(
        cp.cli(&["deploy", "-f", v1.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    let at_zero = |cp: &ControlPlane| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cp.replicas().is_empty() {
            assert!(Instant::now() < deadline, "never scaled to zero");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    at_zero(&cp);
    let events = cp.json(&["status", "minilm"])["events"].to_string();
    assert!(events.contains("scaled to zero"), "{events}");

    // At zero the gateway holds the request, the deployment wakes, and
    // the request is answered.
    let woke = Instant::now();
    assert_eq!(embed_status(&cp.gateway, "minilm").await, 200);
    eprintln!("cold request answered in {:?}", woke.elapsed());
    assert_eq!(cp.replicas().len(), 1);

    // A burst at zero: every request waits and every one is answered.
    at_zero(&cp);
    let burst: Vec<_> = (0..8)
        .map(|_| {
            let gateway = cp.gateway.clone();
            tokio::spawn(async move { embed_status(&gateway, "minilm").await })
        })
        .collect();
    for b in burst {
        assert_eq!(b.await.unwrap(), 200);
    }
    // An unknown model is still a 404, not held.
    assert_eq!(embed_status(&cp.gateway, "nobody").await, 404);
    cp.delete_and_stop("minilm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_waking_deployment_that_does_not_fit_puts_an_idle_one_to_sleep() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("data"));
    let minilm = modelship_testkit::minilm();
    // Two deployments of 60% of the machine's memory each: one at a time.
    let share = format!("{{ memory: {} }}", machine_memory() * 6 / 10);
    let autoscale = "  autoscale: { min: 0, max: 1, target_concurrency: 4, stable_window: 4s, panic_window: 1s, idle_window: 60s }\n";
    let sleepy = |name: &str, replicas: u32| {
        support::control_plane::spec_with_resources(
            dir.path(),
            &format!("{name}.yaml"),
            name,
            &minilm,
            replicas,
            &share,
            autoscale,
        )
    };
    for (name, replicas) in [("first", 1), ("second", 0)] {
        let spec = sleepy(name, replicas);
        assert!(
            cp.cli(&["deploy", "-f", spec.to_str().unwrap(), "--wait"])
                .status
                .success()
        );
    }
    assert_eq!(embed_status(&cp.gateway, "first").await, 200);
    // `second` wakes: `first`, idle, is put to sleep to make room.
    let swapped = Instant::now();
    assert_eq!(embed_status(&cp.gateway, "second").await, 200);
    eprintln!(
        "woke second, putting first to sleep, in {:?}",
        swapped.elapsed()
    );
    let events = cp.json(&["status", "first"])["events"].to_string();
    assert!(
        events.contains("scaled to zero to make room for second"),
        "{events}"
    );
    let replicas = cp.replicas();
    assert!(
        replicas.iter().all(|r| r["deployment"] == "second"),
        "{replicas:#?}"
    );
    // And back.
    assert_eq!(embed_status(&cp.gateway, "first").await, 200);
    assert!(cp.cli(&["delete", "first"]).status.success());
    cp.delete_and_stop("second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revision_that_does_not_fit_beside_the_old_one_replaces_it_without_a_failed_request() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("data"));
    let minilm = modelship_testkit::minilm();
    // Every core reserved: the surge replica cannot start beside the old.
    let cores = std::thread::available_parallelism().unwrap().get();
    let resources = format!("{{ cpu: {cores}, memory: 1Gi }}");
    let version = |file: &str, extra: &str| {
        support::control_plane::spec_with_resources(
            dir.path(),
            file,
            "minilm",
            &minilm,
            1,
            &resources,
            extra,
        )
    };
    let v1 = version("v1.yaml", "");
    assert!(
        cp.cli(&["deploy", "-f", v1.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    cp.wait_ready(1, 1, Duration::from_secs(30));
    let load = Load::start(&cp.gateway, 2);
    let v2 = version("v2.yaml", "  optimize: { quantize: q8_0 }\n");
    let out = cp.cli(&[
        "deploy",
        "-f",
        v2.to_str().unwrap(),
        "--wait",
        "--timeout",
        "2m",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty() && ok > 0,
        "{ok} ok, {} failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    cp.wait_ready(1, 2, Duration::from_secs(30));
    let events = cp.json(&["status", "minilm"])["events"].to_string();
    assert!(events.contains("pending: needs"), "{events}");
    cp.delete_and_stop("minilm");
}
