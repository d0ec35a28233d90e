//! `POST /tokenize` and `POST /detokenize`, in the shapes vLLM's and
//! llama.cpp's servers answer: a prompt (`prompt`, or llama.cpp's
//! `content`) to token ids, and ids back to text.

use axum::Json as JsonResponse;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::json::Json;
use crate::state::{AppState, off_runtime};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TokenizeRequest {
    model: Option<String>,
    /// vLLM's name for the text.
    prompt: Option<String>,
    /// llama.cpp's.
    content: Option<String>,
    /// vLLM's switch (default true) and llama.cpp's (default false).
    add_special_tokens: Option<bool>,
    add_special: Option<bool>,
}

pub(crate) async fn tokenize(
    State(state): State<AppState>,
    Json(req): Json<TokenizeRequest>,
) -> Result<JsonResponse<Value>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let (text, add_special) = match (req.prompt, req.content) {
        (Some(p), None) => (
            p,
            req.add_special_tokens.or(req.add_special).unwrap_or(true),
        ),
        (None, Some(c)) => (
            c,
            req.add_special.or(req.add_special_tokens).unwrap_or(false),
        ),
        _ => {
            return Err(ApiError::bad_request(
                Some("prompt".to_owned()),
                "give the text as `prompt` (or `content`), once",
            ));
        }
    };
    let engine = state.engine.clone();
    let tokens = off_runtime(move || engine.tokenize(&text, add_special)).await?;
    Ok(JsonResponse(json!({
        "count": tokens.len(),
        "max_model_len": state.engine.card().max_context,
        "tokens": tokens,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<u32>,
}

pub(crate) async fn detokenize(
    State(state): State<AppState>,
    Json(req): Json<DetokenizeRequest>,
) -> Result<JsonResponse<Value>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let engine = state.engine.clone();
    let text = off_runtime(move || engine.detokenize(&req.tokens)).await?;
    // vLLM answers `prompt`, llama.cpp `content`: both, so either client reads it.
    Ok(JsonResponse(json!({ "prompt": text, "content": text })))
}
