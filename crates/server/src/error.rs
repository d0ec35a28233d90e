//! The one place where failures become HTTP responses: an OpenAI-style body
//! `{"error": {"message", "type", "param", "code"}}`, a status, and
//! `Retry-After` when waiting helps. 5xx bodies never carry internals.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use modelship_engine::EngineError;
use serde::Serialize;

/// How long an overloaded client should wait before retrying, in seconds.
const RETRY_AFTER_SECS: u32 = 1;

#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub param: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: Detail<'a>,
}

#[derive(Serialize)]
struct Detail<'a> {
    message: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    param: Option<&'a str>,
    code: Option<&'static str>,
}

impl ApiError {
    pub fn bad_request(param: impl Into<Option<String>>, message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            param: param.into(),
        }
    }

    /// A request naming a model this replica does not serve (OpenAI's
    /// `model_not_found`).
    pub fn model_not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
            param: Some("model".into()),
        }
    }

    /// A path no route serves, worded as OpenAI words it.
    pub fn no_route(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("Invalid URL ({method} {path})"),
            param: None,
        }
    }

    /// A route asked with a method it does not take.
    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self {
            status: StatusCode::METHOD_NOT_ALLOWED,
            message: format!("{method} is not allowed on {path}"),
            param: None,
        }
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
            param: None,
        }
    }

    pub fn unauthorized() -> Self {
        Self {
            status: StatusCode::UNAUTHORIZED,
            message: "missing or wrong API key: send `Authorization: Bearer KEY`".into(),
            param: None,
        }
    }

    /// The shared vocabulary's type for the status (the gateway's and the
    /// control API's errors use the same).
    fn kind(&self) -> &'static str {
        modelship_types::errors::error_type(self.status.as_u16())
    }

    fn code(&self) -> Option<&'static str> {
        match self.status {
            StatusCode::UNAUTHORIZED => Some("invalid_api_key"),
            StatusCode::TOO_MANY_REQUESTS => Some("overloaded"),
            // A route 404 is not a missing model.
            StatusCode::NOT_FOUND if self.param.as_deref() == Some("model") => {
                Some("model_not_found")
            }
            StatusCode::PAYLOAD_TOO_LARGE => Some("request_too_large"),
            _ => None,
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        let (status, param) = match &e {
            EngineError::Invalid { param, .. } => {
                (StatusCode::BAD_REQUEST, param.map(str::to_owned))
            }
            EngineError::WrongTask { .. } => (StatusCode::BAD_REQUEST, Some("model".to_owned())),
            EngineError::Overloaded { .. } => (StatusCode::TOO_MANY_REQUESTS, None),
            EngineError::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, None),
            EngineError::Backend(source) => {
                // Logged here with its cause; the client gets no internals.
                tracing::error!(error = %source, "inference failed");
                (StatusCode::INTERNAL_SERVER_ERROR, None)
            }
        };
        Self {
            status,
            message: e.to_string(),
            param,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Body {
            error: Detail {
                message: &self.message,
                kind: self.kind(),
                param: self.param.as_deref(),
                code: self.code(),
            },
        };
        let mut resp = (self.status, axum::Json(body)).into_response();
        if matches!(
            self.status,
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
        ) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECS));
        }
        resp
    }
}
