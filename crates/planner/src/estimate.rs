//! Memory and CPU of one replica, term by term, from the model's shape and
//! the workload the replica enforces (`serving:` in the spec, the same
//! limits `modelship serve` takes as flags).

use modelship_types::{ServingLimits, Task};
use serde::Serialize;

/// What the estimate needs to know about a model (gathered from its file by
/// the caller).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelShape {
    pub task: Task,
    /// Exact bytes of every weight tensor in the precision served.
    pub weight_bytes: u64,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// Context the model supports.
    pub context: usize,
}

/// The process itself before any model: binary, allocator arenas, thread
/// stacks, tokenizer tables and the HTTP server. Measured as the peak RSS of
/// `modelship serve` on MiniLM minus its weights after one request (see
/// docs/benchmarks.md); kept here as a constant.
pub const RUNTIME_BYTES: u64 = 96 << 20;

/// One replica's needs, term by term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Estimate {
    pub weights_bytes: u64,
    /// Keys and values of every sequence at full context: 2 × layers ×
    /// kv_heads × head_dim × 4 bytes (the cache holds f32) × context ×
    /// concurrent sequences. Zero for encoders.
    pub kv_cache_bytes: u64,
    /// The largest forward pass's live tensors (see [`activations`]).
    pub activations_bytes: u64,
    pub runtime_bytes: u64,
    pub total_bytes: u64,
    /// Compute threads (one per CPU asked for, at least one).
    pub cpu_threads: u32,
}

/// Estimates one replica of `model` serving `limits` on `cpu` CPUs.
pub fn estimate(model: &ModelShape, limits: &ServingLimits, cpu: f64) -> Estimate {
    let context = limits.max_context.min(model.context) as u64;
    let head_dim = (model.hidden / model.heads.max(1)) as u64;
    let kv_cache_bytes = match model.task {
        Task::Generate => {
            2 * model.layers as u64
                * model.kv_heads as u64
                * head_dim
                * 4
                * context
                * limits.max_concurrent as u64
        }
        Task::Embeddings => 0,
    };
    let activations_bytes = activations(model, limits, context);
    let runtime_bytes = RUNTIME_BYTES;
    Estimate {
        weights_bytes: model.weight_bytes,
        kv_cache_bytes,
        activations_bytes,
        runtime_bytes,
        total_bytes: model.weight_bytes + kv_cache_bytes + activations_bytes + runtime_bytes,
        cpu_threads: cpu.ceil().max(1.0) as u32,
    }
}

/// The largest pass's live f32 tensors. Encoders run `max_batch_tokens`
/// packed tokens: per token the hidden state and its residual, Q/K/V, the
/// attention output and the FFN's up projection (before and after GELU);
/// plus one sequence's attention scores and probabilities at full context.
/// Decoders run one prompt of up to `context` tokens: the same per-token
/// terms with the gate, and attention scores for 256-query chunks, plus the
/// logits of each running sequence.
fn activations(model: &ModelShape, limits: &ServingLimits, context: u64) -> u64 {
    let (hidden, ffn, heads) = (model.hidden as u64, model.ffn as u64, model.heads as u64);
    match model.task {
        Task::Embeddings => {
            let tokens = limits.max_batch_tokens as u64;
            let per_token = hidden * 6 + ffn * 2;
            let scores = heads * context * context * 2;
            (tokens * per_token + scores) * 4
        }
        Task::Generate => {
            let tokens = context;
            let per_token = hidden * 6 + ffn * 3;
            let scores = heads * tokens.min(256) * context * 2;
            let logits = model.vocab as u64 * limits.max_concurrent as u64;
            (tokens * per_token + scores + logits) * 4
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm() -> ModelShape {
        ModelShape {
            task: Task::Generate,
            weight_bytes: 96_573_056,
            layers: 30,
            hidden: 576,
            heads: 9,
            kv_heads: 3,
            ffn: 1536,
            vocab: 49152,
            context: 8192,
        }
    }

    #[test]
    fn kv_cache_follows_the_formula() {
        let limits = ServingLimits {
            max_context: 2048,
            max_concurrent: 4,
            ..ServingLimits::default()
        };
        let e = estimate(&smollm(), &limits, 2.0);
        // 2 × 30 layers × 3 kv heads × 64 dims × 4 bytes × 2048 × 4 sequences.
        assert_eq!(e.kv_cache_bytes, 2 * 30 * 3 * 64 * 4 * 2048 * 4);
        assert_eq!(
            e.total_bytes,
            e.weights_bytes + e.kv_cache_bytes + e.activations_bytes + e.runtime_bytes
        );
        assert_eq!(e.cpu_threads, 2);
    }

    #[test]
    fn more_context_or_concurrency_never_needs_less() {
        let base = ServingLimits {
            max_context: 512,
            max_concurrent: 1,
            ..ServingLimits::default()
        };
        let e0 = estimate(&smollm(), &base, 1.0);
        for limits in [
            ServingLimits {
                max_context: 1024,
                ..base
            },
            ServingLimits {
                max_concurrent: 2,
                ..base
            },
        ] {
            assert!(estimate(&smollm(), &limits, 1.0).total_bytes > e0.total_bytes);
        }
    }

    #[test]
    fn the_model_caps_the_context() {
        let limits = ServingLimits {
            max_context: 100_000,
            max_batch_tokens: 100_000,
            ..ServingLimits::default()
        };
        let capped = ServingLimits {
            max_context: 8192,
            ..limits
        };
        assert_eq!(
            estimate(&smollm(), &limits, 1.0).kv_cache_bytes,
            estimate(&smollm(), &capped, 1.0).kv_cache_bytes
        );
    }

    #[test]
    fn encoders_have_no_kv_cache() {
        let minilm = ModelShape {
            task: Task::Embeddings,
            layers: 6,
            hidden: 384,
            heads: 12,
            kv_heads: 12,
            ffn: 1536,
            vocab: 30522,
            context: 512,
            weight_bytes: 90_000_000,
        };
        let e = estimate(&minilm, &ServingLimits::default(), 0.5);
        assert_eq!(e.kv_cache_bytes, 0);
        assert_eq!(e.cpu_threads, 1);
    }
}
