//! A control plane killed (`kill -9`) anywhere and started again on the same
//! data directory goes on from its store: during a rolling update, a canary
//! step and a blue-green switch the rollout continues from its recorded
//! phase; during the optimize stage the run is marked interrupted and tried
//! again; replicas that need nothing are left running as they were; and a
//! gateway fed by etcd (`modelship gateway`, the topology a production user
//! runs), which outlives the control plane, serves every request across
//! every restart. `deploy --wait`, started before a kill, follows its run
//! through it. A replica the store has no record of is reaped.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::control_plane::{ControlPlane, spec};
use support::etcd::EtcdServer;
use support::load::Load;
use support::{alive, modelship};

/// Each replica process: id → (pid, restarts).
fn processes(cp: &ControlPlane) -> BTreeMap<String, (u64, u64)> {
    cp.replicas()
        .iter()
        .filter_map(|r| {
            Some((
                r["id"].as_str()?.to_owned(),
                (r["pid"].as_u64()?, r["restarts"].as_u64()?),
            ))
        })
        .collect()
}

fn deployment(cp: &ControlPlane) -> Value {
    cp.json(&["get", "deployments"])[0].clone()
}

fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills the control plane with SIGKILL and starts another on the same
/// data directory and API port. Every replica process survives, and none
/// that the new one keeps is restarted.
fn kill_and_restart(cp: ControlPlane, data: &Path, flags: &[&str]) -> ControlPlane {
    let before = processes(&cp);
    let port = cp.api_port();
    cp.kill();
    for (id, (pid, _)) in &before {
        assert!(alive(*pid), "replica {id} died with the control plane");
    }
    let cp = ControlPlane::start_on(data, port, flags);
    // Once the new one has looked, a replica it still wants is the same
    // process with the same restart count.
    std::thread::sleep(Duration::from_secs(1));
    for (id, now) in processes(&cp) {
        if let Some(then) = before.get(&id) {
            assert_eq!(&now, then, "replica {id} was restarted");
        }
    }
    cp
}

/// Waits for a backgrounded `modelship deploy --wait` and returns its output.
fn finished(child: Child) -> (bool, String) {
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_control_plane_killed_anywhere_goes_on_from_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let etcd = EtcdServer::start(&dir.path().join("etcd"));
    let flags = ["--discovery", etcd.url.as_str()];
    let mut cp = ControlPlane::start_with(&data, &flags);
    let minilm = modelship_testkit::minilm();
    let v1 = spec(dir.path(), "v1.yaml", &minilm, 2, "");
    assert!(
        cp.cli(&["deploy", "-f", v1.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    cp.wait_ready(2, 1, Duration::from_secs(30));
    let (mut gateway, url) = support::etcd::gateway(&etcd.url);
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = client
            .post(format!("{url}/v1/embeddings"))
            .json(&json!({"model": "minilm", "input": "routed?"}))
            .send()
            .await;
        if r.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the etcd-fed gateway never routed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let load = Load::start(&url, 2);

    // 1. A rolling update, killed once the new revision's first replica
    //    exists: the recorded phase goes on, the waiting CLI follows.
    let v2 = spec(
        dir.path(),
        "v2.yaml",
        &minilm,
        2,
        "  optimize: { quantize: q8_0 }\n",
    );
    let waiting = cp.spawn_cli(&["deploy", "-f", v2.to_str().unwrap(), "--wait"]);
    wait_for(
        "a rolling update with a new replica",
        Duration::from_secs(60),
        || {
            let d = deployment(&cp);
            d["revision"] == 2
                && d["phase"]["phase"] == "rolling"
                && cp.replicas().iter().any(|r| r["revision"] == 2)
        },
    );
    cp = kill_and_restart(cp, &data, &flags);
    let (ok, out) = finished(waiting);
    assert!(ok, "{out}");
    assert!(out.contains("succeeded: minilm revision 2"), "{out}");
    cp.wait_ready(2, 2, Duration::from_secs(30));

    // 2. A canary, killed during its first step's analysis: it goes on
    //    from that step and is promoted.
    let canary =
        "  rollout:\n    strategy: canary\n    canary: { steps: [50, 100], interval: 3s }\n";
    let v3 = spec(dir.path(), "v3.yaml", &minilm, 2, canary);
    let waiting = cp.spawn_cli(&["deploy", "-f", v3.to_str().unwrap(), "--wait"]);
    wait_for(
        "a canary step under analysis",
        Duration::from_secs(60),
        || {
            let d = deployment(&cp);
            d["phase"]["phase"] == "canary"
                && d["phase"]["step"] == 0
                && d["phase"]["analysis_from"].is_u64()
        },
    );
    cp = kill_and_restart(cp, &data, &flags);
    assert_eq!(
        deployment(&cp)["phase"]["phase"],
        "canary",
        "the canary did not survive the restart"
    );
    let (ok, out) = finished(waiting);
    assert!(ok, "{out}");
    cp.wait_ready(2, 3, Duration::from_secs(30));
    let run = cp.json(&["get", "runs"])[0].clone();
    let rollout = run["stages"][3]["detail"].as_str().unwrap().to_owned();
    assert!(
        rollout.contains("50%:") && rollout.contains("100%:"),
        "{rollout}"
    );
    // The step under analysis when the control plane died was measured
    // again, not judged on the new gateway's empty counts.
    let events = cp.json(&["status", "minilm"])["events"].to_string();
    assert!(
        events.contains("canary step 50%: its counts were lost")
            && events.contains("measuring it again"),
        "{events}"
    );

    // 3. Blue-green, killed after the switch: the old revision is retired
    //    after its delay by the next control plane.
    let v4 = spec(
        dir.path(),
        "v4.yaml",
        &minilm,
        2,
        "  rollout: { strategy: blue-green, scale_down_delay: 3s }\n  optimize: { quantize: q8_0 }\n",
    );
    let waiting = cp.spawn_cli(&["deploy", "-f", v4.to_str().unwrap(), "--wait"]);
    wait_for("a blue-green switch", Duration::from_secs(60), || {
        let d = deployment(&cp);
        d["phase"]["phase"] == "blue-green" && d["phase"]["switched_at"].is_u64()
    });
    cp = kill_and_restart(cp, &data, &flags);
    let (ok, out) = finished(waiting);
    assert!(ok, "{out}");
    cp.wait_ready(2, 4, Duration::from_secs(30));

    // 4. Killed during the optimize stage: that run is interrupted, saying
    //    where, and tried again; the CLI follows the retry.
    let v5 = spec(
        dir.path(),
        "v5.yaml",
        &minilm,
        2,
        "  optimize: { quantize: auto, gate: { min_cosine: 0.99 } }\n",
    );
    let waiting = cp.spawn_cli(&["deploy", "-f", v5.to_str().unwrap(), "--wait"]);
    let mut first = 0;
    wait_for(
        "a run in its optimize stage",
        Duration::from_secs(60),
        || {
            let run = cp.json(&["get", "runs"])[0].clone();
            first = run["id"].as_u64().unwrap();
            let stage = run["stages"].as_array().and_then(|s| s.last().cloned());
            stage.is_some_and(|s| s["name"] == "optimize" && s["status"] == "running")
        },
    );
    cp = kill_and_restart(cp, &data, &flags);
    let (ok, out) = finished(waiting);
    assert!(ok, "{out}");
    let interrupted = cp.json(&["get", "runs", &first.to_string()]);
    let error = interrupted["error"].as_str().unwrap();
    assert!(
        error.contains("interrupted") && error.contains("optimize stage"),
        "{error}"
    );
    let retry = interrupted["retried_as"].as_u64().unwrap();
    let retried = cp.json(&["get", "runs", &retry.to_string()]);
    assert_eq!(retried["status"], "succeeded", "{retried}");
    assert_eq!(retried["retry_of"], first);
    assert_eq!(retried["attempt"], 2);
    cp.wait_ready(2, 5, Duration::from_secs(60));

    // Through all of it, the etcd-fed gateway failed no request.
    let (ok, failures) = load.finish().await;
    assert!(
        failures.is_empty(),
        "{} of {} failed across the restarts: {:?}",
        failures.len(),
        ok as usize + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 50, "only {ok} requests");
    eprintln!(
        "{ok} requests through the etcd-fed gateway across four kill -9 restarts, none failed"
    );

    // `delete` answers once the replicas are stopped: stopping the control
    // plane right after leaves nothing running.
    let pids: Vec<u64> = processes(&cp).values().map(|(pid, _)| *pid).collect();
    assert!(cp.cli(&["delete", "minilm"]).status.success());
    cp.kill();
    for pid in pids {
        assert!(!alive(pid), "replica {pid} outlived its deletion");
    }
    gateway.kill().unwrap();
    gateway.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_without_a_record_is_reaped() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cp = ControlPlane::start(&data);
    let v1 = spec(dir.path(), "v1.yaml", &modelship_testkit::minilm(), 1, "");
    assert!(
        cp.cli(&["deploy", "-f", v1.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    let replica = cp.wait_ready(1, 1, Duration::from_secs(30))[0].clone();
    let pid = replica["pid"].as_u64().unwrap();
    cp.kill();
    assert!(alive(pid));
    // The store lost its record (restored from an old copy, say).
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        let _ = std::fs::remove_file(data.join(file));
    }
    let cp = ControlPlane::start(&data);
    wait_for(
        "the unrecorded replica stopped",
        Duration::from_secs(10),
        || !alive(pid),
    );
    let id = replica["id"].as_str().unwrap();
    let events = cp.json(&["history", "minilm"])["events"].to_string();
    assert!(
        events.contains(&format!("stopped replica {id}"))
            && events.contains("no recorded deployment"),
        "{events}"
    );
    // A second control plane on the same data directory is refused.
    let second = modelship()
        .args(["up", "--api-port", "0", "--gateway-port", "0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(64));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(
        err.contains("another control plane runs on the data directory"),
        "{err}"
    );
    cp.kill();
}
