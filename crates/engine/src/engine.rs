//! The façade a server talks to: validates and tokenizes requests against the
//! serving limits, then hands them to the embedding or generation scheduler.

use std::sync::{Arc, OnceLock};

use modelship_model::{
    ChatMessage, ChatTemplate, Prompts, ScoreActivation, TextTokenizer, TokenBytes, ToolFormat,
};
use modelship_types::{ServingLimits, Task};

use crate::constraint::{Constraint, Grammars};
use crate::embedder::Embedder;
use crate::generator::Generator;
use crate::request::Bounds;
use crate::tools::{self, Tools};
use crate::{
    EncodeBackend, EngineError, GenerateBackend, GenerateRequest, GenerationStream, Sequence,
};

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
    /// A classifier's labels in id order (one for a reranker); empty for
    /// other models.
    pub labels: Vec<String>,
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

/// A classifier's (or reranker's) output for the inputs of one request, in
/// order: per input, one logit and one score per label.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub logits: Vec<Vec<f32>>,
    /// The logits through the model's activation (sigmoid, softmax).
    pub scores: Vec<Vec<f32>>,
    pub prompt_tokens: usize,
}

/// One input of an encoder request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EncodeInput {
    Text(String),
    /// Token ids as the client counted them, read as they are: no special
    /// tokens are added.
    Tokens(Vec<u32>),
    /// Two texts read together: a reranker's query and document, an NLI
    /// classifier's premise and hypothesis.
    Pair(String, String),
}

/// How a request's inputs become sequences, and its vectors come out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EncodeOptions {
    /// Cut an input past the context to fit (a pair from its longer text)
    /// instead of refusing it.
    pub truncate: bool,
    /// A sentence-transformers prompt put before each text; `None`: the
    /// model's default prompt, if it has one.
    pub prompt_name: Option<String>,
    /// Matryoshka: keep the first `dimensions` of each embedding and
    /// renormalize.
    pub dimensions: Option<usize>,
}

/// Encoder inputs as [`Engine::tokenize_inputs`] checked them (not empty,
/// none past the context, options valid for the model): the only way to
/// make one, so the scheduler only ever sees inputs that fit its budget.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeInputs {
    sequences: Vec<Sequence>,
    dimensions: Option<usize>,
}

impl EncodeInputs {
    /// Tokens of every input together.
    pub fn tokens(&self) -> usize {
        self.sequences.iter().map(Sequence::len).sum()
    }
}

/// What an encoder's outputs mean beyond its vectors.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EncoderServing {
    pub prompts: Prompts,
    /// A classifier's activation; `None` for an embedding model.
    pub activation: Option<ScoreActivation>,
    /// Rows of the model's token table, when the tokenizer may know more
    /// ids than it has: an id past them is refused with its request rather
    /// than failing the batch it would join.
    pub token_rows: Option<usize>,
}

enum Worker {
    Encode {
        encoder: Embedder,
        serving: EncoderServing,
    },
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
    /// An embedding model without prompts: [`Engine::encoder`] with
    /// nothing more to serve.
    pub fn embeddings(
        card: ModelCard,
        limits: ServingLimits,
        tokenizer: TextTokenizer,
        backend: impl EncodeBackend,
    ) -> Self {
        Self::encoder(card, limits, tokenizer, EncoderServing::default(), backend)
    }

    /// An encoder engine (embeddings, reranking, classification, as
    /// `card.task` says); `card.max_context` must already be capped by the
    /// model's own limit.
    pub fn encoder(
        card: ModelCard,
        limits: ServingLimits,
        tokenizer: TextTokenizer,
        serving: EncoderServing,
        backend: impl EncodeBackend,
    ) -> Self {
        let encoder = Embedder::start(
            backend,
            card.task.as_str(),
            limits.max_batch_tokens,
            limits.max_queue,
        );
        Self {
            card,
            limits,
            tokenizer: Arc::new(tokenizer),
            token_bytes: OnceLock::new(),
            worker: Worker::Encode { encoder, serving },
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
            Worker::Encode { encoder, .. } => encoder.thread().is_running(),
            Worker::Generate { generator, .. } => generator.thread().is_running(),
        }
    }

    /// Resolves once the compute thread has stopped, with why.
    pub async fn stopped(&self) -> String {
        match &self.worker {
            Worker::Encode { encoder, .. } => encoder.thread().stopped().await,
            Worker::Generate { generator, .. } => generator.thread().stopped().await,
        }
    }

    /// Embeds `texts` with the model's defaults: [`Engine::tokenize_inputs`],
    /// then [`Engine::embed_tokens`].
    pub async fn embed(&self, texts: &[String], truncate: bool) -> Result<Embeddings, EngineError> {
        let inputs: Vec<EncodeInput> = texts.iter().cloned().map(EncodeInput::Text).collect();
        let options = EncodeOptions {
            truncate,
            ..EncodeOptions::default()
        };
        let inputs = self.tokenize_inputs("input", &inputs, &options)?;
        self.embed_tokens(inputs).await
    }

    /// The sequences of an encoder request's `inputs` (sent in its field
    /// `field`), checked against the model and the limits: not empty, not
    /// too many, each within the context unless `truncate` cuts it, pairs
    /// only for a model that reads pairs, the prompt and dimensions ones
    /// the model has. CPU work proportional to the text: a server runs it
    /// off its async runtime.
    pub fn tokenize_inputs(
        &self,
        field: &'static str,
        inputs: &[EncodeInput],
        options: &EncodeOptions,
    ) -> Result<EncodeInputs, EngineError> {
        let Worker::Encode { serving, .. } = &self.worker else {
            return Err(EngineError::WrongTask {
                served: self.card.task.as_str(),
                asked: "an encoder's task (embeddings, rerank, classify)",
            });
        };
        if inputs.is_empty() {
            return Err(EngineError::invalid(
                field,
                format!("`{field}` must not be empty"),
            ));
        }
        if inputs.len() > self.limits.max_inputs {
            return Err(EngineError::invalid(
                field,
                format!(
                    "{} inputs in one request; the maximum is {}",
                    inputs.len(),
                    self.limits.max_inputs
                ),
            ));
        }
        let prompt = self.prompt(serving, options.prompt_name.as_deref())?;
        let dimensions = match options.dimensions {
            None => None,
            Some(d) => {
                let width = match self.card.dimensions {
                    Some(w) if self.card.task == Task::Embeddings => w,
                    _ => {
                        return Err(EngineError::invalid(
                            "dimensions",
                            "`dimensions` applies to embeddings only",
                        ));
                    }
                };
                if d == 0 || d > width {
                    return Err(EngineError::invalid(
                        "dimensions",
                        format!("`dimensions` must be between 1 and this model's {width}"),
                    ));
                }
                // The full width is the vectors as they are.
                (d < width).then_some(d)
            }
        };
        let max = self.card.max_context;
        let mut sequences = Vec::with_capacity(inputs.len());
        for (i, input) in inputs.iter().enumerate() {
            let empty = |what: &str| {
                EngineError::invalid(field, format!("{field}[{i}] is an empty {what}"))
            };
            let cut = options.truncate.then_some(max);
            let sequence = match input {
                EncodeInput::Text(t) if t.is_empty() => return Err(empty("string")),
                EncodeInput::Text(t) => {
                    let text = prompted(prompt, t);
                    let (ids, type_ids) = self
                        .tokenizer
                        .encode_sequence(&text, None, cut)
                        .map_err(|e| EngineError::invalid(field, format!("{field}[{i}]: {e}")))?;
                    Sequence { ids, type_ids }
                }
                EncodeInput::Pair(a, b) => {
                    if self.card.task == Task::Embeddings {
                        return Err(EngineError::invalid(
                            field,
                            "this model embeds single texts, not pairs",
                        ));
                    }
                    if a.is_empty() || b.is_empty() {
                        return Err(empty("text in a pair"));
                    }
                    let a = prompted(prompt, a);
                    let (ids, type_ids) = self
                        .tokenizer
                        .encode_sequence(&a, Some(b), cut)
                        .map_err(|e| EngineError::invalid(field, format!("{field}[{i}]: {e}")))?;
                    Sequence { ids, type_ids }
                }
                EncodeInput::Tokens(_) if options.prompt_name.is_some() => {
                    return Err(EngineError::invalid(
                        "prompt_name",
                        "a prompt cannot be put before token ids: send the text",
                    ));
                }
                EncodeInput::Tokens(ids) => {
                    if ids.is_empty() {
                        return Err(empty("token list"));
                    }
                    if let Some(j) = ids
                        .iter()
                        .position(|&id| self.tokenizer.id_to_token(id).is_none())
                    {
                        return Err(EngineError::invalid(
                            field,
                            format!(
                                "{field}[{i}][{j}] = {} is not in this model's vocabulary",
                                ids[j]
                            ),
                        ));
                    }
                    let mut ids = ids.clone();
                    if options.truncate {
                        ids.truncate(max);
                    }
                    Sequence::single(ids)
                }
            };
            if let Some(rows) = serving.token_rows
                && let Some(j) = sequence.ids.iter().position(|&id| id as usize >= rows)
            {
                return Err(EngineError::invalid(
                    field,
                    format!(
                        "{field}[{i}]: token {} at {j} is past this model's {rows}-row token table",
                        sequence.ids[j]
                    ),
                ));
            }
            if sequence.len() > max {
                return Err(EngineError::invalid(
                    field,
                    format!(
                        "{field}[{i}] has {} tokens, more than the maximum of {max}; shorten it or set `truncate: true`",
                        sequence.len()
                    ),
                ));
            }
            sequences.push(sequence);
        }
        Ok(EncodeInputs {
            sequences,
            dimensions,
        })
    }

    /// The text of the prompt `name` (or of the model's default prompt).
    fn prompt<'a>(
        &self,
        serving: &'a EncoderServing,
        name: Option<&str>,
    ) -> Result<Option<&'a str>, EngineError> {
        let prompts = &serving.prompts;
        let Some(name) = name.or(prompts.default.as_deref()) else {
            return Ok(None);
        };
        match prompts.named.get(name) {
            Some(text) => Ok(Some(text)),
            None if prompts.named.is_empty() => Err(EngineError::invalid(
                "prompt_name",
                format!("prompt `{name}` is not defined: this model has no prompts"),
            )),
            None => Err(EngineError::invalid(
                "prompt_name",
                format!(
                    "prompt `{name}` is not defined; this model's prompts are {}",
                    prompts
                        .named
                        .keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }

    /// Vectors for inputs from [`Engine::tokenize_inputs`], in order.
    pub async fn embed_tokens(&self, inputs: EncodeInputs) -> Result<Embeddings, EngineError> {
        let encoder = self.scheduler(Task::Embeddings)?;
        let EncodeInputs {
            sequences,
            dimensions,
        } = inputs;
        let prompt_tokens = sequences.iter().map(Sequence::len).sum();
        let mut vectors = encoder.encode(sequences).await?;
        if let Some(d) = dimensions {
            for v in &mut vectors {
                matryoshka(v, d);
            }
        }
        Ok(Embeddings {
            vectors,
            prompt_tokens,
        })
    }

    /// A classifier's or reranker's logits and scores for inputs from
    /// [`Engine::tokenize_inputs`], in order.
    pub async fn score_tokens(&self, inputs: EncodeInputs) -> Result<Scores, EngineError> {
        let (encoder, activation) = match &self.worker {
            Worker::Encode { encoder, serving }
                if matches!(self.card.task, Task::Rerank | Task::Classify) =>
            {
                (
                    encoder,
                    serving.activation.unwrap_or(ScoreActivation::Identity),
                )
            }
            _ => return Err(self.wrong_task(Task::Classify)),
        };
        let prompt_tokens = inputs.tokens();
        let logits = encoder.encode(inputs.sequences).await?;
        let scores = logits.iter().map(|l| activation.apply(l)).collect();
        Ok(Scores {
            logits,
            scores,
            prompt_tokens,
        })
    }

    /// The encoder's scheduler, if this model serves `task`.
    fn scheduler(&self, task: Task) -> Result<&Embedder, EngineError> {
        match &self.worker {
            Worker::Encode { encoder, .. } if self.card.task == task => Ok(encoder),
            _ => Err(self.wrong_task(task)),
        }
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
            Worker::Encode { .. } => match self.card.task {
                Task::Rerank => vec!["rerank", "classify"],
                Task::Classify => vec!["classify"],
                _ => vec!["embedding"],
            },
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
        self.generates()?;
        let (ids, field) = self.prompt_ids(prompt, request.tools.as_ref())?;
        self.start(ids, field, request, None)
    }

    /// Starts scoring `continuation` after `prompt` teacher-forced: the
    /// prompt as [`Engine::generate`] writes it, the continuation's tokens
    /// after it, nothing generated. The stream's `Prompt` event holds every
    /// token's log-probability, the `top` most likely at its place and
    /// those of `also[i]` at continuation token i. Returns the stream and
    /// how many tokens are the prompt's.
    pub fn score_continuation(
        &self,
        prompt: &Prompt,
        tools: Option<&Tools>,
        continuation: &str,
        top: usize,
        also: &[Vec<u32>],
    ) -> Result<(GenerationStream, usize), EngineError> {
        self.generates()?;
        let (mut ids, field) = self.prompt_ids(prompt, tools)?;
        let prompt_tokens = ids.len();
        let continued = self
            .tokenizer
            .encode(continuation, false)
            .map_err(|e| EngineError::invalid("continuation", e))?;
        if continued.is_empty() {
            return Err(EngineError::invalid(
                "continuation",
                "`continuation` has no tokens",
            ));
        }
        if also.len() > continued.len() {
            return Err(EngineError::invalid(
                "also",
                format!(
                    "{} lists of ids for a continuation of {} tokens",
                    also.len(),
                    continued.len()
                ),
            ));
        }
        if let Some(id) = also
            .iter()
            .flatten()
            .find(|&&id| self.tokenizer.id_to_token(id).is_none())
        {
            return Err(EngineError::invalid(
                "also",
                format!("token {id} is not in this model's vocabulary"),
            ));
        }
        ids.extend(continued);
        let request = GenerateRequest {
            max_tokens: Some(0),
            prompt_logprobs: Some(top),
            ..GenerateRequest::default()
        };
        // Prompt position p + prompt_tokens is continuation token p.
        let mut at: Vec<Vec<u32>> = vec![Vec::new(); prompt_tokens];
        at.extend(also.iter().cloned());
        let (mut streams, _) = self.start(ids, field, &request, Some(at.into()))?;
        let stream = streams
            .pop()
            .ok_or_else(|| EngineError::Backend(crate::BackendError("no stream".into())))?;
        Ok((stream, prompt_tokens))
    }

    /// `Ok` for a generative model, the wrong-task error otherwise: said
    /// before the prompt is read, so an embedding model asked to generate
    /// says that rather than what its prompt lacks.
    fn generates(&self) -> Result<(), EngineError> {
        match self.worker {
            Worker::Generate { .. } => Ok(()),
            _ => Err(self.wrong_task(Task::Generate)),
        }
    }

    /// The prompt's token ids as a generation sees them (a chat through the
    /// model's template), and the request field they came in.
    fn prompt_ids(
        &self,
        prompt: &Prompt,
        tools: Option<&Tools>,
    ) -> Result<(Vec<u32>, &'static str), EngineError> {
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
                return Ok((ids.clone(), "prompt"));
            }
            Prompt::Chat(messages) => {
                let offered = tools.filter(|t| t.offered());
                (self.render_chat(messages, offered, true)?, "messages")
            }
        };
        let ids = self
            .tokenizer
            .encode(&text, true)
            .map_err(|e| EngineError::invalid(field, e))?;
        Ok((ids, field))
    }

    fn start(
        &self,
        ids: Vec<u32>,
        field: &'static str,
        request: &GenerateRequest,
        prompt_also: Option<Arc<[Vec<u32>]>>,
    ) -> Result<(Vec<GenerationStream>, Vec<u32>), EngineError> {
        let Worker::Generate {
            generator,
            grammars,
            ..
        } = &self.worker
        else {
            return Err(self.wrong_task(Task::Generate));
        };
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
        let mut params = request.resolve(&Bounds {
            limits: &self.limits,
            max_context: self.card.max_context,
            tokenizer: &self.tokenizer,
            prompt_tokens: ids.len(),
            field,
        })?;
        if let Some(also) = prompt_also {
            params.prompt_also = also;
        }
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

/// `text` after the prompt, as sentence-transformers joins them.
fn prompted<'a>(prompt: Option<&str>, text: &'a str) -> std::borrow::Cow<'a, str> {
    match prompt {
        Some(p) => format!("{p}{text}").into(),
        None => text.into(),
    }
}

/// Keeps the first `dimensions` of `v` and rescales them to unit length
/// (Matryoshka embeddings are trained so that any prefix is one).
fn matryoshka(v: &mut Vec<f32>, dimensions: usize) {
    v.truncate(dimensions);
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
    for x in v.iter_mut() {
        *x /= norm;
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
