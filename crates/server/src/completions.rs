//! `POST /v1/completions` and `POST /v1/chat/completions`, whole or streamed
//! as OpenAI server-sent events ending in `data: [DONE]`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::response::sse::Sse;
use axum::response::{IntoResponse, Response};
use modelship_engine::{Engine, EngineError, GenerateRequest, OutputFormat, Prompt};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::chat::{Message, ToolChoiceSpec, ToolSpec, chat_message, tools};
use crate::choices::{Kind, Reply, Sample};
use crate::error::ApiError;
use crate::inert::{self, Inert};
use crate::input::Texts;
use crate::json::{OpenAiJson, OpenAiRequest};
use crate::state::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

/// `prompt`: a string, strings, token ids, or lists of token ids.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Prompts {
    One(String),
    Many(Vec<String>),
    Ids(Vec<u32>),
    IdLists(Vec<Vec<u32>>),
}

impl Prompts {
    fn into_prompts(self) -> Vec<Prompt> {
        match self {
            Self::One(s) => vec![Prompt::Text(s)],
            Self::Many(v) => v.into_iter().map(Prompt::Text).collect(),
            Self::Ids(ids) => vec![Prompt::Tokens(ids)],
            Self::IdLists(v) => v.into_iter().map(Prompt::Tokens).collect(),
        }
    }
}

/// `logit_bias`: token ids (as JSON object keys) to biases.
type LogitBias = HashMap<String, f32>;

/// `/v1/completions`. The sampling fields repeat in [`ChatRequest`] and v2's
/// parameters on purpose: serde cannot `flatten` a shared struct into one that
/// denies unknown fields, and an ignored misspelt knob is worse than the copy.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    model: Option<String>,
    prompt: Prompts,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    min_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Texts>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    logit_bias: Option<LogitBias>,
    /// Alternatives per token (0: the chosen token's only).
    logprobs: Option<usize>,
    echo: Option<bool>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<usize>,
}

impl OpenAiRequest for CompletionRequest {
    const INERT: &'static [Inert] = inert::COMPLETIONS;
}

/// `response_format`.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonSchemaFormat {
    #[allow(dead_code)]
    name: String,
    #[allow(dead_code)]
    description: Option<String>,
    schema: Option<Value>,
    /// Outputs always follow the schema here, strict or not.
    #[allow(dead_code)]
    strict: Option<bool>,
}

impl ResponseFormat {
    fn into_format(self) -> Option<OutputFormat> {
        match self {
            Self::Text => None,
            Self::JsonObject => Some(OutputFormat::JsonSchema(json!({"type": "object"}))),
            Self::JsonSchema { json_schema } => Some(OutputFormat::JsonSchema(
                json_schema
                    .schema
                    .unwrap_or_else(|| json!({"type": "object"})),
            )),
        }
    }
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
    min_p: Option<f32>,
    seed: Option<u64>,
    stop: Option<Texts>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    repetition_penalty: Option<f32>,
    logit_bias: Option<LogitBias>,
    logprobs: Option<bool>,
    top_logprobs: Option<usize>,
    response_format: Option<ResponseFormat>,
    tools: Option<Vec<ToolSpec>>,
    tool_choice: Option<ToolChoiceSpec>,
    parallel_tool_calls: Option<bool>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
    n: Option<usize>,
}

impl OpenAiRequest for ChatRequest {
    const INERT: &'static [Inert] = inert::CHAT;
}

/// `logit_bias` with its keys read as token ids.
fn logit_bias(bias: Option<LogitBias>) -> Result<Vec<(i64, f32)>, ApiError> {
    let mut out: Vec<(i64, f32)> = bias
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| {
            k.parse::<i64>().map(|id| (id, v)).map_err(|_| {
                ApiError::bad_request(
                    Some("logit_bias".to_owned()),
                    format!("`logit_bias` key `{k}` is not a token id"),
                )
            })
        })
        .collect::<Result<_, _>>()?;
    out.sort_by_key(|p| p.0);
    Ok(out)
}

pub(crate) async fn completions(
    State(state): State<AppState>,
    OpenAiJson(req): OpenAiJson<CompletionRequest>,
) -> Result<Response, ApiError> {
    state.check_model(req.model.as_deref())?;
    let prompts = req.prompt.into_prompts();
    let most = state.engine.limits().max_inputs;
    if prompts.is_empty() || prompts.len() > most {
        return Err(ApiError::bad_request(
            Some("prompt".to_owned()),
            format!(
                "{} prompts; between 1 and {most} per request",
                prompts.len()
            ),
        ));
    }
    // One request's samples in all, as OpenAI bounds `n`.
    let samples = prompts.len().saturating_mul(req.n.unwrap_or(1));
    if samples > modelship_engine::MAX_N {
        return Err(ApiError::bad_request(
            Some("n".to_owned()),
            format!(
                "{} prompts × `n` = {samples} choices; at most {}",
                prompts.len(),
                modelship_engine::MAX_N
            ),
        ));
    }
    let echo = req.echo.unwrap_or(false);
    let params = GenerateRequest {
        max_tokens: req.max_tokens,
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        min_p: req.min_p,
        seed: req.seed,
        stop: req.stop.map(|s| s.0).unwrap_or_default(),
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        repetition_penalty: req.repetition_penalty,
        logit_bias: logit_bias(req.logit_bias)?,
        n: req.n,
        logprobs: req.logprobs,
        prompt_logprobs: req.logprobs.filter(|_| echo),
        format: None,
        tools: None,
    };
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let reply = Reply::new(state.engine.clone(), Kind::Text);
    respond(
        &state,
        prompts,
        params,
        reply,
        echo,
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
    let messages = req
        .messages
        .into_iter()
        .enumerate()
        .map(|(i, m)| chat_message(i, m))
        .collect::<Result<Vec<_>, _>>()?;
    let tools = tools(req.tools, req.tool_choice, req.parallel_tool_calls)?;
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (true, top) => Some(top.unwrap_or(0)),
        (false, None | Some(0)) => None,
        (false, Some(_)) => {
            return Err(ApiError::bad_request(
                Some("top_logprobs".to_owned()),
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
    };
    if let Some(k) = req.top_logprobs
        && k > modelship_engine::MAX_TOP_LOGPROBS
    {
        return Err(ApiError::bad_request(
            Some("top_logprobs".to_owned()),
            format!(
                "`top_logprobs` is {k}: at most {}",
                modelship_engine::MAX_TOP_LOGPROBS
            ),
        ));
    }
    let params = GenerateRequest {
        max_tokens: req.max_completion_tokens.or(req.max_tokens),
        temperature: req.temperature,
        top_p: req.top_p,
        top_k: req.top_k,
        min_p: req.min_p,
        seed: req.seed,
        stop: req.stop.map(|s| s.0).unwrap_or_default(),
        presence_penalty: req.presence_penalty,
        frequency_penalty: req.frequency_penalty,
        repetition_penalty: req.repetition_penalty,
        logit_bias: logit_bias(req.logit_bias)?,
        n: req.n,
        logprobs,
        prompt_logprobs: None,
        format: req.response_format.and_then(ResponseFormat::into_format),
        tools: tools.clone(),
    };
    let include_usage = req.stream_options.is_some_and(|o| o.include_usage);
    let mut reply = Reply::new(state.engine.clone(), Kind::Chat);
    if let (Some(t), Some(format)) = (&tools, state.engine.tool_format())
        && t.offered()
    {
        reply = reply.with_tools(format, t.parallel);
    }
    respond(
        &state,
        vec![Prompt::Chat(messages)],
        params,
        reply,
        false,
        req.stream,
        include_usage,
    )
    .await
}

/// Starts every sample of every prompt (so they are scheduled together),
/// then answers whole or streamed. Choice `p·n + k` is prompt p's sample k.
async fn respond(
    state: &AppState,
    prompts: Vec<Prompt>,
    params: GenerateRequest,
    reply: Reply,
    echo: bool,
    stream: bool,
    include_usage: bool,
) -> Result<Response, ApiError> {
    // Rendering the template and tokenizing a long prompt take real time:
    // not on the async runtime, whose threads answer health checks.
    let engine = state.engine.clone();
    let (samples, prompt_tokens) =
        crate::state::off_runtime(move || start(&engine, &prompts, &params, echo)).await?;
    let reply = reply.counting(prompt_tokens);
    if stream {
        Ok(Sse::new(reply.stream(samples, include_usage)).into_response())
    } else {
        Ok(JsonResponse(reply.whole(samples).await?).into_response())
    }
}

/// The samples of all prompts and the prompts' tokens in all.
fn start(
    engine: &Arc<Engine>,
    prompts: &[Prompt],
    params: &GenerateRequest,
    echo: bool,
) -> Result<(Vec<Sample>, usize), EngineError> {
    let mut samples = Vec::new();
    let mut prompt_tokens = 0;
    for prompt in prompts {
        let (streams, ids) = engine.generate(prompt, params)?;
        prompt_tokens += ids.len();
        let echo = match (echo, prompt) {
            (false, _) => None,
            (true, Prompt::Text(t)) => Some(t.clone()),
            (true, _) => Some(engine.detokenize(&ids)?),
        };
        samples.extend(streams.into_iter().map(|events| Sample {
            events,
            echo: echo.clone(),
        }));
    }
    Ok((samples, prompt_tokens))
}
