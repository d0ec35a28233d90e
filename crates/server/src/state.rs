use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::PrometheusHandle;
use modelship_engine::Engine;

use crate::error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub metrics: PrometheusHandle,
    /// False once shutdown begins: readiness fails so balancers stop sending.
    pub ready: Arc<AtomicBool>,
    /// Bearer token the API routes require, when set. Never logged.
    pub api_key: Option<Arc<str>>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, metrics: PrometheusHandle) -> Self {
        Self {
            engine,
            metrics,
            ready: Arc::new(AtomicBool::new(true)),
            api_key: None,
        }
    }

    /// Requires `Authorization: Bearer KEY` on the API routes.
    pub fn with_api_key(mut self, key: Option<String>) -> Self {
        self.api_key = key.map(Arc::from);
        self
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// A request's `model` must name the served model when given.
    pub fn check_model(&self, model: Option<&str>) -> Result<(), ApiError> {
        match model {
            Some(m) if m != self.engine.card().name => Err(ApiError::model_not_found(format!(
                "model `{m}` is not served here; this server serves `{}`",
                self.engine.card().name
            ))),
            _ => Ok(()),
        }
    }
}
