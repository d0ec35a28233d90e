use serde::{Deserialize, Serialize};

/// The workload one replica accepts. The same names appear as `modelship serve`
/// flags (`--max-context`, ...) and, later, in the spec's `serving` section, so the
/// planner sizes a replica for exactly what the running replica enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct ServingLimits {
    /// Tokens of one sequence: the input of an embedding, or prompt plus generated
    /// tokens of a completion. Capped by the model's own context length.
    pub max_context: usize,
    /// Sequences generated at the same time (each holds a KV cache).
    pub max_concurrent: usize,
    /// Tokens in one forward pass: padded embedding inputs (batch size ×
    /// longest input), or the new prompts of a generation step together.
    pub max_batch_tokens: usize,
    /// Requests waiting for the engine beyond those being served; more get 429.
    pub max_queue: usize,
    /// Largest `max_tokens` a completion may ask for.
    pub max_tokens: usize,
    /// Largest request body in bytes; more gets 413.
    pub max_body_bytes: usize,
    /// Texts in one embedding request.
    pub max_inputs: usize,
}

impl Default for ServingLimits {
    fn default() -> Self {
        Self {
            max_context: 2048,
            max_concurrent: 4,
            max_batch_tokens: 16_384,
            max_queue: 256,
            max_tokens: 1024,
            max_body_bytes: 2 * 1024 * 1024,
            max_inputs: 512,
        }
    }
}

/// A limit that cannot work, naming the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct LimitError {
    pub field: &'static str,
    pub reason: String,
}

impl ServingLimits {
    /// Checks each limit on its own and against the others.
    pub fn validate(&self) -> Result<(), LimitError> {
        let positive = [
            ("max_context", self.max_context),
            ("max_concurrent", self.max_concurrent),
            ("max_batch_tokens", self.max_batch_tokens),
            ("max_queue", self.max_queue),
            ("max_tokens", self.max_tokens),
            ("max_body_bytes", self.max_body_bytes),
            ("max_inputs", self.max_inputs),
        ];
        if let Some((field, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(LimitError {
                field,
                reason: "must be at least 1".into(),
            });
        }
        if self.max_batch_tokens < self.max_context {
            return Err(LimitError {
                field: "max_batch_tokens",
                reason: format!(
                    "{} is smaller than max_context {}: a single full-length input could never be batched",
                    self.max_batch_tokens, self.max_context
                ),
            });
        }
        Ok(())
    }

    /// These limits with `max_context` lowered to what the model supports.
    pub fn capped_to_model(mut self, model_context: usize) -> Self {
        self.max_context = self.max_context.min(model_context);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        ServingLimits::default().validate().unwrap();
    }

    #[test]
    fn zero_limits_name_the_field() {
        let bad = ServingLimits {
            max_queue: 0,
            ..Default::default()
        };
        let err = bad.validate().unwrap_err();
        assert_eq!(err.field, "max_queue");
        assert_eq!(err.to_string(), "invalid `max_queue`: must be at least 1");
    }

    #[test]
    fn batch_budget_must_hold_one_full_input() {
        let bad = ServingLimits {
            max_context: 512,
            max_batch_tokens: 256,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "max_batch_tokens");
    }

    #[test]
    fn capping_never_raises_the_context() {
        let l = ServingLimits::default();
        assert_eq!(l.capped_to_model(512).max_context, 512);
        assert_eq!(l.capped_to_model(1 << 20).max_context, l.max_context);
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<ServingLimits>(r#"{"max_contxt": 5}"#).unwrap_err();
        assert!(err.to_string().contains("max_contxt"), "{err}");
    }
}
