/// Why the engine did not serve a request. The server maps each variant to one
/// HTTP status in one place.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EngineError {
    /// The request is wrong: too long, empty, out of range. `param` names the
    /// request field at fault.
    #[error("{message}")]
    Invalid {
        message: String,
        param: Option<&'static str>,
    },
    /// The queue is full; retry later.
    #[error("the model is overloaded: {queued} requests are waiting; retry later")]
    Overloaded { queued: usize },
    /// The engine is shutting down or its worker stopped.
    #[error("the model is not available")]
    Unavailable,
    /// The task is not what this model does.
    #[error("this model serves {served}, not {asked}")]
    WrongTask {
        served: &'static str,
        asked: &'static str,
    },
    #[error("inference failed")]
    Backend(#[source] crate::BackendError),
}

impl EngineError {
    pub(crate) fn invalid(param: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid {
            message: message.into(),
            param: Some(param),
        }
    }
}
