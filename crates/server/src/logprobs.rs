//! `POST /logprobs`: a continuation scored teacher-forced after a prompt:
//! each of its tokens with its log-probability and the most likely tokens at
//! its place. A rollout's live comparison asks both revisions for the stable
//! revision's answer scored this way. OpenAI and vLLM score text only as a
//! completions prompt (`echo` with `logprobs`), which cannot take a chat
//! and spells tokens as text; this takes the request's own `prompt` or
//! `messages` and answers in token ids.

use axum::Json as JsonResponse;
use axum::extract::State;
use modelship_engine::{GenerationEvent, MAX_TOP_LOGPROBS, Prompt};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat::{Message, ToolSpec, chat_message, tools};
use crate::error::ApiError;
use crate::json::Json;
use crate::state::{AppState, off_runtime};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogprobsRequest {
    model: Option<String>,
    /// A completions prompt, or
    prompt: Option<String>,
    /// a chat, written by the model's template with the assistant's turn
    /// opened, as a generation writes it.
    messages: Option<Vec<Message>>,
    tools: Option<Vec<ToolSpec>>,
    /// The text scored after the prompt.
    continuation: String,
    /// The most likely tokens listed at each place.
    #[serde(default)]
    top_logprobs: usize,
    /// Per continuation token: ids whose log-probabilities are listed too.
    #[serde(default)]
    also: Vec<Vec<u32>>,
}

pub(crate) async fn logprobs(
    State(state): State<AppState>,
    Json(req): Json<LogprobsRequest>,
) -> Result<JsonResponse<Value>, ApiError> {
    state.check_model(req.model.as_deref())?;
    if req.top_logprobs > MAX_TOP_LOGPROBS {
        return Err(ApiError::bad_request(
            Some("top_logprobs".to_owned()),
            format!(
                "`top_logprobs` is {}: at most {MAX_TOP_LOGPROBS}",
                req.top_logprobs
            ),
        ));
    }
    let (prompt, tools) = match (req.prompt, req.messages) {
        (Some(p), None) => (Prompt::Text(p), None),
        (None, Some(messages)) => (
            Prompt::Chat(
                messages
                    .into_iter()
                    .enumerate()
                    .map(|(i, m)| chat_message(i, m))
                    .collect::<Result<Vec<_>, _>>()?,
            ),
            tools(req.tools, None, None)?,
        ),
        _ => {
            return Err(ApiError::bad_request(
                Some("prompt".to_owned()),
                "give the prompt once: as `prompt` or as `messages`",
            ));
        }
    };
    let engine = state.engine.clone();
    let (continuation, top, also) = (req.continuation, req.top_logprobs, req.also);
    let (mut events, prompt_tokens) = off_runtime(move || {
        engine.score_continuation(&prompt, tools.as_ref(), &continuation, top, &also)
    })
    .await?;
    let mut scored = None;
    while let Some(event) = events.recv().await {
        match event {
            GenerationEvent::Prompt(tokens) => scored = Some(tokens),
            GenerationEvent::Failed(e) => return Err(e.into()),
            GenerationEvent::Done { .. } => break,
            GenerationEvent::Text { .. } => {}
        }
    }
    let scored =
        scored.ok_or_else(|| ApiError::unavailable("the engine stopped before scoring"))?;
    let tokens: Vec<Value> = scored[prompt_tokens.min(scored.len())..]
        .iter()
        .map(|t| {
            json!({
                "id": t.token,
                "logprob": t.logprob,
                "top": t.top.iter().map(|&(id, lp)| json!([id, lp])).collect::<Vec<_>>(),
            })
        })
        .collect();
    Ok(JsonResponse(json!({
        "model": state.engine.card().name,
        "prompt_tokens": prompt_tokens,
        "tokens": tokens,
    })))
}
