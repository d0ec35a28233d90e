//! The HTTP side: authentication, the request's target deployment, the
//! retry loop, and streaming the chosen replica's answer back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http_body_util::Full;
use serde_json::json;

use crate::Gateway;
use crate::balance::{Endpoint, Pick};
use crate::pool::{Pool, Unanswered};

#[derive(Clone)]
struct Shared {
    gateway: Gateway,
    pool: Arc<Pool>,
}

/// The gateway's routes: `/v1/models`, `/metrics`, `/healthz`, and every
/// other request proxied to the deployment it names.
pub fn router(gateway: Gateway) -> Router {
    Router::new()
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .fallback(proxy)
        .with_state(Shared {
            gateway,
            pool: Arc::default(),
        })
}

/// The gateway's clock: ms since it first looked.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// splitmix64 over a shared counter: cheap, good enough to spread load.
fn random() -> u64 {
    static STATE: AtomicU64 = AtomicU64::new(0x9E37_79B9_7F4A_7C15);
    let mut z = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The one place gateway errors become HTTP: OpenAI's error body.
fn error(status: StatusCode, kind: &str, message: String, param: Option<&str>) -> Response {
    let mut body = json!({"error": {"message": message, "type": kind}});
    if let Some(p) = param {
        body["error"]["param"] = json!(p);
    }
    let mut response = (status, axum::Json(body)).into_response();
    if status == StatusCode::SERVICE_UNAVAILABLE {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

fn authorized(gateway: &Gateway, headers: &HeaderMap) -> bool {
    let keys = &gateway.inner.config.api_keys;
    keys.is_empty()
        || headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .is_some_and(|k| keys.contains(k.trim()))
}

fn unauthorized() -> Response {
    error(
        StatusCode::UNAUTHORIZED,
        "authentication_error",
        "missing or unknown API key: send `Authorization: Bearer KEY`".into(),
        None,
    )
}

async fn models(State(s): State<Shared>, headers: HeaderMap) -> Response {
    if !authorized(&s.gateway, &headers) {
        return unauthorized();
    }
    let table = s.gateway.table();
    let mut names: Vec<&String> = table.deployments.keys().collect();
    names.sort();
    let data: Vec<_> = names
        .iter()
        .map(|n| json!({"id": n, "object": "model", "owned_by": "modelship"}))
        .collect();
    axum::Json(json!({"object": "list", "data": data})).into_response()
}

async fn metrics(State(s): State<Shared>) -> Response {
    match &s.gateway.inner.metrics {
        Some(render) => (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            render(),
        )
            .into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

/// The deployment a request is for: `/v2/models/{name}/…` names it in the
/// path; OpenAI requests in the body's `model` field. The error says what
/// is wrong with the body.
fn target(path: &str, body: &[u8]) -> Result<String, String> {
    if let Some(rest) = path.strip_prefix("/v2/models/") {
        return Ok(rest.split('/').next().unwrap_or_default().to_owned());
    }
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<String>,
    }
    match serde_json::from_slice::<Named>(body) {
        Ok(Named { model: Some(m) }) => Ok(m),
        Ok(Named { model: None }) => {
            Err("`model` is required: the name of a deployment (GET /v1/models lists them)".into())
        }
        Err(e) => Err(format!(
            "the body is not a JSON object with a `model` string: {e}"
        )),
    }
}

async fn proxy(State(s): State<Shared>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    if !authorized(&s.gateway, &parts.headers) {
        return unauthorized();
    }
    let path = parts.uri.path().to_owned();
    if !(path.starts_with("/v1/") || path.starts_with("/v2/models/")) {
        return error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no route {path}"),
            None,
        );
    }
    let config = &s.gateway.inner.config;
    let body = match axum::body::to_bytes(body, config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the body is larger than {} bytes", config.max_body_bytes),
                None,
            );
        }
    };
    let deployment = match target(&path, &body) {
        Ok(d) => d,
        Err(message) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request_error",
                message,
                Some("model"),
            );
        }
    };
    let path_and_query = parts
        .uri
        .path_and_query()
        .map_or(path.as_str(), |p| p.as_str());
    let table = s.gateway.table();
    let mut tried: Vec<String> = Vec::new();
    for attempt in 0..config.attempts {
        let endpoint = match table.pick(&deployment, &tried, now_ms(), &mut random) {
            Pick::Endpoint(e, Some(abort))
                if (random() % 10_000) as f64 <= abort.percent * 100.0 - 1.0 =>
            {
                record(&e, abort.status, 0.0, abort.status >= 500);
                let status =
                    StatusCode::from_u16(abort.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                return error(
                    status,
                    "fault_injected",
                    format!(
                        "fault injected by `spec.fault` of {deployment} revision {}",
                        e.revision
                    ),
                    None,
                );
            }
            Pick::Endpoint(e, _) => e,
            Pick::UnknownModel => {
                return error(
                    StatusCode::NOT_FOUND,
                    "model_not_found",
                    format!(
                        "model `{deployment}` is not deployed (GET /v1/models lists the deployments)"
                    ),
                    Some("model"),
                );
            }
            Pick::NoReplica if attempt == 0 => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    format!("`{deployment}` has no ready replica"),
                    None,
                );
            }
            Pick::NoReplica => break,
        };
        if attempt > 0 {
            metrics::counter!("modelship_gateway_retries_total", "deployment" => deployment.clone())
                .increment(1);
        }
        let mut upstream = hyper::Request::builder()
            .method(parts.method.clone())
            .uri(path_and_query)
            .header(header::HOST, endpoint.addr.as_str())
            .body(Full::new(body.clone()))
            .expect("method, uri and body came from a valid request");
        for (name, value) in &parts.headers {
            if !is_hop_by_hop(name) && name != header::AUTHORIZATION {
                upstream.headers_mut().append(name.clone(), value.clone());
            }
        }
        let started = Instant::now();
        let answer =
            tokio::time::timeout(config.upstream_timeout, s.pool.send(&endpoint, upstream)).await;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match answer {
            Ok(Ok(response)) => {
                let failed = response.status().is_server_error();
                if failed {
                    endpoint.failed(
                        now_ms(),
                        config.eject_after,
                        config.eject_for.as_millis() as u64,
                    );
                } else {
                    endpoint.succeeded();
                }
                record(&endpoint, response.status().as_u16(), ms, failed);
                return response.map(Body::new);
            }
            Ok(Err(Unanswered(e))) => {
                // Nothing came back: safe to send elsewhere.
                tracing::debug!(replica = %endpoint.replica, "upstream failed: {e}");
                endpoint.failed(
                    now_ms(),
                    config.eject_after,
                    config.eject_for.as_millis() as u64,
                );
                record(&endpoint, 502, ms, true);
            }
            Err(_) => {
                record(&endpoint, 504, ms, true);
                return error(
                    StatusCode::GATEWAY_TIMEOUT,
                    "timeout",
                    format!(
                        "`{deployment}` did not answer within {:?}",
                        config.upstream_timeout
                    ),
                    None,
                );
            }
        }
        tried.push(endpoint.replica.clone());
    }
    error(
        StatusCode::BAD_GATEWAY,
        "upstream_unavailable",
        format!(
            "no replica of `{deployment}` answered ({} tried)",
            tried.len()
        ),
        None,
    )
}

fn record(e: &Endpoint, code: u16, ms: f64, failed: bool) {
    e.stats.record(ms, failed);
    e.latency.record(ms / 1e3);
    if code == 200 {
        e.answered_ok.increment(1);
    } else {
        metrics::counter!("modelship_gateway_requests_total",
            "deployment" => e.deployment.clone(), "revision" => e.revision.to_string(),
            "replica" => e.replica.clone(), "code" => code.to_string())
        .increment(1);
    }
}

fn is_hop_by_hop(name: &header::HeaderName) -> bool {
    [
        header::CONNECTION,
        header::HOST,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHORIZATION,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}
