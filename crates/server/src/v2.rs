//! The Open Inference Protocol (KServe v2): health, model metadata and
//! `infer`, which takes BYTES tensors of texts and returns a FP32 tensor of
//! embeddings, of relevance scores (a reranker: `query` and `text` in) or
//! of label scores (a classifier: `text`, and `text_pair` for pairs), or a
//! BYTES tensor of generated texts.

use axum::Json as JsonResponse;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use modelship_engine::{EncodeInput, EncodeOptions, GenerateRequest, Prompt};
use modelship_types::Task;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::choices::{Sample, collect};
use crate::error::ApiError;
use crate::input::Texts;
use crate::json::Json;
use crate::state::AppState;

const INPUT_NAME: &str = "text";
/// A reranker's query, and a classifier's second texts.
const QUERY_NAME: &str = "query";
const PAIR_NAME: &str = "text_pair";

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
    let text = json!({ "name": INPUT_NAME, "datatype": "BYTES", "shape": [-1] });
    let (inputs, outputs) = match card.task {
        Task::Embeddings => (
            json!([text]),
            json!([{
                "name": "embedding", "datatype": "FP32",
                "shape": [-1, card.dimensions.unwrap_or(0)],
            }]),
        ),
        Task::Generate => (
            json!([text]),
            json!([{ "name": "text_output", "datatype": "BYTES", "shape": [-1] }]),
        ),
        Task::Rerank => (
            json!([{ "name": QUERY_NAME, "datatype": "BYTES", "shape": [1] }, text]),
            json!([{ "name": "score", "datatype": "FP32", "shape": [-1] }]),
        ),
        Task::Classify => (
            json!([text, { "name": PAIR_NAME, "datatype": "BYTES", "shape": [-1], "optional": true }]),
            json!([
                { "name": "scores", "datatype": "FP32", "shape": [-1, card.labels.len()] },
                { "name": "label", "datatype": "BYTES", "shape": [-1] },
            ]),
        ),
    };
    Ok(JsonResponse(json!({
        "name": card.name,
        "versions": ["1"],
        "platform": format!("modelship-{}", card.architecture),
        "inputs": inputs,
        "outputs": outputs,
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

/// Request-level parameters: `truncate` for encoders, `raw_scores` for
/// rerankers and classifiers, sampling for generation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct InferParameters {
    #[serde(default)]
    truncate: bool,
    #[serde(default)]
    raw_scores: bool,
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

/// The request's BYTES inputs by name, each shape checked against its data.
struct Inputs {
    tensors: Vec<(String, Vec<String>)>,
    parameters: InferParameters,
    id: Option<String>,
}

impl Inputs {
    fn read(req: InferRequest) -> Result<Self, ApiError> {
        let mut tensors = Vec::with_capacity(req.inputs.len());
        for (i, input) in req.inputs.into_iter().enumerate() {
            if input.datatype != "BYTES" {
                return Err(bad(
                    &format!("inputs[{i}].datatype"),
                    format!(
                        "input `{}` must be BYTES, not {}",
                        input.name, input.datatype
                    ),
                ));
            }
            // Checked: a hostile shape must not wrap around to the data's length.
            let elements = input.shape.iter().try_fold(1u64, |n, &d| {
                u64::try_from(d).ok().and_then(|d| n.checked_mul(d))
            });
            if elements != Some(input.data.0.len() as u64) {
                return Err(bad(
                    &format!("inputs[{i}].shape"),
                    format!(
                        "shape {:?} does not match {} data elements",
                        input.shape,
                        input.data.0.len()
                    ),
                ));
            }
            if tensors.iter().any(|(n, _)| *n == input.name) {
                return Err(bad(
                    &format!("inputs[{i}].name"),
                    format!("input `{}` is given twice", input.name),
                ));
            }
            tensors.push((input.name, input.data.0));
        }
        Ok(Self {
            tensors,
            parameters: req.parameters,
            id: req.id,
        })
    }

    /// The texts of the only input, whatever its name (embeddings and
    /// generation take one).
    fn only(&mut self) -> Result<Vec<String>, ApiError> {
        if self.tensors.len() != 1 {
            return Err(bad(
                "inputs",
                format!(
                    "expected one input tensor `{INPUT_NAME}`, got {}",
                    self.tensors.len()
                ),
            ));
        }
        Ok(self.tensors.remove(0).1)
    }

    /// The texts of the input `name`, if given.
    fn take(&mut self, name: &str) -> Option<Vec<String>> {
        let i = self.tensors.iter().position(|(n, _)| n == name)?;
        Some(self.tensors.remove(i).1)
    }

    /// An error for inputs left over once the expected ones are taken.
    fn no_others(&self, expected: &str) -> Result<(), ApiError> {
        match self.tensors.first() {
            None => Ok(()),
            Some((name, _)) => Err(bad(
                "inputs",
                format!("input `{name}` is not one this model takes ({expected})"),
            )),
        }
    }
}

/// The texts of the request's single BYTES input, with its shape checked.
pub(crate) fn texts(
    req: InferRequest,
) -> Result<(Vec<String>, InferParameters, Option<String>), ApiError> {
    let mut inputs = Inputs::read(req)?;
    let texts = inputs.only()?;
    Ok((texts, inputs.parameters, inputs.id))
}

pub(crate) async fn infer(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Json(req): Json<InferRequest>,
) -> Result<JsonResponse<Value>, ApiError> {
    state.check_model(Some(&name))?;
    let card = state.engine.card();
    let mut inputs = Inputs::read(req)?;
    let params = std::mem::take(&mut inputs.parameters);
    let id = inputs.id.take();
    let options = EncodeOptions {
        truncate: params.truncate,
        ..EncodeOptions::default()
    };
    let outputs = match card.task {
        Task::Embeddings => {
            let texts = inputs.only()?;
            let n = texts.len();
            let texts = texts.into_iter().map(EncodeInput::Text).collect();
            let out = state.embed("inputs", texts, options).await?;
            let dim = card.dimensions.unwrap_or(0);
            let data: Vec<f32> = out.vectors.into_iter().flatten().collect();
            json!([{ "name": "embedding", "datatype": "FP32", "shape": [n, dim], "data": data }])
        }
        Task::Rerank => {
            let expected = "`query` and `text`";
            let query = inputs.take(QUERY_NAME);
            let texts = inputs.take(INPUT_NAME);
            inputs.no_others(expected)?;
            let (Some(query), Some(texts)) = (query, texts) else {
                return Err(bad("inputs", format!("a reranker takes {expected}")));
            };
            let [query] = <[String; 1]>::try_from(query).map_err(|q| {
                bad(
                    "inputs",
                    format!("`query` holds {} texts; it takes one", q.len()),
                )
            })?;
            let n = texts.len();
            let pairs = texts
                .into_iter()
                .map(|t| EncodeInput::Pair(query.clone(), t))
                .collect();
            let scores = state.score("inputs", pairs, options).await?;
            let per_input = if params.raw_scores {
                scores.logits
            } else {
                scores.scores
            };
            let data: Vec<f32> = per_input.into_iter().flatten().collect();
            json!([{ "name": "score", "datatype": "FP32", "shape": [n], "data": data }])
        }
        Task::Classify => {
            let expected = "`text`, and `text_pair` for pairs";
            let texts = inputs.take(INPUT_NAME);
            let pairs = inputs.take(PAIR_NAME);
            inputs.no_others(expected)?;
            let Some(texts) = texts else {
                return Err(bad("inputs", format!("a classifier takes {expected}")));
            };
            let n = texts.len();
            let items: Vec<EncodeInput> = match pairs {
                None => texts.into_iter().map(EncodeInput::Text).collect(),
                Some(p) if p.len() == n => texts
                    .into_iter()
                    .zip(p)
                    .map(|(a, b)| EncodeInput::Pair(a, b))
                    .collect(),
                Some(p) => {
                    return Err(bad(
                        "inputs",
                        format!("`text_pair` holds {} texts for {n} in `text`", p.len()),
                    ));
                }
            };
            let scores = state.score("inputs", items, options).await?;
            let labels = &card.labels;
            let best: Vec<&str> = scores
                .scores
                .iter()
                .map(|s| {
                    let i = (0..s.len())
                        .max_by(|&a, &b| s[a].total_cmp(&s[b]))
                        .unwrap_or(0);
                    labels.get(i).map_or("", String::as_str)
                })
                .collect();
            let per_input = if params.raw_scores {
                scores.logits
            } else {
                scores.scores
            };
            let data: Vec<f32> = per_input.into_iter().flatten().collect();
            json!([
                { "name": "scores", "datatype": "FP32", "shape": [n, labels.len()], "data": data },
                { "name": "label", "datatype": "BYTES", "shape": [n], "data": best },
            ])
        }
        Task::Generate => {
            let texts = inputs.only()?;
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
            json!([{ "name": "text_output", "datatype": "BYTES", "shape": [texts.len()], "data": outputs }])
        }
    };
    let mut resp = json!({ "model_name": card.name, "model_version": "1", "outputs": outputs });
    if let Some(id) = id {
        resp["id"] = json!(id);
    }
    Ok(JsonResponse(resp))
}
