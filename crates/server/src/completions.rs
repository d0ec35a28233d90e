//! `POST /v1/completions` and `POST /v1/chat/completions`, whole or streamed
//! as OpenAI server-sent events ending in `data: [DONE]`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json as JsonResponse;
use axum::extract::State;
use axum::response::sse::Sse;
use axum::response::{IntoResponse, Response};
use modelship_engine::{
    Engine, EngineError, Function, GenerateRequest, OutputFormat, Prompt, ToolChoice, Tools,
};
use modelship_model::{ChatMessage, FunctionCall, ToolCall};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::choices::{Kind, Reply, Sample};
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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Message {
    role: String,
    /// `null` (or absent) on an assistant turn that only calls tools.
    #[serde(default)]
    content: Option<Content>,
    #[allow(dead_code)]
    name: Option<String>,
    tool_calls: Option<Vec<MessageToolCall>>,
    tool_call_id: Option<String>,
    /// What an assistant message we sent carries back: nothing to render.
    #[allow(dead_code)]
    refusal: Option<Value>,
    #[allow(dead_code)]
    annotations: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageToolCall {
    id: String,
    #[serde(rename = "type")]
    kind: Option<String>,
    function: MessageFunction,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MessageFunction {
    name: String,
    /// A JSON object, written as a string (OpenAI's shape).
    arguments: String,
}

/// An entry of `tools`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ToolSpec {
    #[serde(rename = "type")]
    kind: String,
    function: FunctionSpec,
}

#[derive(Debug, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct FunctionSpec {
    name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parameters: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    strict: Option<bool>,
}

/// `tool_choice`: a mode, or `{"type": "function", "function": {"name"}}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum ToolChoiceSpec {
    Mode(String),
    Named {
        #[serde(rename = "type")]
        kind: String,
        function: NamedFunction,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NamedFunction {
    name: String,
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
        && t.choice != ToolChoice::None
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

/// A request message as the template reads it: roles checked, a tool
/// call's arguments parsed from their JSON string.
fn chat_message(i: usize, m: Message) -> Result<ChatMessage, ApiError> {
    let field = |f: &str| Some(format!("messages[{i}].{f}"));
    let role = match m.role.as_str() {
        "system" | "user" | "assistant" | "tool" => m.role,
        "developer" => "system".to_owned(),
        other => {
            return Err(ApiError::bad_request(
                field("role"),
                format!("unknown role `{other}`: expected system, user, assistant or tool"),
            ));
        }
    };
    let calls = m.tool_calls.unwrap_or_default();
    if !calls.is_empty() && role != "assistant" {
        return Err(ApiError::bad_request(
            field("tool_calls"),
            "only assistant messages carry tool calls",
        ));
    }
    let tool_calls = calls
        .into_iter()
        .enumerate()
        .map(|(j, c)| {
            let at = || field(&format!("tool_calls[{j}].function.arguments"));
            if c.kind.as_deref().is_some_and(|k| k != "function") {
                return Err(ApiError::bad_request(
                    field(&format!("tool_calls[{j}].type")),
                    "only `function` tool calls exist",
                ));
            }
            let arguments: Value = serde_json::from_str(&c.function.arguments)
                .map_err(|e| ApiError::bad_request(at(), format!("not JSON: {e}")))?;
            if !arguments.is_object() {
                return Err(ApiError::bad_request(
                    at(),
                    "the arguments are a JSON object",
                ));
            }
            Ok(ToolCall {
                id: c.id,
                kind: "function".to_owned(),
                function: FunctionCall {
                    name: c.function.name,
                    arguments,
                },
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let content = m.content.map(|c| c.0);
    if content.is_none() && tool_calls.is_empty() {
        return Err(ApiError::bad_request(
            field("content"),
            "`content` is required unless the message calls tools",
        ));
    }
    if role == "tool" && m.tool_call_id.is_none() {
        return Err(ApiError::bad_request(
            field("tool_call_id"),
            "a tool message names the call it answers",
        ));
    }
    Ok(ChatMessage {
        role,
        content,
        tool_calls,
        tool_call_id: m.tool_call_id,
    })
}

/// `tools`, `tool_choice` and `parallel_tool_calls`, checked: functions
/// named once each, a named choice among them.
fn tools(
    specs: Option<Vec<ToolSpec>>,
    choice: Option<ToolChoiceSpec>,
    parallel: Option<bool>,
) -> Result<Option<Tools>, ApiError> {
    let bad = |field: String, message: String| ApiError::bad_request(Some(field), message);
    let specs = specs.unwrap_or_default();
    let mut functions: Vec<Function> = Vec::with_capacity(specs.len());
    for (i, t) in specs.into_iter().enumerate() {
        if t.kind != "function" {
            return Err(bad(
                format!("tools[{i}].type"),
                "only `function` tools exist".into(),
            ));
        }
        let name = &t.function.name;
        let valid = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(bad(
                format!("tools[{i}].function.name"),
                format!("`{name}`: 1 to 64 letters, digits, `_` or `-`"),
            ));
        }
        if functions.iter().any(|f| &f.name == name) {
            return Err(bad(
                format!("tools[{i}].function.name"),
                format!("`{name}` is offered twice"),
            ));
        }
        let parameters = t
            .function
            .parameters
            .clone()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        if !parameters.is_object() {
            return Err(bad(
                format!("tools[{i}].function.parameters"),
                "a JSON schema object".into(),
            ));
        }
        functions.push(Function {
            name: name.clone(),
            parameters,
            spec: json!({"type": "function", "function": t.function}),
        });
    }
    let choice = match choice {
        None if functions.is_empty() => ToolChoice::None,
        None => ToolChoice::Auto,
        Some(ToolChoiceSpec::Mode(m)) => match m.as_str() {
            "none" => ToolChoice::None,
            "auto" => ToolChoice::Auto,
            "required" => ToolChoice::Required,
            other => {
                return Err(bad(
                    "tool_choice".into(),
                    format!("`{other}`: expected none, auto, required or a function"),
                ));
            }
        },
        Some(ToolChoiceSpec::Named { kind, function }) => {
            if kind != "function" {
                return Err(bad("tool_choice.type".into(), "only `function`".into()));
            }
            ToolChoice::Function(function.name)
        }
    };
    match &choice {
        ToolChoice::Required | ToolChoice::Function(_) if functions.is_empty() => {
            return Err(bad(
                "tool_choice".into(),
                "a call is demanded but no `tools` are offered".into(),
            ));
        }
        ToolChoice::Function(name) if !functions.iter().any(|f| &f.name == name) => {
            return Err(bad(
                "tool_choice".into(),
                format!("`{name}` is not among the `tools`"),
            ));
        }
        _ => {}
    }
    if functions.is_empty() {
        return Ok(None);
    }
    Ok(Some(Tools {
        functions,
        choice,
        parallel: parallel.unwrap_or(true),
    }))
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
