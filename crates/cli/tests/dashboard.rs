//! The dashboard in a real headless Chromium, with a real MiniLM deployment
//! behind it on a control plane that wants an API key: the page asks for
//! the key; the deployments page shows the replica counts; charts have data
//! after traffic; a scale, a rollback, a canary promotion and abort and a
//! delete done from the page change what runs; the run's page draws the
//! optimize candidates with the gate and the chosen precision; the page fits
//! a narrow screen; and the console shows no error.
//!
//! `MODELSHIP_SCREENSHOTS=DIR` also writes the main pages' screenshots
//! there (`scripts/screenshots.sh` refreshes docs/img with them).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod support;

use support::browser::{Browser, Element};
use support::control_plane::{ControlPlane, named_spec, spec};

const KEY: &str = "dashboard-key-1";
const WAIT: Duration = Duration::from_secs(60);

/// Embedding requests with the key through the gateway until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Traffic {
    fn start(gateway: &str) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let (s, o, url) = (stop.clone(), ok.clone(), format!("{gateway}/v1/embeddings"));
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let client = reqwest::Client::new();
                let mut n = 0;
                while !s.load(Ordering::Relaxed) {
                    n += 1;
                    let r = client
                        .post(&url)
                        .bearer_auth(KEY)
                        .json(&json!({"model": "minilm", "input": format!("sentence number {n}")}))
                        .send()
                        .await;
                    if r.is_ok_and(|r| r.status() == 200) {
                        o.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        });
        Traffic { stop, ok, thread }
    }

    fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
        self.ok.load(Ordering::Relaxed)
    }
}

fn attr_num(b: &Browser, e: &Element, name: &str) -> f64 {
    b.attr(e, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Clicks `button`, then the confirm dialog's button.
fn confirm(b: &Browser, button: &str) {
    b.click_on(button, WAIT);
    b.click_on("#confirm[open] #confirm-ok", WAIT);
    b.wait_for("#confirm", WAIT, |b, d| b.attr(d, "open").is_none());
}

/// Console entries that are errors.
fn errors(entries: Vec<Value>) -> Vec<String> {
    entries
        .into_iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

fn screenshots() -> Option<PathBuf> {
    let dir = PathBuf::from(std::env::var_os("MODELSHIP_SCREENSHOTS")?);
    std::fs::create_dir_all(&dir).unwrap();
    Some(dir)
}

fn serving(cp: &ControlPlane) -> u64 {
    cp.json(&["get", "deployments"])[0]["revision"]
        .as_u64()
        .unwrap()
}

#[test]
fn the_dashboard_shows_and_drives_a_real_deployment() {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::write(&keys, format!("{KEY}\n")).unwrap();
    let cp = ControlPlane::start_with(
        &dir.path().join("data"),
        &["--api-keys", keys.to_str().unwrap()],
    );
    let minilm = modelship_testkit::minilm();
    let gated = "  optimize:\n    quantize: auto\n    gate: { min_cosine: 0.99 }\n";
    let first = spec(dir.path(), "v1.yaml", &minilm, 1, gated);
    assert!(
        cp.cli(&["deploy", "-f", first.to_str().unwrap(), "--wait"])
            .status
            .success()
    );

    // The shell is public and holds nothing; every figure wants the key.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (shell, unkeyed) = rt.block_on(async {
        let c = reqwest::Client::new();
        let shell = c.get(format!("{}/", cp.api)).send().await.unwrap();
        let csp = shell.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .to_owned();
        let html = shell.text().await.unwrap();
        let watch = c.get(format!("{}/v1/watch", cp.api)).send().await.unwrap();
        ((html, csp), watch.status())
    });
    assert!(shell.0.contains("/ui/app.js") && !shell.0.contains("minilm"));
    assert!(shell.1.contains("default-src 'self'"), "{}", shell.1);
    assert_eq!(unkeyed, 401);

    let b = Browser::start(1280, 800);
    b.goto(&format!("{}/", cp.api));
    let input = b.wait_for("#key[open] #key-input", WAIT, |_, _| true);
    b.type_into(&input, KEY);
    let use_it = b.find("#key[open] button[value=ok]").unwrap();
    b.click(&use_it);
    // Before the key, the page's requests were refused (Chromium logs each
    // 401 it receives): those, and nothing else.
    let before = errors(b.console());
    assert!(
        before.iter().all(|m| m.contains("401")),
        "console errors before the key: {before:?}"
    );

    // The deployments page: the replica counts the control plane has.
    let ready = |want: u64| {
        move |b: &Browser, e: &Element| {
            attr_num(b, e, "data-ready") == want as f64
                && attr_num(b, e, "data-desired") == want as f64
        }
    };
    b.wait_for(
        "tr[data-deployment=minilm] [data-field=replicas]",
        WAIT,
        ready(1),
    );
    let listed = cp.json(&["get", "deployments"]);
    assert_eq!(listed[0]["ready"], 1);

    // Traffic, then the deployment's charts have points, the rate above 0.
    let traffic = Traffic::start(&cp.gateway);
    b.goto(&format!("{}/#/d/minilm", cp.api));
    let rps = b.wait_for("figure[data-chart=rps]", WAIT, |b, e| {
        attr_num(b, e, "data-points") >= 3.0 && attr_num(b, e, "data-last") > 0.0
    });
    if let Some(dir) = screenshots() {
        // A minute of it for the picture, the load tripled halfway.
        std::thread::sleep(Duration::from_secs(30));
        let more = [Traffic::start(&cp.gateway), Traffic::start(&cp.gateway)];
        std::thread::sleep(Duration::from_secs(30));
        b.screenshot(&dir.join("deployment.png"));
        for t in more {
            t.finish();
        }
    }
    let sent = traffic.finish();
    assert!(sent > 0, "no request answered");
    // Opened again, the charts start from the last hour's points, not
    // from the stream's: in 1.5 s it brings at most 2 (one at once, one a
    // tick), fewer than the 3 or more the chart had.
    let before = attr_num(&b, &rps, "data-points");
    b.goto(&format!("{}/#/runs", cp.api));
    b.goto(&format!("{}/#/d/minilm", cp.api));
    b.wait_for(
        "figure[data-chart=rps]",
        Duration::from_millis(1500),
        |b, e| attr_num(b, e, "data-points") >= before,
    );
    b.wait_for("figure[data-chart=latency]", WAIT, |b, e| {
        attr_num(b, e, "data-last") > 0.0
    });
    b.wait_for("figure[data-chart=replicas]", WAIT, |b, e| {
        attr_num(b, e, "data-last") == 1.0
    });
    // A replica's resident memory, as it reports it (read inside the wait:
    // the table is rebuilt when a figure changes).
    b.wait_for("tr[data-replica] td:nth-child(6)", WAIT, |b, e| {
        b.text(e)
            .strip_suffix(" MiB")
            .and_then(|n| n.parse::<f64>().ok())
            .is_some_and(|mib| (20.0..2048.0).contains(&mib))
    });

    // Scale from the page: 2 replicas run.
    b.click_on("#scale", WAIT);
    let n = b.wait_for("#confirm[open] #scale-input", WAIT, |_, _| true);
    b.type_into(&n, "2");
    b.click_on("#confirm-ok", WAIT);
    b.wait_for("#confirm", WAIT, |b, d| b.attr(d, "open").is_none());
    b.wait_for(".fact[data-field=replicas]", WAIT, ready(2));
    cp.wait_ready(2, 1, WAIT);

    // A second revision, then back to the first from the page's history.
    let f16 = spec(
        dir.path(),
        "v2.yaml",
        &minilm,
        2,
        "  optimize:\n    quantize: f16\n",
    );
    assert!(
        cp.cli(&["deploy", "-f", f16.to_str().unwrap(), "--wait"])
            .status
            .success()
    );
    b.wait_for("tr[data-revision='2'] .badge.ok", WAIT, |_, _| true);
    confirm(&b, "button[data-rollback='1']");
    b.wait_for("tr[data-revision='3'] .badge.ok", WAIT, |_, _| true);
    cp.wait_ready(2, 3, WAIT);
    let history = cp.json(&["history", "minilm"]);
    let third = &history["revisions"][2];
    assert_eq!(third["cause"], "rollback to revision 1", "{history:#}");

    // A canary that would wait an hour per step: aborted from the page, it
    // goes back; deployed again and promoted step by step, it serves.
    let canary = spec(
        dir.path(),
        "canary.yaml",
        &minilm,
        2,
        &format!(
            "{gated}  rollout:\n    strategy: canary\n    canary: {{ steps: [50, 100], interval: 1h }}\n"
        ),
    );
    assert!(
        cp.cli(&["deploy", "-f", canary.to_str().unwrap()])
            .status
            .success()
    );
    b.wait_for("h1 .badge.canary", WAIT, |_, _| true);
    confirm(&b, "#abort");
    b.wait_for("h1 .badge.steady", WAIT, |_, _| true);
    assert_eq!(serving(&cp), 3, "the abort went back to revision 3");
    let events = cp.json(&["history", "minilm"])["events"].to_string();
    assert!(events.contains("aborted by an operator"), "{events}");
    assert!(
        cp.cli(&["deploy", "-f", canary.to_str().unwrap()])
            .status
            .success()
    );
    b.wait_for("h1 .badge.canary", WAIT, |_, _| true);
    confirm(&b, "#promote");
    let deadline = Instant::now() + WAIT;
    while cp.json(&["status", "minilm"])["deployment"]["phase"]["step"] != 1 {
        assert!(
            Instant::now() < deadline,
            "the promotion never reached step 2"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    b.wait_for("section[aria-label=Rollout] p", WAIT, |b, e| {
        b.text(e).contains("step 2 of 2")
    });
    confirm(&b, "#promote");
    b.wait_for("h1 .badge.steady", WAIT, |_, _| true);
    assert_eq!(serving(&cp), 5, "the promoted canary serves");
    cp.wait_ready(2, 5, WAIT);

    // A decoder's tokens/s, as its replica counts them.
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
    let answered = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{}/v1/completions", cp.gateway))
            .bearer_auth(KEY)
            .json(
                &json!({"model": "smol", "prompt": "Once upon a time", "max_tokens": 48,
                          "temperature": 0}),
            )
            .send()
            .await
            .unwrap()
            .status()
    });
    assert_eq!(answered, 200);
    b.goto(&format!("{}/#/d/smol", cp.api));
    b.wait_for("figure[data-chart=tokens]", WAIT, |b, e| {
        attr_num(b, e, "data-max") > 0.0
    });
    assert!(cp.cli(&["delete", "smol"]).status.success());

    // The first run's page: its stages on a timeline, and the candidates
    // with the gate drawn and the precision the revision got marked.
    b.goto(&format!("{}/#/runs", cp.api));
    b.click_on("tr[data-run='1'] a", WAIT);
    for stage in ["validate", "optimize", "plan", "rollout"] {
        b.wait_for(&format!(".timeline [data-stage={stage}]"), WAIT, |_, _| {
            true
        });
    }
    let gate = b.wait_for("svg.tradeoff line[data-gate]", WAIT, |_, _| true);
    assert_eq!(attr_num(&b, &gate, "data-gate"), 0.99);
    let chosen = b.wait_for("svg.tradeoff circle[data-chosen]", WAIT, |_, _| true);
    let precision = b.attr(&chosen, "data-chosen").unwrap();
    let run = cp.json(&["get", "runs", "1"]);
    let optimize = run["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "optimize")
        .unwrap();
    let said = optimize["detail"].as_str().unwrap();
    assert!(
        said.starts_with(&format!("{precision} chosen")),
        "the chart marks {precision}, the run says {said}"
    );
    let candidates = b.eval(
        "return document.querySelectorAll('svg.tradeoff circle[data-precision]').length",
        json!([]),
    );
    assert!(candidates.as_u64().unwrap() >= 3, "{candidates}");
    if let Some(dir) = screenshots() {
        b.eval(
            "document.querySelector('section[aria-label=\"Size against quality\"]').scrollIntoView()",
            json!([]),
        );
        b.screenshot(&dir.join("run.png"));
    }

    // Readable on a narrow screen: nothing wider than the window (tables
    // scroll in their own boxes).
    b.goto(&format!("{}/#/d/minilm", cp.api));
    b.wait_for("figure[data-chart=rps]", WAIT, |b, e| {
        attr_num(b, e, "data-points") >= 1.0
    });
    b.resize(390, 844);
    std::thread::sleep(Duration::from_millis(500));
    let overflow = b.eval(
        "return [document.documentElement.scrollWidth, window.innerWidth]",
        json!([]),
    );
    assert!(
        overflow[0].as_f64() <= overflow[1].as_f64(),
        "the page is wider than a narrow window: {overflow}"
    );
    if let Some(dir) = screenshots() {
        b.screenshot(&dir.join("deployment-narrow.png"));
    }
    b.resize(1280, 800);
    b.goto(&format!("{}/#/", cp.api));
    b.wait_for(
        "tr[data-deployment=minilm] [data-field=replicas]",
        WAIT,
        ready(2),
    );
    if let Some(dir) = screenshots() {
        b.screenshot(&dir.join("deployments.png"));
    }

    // Delete from the page: the replicas stop and the list empties.
    b.goto(&format!("{}/#/d/minilm", cp.api));
    confirm(&b, "#delete");
    b.wait_for("main .empty", WAIT, |_, _| true);
    let deadline = Instant::now() + WAIT;
    while !cp.replicas().is_empty() {
        assert!(Instant::now() < deadline, "replicas left after delete");
        std::thread::sleep(Duration::from_millis(200));
    }

    let after = errors(b.console());
    assert!(after.is_empty(), "console errors: {after:?}");
}
