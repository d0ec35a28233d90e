//! From a model path to a running engine: detect the format, build the
//! tokenizer and backend, and cap the limits to what the model supports.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::Device;
use modelship_engine::{Engine, ModelCard};
use modelship_model::{ChatTemplate, GgufFile, HfModel, ModelError, ModelSource, TextTokenizer};
use modelship_types::{LimitError, ServingLimits, Task};

use crate::{BertBackend, LlamaBackend};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "{path}: architecture `{architecture}` is not supported for serving (BERT directories and llama GGUF files are)"
    )]
    Unsupported { path: PathBuf, architecture: String },
    #[error("cannot load the weights of {path}")]
    Weights {
        path: PathBuf,
        #[source]
        source: candle_core::Error,
    },
    #[error(transparent)]
    Limits(#[from] LimitError),
}

/// How to load and serve a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Served model name; the file or directory name when `None`.
    pub name: Option<String>,
    pub device: Device,
    pub limits: ServingLimits,
}

/// Loads the model at `path` and starts its scheduler.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Engine, LoadError> {
    opts.limits.validate()?;
    let name = opts.name.clone().unwrap_or_else(|| default_name(path));
    match ModelSource::detect(path)? {
        ModelSource::HfDir(dir) => load_bert(&dir, name, opts),
        ModelSource::Gguf(file) => load_llama(&file, name, opts),
    }
}

fn default_name(path: &Path) -> String {
    let stem = if path.is_dir() {
        path.file_name()
    } else {
        path.file_stem()
    };
    stem.map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_owned())
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn load_bert(dir: &Path, name: String, opts: &LoadOptions) -> Result<Engine, LoadError> {
    let hf = HfModel::open(dir)?;
    let architecture = hf.model_type().unwrap_or("unknown").to_owned();
    if architecture != "bert" {
        return Err(LoadError::Unsupported {
            path: dir.to_owned(),
            architecture,
        });
    }
    let tokenizer = TextTokenizer::from_file(&hf.tokenizer_path())?;
    let backend = BertBackend::load(&hf, &opts.device).map_err(|source| LoadError::Weights {
        path: dir.to_owned(),
        source,
    })?;
    let model_context = hf.config_usize("max_position_embeddings").unwrap_or(512);
    let limits = opts.limits.capped_to_model(model_context);
    let card = ModelCard {
        name,
        task: Task::Embeddings,
        architecture,
        max_context: limits.max_context,
        dimensions: Some(backend.dimensions()),
        created: now(),
    };
    Ok(Engine::embeddings(card, limits, tokenizer, backend))
}

fn load_llama(file: &Path, name: String, opts: &LoadOptions) -> Result<Engine, LoadError> {
    let gguf = GgufFile::open(file)?;
    let architecture = gguf.architecture()?.to_owned();
    if architecture != "llama" {
        return Err(LoadError::Unsupported {
            path: file.to_owned(),
            architecture,
        });
    }
    let tokenizer = TextTokenizer::from_gguf(&gguf)?;
    let token = |key: &str| {
        gguf.uint(key)
            .ok()
            .and_then(|id| tokenizer.id_to_token(id as u32))
            .unwrap_or_default()
    };
    let chat = if gguf.has("tokenizer.chat_template") {
        Some(ChatTemplate::new(
            gguf.string("tokenizer.chat_template")?,
            &token("tokenizer.ggml.bos_token_id"),
            &token("tokenizer.ggml.eos_token_id"),
        )?)
    } else {
        None
    };
    let model_context = gguf
        .arch_uint("context_length")
        .map(|c| c as usize)
        .unwrap_or(opts.limits.max_context);
    let limits = opts.limits.capped_to_model(model_context);
    let weights_err = |source| LoadError::Weights {
        path: file.to_owned(),
        source,
    };
    let mut reader = std::fs::File::open(file).map_err(ModelError::io(file))?;
    // Rotary tables are built for the positions this replica will serve.
    let backend =
        LlamaBackend::from_gguf(gguf.content, &mut reader, &opts.device, limits.max_context)
            .map_err(weights_err)?;
    let card = ModelCard {
        name,
        task: Task::Generate,
        architecture,
        max_context: limits.max_context,
        dimensions: None,
        created: now(),
    };
    Ok(Engine::generation(card, limits, tokenizer, chat, backend))
}
