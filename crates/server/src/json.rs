//! A JSON body extractor whose errors name the offending field, so a client
//! sees `param: "input"` rather than a parser's line and column only.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use std::time::Duration;

use crate::error::ApiError;

pub struct Json<T>(pub T);

/// How long a body may take to arrive, set on the router by `serve`.
#[derive(Debug, Clone, Copy)]
pub struct BodyTimeout(pub Duration);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        parse(&body(req, state).await?).map(Json)
    }
}

/// A request of OpenAI's schema, whose fields we do not act on are taken
/// out first ([`crate::inert`]).
pub trait OpenAiRequest: DeserializeOwned {
    const INERT: &'static [crate::inert::Inert];
}

/// The JSON body of an [`OpenAiRequest`].
pub struct OpenAiJson<T>(pub T);

impl<S: Send + Sync, T: OpenAiRequest> FromRequest<S> for OpenAiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        parse_openai(&body(req, state).await?).map(OpenAiJson)
    }
}

/// The body's bytes, within the size limit and the body timeout.
async fn body<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    let timeout = req
        .extensions()
        .get::<BodyTimeout>()
        // Without one: a router used in-process.
        .map_or(crate::BODY_TIMEOUT, |t| t.0);
    let read = tokio::time::timeout(timeout, Bytes::from_request(req, state));
    let bytes = read.await.map_err(|_| ApiError {
        status: StatusCode::REQUEST_TIMEOUT,
        message: format!("the request body did not arrive within {timeout:?}"),
        param: None,
    })?;
    bytes.map_err(|rejection| {
        let status = rejection.status();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError {
                status,
                message: "the request body is larger than the limit (see --max-body-bytes)".into(),
                param: None,
            }
        } else {
            ApiError::bad_request(None, rejection.body_text())
        }
    })
}

/// Parses `bytes` as the OpenAI request `T`: its inert fields checked and
/// taken out, the rest read strictly.
pub fn parse_openai<T: OpenAiRequest>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut body: serde_json::Value = parse(bytes)?;
    if let Some(map) = body.as_object_mut() {
        crate::inert::take(map, T::INERT)?;
    }
    named(serde_path_to_error::deserialize(body))
}

/// Parses `bytes` as `T`, naming the field at fault.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = named(serde_path_to_error::deserialize(&mut de))?;
    // One JSON value and nothing after it but whitespace.
    de.end()
        .map_err(|e| ApiError::bad_request(None, format!("the body is not valid JSON: {e}")))?;
    Ok(value)
}

/// A deserialization's error as a 400 naming the field at fault.
fn named<T>(
    result: Result<T, serde_path_to_error::Error<serde_json::Error>>,
) -> Result<T, ApiError> {
    result.map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        let param = (path != ".").then_some(path);
        let message = match (&param, inner.classify()) {
            (_, serde_json::error::Category::Syntax | serde_json::error::Category::Eof) => {
                format!("the body is not valid JSON: {inner}")
            }
            (Some(p), _) => format!("invalid `{p}`: {inner}"),
            (None, _) => format!("invalid request: {inner}"),
        };
        ApiError::bad_request(param, message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Req {
        input: String,
        n: Option<u32>,
    }

    #[test]
    fn wrong_type_names_the_field() {
        let e = parse::<Req>(br#"{"input": 5}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert_eq!(e.param.as_deref(), Some("input"));
        assert!(e.message.contains("invalid type"), "{}", e.message);
    }

    #[test]
    fn syntax_errors_say_so() {
        let e = parse::<Req>(br#"{"input": "#).unwrap_err();
        assert!(
            e.message.starts_with("the body is not valid JSON"),
            "{}",
            e.message
        );
    }

    #[test]
    fn trailing_bytes_after_the_body_are_refused() {
        let e = parse::<Req>(br#"{"input": "a"} {"input": "b"}"#).unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
        assert!(e.message.contains("trailing"), "{}", e.message);
        assert!(parse::<Req>(b"{\"input\": \"a\"}\n  ").is_ok());
    }

    #[test]
    fn unknown_and_missing_fields_are_reported() {
        let e = parse::<Req>(br#"{"input": "a", "bogus": 1}"#).unwrap_err();
        assert!(e.message.contains("bogus"), "{}", e.message);
        let e = parse::<Req>(br#"{}"#).unwrap_err();
        assert!(e.message.contains("input"), "{}", e.message);
    }
}
