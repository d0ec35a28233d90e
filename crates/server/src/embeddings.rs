//! `POST /v1/embeddings` and the model listing.

use axum::Json as JsonResponse;
use axum::extract::{Path, State};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use modelship_engine::{EncodeInput, EncodeOptions};

use crate::error::ApiError;
use crate::json::Json;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    input: EmbeddingsInput,
    model: Option<String>,
    /// `null` is the default, as OpenAI's SDKs send it.
    encoding_format: Option<EncodingFormat>,
    /// Matryoshka: the first `dimensions` of each vector, renormalized.
    dimensions: Option<usize>,
    #[allow(dead_code)]
    user: Option<String>,
    /// text-embeddings-inference's switch: cut over-long inputs instead of 400.
    #[serde(default)]
    truncate: bool,
    /// text-embeddings-inference's: one of the model's sentence-transformers
    /// prompts (`query`, `passage`) put before each input.
    prompt_name: Option<String>,
}

/// `input`: a string, strings, token ids, or lists of token ids, as OpenAI
/// takes them.
#[derive(Debug, Deserialize)]
#[serde(try_from = "serde_json::Value")]
struct EmbeddingsInput(Vec<EncodeInput>);

impl TryFrom<serde_json::Value> for EmbeddingsInput {
    type Error = String;

    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        use serde_json::Value;
        const SHAPES: &str = "a string, an array of strings, an array of token ids or an array of arrays of token ids";
        let id = |v: &Value| v.as_u64().and_then(|n| u32::try_from(n).ok());
        let ids = |items: &[Value]| items.iter().map(id).collect::<Option<Vec<u32>>>();
        let inputs = match v {
            Value::String(s) => vec![EncodeInput::Text(s)],
            Value::Array(items) => match items.first() {
                None => Vec::new(),
                Some(Value::String(_)) => items
                    .into_iter()
                    .map(|i| match i {
                        Value::String(s) => Ok(EncodeInput::Text(s)),
                        _ => Err(format!(
                            "mixes strings with other values; expected {SHAPES}"
                        )),
                    })
                    .collect::<Result<_, _>>()?,
                Some(Value::Number(_)) => vec![EncodeInput::Tokens(ids(&items).ok_or(format!(
                    "holds a value that is not a token id; expected {SHAPES}"
                ))?)],
                Some(Value::Array(_)) => items
                    .iter()
                    .map(|i| match i {
                        Value::Array(list) => ids(list).map(EncodeInput::Tokens),
                        _ => None,
                    })
                    .collect::<Option<_>>()
                    .ok_or(format!(
                        "holds a value that is not a list of token ids; expected {SHAPES}"
                    ))?,
                Some(_) => return Err(format!("expected {SHAPES}")),
            },
            Value::Null => return Err(format!("is null; expected {SHAPES}")),
            _ => return Err(format!("expected {SHAPES}")),
        };
        Ok(Self(inputs))
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum EncodingFormat {
    #[default]
    Float,
    Base64,
}

#[derive(Serialize)]
struct EmbeddingsResponse {
    object: &'static str,
    data: Vec<EmbeddingItem>,
    model: String,
    usage: Usage,
}

#[derive(Serialize)]
struct EmbeddingItem {
    object: &'static str,
    index: usize,
    embedding: EmbeddingValue,
}

#[derive(Serialize)]
#[serde(untagged)]
enum EmbeddingValue {
    Float(Vec<f32>),
    Base64(String),
}

#[derive(Serialize)]
pub(crate) struct Usage {
    pub prompt_tokens: usize,
    pub total_tokens: usize,
}

pub(crate) async fn embeddings(
    State(state): State<AppState>,
    Json(req): Json<EmbeddingsRequest>,
) -> Result<JsonResponse<serde_json::Value>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let card = state.engine.card();
    let options = EncodeOptions {
        truncate: req.truncate,
        prompt_name: req.prompt_name,
        dimensions: req.dimensions,
    };
    let out = state.embed("input", req.input.0, options).await?;
    let data = out
        .vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| EmbeddingItem {
            object: "embedding",
            index,
            embedding: match req.encoding_format.unwrap_or_default() {
                EncodingFormat::Float => EmbeddingValue::Float(v),
                EncodingFormat::Base64 => EmbeddingValue::Base64(encode_f32(&v)),
            },
        })
        .collect();
    let resp = EmbeddingsResponse {
        object: "list",
        data,
        model: card.name.clone(),
        usage: Usage {
            prompt_tokens: out.prompt_tokens,
            total_tokens: out.prompt_tokens,
        },
    };
    Ok(JsonResponse(
        serde_json::to_value(resp).expect("plain data serializes"),
    ))
}

/// Little-endian f32 bytes in base64, as OpenAI's `encoding_format: base64`.
fn encode_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[derive(Serialize)]
struct ModelObject {
    id: String,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
    /// Tokens per sequence (vLLM's name).
    max_model_len: usize,
    /// What the model does here (Ollama's names where it has them).
    capabilities: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dimensions: Option<usize>,
    /// A classifier's labels, in id order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    labels: Vec<String>,
}

fn model_object(state: &AppState) -> ModelObject {
    let engine = &state.engine;
    let card = engine.card();
    ModelObject {
        id: card.name.clone(),
        object: "model",
        created: card.created,
        owned_by: "modelship",
        max_model_len: card.max_context,
        capabilities: engine.capabilities(),
        dimensions: card.dimensions,
        labels: card.labels.clone(),
    }
}

pub(crate) async fn list_models(State(state): State<AppState>) -> JsonResponse<serde_json::Value> {
    JsonResponse(serde_json::json!({ "object": "list", "data": [model_object(&state)] }))
}

pub(crate) async fn get_model(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<JsonResponse<serde_json::Value>, ApiError> {
    state.check_model(Some(&id))?;
    Ok(JsonResponse(
        serde_json::to_value(model_object(&state)).expect("plain data"),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        let s = encode_f32(&[1.0, -2.5]);
        let bytes = base64::engine::general_purpose::STANDARD.decode(s).unwrap();
        assert_eq!(bytes.len(), 8);
        assert_eq!(f32::from_le_bytes(bytes[4..8].try_into().unwrap()), -2.5);
    }
}
