//! The choices of a completion in OpenAI's shapes, whole or streamed as
//! server-sent events ending in `data: [DONE]`: one generation stream per
//! choice, each chunk carrying one choice's `index`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::Event;
use futures::{Stream, StreamExt};
use modelship_engine::{
    Engine, FinishReason, GenerationEvent, GenerationStream, TokenLogprob, ToolOutput, ToolParser,
    Usage,
};
use modelship_model::ToolFormat;
use serde_json::{Map, Value, json};
use tokio_stream::wrappers::UnboundedReceiverStream;

use crate::error::ApiError;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Text,
    Chat,
}

/// One choice to generate: its stream and what its text starts with.
pub(crate) struct Sample {
    pub events: GenerationStream,
    /// Completions' `echo`: the prompt, sent before the generated text.
    pub echo: Option<String>,
}

/// What every chunk repeats, and how to spell tokens.
#[derive(Clone)]
pub(crate) struct Reply {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
    engine: Arc<Engine>,
    /// The prompts' tokens, counted once each however many samples.
    prompt_tokens: usize,
    /// Chat with tools offered: how the model writes calls, and whether
    /// one turn may make several.
    tools: Option<(ToolFormat, bool)>,
}

impl Reply {
    pub(crate) fn new(engine: Arc<Engine>, kind: Kind) -> Self {
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
            model: engine.card().name.clone(),
            kind,
            engine,
            prompt_tokens: 0,
            tools: None,
        }
    }

    /// The usage counts `prompt_tokens` for the prompts.
    pub(crate) fn counting(mut self, prompt_tokens: usize) -> Self {
        self.prompt_tokens = prompt_tokens;
        self
    }

    /// Parses tool calls out of every sample's text.
    pub(crate) fn with_tools(mut self, format: ToolFormat, parallel: bool) -> Self {
        self.tools = Some((format, parallel));
        self
    }

    fn parser(&self) -> Option<ToolParser> {
        self.tools
            .map(|(format, parallel)| ToolParser::new(format, parallel))
    }

    fn object(&self, chunk: bool) -> &'static str {
        match (self.kind, chunk) {
            (Kind::Text, _) => "text_completion",
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
        }
    }

    fn envelope(&self, chunk: bool, choices: Vec<Value>, usage: Option<Usage>) -> Value {
        let mut v = json!({
            "id": self.id,
            "object": self.object(chunk),
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        if let Some(u) = usage {
            v["usage"] = json!({
                "prompt_tokens": u.prompt_tokens,
                "completion_tokens": u.completion_tokens,
                "total_tokens": u.prompt_tokens + u.completion_tokens,
            });
        }
        v
    }

    /// The whole response once every sample is done.
    pub(crate) async fn whole(&self, samples: Vec<Sample>) -> Result<Value, ApiError> {
        let done = futures::future::join_all(samples.into_iter().map(collect)).await;
        let mut usage = Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: 0,
        };
        let mut choices = Vec::with_capacity(done.len());
        for (index, c) in done.into_iter().enumerate() {
            let c = c?;
            usage.completion_tokens += c.usage.completion_tokens;
            let logprobs = c
                .logprobs
                .as_ref()
                .map(|(tokens, spans)| self.logprobs(tokens, spans));
            choices.push(match self.kind {
                Kind::Text => json!({
                    "index": index, "text": c.text, "logprobs": logprobs,
                    "finish_reason": c.finish.as_str(),
                }),
                Kind::Chat => {
                    let (message, called) = self.message(c.text);
                    json!({
                        "index": index, "message": message, "logprobs": logprobs,
                        "finish_reason": finish_reason(c.finish, called),
                    })
                }
            });
        }
        Ok(self.envelope(false, choices, Some(usage)))
    }

    /// A whole chat message: its content, and its tool calls when tools
    /// were offered; whether any call was made.
    fn message(&self, text: String) -> (Value, bool) {
        let Some(mut parser) = self.parser() else {
            return (
                json!({"role": "assistant", "content": text, "refusal": null}),
                false,
            );
        };
        let mut outputs = parser.push(&text);
        outputs.extend(parser.finish());
        let mut content = String::new();
        let mut calls = Vec::new();
        for o in outputs {
            match o {
                ToolOutput::Content(c) => content.push_str(&c),
                ToolOutput::Call {
                    name, arguments, ..
                } => calls.push(tool_call(None, &name, &arguments)),
            }
        }
        let called = !calls.is_empty();
        let content = if called && content.trim().is_empty() {
            Value::Null
        } else {
            json!(content)
        };
        let mut message = json!({"role": "assistant", "content": content, "refusal": null});
        if called {
            message["tool_calls"] = json!(calls);
        }
        (message, called)
    }

    /// Server-sent events: each sample's pieces as they come, a closing
    /// chunk per sample, the usage when asked, then `[DONE]`.
    pub(crate) fn stream(
        self,
        samples: Vec<Sample>,
        include_usage: bool,
    ) -> impl Stream<Item = Result<Event, Infallible>> {
        let total = samples.len();
        let streams = samples.into_iter().enumerate().map(|(index, s)| {
            let echo = s.echo;
            UnboundedReceiverStream::new(s.events)
                .scan(echo, move |echo, ev| {
                    futures::future::ready(Some((index, echo.take(), ev)))
                })
                .boxed()
        });
        let progress = Progress {
            usage: Usage {
                prompt_tokens: self.prompt_tokens,
                completion_tokens: 0,
            },
            offsets: vec![0; total],
            parsers: (0..total).map(|_| self.parser()).collect(),
            firsts: vec![true; total],
            finished: 0,
            total,
            include_usage,
        };
        let merged = futures::stream::select_all(streams);
        futures::stream::unfold(Some((merged, progress)), move |state| {
            let reply = self.clone();
            async move {
                let (mut merged, mut progress) = state?;
                let (values, last) = match merged.next().await {
                    Some(item) => reply.on_event(&mut progress, item),
                    None => (Vec::new(), true),
                };
                let mut events: Vec<Result<Event, Infallible>> = values
                    .into_iter()
                    .map(|v| Ok(Event::default().data(v.to_string())))
                    .collect();
                if last {
                    events.push(Ok(Event::default().data("[DONE]")));
                }
                Some((events, (!last).then_some((merged, progress))))
            }
        })
        .flat_map(futures::stream::iter)
    }

    /// The chunks one event of sample `index` makes; whether they are the last.
    fn on_event(
        &self,
        p: &mut Progress,
        (index, echo, ev): (usize, Option<String>, GenerationEvent),
    ) -> (Vec<Value>, bool) {
        let mut out = Vec::new();
        // The echo goes first, with the prompt's log-probabilities when
        // they are what came.
        let ev = match (echo, ev) {
            (Some(text), GenerationEvent::Prompt(lp)) => {
                out.push(self.piece(p, index, Some(&text), Some(&lp[..])));
                None
            }
            (Some(text), ev) => {
                out.push(self.piece(p, index, Some(&text), None));
                Some(ev)
            }
            (None, GenerationEvent::Prompt(_)) => None,
            (None, ev) => Some(ev),
        };
        match ev {
            None | Some(GenerationEvent::Prompt(_)) => {}
            Some(GenerationEvent::Text { text, logprobs }) => {
                let lp = (!logprobs.is_empty()).then_some(&logprobs[..]);
                match p.parsers[index].as_mut().map(|parser| parser.push(&text)) {
                    None => out.push(self.piece(p, index, Some(&text), lp)),
                    Some(outputs) => self.tool_outputs(p, index, outputs, lp, &mut out),
                }
            }
            Some(GenerationEvent::Done { reason, usage }) => {
                if let Some(outputs) = p.parsers[index].as_mut().map(ToolParser::finish) {
                    self.tool_outputs(p, index, outputs, None, &mut out);
                }
                let called = p.parsers[index].as_ref().is_some_and(|t| t.calls() > 0);
                p.usage.completion_tokens += usage.completion_tokens;
                out.push(self.closing(p, index, finish_reason(reason, called)));
                p.finished += 1;
            }
            Some(GenerationEvent::Failed(e)) => {
                let e = ApiError::from(e);
                out.push(json!({"error": {"message": e.message, "type": "server_error"}}));
                return (out, true);
            }
        }
        let all_done = p.finished == p.total;
        if all_done && p.include_usage {
            out.push(self.envelope(true, Vec::new(), Some(p.usage)));
        }
        (out, all_done)
    }

    /// Chunks for what a tool parser gave back: content pieces and whole
    /// calls (OpenAI's incremental `tool_calls` deltas, each call in one).
    /// Log-probabilities go with the first chunk, or one of their own.
    fn tool_outputs(
        &self,
        p: &mut Progress,
        index: usize,
        outputs: Vec<ToolOutput>,
        mut logprobs: Option<&[TokenLogprob]>,
        out: &mut Vec<Value>,
    ) {
        for o in outputs {
            match o {
                ToolOutput::Content(text) => {
                    out.push(self.piece(p, index, Some(&text), logprobs.take()));
                }
                ToolOutput::Call {
                    index: k,
                    name,
                    arguments,
                } => {
                    let mut delta = self.delta(p, index);
                    delta.insert(
                        "tool_calls".into(),
                        json!([tool_call(Some(k), &name, &arguments)]),
                    );
                    let at = Span::at(p.offsets[index], "");
                    let lp = logprobs
                        .take()
                        .map(|l| self.logprobs(l, &vec![at; l.len()]));
                    out.push(self.envelope(
                        true,
                        vec![json!({"index": index, "delta": delta, "logprobs": lp, "finish_reason": null})],
                        None,
                    ));
                }
            }
        }
        if logprobs.is_some() {
            out.push(self.piece(p, index, None, logprobs));
        }
    }

    /// A chat delta, with the role on a choice's first.
    fn delta(&self, p: &mut Progress, index: usize) -> Map<String, Value> {
        let mut delta = Map::new();
        if std::mem::replace(&mut p.firsts[index], false) {
            delta.insert("role".into(), json!("assistant"));
        }
        delta
    }

    /// A streamed piece of one choice's text.
    fn piece(
        &self,
        p: &mut Progress,
        index: usize,
        text: Option<&str>,
        logprobs: Option<&[TokenLogprob]>,
    ) -> Value {
        let offset = &mut p.offsets[index];
        let span = Span::at(*offset, text.unwrap_or(""));
        let lp = logprobs.map(|l| self.logprobs(l, &vec![span; l.len()]));
        *offset += span.chars;
        let choice = match self.kind {
            Kind::Text => json!({
                "index": index, "text": text.unwrap_or(""), "logprobs": lp, "finish_reason": null,
            }),
            Kind::Chat => {
                let mut delta = self.delta(p, index);
                if let Some(t) = text {
                    delta.insert("content".into(), json!(t));
                }
                json!({"index": index, "delta": delta, "logprobs": lp, "finish_reason": null})
            }
        };
        self.envelope(true, vec![choice], None)
    }

    fn closing(&self, p: &mut Progress, index: usize, reason: &str) -> Value {
        let choice = match self.kind {
            Kind::Text => json!({
                "index": index, "text": "", "logprobs": null, "finish_reason": reason,
            }),
            Kind::Chat => {
                let delta = self.delta(p, index);
                json!({"index": index, "delta": delta, "logprobs": null, "finish_reason": reason})
            }
        };
        self.envelope(true, vec![choice], None)
    }

    /// Log-probabilities in the route's shape: chat's `content` list, or
    /// completions' parallel lists. A token's `text_offset` is where its
    /// text starts in the choice's text: within the piece it came with
    /// (`spans`, one per token), at its spelling's length from the token
    /// before, never past the piece's end (a token whose text was held
    /// back, or a special token the text leaves out, ends there).
    fn logprobs(&self, tokens: &[TokenLogprob], spans: &[Span]) -> Value {
        let spell = |id: u32| -> (String, Vec<u8>) {
            let bytes = self
                .engine
                .token_bytes(id)
                .map(|t| t.bytes.clone())
                .unwrap_or_default();
            (String::from_utf8_lossy(&bytes).into_owned(), bytes)
        };
        match self.kind {
            Kind::Chat => {
                let content: Vec<Value> = tokens
                    .iter()
                    .map(|t| {
                        let (token, bytes) = spell(t.token);
                        let top: Vec<Value> = t
                            .top
                            .iter()
                            .map(|&(id, lp)| {
                                let (token, bytes) = spell(id);
                                json!({"token": token, "logprob": lp, "bytes": bytes})
                            })
                            .collect();
                        json!({"token": token, "logprob": t.logprob, "bytes": bytes, "top_logprobs": top})
                    })
                    .collect();
                json!({"content": content, "refusal": null})
            }
            Kind::Text => {
                let (mut names, mut lps, mut tops, mut offsets) =
                    (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                let (mut piece, mut within) = (None, 0);
                for (t, span) in tokens.iter().zip(spans) {
                    let (token, _) = spell(t.token);
                    if piece != Some(span.start) {
                        (piece, within) = (Some(span.start), 0);
                    }
                    offsets.push(span.start + within.min(span.chars));
                    within += token.chars().count();
                    names.push(token);
                    lps.push(json!(t.logprob));
                    tops.push(match t.logprob {
                        None => Value::Null,
                        Some(_) => Value::Object(
                            t.top
                                .iter()
                                .map(|&(id, lp)| (spell(id).0, json!(lp)))
                                .collect(),
                        ),
                    });
                }
                json!({"tokens": names, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets})
            }
        }
    }
}

/// Where a streamed response stands.
struct Progress {
    usage: Usage,
    /// Per sample: characters sent so far (completions' text offsets).
    offsets: Vec<usize>,
    /// Per sample: its tool-call parser, when tools were offered.
    parsers: Vec<Option<ToolParser>>,
    /// Per sample: nothing sent yet (the role goes on the first delta).
    firsts: Vec<bool>,
    finished: usize,
    total: usize,
    include_usage: bool,
}

/// `tool_calls` when the model stopped after calling tools.
fn finish_reason(reason: FinishReason, called: bool) -> &'static str {
    if called && reason == FinishReason::Stop {
        "tool_calls"
    } else {
        reason.as_str()
    }
}

/// One call in OpenAI's shape (streamed deltas carry their `index`).
fn tool_call(index: Option<usize>, name: &str, arguments: &Value) -> Value {
    let mut call = json!({
        "id": format!("call_{:024x}", u128::from(random_u64()) << 32 | u128::from(random_u64() as u32)),
        "type": "function",
        "function": {"name": name, "arguments": arguments.to_string()},
    });
    if let Some(k) = index {
        call["index"] = json!(k);
    }
    call
}

/// One sample, whole.
pub(crate) struct Collected {
    pub text: String,
    pub finish: FinishReason,
    pub usage: Usage,
    /// Echoed prompt tokens first, when asked for, each with the piece of
    /// text it came with.
    pub logprobs: Option<(Vec<TokenLogprob>, Vec<Span>)>,
}

/// A piece of a choice's text: where it starts and its length, in
/// characters (OpenAI's `text_offset` unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    start: usize,
    chars: usize,
}

impl Span {
    fn at(start: usize, text: &str) -> Self {
        Self {
            start,
            chars: text.chars().count(),
        }
    }
}

/// Waits for a whole sample.
pub(crate) async fn collect(sample: Sample) -> Result<Collected, ApiError> {
    let Sample { mut events, echo } = sample;
    let mut text = echo.unwrap_or_default();
    let mut logprobs: Option<(Vec<TokenLogprob>, Vec<Span>)> = None;
    let add = |to: &mut Option<(Vec<TokenLogprob>, Vec<Span>)>, lp: &[TokenLogprob], span| {
        let (tokens, spans) = to.get_or_insert_default();
        tokens.extend_from_slice(lp);
        spans.extend(std::iter::repeat_n(span, lp.len()));
    };
    while let Some(ev) = events.recv().await {
        match ev {
            // The echo: the text starts with the prompt.
            GenerationEvent::Prompt(lp) => add(&mut logprobs, &lp, Span::at(0, &text)),
            GenerationEvent::Text {
                text: t,
                logprobs: lp,
            } => {
                if !lp.is_empty() {
                    add(&mut logprobs, &lp, Span::at(text.chars().count(), &t));
                }
                text.push_str(&t);
            }
            GenerationEvent::Done { reason, usage } => {
                return Ok(Collected {
                    text,
                    finish: reason,
                    usage,
                    logprobs,
                });
            }
            GenerationEvent::Failed(e) => return Err(e.into()),
        }
    }
    Err(ApiError::unavailable("the generation stopped unexpectedly"))
}

fn random_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::Instant::now())
}
