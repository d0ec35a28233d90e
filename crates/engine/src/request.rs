//! A generation request's knobs as a client sends them, and the one place
//! they are checked against the model and the serving limits and given
//! their defaults (OpenAI's, and vLLM's for its extensions).

use std::sync::Arc;

use modelship_model::TextTokenizer;
use modelship_types::ServingLimits;

use crate::engine::OutputFormat;
use crate::logits::Penalties;
use crate::tools::Tools;
use crate::{EngineError, GenerateParams, SamplingParams};

/// The most samples one request may ask for (OpenAI's limit).
pub const MAX_N: usize = 128;
/// The most alternatives a token's log-probability may list.
pub const MAX_TOP_LOGPROBS: usize = 20;
/// The most token ids one `logit_bias` may name.
pub const MAX_LOGIT_BIAS: usize = 1024;

/// Optional request knobs before defaults are applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GenerateRequest {
    pub max_tokens: Option<usize>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub seed: Option<u64>,
    pub stop: Vec<String>,
    pub min_p: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    /// (token id, bias), the ids as the client wrote them.
    pub logit_bias: Vec<(i64, f32)>,
    pub n: Option<usize>,
    /// Alternatives to list per generated token; `Some(0)`: the chosen
    /// token's log-probability only.
    pub logprobs: Option<usize>,
    /// The same for the prompt's tokens.
    pub prompt_logprobs: Option<usize>,
    pub format: Option<OutputFormat>,
    /// Chat only: the tools offered and what is demanded of them.
    pub tools: Option<Tools>,
}

/// What a request is checked against.
pub(crate) struct Bounds<'a> {
    pub limits: &'a ServingLimits,
    /// Tokens per sequence (the model's ∩ the limits').
    pub max_context: usize,
    pub tokenizer: &'a TextTokenizer,
    pub prompt_tokens: usize,
    /// The request field the prompt came in, for its errors.
    pub field: &'static str,
}

impl GenerateRequest {
    /// Applies defaults and checks every knob against `b`.
    pub(crate) fn resolve(&self, b: &Bounds) -> Result<GenerateParams, EngineError> {
        let r = self;
        let (prompt_tokens, field) = (b.prompt_tokens, b.field);
        let ctx = b.max_context;
        if prompt_tokens >= ctx {
            return Err(EngineError::invalid(
                field,
                format!(
                    "the prompt has {prompt_tokens} tokens; this model's maximum context is {ctx} tokens"
                ),
            ));
        }
        let room = ctx - prompt_tokens;
        let max_tokens = match r.max_tokens {
            None => b.limits.max_tokens.min(room),
            // Scoring a prompt (`echo` with `logprobs`) generates nothing.
            Some(0) if r.prompt_logprobs.is_some() => 0,
            Some(0) => {
                return Err(EngineError::invalid(
                    "max_tokens",
                    "`max_tokens` must be at least 1 (0 only to score the prompt: `echo` with `logprobs`)",
                ));
            }
            Some(n) if n > b.limits.max_tokens => {
                return Err(EngineError::invalid(
                    "max_tokens",
                    format!(
                        "`max_tokens` is {n}; the maximum is {}",
                        b.limits.max_tokens
                    ),
                ));
            }
            Some(n) if n > room => {
                return Err(EngineError::invalid(
                    "max_tokens",
                    format!(
                        "this model's maximum context is {ctx} tokens; the prompt has {prompt_tokens} and `max_tokens` asks for {n}"
                    ),
                ));
            }
            Some(n) => n,
        };
        let temperature = r.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(EngineError::invalid(
                "temperature",
                "`temperature` must be between 0 and 2",
            ));
        }
        let top_p = r.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(EngineError::invalid("top_p", "`top_p` must be in (0, 1]"));
        }
        if r.stop.len() > 4 {
            return Err(EngineError::invalid("stop", "at most 4 stop sequences"));
        }
        let min_p = in_range("min_p", r.min_p, 0.0, 0.0..=1.0)?;
        let penalties = Penalties {
            presence: in_range("presence_penalty", r.presence_penalty, 0.0, -2.0..=2.0)?,
            frequency: in_range("frequency_penalty", r.frequency_penalty, 0.0, -2.0..=2.0)?,
            repetition: in_range("repetition_penalty", r.repetition_penalty, 1.0, 0.01..=10.0)?,
        };
        let n = r.n.unwrap_or(1);
        let most = MAX_N.min(b.limits.max_concurrent);
        if n == 0 || n > most {
            return Err(EngineError::invalid(
                "n",
                format!("`n` is {n}: it must be between 1 and {most} on this replica"),
            ));
        }
        for (field, top) in [
            ("logprobs", r.logprobs),
            ("prompt_logprobs", r.prompt_logprobs),
        ] {
            if top.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
                return Err(EngineError::invalid(
                    field,
                    format!("at most {MAX_TOP_LOGPROBS} alternatives per token"),
                ));
            }
        }
        Ok(GenerateParams {
            max_tokens,
            sampling: SamplingParams {
                temperature,
                top_p,
                top_k: r.top_k.unwrap_or(0),
                min_p,
                seed: r.seed,
            },
            stop: r.stop.clone(),
            penalties,
            logit_bias: logit_bias(&r.logit_bias, b.tokenizer)?,
            logprobs: r.logprobs,
            prompt_logprobs: r.prompt_logprobs,
            prompt_also: Arc::from(Vec::new()),
            n,
        })
    }
}

/// Checks a `logit_bias`: ids in the vocabulary, biases in [−100, 100].
fn logit_bias(
    bias: &[(i64, f32)],
    tokenizer: &TextTokenizer,
) -> Result<Vec<(u32, f32)>, EngineError> {
    if bias.len() > MAX_LOGIT_BIAS {
        return Err(EngineError::invalid(
            "logit_bias",
            format!("{} tokens; at most {MAX_LOGIT_BIAS}", bias.len()),
        ));
    }
    bias.iter()
        .map(|&(id, b)| {
            let token = u32::try_from(id)
                .ok()
                .filter(|&t| tokenizer.id_to_token(t).is_some())
                .ok_or_else(|| {
                    EngineError::invalid(
                        "logit_bias",
                        format!("token {id} is not in this model's vocabulary"),
                    )
                })?;
            if !(-100.0..=100.0).contains(&b) {
                return Err(EngineError::invalid(
                    "logit_bias",
                    format!("the bias of token {id} is {b}: it must be between -100 and 100"),
                ));
            }
            Ok((token, b))
        })
        .collect()
}

/// `value` (or `default`) when within `range`, else an error naming `field`.
fn in_range(
    field: &'static str,
    value: Option<f32>,
    default: f32,
    range: std::ops::RangeInclusive<f32>,
) -> Result<f32, EngineError> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(EngineError::invalid(
            field,
            format!(
                "`{field}` is {v}: it must be between {} and {}",
                range.start(),
                range.end()
            ),
        ))
    }
}
