//! The messages and tools of a chat request, in OpenAI's shapes, checked
//! and turned into what the model's chat template reads: roles, a tool
//! call's arguments parsed from their JSON string, functions named once.

use modelship_engine::{Function, ToolChoice, Tools};
use modelship_model::{ChatMessage, FunctionCall, ToolCall};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::input::Content;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Message {
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
pub(crate) struct ToolSpec {
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
pub(crate) enum ToolChoiceSpec {
    Mode(String),
    Named(NamedChoice),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NamedChoice {
    #[serde(rename = "type")]
    kind: String,
    function: NamedFunction,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct NamedFunction {
    name: String,
}

/// A request message as the template reads it: roles checked, a tool
/// call's arguments parsed from their JSON string.
pub(crate) fn chat_message(i: usize, m: Message) -> Result<ChatMessage, ApiError> {
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
pub(crate) fn tools(
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
        Some(ToolChoiceSpec::Named(NamedChoice { kind, function })) => {
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
