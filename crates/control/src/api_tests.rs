//! The control API at its seam: `router().oneshot` in-process over a store
//! in a temporary directory and a fake orchestrator, with time paused where
//! a handler waits.

use std::collections::{BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures::FutureExt;
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use modelship_orchestrator::{Liveness, Orchestrator, OrchestratorError, ReplicaSpec};
use modelship_store::Store;
use modelship_types::{
    Deployment, Phase, Progress, Replica, ReplicaState, Revision, Run, RunStatus,
};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::{Ctx, Targets, api};

/// Replicas that exist only as records: every one is ready, stops succeed,
/// and each call is remembered.
#[derive(Default)]
struct Fake {
    started: Mutex<Vec<String>>,
}

impl Orchestrator for Fake {
    fn start<'a>(
        &'a self,
        spec: &'a ReplicaSpec,
        restarts: u32,
    ) -> BoxFuture<'a, Result<Replica, OrchestratorError>> {
        self.started.lock().unwrap().push(spec.id.clone());
        let r = replica(&spec.id, &spec.deployment, spec.revision, restarts);
        async move { Ok(r) }.boxed()
    }

    fn observe<'a>(&'a self, _: &'a Replica) -> BoxFuture<'a, Liveness> {
        async { Liveness::Ready }.boxed()
    }

    fn stop<'a>(
        &'a self,
        _: &'a Replica,
        _: Duration,
    ) -> BoxFuture<'a, Result<(), OrchestratorError>> {
        async { Ok(()) }.boxed()
    }

    fn logs<'a>(&'a self, r: &'a Replica, _: usize) -> BoxFuture<'a, std::io::Result<Vec<String>>> {
        let line = format!("{} says hello", r.id);
        async move { Ok(vec![line]) }.boxed()
    }

    fn limits_note(&self) -> String {
        "none (fake)".into()
    }
}

fn replica(id: &str, deployment: &str, revision: u32, restarts: u32) -> Replica {
    Replica {
        id: id.into(),
        deployment: deployment.into(),
        revision,
        endpoint: "127.0.0.1:9".into(),
        pid: None,
        state: ReplicaState::Ready,
        restarts,
        exited_at: None,
        started_at: 0,
        target: Default::default(),
        reason: None,
        reserved: None,
    }
}

fn ctx(dir: &std::path::Path) -> Arc<Ctx> {
    ctx_with_stop(dir).0
}

/// A context and the switch that stops it.
fn ctx_with_stop(dir: &std::path::Path) -> (Arc<Ctx>, tokio::sync::watch::Sender<bool>) {
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let ctx = Arc::new(Ctx {
        store: Store::open(&dir.join("state.db")).unwrap(),
        targets: Targets {
            local: Arc::new(Fake::default()),
            docker: tokio::sync::OnceCell::new(),
            swarm: tokio::sync::OnceCell::new(),
            kubernetes: tokio::sync::OnceCell::new(),
        },
        gateway: modelship_gateway::Gateway::new(Default::default(), None),
        data_dir: dir.to_owned(),
        wake: tokio::sync::Notify::new(),
        running: Mutex::new(HashSet::new()),
        gateway_addr: "127.0.0.1:8080".parse().unwrap(),
        applied: Mutex::default(),
        published: None,
        replica_key: None,
        api_keys: BTreeSet::new(),
        analyses: Mutex::default(),
        telemetry: Mutex::default(),
        ticks: tokio::sync::watch::Sender::new(0),
        stopping,
    });
    (ctx, stop)
}

/// A deployment `name` at revision 1 (and 2 when `two`), its spec MiniLM.
fn deployed(ctx: &Ctx, name: &str, two: bool) {
    let spec: modelship_types::ModelDeployment = serde_json::from_value(json!({
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {"model": {"source": modelship_testkit::minilm()}},
    }))
    .unwrap();
    let revision = |number| Revision {
        deployment: name.into(),
        number,
        spec: spec.clone(),
        artifact: modelship_testkit::minilm(),
        artifact_digest: format!("sha256:{number}"),
        image: None,
        plan: None,
        legacy_memory_estimate: None,
        cause: "test".into(),
        created_at: 0,
    };
    let d = Deployment {
        name: name.into(),
        revision: 1,
        replicas: 1,
        phase: Phase::Steady,
        created_at: 0,
        updated_at: 0,
    };
    ctx.store.put_revision(&d, &revision(1)).unwrap();
    if two {
        ctx.store
            .put_revision(&Deployment { revision: 2, ..d }, &revision(2))
            .unwrap();
    }
}

async fn call(
    ctx: &Arc<Ctx>,
    keys: &[&str],
    method: &str,
    path: &str,
    body: Option<Value>,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let keys = keys.iter().map(|k| (*k).to_owned()).collect();
    let mut req = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        req = req.header("authorization", format!("Bearer {k}"));
    }
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap();
    let resp = api::router(Arc::clone(ctx), keys)
        .oneshot(req)
        .await
        .unwrap();
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

#[tokio::test]
async fn errors_name_what_is_wrong_in_the_shared_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    deployed(&ctx, "m", true);
    let get = |path: &'static str| call(&ctx, &[], "GET", path, None, None);
    // (method, path, body) -> (status, type, code, param)
    type Case = (
        &'static str,
        &'static str,
        Option<Value>,
        u16,
        &'static str,
        &'static str,
        Option<&'static str>,
    );
    let table: Vec<Case> = vec![
        (
            "GET",
            "/v1/deployments/nope",
            None,
            404,
            "invalid_request_error",
            "not_found",
            None,
        ),
        (
            "GET",
            "/v1/runs/abc",
            None,
            400,
            "invalid_request_error",
            "invalid_field",
            Some("request"),
        ),
        (
            "POST",
            "/v1/deployments",
            Some(json!({"spec": {"kind": "ModelDeployment"}})),
            400,
            "invalid_request_error",
            "invalid_field",
            Some("spec"),
        ),
        (
            "POST",
            "/v1/deployments/m/scale",
            Some(json!({"replicas": 20000})),
            400,
            "invalid_request_error",
            "invalid_field",
            Some("replicas"),
        ),
        (
            "POST",
            "/v1/deployments/m/rollback",
            Some(json!({"to": 2})),
            409,
            "invalid_request_error",
            "conflict",
            None,
        ),
        (
            "POST",
            "/v1/deployments/m/rollback",
            Some(json!({"to": 9})),
            404,
            "invalid_request_error",
            "not_found",
            None,
        ),
    ];
    for (method, path, body, status, kind, code, param) in table {
        let (got, v) = call(&ctx, &[], method, path, body, None).await;
        assert_eq!(got.as_u16(), status, "{method} {path}: {v}");
        assert_eq!(v["error"]["type"], kind, "{method} {path}: {v}");
        assert_eq!(v["error"]["code"], code, "{method} {path}: {v}");
        assert_eq!(v["error"]["param"].as_str(), param, "{method} {path}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }
    // Keys: without one, 401 everywhere but /healthz.
    let (status, v) = call(&ctx, &["k1"], "GET", "/v1/deployments", None, None).await;
    assert_eq!(status, 401);
    assert_eq!(v["error"]["type"], "authentication_error");
    let (status, _) = call(&ctx, &["k1"], "GET", "/v1/deployments", None, Some("k1")).await;
    assert_eq!(status, 200);
    let (status, _) = call(&ctx, &["k1"], "GET", "/healthz", None, None).await;
    assert_eq!(status, 200);
    // And what exists reads back.
    let (status, v) = get("/v1/deployments").await;
    assert_eq!(status, 200);
    assert_eq!(v[0]["name"], "m");
    assert_eq!(v[0]["revision"], 2);
    assert_eq!(v[0]["phase"]["phase"], "steady");
}

#[tokio::test]
async fn a_deploy_during_a_rollout_is_refused_and_a_rollback_supersedes_it() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    deployed(&ctx, "m", true);
    let run = ctx
        .store
        .start_run(Run {
            id: 0,
            deployment: "m".into(),
            revision: Some(2),
            status: RunStatus::Running,
            error: None,
            stages: vec![],
            started_at: 0,
            finished_at: None,
            spec: None,
            retry_of: None,
            attempt: 1,
            retried_as: None,
        })
        .unwrap();
    ctx.store
        .update_deployment("m", |d| {
            d.phase = Phase::BlueGreen {
                progress: Progress {
                    run: Some(run.id),
                    previous: Some(1),
                    started_at: 0,
                    since: 0,
                    record: vec![],
                    ready: 0,
                },
                stable: 1,
                switched_at: Some(5),
            };
            true
        })
        .unwrap();
    let spec = json!({"spec": {
        "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
        "metadata": {"name": "m"},
        "spec": {"model": {"source": modelship_testkit::minilm()}},
    }});
    let (status, v) = call(&ctx, &[], "POST", "/v1/deployments", Some(spec), None).await;
    assert_eq!(status, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("blue-green"),
        "{v}"
    );
    // Blue-green keeps revision 1 running: the rollback is instant, and
    // the rollout's run ends, saying why.
    let (status, v) = call(
        &ctx,
        &[],
        "POST",
        "/v1/deployments/m/rollback",
        Some(json!({})),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["instant"], true);
    let d = ctx.store.deployment("m").unwrap().unwrap();
    assert_eq!((d.revision, d.phase), (1, Phase::Steady));
    let run = ctx.store.run(run.id).unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Failed);
    assert!(run.error.unwrap().contains("rolled back to revision 1"));
}

#[tokio::test(start_paused = true)]
async fn delete_waits_for_the_replicas_but_not_forever() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    deployed(&ctx, "m", false);
    // A replica no controller will stop (none runs here).
    ctx.store
        .update_replicas(&[replica("m-1-aaaaa", "m", 1, 0)], &[])
        .unwrap();
    let (status, logs) = call(&ctx, &[], "GET", "/v1/deployments/m/logs", None, None).await;
    assert_eq!(status, 200);
    assert_eq!(logs, "[m-1-aaaaa] m-1-aaaaa says hello\n");
    let started = tokio::time::Instant::now();
    let (status, v) = call(&ctx, &[], "DELETE", "/v1/deployments/m", None, None).await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["stopped"], false);
    assert_eq!(v["stopping"], 1);
    // Paused time: the whole wait passed, and no more.
    let waited = started.elapsed();
    assert!(
        waited >= super::api::DELETE_WAIT
            && waited < super::api::DELETE_WAIT + Duration::from_secs(1),
        "{waited:?}"
    );
    // Recorded first: the deployment is gone, its replica still listed for
    // the controller to stop, now or when it next starts.
    assert!(ctx.store.deployment("m").unwrap().is_none());
    assert_eq!(ctx.store.replicas().unwrap().len(), 1);

    // With nothing left to stop it answers at once.
    deployed(&ctx, "n", false);
    let started = tokio::time::Instant::now();
    let (_, v) = call(&ctx, &[], "DELETE", "/v1/deployments/n", None, None).await;
    assert_eq!(v["stopped"], true);
    assert!(started.elapsed() < Duration::from_millis(10));
}

#[tokio::test]
async fn promote_and_abort_are_refused_without_a_rollout_and_abort_goes_back() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    deployed(&ctx, "m", true);
    for what in ["promote", "abort"] {
        let (status, body) = call(
            &ctx,
            &[],
            "POST",
            &format!("/v1/deployments/m/{what}"),
            Some(json!({})),
            None,
        )
        .await;
        assert_eq!(status, StatusCode::CONFLICT, "{what}: {body}");
        assert!(
            body.to_string().contains("no rollout in progress"),
            "{body}"
        );
    }
    // Mid-canary at revision 2 beside revision 1: aborted, 1 serves again.
    ctx.store
        .update_deployment("m", |d| {
            d.phase = Phase::Canary {
                progress: from_revision_1(),
                stable: 1,
                step: 0,
                analysis_from: None,
            };
            true
        })
        .unwrap();
    let (status, body) = call(
        &ctx,
        &[],
        "POST",
        "/v1/deployments/m/abort",
        Some(json!({})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["revision"].clone(), body["phase"].clone()),
        (json!(1), json!("steady"))
    );
    let d = ctx.store.deployment("m").unwrap().unwrap();
    assert_eq!((d.revision, d.phase), (1, Phase::Steady));
    let events = ctx.store.events("m").unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.message.contains("aborted by an operator"))
    );
    // Mid-canary again: a page that showed revision 1 cannot promote 2;
    // promoted, the canary moves to its next step.
    let canary = Phase::Canary {
        progress: from_revision_1(),
        stable: 1,
        step: 0,
        analysis_from: Some(5),
    };
    ctx.store
        .update_deployment("m", |d| {
            d.revision = 2;
            d.phase = canary.clone();
            true
        })
        .unwrap();
    let promote = |body| {
        call(
            &ctx,
            &[],
            "POST",
            "/v1/deployments/m/promote",
            Some(body),
            None,
        )
    };
    let (status, body) = promote(json!({"revision": 1})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, body) = promote(json!({"revision": 2})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let d = ctx.store.deployment("m").unwrap().unwrap();
    assert!(
        matches!(
            d.phase,
            Phase::Canary {
                step: 1,
                analysis_from: None,
                ..
            }
        ),
        "{:?}",
        d.phase
    );
    // A browser on another site, or another port of this host, cannot send
    // a change; nor can a page whose host name points here (no keys).
    let abort = |header: &'static str, value: &'static str| {
        Request::builder()
            .method("POST")
            .uri("/v1/deployments/m/abort")
            .header(header, value)
            .header("content-type", "application/json")
            .body(Body::from("{}"))
            .unwrap()
    };
    for (header, value) in [
        ("sec-fetch-site", "cross-site"),
        ("sec-fetch-site", "same-site"),
        ("host", "rebound.example:7070"),
    ] {
        let resp = api::router(Arc::clone(&ctx), BTreeSet::new())
            .oneshot(abort(header, value))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{header}: {value}");
    }
    // With keys, a host name is fine (the key is what guards it).
    let named = Request::builder()
        .uri("/v1/deployments")
        .header("host", "modelship.internal")
        .header("authorization", "Bearer k")
        .body(Body::empty())
        .unwrap();
    let resp = api::router(Arc::clone(&ctx), ["k".to_owned()].into())
        .oneshot(named)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        ctx.store
            .deployment("m")
            .unwrap()
            .unwrap()
            .phase
            .stable()
            .is_some()
    );
    // A field the route does not know is named.
    let (status, body) = call(
        &ctx,
        &[],
        "POST",
        "/v1/deployments/m/promote",
        Some(json!({"fully": true})),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[tokio::test]
async fn the_dashboard_shell_is_public_and_its_data_wants_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    deployed(&ctx, "m", false);
    let router = || api::router(Arc::clone(&ctx), ["k".to_owned()].into());
    let get = |path: &str, etag: Option<&str>| {
        let mut req = Request::builder().uri(path);
        if let Some(e) = etag {
            req = req.header("if-none-match", e);
        }
        req.body(Body::empty()).unwrap()
    };
    let page = router().oneshot(get("/", None)).await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    let etag = page.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        page.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("script-src 'self'")
    );
    let again = router().oneshot(get("/", Some(&etag))).await.unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    for path in [
        "/ui/app.js",
        "/ui/app.css",
        "/ui/uPlot.iife.min.js",
        "/ui/icon.svg",
    ] {
        let r = router().oneshot(get(path, None)).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "{path}");
    }
    // The figures are the API's: guarded.
    let (status, _) = call(&ctx, &["k"], "GET", "/v1/watch", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = call(
        &ctx,
        &["k"],
        "GET",
        "/v1/watch?deployment=nope",
        None,
        Some("k"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, body) = call(
        &ctx,
        &["k"],
        "GET",
        "/v1/deployments/m/metrics",
        None,
        Some("k"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["points"], json!([]));
    assert_eq!(body["tick_ms"], 2000);
    // Two readings make one point, which the route returns.
    for at in [1_000, 3_000] {
        ctx.telemetry
            .lock()
            .unwrap()
            .record(crate::telemetry::Reading {
                at,
                deployments: [("m".to_owned(), (1, 1))].into(),
                ..Default::default()
            });
    }
    let (_, body) = call(
        &ctx,
        &["k"],
        "GET",
        "/v1/deployments/m/metrics",
        None,
        Some("k"),
    )
    .await;
    assert_eq!(body["points"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["points"][0]["at"], 3_000);
}

#[tokio::test]
async fn the_stream_sends_the_view_now_and_on_each_tick() {
    use futures::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let ctx = ctx(dir.path());
    deployed(&ctx, "m", false);
    let req = Request::builder()
        .uri("/v1/watch?deployment=m")
        .body(Body::empty())
        .unwrap();
    let resp = api::router(Arc::clone(&ctx), BTreeSet::new())
        .oneshot(req)
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body().into_data_stream();
    async fn next(body: &mut axum::body::BodyDataStream) -> String {
        let chunk = tokio::time::timeout(Duration::from_secs(5), body.next())
            .await
            .expect("an event in time")
            .unwrap()
            .unwrap();
        String::from_utf8(chunk.to_vec()).unwrap()
    }
    let first = next(&mut body).await;
    assert!(first.starts_with("event: detail\ndata: {"), "{first}");
    assert!(first.contains("\"name\":\"m\""), "{first}");
    ctx.ticks.send_modify(|n| *n += 1);
    assert!(next(&mut body).await.starts_with("event: detail"));
    // Gone: one `gone` event, then the stream ends.
    ctx.store.delete_deployment("m").unwrap();
    ctx.ticks.send_modify(|n| *n += 1);
    assert!(next(&mut body).await.starts_with("event: gone"));
    assert!(body.next().await.is_none());

    // A stopping control plane ends every open stream (its graceful
    // shutdown waits for them).
    let (ctx, stop) = ctx_with_stop(dir.path());
    let req = Request::builder()
        .uri("/v1/watch")
        .body(Body::empty())
        .unwrap();
    let resp = api::router(Arc::clone(&ctx), BTreeSet::new())
        .oneshot(req)
        .await
        .unwrap();
    let mut body = resp.into_body().into_data_stream();
    assert!(next(&mut body).await.starts_with("event: overview"));
    stop.send(true).unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), body.next()).await;
    assert!(matches!(end, Ok(None)), "the stream did not end: {end:?}");
}

/// A rollout's progress from revision 1, with no run.
fn from_revision_1() -> modelship_types::Progress {
    modelship_types::Progress {
        run: None,
        previous: Some(1),
        started_at: 0,
        since: 0,
        record: Vec::new(),
        ready: 0,
    }
}
