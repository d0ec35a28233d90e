//! Chat templates: the Jinja template a model ships (`tokenizer.chat_template`
//! in GGUF), rendered with minijinja and Python-compatible string methods.

use minijinja::{Environment, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use crate::ModelError;

/// Instructions one rendering may run: the real templates (Qwen2.5's with
/// tools, Gemma's, SmolLM2's) take a few thousand for a conversation of
/// dozens of messages.
const TEMPLATE_FUEL: u64 = 1_000_000;
/// The longest prompt a template may write.
pub(crate) const MAX_RENDERED: usize = 16 << 20;

/// One chat message, in the shape Hugging Face chat templates read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ChatMessage {
    pub role: String,
    /// `None` for an assistant turn that only calls tools.
    pub content: Option<String>,
    /// The tools an assistant turn called.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub tool_calls: Vec<ToolCall>,
    /// A `tool` turn: the call it answers.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn new(role: &str, content: &str) -> Self {
        Self {
            role: role.to_owned(),
            content: Some(content.to_owned()),
            ..Self::default()
        }
    }
}

/// A call of a tool, as templates render it: `{"id", "type": "function",
/// "function": {"name", "arguments": {…}}}` (arguments an object, as
/// Hugging Face's templates expect, not OpenAI's JSON string).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: serde_json::Value,
}

/// How a model writes its tool calls, read from its chat template.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ToolFormat {
    /// Qwen2.5's and Hermes': `<tool_call>{"name", "arguments"}</tool_call>`.
    Hermes,
    /// Llama 3.1–3.3's: a bare `{"name", "parameters"}` object.
    Llama3Json,
    /// Mistral's: `[TOOL_CALLS][{"name", "arguments"}, …]`.
    Mistral,
}

impl ToolFormat {
    /// The format a template's source speaks, if it renders tools at all.
    pub fn of_template(source: &str) -> Option<Self> {
        if !source.contains("tools") {
            return None;
        }
        if source.contains("<tool_call>") {
            Some(Self::Hermes)
        } else if source.contains("[TOOL_CALLS]") {
            Some(Self::Mistral)
        } else if source.contains("<|python_tag|>") || source.contains("ipython") {
            Some(Self::Llama3Json)
        } else {
            None
        }
    }
}

/// A compiled chat template and the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
    tool_format: Option<ToolFormat>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate").finish_non_exhaustive()
    }
}

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, ModelError> {
        let mut env = Environment::new();
        // A template is the model author's code: bounded, so a loop of
        // loops cannot take the server's memory or time (a template of two
        // nested `range(100000)` grew it to 1.4 GB).
        env.set_fuel(Some(TEMPLATE_FUEL));
        env.set_recursion_limit(64);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<Value, _> {
            Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned("chat", source.to_owned())
            .map_err(ModelError::Template)?;
        Ok(Self {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
            tool_format: ToolFormat::of_template(source),
        })
    }

    /// How the model writes tool calls; `None`: its template renders no tools.
    pub fn tool_format(&self) -> Option<ToolFormat> {
        self.tool_format
    }

    /// The prompt for `messages`, ending with the assistant's turn opened.
    /// `tools` (OpenAI's `{"type": "function", "function": {…}}` entries)
    /// go to the template as Hugging Face's `tools`; empty renders none.
    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
    ) -> Result<String, ModelError> {
        self.render_with(messages, tools, true)
    }

    /// [`Self::render`], the assistant's turn opened or not
    /// (`add_generation_prompt`).
    pub fn render_with(
        &self,
        messages: &[ChatMessage],
        tools: &[serde_json::Value],
        add_generation_prompt: bool,
    ) -> Result<String, ModelError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(ModelError::Template)?;
        let text = tmpl
            .render(context! {
                messages => messages,
                tools => (!tools.is_empty()).then_some(tools),
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(ModelError::Template)?;
        if text.len() > MAX_RENDERED {
            return Err(ModelError::Template(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                format!(
                    "the chat template wrote {} bytes, more than {MAX_RENDERED}",
                    text.len()
                ),
            )));
        }
        Ok(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_runaway_template_is_stopped() {
        let loops =
            "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
        let t = ChatTemplate::new(loops, "", "").unwrap();
        let started = std::time::Instant::now();
        let err = t.render(&[], &[]).unwrap_err();
        // What a client reads (the engine reports the error's chain).
        let why = std::error::Error::source(&err).map(ToString::to_string);
        assert!(
            why.as_deref().is_some_and(|w| w.contains("fuel")),
            "{why:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }

    const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'].strip() + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    #[test]
    fn renders_chatml_with_python_methods() {
        let t = ChatTemplate::new(CHATML, "<s>", "</s>").unwrap();
        let out = t.render(&[ChatMessage::new("user", "  hi ")], &[]).unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let err = t.render(&[], &[]).unwrap_err();
        let chain = format!("{:?}", err);
        assert!(chain.contains("roles must alternate"), "{chain}");
    }

    #[test]
    fn syntax_errors_are_reported_at_load() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
