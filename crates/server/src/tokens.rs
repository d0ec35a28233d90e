//! `POST /tokenize` and `POST /detokenize`, in the shapes vLLM's and
//! llama.cpp's servers answer: a prompt (`prompt`, llama.cpp's `content`,
//! or vLLM's chat `messages` through the model's template) to token ids,
//! with each token's text when asked, and ids back to text.

use axum::Json as JsonResponse;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat::{Message, ToolSpec, chat_message, tools};
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
    /// vLLM's chat form: the prompt the template writes for them.
    messages: Option<Vec<Message>>,
    tools: Option<Vec<ToolSpec>>,
    add_generation_prompt: Option<bool>,
    /// vLLM's switch (default true; false for `messages`, whose template
    /// writes the special tokens) and llama.cpp's (default false).
    add_special_tokens: Option<bool>,
    add_special: Option<bool>,
    /// llama.cpp's `[{id, piece}]` in place of bare ids.
    with_pieces: Option<bool>,
    /// vLLM's `token_strs` beside the ids.
    return_token_strs: Option<bool>,
}

pub(crate) async fn tokenize(
    State(state): State<AppState>,
    Json(req): Json<TokenizeRequest>,
) -> Result<JsonResponse<Value>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let engine = state.engine.clone();
    let tokens = match (req.prompt, req.content, req.messages) {
        (Some(p), None, None) => {
            let add = req.add_special_tokens.or(req.add_special).unwrap_or(true);
            off_runtime(move || engine.tokenize(&p, add)).await?
        }
        (None, Some(c), None) => {
            let add = req.add_special.or(req.add_special_tokens).unwrap_or(false);
            off_runtime(move || engine.tokenize(&c, add)).await?
        }
        (None, None, Some(messages)) => {
            let messages = messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| chat_message(i, m))
                .collect::<Result<Vec<_>, _>>()?;
            let tools = tools(req.tools, None, None)?;
            let opened = req.add_generation_prompt.unwrap_or(true);
            let add = req.add_special_tokens.or(req.add_special).unwrap_or(false);
            off_runtime(move || {
                let text = engine.render_chat(&messages, tools.as_ref(), opened)?;
                engine.tokenize(&text, add)
            })
            .await?
        }
        _ => {
            return Err(ApiError::bad_request(
                Some("prompt".to_owned()),
                "give the text once: as `prompt`, `content` or `messages`",
            ));
        }
    };
    let piece = |id: u32| -> Value {
        let bytes = state
            .engine
            .token_bytes(id)
            .map(|t| t.bytes.as_slice())
            .unwrap_or_default();
        // llama.cpp's rule: the text, or the bytes when they are not UTF-8.
        match std::str::from_utf8(bytes) {
            Ok(s) => json!(s),
            Err(_) => json!(bytes),
        }
    };
    let mut out = json!({
        "count": tokens.len(),
        "max_model_len": state.engine.card().max_context,
    });
    if req.return_token_strs.unwrap_or(false) {
        out["token_strs"] = tokens.iter().map(|&t| piece(t)).collect();
    }
    out["tokens"] = if req.with_pieces.unwrap_or(false) {
        tokens
            .iter()
            .map(|&id| json!({"id": id, "piece": piece(id)}))
            .collect()
    } else {
        json!(tokens)
    };
    Ok(JsonResponse(out))
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
