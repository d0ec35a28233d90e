//! What the gateway answers: authentication, its own routes, the request's
//! target deployment, and the retry loop that finds a replica to answer.
//! The connection loop (`listen.rs`) reads requests and writes what this
//! decides.

use std::borrow::Cow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use serde_json::json;

use crate::Gateway;
use crate::balance::{Endpoint, Pick};
use crate::error::GatewayError;
use crate::http1::Head;
use crate::shadow::Sample;
use crate::upstream::{Answer, Pool, Unanswered};

/// One gateway thread's state: the shared gateway and its own connections
/// to the replicas.
pub(crate) struct Shared {
    pub(crate) gateway: Gateway,
    pub(crate) pool: Pool,
}

/// What to answer a request with.
pub(crate) enum Reply {
    /// A response the gateway makes itself.
    Local(Local),
    /// A replica's response, its body still to pass through, and the
    /// request to compare with another revision once it has.
    Upstream(Answer, Arc<Endpoint>, Option<Box<Sample>>),
}

/// A complete response of the gateway's own.
pub(crate) struct Local {
    pub(crate) status: u16,
    pub(crate) content_type: &'static str,
    pub(crate) body: Vec<u8>,
    /// 503s say when to try again.
    pub(crate) retry_after: bool,
}

impl Local {
    pub(crate) fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Local {
        Local {
            status,
            content_type,
            body: body.into(),
            retry_after: false,
        }
    }

    /// The response's bytes; the body left out for HEAD.
    pub(crate) fn render(&self, keep_alive: bool, head_only: bool) -> Vec<u8> {
        let mut out = Vec::with_capacity(160 + self.body.len());
        out.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\ncontent-type: {}\r\ncontent-length: {}\r\ndate: {}\r\n",
                self.status,
                reason(self.status),
                self.content_type,
                self.body.len(),
                httpdate::fmt_http_date(std::time::SystemTime::now()),
            )
            .as_bytes(),
        );
        if self.retry_after {
            out.extend_from_slice(b"retry-after: 1\r\n");
        }
        if self.status == 405 {
            out.extend_from_slice(b"allow: GET, HEAD\r\n");
        }
        if !keep_alive {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
        out
    }
}

/// The reason phrases of the statuses the gateway makes itself.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

/// The gateway's clock: ms since it first looked.
pub(crate) fn now_ms() -> u64 {
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

fn authorized(gateway: &Gateway, head: &Head) -> bool {
    let keys = &gateway.inner.config.api_keys;
    keys.is_empty()
        || modelship_types::auth::authorized(
            head.get("authorization"),
            keys.iter().map(String::as_str),
        )
}

fn unauthorized() -> Local {
    GatewayError::Unauthorized.answer()
}

fn models(gateway: &Gateway) -> Local {
    let table = gateway.table();
    let mut names: Vec<&String> = table.deployments.keys().collect();
    names.sort();
    let data: Vec<_> = names
        .iter()
        .map(|n| json!({"id": n, "object": "model", "owned_by": "modelship"}))
        .collect();
    Local::new(
        200,
        "application/json",
        json!({"object": "list", "data": data}).to_string(),
    )
}

fn metrics(gateway: &Gateway) -> Local {
    match &gateway.inner.metrics {
        Some(render) => Local::new(200, "text/plain; version=0.0.4", render()),
        None => Local::new(404, "text/plain", "no metrics"),
    }
}

/// Answers `head` with `body` (the whole request body, kept to retry it).
pub(crate) async fn handle(s: &Shared, head: &Head, body: &[u8]) -> Reply {
    let path = head.path();
    let own: Option<fn(&Gateway) -> Local> = match path {
        "/healthz" => Some(|_| Local::new(200, "text/plain; charset=utf-8", "ok")),
        "/metrics" => Some(metrics),
        "/v1/models" => Some(models),
        _ => None,
    };
    if let Some(answer) = own {
        if !matches!(head.method(), "GET" | "HEAD") {
            return Reply::Local(
                GatewayError::MethodNotAllowed {
                    method: head.method().to_owned(),
                    path: path.to_owned(),
                }
                .answer(),
            );
        }
        let open =
            path == "/healthz" || (path == "/metrics" && s.gateway.inner.config.public_metrics);
        if !open && !authorized(&s.gateway, head) {
            return Reply::Local(unauthorized());
        }
        return Reply::Local(answer(&s.gateway));
    }
    if !authorized(&s.gateway, head) {
        return Reply::Local(unauthorized());
    }
    if !routed(path) {
        return Reply::Local(
            GatewayError::NoRoute {
                path: path.to_owned(),
            }
            .answer(),
        );
    }
    match target(path, body) {
        Ok(deployment) => proxy(s, head, body, &deployment).await,
        Err(why) => Reply::Local(GatewayError::BadBody { why }.answer()),
    }
}

/// Whether a path goes to a replica: OpenAI's and KServe's APIs, and the
/// replica routes clients call beside them (vLLM's and llama.cpp's
/// tokenizer routes, text-embeddings-inference's rerank and predict).
fn routed(path: &str) -> bool {
    path.starts_with("/v1/")
        || path.starts_with("/v2/models/")
        || matches!(path, "/tokenize" | "/detokenize" | "/rerank" | "/predict")
}

/// The deployment a request is for: `/v2/models/{name}/…` and
/// `/v1/models/{name}` name it in the path; the other requests in the
/// body's `model` field. The error says what is wrong with the body.
fn target<'a>(path: &'a str, body: &[u8]) -> Result<Cow<'a, str>, String> {
    for prefix in ["/v2/models/", "/v1/models/"] {
        if let Some(rest) = path.strip_prefix(prefix) {
            return Ok(Cow::Borrowed(rest.split('/').next().unwrap_or_default()));
        }
    }
    #[derive(serde::Deserialize)]
    struct Named {
        model: Option<String>,
    }
    match serde_json::from_slice::<Named>(body) {
        Ok(Named { model: Some(m) }) => Ok(Cow::Owned(m)),
        Ok(Named { model: None }) => {
            Err("`model` is required: the name of a deployment (GET /v1/models lists them)".into())
        }
        Err(e) => Err(format!(
            "the body is not a JSON object with a `model` string: {e}"
        )),
    }
}

/// The request as the replica gets it: this hop's fields dropped, `Host`
/// naming the replica, the body with its length.
fn upstream_request(head: &Head, body: &[u8], host: &str, key: Option<&str>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256 + head.target().len() + body.len());
    for part in [
        head.method(),
        " ",
        head.target(),
        " HTTP/1.1\r\nhost: ",
        host,
        "\r\n",
    ] {
        out.extend_from_slice(part.as_bytes());
    }
    // The body is whole by now: its length is restated, the client's
    // framing, key and go-ahead request stay here (the replica's own key,
    // if it has one, goes instead).
    head.forward_fields(&mut out, |name| {
        [
            "content-length",
            "transfer-encoding",
            "authorization",
            "expect",
        ]
        .iter()
        .any(|f| name.eq_ignore_ascii_case(f.as_bytes()))
    });
    if let Some(key) = key {
        for part in ["authorization: Bearer ", key, "\r\n"] {
            out.extend_from_slice(part.as_bytes());
        }
    }
    let had_length =
        head.get("content-length").is_some() || head.get("transfer-encoding").is_some();
    if had_length || !body.is_empty() {
        out.extend_from_slice(format!("content-length: {}\r\n", body.len()).as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// Sends the request to a replica of `deployment`, and to another when one
/// fails before answering. A deployment at zero is woken first: the
/// request waits for its replica.
async fn proxy(s: &Shared, head: &Head, body: &[u8], deployment: &str) -> Reply {
    let config = &s.gateway.inner.config;
    let mut table = s.gateway.table();
    if !table.has_replica(deployment)
        && table.deployments.contains_key(deployment)
        && s.gateway.is_waking(deployment)
    {
        if let Err(answer) = s.gateway.wait_for_replica(deployment).await {
            return Reply::Local(answer);
        }
        table = s.gateway.table();
    }
    let mut tried: Vec<String> = Vec::new();
    for attempt in 0..config.attempts {
        let endpoint = match table.pick(deployment, &tried, now_ms(), &mut random) {
            Pick::Endpoint(e, Some(abort))
                if (random() % 10_000) as f64 <= abort.percent * 100.0 - 1.0 =>
            {
                record(&e, abort.status, 0.0, abort.status >= 500);
                return Reply::Local(
                    GatewayError::Fault {
                        deployment: deployment.to_owned(),
                        revision: e.revision,
                        status: abort.status,
                    }
                    .answer(),
                );
            }
            Pick::Endpoint(e, _) => e,
            Pick::UnknownModel => {
                return Reply::Local(
                    GatewayError::UnknownModel {
                        model: deployment.to_owned(),
                    }
                    .answer(),
                );
            }
            Pick::NoReplica if attempt == 0 => {
                return Reply::Local(
                    GatewayError::NoReplica {
                        deployment: deployment.to_owned(),
                    }
                    .answer(),
                );
            }
            Pick::NoReplica => break,
        };
        if attempt > 0 {
            metrics::counter!("modelship_gateway_retries_total", "deployment" => deployment.to_owned())
                .increment(1);
        }
        let request = upstream_request(head, body, &endpoint.addr, config.upstream_key.as_deref());
        let started = Instant::now();
        let answer = tokio::time::timeout(
            config.upstream_timeout,
            s.pool.exchange(&endpoint, &request, head.method()),
        )
        .await;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        match answer {
            Ok(Ok(answer)) => {
                let status = answer.head.status;
                let failed = status >= 500;
                if failed {
                    endpoint.failed(
                        now_ms(),
                        config.eject_after,
                        config.eject_for.as_millis() as u64,
                    );
                } else {
                    endpoint.succeeded();
                }
                record(&endpoint, status, ms, failed);
                let sample = match status {
                    200 => s
                        .gateway
                        .sample(deployment, endpoint.revision, head.path(), body, random())
                        .map(Box::new),
                    _ => None,
                };
                return Reply::Upstream(answer, endpoint, sample);
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
                return Reply::Local(
                    GatewayError::UpstreamTimeout {
                        deployment: deployment.to_owned(),
                        after: config.upstream_timeout,
                    }
                    .answer(),
                );
            }
        }
        tried.push(endpoint.replica.clone());
    }
    Reply::Local(
        GatewayError::UpstreamUnavailable {
            deployment: deployment.to_owned(),
            tried: tried.len(),
        }
        .answer(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_routes_and_the_deployment_they_name() {
        for path in [
            "/v1/chat/completions",
            "/v2/models/m/infer",
            "/tokenize",
            "/detokenize",
            "/rerank",
        ] {
            assert!(routed(path), "{path}");
        }
        assert!(!routed("/admin") && !routed("/tokenizex"));
        assert_eq!(target("/v1/models/qwen", b"").unwrap(), "qwen");
        assert_eq!(target("/v2/models/qwen/infer", b"").unwrap(), "qwen");
        let body = br#"{"model": "m", "prompt": "x"}"#;
        assert_eq!(target("/tokenize", body).unwrap(), "m");
        assert!(
            target("/detokenize", br#"{"tokens": [1]}"#)
                .unwrap_err()
                .contains("`model`")
        );
    }
}
