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
}

impl Task {
    /// The name used in specs, flags and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Embeddings => "embeddings",
            Task::Generate => "generate",
        }
    }
}

impl fmt::Display for Task {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A task name that is neither `embeddings` nor `generate`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task `{0}`: expected `embeddings` or `generate`")]
pub struct ParseTaskError(pub String);

impl FromStr for Task {
    type Err = ParseTaskError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "embeddings" | "embedding" | "embed" => Ok(Task::Embeddings),
            "generate" | "generation" | "text-generation" => Ok(Task::Generate),
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
        ] {
            assert_eq!(s.parse::<Task>().unwrap(), t);
        }
        assert_eq!(
            "classify".parse::<Task>().unwrap_err().to_string(),
            "unknown task `classify`: expected `embeddings` or `generate`"
        );
    }

    #[test]
    fn display_round_trips() {
        for t in [Task::Embeddings, Task::Generate] {
            assert_eq!(t.to_string().parse::<Task>().unwrap(), t);
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
    }
}
