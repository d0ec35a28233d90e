//! A Hugging Face decoder checkpoint read as the GGUF file llama.cpp's
//! converter (`convert_hf_to_gguf.py`) writes from it: config.json becomes the
//! `{arch}.*` metadata, tokenizer.json and tokenizer_config.json the
//! `tokenizer.*` metadata, and each tensor takes its GGUF name and the value
//! changes the converter makes (llama's Q and K rows reordered for its
//! interleaved rope, Gemma's norms stored as 1 + w). `serve` runs a checkpoint
//! through the same code as a GGUF file, and `quantize` writes exactly this,
//! so the two cannot drift apart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};
use serde_json::{Map, Value as Json};

use crate::hf::read_json;
use crate::tokenizer::{LLAMA3_PATTERN, QWEN2_PATTERN};
use crate::{Family, GgufFile, HfModel, ModelError};

/// config.json `model_type`s read as decoders, for error messages.
pub const CHECKPOINT_TYPES: &str = "llama, mistral, qwen2, qwen3, phi3, gemma2, gemma3_text";

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// A decoder checkpoint under its GGUF description.
pub struct DecoderCheckpoint {
    /// Metadata and tensor table of the GGUF it converts to (no data: read
    /// tensors with [`DecoderCheckpoint::read`]).
    pub gguf: GgufFile,
    /// In the order a GGUF writer writes them.
    pub tensors: Vec<CheckpointTensor>,
    family: Family,
    files: Vec<PathBuf>,
}

/// One tensor under its GGUF name.
#[derive(Debug, Clone)]
pub struct CheckpointTensor {
    pub name: String,
    /// Its name in the checkpoint.
    pub source: String,
    /// Type and shape (rows first) as converted.
    pub dtype: GgmlDType,
    pub shape: Vec<usize>,
    data: Data,
}

/// Where a tensor's values come from.
#[derive(Debug, Clone)]
enum Data {
    /// `len` bytes of type `stored` at `offset` of weight file `file`,
    /// changed by `change` when read.
    Stored {
        stored: GgmlDType,
        file: usize,
        offset: u64,
        len: u64,
        change: Change,
    },
    /// f32 values the converter computes from config.json (Llama 3's rope
    /// frequency factors).
    Computed(Vec<f32>),
}

/// A tensor's bytes in the checkpoint's files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredAt {
    /// Index into [`DecoderCheckpoint::weight_files`].
    pub file: usize,
    pub offset: u64,
    pub len: u64,
}

/// What the converter does to a tensor's values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    None,
    /// Within each of `heads` heads, rows (a, i) of the two halves become
    /// rows (i, a): llama's rope rotates adjacent pairs where Hugging Face's
    /// rotates halves.
    InterleaveHalves {
        heads: usize,
    },
    /// Stored as 1 + w in f32 (Gemma's norms compute x · (1 + w)).
    AddOne,
}

impl Change {
    /// What llama.cpp's converter does to the tensor it names `gguf_name`.
    fn of(family: Family, gguf_name: &str, heads: usize, kv_heads: usize) -> Self {
        match family {
            Family::Llama if gguf_name.contains(".attn_q.") => Self::InterleaveHalves { heads },
            Family::Llama if gguf_name.contains(".attn_k.") => {
                Self::InterleaveHalves { heads: kv_heads }
            }
            Family::Gemma2 | Family::Gemma3 if gguf_name.ends_with("norm.weight") => Self::AddOne,
            _ => Self::None,
        }
    }
}

impl std::fmt::Debug for DecoderCheckpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecoderCheckpoint")
            .field("dir", &self.gguf.path)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

/// The GGUF architecture of a config.json `model_type`, if it is a decoder
/// modelship reads.
pub fn checkpoint_family(model_type: &str) -> Option<Family> {
    Some(match model_type {
        "llama" | "mistral" => Family::Llama,
        "qwen2" => Family::Qwen2,
        "qwen3" => Family::Qwen3,
        "phi3" => Family::Phi3,
        "gemma2" => Family::Gemma2,
        "gemma3_text" | "gemma3" => Family::Gemma3,
        _ => return None,
    })
}

impl DecoderCheckpoint {
    pub fn open(hf: &HfModel) -> Result<Self, ModelError> {
        let model_type = hf.model_type().unwrap_or("unknown");
        let family =
            checkpoint_family(model_type).ok_or_else(|| ModelError::UnsupportedArchitecture {
                path: hf.dir.join("config.json"),
                architecture: model_type.to_owned(),
                supported: CHECKPOINT_TYPES,
            })?;
        let config_path = hf.dir.join("config.json");
        let root = hf.config.as_object().expect("HfModel checks an object");
        let config = Config::of_decoder(&config_path, root);
        let mut metadata = arch_metadata(family, &config)?;
        let name = root
            .get("_name_or_path")
            .and_then(Json::as_str)
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .or_else(|| hf.dir.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        metadata.insert("general.name".into(), Value::String(name));
        let vocab_size = config.opt_usize("vocab_size")?;
        metadata.extend(tokenizer_metadata(&hf.dir, family, vocab_size, &config)?);

        let heads = config.usize("num_attention_heads")?;
        let kv_heads = config.opt_usize("num_key_value_heads")?.unwrap_or(heads);
        let tied = config
            .opt_bool("tie_word_embeddings")?
            .unwrap_or(family.is_gemma());
        let mut tensors = Vec::new();
        for t in &hf.tensors {
            let Some(name) = gguf_name(family, &t.name) else {
                if ignored(&t.name) || (tied && t.name == "lm_head.weight") {
                    continue;
                }
                return Err(ModelError::invalid(
                    &hf.weight_files[t.file],
                    format!("tensor `{}` is not part of a {model_type} decoder", t.name),
                ));
            };
            let stored = match t.dtype.as_str() {
                "F32" => GgmlDType::F32,
                "F16" => GgmlDType::F16,
                "BF16" => GgmlDType::BF16,
                other => {
                    return Err(ModelError::invalid(
                        &hf.weight_files[t.file],
                        format!(
                            "tensor `{}` is {other} (F32, F16 and BF16 are read)",
                            t.name
                        ),
                    ));
                }
            };
            let change = Change::of(family, &name, heads, kv_heads);
            if let Change::InterleaveHalves { heads } = change {
                let rows = t.shape.first().copied().unwrap_or(0);
                if heads == 0 || !rows.is_multiple_of(2 * heads) {
                    return Err(ModelError::invalid(
                        &hf.weight_files[t.file],
                        format!(
                            "tensor `{}`: {rows} rows are not {heads} heads of pairs",
                            t.name
                        ),
                    ));
                }
            }
            if tensors.iter().any(|o: &CheckpointTensor| o.name == name) {
                return Err(ModelError::invalid(
                    &hf.dir,
                    format!("tensor `{}` is stored twice (as GGUF `{name}`)", t.name),
                ));
            }
            tensors.push(CheckpointTensor {
                name,
                source: t.name.clone(),
                dtype: if change == Change::AddOne {
                    GgmlDType::F32
                } else {
                    stored
                },
                shape: t.shape.clone(),
                data: Data::Stored {
                    stored,
                    file: t.file,
                    offset: t.offset,
                    len: t.bytes,
                    change,
                },
            });
        }
        if let Some(factors) = rope_factors(&config)? {
            tensors.push(CheckpointTensor {
                name: "rope_freqs.weight".into(),
                source: "rope_scaling".into(),
                dtype: GgmlDType::F32,
                shape: vec![factors.len()],
                data: Data::Computed(factors),
            });
        }
        tensors.sort_by_key(|t| write_order(&t.name));
        check_complete(&hf.dir, &tensors, config.usize("num_hidden_layers")?, tied)?;
        let tensor_infos = tensors
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    TensorInfo {
                        ggml_dtype: t.dtype,
                        shape: t.shape.clone().into(),
                        offset: 0,
                    },
                )
            })
            .collect();
        Ok(Self {
            gguf: GgufFile {
                path: hf.dir.clone(),
                content: Content {
                    magic: VersionedMagic::GgufV3,
                    metadata,
                    tensor_infos,
                    tensor_data_offset: 0,
                },
                skipped: Vec::new(),
            },
            tensors,
            family,
            files: hf.weight_files.clone(),
        })
    }

    /// The tensor named `name` in the GGUF description.
    pub fn tensor(&self, name: &str) -> Option<&CheckpointTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// Names a GGUF tensor for an error: with the checkpoint name it comes
    /// from, when that can be told.
    pub fn describe(&self, gguf_name: &str) -> String {
        match hf_name(self.family, gguf_name) {
            Some(hf) => format!("`{hf}` (GGUF `{gguf_name}`)"),
            None => format!("`{gguf_name}`"),
        }
    }

    /// The safetensors files holding the weights, as [`StoredAt::file`]
    /// indexes them.
    pub fn weight_files(&self) -> &[PathBuf] {
        &self.files
    }

    /// Where a tensor lies in the checkpoint, for a reader that uses it as
    /// stored: `None` where the conversion changes its values' type (Gemma's
    /// norms, 1 + w in f32), so only [`DecoderCheckpoint::read`] gives them.
    /// As stored, a llama model's Q and K rows keep Hugging Face's order,
    /// whose rope rotates halves: `read` reorders them for llama.cpp's
    /// interleaved rope.
    pub fn stored(&self, t: &CheckpointTensor) -> Option<StoredAt> {
        match t.data {
            Data::Stored {
                file,
                offset,
                len,
                change,
                ..
            } if change != Change::AddOne => Some(StoredAt { file, offset, len }),
            _ => None,
        }
    }

    /// A tensor's bytes as converted: `t.dtype`, rows first.
    pub fn read(&self, t: &CheckpointTensor) -> Result<Vec<u8>, ModelError> {
        let (stored, file, offset, len, change) = match &t.data {
            Data::Computed(values) => {
                return Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect());
            }
            Data::Stored {
                stored,
                file,
                offset,
                len,
                change,
            } => (*stored, *file, *offset, *len, *change),
        };
        let path = &self.files[file];
        let f = File::open(path).map_err(ModelError::io(path))?;
        let len = usize::try_from(len).map_err(|_| {
            ModelError::invalid(path, format!("tensor `{}` is too large", t.source))
        })?;
        let mut raw = vec![0u8; len];
        f.read_exact_at(&mut raw, offset)
            .map_err(ModelError::io(path))?;
        Ok(match change {
            Change::None => raw,
            Change::InterleaveHalves { heads } => interleave_halves(&raw, t.shape[0], heads),
            Change::AddOne => floats_le(stored, &raw)
                .map(|v| v + 1.0)
                .flat_map(f32::to_le_bytes)
                .collect(),
        })
    }
}

/// Fails naming the first tensor missing: the embeddings, final norm and
/// (untied) output, or
/// one that layer 0 has and another layer lacks (a shard cut short, a name
/// misspelt). What each family needs beyond that the engine checks.
fn check_complete(
    dir: &Path,
    tensors: &[CheckpointTensor],
    layers: usize,
    tied: bool,
) -> Result<(), ModelError> {
    let missing = |name: &str| ModelError::invalid(dir, format!("tensor `{name}` is missing"));
    // The output is its own matrix unless config.json ties it.
    let whole = if tied { &MODEL_NAMES[..2] } else { MODEL_NAMES };
    for (hf, _) in whole {
        if !tensors.iter().any(|t| t.source == *hf) {
            return Err(missing(hf));
        }
    }
    let mut by_layer: BTreeMap<usize, BTreeSet<&str>> = BTreeMap::new();
    for t in tensors {
        if let Some((layer, rest)) = t
            .source
            .strip_prefix("model.layers.")
            .and_then(|r| r.split_once('.'))
            && let Ok(layer) = layer.parse::<usize>()
        {
            if layer >= layers {
                return Err(ModelError::invalid(
                    dir,
                    format!(
                        "tensor `{}` is past the {layers} layers config.json declares",
                        t.source
                    ),
                ));
            }
            by_layer.entry(layer).or_default().insert(rest);
        }
    }
    let first = by_layer.get(&0).cloned().unwrap_or_default();
    if first.is_empty() {
        return Err(missing("model.layers.0.*"));
    }
    for layer in 1..layers {
        let have = by_layer.get(&layer);
        if let Some(rest) = first.iter().find(|r| !have.is_some_and(|h| h.contains(*r))) {
            return Err(missing(&format!("model.layers.{layer}.{rest}")));
        }
    }
    Ok(())
}

/// `rows` rows of `heads` heads from order (head, half, i) to (head, i,
/// half): row `h·d + 2i + a` of the result is row `h·d + a·d/2 + i`.
fn interleave_halves(raw: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let row_bytes = raw.len() / rows;
    let (head_rows, half) = (rows / heads, rows / heads / 2);
    let mut out = Vec::with_capacity(raw.len());
    for h in 0..heads {
        for i in 0..half {
            for a in 0..2 {
                let row = h * head_rows + a * half + i;
                out.extend_from_slice(&raw[row * row_bytes..(row + 1) * row_bytes]);
            }
        }
    }
    out
}

/// Little-endian F16 or BF16 values (F32 for any other type) as f32.
pub fn floats_le(dtype: GgmlDType, raw: &[u8]) -> impl Iterator<Item = f32> + '_ {
    let width = match dtype {
        GgmlDType::F16 | GgmlDType::BF16 => 2,
        _ => 4,
    };
    raw.chunks_exact(width).map(move |b| match dtype {
        GgmlDType::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlDType::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        _ => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
    })
}

/// config.json fields, read with errors that name the field.
struct Config<'a> {
    path: &'a Path,
    json: &'a Map<String, Json>,
    /// Where `json` sits in the file (`text_config.` for Gemma 3).
    prefix: &'a str,
}

impl<'a> Config<'a> {
    /// The decoder's part of `root`: Gemma 3's multimodal config keeps it
    /// in `text_config`.
    fn of_decoder(path: &'a Path, root: &'a Map<String, Json>) -> Self {
        let (json, prefix) = match root.get("text_config") {
            Some(Json::Object(text)) => (text, "text_config."),
            _ => (root, ""),
        };
        Config { path, json, prefix }
    }

    fn bad(&self, field: &str, problem: impl Into<String>) -> ModelError {
        ModelError::Config {
            path: self.path.to_owned(),
            field: format!("{}{field}", self.prefix),
            problem: problem.into(),
        }
    }

    /// The field, absent when missing or null.
    fn get(&self, field: &str) -> Option<&Json> {
        self.json.get(field).filter(|v| !v.is_null())
    }

    fn opt_usize(&self, field: &str) -> Result<Option<usize>, ModelError> {
        self.get(field)
            .map(|v| {
                v.as_u64()
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.bad(field, format!("{v}, not a non-negative integer")))
            })
            .transpose()
    }

    fn usize(&self, field: &str) -> Result<usize, ModelError> {
        self.opt_usize(field)?
            .ok_or_else(|| self.bad(field, "missing"))
    }

    fn opt_f32(&self, field: &str) -> Result<Option<f32>, ModelError> {
        self.get(field)
            .map(|v| {
                v.as_f64()
                    .map(|x| x as f32)
                    .ok_or_else(|| self.bad(field, format!("{v}, not a number")))
            })
            .transpose()
    }

    fn opt_bool(&self, field: &str) -> Result<Option<bool>, ModelError> {
        self.get(field)
            .map(|v| {
                v.as_bool()
                    .ok_or_else(|| self.bad(field, format!("{v}, not true or false")))
            })
            .transpose()
    }
}

/// `{arch}.*` metadata as llama.cpp's converter writes it for `family`.
fn arch_metadata(family: Family, c: &Config) -> Result<HashMap<String, Value>, ModelError> {
    let arch = family.name();
    let mut md = HashMap::new();
    let mut put = |key: &str, v: Value| {
        md.insert(format!("{arch}.{key}"), v);
    };
    let u32_of = |field: &str, n: usize| {
        u32::try_from(n)
            .map(Value::U32)
            .map_err(|_| c.bad(field, format!("{n}, more than a u32 holds")))
    };
    let width = c.usize("hidden_size")?;
    let heads = c.usize("num_attention_heads")?;
    if heads == 0 {
        return Err(c.bad("num_attention_heads", "0"));
    }
    put(
        "block_count",
        u32_of("num_hidden_layers", c.usize("num_hidden_layers")?)?,
    );
    put("embedding_length", u32_of("hidden_size", width)?);
    put(
        "feed_forward_length",
        u32_of("intermediate_size", c.usize("intermediate_size")?)?,
    );
    put(
        "attention.head_count",
        u32_of("num_attention_heads", heads)?,
    );
    let kv_heads = c.opt_usize("num_key_value_heads")?.unwrap_or(heads);
    put(
        "attention.head_count_kv",
        u32_of("num_key_value_heads", kv_heads)?,
    );
    if let Some(n) = c.opt_usize("max_position_embeddings")? {
        put("context_length", u32_of("max_position_embeddings", n)?);
    }
    let default_base = if family == Family::Gemma3 { 1e6 } else { 1e4 };
    put(
        "rope.freq_base",
        Value::F32(c.opt_f32("rope_theta")?.unwrap_or(default_base)),
    );
    put(
        "attention.layer_norm_rms_epsilon",
        Value::F32(c.opt_f32("rms_norm_eps")?.unwrap_or(1e-6)),
    );
    let head_dim = c.opt_usize("head_dim")?;
    if let Some(d) = head_dim {
        put("attention.key_length", u32_of("head_dim", d)?);
        put("attention.value_length", u32_of("head_dim", d)?);
    }
    let head_dim = head_dim.unwrap_or(width / heads);
    match family {
        Family::Llama => {
            if let Some(v) = c.opt_usize("vocab_size")? {
                put("vocab_size", u32_of("vocab_size", v)?);
            }
            put("rope.dimension_count", u32_of("head_dim", head_dim)?);
        }
        Family::Phi3 => {
            let partial = c.opt_f32("partial_rotary_factor")?.unwrap_or(1.0);
            let dims = (head_dim as f32 * partial) as usize;
            put(
                "rope.dimension_count",
                u32_of("partial_rotary_factor", dims)?,
            );
        }
        Family::Gemma2 | Family::Gemma3 => {
            if let Some(w) = c.opt_usize("sliding_window")? {
                put("attention.sliding_window", u32_of("sliding_window", w)?);
            }
            for field in ["attn_logit_softcapping", "final_logit_softcapping"] {
                if let Some(cap) = c.opt_f32(field)? {
                    put(field, Value::F32(cap));
                }
            }
        }
        Family::Qwen2 | Family::Qwen3 => {}
    }
    if let Some(scaling) = c.get("rope_scaling") {
        let kind = scaling
            .get("rope_type")
            .or_else(|| scaling.get("type"))
            .and_then(Json::as_str);
        match kind {
            Some("linear") => {
                let factor = scaling
                    .get("factor")
                    .and_then(Json::as_f64)
                    .ok_or_else(|| c.bad("rope_scaling.factor", "missing or not a number"))?;
                put("rope.scaling.type", Value::String("linear".into()));
                put("rope.scaling.factor", Value::F32(factor as f32));
            }
            // The factors become a tensor (`rope_factors`), as in llama.cpp.
            Some("llama3") if family == Family::Llama => {}
            Some("default") | None if scaling.get("factor").is_none() => {}
            other => {
                return Err(c.bad(
                    "rope_scaling",
                    format!(
                        "of type {}: linear scaling, and llama3 for llama models, are read from checkpoints",
                        other.unwrap_or("(none)")
                    ),
                ));
            }
        }
    }
    md.insert(
        "general.architecture".into(),
        Value::String(arch.to_owned()),
    );
    Ok(md)
}

/// Llama 3's rope scaling as llama.cpp's converter writes it: one factor
/// per rotated pair that the pair's frequency is divided by — 1 for
/// wavelengths under `original_max_position_embeddings / high_freq_factor`,
/// `factor` over `original / low_freq_factor`, and in between the blend
/// Hugging Face's `_compute_llama3_parameters` makes. `None` without
/// `rope_scaling.rope_type: llama3`. Computed in f64 and rounded once (the
/// converter mixes f32 and f64: the two differ by under 1e-7). The original
/// context is `rope_scaling`'s, as Hugging Face reads it (llama.cpp's
/// converter reads a top-level field, default 8192: the same for Meta's
/// configs, which set it only in `rope_scaling`).
fn rope_factors(c: &Config) -> Result<Option<Vec<f32>>, ModelError> {
    let Some(scaling) = c.get("rope_scaling").filter(|s| {
        s.get("rope_type")
            .or_else(|| s.get("type"))
            .and_then(Json::as_str)
            == Some("llama3")
    }) else {
        return Ok(None);
    };
    let number = |field: &str, default: f64| -> Result<f64, ModelError> {
        match scaling.get(field) {
            None => Ok(default),
            Some(v) => v
                .as_f64()
                .filter(|x| x.is_finite() && *x > 0.0)
                .ok_or_else(|| {
                    c.bad(
                        &format!("rope_scaling.{field}"),
                        format!("{v}, not a positive number"),
                    )
                }),
        }
    };
    let factor = number("factor", 8.0)?;
    let low = number("low_freq_factor", 1.0)?;
    let high = number("high_freq_factor", 4.0)?;
    let original = number("original_max_position_embeddings", 8192.0)?;
    if high <= low {
        return Err(c.bad(
            "rope_scaling.high_freq_factor",
            format!("{high}, not above low_freq_factor {low}"),
        ));
    }
    let base = f64::from(c.opt_f32("rope_theta")?.unwrap_or(1e4));
    let heads = c.usize("num_attention_heads")?;
    let dim = match c.opt_usize("head_dim")? {
        Some(d) => d,
        None => c.usize("hidden_size")? / heads.max(1),
    };
    let (low_wavelen, high_wavelen) = (original / low, original / high);
    let factors = (0..dim / 2)
        .map(|i| {
            let freq = 1.0 / base.powf((2 * i) as f64 / dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            let f = if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (original / wavelen - low) / (high - low);
                1.0 / ((1.0 - smooth) / factor + smooth)
            };
            f as f32
        })
        .collect();
    Ok(Some(factors))
}

/// A vocabulary as llama.cpp's converter writes it: the tokens and their
/// types in id order, and the keys of its model (`tokenizer.ggml.model`,
/// merges or scores, …).
struct Vocabulary {
    tokens: Vec<Value>,
    types: Vec<Value>,
    keys: HashMap<String, Value>,
}

/// `tokenizer.*` metadata as llama.cpp's converter writes it: a
/// SentencePiece vocabulary (`llama`) from tokenizer.model where the
/// converter reads one for the family, else the byte-level BPE (`gpt2`) of
/// tokenizer.json; then, from tokenizer_config.json and config.json, the
/// special token ids, `add_{bos,eos,sep}_token` and the chat template.
fn tokenizer_metadata(
    dir: &Path,
    family: Family,
    vocab_size: Option<usize>,
    config: &Config,
) -> Result<HashMap<String, Value>, ModelError> {
    let settings_path = dir.join("tokenizer_config.json");
    let settings: Map<String, Json> = if settings_path.is_file() {
        read_json(&settings_path)?
    } else {
        Map::new()
    };
    let settings = Config {
        path: &settings_path,
        json: &settings,
        prefix: "",
    };
    let spm = dir.join("tokenizer.model");
    // llama.cpp tries SentencePiece first for these, byte-level BPE for the
    // others (Qwen's). Its Phi-3 converter has its own variant (tokenizer.json's
    // added tokens too, no special-looking test, `▁` kept): not mirrored.
    let sentencepiece_first = matches!(
        family,
        Family::Llama | Family::Phi3 | Family::Gemma2 | Family::Gemma3
    );
    let Vocabulary {
        tokens,
        types,
        keys: mut md,
    } = if sentencepiece_first && spm.is_file() {
        sentencepiece_vocabulary(&spm, dir, vocab_size, &settings)?
    } else {
        bpe_vocabulary(dir, vocab_size, config)?
    };
    if family.is_gemma() {
        // Gemma's converters turn SentencePiece's dummy prefix off.
        md.insert("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false));
    }
    let n = tokens.len();
    let id_of = |token: &str| {
        tokens
            .iter()
            .position(|t| matches!(t, Value::String(s) if s == token))
    };
    for (kind, key) in [
        ("bos", "bos_token_id"),
        ("eos", "eos_token_id"),
        ("unk", "unknown_token_id"),
        ("pad", "padding_token_id"),
    ] {
        let field = format!("{kind}_token");
        // A string, or an object with `content` (older transformers).
        let named = match settings.get(&field) {
            None => None,
            Some(Json::String(s)) => Some(s.as_str()),
            Some(v) => Some(
                v.get("content")
                    .and_then(Json::as_str)
                    .ok_or_else(|| settings.bad(&field, format!("{v}, not a token")))?,
            ),
        };
        let id = match named {
            Some(token) => Some(id_of(token).ok_or_else(|| {
                settings.bad(&field, format!("`{token}`, which is not in the vocabulary"))
            })?),
            None => config.opt_usize(&format!("{kind}_token_id"))?,
        };
        if let Some(id) = id.filter(|&id| id < n) {
            md.insert(format!("tokenizer.ggml.{key}"), Value::U32(id as u32));
        }
    }
    for key in ["add_bos_token", "add_eos_token", "add_sep_token"] {
        if let Some(add) = settings.opt_bool(key)? {
            md.insert(format!("tokenizer.ggml.{key}"), Value::Bool(add));
        }
    }
    match settings.get("chat_template") {
        None => {}
        Some(Json::String(t)) => {
            md.insert("tokenizer.chat_template".into(), Value::String(t.clone()));
        }
        Some(Json::Array(named)) => {
            // Several named templates: llama.cpp takes `default`.
            let default = named
                .iter()
                .find(|t| t.get("name").and_then(Json::as_str) == Some("default"))
                .and_then(|t| t.get("template"))
                .and_then(Json::as_str)
                .ok_or_else(|| settings.bad("chat_template", "a list without a `default`"))?;
            md.insert(
                "tokenizer.chat_template".into(),
                Value::String(default.to_owned()),
            );
        }
        Some(v) => return Err(settings.bad("chat_template", format!("{v}, not a template"))),
    }
    md.insert("tokenizer.ggml.tokens".into(), Value::Array(tokens));
    md.insert("tokenizer.ggml.token_type".into(), Value::Array(types));
    Ok(md)
}

/// A SentencePiece vocabulary as llama.cpp's `_create_vocab_sentencepiece`
/// makes it: tokenizer.model's pieces, scores and types in id order, padded
/// to the model's rows with `[PADn]` (unused, score −10000); then the tokens
/// added.json and tokenizer_config.json's `added_tokens_decoder` add, at
/// score −1000, as control tokens (special ones, or ones that look special)
/// or user-defined ones (their `▁` read as spaces).
fn sentencepiece_vocabulary(
    path: &Path,
    dir: &Path,
    vocab_size: Option<usize>,
    settings: &Config,
) -> Result<Vocabulary, ModelError> {
    let pieces = crate::sentencepiece::read_pieces(path)?;
    let n = vocab_size.unwrap_or(pieces.len());
    check_vocab_size(n, settings)?;
    let mut tokens: Vec<String> = (0..n).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000f32; n];
    let mut types = vec![UNUSED; n];
    for (id, p) in pieces.into_iter().enumerate().take(n) {
        // llama.cpp asks SentencePiece for unknown, control, unused and byte
        // pieces only: a user-defined one is normal unless the added tokens
        // below list it.
        let kind = if p.kind == USER_DEFINED {
            NORMAL
        } else {
            p.kind
        };
        (tokens[id], scores[id], types[id]) = (p.text, p.score, kind);
    }
    let added_path = dir.join("added_tokens.json");
    if added_path.is_file() {
        let added: Map<String, Json> = read_json(&added_path)?;
        for (token, id) in added {
            let id = id.as_u64().ok_or_else(|| {
                ModelError::invalid(&added_path, format!("`{token}` is not given a token id"))
            })?;
            if let Some(id) = usize::try_from(id).ok().filter(|&i| i < n) {
                (tokens[id], scores[id], types[id]) = (token, -1000.0, USER_DEFINED);
            }
        }
    }
    if let Some(decoder) = settings.get("added_tokens_decoder") {
        let decoder = decoder
            .as_object()
            .ok_or_else(|| settings.bad("added_tokens_decoder", "not an object"))?;
        for (id, data) in decoder {
            let field = format!("added_tokens_decoder.{id}");
            let content = data
                .get("content")
                .and_then(Json::as_str)
                .ok_or_else(|| settings.bad(&field, "no `content`"))?;
            let id: usize = id
                .parse()
                .map_err(|_| settings.bad(&field, "not keyed by a token id"))?;
            if id >= n {
                continue;
            }
            let special = data.get("special").and_then(Json::as_bool) == Some(true);
            (tokens[id], types[id]) = if special || looks_special(content) {
                (content.to_owned(), CONTROL)
            } else {
                (content.replace('\u{2581}', " "), USER_DEFINED)
            };
            scores[id] = -1000.0;
        }
    }
    let mut keys = HashMap::new();
    keys.insert("tokenizer.ggml.model".into(), Value::String("llama".into()));
    keys.insert("tokenizer.ggml.pre".into(), Value::String("default".into()));
    keys.insert(
        "tokenizer.ggml.scores".into(),
        Value::Array(scores.into_iter().map(Value::F32).collect()),
    );
    Ok(Vocabulary {
        tokens: tokens.into_iter().map(Value::String).collect(),
        types: types.into_iter().map(Value::I32).collect(),
        keys,
    })
}

/// The most tokens a vocabulary may hold (Gemma's has 262,144): checked
/// before `[PADn]` rows are made for a `vocab_size` from config.json.
const MAX_VOCABULARY: usize = 1 << 24;

fn check_vocab_size(n: usize, config: &Config) -> Result<(), ModelError> {
    if n > MAX_VOCABULARY {
        return Err(config.bad(
            "vocab_size",
            format!("{n}, more than the {MAX_VOCABULARY} tokens modelship reads"),
        ));
    }
    Ok(())
}

/// A byte-level BPE vocabulary from tokenizer.json, as llama.cpp's
/// converter writes a `gpt2` one: the vocabulary padded to the model's rows
/// with `[PADn]`, added tokens as control (special) or user-defined tokens,
/// merges and the pre-tokenizer's name.
fn bpe_vocabulary(
    dir: &Path,
    vocab_size: Option<usize>,
    config: &Config,
) -> Result<Vocabulary, ModelError> {
    let path = dir.join("tokenizer.json");
    let json: Json = read_json(&path)?;
    let bad = |reason: String| ModelError::invalid(&path, reason);
    let model = json.get("model").ok_or_else(|| bad("no `model`".into()))?;
    if model.get("type").and_then(Json::as_str) != Some("BPE")
        || model.get("byte_fallback").and_then(Json::as_bool) == Some(true)
    {
        return Err(bad(
            "`model` is not a byte-level BPE, and no tokenizer.model holds the SentencePiece vocabulary it comes from"
                .into(),
        ));
    }
    let mut by_id: HashMap<u32, (String, i32)> = HashMap::new();
    let vocab = model
        .get("vocab")
        .and_then(Json::as_object)
        .ok_or_else(|| bad("`model.vocab` is not an object".into()))?;
    for (token, id) in vocab {
        let id = id
            .as_u64()
            .and_then(|i| u32::try_from(i).ok())
            .ok_or_else(|| bad(format!("`model.vocab.{token}` is not a token id")))?;
        by_id.insert(id, (token.clone(), NORMAL));
    }
    for (i, added) in json
        .get("added_tokens")
        .and_then(Json::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        let (Some(id), Some(content)) = (
            added.get("id").and_then(Json::as_u64),
            added.get("content").and_then(Json::as_str),
        ) else {
            return Err(bad(format!("`added_tokens[{i}]` lacks an id or content")));
        };
        let special = added.get("special").and_then(Json::as_bool) == Some(true);
        let kind = if special || looks_special(content) {
            CONTROL
        } else {
            USER_DEFINED
        };
        let id =
            u32::try_from(id).map_err(|_| bad(format!("`added_tokens[{i}].id` is too large")))?;
        by_id.insert(id, (content.to_owned(), kind));
    }
    let highest = by_id.keys().max().map_or(0, |&m| m as usize + 1);
    if vocab_size.is_some_and(|v| v < highest) {
        return Err(config.bad(
            "vocab_size",
            format!(
                "{}, smaller than the tokenizer's {highest} tokens",
                vocab_size.unwrap_or(0)
            ),
        ));
    }
    let n = vocab_size.unwrap_or(highest);
    check_vocab_size(n, config)?;
    let (mut tokens, mut types) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for id in 0..n as u32 {
        let (token, kind) = by_id
            .remove(&id)
            .unwrap_or_else(|| (format!("[PAD{id}]"), UNUSED));
        tokens.push(Value::String(token));
        types.push(Value::I32(kind));
    }
    let merges = model
        .get("merges")
        .and_then(Json::as_array)
        .ok_or_else(|| bad("`model.merges` is not an array".into()))?
        .iter()
        .enumerate()
        .map(|(i, m)| match m {
            Json::String(s) => Ok(Value::String(s.clone())),
            Json::Array(pair) => match pair.as_slice() {
                [Json::String(a), Json::String(b)] => Ok(Value::String(format!("{a} {b}"))),
                _ => Err(bad(format!("`model.merges[{i}]` is not a pair of strings"))),
            },
            _ => Err(bad(format!("`model.merges[{i}]` is not a merge"))),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let pre = pre_tokenizer_name(json.get("pre_tokenizer")).ok_or_else(|| {
        bad("`pre_tokenizer` is none that modelship recognizes (GPT-2's byte level, SmolLM's, Llama 3's and Qwen2's regexes)".into())
    })?;
    let mut keys = HashMap::new();
    keys.insert("tokenizer.ggml.model".into(), Value::String("gpt2".into()));
    keys.insert("tokenizer.ggml.pre".into(), Value::String(pre.into()));
    keys.insert("tokenizer.ggml.merges".into(), Value::Array(merges));
    Ok(Vocabulary {
        tokens,
        types,
        keys,
    })
}

/// llama.cpp's `does_token_look_special`: added tokens some models forget
/// to mark special.
fn looks_special(token: &str) -> bool {
    matches!(token, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (token.starts_with("<|") && token.ends_with("|>"))
        || (token.starts_with("<｜") && token.ends_with("｜>"))
        || (token.starts_with("<unused") && token.ends_with('>'))
}

/// llama.cpp's name for a tokenizer.json pre-tokenizer, from its shape.
fn pre_tokenizer_name(pre: Option<&Json>) -> Option<&'static str> {
    let kind = |v: &Json| v.get("type").and_then(Json::as_str).map(str::to_owned);
    let pre = pre?;
    let steps: Vec<&Json> = match kind(pre).as_deref() {
        Some("Sequence") => pre.get("pretokenizers")?.as_array()?.iter().collect(),
        _ => vec![pre],
    };
    let byte_level_regex = |v: &Json| {
        (kind(v).as_deref() == Some("ByteLevel"))
            .then(|| v.get("use_regex").and_then(Json::as_bool).unwrap_or(true))
    };
    match steps.as_slice() {
        [only] if byte_level_regex(only) == Some(true) => Some("gpt2"),
        [digits, bytes]
            if kind(digits).as_deref() == Some("Digits")
                && digits.get("individual_digits").and_then(Json::as_bool) == Some(true)
                && byte_level_regex(bytes) == Some(true) =>
        {
            Some("smollm")
        }
        [split, bytes]
            if kind(split).as_deref() == Some("Split")
                && byte_level_regex(bytes) == Some(false) =>
        {
            // The patterns behind the names (llama.cpp tells them apart by
            // hashing a probe text's tokens instead).
            match split.get("pattern")?.get("Regex")?.as_str()? {
                QWEN2_PATTERN => Some("qwen2"),
                LLAMA3_PATTERN => Some("llama-bpe"),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Tensors the converter drops (rotary tables computed from the config).
fn ignored(hf: &str) -> bool {
    hf.ends_with(".rotary_emb.inv_freq")
}

/// Per-layer projection names: (Hugging Face, GGUF), as llama.cpp's tensor
/// map pairs them (Phi-3's fused `qkv_proj` and `gate_up_proj` among them).
const PROJECTIONS: &[(&str, &str)] = &[
    ("self_attn.q_proj", "attn_q"),
    ("self_attn.k_proj", "attn_k"),
    ("self_attn.v_proj", "attn_v"),
    ("self_attn.o_proj", "attn_output"),
    ("self_attn.q_norm", "attn_q_norm"),
    ("self_attn.k_norm", "attn_k_norm"),
    ("self_attn.qkv_proj", "attn_qkv"),
    ("mlp.gate_proj", "ffn_gate"),
    ("mlp.up_proj", "ffn_up"),
    ("mlp.gate_up_proj", "ffn_up"),
    ("mlp.down_proj", "ffn_down"),
];

/// Per-layer norm names: llama's two, or Gemma's four (its
/// `post_attention_layernorm` is a post-norm, not the FFN's pre-norm).
fn norm_names(family: Family) -> &'static [(&'static str, &'static str)] {
    const LLAMA: &[(&str, &str)] = &[
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "ffn_norm"),
    ];
    const GEMMA: &[(&str, &str)] = &[
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "post_attention_norm"),
        ("pre_feedforward_layernorm", "ffn_norm"),
        ("post_feedforward_layernorm", "post_ffw_norm"),
    ];
    if family.is_gemma() { GEMMA } else { LLAMA }
}

/// Every per-layer name pair of `family`.
fn layer_names(family: Family) -> impl Iterator<Item = &'static (&'static str, &'static str)> {
    PROJECTIONS.iter().chain(norm_names(family))
}

/// Whole-model names: (Hugging Face, GGUF).
const MODEL_NAMES: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// A checkpoint tensor's GGUF name.
fn gguf_name(family: Family, hf: &str) -> Option<String> {
    if let Some(&(_, g)) = MODEL_NAMES.iter().find(|(h, _)| *h == hf) {
        return Some(g.to_owned());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, kind) = rest.rsplit_once('.')?;
    if !matches!(kind, "weight" | "bias") {
        return None;
    }
    let &(_, g) = layer_names(family).find(|(h, _)| *h == module)?;
    Some(format!("blk.{layer}.{g}.{kind}"))
}

/// A GGUF tensor's checkpoint name (the first one mapping to it).
fn hf_name(family: Family, gguf: &str) -> Option<String> {
    if let Some(&(h, _)) = MODEL_NAMES.iter().find(|(_, g)| *g == gguf) {
        return Some(h.to_owned());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let (module, kind) = rest.rsplit_once('.')?;
    let &(h, _) = layer_names(family).find(|(_, g)| *g == module)?;
    Some(format!("model.layers.{layer}.{h}.{kind}"))
}

/// Embeddings first, then each layer's tensors, then the output.
fn write_order(gguf: &str) -> (usize, usize, String) {
    match gguf.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
        Some((layer, rest)) => (1, layer.parse().unwrap_or(usize::MAX), rest.to_owned()),
        None if gguf.starts_with("token_embd") => (0, 0, gguf.to_owned()),
        None => (2, 0, gguf.to_owned()),
    }
}

/// The `{arch}.*` metadata a parsed `config.json` converts to (no tokenizer,
/// no weights), for the fuzz target: `None` for an unknown `model_type`.
pub(crate) fn config_metadata(
    path: &Path,
    root: &Map<String, Json>,
) -> Option<Result<HashMap<String, Value>, ModelError>> {
    let model_type = root.get("model_type").and_then(Json::as_str)?;
    let family = checkpoint_family(model_type)?;
    Some(arch_metadata(family, &Config::of_decoder(path, root)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DecoderHparams;

    const LAYER: &[(&str, &[usize])] = &[
        ("input_layernorm.weight", &[8]),
        ("self_attn.q_proj.weight", &[8, 8]),
        ("self_attn.k_proj.weight", &[4, 8]),
        ("self_attn.v_proj.weight", &[4, 8]),
        ("self_attn.o_proj.weight", &[8, 8]),
        ("post_attention_layernorm.weight", &[8]),
        ("mlp.gate_proj.weight", &[16, 8]),
        ("mlp.up_proj.weight", &[16, 8]),
        ("mlp.down_proj.weight", &[8, 16]),
    ];

    /// A two-layer llama checkpoint (2 heads of 4, one KV head) whose every
    /// f32 value is its index in its tensor, without the tensors named in
    /// `drop`; `config` patches config.json.
    fn write_checkpoint(dir: &Path, drop: &[&str], config: &[(&str, Json)]) {
        let mut tensors: Vec<(String, Vec<usize>)> = vec![
            ("model.embed_tokens.weight".into(), vec![6, 8]),
            ("model.norm.weight".into(), vec![8]),
        ];
        for layer in 0..2 {
            for (name, shape) in LAYER {
                tensors.push((format!("model.layers.{layer}.{name}"), shape.to_vec()));
            }
        }
        tensors.retain(|(n, _)| !drop.contains(&n.as_str()));
        let (mut header, mut data) = (Map::new(), Vec::new());
        for (name, shape) in &tensors {
            let n: usize = shape.iter().product();
            let begin = data.len();
            data.extend((0..n).flat_map(|i| (i as f32).to_le_bytes()));
            header.insert(
                name.clone(),
                serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        let header = serde_json::to_vec(&header).unwrap();
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend(header);
        file.extend(data);
        std::fs::write(dir.join("model.safetensors"), file).unwrap();
        let mut cfg = serde_json::json!({
            "model_type": "llama", "hidden_size": 8, "num_hidden_layers": 2,
            "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 16,
            "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "vocab_size": 6, "tie_word_embeddings": true
        });
        for (k, v) in config {
            cfg[*k] = v.clone();
        }
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
        let tokenizer = serde_json::json!({
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, "<|end|>": 3}, "merges": [["a", "b"]]},
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
            "added_tokens": [{"id": 3, "content": "<|end|>", "special": true}]
        });
        std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
        std::fs::write(
            dir.join("tokenizer_config.json"),
            r#"{"eos_token": "<|end|>", "add_bos_token": false, "chat_template": "{{ messages }}"}"#,
        )
        .unwrap();
    }

    fn open(dir: &Path) -> Result<DecoderCheckpoint, ModelError> {
        DecoderCheckpoint::open(&HfModel::open(dir)?)
    }

    fn floats(bytes: &[u8]) -> Vec<f32> {
        bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    #[test]
    fn converts_names_metadata_and_the_vocabulary() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &[], &[]);
        let c = open(dir.path()).unwrap();
        let g = &c.gguf;
        assert_eq!(g.architecture().unwrap(), "llama");
        assert_eq!(g.uint("llama.block_count").unwrap(), 2);
        assert_eq!(g.uint("llama.attention.head_count_kv").unwrap(), 1);
        assert_eq!(g.uint("llama.rope.dimension_count").unwrap(), 4);
        assert_eq!(g.string("tokenizer.ggml.pre").unwrap(), "gpt2");
        // Padded to the model's six rows, the added token a control token.
        assert_eq!(
            g.strings("tokenizer.ggml.tokens").unwrap(),
            ["a", "b", "ab", "<|end|>", "[PAD4]", "[PAD5]"]
        );
        assert_eq!(
            g.ints("tokenizer.ggml.token_type").unwrap(),
            [1, 1, 1, 3, 5, 5]
        );
        assert_eq!(g.strings("tokenizer.ggml.merges").unwrap(), ["a b"]);
        assert_eq!(g.uint("tokenizer.ggml.eos_token_id").unwrap(), 3);
        assert!(!g.bool("tokenizer.ggml.add_bos_token").unwrap());
        assert_eq!(
            g.string("tokenizer.chat_template").unwrap(),
            "{{ messages }}"
        );
        let names: Vec<&str> = c.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.first(), Some(&"token_embd.weight"));
        assert_eq!(names.last(), Some(&"output_norm.weight"));
        assert!(names.contains(&"blk.1.ffn_norm.weight"), "{names:?}");
        assert!(!names.contains(&"output.weight"), "tied: no output");
        assert!(DecoderHparams::from_gguf(g).is_ok());
    }

    /// Q's rows go from halves to pairs per head, as llama.cpp's converter
    /// permutes them: row 2i + a of a head is row a·2 + i of the checkpoint
    /// (heads of 4 rows); V is left alone.
    #[test]
    fn llama_queries_and_keys_are_reordered_for_interleaved_rope() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &[], &[]);
        let c = open(dir.path()).unwrap();
        let row_of = |name: &str| -> Vec<usize> {
            let v = floats(&c.read(c.tensor(name).unwrap()).unwrap());
            v.chunks_exact(8).map(|r| r[0] as usize / 8).collect()
        };
        assert_eq!(row_of("blk.0.attn_q.weight"), [0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(row_of("blk.0.attn_k.weight"), [0, 2, 1, 3]);
        assert_eq!(row_of("blk.0.attn_v.weight"), [0, 1, 2, 3]);
    }

    #[test]
    fn a_missing_tensor_is_named() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &["model.layers.1.self_attn.k_proj.weight"], &[]);
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("`model.layers.1.self_attn.k_proj.weight` is missing"),
            "{err}"
        );
        write_checkpoint(dir.path(), &["model.norm.weight"], &[]);
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("`model.norm.weight` is missing"), "{err}");
        write_checkpoint(
            dir.path(),
            &[],
            &[("tie_word_embeddings", serde_json::json!(false))],
        );
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("`lm_head.weight` is missing"), "{err}");
    }

    #[test]
    fn a_config_field_of_the_wrong_type_is_named() {
        let dir = tempfile::tempdir().unwrap();
        for (field, value) in [
            ("num_hidden_layers", serde_json::json!("2")),
            ("rope_theta", serde_json::json!("fast")),
            ("tie_word_embeddings", serde_json::json!(1)),
        ] {
            write_checkpoint(dir.path(), &[], &[(field, value)]);
            let err = open(dir.path()).unwrap_err().to_string();
            assert!(err.contains(&format!("field `{field}`")), "{field}: {err}");
        }
    }

    #[test]
    fn an_index_naming_a_missing_shard_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(dir.path(), &[], &[]);
        std::fs::write(
            dir.path().join("model.safetensors.index.json"),
            r#"{"weight_map": {"model.norm.weight": "model.safetensors", "lm_head.weight": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let err = HfModel::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("`model-00002-of-00002.safetensors`"), "{err}");
    }

    #[test]
    fn unsupported_architectures_and_tokenizers_say_what_is() {
        let dir = tempfile::tempdir().unwrap();
        write_checkpoint(
            dir.path(),
            &[],
            &[("model_type", serde_json::json!("falcon"))],
        );
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("`falcon`") && err.contains("qwen2"), "{err}");
        write_checkpoint(dir.path(), &[], &[]);
        std::fs::write(
            dir.path().join("tokenizer.json"),
            r#"{"model": {"type": "BPE", "byte_fallback": true, "vocab": {}, "merges": []}}"#,
        )
        .unwrap();
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("SentencePiece"), "{err}");
    }

    #[test]
    fn llama3_rope_scaling_becomes_the_rope_factors_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let scaling = serde_json::json!({
            "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192
        });
        write_checkpoint(
            dir.path(),
            &[],
            &[
                ("rope_scaling", scaling),
                ("rope_theta", serde_json::json!(500000.0)),
            ],
        );
        let c = open(dir.path()).unwrap();
        let t = c.tensor("rope_freqs.weight").expect("rope_freqs.weight");
        assert_eq!((t.dtype, t.shape.clone()), (GgmlDType::F32, vec![2]));
        assert_eq!(c.stored(t), None, "computed, not stored");
        let factors = floats(&c.read(t).unwrap());
        // Head size 4: frequencies 1 (wavelength 2π, under 8192 / 4: kept)
        // and 500000^-½ (wavelength 4443, between 2048 and 8192: blended).
        let wavelen = 2.0 * std::f64::consts::PI * 500000f64.sqrt();
        let smooth = (8192.0 / wavelen - 1.0) / 3.0;
        let blended = 1.0 / ((1.0 - smooth) / 8.0 + smooth);
        assert_eq!(factors[0], 1.0);
        assert!(
            (f64::from(factors[1]) - blended).abs() < 1e-6,
            "{factors:?} vs {blended}"
        );
        assert!(factors[1] > 1.0 && factors[1] < 8.0);
        // Each family's own scaling it cannot read is named.
        write_checkpoint(
            dir.path(),
            &[],
            &[(
                "rope_scaling",
                serde_json::json!({"rope_type": "yarn", "factor": 4.0}),
            )],
        );
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("rope_scaling") && err.contains("yarn"),
            "{err}"
        );
        write_checkpoint(
            dir.path(),
            &[],
            &[(
                "rope_scaling",
                serde_json::json!({"rope_type": "llama3", "factor": "eight"}),
            )],
        );
        let err = open(dir.path()).unwrap_err().to_string();
        assert!(err.contains("rope_scaling.factor"), "{err}");
    }
}
