//! The control-plane API the CLI talks to (JSON over HTTP):
//!
//! | route | does |
//! |---|---|
//! | `POST /v1/deployments` `{spec}` | validate, start a pipeline run; 202 `{run}` |
//! | `GET /v1/deployments[/{name}]` | deployments with replica counts; one in detail |
//! | `DELETE /v1/deployments/{name}` | stop its replicas, forget it |
//! | `POST /v1/deployments/{name}/scale` `{replicas}` | desired replicas |
//! | `POST /v1/deployments/{name}/rollback` `{to?}` | serve an earlier revision |
//! | `POST /v1/deployments/{name}/promote` `{full?, revision?}` | a rollout's next step now (`full`: all of them) |
//! | `POST /v1/deployments/{name}/abort` `{revision?}` | fail the rollout: back to the revision before |
//! | `GET /v1/deployments/{name}/history` | revisions and events |
//! | `GET /v1/deployments/{name}/logs?tail=N` | its replicas' output |
//! | `GET /v1/revisions`, `/v1/replicas`, `/v1/runs[/{id}]`, `/v1/status` | listings |
//! | `GET /v1/deployments/{name}/metrics` | the last hour's figures, one point per tick |
//! | `GET /v1/watch[?deployment=NAME]` | server-sent events: the overview (or one deployment) on every tick |
//! | `GET /`, `/ui/*` | the dashboard (its shell holds no data: every figure comes through the routes above) |

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use modelship_orchestrator::now_ms;
use modelship_planner::Intervention;
use modelship_types::{
    Deployment, Event, ModelDeployment, Phase, Replica, ReplicaState, Revision, Run,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{Ctx, pipeline, rollout};

/// The one place API errors become HTTP.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("invalid `{field}`: {reason}")]
    Invalid { field: String, reason: String },
    #[error(
        "missing or unknown API key: send `Authorization: Bearer KEY` (the CLI sends MODELSHIP_API_KEY)"
    )]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<modelship_store::StoreError> for ApiError {
    fn from(e: modelship_store::StoreError) -> Self {
        ApiError::Internal(e.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, param) = match &self {
            ApiError::Invalid { field, .. } => (
                StatusCode::BAD_REQUEST,
                "invalid_field",
                Some(field.clone()),
            ),
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "invalid_api_key", None),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found", None),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "conflict", None),
            ApiError::Internal(e) => {
                tracing::error!("{e:#}");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal_error", None)
            }
        };
        // The shared vocabulary: the type from the status, as a replica and
        // the gateway answer.
        let mut body = json!({"error": {
            "message": self.to_string(),
            "type": modelship_types::errors::error_type(status.as_u16()),
            "code": code,
        }});
        if let Some(p) = param {
            body["error"]["param"] = json!(p);
        }
        (status, Json(body)).into_response()
    }
}

type Result<T> = std::result::Result<T, ApiError>;

/// An extractor (`Json`, `Path`, `Query`) whose rejection answers as the
/// API's other errors do, JSON naming what is wrong, not axum's plain text.
pub(crate) struct Api<E>(pub E);

fn rejected(what: &str, why: impl std::fmt::Display) -> ApiError {
    ApiError::Invalid {
        field: what.into(),
        reason: why.to_string(),
    }
}

impl<S: Send + Sync, E> axum::extract::FromRequestParts<S> for Api<E>
where
    E: axum::extract::FromRequestParts<S>,
    E::Rejection: std::fmt::Display,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> std::result::Result<Self, ApiError> {
        E::from_request_parts(parts, state)
            .await
            .map(Api)
            .map_err(|e| rejected("request", e))
    }
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> axum::extract::FromRequest<S>
    for Api<Json<T>>
{
    type Rejection = ApiError;

    async fn from_request(
        req: axum::extract::Request,
        state: &S,
    ) -> std::result::Result<Self, ApiError> {
        <Json<T> as axum::extract::FromRequest<S>>::from_request(req, state)
            .await
            .map(Api)
            .map_err(|e| rejected("body", e))
    }
}

/// The control API; with `keys`, every route but `/healthz` wants one of
/// them (`Authorization: Bearer KEY`, as the gateway does).
pub(crate) fn router(ctx: Arc<Ctx>, keys: BTreeSet<String>) -> Router {
    let open = keys.is_empty();
    let keys = Arc::new(keys);
    let guarded = Router::new()
        .route("/v1/deployments", post(deploy).get(deployments))
        .route("/v1/deployments/{name}", get(deployment).delete(delete))
        .route("/v1/deployments/{name}/scale", post(scale))
        .route("/v1/deployments/{name}/rollback", post(rollback))
        .route("/v1/deployments/{name}/promote", post(promote))
        .route("/v1/deployments/{name}/abort", post(abort))
        .route("/v1/deployments/{name}/history", get(history))
        .route("/v1/deployments/{name}/logs", get(logs))
        .route("/v1/revisions", get(revisions))
        .route("/v1/replicas", get(replicas))
        .route("/v1/runs", get(runs))
        .route("/v1/runs/{id}", get(run))
        .route("/v1/status", get(status))
        .route("/v1/watch", get(crate::dashboard::watch))
        .route(
            "/v1/deployments/{name}/metrics",
            get(crate::dashboard::series),
        )
        .route_layer(axum::middleware::from_fn(move |req, next| {
            require_key(Arc::clone(&keys), req, next)
        }))
        .route_layer(axum::middleware::from_fn(same_site))
        .route_layer(axum::middleware::from_fn(move |req, next| {
            named_host(open, req, next)
        }))
        .with_state(ctx);
    guarded
        .route("/healthz", get(|| async { "ok" }))
        .merge(crate::dashboard::assets())
}

/// Refuses a change a browser sends from any page but the dashboard's own
/// (`Sec-Fetch-Site` other than `same-origin` or `none`; a page on another
/// port of this host is `same-site`): without API keys, the API on loopback
/// would otherwise act for any page its user opens. Clients that are not
/// browsers send no such header.
async fn same_site(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let foreign = req
        .headers()
        .get("sec-fetch-site")
        .is_some_and(|v| !matches!(v.as_bytes(), b"same-origin" | b"none"));
    if foreign && req.method() != axum::http::Method::GET {
        return ApiError::Forbidden("changes are not taken from another site's pages".into())
            .into_response();
    }
    next.run(req).await
}

/// Without API keys, answers only requests addressed to an IP address or
/// `localhost`: a page whose own host name was made to resolve to this
/// machine (DNS rebinding) could otherwise read and change everything with
/// its user's browser.
async fn named_host(
    open: bool,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if open && !addressed_by_ip(host) {
        return ApiError::Forbidden(
            "without API keys the API answers only at an IP address or localhost: serve it under a host name with --api-keys"
                .into(),
        )
        .into_response();
    }
    next.run(req).await
}

/// Whether a `Host` header names an IP address or `localhost` (a missing
/// one: a client that is not a browser).
fn addressed_by_ip(host: &str) -> bool {
    if host.is_empty() {
        return true;
    }
    let name = match host.strip_prefix('[') {
        Some(v6) => {
            return v6
                .split(']')
                .next()
                .is_some_and(|a| a.parse::<std::net::Ipv6Addr>().is_ok());
        }
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::Ipv4Addr>().is_ok()
}

async fn require_key(
    keys: Arc<BTreeSet<String>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .map(|v| v.as_bytes());
    if keys.is_empty() || modelship_types::auth::authorized(given, keys.iter().map(String::as_str))
    {
        return next.run(req).await;
    }
    ApiError::Unauthorized.into_response()
}

/// `POST /v1/deployments`: the spec as JSON, its paths absolute.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeployRequest {
    pub spec: serde_json::Value,
}

async fn deploy(
    State(ctx): State<Arc<Ctx>>,
    Api(Json(req)): Api<Json<DeployRequest>>,
) -> Result<Response> {
    let spec: ModelDeployment = serde_path_to_error::deserialize(req.spec).map_err(|e| {
        let path = e.path().to_string();
        ApiError::Invalid {
            field: if path == "." { "spec".into() } else { path },
            reason: e.into_inner().to_string(),
        }
    })?;
    spec.validate().map_err(|e| ApiError::Invalid {
        field: e.field,
        reason: e.reason,
    })?;
    if !spec.spec.model.source.is_absolute() {
        return Err(ApiError::Invalid {
            field: "spec.model.source".into(),
            reason: "must be an absolute path here (the CLI resolves it against the spec file)"
                .into(),
        });
    }
    if spec.spec.target == modelship_types::Target::Kubernetes && spec.spec.image.is_none() {
        return Err(ApiError::Invalid {
            field: "spec.image".into(),
            reason: "a Kubernetes cluster pulls images from a registry: name a repository (host[:port]/name) to push to"
                .into(),
        });
    }
    let name = spec.metadata.name.clone();
    if let Some(d) = ctx.store.deployment(&name)?
        && let Some(run) = d.phase.run()
    {
        return Err(ApiError::Conflict(format!(
            "run {run} is rolling out revision {} of `{name}` ({}): wait for it, or roll back",
            d.revision,
            d.phase.name()
        )));
    }
    let id = pipeline::start(&ctx, spec, None).map_err(|e| match e {
        pipeline::StartError::Running => {
            ApiError::Conflict(format!("a deploy of `{name}` is already running"))
        }
        pipeline::StartError::Store(e) => e.into(),
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"run": id, "deployment": name})),
    )
        .into_response())
}

/// One line of `get deployments`.
#[derive(Debug, Serialize, Deserialize)]
pub struct DeploymentSummary {
    pub name: String,
    pub revision: u32,
    pub replicas: u32,
    pub ready: usize,
    /// Replicas of other revisions still running (a rollout in progress).
    pub old: usize,
    /// Where its rollout stands.
    #[serde(default)]
    pub phase: Phase,
    /// During a canary or blue-green rollout: the revision serving beside
    /// `revision`, and the percent of traffic `revision` gets.
    pub stable: Option<u32>,
    pub traffic: Option<u32>,
    /// Replicas waiting for room on a node.
    #[serde(default)]
    pub pending: usize,
    pub model: String,
    /// Where its replicas run, and the image they run (not for `local`).
    #[serde(default)]
    pub target: modelship_types::Target,
    #[serde(default)]
    pub image: Option<String>,
    pub updated_at: u64,
}

fn summary(ctx: &Ctx, d: &Deployment, all: &[Replica]) -> Result<DeploymentSummary> {
    let mine = || {
        all.iter()
            .filter(|r| r.deployment == d.name && r.state != ReplicaState::Terminating)
    };
    let rev = ctx.store.revision(&d.name, d.revision)?;
    let model = rev
        .as_ref()
        .map(|r| r.artifact.display().to_string())
        .unwrap_or_default();
    // The split as the controller sets it: one rule, the planner's.
    let split = rev
        .as_ref()
        .map(|r| modelship_planner::desired(d, &r.spec.spec.rollout));
    Ok(DeploymentSummary {
        name: d.name.clone(),
        revision: d.revision,
        replicas: d.replicas,
        ready: mine()
            .filter(|r| r.revision == d.revision && r.state == ReplicaState::Ready)
            .count(),
        old: mine().filter(|r| r.revision != d.revision).count(),
        phase: d.phase.clone(),
        stable: split.as_ref().and_then(|s| s.stable.map(|(r, _)| r)),
        traffic: split.as_ref().and_then(|s| s.traffic),
        pending: mine().filter(|r| r.state == ReplicaState::Pending).count(),
        model,
        target: rev.as_ref().map(|r| r.spec.spec.target).unwrap_or_default(),
        image: rev.and_then(|r| r.image),
        updated_at: d.updated_at,
    })
}

async fn deployments(State(ctx): State<Arc<Ctx>>) -> Result<Json<Vec<DeploymentSummary>>> {
    let all = ctx.store.replicas()?;
    let list = ctx
        .store
        .deployments()?
        .iter()
        .map(|d| summary(&ctx, d, &all))
        .collect::<Result<_>>()?;
    Ok(Json(list))
}

pub(crate) fn existing(ctx: &Ctx, name: &str) -> Result<Deployment> {
    ctx.store
        .deployment(name)?
        .ok_or_else(|| ApiError::NotFound(format!("no deployment `{name}`")))
}

async fn deployment(
    State(ctx): State<Arc<Ctx>>,
    Api(Path(name)): Api<Path<String>>,
) -> Result<Json<serde_json::Value>> {
    Ok(Json(detail(&ctx, &name)?))
}

/// One deployment in detail: what `status` prints and the dashboard's
/// deployment page shows (it streams this on every tick).
pub(crate) fn detail(ctx: &Ctx, name: &str) -> Result<serde_json::Value> {
    let d = existing(ctx, name)?;
    let all = ctx.store.replicas()?;
    let summary = summary(ctx, &d, &all)?;
    let telemetry = ctx.telemetry.lock().unwrap_or_else(|p| p.into_inner());
    let replicas: Vec<serde_json::Value> = all
        .iter()
        .filter(|r| r.deployment == name)
        .map(|r| {
            let mut v = json!(r);
            v["resident_bytes"] = json!(telemetry.memory(&r.id));
            v
        })
        .collect();
    let point = telemetry.latest(name, now_ms());
    drop(telemetry);
    let events = ctx.store.events(name)?;
    let recent: Vec<&Event> = events.iter().rev().take(20).rev().collect();
    let runs: Vec<Run> = ctx.store.runs(Some(name))?.into_iter().take(5).collect();
    let stored = ctx.store.revisions(Some(name))?;
    let rollout = stored
        .iter()
        .find(|r| r.number == d.revision)
        .map(|r| &r.spec.spec.rollout);
    // What an operator may do to the rollout now: the planner's decision,
    // which the page's buttons follow.
    let can = rollout.map(|rollout| {
        let now = now_ms();
        let allowed = |what| modelship_planner::intervene(&d, rollout, what, now).is_ok();
        json!({
            "promote": allowed(Intervention::Promote { full: false }),
            "abort": allowed(Intervention::Abort),
            // A failed first rollout removes the deployment.
            "abort_removes": d.phase.progress().is_some_and(|p| p.previous.is_none()),
        })
    });
    let revisions: Vec<serde_json::Value> = stored
        .iter()
        .map(|r| {
            let live = |ready: bool| {
                all.iter()
                    .filter(|x| x.deployment == name && x.revision == r.number)
                    .filter(|x| x.state != ReplicaState::Terminating)
                    .filter(|x| !ready || x.state == ReplicaState::Ready)
                    .count()
            };
            json!({"revision": r.number, "cause": r.cause, "created_at": r.created_at,
                   "precision": r.plan.as_ref().map(|p| p.precision.clone()),
                   "artifact_digest": r.artifact_digest, "image": r.image,
                   "serving": r.number == d.revision,
                   "share": share(&summary, r.number),
                   "replicas": live(false), "ready": live(true)})
        })
        .collect();
    Ok(json!({
        "deployment": summary,
        "rollout": rollout,
        "can": can,
        "revisions": revisions,
        "replicas": replicas,
        "events": recent,
        "runs": runs,
        "point": point,
        "stats": ctx.gateway.stats().revisions.into_iter().filter(|s| s.deployment == name).collect::<Vec<_>>(),
        // The shadow phase's or canary step's figures so far.
        "analysis": ctx.analyses.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned(),
    }))
}

/// The percent of client traffic `revision` gets under `d`'s split.
fn share(d: &DeploymentSummary, revision: u32) -> u32 {
    match (d.traffic, d.stable) {
        (Some(t), _) if revision == d.revision => t,
        (Some(t), Some(stable)) if revision == stable => 100 - t.min(100),
        (None, _) if revision == d.revision => 100,
        _ => 0,
    }
}

/// Every deployment with its latest figures, and the recent runs in
/// brief: the dashboard's front page (it streams this on every tick).
pub(crate) fn overview(ctx: &Ctx) -> Result<serde_json::Value> {
    let all = ctx.store.replicas()?;
    let deployments = ctx.store.deployments()?;
    let mut rows = Vec::with_capacity(deployments.len());
    for d in &deployments {
        let precision = ctx
            .store
            .revision(&d.name, d.revision)?
            .and_then(|r| r.plan.map(|p| p.precision));
        let point = ctx
            .telemetry
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .latest(&d.name, now_ms());
        rows.push(json!({
            "deployment": summary(ctx, d, &all)?,
            "precision": precision,
            "point": point,
        }));
    }
    let runs: Vec<serde_json::Value> = ctx
        .store
        .recent_runs(50)?
        .iter()
        .map(|r| {
            json!({"id": r.id, "deployment": r.deployment, "revision": r.revision,
                   "status": r.status, "stage": r.current_stage(), "error": r.error,
                   "started_at": r.started_at, "finished_at": r.finished_at})
        })
        .collect();
    Ok(json!({"deployments": rows, "runs": runs, "at": now_ms()}))
}

async fn delete(
    State(ctx): State<Arc<Ctx>>,
    Api(Path(name)): Api<Path<String>>,
) -> Result<Json<serde_json::Value>> {
    let d = existing(&ctx, &name)?;
    rollout::supersede(&ctx, &d, "the deployment was deleted");
    // Recorded first: replicas of a deployment the store no longer has are
    // stopped by the controller, now or when the control plane next starts.
    ctx.store.delete_deployment(&name)?;
    ctx.record_event(&name, "deleted: stopping its replicas".into())?;
    ctx.wake.notify_one();
    // Answer once they are gone, so that stopping the control plane right
    // after leaves nothing running.
    let deadline = tokio::time::Instant::now() + DELETE_WAIT;
    loop {
        let left = ctx
            .store
            .replicas()?
            .iter()
            .filter(|r| r.deployment == name)
            .count();
        if left == 0 {
            return Ok(Json(json!({"deleted": name, "stopped": true})));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Json(
                json!({"deleted": name, "stopped": false, "stopping": left}),
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// How long `DELETE` waits for the replicas to drain and stop: the
/// controller's drain grace and a little more.
pub(crate) const DELETE_WAIT: std::time::Duration = std::time::Duration::from_secs(40);

#[derive(Deserialize)]
struct ScaleRequest {
    replicas: u32,
}

async fn scale(
    State(ctx): State<Arc<Ctx>>,
    Api(Path(name)): Api<Path<String>>,
    Api(Json(req)): Api<Json<ScaleRequest>>,
) -> Result<Json<serde_json::Value>> {
    if req.replicas > 10_000 {
        return Err(ApiError::Invalid {
            field: "replicas".into(),
            reason: format!("{} is more than 10000", req.replicas),
        });
    }
    let mut from = 0;
    let updated = ctx.store.update_deployment(&name, |d| {
        from = d.replicas;
        d.replicas = req.replicas;
        d.updated_at = now_ms();
        true
    })?;
    if updated.is_none() {
        return Err(ApiError::NotFound(format!("no deployment `{name}`")));
    }
    ctx.record_event(
        &name,
        format!("scaled from {from} to {} replicas", req.replicas),
    )?;
    ctx.wake.notify_one();
    Ok(Json(json!({"deployment": name, "replicas": req.replicas})))
}

#[derive(Deserialize)]
struct RollbackRequest {
    to: Option<u32>,
}

/// Serves an earlier revision again as a new revision (so history reads
/// forward, as with `kubectl rollout undo`): its spec and artifact.
async fn rollback(
    State(ctx): State<Arc<Ctx>>,
    Api(Path(name)): Api<Path<String>>,
    Api(Json(req)): Api<Json<RollbackRequest>>,
) -> Result<Json<serde_json::Value>> {
    let d = existing(&ctx, &name)?;
    let revisions = ctx.store.revisions(Some(&name))?;
    let target = match req.to {
        Some(n) => revisions
            .iter()
            .find(|r| r.number == n)
            .ok_or_else(|| ApiError::NotFound(format!("`{name}` has no revision {n}")))?,
        None => revisions
            .iter()
            .rev()
            .find(|r| r.number < d.revision)
            .ok_or_else(|| {
                ApiError::Conflict(format!("`{name}` has no revision before {}", d.revision))
            })?,
    };
    if target.number == d.revision {
        return Err(ApiError::Conflict(format!(
            "revision {} already serves `{name}`",
            d.revision
        )));
    }
    // Blue-green keeps the old revision running for a while after the
    // switch: going back to it is instant, no replica starts.
    let why = format!(
        "rolled back to revision {} by `modelship rollback`",
        target.number
    );
    if d.phase.stable() == Some(target.number) {
        let n = target.number;
        // Only over the rollout read above (the controller may have moved it).
        let mut moved = false;
        ctx.store.update_deployment(&name, |cur| {
            moved = cur.revision == d.revision && cur.phase == d.phase;
            if moved {
                cur.revision = n;
                cur.phase = Phase::Steady;
                cur.updated_at = now_ms();
            }
            moved
        })?;
        if !moved {
            return Err(ApiError::Conflict(format!(
                "`{name}` changed meanwhile: look again (`modelship status {name}`)"
            )));
        }
        rollout::supersede(&ctx, &d, &why);
        ctx.record_event(
            &name,
            format!("instant rollback to revision {n}: its replicas were still running"),
        )?;
        ctx.wake.notify_one();
        return Ok(Json(
            json!({"deployment": name, "revision": n, "from": n, "instant": true}),
        ));
    }
    if !target.artifact.exists() {
        return Err(ApiError::Conflict(format!(
            "revision {}'s model {} is gone",
            target.number,
            target.artifact.display()
        )));
    }
    rollout::supersede(&ctx, &d, &why);
    let number = ctx.store.last_revision_number(&name)? + 1;
    let revision = Revision {
        number,
        cause: format!("rollback to revision {}", target.number),
        created_at: now_ms(),
        ..target.clone()
    };
    let deployment = Deployment {
        revision: number,
        phase: Phase::Steady,
        updated_at: now_ms(),
        ..d
    };
    ctx.store.put_revision(&deployment, &revision)?;
    ctx.record_event(
        &name,
        format!("revision {number}: rollback to revision {}", target.number),
    )?;
    ctx.wake.notify_one();
    Ok(Json(
        json!({"deployment": name, "revision": number, "from": target.number}),
    ))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PromoteRequest {
    #[serde(default)]
    full: bool,
    /// The revision whose rollout is meant: refused when another rolls out
    /// by now (a page that showed an earlier one).
    revision: Option<u32>,
}

/// A JSON body, so that a browser on another site cannot send it without
/// asking first (a form cannot post JSON).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AbortRequest {
    revision: Option<u32>,
}

async fn promote(
    State(ctx): State<Arc<Ctx>>,
    Api(Path(name)): Api<Path<String>>,
    Api(Json(req)): Api<Json<PromoteRequest>>,
) -> Result<Json<serde_json::Value>> {
    intervene(
        &ctx,
        &name,
        req.revision,
        Intervention::Promote { full: req.full },
    )
}

async fn abort(
    State(ctx): State<Arc<Ctx>>,
    Api(Path(name)): Api<Path<String>>,
    Api(Json(req)): Api<Json<AbortRequest>>,
) -> Result<Json<serde_json::Value>> {
    intervene(&ctx, &name, req.revision, Intervention::Abort)
}

/// An operator's promote or abort: the planner's step from the recorded
/// phase, recorded as a controller tick's would be.
fn intervene(
    ctx: &Ctx,
    name: &str,
    meant: Option<u32>,
    what: Intervention,
) -> Result<Json<serde_json::Value>> {
    let d = existing(ctx, name)?;
    if let Some(meant) = meant.filter(|&m| m != d.revision) {
        return Err(ApiError::Conflict(format!(
            "`{name}` rolls out revision {} now, not {meant}: look again",
            d.revision
        )));
    }
    let rev = ctx
        .store
        .revision(name, d.revision)?
        .ok_or_else(|| ApiError::NotFound(format!("`{name}` has no revision {}", d.revision)))?;
    let now = now_ms();
    let step = modelship_planner::intervene(&d, &rev.spec.spec.rollout, what, now)
        .map_err(|e| ApiError::Conflict(format!("`{name}`: {e}")))?;
    let events = step.events.clone();
    let recorded = rollout::record(ctx, &d, step, now)?;
    if !recorded.applied {
        return Err(ApiError::Conflict(format!(
            "`{name}` changed meanwhile: look again (`modelship status {name}`)"
        )));
    }
    let (revision, phase) = match &recorded.stored {
        Some(d) => (Some(d.revision), d.phase.name()),
        None => (None, "removed"),
    };
    Ok(Json(json!({
        "deployment": name,
        "revision": revision,
        "phase": phase,
        "events": events,
    })))
}

async fn history(
    State(ctx): State<Arc<Ctx>>,
    Api(Path(name)): Api<Path<String>>,
) -> Result<Json<serde_json::Value>> {
    let revisions = ctx.store.revisions(Some(&name))?;
    let events = ctx.store.events(&name)?;
    if revisions.is_empty() && events.is_empty() {
        return Err(ApiError::NotFound(format!(
            "no deployment `{name}` has ever existed"
        )));
    }
    let current = ctx.store.deployment(&name)?.map(|d| d.revision);
    let revisions: Vec<_> = revisions
        .iter()
        .map(|r| {
            json!({"revision": r.number, "cause": r.cause, "created_at": r.created_at,
                   "artifact": r.artifact, "artifact_digest": r.artifact_digest,
                   "image": r.image, "target": r.spec.spec.target,
                   "serving": Some(r.number) == current})
        })
        .collect();
    Ok(Json(
        json!({"deployment": name, "revisions": revisions, "events": events}),
    ))
}

#[derive(Deserialize)]
struct LogsQuery {
    tail: Option<usize>,
}

async fn logs(
    State(ctx): State<Arc<Ctx>>,
    Api(Path(name)): Api<Path<String>>,
    Api(Query(q)): Api<Query<LogsQuery>>,
) -> Result<String> {
    existing(&ctx, &name)?;
    let tail = q.tail.unwrap_or(50);
    let mut out = String::new();
    for r in ctx
        .store
        .replicas()?
        .iter()
        .filter(|r| r.deployment == name)
    {
        // Swarm tasks' and Kubernetes pods' output is their engine's
        // (`docker service logs`, `kubectl logs`).
        let Ok(orchestrator) = ctx.targets.get(r.target).await else {
            continue;
        };
        let lines = orchestrator
            .logs(r, tail)
            .await
            .map_err(|e| ApiError::Internal(anyhow::anyhow!("cannot read {}'s logs: {e}", r.id)))?;
        for line in lines {
            out.push_str(&format!("[{}] {line}\n", r.id));
        }
    }
    Ok(out)
}

#[derive(Deserialize)]
struct ByDeployment {
    deployment: Option<String>,
}

async fn revisions(
    State(ctx): State<Arc<Ctx>>,
    Api(Query(q)): Api<Query<ByDeployment>>,
) -> Result<Json<Vec<Revision>>> {
    Ok(Json(ctx.store.revisions(q.deployment.as_deref())?))
}

async fn replicas(
    State(ctx): State<Arc<Ctx>>,
    Api(Query(q)): Api<Query<ByDeployment>>,
) -> Result<Json<Vec<Replica>>> {
    let all = ctx.store.replicas()?;
    Ok(Json(match q.deployment {
        Some(d) => all.into_iter().filter(|r| r.deployment == d).collect(),
        None => all,
    }))
}

async fn runs(
    State(ctx): State<Arc<Ctx>>,
    Api(Query(q)): Api<Query<ByDeployment>>,
) -> Result<Json<Vec<Run>>> {
    Ok(Json(ctx.store.runs(q.deployment.as_deref())?))
}

async fn run(State(ctx): State<Arc<Ctx>>, Api(Path(id)): Api<Path<u64>>) -> Result<Json<Run>> {
    ctx.store
        .run(id)?
        .map(Json)
        .ok_or_else(|| ApiError::NotFound(format!("no run {id}")))
}

async fn status(State(ctx): State<Arc<Ctx>>) -> Result<Json<serde_json::Value>> {
    Ok(Json(json!({
        "gateway": ctx.gateway_addr.to_string(),
        "data_dir": ctx.data_dir,
        "resource_limits": ctx.targets.local().limits_note(),
        "deployments": ctx.store.deployments()?.len(),
        "replicas": ctx.store.replicas()?.len(),
    })))
}

#[cfg(test)]
mod host_tests {
    use super::addressed_by_ip;

    #[test]
    fn only_addresses_and_localhost_are_hosts_without_keys() {
        for ok in [
            "127.0.0.1:7070",
            "10.0.0.5",
            "[::1]:7070",
            "localhost:7070",
            "LOCALHOST",
            "",
        ] {
            assert!(addressed_by_ip(ok), "{ok}");
        }
        for refused in [
            "evil.example:7070",
            "localhost.evil.example",
            "[nope]:1",
            "127.0.0.1.nip.io",
        ] {
            assert!(!addressed_by_ip(refused), "{refused}");
        }
    }
}
