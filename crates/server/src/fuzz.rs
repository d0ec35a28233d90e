//! Entry point of the request-parser fuzz target in `fuzz/` (not an API):
//! a body as every route reads it. Whatever the bytes, the answer is a
//! value or a 400 naming the problem, never a panic or another status.

use crate::completions::{ChatRequest, CompletionRequest};
use crate::embeddings::EmbeddingsRequest;
use crate::error::ApiError;
use crate::json::{parse, parse_openai};
use crate::v2::{InferRequest, texts};

pub fn request_bodies(bytes: &[u8]) {
    check(parse::<EmbeddingsRequest>(bytes).map(drop));
    check(parse_openai::<CompletionRequest>(bytes).map(drop));
    check(parse_openai::<ChatRequest>(bytes).map(drop));
    check(parse::<InferRequest>(bytes).and_then(texts).map(drop));
}

fn check(outcome: Result<(), ApiError>) {
    if let Err(e) = outcome {
        assert_eq!(
            e.status,
            axum::http::StatusCode::BAD_REQUEST,
            "{}",
            e.message
        );
        assert!(!e.message.is_empty());
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_entry_point_runs_on_small_inputs() {
        for body in [
            &br#"{"input": ["a", "b"], "encoding_format": null}"#[..],
            br#"{"messages": [{"role": "user", "content": "hi"}], "stop": ["x"]}"#,
            br#"{"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}"#,
            b"{\"prompt\": 5",
        ] {
            super::request_bodies(body);
        }
    }
}
