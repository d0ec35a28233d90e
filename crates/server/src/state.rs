use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use metrics_exporter_prometheus::PrometheusHandle;
use modelship_engine::{
    Embeddings, EncodeInput, EncodeInputs, EncodeOptions, Engine, EngineError, Scores,
};

use crate::error::ApiError;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub engine: Arc<Engine>,
    pub metrics: PrometheusHandle,
    /// False once shutdown begins: readiness fails so balancers stop sending.
    pub ready: Arc<AtomicBool>,
    /// Bearer tokens the API routes accept; none: the API is open. Never
    /// logged.
    pub api_keys: Arc<[String]>,
}

impl AppState {
    pub fn new(engine: Arc<Engine>, metrics: PrometheusHandle) -> Self {
        Self {
            engine,
            metrics,
            ready: Arc::new(AtomicBool::new(true)),
            api_keys: Arc::from([]),
        }
    }

    /// Requires `Authorization: Bearer KEY` on the API routes.
    pub fn with_api_keys(mut self, keys: Vec<String>) -> Self {
        self.api_keys = Arc::from(keys);
        self
    }

    /// Ready while not shutting down and while the engine's compute thread
    /// runs: a replica whose engine died answers nothing but 503.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && self.engine.is_running()
    }

    /// An encoder request's inputs, tokenized on the blocking pool.
    async fn tokenize(
        &self,
        field: &'static str,
        inputs: Vec<EncodeInput>,
        options: EncodeOptions,
    ) -> Result<EncodeInputs, ApiError> {
        let engine = self.engine.clone();
        off_runtime(move || engine.tokenize_inputs(field, &inputs, &options)).await
    }

    /// Embeds the inputs of the request field `field`.
    pub(crate) async fn embed(
        &self,
        field: &'static str,
        inputs: Vec<EncodeInput>,
        options: EncodeOptions,
    ) -> Result<Embeddings, ApiError> {
        let inputs = self.tokenize(field, inputs, options).await?;
        Ok(self.engine.embed_tokens(inputs).await?)
    }

    /// A classifier's or reranker's scores for the inputs of `field`.
    pub(crate) async fn score(
        &self,
        field: &'static str,
        inputs: Vec<EncodeInput>,
        options: EncodeOptions,
    ) -> Result<Scores, ApiError> {
        let inputs = self.tokenize(field, inputs, options).await?;
        Ok(self.engine.score_tokens(inputs).await?)
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

/// Runs CPU work proportional to a request (rendering a template, tokenizing
/// a long text) on the blocking pool: the runtime's threads must stay free
/// to answer health checks and other clients.
pub(crate) async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, EngineError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| ApiError::unavailable("the engine could not start this request"))?
        .map_err(ApiError::from)
}
