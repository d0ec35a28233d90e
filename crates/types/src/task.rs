use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// What a deployed model does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Text in, one vector per text out (BERT-family encoders).
    Embeddings,
    /// Text in, text out, token by token (decoder-only language models).
    Generate,
    /// (query, text) pairs in, one relevance score per pair out: a
    /// cross-encoder (a sequence-classification head with one label).
    Rerank,
    /// Text in, a score per label out (a sequence-classification head with
    /// several labels).
    Classify,
}

impl Task {
    /// The name used in specs, flags and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Embeddings => "embeddings",
            Task::Generate => "generate",
            Task::Rerank => "rerank",
            Task::Classify => "classify",
        }
    }

    /// Whether the model reads its whole input at once (an encoder) rather
    /// than generating token by token.
    pub fn is_encoder(self) -> bool {
        self != Task::Generate
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task name that is none of the four.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task `{0}`: expected `embeddings`, `generate`, `rerank` or `classify`")]
pub struct ParseTaskError(pub String);

impl FromStr for Task {
    type Err = ParseTaskError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embeddings" | "embedding" | "embed" => Ok(Task::Embeddings),
            "generate" | "generation" | "text-generation" => Ok(Task::Generate),
            "rerank" | "reranker" | "reranking" => Ok(Task::Rerank),
            "classify" | "classifier" | "classification" => Ok(Task::Classify),
            other => Err(ParseTaskError(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_and_aliases() {
        for (s, t) in [
            ("embeddings", Task::Embeddings),
            ("embed", Task::Embeddings),
            ("generate", Task::Generate),
            ("text-generation", Task::Generate),
            ("reranker", Task::Rerank),
            ("classification", Task::Classify),
        ] {
            assert_eq!(s.parse::<Task>().unwrap(), t);
        }
        assert_eq!(
            "translate".parse::<Task>().unwrap_err().to_string(),
            "unknown task `translate`: expected `embeddings`, `generate`, `rerank` or `classify`"
        );
    }

    #[test]
    fn display_round_trips() {
        for t in [
            Task::Embeddings,
            Task::Generate,
            Task::Rerank,
            Task::Classify,
        ] {
            assert_eq!(t.to_string().parse::<Task>().unwrap(), t);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
    }
}
