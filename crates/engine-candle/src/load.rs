//! From a model path to a running engine: detect the format, build the
//! tokenizer and backend ([`open`]), and cap the limits to what the model
//! supports ([`load`]).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use candle_core::Device;
use modelship_engine::{EncoderServing, Engine, ModelCard};
use modelship_model::{
    CHECKPOINT_TYPES, ChatTemplate, DecoderCheckpoint, ENCODER_TYPES, Encoder, EncoderFamily,
    EncoderOutput, Family, GgufFile, HfModel, ModelError, ModelSource, TextTokenizer,
    checkpoint_family,
};
use modelship_types::{LimitError, ServingLimits, Task};

use crate::{DecoderBackend, EncoderBackend};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(
        "{path}: architecture `{architecture}` is not supported for serving (encoders: {encoders}; decoders: GGUF files of {decoders}, Hugging Face directories of {checkpoints})"
    )]
    Unsupported {
        path: PathBuf,
        architecture: String,
        encoders: &'static str,
        decoders: &'static str,
        checkpoints: &'static str,
    },
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

/// A model's tokenizer and backend, ready to run but not scheduled.
// Both variants are about 2 KB and one is built per model load: boxing
// either would only add a pointer chase.
#[allow(clippy::large_enum_variant)]
pub enum OpenModel {
    /// Embeddings, reranking or classification, as `encoder.task()` says.
    Encoder {
        tokenizer: TextTokenizer,
        backend: EncoderBackend,
        encoder: Encoder,
    },
    Generate {
        tokenizer: TextTokenizer,
        chat: Option<ChatTemplate>,
        backend: DecoderBackend,
        context: usize,
    },
}

impl OpenModel {
    pub fn task(&self) -> Task {
        match self {
            OpenModel::Encoder { encoder, .. } => encoder.task(),
            OpenModel::Generate { .. } => Task::Generate,
        }
    }
}

/// Opens the model at `path`; a decoder's rotary tables cover `max_context`
/// positions (capped by the model's own context).
pub fn open(path: &Path, device: &Device, max_context: usize) -> Result<OpenModel, LoadError> {
    match ModelSource::detect(path)? {
        ModelSource::HfDir(dir) => open_hf(&dir, device, max_context),
        ModelSource::Gguf(file) => {
            let gguf = GgufFile::open(&file)?;
            match gguf_kind(&gguf)? {
                GgufKind::Encoder => open_encoder_gguf(gguf, device),
                GgufKind::Decoder => open_decoder(gguf, device, max_context),
            }
        }
    }
}

/// Loads the weights of the GGUF file at `path` as [`open`] does (every
/// tensor its architecture needs, each of the shape the metadata implies)
/// on the CPU, without building its tokenizer: how `quantize` checks what
/// it wrote. The matrices our kernels read stay mapped, not copied.
pub fn check_gguf_weights(path: &Path) -> Result<(), LoadError> {
    let gguf = GgufFile::open(path)?;
    let device = Device::Cpu;
    match gguf_kind(&gguf)? {
        GgufKind::Encoder => {
            let encoder = Encoder::from_gguf(&gguf)?;
            EncoderBackend::from_gguf(&gguf, &encoder, &device).map(drop)
        }
        GgufKind::Decoder => DecoderBackend::from_gguf(&gguf, &device, 16).map(drop),
    }
    .map_err(weights_err(path))
}

enum GgufKind {
    Encoder,
    Decoder,
}

/// Which loader reads `gguf`, by its architecture.
fn gguf_kind(gguf: &GgufFile) -> Result<GgufKind, LoadError> {
    let architecture = gguf.architecture()?;
    if EncoderFamily::from_name(architecture).is_some() {
        Ok(GgufKind::Encoder)
    } else if Family::from_architecture(architecture).is_some() {
        Ok(GgufKind::Decoder)
    } else {
        Err(LoadError::Unsupported {
            path: gguf.path.clone(),
            architecture: architecture.to_owned(),
            encoders: ENCODER_TYPES,
            decoders: Family::SUPPORTED,
            checkpoints: CHECKPOINT_TYPES,
        })
    }
}

/// Loads the model at `path` and starts its scheduler.
pub fn load(path: &Path, opts: &LoadOptions) -> Result<Engine, LoadError> {
    opts.limits.validate()?;
    let name = opts.name.clone().unwrap_or_else(|| default_name(path));
    let model = open(path, &opts.device, opts.limits.max_context)?;
    Ok(match model {
        OpenModel::Encoder {
            tokenizer,
            backend,
            encoder,
        } => {
            let limits = opts.limits.capped_to_model(encoder.context());
            let mut card = card(name, encoder.task(), encoder.family.name(), &limits, None);
            let activation = match encoder.output {
                EncoderOutput::Pooled { .. } => {
                    card.dimensions = Some(backend.dimensions());
                    None
                }
                EncoderOutput::Classifier(head) => {
                    card.labels = head.labels;
                    Some(head.activation)
                }
            };
            let serving = EncoderServing {
                prompts: encoder.prompts,
                activation,
                token_rows: Some(backend.token_rows()),
            };
            Engine::encoder(card, limits, tokenizer, serving, backend)
        }
        OpenModel::Generate {
            tokenizer,
            chat,
            backend,
            context,
        } => {
            let limits = opts.limits.capped_to_model(context);
            let family = backend.hparams().family.name();
            let card = card(name, Task::Generate, family, &limits, None);
            Engine::generation(card, limits, tokenizer, chat, backend)
        }
    })
}

fn card(
    name: String,
    task: Task,
    architecture: &str,
    limits: &ServingLimits,
    dimensions: Option<usize>,
) -> ModelCard {
    ModelCard {
        name,
        task,
        architecture: architecture.to_owned(),
        max_context: limits.max_context,
        dimensions,
        labels: Vec::new(),
        created: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
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

fn weights_err(path: &Path) -> impl FnOnce(candle_core::Error) -> LoadError {
    let path = path.to_owned();
    move |source| LoadError::Weights { path, source }
}

fn open_hf(dir: &Path, device: &Device, max_context: usize) -> Result<OpenModel, LoadError> {
    let hf = HfModel::open(dir)?;
    let architecture = hf.model_type().unwrap_or("unknown").to_owned();
    if checkpoint_family(&architecture).is_some() {
        let checkpoint = DecoderCheckpoint::open(&hf)?;
        let backend = DecoderBackend::from_checkpoint(&checkpoint, device, max_context)
            .map_err(weights_err(dir))?;
        return decoder(&checkpoint.gguf, backend);
    }
    if EncoderFamily::from_name(&architecture).is_none() {
        return Err(LoadError::Unsupported {
            path: dir.to_owned(),
            architecture,
            encoders: ENCODER_TYPES,
            decoders: Family::SUPPORTED,
            checkpoints: CHECKPOINT_TYPES,
        });
    }
    let encoder = Encoder::from_hf(&hf)?;
    Ok(OpenModel::Encoder {
        tokenizer: TextTokenizer::from_file(&hf.tokenizer_path())?,
        backend: EncoderBackend::load(&hf, &encoder, device).map_err(weights_err(dir))?,
        encoder,
    })
}

fn open_encoder_gguf(gguf: GgufFile, device: &Device) -> Result<OpenModel, LoadError> {
    let file = gguf.path.clone();
    let tokenizer = TextTokenizer::from_gguf(&gguf)?;
    let encoder = Encoder::from_gguf(&gguf)?;
    Ok(OpenModel::Encoder {
        tokenizer,
        backend: EncoderBackend::from_gguf(&gguf, &encoder, device).map_err(weights_err(&file))?,
        encoder,
    })
}

fn open_decoder(
    gguf: GgufFile,
    device: &Device,
    max_context: usize,
) -> Result<OpenModel, LoadError> {
    let file = gguf.path.clone();
    // Rotary tables are built for the positions this replica will serve.
    let backend =
        DecoderBackend::from_gguf(&gguf, device, max_context).map_err(weights_err(&file))?;
    decoder(&gguf, backend)
}

/// A decoder's tokenizer and chat template from its (GGUF) metadata.
fn decoder(gguf: &GgufFile, backend: DecoderBackend) -> Result<OpenModel, LoadError> {
    let tokenizer = TextTokenizer::from_gguf(gguf)?;
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
    Ok(OpenModel::Generate {
        context: backend.context(),
        tokenizer,
        chat,
        backend,
    })
}
