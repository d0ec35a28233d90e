//! One replica's HTTP API: OpenAI-compatible routes, the Open Inference
//! Protocol (KServe v2), and Prometheus metrics, over an
//! [`modelship_engine::Engine`]. [`router`] is testable in-process; [`serve`]
//! runs it on a listener and drains in-flight requests on shutdown.
//!
//! Must not depend on orchestration; knows nothing of how the engine computes.

mod auth;
mod chat;
mod choices;
mod completions;
mod embeddings;
mod error;
#[doc(hidden)]
pub mod fuzz;
mod inert;
mod input;
mod json;
mod logprobs;
mod metrics;
mod scores;
mod state;
mod tokens;
mod v2;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use modelship_engine::Engine;

pub use error::ApiError;
pub use metrics::recorder;
pub use state::AppState;

/// All routes of one replica. Health, readiness and metrics stay open when
/// an API key is set; everything else requires it.
pub fn router(state: AppState) -> Router {
    let body_limit = state.engine.limits().max_body_bytes;
    let api = Router::new()
        .route("/v1/models", get(embeddings::list_models))
        .route("/v1/models/{id}", get(embeddings::get_model))
        .route("/v1/embeddings", post(embeddings::embeddings))
        .route("/v1/rerank", post(scores::cohere_rerank))
        .route("/rerank", post(scores::rerank))
        .route("/predict", post(scores::predict))
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(completions::chat_completions))
        .route("/tokenize", post(tokens::tokenize))
        .route("/detokenize", post(tokens::detokenize))
        .route("/logprobs", post(logprobs::logprobs))
        .route("/v2", get(v2::server_metadata))
        .route("/v2/models/{name}", get(v2::model_metadata))
        .route("/v2/models/{name}/ready", get(v2::model_ready))
        .route("/v2/models/{name}/infer", post(v2::infer))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    Router::new()
        .merge(api)
        .route("/v2/health/live", get(v2::live))
        .route("/v2/health/ready", get(v2::ready))
        .route("/metrics", get(metrics::render))
        .route("/health", get(v2::ready))
        .fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                ApiError::no_route(method.as_str(), uri.path())
            },
        )
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                ApiError::method_not_allowed(method.as_str(), uri.path())
            },
        )
        .layer(axum::middleware::from_fn(metrics::track))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

/// Default of [`ServeOptions::header_timeout`].
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// Default of [`ServeOptions::body_timeout`].
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// How a replica serves, beyond its engine.
#[derive(Clone)]
pub struct ServeOptions {
    /// How long in-flight requests may run after shutdown begins.
    pub drain: Duration,
    /// Bearer tokens the API routes accept (none: open).
    pub api_keys: Vec<String>,
    /// How long a client may take to send a request's head, counted from
    /// the connection's last response when it is kept alive: a half-sent
    /// head and an idle connection are both closed after it.
    pub header_timeout: Duration,
    /// How long a request's body may take to arrive once its head has
    /// (408 after it).
    pub body_timeout: Duration,
}

impl ServeOptions {
    /// `drain` and `api_keys` with the default connection timeouts.
    pub fn new(drain: Duration, api_keys: Vec<String>) -> Self {
        Self {
            drain,
            api_keys,
            header_timeout: HEADER_TIMEOUT,
            body_timeout: BODY_TIMEOUT,
        }
    }
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("drain", &self.drain)
            .field("api_keys", &format!("<{} redacted>", self.api_keys.len()))
            .field("header_timeout", &self.header_timeout)
            .field("body_timeout", &self.body_timeout)
            .finish()
    }
}

/// Serves `engine` on `listener` until `shutdown` resolves or the engine's
/// compute thread dies; then stops accepting, reports not-ready, and lets
/// in-flight requests (streams included) finish for up to `options.drain`.
/// A dead engine is an error, so the process exits failed and whatever
/// supervises it restarts it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    let state = AppState::new(engine.clone(), metrics::recorder()).with_api_keys(options.api_keys);
    let ready = state.ready.clone();
    let app = router(state).layer(axum::Extension(json::BodyTimeout(options.body_timeout)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(options.header_timeout);
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let stop = async {
        tokio::select! {
            _ = shutdown => None,
            why = engine.stopped() => Some(why),
        }
    };
    tokio::pin!(stop);
    let engine_died = loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of descriptors, typically: wait rather than spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            why = &mut stop => break why,
        };
        let _ = tcp.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let conn =
            connections.watch(http.serve_connection(hyper_util::rt::TokioIo::new(tcp), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    };
    drop(listener);
    ready.store(false, Ordering::Relaxed);
    match &engine_died {
        Some(why) => tracing::error!(reason = %why, "the engine stopped: shutting down"),
        None => tracing::info!("shutting down: draining in-flight requests"),
    }
    if tokio::time::timeout(options.drain, connections.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            seconds = options.drain.as_secs(),
            "drain timeout reached; exiting with requests in flight"
        );
    }
    match engine_died {
        Some(why) => Err(std::io::Error::other(format!("the engine stopped: {why}"))),
        None => Ok(()),
    }
}
