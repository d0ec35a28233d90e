//! One replica's HTTP API: OpenAI-compatible routes, the Open Inference
//! Protocol (KServe v2), and Prometheus metrics, over an
//! [`modelship_engine::Engine`]. [`router`] is testable in-process; [`serve`]
//! runs it on a listener and drains in-flight requests on shutdown.
//!
//! Must not depend on orchestration; knows nothing of how the engine computes.

mod auth;
mod completions;
mod embeddings;
mod error;
mod input;
mod json;
mod metrics;
mod state;
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
        .route("/v1/completions", post(completions::completions))
        .route("/v1/chat/completions", post(completions::chat_completions))
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

/// How a replica serves, beyond its engine.
#[derive(Clone)]
pub struct ServeOptions {
    /// How long in-flight requests may run after shutdown begins.
    pub drain: Duration,
    /// Bearer token required on the API routes.
    pub api_key: Option<String>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("drain", &self.drain)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Serves `engine` on `listener` until `shutdown` resolves; then stops
/// accepting, reports not-ready, and lets in-flight requests (streams
/// included) finish for up to `options.drain`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    engine: Arc<Engine>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    options: ServeOptions,
) -> std::io::Result<()> {
    let drain = options.drain;
    let state = AppState::new(engine, metrics::recorder()).with_api_key(options.api_key);
    let ready = state.ready.clone();
    let (draining_tx, draining_rx) = tokio::sync::oneshot::channel::<()>();
    let app = router(state);
    let signal = async move {
        shutdown.await;
        ready.store(false, Ordering::Relaxed);
        tracing::info!("shutting down: draining in-flight requests");
        let _ = draining_tx.send(());
    };
    let server = axum::serve(listener, app).with_graceful_shutdown(signal);
    let server = tokio::spawn(async move { server.await });
    tokio::pin!(server);
    tokio::select! {
        biased;
        res = &mut server => return res.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        _ = draining_rx => {}
    }
    match tokio::time::timeout(drain, &mut server).await {
        Ok(res) => res.unwrap_or_else(|e| Err(std::io::Error::other(e))),
        Err(_) => {
            tracing::warn!(
                seconds = drain.as_secs(),
                "drain timeout reached; exiting with requests in flight"
            );
            Ok(())
        }
    }
}
