use std::path::PathBuf;

use modelship_model::ModelError;

/// What can go wrong quantizing or pruning a model.
#[derive(Debug, thiserror::Error)]
pub enum QuantError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("{path}: {what} is not supported")]
    Unsupported { path: PathBuf, what: String },
    #[error("invalid model {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot read tensor `{tensor}` of {path}")]
    Read {
        path: PathBuf,
        tensor: String,
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error("cannot encode tensor `{tensor}`")]
    Encode {
        tensor: String,
        #[source]
        source: Box<candle_core::Error>,
    },
    #[error("the written model would not load, so {path} was not written: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}
