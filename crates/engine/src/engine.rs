//! The façade a server talks to: validates and tokenizes requests against the
//! serving limits, then hands them to the embedding or generation scheduler.

use std::sync::{Arc, OnceLock};

use modelship_model::{ChatMessage, ChatTemplate, TextTokenizer, TokenBytes, ToolFormat};
use modelship_types::{ServingLimits, Task};

use crate::constraint::{Constraint, Grammars};
use crate::embedder::Embedder;
use crate::generator::Generator;
use crate::request::Bounds;
use crate::tools::{self, Tools};
use crate::{EmbedBackend, EngineError, GenerateBackend, GenerateRequest, GenerationStream};

/// What a client can know about the served model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelCard {
    /// The name clients use in `model` fields and URLs.
    pub name: String,
    pub task: Task,
    pub architecture: String,
    /// Tokens per sequence this replica accepts (model limit ∩ `max_context`).
    pub max_context: usize,
    /// Embedding width, for embedding models.
    pub dimensions: Option<usize>,
    /// Unix time the model was loaded.
    pub created: u64,
}

/// A generation prompt: raw text, token ids, or chat messages rendered with
/// the model's template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    Text(String),
    Tokens(Vec<u32>),
    Chat(Vec<ChatMessage>),
}

/// What the output must be, enforced token by token.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFormat {
    /// JSON valid for this schema (`{"type": "object"}` for any object).
    JsonSchema(serde_json::Value),
    /// Text of a Lark grammar in llguidance's dialect (demanded tool calls).
    Lark(String),
}

/// Vectors for the inputs of one request, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    pub vectors: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

/// Embedding inputs as [`Engine::tokenize_inputs`] checked them (not empty,
/// none past the context): the only way to make one, so the scheduler only
/// ever sees inputs that fit its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EmbedInputs(Vec<Vec<u32>>);

enum Worker {
    Embed(Embedder),
    Generate {
        generator: Generator,
        /// Boxed: a template environment is large and rarely touched.
        chat: Option<Box<ChatTemplate>>,
        /// Built the first time a request asks for a format.
        grammars: OnceLock<Result<Grammars, String>>,
    },
}

/// One loaded model behind its scheduler.
pub struct Engine {
    card: ModelCard,
    limits: ServingLimits,
    tokenizer: Arc<TextTokenizer>,
    /// Every token's bytes, for log-probabilities, pieces and grammars:
    /// built the first time one is asked for (~40 ms for BERT's 30k tokens,
    /// ~100 ms for Qwen's 152k), not at start-up.
    token_bytes: OnceLock<Vec<TokenBytes>>,
    worker: Worker,
}

impl Engine {
    /// An embedding engine; `card.max_context` must already be capped by the
    /// model's own limit.
    pub fn embeddings(
        card: ModelCard,
        limits: ServingLimits,
        tokenizer: TextTokenizer,
        backend: impl EmbedBackend,
    ) -> Self {
        let embedder = Embedder::start(backend, limits.max_batch_tokens, limits.max_queue);
        Self {
            card,
            limits,
            tokenizer: Arc::new(tokenizer),
            token_bytes: OnceLock::new(),
            worker: Worker::Embed(embedder),
        }
    }

    pub fn generation(
        card: ModelCard,
        limits: ServingLimits,
        tokenizer: TextTokenizer,
        chat: Option<ChatTemplate>,
        backend: impl GenerateBackend,
    ) -> Self {
        let tokenizer = Arc::new(tokenizer);
        let generator = Generator::start(
            backend,
            tokenizer.clone(),
            limits.max_concurrent,
            limits.max_batch_tokens,
            limits.max_queue,
        );
        Self {
            card,
            limits,
            tokenizer,
            token_bytes: OnceLock::new(),
            worker: Worker::Generate {
                generator,
                chat: chat.map(Box::new),
                grammars: OnceLock::new(),
            },
        }
    }

    pub fn card(&self) -> &ModelCard {
        &self.card
    }

    pub fn limits(&self) -> &ServingLimits {
        &self.limits
    }

    /// Whether the model's compute thread still runs. A panic in the backend
    /// ends it for good: from then on every request fails.
    pub fn is_running(&self) -> bool {
        match &self.worker {
            Worker::Embed(e) => e.thread().is_running(),
            Worker::Generate { generator, .. } => generator.thread().is_running(),
        }
    }

    /// Resolves once the compute thread has stopped, with why.
    pub async fn stopped(&self) -> String {
        match &self.worker {
            Worker::Embed(e) => e.thread().stopped().await,
            Worker::Generate { generator, .. } => generator.thread().stopped().await,
        }
    }

    /// Embeds `texts`: [`Engine::tokenize_inputs`], then
    /// [`Engine::embed_tokens`].
    pub async fn embed(&self, texts: &[String], truncate: bool) -> Result<Embeddings, EngineError> {
        let inputs = self.tokenize_inputs(texts, truncate)?;
        self.embed_tokens(inputs).await
    }

    /// The token ids of embedding inputs, checked against the limits. Inputs
    /// longer than the context are an error naming the input, unless
    /// `truncate` asks to keep their first tokens. CPU work proportional to
    /// the text: a server runs it off its async runtime.
    pub fn tokenize_inputs(
        &self,
        texts: &[String],
        truncate: bool,
    ) -> Result<EmbedInputs, EngineError> {
        if !matches!(self.worker, Worker::Embed(_)) {
            return Err(self.wrong_task(Task::Embeddings));
        }
        if texts.is_empty() {
            return Err(EngineError::invalid("input", "`input` must not be empty"));
        }
        if texts.len() > self.limits.max_inputs {
            return Err(EngineError::invalid(
                "input",
                format!(
                    "{} inputs in one request; the maximum is {}",
                    texts.len(),
                    self.limits.max_inputs
                ),
            ));
        }
        let max = self.card.max_context;
        let mut inputs = Vec::with_capacity(texts.len());
        for (i, text) in texts.iter().enumerate() {
            if text.is_empty() {
                return Err(EngineError::invalid(
                    "input",
                    format!("input {i} is an empty string"),
                ));
            }
            let mut ids = self
                .tokenizer
                .encode(text, true)
                .map_err(|e| EngineError::invalid("input", format!("input {i}: {e}")))?;
            if ids.len() > max {
                if !truncate {
                    return Err(EngineError::invalid(
                        "input",
                        format!(
                            "input {i} has {} tokens, more than the maximum of {max}; shorten it or set `truncate: true`",
                            ids.len()
                        ),
                    ));
                }
                // Keep the leading tokens and the closing special token ([SEP]).
                let last = *ids.last().expect("longer than max > 0");
                ids.truncate(max - 1);
                ids.push(last);
            }
            inputs.push(ids);
        }
        Ok(EmbedInputs(inputs))
    }

    /// Vectors for inputs from [`Engine::tokenize_inputs`], in order.
    pub async fn embed_tokens(&self, inputs: EmbedInputs) -> Result<Embeddings, EngineError> {
        let Worker::Embed(embedder) = &self.worker else {
            return Err(self.wrong_task(Task::Embeddings));
        };
        let EmbedInputs(inputs) = inputs;
        let prompt_tokens = inputs.iter().map(Vec::len).sum();
        let vectors = embedder.embed(inputs).await?;
        Ok(Embeddings {
            vectors,
            prompt_tokens,
        })
    }

    /// The token ids of `text` as this model reads it (`add_special`: with
    /// the tokens its tokenizer adds around a sequence, as a prompt gets).
    pub fn tokenize(&self, text: &str, add_special: bool) -> Result<Vec<u32>, EngineError> {
        self.tokenizer
            .encode(text, add_special)
            .map_err(|e| EngineError::invalid("prompt", e))
    }

    /// The text of token ids, special tokens included; an id outside the
    /// vocabulary is an error naming its place.
    pub fn detokenize(&self, ids: &[u32]) -> Result<String, EngineError> {
        if let Some(i) = ids
            .iter()
            .position(|&id| self.tokenizer.id_to_token(id).is_none())
        {
            return Err(EngineError::invalid(
                "tokens",
                format!("tokens[{i}] = {} is not in this model's vocabulary", ids[i]),
            ));
        }
        self.tokenizer
            .decode_all(ids)
            .map_err(|e| EngineError::invalid("tokens", e))
    }

    /// What clients can ask of this model: `embedding`, or `completion`
    /// with `logprobs` and `structured_outputs`, plus `chat` with a chat
    /// template and `tools` when the template renders them.
    pub fn capabilities(&self) -> Vec<&'static str> {
        match &self.worker {
            Worker::Embed(_) => vec!["embedding"],
            Worker::Generate { chat, .. } => {
                let mut c = vec!["completion", "logprobs", "structured_outputs"];
                if chat.is_some() {
                    c.push("chat");
                }
                if self.tool_format().is_some() {
                    c.push("tools");
                }
                c
            }
        }
    }

    /// How the model writes tool calls; `None`: it takes no tools.
    pub fn tool_format(&self) -> Option<ToolFormat> {
        match &self.worker {
            Worker::Generate { chat: Some(t), .. } => t.tool_format(),
            _ => None,
        }
    }

    /// The prompt the model's chat template writes for `messages` and the
    /// `tools` offered (what a chat request generates from, and what
    /// `/tokenize` counts).
    pub fn render_chat(
        &self,
        messages: &[ChatMessage],
        tools: Option<&Tools>,
        add_generation_prompt: bool,
    ) -> Result<String, EngineError> {
        if messages.is_empty() {
            return Err(EngineError::invalid(
                "messages",
                "`messages` must not be empty",
            ));
        }
        let template = match &self.worker {
            Worker::Generate { chat: Some(t), .. } => t,
            _ => {
                return Err(EngineError::invalid(
                    "messages",
                    "this model has no chat template; use /v1/completions",
                ));
            }
        };
        let offered: Vec<serde_json::Value> = match tools {
            Some(t) => {
                if template.tool_format().is_none() {
                    return Err(EngineError::invalid(
                        "tools",
                        "this model's chat template does not render tools",
                    ));
                }
                t.functions.iter().map(|f| f.spec.clone()).collect()
            }
            None => Vec::new(),
        };
        template
            .render_with(messages, &offered, add_generation_prompt)
            .map_err(|e| EngineError::invalid("messages", chain(&e)))
    }

    /// What token `id` stands for (`None` outside the vocabulary).
    /// The first call builds the table: blocking work, for a caller off the
    /// async runtime ([`Engine::generate`] builds it when log-probabilities
    /// are asked for, so the response can spell them anywhere).
    pub fn token_bytes(&self, id: u32) -> Option<&TokenBytes> {
        self.vocabulary().get(id as usize)
    }

    fn vocabulary(&self) -> &[TokenBytes] {
        self.token_bytes
            .get_or_init(|| self.tokenizer.token_bytes())
    }

    /// Starts a generation: one event stream per sample (`n`), and the
    /// prompt's tokens.
    pub fn generate(
        &self,
        prompt: &Prompt,
        request: &GenerateRequest,
    ) -> Result<(Vec<GenerationStream>, Vec<u32>), EngineError> {
        let Worker::Generate {
            generator,
            grammars,
            ..
        } = &self.worker
        else {
            return Err(self.wrong_task(Task::Generate));
        };
        let (text, field) = match prompt {
            Prompt::Text(t) => (t.clone(), "prompt"),
            Prompt::Tokens(ids) => {
                if let Some(i) = ids
                    .iter()
                    .position(|&id| self.tokenizer.id_to_token(id).is_none())
                {
                    return Err(EngineError::invalid(
                        "prompt",
                        format!(
                            "prompt token {i} = {} is not in this model's vocabulary",
                            ids[i]
                        ),
                    ));
                }
                return self.start(generator, grammars, ids.clone(), "prompt", request);
            }
            Prompt::Chat(messages) => {
                let offered = request.tools.as_ref().filter(|t| t.offered());
                (self.render_chat(messages, offered, true)?, "messages")
            }
        };
        let ids = self
            .tokenizer
            .encode(&text, true)
            .map_err(|e| EngineError::invalid(field, e))?;
        self.start(generator, grammars, ids, field, request)
    }

    fn start(
        &self,
        generator: &Generator,
        grammars: &OnceLock<Result<Grammars, String>>,
        ids: Vec<u32>,
        field: &'static str,
        request: &GenerateRequest,
    ) -> Result<(Vec<GenerationStream>, Vec<u32>), EngineError> {
        if ids.is_empty() {
            return Err(EngineError::invalid(
                field,
                format!("`{field}` has no tokens"),
            ));
        }
        if request.logprobs.is_some() || request.prompt_logprobs.is_some() {
            // The response spells the tokens; the table is built here.
            self.vocabulary();
        }
        let params = request.resolve(&Bounds {
            limits: &self.limits,
            max_context: self.card.max_context,
            tokenizer: &self.tokenizer,
            prompt_tokens: ids.len(),
            field,
        })?;
        let demanded = match (&request.tools, self.tool_format()) {
            (Some(t), Some(f)) => tools::call_grammar(f, t).map(OutputFormat::Lark),
            _ => None,
        };
        let format = match (&request.format, demanded) {
            (Some(_), Some(_)) => {
                return Err(EngineError::invalid(
                    "response_format",
                    "a tool call is demanded (`tool_choice`): its arguments follow the function's parameters, not `response_format`",
                ));
            }
            (Some(f), None) => Some(f.clone()),
            (None, demanded) => demanded,
        };
        let constraint = match &format {
            None => None,
            Some(format) => Some(self.constraint(grammars, format)?),
        };
        let streams = generator.generate(ids.clone(), params, constraint)?;
        Ok((streams, ids))
    }

    /// Compiles an output format against this model's vocabulary.
    fn constraint(
        &self,
        grammars: &OnceLock<Result<Grammars, String>>,
        format: &OutputFormat,
    ) -> Result<Constraint, EngineError> {
        let field = match format {
            OutputFormat::JsonSchema(_) => "response_format",
            OutputFormat::Lark(_) => "tools",
        };
        let grammars = grammars
            .get_or_init(|| Grammars::new(self.tokenizer.clone(), self.vocabulary()))
            .as_ref()
            .map_err(|e| EngineError::invalid(field, e.clone()))?;
        match format {
            OutputFormat::JsonSchema(schema) => grammars.json_schema(schema).map_err(|e| {
                EngineError::invalid(
                    "response_format",
                    format!("the JSON schema cannot be enforced: {e}"),
                )
            }),
            OutputFormat::Lark(grammar) => grammars.lark(grammar).map_err(|e| {
                EngineError::invalid(
                    "tools",
                    format!("the parameters of the demanded function cannot be enforced: {e}"),
                )
            }),
        }
    }

    fn wrong_task(&self, asked: Task) -> EngineError {
        EngineError::WrongTask {
            served: self.card.task.as_str(),
            asked: asked.as_str(),
        }
    }
}

/// An error and its causes on one line (template errors carry their cause).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
