//! What `modelship inspect` reports: one description for both formats.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use modelship_types::Task;
use serde::Serialize;

use crate::{
    DecoderCheckpoint, DecoderHparams, Encoder, EncoderFamily, GgufFile, HfModel, ModelError,
    ModelSource, checkpoint_family, ggml_dtype_name,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelFormat {
    /// A Hugging Face directory with safetensors weights.
    Safetensors,
    Gguf,
}

/// Tensors of one storage type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DTypeStats {
    pub tensors: usize,
    pub parameters: u64,
    pub bytes: u64,
}

/// A model described from its files alone, without loading weights.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub format: ModelFormat,
    pub architecture: String,
    pub name: Option<String>,
    pub task: Option<Task>,
    pub parameters: u64,
    /// Bytes on disk: the GGUF file, or every file of the directory.
    pub file_bytes: u64,
    /// Bytes of tensor data (what the weights take in memory as stored).
    pub weight_bytes: u64,
    /// Storage type name (`F32`, `Q4_1`, ...) → tensors, parameters, bytes.
    pub dtypes: BTreeMap<String, DTypeStats>,
    pub context_length: Option<usize>,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub layers: Option<usize>,
    pub attention_heads: Option<usize>,
    pub kv_heads: Option<usize>,
    /// Width of the feed-forward layer.
    pub feed_forward: Option<usize>,
    /// A decoder's shape beyond the counts: head size, rope, sliding window,
    /// soft-capping (GGUF decoders the engine runs).
    pub decoder: Option<DecoderHparams>,
    /// How rotary positions are scaled beyond the base, if at all.
    pub rope_scaling: Option<String>,
    /// Whether the file carries a chat template.
    pub chat_template: bool,
}

/// The task an architecture is served for, when the architecture alone
/// says it (an encoder's head decides between embeddings, reranking and
/// classification: see [`crate::Encoder::task`]).
pub fn task_of(architecture: &str) -> Option<Task> {
    match architecture {
        "bert" | "nomic-bert" | "jina-bert-v2" | "roberta" | "xlm-roberta" | "distilbert"
        | "mpnet" => Some(Task::Embeddings),
        "llama" | "mistral" | "qwen2" | "qwen3" | "gemma" | "gemma2" | "gemma3" | "phi3" => {
            Some(Task::Generate)
        }
        _ => None,
    }
}

/// Describes the model at `path` (an HF directory or a GGUF file).
pub fn inspect(path: &Path) -> Result<ModelInfo, ModelError> {
    match ModelSource::detect(path)? {
        ModelSource::HfDir(dir) => Ok(describe_hf(&HfModel::open(&dir)?)?),
        ModelSource::Gguf(file) => describe_gguf(&GgufFile::open(&file)?),
    }
}

fn describe_hf(m: &HfModel) -> Result<ModelInfo, ModelError> {
    let mut dtypes: BTreeMap<String, DTypeStats> = BTreeMap::new();
    for t in &m.tensors {
        let s = dtypes.entry(t.dtype.clone()).or_default();
        s.tensors += 1;
        s.parameters += t.elements();
        s.bytes += t.bytes;
    }
    let architecture = m.model_type().unwrap_or("unknown").to_owned();
    // A decoder checkpoint is described as the GGUF it converts to; one that
    // does not convert is still described by its config, and `serve` or
    // `quantize` name what is wrong.
    let converted = checkpoint_family(&architecture).and_then(|_| DecoderCheckpoint::open(m).ok());
    let decoder = converted
        .as_ref()
        .and_then(|c| DecoderHparams::from_gguf(&c.gguf).ok());
    let rope_scaling = converted
        .as_ref()
        .and_then(|c| rope_scaling(&c.gguf, decoder.as_ref()));
    let architecture = match &decoder {
        Some(d) => d.family.name().to_owned(),
        None => architecture,
    };
    Ok(ModelInfo {
        path: m.dir.clone(),
        format: ModelFormat::Safetensors,
        // An encoder's head decides; one whose config does not load has no
        // task to show (`serve` names what is wrong), not a guessed one.
        task: match EncoderFamily::from_name(&architecture) {
            Some(_) => Encoder::from_hf(m).ok().map(|e| e.task()),
            None => task_of(&architecture),
        },
        name: m
            .config
            .get("_name_or_path")
            .and_then(|v| v.as_str())
            .map(str::to_owned),
        architecture,
        // Integer tensors (BERT's `position_ids`) are buffers, not parameters.
        parameters: dtypes
            .iter()
            .filter(|(d, _)| d.starts_with('F') || d.starts_with("BF"))
            .map(|(_, s)| s.parameters)
            .sum(),
        weight_bytes: dtypes.values().map(|s| s.bytes).sum(),
        file_bytes: dir_bytes(&m.dir)?,
        dtypes,
        context_length: m.config_usize("max_position_embeddings"),
        vocab_size: m.config_usize("vocab_size"),
        hidden_size: m.config_usize("hidden_size"),
        layers: m.config_usize("num_hidden_layers"),
        attention_heads: m.config_usize("num_attention_heads"),
        kv_heads: m
            .config_usize("num_key_value_heads")
            .or_else(|| m.config_usize("num_attention_heads")),
        feed_forward: m.config_usize("intermediate_size"),
        decoder,
        rope_scaling,
        // A converted checkpoint has read tokenizer_config.json already.
        chat_template: match &converted {
            Some(c) => c.gguf.has("tokenizer.chat_template"),
            None => crate::files::read_small(
                &m.dir.join("tokenizer_config.json"),
                crate::files::MAX_SMALL_FILE,
            )
            .is_ok_and(|t| t.windows(15).any(|w| w == b"\"chat_template\"")),
        },
    })
}

fn describe_gguf(g: &GgufFile) -> Result<ModelInfo, ModelError> {
    let mut dtypes: BTreeMap<String, DTypeStats> = BTreeMap::new();
    for info in g.content.tensor_infos.values() {
        let elements = info.shape.elem_count() as u64;
        let t = info.ggml_dtype;
        let s = dtypes.entry(ggml_dtype_name(t).to_owned()).or_default();
        s.tensors += 1;
        s.parameters += elements;
        s.bytes += elements / t.block_size() as u64 * t.type_size() as u64;
    }
    let architecture = g.architecture()?.to_owned();
    let arch = |k: &str| g.arch_uint(k).ok().map(|v| v as usize);
    let vocab_size = arch("vocab_size").or_else(|| {
        g.strings("tokenizer.ggml.tokens")
            .ok()
            .map(|tokens| tokens.len())
    });
    // A decoder that does not parse is still described by its counts; the
    // engine names what is wrong when it is served.
    let decoder = DecoderHparams::from_gguf(g).ok();
    let rope_scaling = rope_scaling(g, decoder.as_ref());
    let file_bytes = std::fs::metadata(&g.path)
        .map_err(ModelError::io(&g.path))?
        .len();
    Ok(ModelInfo {
        path: g.path.clone(),
        format: ModelFormat::Gguf,
        task: match EncoderFamily::from_name(&architecture) {
            Some(_) => Encoder::from_gguf(g).ok().map(|e| e.task()),
            None => task_of(&architecture),
        },
        name: g.string("general.name").ok().map(str::to_owned),
        parameters: dtypes.values().map(|s| s.parameters).sum(),
        weight_bytes: dtypes.values().map(|s| s.bytes).sum(),
        file_bytes,
        dtypes,
        context_length: arch("context_length"),
        vocab_size,
        hidden_size: arch("embedding_length"),
        layers: arch("block_count"),
        attention_heads: arch("attention.head_count"),
        kv_heads: arch("attention.head_count_kv").or_else(|| arch("attention.head_count")),
        feed_forward: arch("feed_forward_length"),
        decoder,
        rope_scaling,
        chat_template: g.has("tokenizer.chat_template"),
        architecture,
    })
}

/// How a decoder scales rotary positions, if it does.
fn rope_scaling(g: &GgufFile, decoder: Option<&DecoderHparams>) -> Option<String> {
    if g.content.tensor_infos.contains_key("rope_freqs.weight") {
        Some("per-frequency factors (rope_freqs)".to_owned())
    } else {
        decoder
            .filter(|d| d.rope.position_scale != 1.0)
            .map(|d| format!("linear, factor {}", 1.0 / d.rope.position_scale))
    }
}

fn dir_bytes(dir: &Path) -> Result<u64, ModelError> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(ModelError::io(dir))? {
        let entry = entry.map_err(ModelError::io(dir))?;
        let meta = entry.metadata().map_err(ModelError::io(entry.path()))?;
        total += if meta.is_dir() {
            dir_bytes(&entry.path())?
        } else {
            meta.len()
        };
    }
    Ok(total)
}
