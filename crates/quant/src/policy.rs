//! Which type each tensor gets, following llama.cpp's `llama_tensor_get_type`
//! for the cases that apply to our architectures: norms, biases and BERT's
//! position / token-type tables stay f32; the output projection (or the
//! embedding table when it doubles as one) gets q6_k under the 4–6-bit
//! types; q4_k and q5_k give `attn_v` and `ffn_down` q6_k in the layers
//! llama.cpp's `use_more_bits` picks (its Q4_K_M / Q5_K_M); rows that are
//! not a multiple of a k-quant's 256-weight super-block fall back to the
//! 32-weight type llama.cpp uses.
//!
//! One rule goes beyond llama.cpp: under q8_0, a grouped-query model's
//! `attn_v` stays f16. Each of its rows serves several query heads, so its
//! error is felt that many times, and it is that many times smaller than
//! `attn_q`, so keeping it costs little: llama.cpp gives `attn_v` of its 70B
//! model more bits on the same argument, but has no type above q8_0 to give.
//! On SmolLM2 (three query heads per KV head) it costs 2.2% of the file and
//! removes a third of the KL divergence (docs/benchmarks.md).

use std::fmt;

use candle_core::quantized::GgmlDType;
use modelship_types::QuantType;

use crate::encode::fits;

/// The tensor-type decision and the rule that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub dtype: GgmlDType,
    pub rule: Rule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    /// The requested type.
    Requested,
    /// Norm weights and biases (vectors) stay f32.
    VectorF32,
    /// Position and token-type tables are not quantized (llama.cpp), nor
    /// MPNet's relative position bias.
    PositionF32,
    /// A classification head (a few rows that decide every score) stays f32.
    HeadF32,
    /// The output projection keeps more bits: it decides every token.
    Output,
    /// `attn_v` / `ffn_down` in the layers that need more bits.
    MoreBits,
    /// `attn_v` of a grouped-query model under q8_0: f16.
    SharedValues,
    /// The row length is not a multiple of the type's block.
    Fallback,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Rule::Requested => "requested type",
            Rule::VectorF32 => "norms and biases stay f32",
            Rule::PositionF32 => "position / token-type tables stay f32",
            Rule::HeadF32 => "the classification head stays f32",
            Rule::Output => "output projection keeps more bits",
            Rule::MoreBits => "attn_v / ffn_down: more bits in the sensitive layers",
            Rule::SharedValues => "attn_v shared by several query heads: f16 under q8_0",
            Rule::Fallback => "row length is not a multiple of 256: fallback type",
        })
    }
}

/// What the policy needs to know about the model as a whole.
#[derive(Debug, Clone, Copy)]
pub struct ModelShape {
    pub layers: usize,
    /// Whether the model has its own `output.weight`; when not, the
    /// embedding table is the output projection too (tied weights).
    pub has_output: bool,
    /// Query heads per key/value head: 1 without grouped-query attention.
    pub query_heads_per_kv: usize,
}

/// The ggml type that stores a whole model "as" `t`.
pub fn ggml_type(t: QuantType) -> GgmlDType {
    match t {
        QuantType::F32 => GgmlDType::F32,
        QuantType::F16 => GgmlDType::F16,
        QuantType::Bf16 => GgmlDType::BF16,
        QuantType::Q8_0 => GgmlDType::Q8_0,
        QuantType::Q6K => GgmlDType::Q6K,
        QuantType::Q5K => GgmlDType::Q5K,
        QuantType::Q4K => GgmlDType::Q4K,
        QuantType::Q4_1 => GgmlDType::Q4_1,
        QuantType::Q4_0 => GgmlDType::Q4_0,
    }
}

/// llama.cpp's `general.file_type` for a model quantized as `t`.
pub fn file_type(t: QuantType) -> u32 {
    match t {
        QuantType::F32 => 0,
        QuantType::F16 => 1,
        QuantType::Q4_0 => 2,
        QuantType::Q4_1 => 3,
        QuantType::Q8_0 => 7,
        QuantType::Q4K => 15, // Q4_K_M
        QuantType::Q5K => 17, // Q5_K_M
        QuantType::Q6K => 18,
        QuantType::Bf16 => 32,
    }
}

/// The type of tensor `name` with `shape` (rows first, `[.., cols]`) when the
/// model is quantized as `target`.
pub fn decide(target: QuantType, name: &str, shape: &[usize], model: ModelShape) -> Decision {
    let cols = shape.last().copied().unwrap_or(0);
    let keep = |rule| Decision {
        dtype: GgmlDType::F32,
        rule,
    };
    if shape.len() < 2 || name.contains("_norm.weight") {
        return keep(Rule::VectorF32);
    }
    if matches!(
        name,
        "position_embd.weight" | "token_types.weight" | "rel_attn_bias.weight"
    ) {
        return keep(Rule::PositionF32);
    }
    if name == "cls.weight" || name == "cls.output.weight" {
        return keep(Rule::HeadF32);
    }
    let wanted = ggml_type(target);
    if !target.is_block_quantized() {
        return Decision {
            dtype: wanted,
            rule: Rule::Requested,
        };
    }
    let is_output = name == "output.weight" || (!model.has_output && name == "token_embd.weight");
    let layer = layer_of(name);
    let more_bits = matches!(target, QuantType::Q4K | QuantType::Q5K)
        && (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight"))
        && layer.is_some_and(|i| use_more_bits(i, model.layers));
    let shared_values = wanted == GgmlDType::Q8_0
        && model.query_heads_per_kv > 1
        && name.ends_with("attn_v.weight");
    let (dtype, rule) = if shared_values {
        (GgmlDType::F16, Rule::SharedValues)
    } else if is_output && wanted != GgmlDType::Q8_0 {
        if !fits(GgmlDType::Q6K, cols) {
            (GgmlDType::Q8_0, Rule::Output)
        } else {
            (GgmlDType::Q6K, Rule::Output)
        }
    } else if more_bits {
        (GgmlDType::Q6K, Rule::MoreBits)
    } else {
        (wanted, Rule::Requested)
    };
    if fits(dtype, cols) {
        return Decision { dtype, rule };
    }
    let fallback = match dtype {
        GgmlDType::Q4K => GgmlDType::Q5_0,
        GgmlDType::Q5K => GgmlDType::Q5_1,
        GgmlDType::Q6K => GgmlDType::Q8_0,
        _ => GgmlDType::F16,
    };
    let dtype = if fits(fallback, cols) {
        fallback
    } else {
        GgmlDType::F16
    };
    Decision {
        dtype,
        rule: Rule::Fallback,
    }
}

/// `blk.N.` → N.
pub fn layer_of(name: &str) -> Option<usize> {
    name.strip_prefix("blk.")?.split('.').next()?.parse().ok()
}

/// llama.cpp's choice of layers that get more bits: the first and last
/// eighth, and every third layer between.
fn use_more_bits(i: usize, n: usize) -> bool {
    i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2
}

#[cfg(test)]
mod tests {
    use super::*;

    const LLAMA: ModelShape = ModelShape {
        layers: 30,
        has_output: false,
        query_heads_per_kv: 3,
    };

    #[test]
    fn table() {
        use GgmlDType as G;
        use QuantType as Q;
        let cases: &[(Q, &str, &[usize], G, Rule)] = &[
            (
                Q::Q4_0,
                "blk.0.attn_norm.weight",
                &[576],
                G::F32,
                Rule::VectorF32,
            ),
            (
                Q::Q8_0,
                "rel_attn_bias.weight",
                &[32, 12],
                G::F32,
                Rule::PositionF32,
            ),
            (Q::Q4K, "cls.weight", &[768, 768], G::F32, Rule::HeadF32),
            (
                Q::Q8_0,
                "cls.output.weight",
                &[1, 768],
                G::F32,
                Rule::HeadF32,
            ),
            (
                Q::Q4_0,
                "blk.0.attn_q.bias",
                &[384],
                G::F32,
                Rule::VectorF32,
            ),
            (
                Q::Q8_0,
                "position_embd.weight",
                &[512, 384],
                G::F32,
                Rule::PositionF32,
            ),
            (
                Q::F16,
                "blk.3.attn_q.weight",
                &[576, 576],
                G::F16,
                Rule::Requested,
            ),
            (
                Q::Bf16,
                "token_embd.weight",
                &[49152, 576],
                G::BF16,
                Rule::Requested,
            ),
            (
                Q::Q4_0,
                "blk.3.attn_q.weight",
                &[576, 576],
                G::Q4_0,
                Rule::Requested,
            ),
            // Tied embeddings are the output: q6_k, or q8_0 when 256 does not divide the row.
            (
                Q::Q4_1,
                "token_embd.weight",
                &[49152, 512],
                G::Q6K,
                Rule::Output,
            ),
            (
                Q::Q4_1,
                "token_embd.weight",
                &[49152, 576],
                G::Q8_0,
                Rule::Output,
            ),
            (
                Q::Q8_0,
                "token_embd.weight",
                &[49152, 576],
                G::Q8_0,
                Rule::Requested,
            ),
            // Grouped-query values: f16 under q8_0 alone.
            (
                Q::Q8_0,
                "blk.7.attn_v.weight",
                &[192, 576],
                G::F16,
                Rule::SharedValues,
            ),
            (
                Q::Q8_0,
                "blk.7.attn_k.weight",
                &[192, 576],
                G::Q8_0,
                Rule::Requested,
            ),
            (
                Q::Q6K,
                "blk.7.attn_v.weight",
                &[192, 576],
                G::Q8_0,
                Rule::Fallback,
            ),
            // 576 is not a multiple of 256: llama.cpp's fallbacks.
            (
                Q::Q4K,
                "blk.1.attn_q.weight",
                &[576, 576],
                G::Q5_0,
                Rule::Fallback,
            ),
            (
                Q::Q5K,
                "blk.1.attn_q.weight",
                &[576, 576],
                G::Q5_1,
                Rule::Fallback,
            ),
            (
                Q::Q6K,
                "blk.1.attn_q.weight",
                &[576, 576],
                G::Q8_0,
                Rule::Fallback,
            ),
            (
                Q::Q4K,
                "blk.1.ffn_down.weight",
                &[576, 1536],
                G::Q6K,
                Rule::MoreBits,
            ),
            (
                Q::Q4K,
                "blk.4.ffn_down.weight",
                &[576, 1536],
                G::Q4K,
                Rule::Requested,
            ),
            (
                Q::Q4K,
                "blk.5.ffn_down.weight",
                &[576, 1536],
                G::Q6K,
                Rule::MoreBits,
            ),
        ];
        for &(t, name, shape, dtype, rule) in cases {
            assert_eq!(
                decide(t, name, shape, LLAMA),
                Decision { dtype, rule },
                "{t} {name} {shape:?}"
            );
        }
    }

    #[test]
    fn values_without_grouping_follow_the_requested_type() {
        let bert = ModelShape {
            layers: 6,
            has_output: false,
            query_heads_per_kv: 1,
        };
        assert_eq!(
            decide(QuantType::Q8_0, "blk.2.attn_v.weight", &[384, 384], bert),
            Decision {
                dtype: GgmlDType::Q8_0,
                rule: Rule::Requested
            }
        );
    }

    #[test]
    fn more_bits_matches_llama_cpp_for_30_layers() {
        let picked: Vec<usize> = (0..30).filter(|&i| use_more_bits(i, 30)).collect();
        // n/8 = 3, 7n/8 = 26: 0..3, every third from 3 (5, 8, ...), and 26..30.
        assert_eq!(picked, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
    }

    #[test]
    fn every_decision_fits_its_rows() {
        for t in QuantType::ALL {
            for cols in [32, 64, 384, 576, 1536, 256, 48] {
                let d = decide(t, "blk.0.attn_q.weight", &[8, cols], LLAMA);
                assert!(fits(d.dtype, cols), "{t} cols {cols}: {d:?}");
            }
        }
    }
}
