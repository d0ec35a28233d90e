//! `POST /v1/embeddings` and the model listing.

use axum::Json as JsonResponse;
use axum::extract::{Path, State};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::ApiError;
use crate::input::Texts;
use crate::json::Json;
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddingsRequest {
    input: Texts,
    model: Option<String>,
    /// `null` is the default, as OpenAI's SDKs send it.
    encoding_format: Option<EncodingFormat>,
    dimensions: Option<usize>,
    #[allow(dead_code)]
    user: Option<String>,
    /// text-embeddings-inference's switch: cut over-long inputs instead of 400.
    #[serde(default)]
    truncate: bool,
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
    if let Some(d) = req.dimensions
        && Some(d) != card.dimensions
    {
        return Err(ApiError::bad_request(
            Some("dimensions".to_owned()),
            format!(
                "`dimensions` {d} is not supported: this model returns {} dimensions",
                card.dimensions.unwrap_or(0)
            ),
        ));
    }
    let out = state.embed(req.input.0, req.truncate).await?;
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
