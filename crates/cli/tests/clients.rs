//! Real OpenAI clients (the OpenAI Python SDK and LangChain's
//! `langchain-openai`, installed by scripts/setup-peers.sh) against
//! `modelship serve` and through a control plane's gateway, on the real
//! Qwen2.5-Coder-0.5B-Instruct GGUF: tools with a round trip, structured
//! outputs with Pydantic models, logprobs, `n`, streamed tool calls and
//! several prompts (tests/clients/openai_clients.py holds the checks).

mod support;

use std::process::Command;
use std::time::Duration;

use support::control_plane::ControlPlane;

/// Runs the clients' checks against `base_url` (ending in `/v1`).
fn run_clients(base_url: &str, model: &str) {
    let script = modelship_testkit::repo_root().join("tests/clients/openai_clients.py");
    let out = Command::new(modelship_testkit::python())
        .arg(&script)
        .args([base_url, model])
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.find("ModuleNotFoundError").is_none(),
        "the client packages are missing: run scripts/setup-peers.sh\n{stderr}"
    );
    assert!(
        out.status.success(),
        "clients against {base_url}:\n{report}\n{stderr}"
    );
    assert_eq!(
        report.lines().filter(|l| l.starts_with("ok ")).count(),
        9,
        "{report}"
    );
}

#[test]
fn openai_sdk_and_langchain_work_against_serve_and_through_the_gateway() {
    let qwen = modelship_testkit::qwen2();
    let (mut child, url) = support::serve_with(&qwen, &["--max-context", "4096"]);
    let name = qwen.file_stem().unwrap().to_str().unwrap().to_owned();
    run_clients(&format!("{url}/v1"), &name);
    child.kill().unwrap();
    child.wait().unwrap();

    // The gateway passes every field and streamed delta through unchanged.
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("qwen.yaml");
    std::fs::write(
        &spec,
        format!(
            "apiVersion: modelship.dev/v1alpha1\nkind: ModelDeployment\nmetadata:\n  name: qwen\n\
             spec:\n  model:\n    source: {}\n  resources: {{ cpu: 1, memory: 2Gi }}\n  replicas: 1\n",
            qwen.display()
        ),
    )
    .unwrap();
    let cp = ControlPlane::start(&dir.path().join("data"));
    let out = cp.cli(&["deploy", "-f", spec.to_str().unwrap(), "--wait"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cp.wait_ready(1, 1, Duration::from_secs(60));
    run_clients(&format!("{}/v1", cp.gateway), "qwen");
    cp.delete_and_stop("qwen");
}
