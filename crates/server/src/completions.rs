//! `POST /v1/completions` and `POST /v1/chat/completions`, whole or streamed
//! as OpenAI server-sent events ending in `data: [DONE]`.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use modelship_engine::{
    FinishReason, GenerateRequest, GenerationEvent, GenerationStream, Prompt, Usage,
};
use modelship_model::ChatMessage;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::error::ApiError;
use crate::inert::{self, Inert};
use crate::input::{Content, Texts};
use crate::json::{OpenAiJson, OpenAiRequest};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// `/v1/completions`. The sampling fields repeat in [`ChatRequest`] and v2's
/// parameters on purpose: serde cannot `flatten` a shared struct into one that
/// denies unknown fields, and an ignored misspelt knob is worse than the copy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    model: Option<String>,
    prompt: Texts,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
    stop: Option<Texts>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<usize>,
}

impl OpenAiRequest for CompletionRequest {
    const INERT: &'static [Inert] = inert::COMPLETIONS;
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    role: String,
    content: Content,
    #[allow(dead_code)]
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatRequest {
    model: Option<String>,
    messages: Vec<Message>,
    max_tokens: Option<usize>,
    max_completion_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
    stop: Option<Texts>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<usize>,
}

impl OpenAiRequest for ChatRequest {
    const INERT: &'static [Inert] = inert::CHAT;
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    Chat,
}

/// The fields every response chunk repeats.
#[derive(Clone)]
struct Header {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl Header {
    fn new(state: &AppState, kind: Kind) -> Self {
        let prefix = if kind == Kind::Chat {
            "chatcmpl"
        } else {
            "cmpl"
        };
        Self {
            id: format!("{prefix}-{:016x}", random_u64()),
            created: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            model: state.engine.card().name.clone(),
            kind,
        }
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Text, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, chunk: bool, choices: Value, usage: Option<Usage>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = usage_json(u);
        }
        v
    }

    /// One streamed piece of text, or the closing chunk with a finish reason.
    fn chunk(&self, text: Option<&str>, finish: Option<FinishReason>, first: bool) -> Value {
        let finish = finish.map(FinishReason::as_str);
        let choice = match self.kind {
            Kind::Text => {
                json!({"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish})
            }
            Kind::Chat => {
                let mut delta = serde_json::Map::new();
                if first {
                    delta.insert("role".into(), json!("assistant"));
                }
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish})
            }
        };
        self.envelope(true, json!([choice]), None)
    }

    fn whole(&self, text: String, finish: FinishReason, usage: Usage) -> Value {
        let finish = finish.as_str();
        let choice = match self.kind {
            Kind::Text => {
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish})
            }
            Kind::Chat => {
                json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish})
            }
        };
        self.envelope(false, json!([choice]), Some(usage))
    }
}

fn usage_json(u: Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    })
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}

fn check_n(n: Option<usize>) -> Result<(), ApiError> {
    match n {
        None | Some(1) => Ok(()),
        Some(_) => Err(ApiError::bad_request(
            Some("n".to_owned()),
            "only `n: 1` is supported",
        )),
    }
}

pub(crate) async fn completions(
    State(state): State<AppState>,
    OpenAiJson(req): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    state.check_model(req.model.as_deref())?;
    check_n(req.n)?;
    let prompt = match <[String; 1]>::try_from(req.prompt.0) {
        Ok([p]) => p,
        Err(v) => {
            return Err(ApiError::bad_request(
                Some("prompt".to_owned()),
                format!(
                    "exactly one prompt per request is supported, got {}",
                    v.len()
                ),
            ));
        }
    };
    let params = GenerateRequest {
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        seed: req.seed,
        stop: req.stop.map(|s| s.0).unwrap_or_default(),
    };
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    respond(
        &state,
        Prompt::Text(prompt),
        params,
        Kind::Text,
        req.stream,
        include_usage,
    )
    .await
}

pub(crate) async fn chat_completions(
    State(state): State<AppState>,
    OpenAiJson(req): OpenAiJson<ChatRequest>,
) -> Result<Response, ApiError> {
    state.check_model(req.model.as_deref())?;
    check_n(req.n)?;
    let mut messages = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.into_iter().enumerate() {
        if !matches!(
            m.role.as_str(),
            "system" | "user" | "assistant" | "developer"
        ) {
            return Err(ApiError::bad_request(
                Some(format!("messages[{i}].role")),
                format!(
                    "unknown role `{}`: expected system, user or assistant",
                    m.role
                ),
            ));
        }
        let role = if m.role == "developer" {
            "system".to_owned()
        } else {
            m.role
        };
        messages.push(ChatMessage {
            role,
            content: m.content.0,
        });
    }
    let params = GenerateRequest {
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        seed: req.seed,
        stop: req.stop.map(|s| s.0).unwrap_or_default(),
    };
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    respond(
        &state,
        Prompt::Chat(messages),
        params,
        Kind::Chat,
        req.stream,
        include_usage,
    )
    .await
}

async fn respond(
    state: &AppState,
    prompt: Prompt,
    params: GenerateRequest,
    kind: Kind,
    stream: bool,
    include_usage: bool,
) -> Result<Response, ApiError> {
    // Rendering the template and tokenizing a long prompt take real time:
    // not on the async runtime, whose threads answer health checks.
    let engine = state.engine.clone();
    let (events, _prompt_tokens) =
        crate::state::off_runtime(move || engine.generate(&prompt, &params)).await?;
    let header = Header::new(state, kind);
    if stream {
        Ok(Sse::new(sse_events(header, events, include_usage)).into_response())
    } else {
        let (text, finish, usage) = collect(events).await?;
        Ok(JsonResponse(header.whole(text, finish, usage)).into_response())
    }
}

/// Waits for the whole generation.
pub(crate) async fn collect(
    mut events: GenerationStream,
) -> Result<(String, FinishReason, Usage), ApiError> {
    let mut text = String::new();
    while let Some(ev) = events.recv().await {
        match ev {
            GenerationEvent::Text(t) => text.push_str(&t),
            GenerationEvent::Done { reason, usage } => return Ok((text, reason, usage)),
            GenerationEvent::Failed(e) => return Err(e.into()),
        }
    }
    Err(ApiError::unavailable("the generation stopped unexpectedly"))
}

fn sse_events(
    header: Header,
    events: GenerationStream,
    include_usage: bool,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let mut first = true;
    UnboundedReceiverStream::new(events).flat_map(move |ev| {
        let mut out: Vec<Value> = Vec::new();
        let mut done = false;
        match ev {
            GenerationEvent::Text(t) => out.push(header.chunk(Some(&t), None, first)),
            GenerationEvent::Done { reason, usage } => {
                out.push(header.chunk(None, Some(reason), first));
                if include_usage {
                    out.push(header.envelope(true, json!([]), Some(usage)));
                }
                done = true;
            }
            GenerationEvent::Failed(e) => {
                let e = ApiError::from(e);
                out.push(json!({"error": {"message": e.message, "type": "server_error"}}));
                done = true;
            }
        }
        first = false;
        let mut events: Vec<Result<Event, Infallible>> = out
            .into_iter()
            .map(|v| Ok(Event::default().data(v.to_string())))
            .collect();
        if done {
            events.push(Ok(Event::default().data("[DONE]")));
        }
        futures::stream::iter(events)
    })
}
