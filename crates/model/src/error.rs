use std::path::PathBuf;

/// Everything that can be wrong with a model on disk.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a model: expected a directory with config.json, or a GGUF file")]
    UnknownFormat { path: PathBuf },
    #[error("invalid JSON in {path}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{path}: GGUF metadata key `{key}` is {problem}")]
    Metadata {
        path: PathBuf,
        key: String,
        problem: &'static str,
    },
    #[error("{path}: field `{field}` is {problem}")]
    Config {
        path: PathBuf,
        field: String,
        problem: String,
    },
    #[error("{path}: architecture `{architecture}` is not supported (supported: {supported})")]
    UnsupportedArchitecture {
        path: PathBuf,
        architecture: String,
        supported: &'static str,
    },
    #[error("cannot build the tokenizer of {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("invalid chat template")]
    Template(#[source] minijinja::Error),
}

impl ModelError {
    /// Wraps an I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }
}
