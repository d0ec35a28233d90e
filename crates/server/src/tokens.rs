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

/// The text a `/tokenize` request counts.
enum Source {
    /// Text, with the special tokens around a sequence or not.
    Text(String, bool),
    Chat {
        messages: Vec<modelship_model::ChatMessage>,
        tools: Option<modelship_engine::Tools>,
        opened: bool,
        add: bool,
    },
}

pub(crate) async fn tokenize(
    State(state): State<AppState>,
    Json(req): Json<TokenizeRequest>,
) -> Result<JsonResponse<Value>, ApiError> {
    state.check_model(req.model.as_deref())?;
    let engine = state.engine.clone();
    // What to tokenize and how, checked here; the work itself off the runtime.
    let source = match (req.prompt, req.content, req.messages) {
        (Some(p), None, None) => {
            let add = req.add_special_tokens.or(req.add_special).unwrap_or(true);
            Source::Text(p, add)
        }
        (None, Some(c), None) => {
            let add = req.add_special.or(req.add_special_tokens).unwrap_or(false);
            Source::Text(c, add)
        }
        (None, None, Some(messages)) => Source::Chat {
            messages: messages
                .into_iter()
                .enumerate()
                .map(|(i, m)| chat_message(i, m))
                .collect::<Result<Vec<_>, _>>()?,
            tools: tools(req.tools, None, None)?,
            opened: req.add_generation_prompt.unwrap_or(true),
            add: req.add_special_tokens.or(req.add_special).unwrap_or(false),
        },
        _ => {
            return Err(ApiError::bad_request(
                Some("prompt".to_owned()),
                "give the text once: as `prompt`, `content` or `messages`",
            ));
        }
    };
    let (with_pieces, strs) = (
        req.with_pieces.unwrap_or(false),
        req.return_token_strs.unwrap_or(false),
    );
    let (tokens, pieces) = off_runtime(move || {
        let tokens = match source {
            Source::Text(text, add) => engine.tokenize(&text, add)?,
            Source::Chat {
                messages,
                tools,
                opened,
                add,
            } => {
                let text = engine.render_chat(&messages, tools.as_ref(), opened)?;
                engine.tokenize(&text, add)?
            }
        };
        // llama.cpp's rule: a piece is its text, or its bytes when they are
        // not UTF-8.
        let pieces: Vec<Value> = if with_pieces || strs {
            tokens
                .iter()
                .map(|&id| {
                    let bytes = engine.token_bytes(id).map_or(&[][..], |t| &t.bytes);
                    match std::str::from_utf8(bytes) {
                        Ok(s) => json!(s),
                        Err(_) => json!(bytes),
                    }
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok::<_, modelship_engine::EngineError>((tokens, pieces))
    })
    .await?;
    let mut out = json!({
        "count": tokens.len(),
        "max_model_len": state.engine.card().max_context,
    });
    if strs {
        out["token_strs"] = json!(pieces);
    }
    out["tokens"] = if with_pieces {
        tokens
            .iter()
            .zip(&pieces)
            .map(|(&id, piece)| json!({"id": id, "piece": piece}))
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
