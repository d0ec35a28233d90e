//! Transformer encoders — BERT, RoBERTa, XLM-RoBERTa, MPNet — as one
//! description: their shape, how positions and segments are numbered, and
//! what comes out (a pooled vector, or a classifier's scores). Read from a
//! Hugging Face directory or from the GGUF modelship writes for them, and
//! written back as GGUF metadata; the tensors' GGUF names live here too, so
//! the engine's two loaders and the quantizer agree on them.
//!
//! llama.cpp has BERT (and reads RoBERTa-style files as BERT with the
//! position table cut); it has no MPNet. modelship's GGUF for every encoder
//! uses llama.cpp's BERT tensor names and `{arch}.*` keys, plus:
//! - `modelship.position_offset`: the first position row a token uses
//!   (RoBERTa and MPNet start at `pad_token_id + 1`; the table is kept whole);
//! - `mpnet.attention.relative_buckets` / `mpnet.attention.relative_max_distance`
//!   and the tensor `rel_attn_bias.weight` (buckets × heads) for MPNet's
//!   relative position bias;
//! - `cls.weight`/`cls.bias` (the head's hidden × hidden dense: BERT's
//!   pooler, RoBERTa's `classifier.dense`) and `cls.output.*` (labels × hidden),
//!   with `{arch}.classifier.output_labels` and `modelship.score_activation`;
//! - `modelship.prompts` (sentence-transformers' prompts, a JSON object) and
//!   `modelship.default_prompt_name`.

use std::collections::BTreeMap;

use candle_core::quantized::gguf_file::Value;
use modelship_types::Task;
use serde_json::Value as Json;

use crate::{GgufFile, HfModel, ModelError, NORMALIZE_KEY, POOLING_KEY, Pooling};

/// GGUF key of the first position row a token uses.
pub const POSITION_OFFSET_KEY: &str = "modelship.position_offset";
/// GGUF key of a classifier's activation ([`ScoreActivation`] name).
pub const ACTIVATION_KEY: &str = "modelship.score_activation";
/// GGUF key of sentence-transformers' prompts, a JSON object.
pub const PROMPTS_KEY: &str = "modelship.prompts";
/// GGUF key of the prompt used when a request names none.
pub const DEFAULT_PROMPT_KEY: &str = "modelship.default_prompt_name";

/// The encoder families modelship serves, as `model_type` names them.
pub const ENCODER_TYPES: &str = "bert, roberta, xlm-roberta, mpnet";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderFamily {
    Bert,
    Roberta,
    XlmRoberta,
    MpNet,
}

impl EncoderFamily {
    /// From config.json's `model_type` or GGUF's `general.architecture`.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "bert" => Self::Bert,
            "roberta" => Self::Roberta,
            "xlm-roberta" => Self::XlmRoberta,
            "mpnet" => Self::MpNet,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Bert => "bert",
            Self::Roberta => "roberta",
            Self::XlmRoberta => "xlm-roberta",
            Self::MpNet => "mpnet",
        }
    }

    /// The attribute a `*For…` model keeps the encoder under
    /// (`roberta.embeddings…`); base models saved alone have none.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Bert => "bert.",
            Self::Roberta | Self::XlmRoberta => "roberta.",
            Self::MpNet => "mpnet.",
        }
    }
}

/// MPNet's relative position bias: distances fall into `buckets` (half per
/// direction, exact up to a quarter of them, logarithmic up to
/// `max_distance`), each bucket a learned bias per head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelativeBuckets {
    pub buckets: usize,
    pub max_distance: usize,
}

impl RelativeBuckets {
    /// The bucket of key position minus query position `relative`, as
    /// MPNet (after T5) computes it, in f32 so the logarithmic buckets'
    /// boundaries fall where they fall in the trained model.
    pub fn bucket(self, relative: i64) -> usize {
        let half = self.buckets / 2;
        let n = -relative;
        let mut bucket = if n < 0 { half } else { 0 };
        let n = n.unsigned_abs() as usize;
        let exact = half / 2;
        if n < exact {
            bucket += n;
        } else {
            let scale = ((self.max_distance as f64) / (exact as f64)).ln() as f32;
            let log = ((n as f32) / (exact as f32)).ln() / scale * ((half - exact) as f32);
            bucket += exact.saturating_add(log as usize).min(half - 1);
        }
        bucket
    }
}

/// How a classifier's logits become scores: the activation a
/// sentence-transformers CrossEncoder saved, else the one Hugging Face's
/// `problem_type` trains for ([`ScoreActivation::for_head`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScoreActivation {
    Sigmoid,
    Softmax,
    Identity,
}

impl ScoreActivation {
    /// The rule: `problem_type` when config.json sets one
    /// (multi-label → sigmoid per label, single-label → softmax over labels,
    /// regression → the logits as they are); without one, a single label
    /// is a relevance score (sigmoid) and several are exclusive classes
    /// (softmax).
    pub fn for_head(problem_type: Option<&str>, labels: usize) -> Result<Self, String> {
        Ok(match problem_type {
            Some("multi_label_classification") => Self::Sigmoid,
            Some("single_label_classification") => Self::Softmax,
            Some("regression") => Self::Identity,
            Some(other) => {
                return Err(format!(
                    "problem_type `{other}` is not one of single_label_classification, multi_label_classification, regression"
                ));
            }
            None if labels == 1 => Self::Sigmoid,
            None => Self::Softmax,
        })
    }

    /// The activation a sentence-transformers CrossEncoder saves
    /// (`torch.nn.modules.activation.Sigmoid`, …).
    pub fn from_torch(path: &str) -> Option<Self> {
        match path.rsplit('.').next()? {
            "Sigmoid" => Some(Self::Sigmoid),
            "Softmax" => Some(Self::Softmax),
            "Identity" => Some(Self::Identity),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Sigmoid => "sigmoid",
            Self::Softmax => "softmax",
            Self::Identity => "identity",
        }
    }

    /// Scores from one input's logits.
    pub fn apply(self, logits: &[f32]) -> Vec<f32> {
        match self {
            Self::Identity => logits.to_vec(),
            Self::Sigmoid => logits.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
            Self::Softmax => {
                let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let exp: Vec<f32> = logits.iter().map(|&x| (x - max).exp()).collect();
                let sum: f32 = exp.iter().sum();
                exp.into_iter().map(|e| e / sum).collect()
            }
        }
    }
}

/// A sequence-classification head: labels in id order and how their logits
/// become scores.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassifierHead {
    pub labels: Vec<String>,
    pub activation: ScoreActivation,
}

/// What an encoder's forward pass returns for one input.
#[derive(Debug, Clone, PartialEq)]
pub enum EncoderOutput {
    /// One vector from the token vectors (sentence-transformers' Pooling,
    /// and its Normalize module when present).
    Pooled { pooling: Pooling, normalize: bool },
    /// The first token's vector through the head: one logit per label.
    Classifier(ClassifierHead),
}

/// sentence-transformers' prompts (`config_sentence_transformers.json`):
/// text put before an input, chosen per request by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prompts {
    pub named: BTreeMap<String, String>,
    /// Used when a request names none.
    pub default: Option<String>,
}

/// Everything the engine needs to know about an encoder besides its weights.
#[derive(Debug, Clone, PartialEq)]
pub struct Encoder {
    pub family: EncoderFamily,
    pub hidden: usize,
    pub heads: usize,
    /// Width of one attention head: `hidden / heads` as trained, narrower
    /// heads never; fewer heads after structured pruning leave
    /// `heads · head_dim` below `hidden` (GGUF `attention.key_length`).
    pub head_dim: usize,
    pub layers: usize,
    pub feed_forward: usize,
    pub eps: f64,
    /// Rows of the position table.
    pub positions: usize,
    /// The row the first token reads (`pad_token_id + 1` for RoBERTa and
    /// MPNet, whose position ids skip the padding row and those below it).
    pub position_offset: usize,
    /// Rows of the segment table (0: the model has none).
    pub token_types: usize,
    pub relative: Option<RelativeBuckets>,
    pub output: EncoderOutput,
    pub prompts: Prompts,
}

/// The head width of a model whose heads split its width evenly.
fn whole_heads(hidden: usize, heads: usize) -> Result<usize, String> {
    if hidden.is_multiple_of(heads) {
        Ok(hidden / heads)
    } else {
        Err(format!(
            "{hidden} is not a multiple of the {heads} attention heads"
        ))
    }
}

impl Encoder {
    /// Tokens one input may have: the position rows past the offset.
    pub fn context(&self) -> usize {
        self.positions.saturating_sub(self.position_offset)
    }

    /// What the model is served for.
    pub fn task(&self) -> Task {
        match &self.output {
            EncoderOutput::Pooled { .. } => Task::Embeddings,
            EncoderOutput::Classifier(h) if h.labels.len() == 1 => Task::Rerank,
            EncoderOutput::Classifier(_) => Task::Classify,
        }
    }

    /// The width of one output: the embedding size, or the label count.
    pub fn output_width(&self) -> usize {
        match &self.output {
            EncoderOutput::Pooled { .. } => self.hidden,
            EncoderOutput::Classifier(h) => h.labels.len(),
        }
    }

    /// From config.json and the sentence-transformers modules.
    pub fn from_hf(hf: &HfModel) -> Result<Self, ModelError> {
        let path = hf.dir.join("config.json");
        let c = &hf.config;
        let field = |name: &str, problem: &str| ModelError::Config {
            path: path.clone(),
            field: name.to_owned(),
            problem: problem.to_owned(),
        };
        let model_type = hf.model_type().unwrap_or("unknown");
        let family = EncoderFamily::from_name(model_type).ok_or_else(|| {
            ModelError::UnsupportedArchitecture {
                path: hf.dir.clone(),
                architecture: model_type.to_owned(),
                supported: ENCODER_TYPES,
            }
        })?;
        let count = |name: &str| -> Result<usize, ModelError> {
            c.get(name)
                .and_then(Json::as_u64)
                .filter(|&v| v > 0 && v <= 1 << 24)
                .map(|v| v as usize)
                .ok_or_else(|| field(name, "missing, zero or not a count"))
        };
        // A default stands in for an absent key only, not for a bad value.
        let count_or = |name: &str, default: usize| match c.get(name) {
            None | Some(Json::Null) => Ok(default),
            Some(_) => count(name),
        };
        let act = c.get("hidden_act").and_then(Json::as_str).unwrap_or("gelu");
        if act != "gelu" {
            return Err(field(
                "hidden_act",
                &format!("`{act}`; only gelu is served"),
            ));
        }
        if let Some(p) = c.get("position_embedding_type").and_then(Json::as_str)
            && p != "absolute"
        {
            return Err(field(
                "position_embedding_type",
                &format!("`{p}`; only absolute is served"),
            ));
        }
        // Position ids start past the padding row (RoBERTa's and MPNet's
        // `create_position_ids_from_input_ids`).
        let after_pad = || -> Result<usize, ModelError> {
            match c.get("pad_token_id") {
                None | Some(Json::Null) => Ok(2),
                Some(v) => v
                    .as_u64()
                    .filter(|&p| p < 1 << 24)
                    .map(|p| p as usize + 1)
                    .ok_or_else(|| field("pad_token_id", "not a token id")),
            }
        };
        let (position_offset, token_types, relative) = match family {
            EncoderFamily::Bert => (0, count_or("type_vocab_size", 2)?, None),
            EncoderFamily::Roberta | EncoderFamily::XlmRoberta => {
                (after_pad()?, count_or("type_vocab_size", 1)?, None)
            }
            EncoderFamily::MpNet => (
                after_pad()?,
                0,
                Some(RelativeBuckets {
                    buckets: count_or("relative_attention_num_buckets", 32)?,
                    // Fixed in the reference implementation, not configured.
                    max_distance: 128,
                }),
            ),
        };
        let default_eps = if family == EncoderFamily::Bert {
            1e-12
        } else {
            1e-5
        };
        let classifier = c
            .get("architectures")
            .and_then(Json::as_array)
            .into_iter()
            .flatten()
            .filter_map(Json::as_str)
            .any(|a| a.ends_with("ForSequenceClassification"));
        let output = if classifier {
            let labels = labels(c).map_err(|p| field("id2label", &p))?;
            // A CrossEncoder saved by sentence-transformers names its
            // activation; otherwise the problem type decides.
            let saved = c
                .pointer("/sentence_transformers/activation_fn")
                .and_then(Json::as_str);
            let activation = match saved {
                Some(f) => ScoreActivation::from_torch(f).ok_or_else(|| {
                    field(
                        "sentence_transformers.activation_fn",
                        &format!("`{f}` is not Sigmoid, Softmax or Identity"),
                    )
                })?,
                None => {
                    let problem = c.get("problem_type").and_then(Json::as_str);
                    ScoreActivation::for_head(problem, labels.len())
                        .map_err(|p| field("problem_type", &p))?
                }
            };
            EncoderOutput::Classifier(ClassifierHead { labels, activation })
        } else {
            EncoderOutput::Pooled {
                pooling: hf.pooling,
                normalize: hf.normalize,
            }
        };
        let encoder = Self {
            family,
            hidden: count("hidden_size")?,
            heads: count("num_attention_heads")?,
            head_dim: whole_heads(count("hidden_size")?, count("num_attention_heads")?)
                .map_err(|p| field("hidden_size", &p))?,
            layers: count("num_hidden_layers")?,
            feed_forward: count("intermediate_size")?,
            eps: c
                .get("layer_norm_eps")
                .and_then(Json::as_f64)
                .unwrap_or(default_eps),
            positions: count("max_position_embeddings")?,
            position_offset,
            token_types,
            relative,
            output,
            prompts: hf.prompts.clone(),
        };
        encoder
            .check()
            .map_err(|(hf_field, _, p)| field(hf_field, &p))?;
        Ok(encoder)
    }

    /// From the metadata [`Encoder::gguf_metadata`] writes (and llama.cpp's
    /// BERT files, which have no modelship keys).
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let arch = g.architecture()?;
        let family =
            EncoderFamily::from_name(arch).ok_or_else(|| ModelError::UnsupportedArchitecture {
                path: g.path.clone(),
                architecture: arch.to_owned(),
                supported: ENCODER_TYPES,
            })?;
        let count = |suffix: &str| -> Result<usize, ModelError> {
            let v = g.arch_uint(suffix)?;
            if v == 0 || v > 1 << 24 {
                return Err(ModelError::Metadata {
                    path: g.path.clone(),
                    key: format!("{arch}.{suffix}"),
                    problem: "zero or implausibly large",
                });
            }
            Ok(v as usize)
        };
        let optional = |key: &str| -> Result<Option<u64>, ModelError> {
            if g.has(key) {
                g.uint(key).map(Some)
            } else {
                Ok(None)
            }
        };
        let bad = |key: &str, problem: &'static str| ModelError::Metadata {
            path: g.path.clone(),
            key: key.to_owned(),
            problem,
        };
        let relative = match family {
            EncoderFamily::MpNet => Some(RelativeBuckets {
                buckets: count("attention.relative_buckets")?,
                max_distance: count("attention.relative_max_distance")?,
            }),
            _ => None,
        };
        let labels_key = format!("{arch}.classifier.output_labels");
        let output = if g.has(&labels_key) {
            let labels: Vec<String> = g
                .strings(&labels_key)?
                .into_iter()
                .map(str::to_owned)
                .collect();
            if labels.is_empty() {
                return Err(bad(&labels_key, "an empty list"));
            }
            let activation = match g.has(ACTIVATION_KEY) {
                true => serde_json::from_value(Json::String(g.string(ACTIVATION_KEY)?.into()))
                    .map_err(|_| bad(ACTIVATION_KEY, "not sigmoid, softmax or identity"))?,
                false => {
                    ScoreActivation::for_head(None, labels.len()).expect("no problem type is valid")
                }
            };
            EncoderOutput::Classifier(ClassifierHead { labels, activation })
        } else {
            let pooling = match g.has(POOLING_KEY) {
                true => serde_json::from_value(Json::String(g.string(POOLING_KEY)?.into()))
                    .map_err(|_| bad(POOLING_KEY, "not a pooling name"))?,
                // llama.cpp's `bert.pooling_type`: 0 (none) and 4 (rank,
                // a reranker without our labels) are not served.
                false => match optional(&format!("{arch}.pooling_type"))? {
                    None | Some(1) => Pooling::Mean,
                    Some(2) => Pooling::Cls,
                    Some(3) => Pooling::LastToken,
                    Some(_) => {
                        return Err(bad(
                            &format!("{arch}.pooling_type"),
                            "not mean (1), cls (2) or last (3): per-token and rank pooling are not served",
                        ));
                    }
                },
            };
            // llama.cpp's server normalizes embeddings unless told otherwise.
            let normalize = !g.has(NORMALIZE_KEY) || g.bool(NORMALIZE_KEY)?;
            EncoderOutput::Pooled { pooling, normalize }
        };
        let prompts = Prompts {
            named: match g.has(PROMPTS_KEY) {
                true => serde_json::from_str(g.string(PROMPTS_KEY)?)
                    .map_err(|_| bad(PROMPTS_KEY, "not a JSON object of strings"))?,
                false => BTreeMap::new(),
            },
            default: match g.has(DEFAULT_PROMPT_KEY) {
                true => Some(g.string(DEFAULT_PROMPT_KEY)?.to_owned()),
                false => None,
            },
        };
        let default_types = if family == EncoderFamily::MpNet { 0 } else { 2 };
        let (hidden, heads) = (count("embedding_length")?, count("attention.head_count")?);
        let head_dim = match optional(&format!("{arch}.attention.key_length"))? {
            Some(d) => {
                let value = optional(&format!("{arch}.attention.value_length"))?.unwrap_or(d);
                if value != d {
                    return Err(bad(
                        &format!("{arch}.attention.value_length"),
                        "differs from `attention.key_length`",
                    ));
                }
                d as usize
            }
            None => whole_heads(hidden, heads).map_err(|_| {
                bad(
                    &format!("{arch}.embedding_length"),
                    "not a multiple of the attention heads",
                )
            })?,
        };
        let encoder = Self {
            family,
            hidden,
            heads,
            head_dim,
            layers: count("block_count")?,
            feed_forward: count("feed_forward_length")?,
            eps: match g.has(&format!("{arch}.attention.layer_norm_epsilon")) {
                true => g.float(&format!("{arch}.attention.layer_norm_epsilon"))? as f64,
                false => 1e-12,
            },
            positions: count("context_length")?,
            position_offset: optional(POSITION_OFFSET_KEY)?.unwrap_or(0) as usize,
            token_types: optional("tokenizer.ggml.token_type_count")?.unwrap_or(default_types)
                as usize,
            relative,
            output,
            prompts,
        };
        if let Err((_, key, problem)) = encoder.check() {
            return Err(ModelError::Invalid {
                path: g.path.clone(),
                reason: format!("metadata `{}`: {problem}", key.replace("{arch}", arch)),
            });
        }
        Ok(encoder)
    }

    /// What must hold between the counts, whichever file they came from;
    /// a failure names the config.json field and the GGUF key at fault.
    fn check(&self) -> Result<(), (&'static str, &'static str, String)> {
        // Fewer heads than the width holds is a pruned model; more, a
        // config that does not match its tensors.
        if self.head_dim == 0
            || self
                .head_dim
                .checked_mul(self.heads)
                .is_none_or(|w| w > self.hidden)
        {
            return Err((
                "hidden_size",
                "{arch}.attention.key_length",
                format!(
                    "{} heads of {} do not fit the width {}",
                    self.heads, self.head_dim, self.hidden
                ),
            ));
        }
        if self.position_offset >= self.positions {
            return Err((
                "pad_token_id",
                POSITION_OFFSET_KEY,
                format!(
                    "the position offset {} leaves none of the {} positions",
                    self.position_offset, self.positions
                ),
            ));
        }
        if let Some(r) = self.relative
            && (!(4..=1024).contains(&r.buckets) || r.max_distance <= r.buckets / 4)
        {
            return Err((
                "relative_attention_num_buckets",
                "{arch}.attention.relative_buckets",
                format!(
                    "{} buckets (at most 1024) need a maximum distance above a quarter of them, not {}",
                    r.buckets, r.max_distance
                ),
            ));
        }
        if let Some(d) = &self.prompts.default
            && !self.prompts.named.contains_key(d)
        {
            return Err((
                "default_prompt_name",
                DEFAULT_PROMPT_KEY,
                format!("the default prompt `{d}` is not among the prompts"),
            ));
        }
        Ok(())
    }

    /// The GGUF metadata describing this encoder (not the tokenizer).
    pub fn gguf_metadata(&self, name: &str) -> Vec<(String, Value)> {
        let arch = self.family.name();
        let key = |suffix: &str| format!("{arch}.{suffix}");
        let u = |v: usize| Value::U32(v as u32);
        let mut md = vec![
            ("general.architecture".into(), Value::String(arch.into())),
            ("general.name".into(), Value::String(name.into())),
            (key("context_length"), u(self.positions)),
            (key("embedding_length"), u(self.hidden)),
            (key("feed_forward_length"), u(self.feed_forward)),
            (key("block_count"), u(self.layers)),
            (key("attention.head_count"), u(self.heads)),
            (key("attention.key_length"), u(self.head_dim)),
            (key("attention.value_length"), u(self.head_dim)),
            (
                key("attention.layer_norm_epsilon"),
                Value::F32(self.eps as f32),
            ),
            (key("attention.causal"), Value::Bool(false)),
            (
                "tokenizer.ggml.token_type_count".into(),
                u(self.token_types),
            ),
            (POSITION_OFFSET_KEY.into(), u(self.position_offset)),
        ];
        if let Some(r) = self.relative {
            md.push((key("attention.relative_buckets"), u(r.buckets)));
            md.push((key("attention.relative_max_distance"), u(r.max_distance)));
        }
        match &self.output {
            EncoderOutput::Pooled { pooling, normalize } => {
                let pooling_name = serde_json::to_value(pooling)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                md.push((POOLING_KEY.into(), Value::String(pooling_name)));
                md.push((NORMALIZE_KEY.into(), Value::Bool(*normalize)));
                // llama.cpp's values, for the pooling modes it has.
                let llama = match pooling {
                    Pooling::Mean => Some(1),
                    Pooling::Cls => Some(2),
                    Pooling::LastToken => Some(3),
                    Pooling::Max | Pooling::MeanSqrtLen => None,
                };
                if let Some(p) = llama {
                    md.push((key("pooling_type"), Value::U32(p)));
                }
            }
            EncoderOutput::Classifier(h) => {
                md.push((
                    key("classifier.output_labels"),
                    Value::Array(h.labels.iter().map(|l| Value::String(l.clone())).collect()),
                ));
                md.push((
                    ACTIVATION_KEY.into(),
                    Value::String(h.activation.name().into()),
                ));
            }
        }
        if !self.prompts.named.is_empty() {
            let json = serde_json::to_string(&self.prompts.named).expect("strings serialize");
            md.push((PROMPTS_KEY.into(), Value::String(json)));
        }
        if let Some(d) = &self.prompts.default {
            md.push((DEFAULT_PROMPT_KEY.into(), Value::String(d.clone())));
        }
        md
    }
}

/// Label names in id order from `id2label`, or `LABEL_i` for `num_labels`.
fn labels(c: &Json) -> Result<Vec<String>, String> {
    match c.get("id2label").and_then(Json::as_object) {
        Some(map) if !map.is_empty() => {
            let mut labels = vec![None; map.len()];
            for (id, name) in map {
                let slot = id
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| labels.get_mut(i))
                    .ok_or_else(|| format!("id `{id}` is not one of 0..{}", map.len()))?;
                if slot.is_some() {
                    return Err(format!("id `{id}` names a label given already"));
                }
                *slot = Some(
                    name.as_str()
                        .ok_or_else(|| format!("label {id} is not a string"))?
                        .to_owned(),
                );
            }
            // n distinct ids below n fill every slot.
            labels
                .into_iter()
                .collect::<Option<Vec<String>>>()
                .ok_or_else(|| "ids do not cover 0..n".to_owned())
        }
        _ => {
            let n = c
                .get("num_labels")
                .and_then(Json::as_u64)
                .filter(|&n| (1..=100_000).contains(&n))
                .ok_or("missing, and so is num_labels")?;
            Ok((0..n).map(|i| format!("LABEL_{i}")).collect())
        }
    }
}

/// The GGUF name of an encoder tensor stored under `hf` in a Hugging Face
/// checkpoint; `None` for tensors the served model does not use (an
/// embedding model's pooler, position ids, a masked-LM head), an error for
/// a name this family does not have.
pub fn gguf_tensor_name(
    family: EncoderFamily,
    hf: &str,
    classifier: bool,
) -> Result<Option<String>, String> {
    let unexpected = || format!("unexpected tensor `{hf}` for {}", family.name());
    let name = hf.strip_prefix(family.prefix()).unwrap_or(hf);
    if name == "embeddings.position_ids"
        || name.starts_with("lm_head.")
        || name.starts_with("cls.predictions.")
        || name.starts_with("cls.seq_relationship.")
        || (name.starts_with("pooler.") && !(classifier && family == EncoderFamily::Bert))
    {
        return Ok(None);
    }
    let (stem, suffix) = name.rsplit_once('.').ok_or_else(unexpected)?;
    let suffix = match suffix {
        "weight" | "gamma" => "weight",
        "bias" | "beta" => "bias",
        _ => return Err(unexpected()),
    };
    let fixed = match (family, stem) {
        (_, "embeddings.word_embeddings") => Some("token_embd"),
        (_, "embeddings.position_embeddings") => Some("position_embd"),
        (_, "embeddings.token_type_embeddings") => Some("token_types"),
        (_, "embeddings.LayerNorm") => Some("token_embd_norm"),
        (EncoderFamily::MpNet, "encoder.relative_attention_bias") => Some("rel_attn_bias"),
        (EncoderFamily::Bert, "pooler.dense") => Some("cls"),
        (EncoderFamily::Bert, "classifier") => Some("cls.output"),
        (_, "classifier.dense") => Some("cls"),
        (_, "classifier.out_proj") => Some("cls.output"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Ok(Some(format!("{f}.{suffix}")));
    }
    let rest = stem.strip_prefix("encoder.layer.").ok_or_else(unexpected)?;
    let (layer, part) = rest.split_once('.').ok_or_else(unexpected)?;
    let layer: usize = layer.parse().map_err(|_| unexpected())?;
    let gguf = match (family, part) {
        (EncoderFamily::MpNet, "attention.attn.q") => "attn_q",
        (EncoderFamily::MpNet, "attention.attn.k") => "attn_k",
        (EncoderFamily::MpNet, "attention.attn.v") => "attn_v",
        (EncoderFamily::MpNet, "attention.attn.o") => "attn_output",
        (EncoderFamily::MpNet, "attention.LayerNorm") => "attn_output_norm",
        (EncoderFamily::MpNet, _) if part.starts_with("attention.self.") => {
            return Err(unexpected());
        }
        (_, "attention.self.query") => "attn_q",
        (_, "attention.self.key") => "attn_k",
        (_, "attention.self.value") => "attn_v",
        (_, "attention.output.dense") => "attn_output",
        (_, "attention.output.LayerNorm") => "attn_output_norm",
        (_, "intermediate.dense") => "ffn_up",
        (_, "output.dense") => "ffn_down",
        (_, "output.LayerNorm") => "layer_output_norm",
        _ => return Err(unexpected()),
    };
    Ok(Some(format!("blk.{layer}.{gguf}.{suffix}")))
}

#[cfg(test)]
mod tests;
