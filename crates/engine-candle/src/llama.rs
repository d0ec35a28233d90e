//! llama-family decoders from GGUF, following llama.cpp's arithmetic so that
//! greedy decoding picks the same tokens up to near-ties: activations are
//! quantized to the weights' dot type before each quantized matmul (our AVX2
//! kernels for Q4_1 and Q8_0, candle's GGML kernels for other types), rotary
//! angles are accumulated as ggml accumulates them, and the attention operands
//! (queries, keys, values, attention weights) are rounded to f16 where
//! llama.cpp's default f16 KV cache and f16 dot products round them.
//!
//! The weights are shared; each sequence owns its KV cache.

use std::sync::Arc;

use candle_core::quantized::QTensor;
use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Result, Tensor};
use modelship_engine::{BackendError, GenerateBackend};

use crate::gguf_md::{md_f32, md_u32};
use crate::linear::{Linear, Projections};

/// Hyper-parameters from the GGUF metadata (`llama.*`).
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub rms_eps: f32,
    pub rope_base: f32,
    pub context: usize,
}

struct Layer {
    attn_norm: Tensor,
    qkv: Projections,
    wo: Linear,
    ffn_norm: Tensor,
    gate_up: Projections,
    down: Linear,
}

struct Weights {
    config: LlamaConfig,
    embeddings: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    /// Rotary tables, (context, head_dim / 2).
    cos: Tensor,
    sin: Tensor,
}

/// A llama model ready to run sequences.
#[derive(Clone)]
pub struct LlamaBackend {
    weights: Arc<Weights>,
    device: Device,
    /// Forward passes run inside this pool, so the thread that drives a pass
    /// is one of the workers its matmuls split across: no hand-off to other
    /// threads per matmul, and no more runnable threads than cores.
    pool: Arc<rayon::ThreadPool>,
}

/// Keys and values of one layer for one sequence: buffers of shape
/// (kv_heads, capacity, head_dim) filled up to `len`, grown by doubling, so a
/// decode step writes one row instead of copying the whole cache.
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
}

impl KvCache {
    /// Appends (kv_heads, n, head_dim) keys and values; returns views of all of
    /// them so far.
    fn append(
        slot: &mut Option<KvCache>,
        k_new: &Tensor,
        v_new: &Tensor,
        max_len: usize,
    ) -> Result<(Tensor, Tensor)> {
        let (kv_heads, n, hd) = k_new.dims3()?;
        let len = slot.as_ref().map_or(0, |c| c.len);
        let needed = len + n;
        let capacity = slot.as_ref().map_or(0, |c| c.k.dim(1).unwrap_or(0));
        if needed > capacity {
            let grown = needed.max(capacity * 2).max(64).min(max_len.max(needed));
            let k = Tensor::zeros((kv_heads, grown, hd), k_new.dtype(), k_new.device())?;
            let v = Tensor::zeros((kv_heads, grown, hd), v_new.dtype(), v_new.device())?;
            if let Some(old) = slot.take() {
                k.slice_set(&old.k.narrow(1, 0, old.len)?.contiguous()?, 1, 0)?;
                v.slice_set(&old.v.narrow(1, 0, old.len)?.contiguous()?, 1, 0)?;
            }
            *slot = Some(KvCache { k, v, len });
        }
        let cache = slot.as_mut().expect("allocated above");
        cache.k.slice_set(&k_new.contiguous()?, 1, len)?;
        cache.v.slice_set(&v_new.contiguous()?, 1, len)?;
        cache.len = needed;
        Ok((cache.k.narrow(1, 0, needed)?, cache.v.narrow(1, 0, needed)?))
    }
}

/// One sequence's KV cache, a [`KvCache`] per layer once it has run.
pub struct LlamaSequence {
    cache: Vec<Option<KvCache>>,
    position: usize,
}

impl LlamaConfig {
    pub fn from_gguf(ct: &Content, max_context: usize) -> Result<Self> {
        let heads = md_u32(ct, "llama.attention.head_count")?;
        let embedding = md_u32(ct, "llama.embedding_length")?;
        let kv_heads = md_u32(ct, "llama.attention.head_count_kv").unwrap_or(heads);
        if heads == 0
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || !embedding.is_multiple_of(heads)
        {
            candle_core::bail!(
                "inconsistent head counts: {heads} heads, {kv_heads} kv heads, width {embedding}"
            );
        }
        let head_dim = embedding / heads;
        if let Ok(rope_dim) = md_u32(ct, "llama.rope.dimension_count")
            && rope_dim != head_dim
        {
            candle_core::bail!(
                "partial rotary embeddings ({rope_dim} of {head_dim}) are not supported"
            );
        }
        Ok(Self {
            layers: md_u32(ct, "llama.block_count")?,
            heads,
            kv_heads,
            head_dim,
            rms_eps: md_f32(ct, "llama.attention.layer_norm_rms_epsilon", 1e-5)?,
            rope_base: md_f32(ct, "llama.rope.freq_base", 10_000.0)?,
            context: md_u32(ct, "llama.context_length")
                .unwrap_or(max_context)
                .min(max_context),
        })
    }
}

/// cos/sin tables with angles accumulated as ggml's rope does: the angle of
/// pair i is `pos · base^(-2i/d)`, the power built by repeated multiplication.
fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let half = cfg.head_dim / 2;
    let scale = cfg.rope_base.powf(-2.0 / cfg.head_dim as f32);
    let mut cos = Vec::with_capacity(cfg.context * half);
    let mut sin = Vec::with_capacity(cfg.context * half);
    for pos in 0..cfg.context {
        let mut theta = pos as f32;
        for _ in 0..half {
            cos.push(theta.cos());
            sin.push(theta.sin());
            theta *= scale;
        }
    }
    Ok((
        Tensor::from_vec(cos, (cfg.context, half), device)?,
        Tensor::from_vec(sin, (cfg.context, half), device)?,
    ))
}

impl LlamaBackend {
    /// Loads a llama GGUF; `max_context` caps the rotary tables.
    pub fn from_gguf<R: std::io::Read + std::io::Seek>(
        ct: Content,
        reader: &mut R,
        device: &Device,
        max_context: usize,
    ) -> Result<Self> {
        let config = LlamaConfig::from_gguf(&ct, max_context)?;
        let mut tensor = |name: &str| -> Result<QTensor> { ct.tensor(reader, name, device) };
        let embed_q = tensor("token_embd.weight")?;
        let embeddings = embed_q.dequantize(device)?;
        let norm = tensor("output_norm.weight")?.dequantize(device)?;
        let output = match tensor("output.weight") {
            Ok(t) => Linear::new(t)?,
            // Tied embeddings: the output projection is the embedding matrix.
            Err(_) => Linear::new(embed_q)?,
        };
        let mut layers = Vec::with_capacity(config.layers);
        for i in 0..config.layers {
            let mut q = |name: &str| tensor(&format!("blk.{i}.{name}.weight"));
            layers.push(Layer {
                attn_norm: q("attn_norm")?.dequantize(device)?,
                qkv: Projections::new(vec![q("attn_q")?, q("attn_k")?, q("attn_v")?])?,
                wo: Linear::new(q("attn_output")?)?,
                ffn_norm: q("ffn_norm")?.dequantize(device)?,
                gate_up: Projections::new(vec![q("ffn_gate")?, q("ffn_up")?])?,
                down: Linear::new(q("ffn_down")?)?,
            });
        }
        let (cos, sin) = rope_tables(&config, device)?;
        Ok(Self {
            weights: Arc::new(Weights {
                config,
                embeddings,
                layers,
                norm,
                output,
                cos,
                sin,
            }),
            device: device.clone(),
            pool: Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(rayon::current_num_threads())
                    .thread_name(|i| format!("modelship-llama-{i}"))
                    .build()
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
            ),
        })
    }

    /// Runs each sequence's `tokens` at its next positions, all sequences
    /// packed into one batch: the projections and the MLP see every token of
    /// every sequence as one matrix; attention runs per sequence over its own
    /// cache. Returns the logits after each sequence's last token, or after
    /// every token when `every_position` (scoring text, not generating).
    fn run(
        &self,
        batch: &mut [(&mut LlamaSequence, &[u32])],
        every_position: bool,
    ) -> Result<Vec<Vec<f32>>> {
        let w = &*self.weights;
        let cfg = &w.config;
        let mut segments = Vec::with_capacity(batch.len());
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for (seq, tokens) in batch.iter() {
            let (start, pos) = (ids.len(), seq.position);
            ids.extend_from_slice(tokens);
            positions.extend((pos..pos + tokens.len()).map(|p| p as u32));
            segments.push(Segment {
                start,
                len: tokens.len(),
                mask: causal_mask(tokens.len(), pos, &self.device)?,
            });
        }
        let total = ids.len();
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let cos = w.cos.index_select(&positions, 0)?;
        let sin = w.sin.index_select(&positions, 0)?;
        let mut x = w.embeddings.index_select(&ids, 0)?; // (tokens, width)
        for (l, layer) in w.layers.iter().enumerate() {
            let mut caches: Vec<&mut Option<KvCache>> =
                batch.iter_mut().map(|(seq, _)| &mut seq.cache[l]).collect();
            let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, cfg.rms_eps)?;
            let a = attention(cfg, layer, &h, &cos, &sin, &segments, &mut caches)?;
            x = (x + a)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, cfg.rms_eps)?;
            let gu = layer.gate_up.forward(&h)?;
            let (g, u) = (gu[0].silu()?, &gu[1]);
            x = (x + layer.down.forward(&(g * u)?)?)?;
        }
        for (seq, tokens) in batch.iter_mut() {
            seq.position += tokens.len();
        }
        let rows = if every_position {
            x
        } else {
            let last: Vec<u32> = segments
                .iter()
                .map(|s| (s.start + s.len - 1) as u32)
                .collect();
            x.index_select(&Tensor::from_vec(last, segments.len(), &self.device)?, 0)?
        };
        let rows = candle_nn::ops::rms_norm(&rows, &w.norm, cfg.rms_eps)?;
        w.output.forward(&rows)?.to_vec2()
    }

    /// The logits after every token of `tokens`, run from position 0 as one
    /// sequence (llama.cpp's perplexity and KL-divergence scoring).
    pub fn score(&self, tokens: &[u32]) -> std::result::Result<Vec<Vec<f32>>, BackendError> {
        let mut seq = self.new_sequence();
        self.check_fits(&seq, tokens)?;
        self.pool
            .install(|| self.run(&mut [(&mut seq, tokens)], true))
            .map_err(|e| BackendError(e.to_string()))
    }

    fn check_fits(
        &self,
        seq: &LlamaSequence,
        tokens: &[u32],
    ) -> std::result::Result<(), BackendError> {
        let context = self.weights.config.context;
        if tokens.is_empty() || seq.position + tokens.len() > context {
            return Err(BackendError(format!(
                "{} tokens at position {} do not fit the context of {context}",
                tokens.len(),
                seq.position,
            )));
        }
        Ok(())
    }
}

/// One sequence's rows in a packed batch, and its causal mask.
struct Segment {
    start: usize,
    len: usize,
    mask: Option<Tensor>,
}

/// Query positions attended at once during a prompt.
const QUERY_CHUNK: usize = 256;

/// Softmax attention of queries (kv, group, len, hd) over keys and values
/// (kv, total, hd), with an additive mask (len, total) for prompts.
fn attend(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>, hd: usize) -> Result<Tensor> {
    let (kv_heads, group, len, _) = q.dims4()?;
    let total = k.dim(1)?;
    let q = q.contiguous()?.reshape((kv_heads, group * len, hd))?;
    let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?; // (kv, group·len, total)
    let scores = match mask {
        None => scores,
        Some(m) => scores
            .reshape((kv_heads, group, len, total))?
            .broadcast_add(m)?
            .reshape((kv_heads, group * len, total))?,
    };
    let probs = through_f16(&candle_nn::ops::softmax_last_dim(&scores)?)?;
    probs.matmul(v)?.reshape((kv_heads, group, len, hd))
}

/// Rounds to f16 and back: what llama.cpp's f16 KV cache and f16 matmuls do.
fn through_f16(t: &Tensor) -> Result<Tensor> {
    t.to_dtype(DType::F16)?.to_dtype(DType::F32)
}

/// Additive mask (n, pos + n): -inf where a query would see a later position.
fn causal_mask(n: usize, pos: usize, device: &Device) -> Result<Option<Tensor>> {
    if n == 1 {
        return Ok(None);
    }
    let total = pos + n;
    let data: Vec<f32> = (0..n)
        .flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok(Some(Tensor::from_vec(data, (n, total), device)?))
}

fn attention(
    cfg: &LlamaConfig,
    layer: &Layer,
    h: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    segments: &[Segment],
    caches: &mut [&mut Option<KvCache>],
) -> Result<Tensor> {
    let rows = h.dim(0)?;
    let (heads, kv_heads, hd) = (cfg.heads, cfg.kv_heads, cfg.head_dim);
    let group = heads / kv_heads;
    // (rows, heads·hd) → (1, heads, rows, hd) for rope_i, each row at its own position.
    let split = |t: Tensor, count: usize| {
        t.reshape((rows, count, hd))?
            .transpose(0, 1)?
            .contiguous()?
            .unsqueeze(0)
    };
    let [q, k, v]: [Tensor; 3] = layer
        .qkv
        .forward(h)?
        .try_into()
        .map_err(|_| candle_core::Error::Msg("expected Q, K and V".into()))?;
    let q = split(q, heads)?;
    let k = split(k, kv_heads)?;
    let v = split(v, kv_heads)?;
    let q = through_f16(&candle_nn::rotary_emb::rope_i(&q, cos, sin)?.squeeze(0)?)?;
    let k = through_f16(&candle_nn::rotary_emb::rope_i(&k, cos, sin)?.squeeze(0)?)?;
    let v = through_f16(&v.squeeze(0)?)?;
    let mut outs = Vec::with_capacity(segments.len());
    for (seg, cache) in segments.iter().zip(caches.iter_mut()) {
        let n = seg.len;
        let (k_new, v_new) = (k.narrow(1, seg.start, n)?, v.narrow(1, seg.start, n)?);
        let (k, v) = KvCache::append(cache, &k_new, &v_new, cfg.context)?;
        // (heads, n, hd) as (kv_heads, group, n, hd): query heads that share
        // a KV head are stacked against it.
        let q = q
            .narrow(1, seg.start, n)?
            .contiguous()?
            .reshape((kv_heads, group, n, hd))?;
        // Long prompts attend in chunks of queries, so the score matrix stays
        // small (a 4k prompt would otherwise build a 600 MB one per layer).
        let mut chunks = Vec::with_capacity(n.div_ceil(QUERY_CHUNK));
        for c0 in (0..n).step_by(QUERY_CHUNK) {
            let len = QUERY_CHUNK.min(n - c0);
            let mask = seg
                .mask
                .as_ref()
                .map(|m| m.narrow(0, c0, len))
                .transpose()?;
            chunks.push(attend(&q.narrow(2, c0, len)?, &k, &v, mask.as_ref(), hd)?);
        }
        let out = Tensor::cat(&chunks, 2)?; // (kv, group, n, hd)
        outs.push(
            out.reshape((heads, n, hd))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((n, heads * hd))?,
        );
    }
    layer.wo.forward(&Tensor::cat(&outs, 0)?)
}

impl GenerateBackend for LlamaBackend {
    type Sequence = LlamaSequence;

    fn new_sequence(&self) -> LlamaSequence {
        LlamaSequence {
            cache: (0..self.weights.config.layers).map(|_| None).collect(),
            position: 0,
        }
    }

    fn forward(
        &self,
        seq: &mut LlamaSequence,
        tokens: &[u32],
    ) -> std::result::Result<Vec<f32>, BackendError> {
        let mut logits = self.forward_batch(&mut [(seq, tokens)])?;
        Ok(logits.pop().expect("one sequence in, one out"))
    }

    fn forward_batch(
        &self,
        batch: &mut [(&mut LlamaSequence, &[u32])],
    ) -> std::result::Result<Vec<Vec<f32>>, BackendError> {
        for (seq, tokens) in batch.iter() {
            self.check_fits(seq, tokens)?;
        }
        self.pool
            .install(|| self.run(batch, false))
            .map_err(|e| BackendError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attending in query chunks gives what attending at once gives.
    #[test]
    fn chunked_attention_equals_whole() {
        let dev = Device::Cpu;
        let (kv, group, n, hd, pos) = (3, 3, 600, 64, 100);
        let total = pos + n;
        let q = Tensor::randn(0f32, 1.0, (kv, group, n, hd), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (kv, total, hd), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (kv, total, hd), &dev).unwrap();
        let mask = causal_mask(n, pos, &dev).unwrap().unwrap();
        let whole = attend(&q, &k, &v, Some(&mask), hd).unwrap();
        let mut chunks = Vec::new();
        for c0 in (0..n).step_by(QUERY_CHUNK) {
            let len = QUERY_CHUNK.min(n - c0);
            let m = mask.narrow(0, c0, len).unwrap();
            chunks.push(attend(&q.narrow(2, c0, len).unwrap(), &k, &v, Some(&m), hd).unwrap());
        }
        let chunked = Tensor::cat(&chunks, 2).unwrap();
        let diff = (whole - chunked)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "{diff}");
    }
}
