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

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A compiled chat template and the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
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
        })
    }

    /// The prompt for `messages`, ending with the assistant's turn opened.
    pub fn render(&self, messages: &[ChatMessage]) -> Result<String, ModelError> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(ModelError::Template)?;
        let text = tmpl
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
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
        let err = t.render(&[]).unwrap_err();
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
        let out = t
            .render(&[ChatMessage {
                role: "user".into(),
                content: "  hi ".into(),
            }])
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let t = ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
        let err = t.render(&[]).unwrap_err();
        let chain = format!("{:?}", err);
        assert!(chain.contains("roles must alternate"), "{chain}");
    }

    #[test]
    fn syntax_errors_are_reported_at_load() {
        assert!(ChatTemplate::new("{% for %}", "", "").is_err());
    }
}
