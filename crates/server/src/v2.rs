//! The Open Inference Protocol (KServe v2): health, model metadata and
//! `infer`, which takes a BYTES tensor of texts and returns a FP32 tensor of
//! embeddings or a BYTES tensor of generated texts.

use axum::Json as JsonResponse;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use modelship_engine::{GenerateRequest, Prompt};
use modelship_types::Task;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::choices::{Sample, collect};
use crate::error::ApiError;
use crate::input::Texts;
use crate::json::Json;
use crate::state::AppState;

const INPUT_NAME: &str = "text";

pub(crate) async fn live() -> JsonResponse<Value> {
    JsonResponse(json!({ "live": true }))
}

pub(crate) async fn ready(State(state): State<AppState>) -> Response {
    readiness(state.is_ready())
}

fn readiness(ready: bool) -> Response {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, JsonResponse(json!({ "ready": ready }))).into_response()
}

pub(crate) async fn server_metadata() -> JsonResponse<Value> {
    JsonResponse(json!({
        "name": "modelship",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": [],
    }))
}

pub(crate) async fn model_metadata(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<JsonResponse<Value>, ApiError> {
    state.check_model(Some(&name))?;
    let card = state.engine.card();
    let output = match card.task {
        Task::Embeddings => json!({
            "name": "embedding", "datatype": "FP32",
            "shape": [-1, card.dimensions.unwrap_or(0)],
        }),
        Task::Generate => json!({ "name": "text_output", "datatype": "BYTES", "shape": [-1] }),
    };
    Ok(JsonResponse(json!({
        "name": card.name,
        "versions": ["1"],
        "platform": format!("modelship-{}", card.architecture),
        "inputs": [{ "name": INPUT_NAME, "datatype": "BYTES", "shape": [-1] }],
        "outputs": [output],
    })))
}

pub(crate) async fn model_ready(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    state.check_model(Some(&name))?;
    Ok(readiness(state.is_ready()))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InferRequest {
    id: Option<String>,
    inputs: Vec<InferInput>,
    #[serde(default)]
    parameters: InferParameters,
    #[allow(dead_code)]
    outputs: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InferInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    data: Texts,
    #[allow(dead_code)]
    parameters: Option<Value>,
}

/// Request-level parameters: `truncate` for embeddings, sampling for generation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InferParameters {
    #[serde(default)]
    truncate: bool,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
    stop: Option<Texts>,
}

fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(Some(param.to_owned()), message)
}

/// The texts of the request's single BYTES input, with its shape checked.
pub(crate) fn texts(
    req: InferRequest,
) -> Result<(Vec<String>, InferParameters, Option<String>), ApiError> {
    let mut inputs = req.inputs;
    if inputs.len() != 1 {
        return Err(bad(
            "inputs",
            format!(
                "expected one input tensor `{INPUT_NAME}`, got {}",
                inputs.len()
            ),
        ));
    }
    let input = inputs.remove(0);
    if input.datatype != "BYTES" {
        return Err(bad(
            "inputs[0].datatype",
            format!(
                "input `{}` must be BYTES, not {}",
                input.name, input.datatype
            ),
        ));
    }
    let elements: i64 = input.shape.iter().product();
    if input.shape.iter().any(|&d| d < 0) || elements as usize != input.data.0.len() {
        return Err(bad(
            "inputs[0].shape",
            format!(
                "shape {:?} does not match {} data elements",
                input.shape,
                input.data.0.len()
            ),
        ));
    }
    Ok((input.data.0, req.parameters, req.id))
}

pub(crate) async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(req): Json<InferRequest>,
) -> Result<JsonResponse<Value>, ApiError> {
    state.check_model(Some(&name))?;
    let (texts, params, id) = texts(req)?;
    let card = state.engine.card();
    let output = match card.task {
        Task::Embeddings => {
            let inputs = texts.len();
            let out = state.embed(texts, params.truncate).await?;
            let dim = card.dimensions.unwrap_or(0);
            let data: Vec<f32> = out.vectors.into_iter().flatten().collect();
            json!({ "name": "embedding", "datatype": "FP32", "shape": [inputs, dim], "data": data })
        }
        Task::Generate => {
            let request = GenerateRequest {
                max_tokens: params.max_tokens,
                temperature: params.temperature,
                top_p: params.top_p,
                top_k: params.top_k,
                seed: params.seed,
                stop: params.stop.map(|s| s.0).unwrap_or_default(),
                ..GenerateRequest::default()
            };
            // Start every generation first (so they are scheduled together), then collect.
            let mut streams = Vec::with_capacity(texts.len());
            for t in &texts {
                let (mut samples, _) = state.engine.generate(&Prompt::Text(t.clone()), &request)?;
                streams.push(Sample {
                    events: samples.pop().expect("one sample"),
                    echo: None,
                });
            }
            let results = futures::future::join_all(streams.into_iter().map(collect)).await;
            let outputs = results
                .into_iter()
                .map(|r| r.map(|c| c.text))
                .collect::<Result<Vec<_>, _>>()?;
            json!({ "name": "text_output", "datatype": "BYTES", "shape": [texts.len()], "data": outputs })
        }
    };
    let mut resp = json!({ "model_name": card.name, "model_version": "1", "outputs": [output] });
    if let Some(id) = id {
        resp["id"] = json!(id);
    }
    Ok(JsonResponse(resp))
}
