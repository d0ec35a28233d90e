//! Memory and CPU of one replica, term by term, from the model's shape and
//! the workload the replica enforces (`serving:` in the spec, the same
//! limits `modelship serve` takes as flags).

use modelship_types::{Estimate, ServingLimits, Task};
use serde::Serialize;

/// What the estimate needs to know about a model (gathered from its file by
/// the caller).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ModelShape {
    pub task: Task,
    /// Bytes the engine holds for the weights (see [`resident_weights`]).
    pub weight_bytes: u64,
    /// Extra bytes held only while loading (a mapped weights file).
    pub loading_bytes: u64,
    /// Bytes the down projection's kernel copies of its FFN-wide input, per
    /// 256 values: 0 for candle's float matmul; for our kernels an f32 copy
    /// and the quantized one, 256 × (4 + 1) for 8-bit activations and
    /// 256 × (4 + 2) for the 16-bit ones (Q8_0, F16, BF16); 292 for candle's
    /// k-quant kernels (Q8_K blocks).
    pub ffn_input_copy_per_256: u64,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Size of one attention head (Gemma's is wider than hidden / heads).
    pub head_dim: usize,
    pub ffn: usize,
    pub vocab: usize,
    /// Context the model supports.
    pub context: usize,
    /// Layers that attend through a sliding window, where the model has
    /// them.
    pub sliding_window: Option<SlidingWindow>,
    /// An encoder with a relative position bias (MPNet), built per sequence
    /// beside its attention scores.
    pub relative_positions: bool,
    /// The replica runs on a GPU, through candle's attention and gating ops
    /// (score matrices, 4 × ffn live), not the CPU's fused ones.
    pub on_gpu: bool,
}

/// A model's sliding-window layers and what each one's cache holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SlidingWindow {
    pub layers: usize,
    /// Positions one such layer's cache holds at most, however long the
    /// context (`engine_candle::window_cache_positions`).
    pub positions: usize,
}

/// The process itself besides model and workload: binary, allocator arenas,
/// thread stacks, tokenizer tables, the HTTP server. Measured: peak RSS of
/// `modelship serve` on the MiniLM HF directory at a small batch (where the
/// peak is loading: mapped file + f32 weights) minus those, 20 MiB; SmolLM2
/// Q4_1 at 512 × 2 minus its other terms, 24 MiB (docs/benchmarks.md).
pub const RUNTIME_BYTES: u64 = 24 << 20;

/// A decoder's tokenizer, rebuilt from GGUF metadata, per vocabulary entry
/// beyond SmolLM2's 49,152 (whose tables [`RUNTIME_BYTES`] already holds):
/// the vocabulary both ways, the merges, the added tokens. Measured: peak
/// RSS at 512 × 2 minus the other terms, Qwen2.5 (151,936 entries, a
/// byte-level BPE) 60 MiB over, Gemma 3 (262,144, SentencePiece merges from
/// scores) 52 MiB over (docs/benchmarks.md): ~300 bytes an entry.
pub const TOKENIZER_BYTES_PER_ENTRY: u64 = 300;
const RUNTIME_VOCAB: u64 = 49_152;

/// One weight tensor in the precision served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorFootprint {
    pub name: String,
    pub elements: u64,
    /// Its exact size in the file served.
    pub stored_bytes: u64,
    /// Stored in blocks with shared scales (q8_0, q4_k, ...), not as floats.
    pub block_quantized: bool,
    /// Its kernel quantizes its input to 16 bits, not 8 (Q8_0, F16, BF16).
    pub wide_input: bool,
    /// A format the engine's own kernels read in place (Q4_0, Q4_1, Q5_0,
    /// Q8_0, F16, BF16): its matrices are held as stored, and a tied output
    /// shares the token table's bytes.
    pub own_kernel: bool,
    /// What candle's kernels keep beside it (a repacked copy of some
    /// k-quant matrices; engine-candle's `candle_packed_bytes`).
    pub packed_bytes: u64,
    pub dims: usize,
}

/// How a model reaches the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightsFile {
    /// Safetensors, memory-mapped while the engine copies them out.
    Safetensors { file_bytes: u64 },
    /// GGUF (or a decoder checkpoint), mapped: what our kernels read is
    /// used in place, the rest copied out tensor by tensor.
    Gguf,
}

/// `(resident, loading)` bytes of the weights as the candle engine holds
/// them: block-quantized matrices and those our kernels read (a decoder's
/// f16, bf16) as stored; vectors, other float matrices (every one of an
/// encoder's) and encoders' embedding tables expanded to f32. A decoder's token table is kept as
/// stored (rows expanded when looked up); when it doubles as the output
/// projection our kernels read it in place, candle's kernels take a copy
/// (expanded to f32 for float tables). Loading safetensors keeps the mapped
/// file resident too; loading GGUF (or a decoder checkpoint), mapped, holds
/// one copied-out tensor's bytes beside what is already held, and the engine loads
/// the token table and output first, so only what a tensor's read exceeds
/// the weights still to come adds to the peak.
pub fn resident_weights(task: Task, file: WeightsFile, tensors: &[TensorFootprint]) -> (u64, u64) {
    let has_output = tensors.iter().any(|t| t.name == "output.weight");
    let f32_bytes = |t: &TensorFootprint| 4 * t.elements;
    let held: Vec<u64> = tensors
        .iter()
        .map(|t| {
            let table = matches!(
                t.name.as_str(),
                "token_embd.weight" | "position_embd.weight" | "token_types.weight"
            );
            let decoder_table = task == Task::Generate && t.name == "token_embd.weight";
            let held = if decoder_table {
                t.stored_bytes
            } else if t.dims < 2 || table || !(t.block_quantized || t.own_kernel) {
                f32_bytes(t)
            } else if task.is_encoder() && !t.block_quantized {
                // Encoders expand float matrices (f16, bf16) to f32.
                f32_bytes(t)
            } else if t.own_kernel {
                t.stored_bytes
            } else {
                t.stored_bytes + t.packed_bytes
            };
            let tied_output = decoder_table && !has_output;
            let output_copy = match (tied_output, t.own_kernel, t.block_quantized) {
                (false, _, _) | (true, true, _) => 0,
                (true, false, true) => t.stored_bytes + t.packed_bytes,
                (true, false, false) => f32_bytes(t),
            };
            held + output_copy
        })
        .collect();
    let resident = held.iter().sum();
    let loading = match file {
        WeightsFile::Safetensors { file_bytes } => file_bytes,
        WeightsFile::Gguf => {
            let mut order: Vec<usize> = (0..tensors.len()).collect();
            order.sort_by_key(|&i| load_rank(&tensors[i].name));
            // Walking back from the last tensor loaded: what is still to
            // come after each one.
            let mut to_come = 0u64;
            let mut extra = 0u64;
            for &i in order.iter().rev() {
                extra =
                    extra.max(read_bytes(task, &tensors[i], has_output).saturating_sub(to_come));
                to_come += held[i];
            }
            extra
        }
    };
    (resident, loading)
}

/// Bytes loading `t` holds beside what is already held: none for a matrix
/// our kernels read where it lies in the mapped file (a decoder's tied
/// token table too), its stored bytes for one copied out (the file's pages
/// are let go once candle holds the copy). Encoders read only their
/// block-quantized layer matrices in place: tables and float matrices are
/// expanded to f32.
fn read_bytes(task: Task, t: &TensorFootprint, has_output: bool) -> u64 {
    let table = t.name == "token_embd.weight";
    let in_place = t.own_kernel
        && t.dims >= 2
        && if task.is_encoder() {
            t.block_quantized && !t.name.contains("_embd.")
        } else {
            !table || !has_output
        };
    if in_place { 0 } else { t.stored_bytes }
}

/// The engine's load order: the tables and the output, then layer by layer.
fn load_rank(name: &str) -> (usize, usize) {
    match name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
        Some((layer, _)) => (1, layer.parse().unwrap_or(usize::MAX)),
        None => (0, 0),
    }
}

/// Estimates one replica of `model` serving `limits` on `cpu` CPUs.
pub fn estimate(model: &ModelShape, limits: &ServingLimits, cpu: f64) -> Estimate {
    let context = limits.max_context.min(model.context) as u64;
    let head_dim = model.head_dim as u64;
    // Encoders keep no cache and their tokenizers are inside the runtime.
    let (kv_cache_bytes, tokenizer_bytes) = if model.task.is_encoder() {
        (0, 0)
    } else {
        let (windowed, window_positions) = model
            .sliding_window
            .map_or((0, 0), |w| (w.layers as u64, w.positions as u64));
        let full = (model.layers as u64).saturating_sub(windowed);
        let positions = full * context + windowed * context.min(window_positions);
        (
            2 * model.kv_heads as u64 * head_dim * 4 * positions * limits.max_concurrent as u64,
            TOKENIZER_BYTES_PER_ENTRY * (model.vocab as u64).saturating_sub(RUNTIME_VOCAB),
        )
    };
    let activations_bytes = activations(model, limits, context);
    let runtime_bytes = RUNTIME_BYTES + tokenizer_bytes;
    Estimate {
        weights_bytes: model.weight_bytes,
        loading_bytes: model.loading_bytes,
        kv_cache_bytes,
        activations_bytes,
        runtime_bytes,
        total_bytes: model.weight_bytes
            + runtime_bytes
            + model.loading_bytes.max(kv_cache_bytes + activations_bytes),
        cpu_threads: cpu.ceil().max(1.0) as u32,
    }
}

/// The largest pass's live tensors. Per token in the pass: the hidden
/// state, its residual, Q/K/V and the attention output (hidden × 4 f32 at
/// once at most) and the FFN's live tensors — an encoder's up projection
/// and its GELU (2 × ffn), a decoder's stacked gate/up output and the gated
/// activation made from it in one pass (3 × ffn; on a GPU candle's
/// activation and product besides, 4 × ffn); block-quantized kernels also
/// copy an FFN-wide input in f32 and quantized (4 + 1 or 2 bytes per
/// value). Encoders hold the attention scores and probabilities of one
/// sequence at a time; decoders on a GPU those of a 256-query chunk, on the
/// CPU none (its attention keeps one query's scores at a time). Encoders pack up to `max_batch_tokens` tokens;
/// their block-quantized matrices are decoded to f32 for a pass that large
/// (one at a time: the widest, hidden × ffn, counts) instead of copying
/// the FFN's input; MPNet adds a relative bias the size of the scores;
/// decoders pack new prompts into one pass up to `max_batch_tokens` of
/// them, so up to `max_concurrent × context` tokens within that, plus each
/// sequence's logits.
fn activations(model: &ModelShape, limits: &ServingLimits, context: u64) -> u64 {
    let (hidden, ffn, heads) = (model.hidden as u64, model.ffn as u64, model.heads as u64);
    let attention = heads * model.head_dim as u64;
    let ffn_live = match (model.task.is_encoder(), model.on_gpu) {
        (true, _) => 2,
        (false, true) => 4,
        (false, false) => 3,
    };
    let quantized_copy = ffn * model.ffn_input_copy_per_256 / 256;
    let per_token = (hidden * 2 + attention * 2 + ffn * ffn_live) * 4;
    let concurrent = limits.max_concurrent as u64;
    if model.task.is_encoder() {
        let tokens = limits.max_batch_tokens as u64;
        // Decoded on the CPU only; the widest matrix is the FFN's or
        // the stacked Q/K/V.
        let decoded = if model.ffn_input_copy_per_256 > 0 && !model.on_gpu {
            hidden * ffn.max(3 * hidden) * 4
        } else {
            0
        };
        // Scores and probabilities of one sequence at a time, and for
        // MPNet that sequence's relative bias beside them.
        let per_score = if model.relative_positions { 3 } else { 2 };
        tokens * per_token + heads * context * context * per_score * 4 + decoded
    } else {
        let tokens = (concurrent * context).min(limits.max_batch_tokens as u64);
        // candle's attention holds a 256-query chunk's scores; the CPU's
        // keeps one query's at a time.
        let scores = if model.on_gpu {
            heads * context.min(256) * context * 2 * 4
        } else {
            0
        };
        tokens * (per_token + quantized_copy) + scores + model.vocab as u64 * concurrent * 4
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn smollm() -> ModelShape {
        ModelShape {
            task: Task::Generate,
            weight_bytes: 96_573_056,
            loading_bytes: 0,
            ffn_input_copy_per_256: 5 * 256,
            layers: 30,
            hidden: 576,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            ffn: 1536,
            vocab: 49152,
            context: 8192,
            sliding_window: None,
            relative_positions: false,
            on_gpu: false,
        }
    }

    #[test]
    fn decoder_activations_hold_the_pass_and_the_logits() {
        let limits = ServingLimits {
            max_context: 512,
            max_concurrent: 2,
            max_batch_tokens: 1024,
            ..ServingLimits::default()
        };
        // Per token: hidden and residual, Q/K/V and attention out (576 each,
        // 9 heads × 64), gate/up and the gated activation (3 × 1536), in
        // f32; the down projection's input copy (1536 × 5 bytes). No score
        // matrix. Then the two sequences' logits.
        let per_token = (576 * 2 + 576 * 2 + 1536 * 3) * 4 + 1536 * 5;
        assert_eq!(
            estimate(&smollm(), &limits, 1.0).activations_bytes,
            1024 * per_token + 49152 * 2 * 4
        );
        // On a GPU: candle's activation and product (one more ffn) and a
        // 256-query chunk's scores and probabilities per head.
        let gpu = ModelShape {
            on_gpu: true,
            ..smollm()
        };
        assert_eq!(
            estimate(&gpu, &limits, 1.0).activations_bytes,
            1024 * (per_token + 1536 * 4) + 9 * 256 * 512 * 2 * 4 + 49152 * 2 * 4
        );
    }

    #[test]
    fn sliding_window_layers_hold_only_their_window() {
        let limits = ServingLimits {
            max_context: 2048,
            max_concurrent: 4,
            ..ServingLimits::default()
        };
        let windowed = ModelShape {
            sliding_window: Some(SlidingWindow {
                layers: 25,
                positions: 1024,
            }),
            ..smollm()
        };
        // Per layer and position: 2 × 3 KV heads × 64 × 4 bytes × 4 sequences.
        let per = 2 * 3 * 64 * 4 * 4;
        assert_eq!(
            estimate(&windowed, &limits, 1.0).kv_cache_bytes,
            per * (5 * 2048 + 25 * 1024)
        );
        // Under the window's positions, every layer holds the whole context.
        let short = ServingLimits {
            max_context: 512,
            ..limits
        };
        assert_eq!(
            estimate(&windowed, &short, 1.0).kv_cache_bytes,
            estimate(&smollm(), &short, 1.0).kv_cache_bytes
        );
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
    fn q8_0_kernels_hold_a_wider_input_copy() {
        let limits = ServingLimits {
            max_context: 512,
            max_concurrent: 2,
            ..ServingLimits::default()
        };
        let with = |bytes| {
            let shape = ModelShape {
                ffn_input_copy_per_256: bytes,
                ..smollm()
            };
            estimate(&shape, &limits, 1.0).activations_bytes
        };
        // Per token of the pass (2 × 512): the FFN-wide input, 1536 values,
        // in f32 plus one or two bytes each, or candle's Q8_K blocks.
        let tokens = 2 * 512;
        assert_eq!(with(5 * 256) - with(0), tokens * 1536 * 5);
        assert_eq!(with(6 * 256) - with(5 * 256), tokens * 1536);
        assert_eq!(with(292) - with(0), tokens * 1536 * 292 / 256);
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
    fn resident_weights_follow_the_engine() {
        let t = |name: &str, elements: u64, stored: u64, q: bool, dims: usize| TensorFootprint {
            name: name.into(),
            elements,
            stored_bytes: stored,
            block_quantized: q,
            wide_input: q,
            own_kernel: q,
            packed_bytes: 0,
            dims,
        };
        // A tied llama table in q8_0: kept as stored, and our Q8_0 kernel
        // reads the output projection from the same bytes. Mapped, neither
        // it nor the Q8_0 layer adds to the peak while loading; the norm,
        // copied out last, adds its bytes.
        let llama = [
            t("blk.0.attn_q.weight", 64, 68, true, 2),
            t("blk.0.attn_norm.weight", 8, 32, false, 1),
            t("token_embd.weight", 1000, 1063, true, 2),
        ];
        assert_eq!(
            resident_weights(Task::Generate, WeightsFile::Gguf, &llama),
            (1063 + 68 + 32, 32)
        );
        // A copied-out matrix's read beyond the layers after it counts
        // whole: the last one loaded has nothing after it.
        let candle = |name: &str, elements: u64, stored: u64| TensorFootprint {
            own_kernel: false,
            ..t(name, elements, stored, true, 2)
        };
        let big_last = [
            candle("token_embd.weight", 10, 10),
            candle("blk.1.ffn_up.weight", 500, 600),
            candle("blk.0.ffn_up.weight", 100, 120),
        ];
        assert_eq!(
            resident_weights(Task::Generate, WeightsFile::Gguf, &big_last).1,
            600
        );
        // An encoder reads its block-quantized matrices in place, and
        // expands float ones (an f16 matrix, last: nothing after it) to f32.
        let f16 = TensorFootprint {
            block_quantized: false,
            ..t("blk.1.attn_q.weight", 64, 128, true, 2)
        };
        let bert = [t("blk.0.attn_q.weight", 64, 68, true, 2), f16];
        assert_eq!(
            resident_weights(Task::Embeddings, WeightsFile::Gguf, &bert),
            (68 + 256, 128)
        );
        // A tied Q6_K table goes through candle's kernel: a second copy,
        // and candle's repacked tiles of it.
        let q6_k = [TensorFootprint {
            own_kernel: false,
            packed_bytes: 1280,
            ..t("token_embd.weight", 1024, 840, true, 2)
        }];
        assert_eq!(
            resident_weights(Task::Generate, WeightsFile::Gguf, &q6_k).0,
            2 * 840 + 1280
        );
        // A Q4_K layer matrix: as stored, plus candle's tiles.
        let q4_k = [TensorFootprint {
            own_kernel: false,
            packed_bytes: 768,
            ..t("blk.0.ffn_down.weight", 1024, 576, true, 2)
        }];
        assert_eq!(
            resident_weights(Task::Generate, WeightsFile::Gguf, &q4_k).0,
            576 + 768
        );
        // f16 and bf16 matrices stay 16-bit in our kernels; a float
        // matrix no kernel of ours reads is expanded to f32.
        let sixteen = [TensorFootprint {
            own_kernel: true,
            ..t("blk.0.attn_v.weight", 16, 32, false, 2)
        }];
        assert_eq!(
            resident_weights(Task::Generate, WeightsFile::Gguf, &sixteen).0,
            32
        );
        let other = [t("blk.0.attn_v.weight", 16, 32, false, 2)];
        assert_eq!(
            resident_weights(Task::Generate, WeightsFile::Gguf, &other).0,
            64
        );
        // f16 matrices are expanded; BERT keeps no output copy.
        let bert = [
            t("token_embd.weight", 1000, 2000, false, 2),
            t("blk.0.ffn_up.weight", 64, 128, false, 2),
        ];
        assert_eq!(
            resident_weights(
                Task::Embeddings,
                WeightsFile::Safetensors { file_bytes: 9 },
                &bert
            ),
            (4256, 9)
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
            head_dim: 32,
            ffn: 1536,
            vocab: 30522,
            context: 512,
            sliding_window: None,
            relative_positions: false,
            on_gpu: false,
            weight_bytes: 90_000_000,
            loading_bytes: 90_000_000,
            ffn_input_copy_per_256: 0,
        };
        let e = estimate(&minilm, &ServingLimits::default(), 0.5);
        assert_eq!(e.kv_cache_bytes, 0);
        assert_eq!(e.cpu_threads, 1);
        // Quantized on the CPU: the widest matrix decoded to f32 for a
        // large pass, not the kernels' per-token input copies.
        let quantized = ModelShape {
            ffn_input_copy_per_256: 6 * 256,
            ..minilm
        };
        let q = estimate(&quantized, &ServingLimits::default(), 0.5);
        assert_eq!(q.activations_bytes - e.activations_bytes, 384 * 1536 * 4);
        let on_gpu = ModelShape {
            on_gpu: true,
            ..quantized
        };
        let g = estimate(&on_gpu, &ServingLimits::default(), 0.5);
        assert_eq!(g.activations_bytes, e.activations_bytes);
        // MPNet: one sequence's relative bias beside its scores.
        let mpnet = ModelShape {
            relative_positions: true,
            ..minilm
        };
        let m = estimate(&mpnet, &ServingLimits::default(), 0.5);
        assert_eq!(
            m.activations_bytes - e.activations_bytes,
            12 * 512 * 512 * 4
        );
    }
}

#[cfg(test)]
mod vocabulary_tests {
    use super::*;

    /// A large vocabulary's tokenizer counts in the runtime; SmolLM2's is
    /// inside the measured constant.
    #[test]
    fn a_large_vocabulary_adds_its_tokenizer() {
        let limits = ServingLimits::default();
        let shape = |vocab| ModelShape {
            task: Task::Generate,
            weight_bytes: 0,
            loading_bytes: 0,
            ffn_input_copy_per_256: 0,
            layers: 1,
            hidden: 64,
            heads: 1,
            kv_heads: 1,
            head_dim: 64,
            ffn: 64,
            vocab,
            context: 512,
            sliding_window: None,
            relative_positions: false,
            on_gpu: false,
        };
        assert_eq!(
            estimate(&shape(49_152), &limits, 1.0).runtime_bytes,
            RUNTIME_BYTES
        );
        assert_eq!(
            estimate(&shape(151_936), &limits, 1.0).runtime_bytes,
            RUNTIME_BYTES + 300 * (151_936 - 49_152)
        );
    }
}
