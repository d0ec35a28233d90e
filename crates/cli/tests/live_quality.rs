//! Rollouts judged on what the model answers, with real replicas under
//! load: a shadow phase mirrors requests to the new revision and compares
//! the answers, canary steps compare a share of theirs, and the live
//! figures decide. A MiniLM q8_0 canary over f32 is promoted; a damaged
//! candidate (q4_0 after 2:4 pruning: fast, no errors) is rolled back on
//! its live cosine; SmolLM2 q8_0 beside its Q4_1 stable shows a live top-1
//! agreement close to what `modelship eval` measures offline; the client
//! traffic sees no failure from any of it.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::control_plane::{ControlPlane, named_spec, spec};
use support::load::Load;
use support::modelship;

/// The first number after `label` in `text`.
fn figure(text: &str, label: &str) -> f64 {
    let at = text
        .find(label)
        .unwrap_or_else(|| panic!("no `{label}` in {text}"))
        + label.len();
    let num: String = text[at..]
        .trim_start()
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    num.parse()
        .unwrap_or_else(|_| panic!("no number after `{label}` in {text}"))
}

/// The first value under `key` anywhere in `v`.
fn find<'a>(v: &'a Value, key: &str) -> Option<&'a Value> {
    match v {
        Value::Object(o) => o.get(key).or_else(|| o.values().find_map(|x| find(x, key))),
        Value::Array(a) => a.iter().find_map(|x| find(x, key)),
        _ => None,
    }
}

/// Polls `status NAME -o json` until `ok` holds for it.
fn wait_status(
    cp: &ControlPlane,
    name: &str,
    within: Duration,
    ok: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let v = cp.json(&["status", name]);
        if ok(&v) {
            return v;
        }
        assert!(Instant::now() < deadline, "status never showed it: {v:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embeddings_rollouts_are_judged_on_live_cosine() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("data"));
    let minilm = modelship_testkit::minilm();
    let v1 = spec(dir.path(), "v1.yaml", &minilm, 1, "");
    assert!(
        cp.cli(&["deploy", "-f", v1.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    cp.wait_ready(1, 1, Duration::from_secs(30));

    // A shadow of every request, then a canary comparing every request of
    // each step: q8_0 answers like f32 and is promoted.
    let rollout = "  rollout:\n    strategy: canary\n    shadow: { percent: 100, duration: 3s }\n    \
                   canary: { steps: [50, 100], interval: 2s, quality: { min_live_cosine: 0.99, min_samples: 10, percent: 100 } }\n";
    let q8 = spec(
        dir.path(),
        "q8.yaml",
        &minilm,
        1,
        &format!("{rollout}  optimize: {{ quantize: q8_0 }}\n"),
    );
    let load = Load::start(&cp.gateway, 2);
    let waiting = cp.spawn_cli(&["deploy", "-f", q8.to_str().unwrap(), "--wait"]);
    // While it shadows, `status` shows the live figures so far.
    let shadowing = wait_status(&cp, "minilm", Duration::from_secs(90), |v| {
        v["deployment"]["phase"]["phase"] == "shadow"
            && v["analysis"]["live"]["samples"].as_u64().unwrap_or(0) > 0
    });
    assert!(
        shadowing["analysis"]["live"]["cosine"]["mean"]
            .as_f64()
            .unwrap()
            > 0.99,
        "{shadowing:#}"
    );
    assert_eq!(
        shadowing["analysis"]["canary"]["requests"], 0,
        "a shadow answered a client"
    );
    let text = String::from_utf8(cp.cli(&["status", "minilm"]).stdout).unwrap();
    assert!(
        text.contains("live: ") && text.contains("cosine mean"),
        "{text}"
    );
    let out = waiting.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cp.wait_ready(1, 2, Duration::from_secs(60));
    let run = cp.json(&["get", "runs"])[0].clone();
    let record = run["stages"][3]["detail"].as_str().unwrap().to_owned();
    for step in ["shadow 100%:", "50%:", "100%:"] {
        assert!(record.contains(step), "{record}");
    }
    // docs/benchmarks.md quotes these (`-- --nocapture`).
    eprintln!("q8_0 over f32, the run's rollout record: {record}");
    // Each step's live figures are recorded, from enough compared requests.
    assert!(figure(&record, "cosine mean") > 0.99, "{record}");
    assert!(figure(&record, "live:") >= 10.0, "{record}");
    let text = String::from_utf8(cp.cli(&["get", "runs", &run["id"].to_string()]).stdout).unwrap();
    assert!(text.contains("cosine mean"), "{text}");

    // Damaged (2:4 pruning, then q4_0): as fast, no errors, different
    // answers. Rolled back in its shadow, the figure and value recorded.
    let damaged = spec(
        dir.path(),
        "damaged.yaml",
        &minilm,
        1,
        &format!(
            "{rollout}  optimize: {{ quantize: q4_0, prune: {{ sparsity: 0.5, pattern: \"2:4\" }} }}\n"
        ),
    );
    let out = cp.cli(&["deploy", "-f", damaged.to_str().unwrap(), "--wait"]);
    let (ok, failures) = load.finish().await;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("shadow 100%: live cosine") && err.contains("is below min_live_cosine 0.99"),
        "{err}"
    );
    eprintln!("q4_0 after 2:4 pruning: {err}");
    let value = figure(&err, "live cosine");
    assert!(value < 0.99, "{err}");
    assert!(err.contains("rolled back to revision 2"), "{err}");
    let failed = cp.json(&["get", "runs"])[0].clone();
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains(&format!("live cosine {value:.4}")),
        "{failed:#}"
    );
    cp.wait_ready(1, 2, Duration::from_secs(30));
    // Mirroring added no failure to the clients' traffic.
    assert!(ok > 50 && failures.is_empty(), "{ok} ok, {failures:?}");

    // Prometheus: the shadow's requests and the pairs' figures.
    let metrics = reqwest::get(format!("{}/metrics", cp.gateway))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let has = |name: &str, labels: &[&str]| {
        metrics
            .lines()
            .any(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|x| l.contains(x)))
    };
    assert!(
        has(
            "modelship_shadow_requests_total",
            &[
                "deployment=\"minilm\"",
                "outcome=\"compared\"",
                "revision=\"2\""
            ]
        ),
        "{metrics}"
    );
    for candidate in ["2", "3"] {
        let pair = [
            "deployment=\"minilm\"".to_owned(),
            format!("candidate=\"{candidate}\""),
        ];
        let pair: Vec<&str> = pair.iter().map(String::as_str).collect();
        assert!(has("modelship_live_quality_cosine", &pair), "{metrics}");
    }
    cp.delete_and_stop("minilm");
}

/// Chat requests with temperature 0 through the gateway until stopped;
/// returns the answers.
fn chat_load(
    gateway: &str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> tokio::task::JoinHandle<Vec<Result<String, String>>> {
    let url = format!("{gateway}/v1/chat/completions");
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let topics = [
            "the sea",
            "a lighthouse",
            "bread",
            "winter",
            "a library",
            "rivers",
            "bees",
            "the moon",
            "a market",
            "trains",
            "gardens",
            "mountains",
        ];
        let mut answers = Vec::new();
        let mut n = 0;
        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
            let body = json!({"model": "smollm", "temperature": 0, "max_tokens": 40,
                "messages": [{"role": "user", "content": format!("Write two sentences about {}.", topics[n % topics.len()])}]});
            n += 1;
            let answer = match client.post(&url).json(&body).send().await {
                Ok(r) if r.status() == 200 => r
                    .json::<Value>()
                    .await
                    .map(|v| {
                        v["choices"][0]["message"]["content"]
                            .as_str()
                            .unwrap_or_default()
                            .to_owned()
                    })
                    .map_err(|e| e.to_string()),
                Ok(r) => Err(format!("{}: {:?}", r.status(), r.text().await)),
                Err(e) => Err(e.to_string()),
            };
            answers.push(answer);
        }
        answers
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generation_live_top1_is_close_to_offline_eval() {
    let dir = tempfile::tempdir().unwrap();
    let cp = ControlPlane::start(&dir.path().join("data"));
    let smollm = modelship_testkit::smollm();
    let v1 = named_spec(dir.path(), "v1.yaml", "smollm", &smollm, 1, "");
    assert!(
        cp.cli(&["deploy", "-f", v1.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    cp.wait_ready(1, 1, Duration::from_secs(60));

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = chat_load(&cp.gateway, stop.clone());
    // The shadow compares every request: the stable revision's answers,
    // scored by both revisions teacher-forced.
    let q8 = named_spec(
        dir.path(),
        "q8.yaml",
        "smollm",
        &smollm,
        1,
        "  optimize: { quantize: q8_0 }\n  rollout:\n    shadow: { percent: 100, duration: 20s }\n    \
         canary: { quality: { min_live_top1: 0.8, max_live_kld: 0.5, min_samples: 12, percent: 100 } }\n",
    );
    let out = cp.cli(&["deploy", "-f", q8.to_str().unwrap(), "--wait"]);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let answers = load.await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failures: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(failures.is_empty(), "{failures:?}");
    let run = cp.json(&["get", "runs"])[0].clone();
    let record = run["stages"][3]["detail"].as_str().unwrap().to_owned();
    let live_top1 = figure(&record, "top-1") / 100.0;
    let tokens = figure(&record, "over");
    assert!(tokens >= 100.0, "{record}");
    assert!(record.contains("greedy exact match"), "{record}");

    // Offline: eval of the same q8_0 artifact against the Q4_1 model on the
    // text the stable revision answered (similar text, no prompt).
    let corpus = dir.path().join("answers.txt");
    let text: Vec<&str> = answers.iter().filter_map(|a| a.as_deref().ok()).collect();
    std::fs::write(&corpus, text.join("\n")).unwrap();
    let revisions = cp.json(&["get", "revisions"]);
    let artifact = revisions
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["number"] == 2 || r["revision"] == 2)
        .and_then(|r| r["artifact"].as_str())
        .unwrap_or_else(|| panic!("no revision 2: {revisions:#}"))
        .to_owned();
    let eval = support::succeed(
        modelship()
            .args(["eval", &artifact, "--reference"])
            .arg(&smollm)
            .arg("--corpus")
            .arg(&corpus)
            .arg("--json"),
    );
    let eval: Value = serde_json::from_slice(&eval).unwrap();
    let offline_top1 = find(&eval, "top1_agreement")
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no top1_agreement in {eval:#}"));
    eprintln!(
        "SmolLM2 q8_0 over Q4_1: live top-1 {live_top1:.4} over {tokens} tokens, offline {offline_top1:.4} \
         ({} tokens of the same answers); record: {record}",
        find(&eval, "tokens_scored").unwrap_or(&Value::Null)
    );
    assert!(
        (live_top1 - offline_top1).abs() <= 0.02,
        "live top-1 {live_top1:.4} over {tokens} tokens, offline {offline_top1:.4}: {record}"
    );
    cp.delete_and_stop("smollm");
}
