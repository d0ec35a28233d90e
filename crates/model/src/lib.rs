//! Model files: Hugging Face directories (config.json, *.safetensors,
//! tokenizer.json, sentence-transformers pooling) and GGUF files (metadata,
//! tensor table, tokenizer and chat template in the metadata).
//!
//! Owns reading and describing a model; it runs nothing. No network, no async.

mod chat;
mod checkpoint;
mod decoder;
mod encoder;
mod error;
mod files;
#[doc(hidden)]
pub mod fuzz;
mod gguf;
mod gguf_header;
mod hf;
mod info;
mod sentencepiece;
mod tokenizer;

pub use chat::{ChatMessage, ChatTemplate, FunctionCall, ToolCall, ToolFormat};
pub use checkpoint::{
    CHECKPOINT_TYPES, CheckpointTensor, DecoderCheckpoint, StoredAt, checkpoint_family, floats_le,
};
pub use decoder::{Activation, DecoderHparams, Family, Rope, RopeStyle};
pub use encoder::{
    ACTIVATION_KEY, ClassifierHead, DEFAULT_PROMPT_KEY, ENCODER_TYPES, Encoder, EncoderFamily,
    EncoderOutput, POSITION_OFFSET_KEY, PROMPTS_KEY, Prompts, RelativeBuckets, ScoreActivation,
    gguf_tensor_name,
};
pub use error::ModelError;
pub use files::regular_file;
pub use gguf::{GgufFile, ggml_dtype_name};
pub use hf::{HfModel, Pooling, SafetensorsTensor};
pub use info::{DTypeStats, ModelFormat, ModelInfo, inspect};
pub use tokenizer::{
    Detokenizer, HF_JSON_KEY, NORMALIZE_KEY, POOLING_KEY, TextTokenizer, TokenBytes,
};

use std::path::{Path, PathBuf};

/// Where a model lives and in which format, decided from the path alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A directory with `config.json` and safetensors weights.
    HfDir(PathBuf),
    /// A single GGUF file.
    Gguf(PathBuf),
}

impl ModelSource {
    /// Detects the format: a directory with `config.json`, or a file starting
    /// with the GGUF magic.
    pub fn detect(path: &Path) -> Result<Self, ModelError> {
        let meta = std::fs::metadata(path).map_err(|source| ModelError::Io {
            path: path.to_owned(),
            source,
        })?;
        if meta.is_dir() {
            if path.join("config.json").is_file() {
                return Ok(Self::HfDir(path.to_owned()));
            }
        } else if gguf::has_magic(path)? {
            return Ok(Self::Gguf(path.to_owned()));
        }
        Err(ModelError::UnknownFormat {
            path: path.to_owned(),
        })
    }
}
