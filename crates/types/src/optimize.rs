//! The spec's `optimize` section: which precision to serve, optional pruning,
//! and the quality gate a candidate must pass against the original model.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::QuantType;

/// `optimize:` in a spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Optimize {
    #[serde(default)]
    pub quantize: QuantChoice,
    #[serde(default)]
    pub prune: Option<PruneSpec>,
    /// Evaluation text; the built-in corpus when omitted.
    #[serde(default)]
    pub eval: Option<PathBuf>,
    #[serde(default)]
    pub gate: Gate,
}

/// `quantize:` — keep the original, one precision, or the smallest that passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum QuantChoice {
    #[default]
    None,
    Type(QuantType),
    Auto,
}

impl QuantChoice {
    /// The precisions to try, in the order they are tried.
    pub fn candidates(self) -> Vec<QuantType> {
        match self {
            QuantChoice::None => Vec::new(),
            QuantChoice::Type(t) => vec![t],
            QuantChoice::Auto => QuantType::ALL.to_vec(),
        }
    }
}

impl Serialize for QuantChoice {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            QuantChoice::None => s.serialize_str("none"),
            QuantChoice::Auto => s.serialize_str("auto"),
            QuantChoice::Type(t) => s.serialize_str(t.as_str()),
        }
    }
}

impl schemars::JsonSchema for QuantChoice {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "QuantChoice".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut names = vec!["none", "auto"];
        names.extend(QuantType::ALL.iter().map(|t| t.as_str()));
        schemars::json_schema!({
            "description": "Keep the original (none), one precision, or the smallest that passes the gate (auto).",
            "type": "string",
            "enum": names,
        })
    }
}

impl<'de> Deserialize<'de> for QuantChoice {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        match s.as_str() {
            "none" => Ok(QuantChoice::None),
            "auto" => Ok(QuantChoice::Auto),
            other => other.parse().map(QuantChoice::Type).map_err(|_| {
                serde::de::Error::custom(format!(
                    "unknown quantize `{other}`: expected none, auto, f32, f16, bf16, q8_0, q6_k, q5_k, q4_1, q4_k or q4_0"
                ))
            }),
        }
    }
}

/// Which weights magnitude pruning may zero.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
pub enum PrunePattern {
    /// The smallest weights of each matrix, wherever they are.
    #[default]
    #[serde(rename = "unstructured")]
    Unstructured,
    /// Two of every four consecutive weights of a row (50%, the sparse tensor
    /// cores' pattern).
    #[serde(rename = "2:4")]
    TwoFour,
}

/// `prune:` — magnitude pruning of the linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneSpec {
    /// Fraction of each linear layer's weights set to zero, in [0, 1).
    pub sparsity: f64,
    #[serde(default)]
    pub pattern: PrunePattern,
}

/// Structured pruning: the share of each layer's FFN channels and attention
/// heads removed, the least important first (by their measured contribution
/// on a corpus), the same count from every layer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StructuredPrune {
    /// Fraction of FFN channels removed, in [0, 1).
    #[serde(default)]
    pub ffn: f64,
    /// Fraction of attention heads removed, in [0, 1).
    #[serde(default)]
    pub heads: f64,
}

impl StructuredPrune {
    pub fn validate(&self) -> Result<(), OptimizeError> {
        for (field, v) in [
            ("optimize.prune.structured.ffn", self.ffn),
            ("optimize.prune.structured.heads", self.heads),
        ] {
            if !(0.0..1.0).contains(&v) {
                return Err(OptimizeError {
                    field,
                    reason: format!("{v} is not in [0, 1)"),
                });
            }
        }
        Ok(())
    }
}

/// Quality a candidate must keep relative to the original; unset bounds are
/// not checked. Embedding models are held to `min_cosine`, generative ones to
/// the other three, rerankers and classifiers to `min_top1` (the share of
/// inputs whose best label, or queries whose best document, is the
/// original's).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Gate {
    /// Mean cosine similarity of embeddings to the original's.
    pub min_cosine: Option<f64>,
    /// Relative perplexity increase over the original (0.05 = 5%).
    pub max_ppl_increase: Option<f64>,
    /// Mean KL divergence of next-token distributions from the original's.
    pub max_kld: Option<f64>,
    /// Fraction of positions whose most likely token is the original's (a
    /// classifier: of inputs whose best label; a reranker: of queries whose
    /// best document).
    pub min_top1: Option<f64>,
}

/// An optimize field that cannot work, named by its path in the spec.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct OptimizeError {
    pub field: &'static str,
    pub reason: String,
}

impl Optimize {
    pub fn validate(&self) -> Result<(), OptimizeError> {
        if let Some(p) = &self.prune {
            p.validate()?;
        }
        self.gate.validate()
    }
}

impl PruneSpec {
    pub fn validate(&self) -> Result<(), OptimizeError> {
        let field = "optimize.prune.sparsity";
        if !(0.0..1.0).contains(&self.sparsity) {
            return Err(OptimizeError {
                field,
                reason: format!("{} is not in [0, 1)", self.sparsity),
            });
        }
        if self.pattern == PrunePattern::TwoFour && self.sparsity != 0.5 {
            return Err(OptimizeError {
                field,
                reason: format!("the 2:4 pattern is 0.5 sparse, not {}", self.sparsity),
            });
        }
        Ok(())
    }
}

impl Gate {
    pub fn validate(&self) -> Result<(), OptimizeError> {
        let ranges: [(&'static str, Option<f64>, f64, f64); 4] = [
            ("optimize.gate.min_cosine", self.min_cosine, -1.0, 1.0),
            (
                "optimize.gate.max_ppl_increase",
                self.max_ppl_increase,
                0.0,
                f64::MAX,
            ),
            ("optimize.gate.max_kld", self.max_kld, 0.0, f64::MAX),
            ("optimize.gate.min_top1", self.min_top1, 0.0, 1.0),
        ];
        for (field, value, lo, hi) in ranges {
            if let Some(v) = value
                && !(lo..=hi).contains(&v)
            {
                return Err(OptimizeError {
                    field,
                    reason: format!("{v} is not in [{lo}, {hi}]"),
                });
            }
        }
        Ok(())
    }

    pub fn is_empty(&self) -> bool {
        *self == Gate::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Optimize, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn reads_every_field() {
        let o = parse(
            r#"{"quantize":"auto","prune":{"sparsity":0.5,"pattern":"2:4"},"eval":"c.txt",
                "gate":{"min_cosine":0.99,"max_ppl_increase":0.05,"max_kld":0.1,"min_top1":0.9}}"#,
        )
        .unwrap();
        assert_eq!(o.quantize, QuantChoice::Auto);
        assert_eq!(o.prune.unwrap().pattern, PrunePattern::TwoFour);
        assert_eq!(o.gate.min_top1, Some(0.9));
        o.validate().unwrap();
        assert_eq!(
            parse(r#"{"quantize":"q4_k"}"#).unwrap().quantize,
            QuantChoice::Type(QuantType::Q4K)
        );
        assert_eq!(parse("{}").unwrap().quantize, QuantChoice::None);
    }

    #[test]
    fn rejects_unknown_fields_and_values() {
        let err = parse(r#"{"gate":{"min_cosin":0.9}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("min_cosin"), "{err}");
        let err = parse(r#"{"quantize":"q3_k"}"#).unwrap_err().to_string();
        assert!(err.contains("q3_k"), "{err}");
    }

    #[test]
    fn validation_names_the_field() {
        let bad = [
            (r#"{"prune":{"sparsity":1.0}}"#, "optimize.prune.sparsity"),
            (
                r#"{"prune":{"sparsity":0.3,"pattern":"2:4"}}"#,
                "optimize.prune.sparsity",
            ),
            (r#"{"gate":{"min_cosine":1.5}}"#, "optimize.gate.min_cosine"),
            (r#"{"gate":{"max_kld":-1}}"#, "optimize.gate.max_kld"),
            (r#"{"gate":{"min_top1":2}}"#, "optimize.gate.min_top1"),
        ];
        for (json, field) in bad {
            assert_eq!(
                parse(json).unwrap().validate().unwrap_err().field,
                field,
                "{json}"
            );
        }
    }

    #[test]
    fn auto_tries_every_precision() {
        assert_eq!(QuantChoice::Auto.candidates().len(), QuantType::ALL.len());
        assert!(QuantChoice::None.candidates().is_empty());
    }
}
