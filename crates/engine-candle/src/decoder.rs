//! Decoders from GGUF (llama, Mistral, Qwen2/3, Gemma 2/3, Phi-3), following
//! llama.cpp's arithmetic so that greedy decoding picks the same tokens up to
//! near-ties: activations are quantized to the weights' dot type before each
//! quantized matmul (our AVX2 kernels for Q4_0, Q4_1, Q5_0 and Q8_0, candle's
//! GGML kernels for the k-quants), rotary angles are accumulated as ggml
//! accumulates them, and the attention operands (queries, keys, values,
//! attention weights) are rounded to f16 where llama.cpp's default f16 KV
//! cache and f16 dot products round them. What differs between families is
//! read from [`DecoderHparams`]; the tensors present decide the rest (QKV
//! biases, per-head q/k norms, fused projections, a separate output).
//!
//! The weights are shared; each sequence owns its KV cache.

use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::ggml_file::qtensor_from_ggml;
use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Result, Tensor};
use modelship_engine::{BackendError, GenerateBackend};
use modelship_model::{DecoderCheckpoint, DecoderHparams, GgufFile, Rope, RopeStyle};

use crate::attention::{Scoring, attend_cpu, key_hidden};
use crate::gated::gated;
use crate::linear::{Linear, Projections, runs_on_our_kernel};
use crate::probe::Probe;
use crate::weight_bytes::{GgufTensors, StoredTensor, WeightBytes};

struct Layer {
    attn_norm: Tensor,
    qkv: Projections,
    /// Per-head RMS norms of queries and keys (Qwen3, Gemma 3).
    q_norm: Option<Tensor>,
    k_norm: Option<Tensor>,
    wo: Linear,
    post_attn_norm: Option<Tensor>,
    ffn_norm: Tensor,
    gate_up: Projections,
    down: Linear,
    post_ffn_norm: Option<Tensor>,
    /// Attends through the sliding window.
    local: bool,
}

/// The token embedding matrix as stored (quantized rows are expanded only
/// for the tokens looked up).
struct TokenTable {
    dtype: GgmlDType,
    bytes: WeightBytes,
    rows: usize,
    width: usize,
}

impl TokenTable {
    fn row_bytes(&self) -> usize {
        self.width / self.dtype.block_size() * self.dtype.type_size()
    }

    /// (ids, width) f32 rows.
    fn lookup(&self, ids: &[u32], device: &Device) -> Result<Tensor> {
        let rb = self.row_bytes();
        let mut gathered = Vec::with_capacity(ids.len() * rb);
        for &id in ids {
            let id = id as usize;
            if id >= self.rows {
                candle_core::bail!("token {id} is outside the vocabulary of {}", self.rows);
            }
            gathered.extend_from_slice(&self.bytes[id * rb..(id + 1) * rb]);
        }
        qtensor_from_ggml(self.dtype, &gathered, vec![ids.len(), self.width], device)?
            .dequantize(device)
    }
}

/// cos/sin tables of one rope, (context, head_dim / 2).
struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

struct Weights {
    hp: DecoderHparams,
    /// Positions served (the model's context capped by the replica's).
    context: usize,
    embeddings: TokenTable,
    layers: Vec<Layer>,
    norm: Tensor,
    output: Linear,
    rope_global: RopeTables,
    /// The sliding layers' own tables where their rope differs (Gemma 3).
    rope_local: Option<RopeTables>,
}

/// A decoder ready to run sequences.
#[derive(Clone)]
pub struct DecoderBackend {
    weights: Arc<Weights>,
    device: Device,
    /// Forward passes run inside this pool, so the thread that drives a pass
    /// is one of the workers its matmuls split across: no hand-off to other
    /// threads per matmul, and no more runnable threads than cores.
    pool: Arc<rayon::ThreadPool>,
}

/// Positions a sliding-window layer's cache holds at most, whatever the
/// context: queries attend in chunks of [`QUERY_CHUNK`], and a chunk sees
/// its `window − 1` earlier positions, so the cache needs `window − 1 +
/// QUERY_CHUNK` rows; twice the larger of the two leaves room to drop old
/// rows once per `window` steps rather than every step. The planner counts
/// the cache by it.
pub fn window_cache_positions(window: usize) -> usize {
    2 * window.max(QUERY_CHUNK)
}

/// Keys and values of one layer for one sequence: buffers of shape
/// (kv_heads, capacity, head_dim) filled up to `len`, grown by doubling, so a
/// decode step writes one row instead of copying the whole cache. Row 0
/// holds position `first`: a sliding-window layer's cache drops the rows no
/// later query can see, so it holds at most [`window_cache_positions`].
pub struct KvCache {
    k: Tensor,
    v: Tensor,
    len: usize,
    first: usize,
}

impl KvCache {
    /// Appends (kv_heads, n, head_dim) keys and values of positions
    /// `position..position + n`; returns views of the rows held and the
    /// position of their first. With a `window`, rows more than `window − 1`
    /// before `position` may be dropped (no query from `position` on sees
    /// them).
    fn append(
        slot: &mut Option<KvCache>,
        k_new: &Tensor,
        v_new: &Tensor,
        max_len: usize,
        position: usize,
        window: Option<usize>,
    ) -> Result<(Tensor, Tensor, usize)> {
        let (kv_heads, n, hd) = k_new.dims3()?;
        let (len, first) = slot.as_ref().map_or((0, position), |c| (c.len, c.first));
        let capacity = slot.as_ref().map_or(0, |c| c.k.dim(1).unwrap_or(0));
        if len + n > capacity {
            // Rows no query from `position` on can see.
            let stale = window.map_or(0, |w| {
                (position + 1)
                    .saturating_sub(w)
                    .saturating_sub(first)
                    .min(len)
            });
            let kept = len - stale;
            let needed = kept + n;
            let cap = window.map_or(max_len, |w| window_cache_positions(w).min(max_len));
            let grown = needed.max(capacity * 2).max(64).min(cap.max(needed));
            let k = Tensor::zeros((kv_heads, grown, hd), k_new.dtype(), k_new.device())?;
            let v = Tensor::zeros((kv_heads, grown, hd), v_new.dtype(), v_new.device())?;
            if let Some(old) = slot.take() {
                k.slice_set(&old.k.narrow(1, stale, kept)?.contiguous()?, 1, 0)?;
                v.slice_set(&old.v.narrow(1, stale, kept)?.contiguous()?, 1, 0)?;
            }
            *slot = Some(KvCache {
                k,
                v,
                len: kept,
                first: first + stale,
            });
        }
        let cache = slot.as_mut().expect("allocated above");
        debug_assert_eq!(cache.first + cache.len, position, "positions in order");
        cache.k.slice_set(&k_new.contiguous()?, 1, cache.len)?;
        cache.v.slice_set(&v_new.contiguous()?, 1, cache.len)?;
        cache.len += n;
        Ok((
            cache.k.narrow(1, 0, cache.len)?,
            cache.v.narrow(1, 0, cache.len)?,
            cache.first,
        ))
    }
}

/// One sequence's KV cache, a [`KvCache`] per layer once it has run.
pub struct DecoderSequence {
    cache: Vec<Option<KvCache>>,
    position: usize,
}

/// cos/sin tables with angles accumulated as ggml's rope does: the angle of
/// pair i is `pos · scale · base^(-2i/d) / factor_i`, the power built by
/// repeated multiplication (`factors`: Llama 3's `rope_freqs`).
fn rope_tables(
    rope: Rope,
    head_dim: usize,
    context: usize,
    factors: Option<&[f32]>,
    device: &Device,
) -> Result<RopeTables> {
    let half = head_dim / 2;
    let step = rope.base.powf(-2.0 / head_dim as f32);
    let mut cos = Vec::with_capacity(context * half);
    let mut sin = Vec::with_capacity(context * half);
    for pos in 0..context {
        let mut theta = pos as f32 * rope.position_scale;
        for i in 0..half {
            let angle = match factors {
                Some(f) => theta / f[i],
                None => theta,
            };
            cos.push(angle.cos());
            sin.push(angle.sin());
            theta *= step;
        }
    }
    Ok(RopeTables {
        cos: Tensor::from_vec(cos, (context, half), device)?,
        sin: Tensor::from_vec(sin, (context, half), device)?,
    })
}

/// Reads tensors by name, checking each one's shape against the metadata.
struct Tensors<'a> {
    ct: &'a Content,
    /// A tensor's data, in the GGUF layout.
    read: &'a mut dyn FnMut(&str) -> Result<StoredTensor>,
    /// A tensor's name for errors (a checkpoint's own name beside it).
    describe: &'a dyn Fn(&str) -> String,
    device: &'a Device,
}

impl Tensors<'_> {
    fn has(&self, name: &str) -> bool {
        self.ct.tensor_infos.contains_key(name)
    }

    /// `name`, whose GGUF shape (rows last) must be `dims` (rows first).
    fn get(&mut self, name: &str, dims: &[usize]) -> Result<StoredTensor> {
        let Some(info) = self.ct.tensor_infos.get(name) else {
            candle_core::bail!("tensor {} is missing", (self.describe)(name));
        };
        if info.shape.dims() != dims {
            candle_core::bail!(
                "tensor {} has shape {:?} where the metadata implies {dims:?}",
                (self.describe)(name),
                info.shape.dims()
            );
        }
        (self.read)(name)
    }

    fn matrix(&mut self, name: &str, dims: &[usize]) -> Result<Linear> {
        Linear::new(self.get(name, dims)?, self.device)
    }

    fn vector(&mut self, name: &str, len: usize) -> Result<Tensor> {
        self.get(name, &[len])?.dequantize(self.device)
    }

    fn optional_vector(&mut self, name: &str, len: usize) -> Result<Option<Tensor>> {
        if self.has(name) {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }
}

fn hparams(
    hp: std::result::Result<DecoderHparams, modelship_model::ModelError>,
) -> Result<DecoderHparams> {
    hp.map_err(|e| candle_core::Error::Msg(e.to_string()))
}

impl DecoderBackend {
    /// Loads a decoder GGUF, its weights memory-mapped; `max_context` caps
    /// the rotary tables.
    pub fn from_gguf(gguf: &GgufFile, device: &Device, max_context: usize) -> Result<Self> {
        let hp = hparams(DecoderHparams::from_gguf(gguf))?;
        let tensors = GgufTensors::open(gguf)?;
        let mut read = |name: &str| tensors.get(name);
        let describe = |name: &str| format!("`{name}`");
        Self::load(hp, &gguf.content, &mut read, &describe, device, max_context)
    }

    /// Loads a Hugging Face checkpoint as the GGUF it converts to: the same
    /// names, metadata and values, its safetensors memory-mapped and read as
    /// stored. Stored, Q and K rows keep Hugging Face's order, whose rope
    /// rotates halves (llama.cpp's llama converter reorders them for its
    /// interleaved one: `quantize` writes that order).
    pub fn from_checkpoint(
        checkpoint: &DecoderCheckpoint,
        device: &Device,
        max_context: usize,
    ) -> Result<Self> {
        let mut hp = hparams(DecoderHparams::from_gguf(&checkpoint.gguf))?;
        hp.rope_style = RopeStyle::Halves;
        let maps = checkpoint
            .weight_files()
            .iter()
            .map(|f| {
                WeightBytes::map(f)
                    .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", f.display())))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut read = |name: &str| {
            let t = checkpoint
                .tensor(name)
                .ok_or_else(|| candle_core::Error::Msg(format!("tensor `{name}` is missing")))?;
            let bytes = match checkpoint.stored(t) {
                Some(at) => maps[at.file].slice(at.offset, at.len).ok_or_else(|| {
                    candle_core::Error::Msg(format!(
                        "tensor {} lies past the end of {}",
                        checkpoint.describe(name),
                        checkpoint.weight_files()[at.file].display()
                    ))
                })?,
                None => WeightBytes::owned(
                    checkpoint
                        .read(t)
                        .map_err(|e| candle_core::Error::Msg(format!("{e:#}")))?,
                ),
            };
            Ok(StoredTensor {
                dtype: t.dtype,
                dims: t.shape.clone(),
                bytes,
            })
        };
        let describe = |name: &str| checkpoint.describe(name);
        let content = &checkpoint.gguf.content;
        Self::load(hp, content, &mut read, &describe, device, max_context)
    }

    fn load(
        hp: DecoderHparams,
        ct: &Content,
        read: &mut dyn FnMut(&str) -> Result<StoredTensor>,
        describe: &dyn Fn(&str) -> String,
        device: &Device,
        max_context: usize,
    ) -> Result<Self> {
        let context = hp.context.min(max_context);
        let mut t = Tensors {
            ct,
            read,
            describe,
            device,
        };
        let (width, hd) = (hp.width, hp.head_dim);
        let (q_rows, kv_rows, ff) = (hp.heads * hd, hp.kv_heads * hd, hp.feed_forward);

        let Some(embed_info) = ct.tensor_infos.get("token_embd.weight") else {
            candle_core::bail!("tensor {} is missing", describe("token_embd.weight"));
        };
        let vocab = embed_info.shape.dims().first().copied().unwrap_or(0);
        let embed = t.get("token_embd.weight", &[vocab, width])?;
        if !width.is_multiple_of(embed.dtype.block_size()) {
            candle_core::bail!(
                "tensor `token_embd.weight`: rows of {width} are not whole {:?} blocks",
                embed.dtype
            );
        }
        // The table stays in the file where the output reads it in place
        // (tied, in a format of our kernels): rows are looked up there too.
        // Otherwise it is copied out, as candle's output matrix is, and the
        // planner counts it so either way.
        let in_place =
            !t.has("output.weight") && runs_on_our_kernel(embed.dtype, width, device).is_some();
        let embeddings = TokenTable {
            dtype: embed.dtype,
            bytes: if in_place {
                embed.bytes.clone()
            } else {
                let owned = WeightBytes::owned(embed.bytes.to_vec());
                embed.bytes.release();
                owned
            },
            rows: vocab,
            width,
        };
        let norm = t.vector("output_norm.weight", width)?;
        let output = if t.has("output.weight") {
            t.matrix("output.weight", &[vocab, width])?
        } else {
            // Tied embeddings: the output projection reads the token table.
            Linear::shared(embeddings.dtype, &embeddings.bytes, vocab, width, device)?
        };
        let factors = if t.has("rope_freqs.weight") {
            Some(t.vector("rope_freqs.weight", hd / 2)?.to_vec1::<f32>()?)
        } else {
            None
        };
        let mut layers = Vec::with_capacity(hp.layers);
        for i in 0..hp.layers {
            let n = |name: &str| format!("blk.{i}.{name}");
            let qkv = if t.has(&n("attn_qkv.weight")) {
                Projections::fused(
                    t.get(&n("attn_qkv.weight"), &[q_rows + 2 * kv_rows, width])?,
                    vec![q_rows, kv_rows, kv_rows],
                    device,
                )?
            } else {
                Projections::new(
                    vec![
                        t.get(&n("attn_q.weight"), &[q_rows, width])?,
                        t.get(&n("attn_k.weight"), &[kv_rows, width])?,
                        t.get(&n("attn_v.weight"), &[kv_rows, width])?,
                    ],
                    device,
                )?
            };
            let qkv = if t.has(&n("attn_q.bias")) {
                qkv.with_biases(vec![
                    t.vector(&n("attn_q.bias"), q_rows)?,
                    t.vector(&n("attn_k.bias"), kv_rows)?,
                    t.vector(&n("attn_v.bias"), kv_rows)?,
                ])?
            } else {
                qkv
            };
            let gate_up = if t.has(&n("ffn_gate.weight")) {
                Projections::new(
                    vec![
                        t.get(&n("ffn_gate.weight"), &[ff, width])?,
                        t.get(&n("ffn_up.weight"), &[ff, width])?,
                    ],
                    device,
                )?
            } else {
                // Phi-3: gate and up fused in `ffn_up`, gate first.
                Projections::fused(
                    t.get(&n("ffn_up.weight"), &[2 * ff, width])?,
                    vec![ff, ff],
                    device,
                )?
            };
            layers.push(Layer {
                attn_norm: t.vector(&n("attn_norm.weight"), width)?,
                qkv,
                q_norm: t.optional_vector(&n("attn_q_norm.weight"), hd)?,
                k_norm: t.optional_vector(&n("attn_k_norm.weight"), hd)?,
                wo: t.matrix(&n("attn_output.weight"), &[width, q_rows])?,
                post_attn_norm: t.optional_vector(&n("post_attention_norm.weight"), width)?,
                ffn_norm: t.vector(&n("ffn_norm.weight"), width)?,
                gate_up,
                down: t.matrix(&n("ffn_down.weight"), &[width, ff])?,
                post_ffn_norm: t.optional_vector(&n("post_ffw_norm.weight"), width)?,
                local: hp.local_layers[i],
            });
        }
        if hp.post_norms
            && layers
                .iter()
                .any(|l| l.post_attn_norm.is_none() || l.post_ffn_norm.is_none())
        {
            candle_core::bail!(
                "tensors `post_attention_norm`/`post_ffw_norm` are missing for a {:?} model",
                hp.family
            );
        }
        let rope_global = rope_tables(hp.rope, hd, context, factors.as_deref(), device)?;
        let rope_local = if hp.rope_local != hp.rope && hp.local_layers.iter().any(|&l| l) {
            Some(rope_tables(
                hp.rope_local,
                hd,
                context,
                factors.as_deref(),
                device,
            )?)
        } else {
            None
        };
        Ok(Self {
            weights: Arc::new(Weights {
                hp,
                context,
                embeddings,
                layers,
                norm,
                output,
                rope_global,
                rope_local,
            }),
            device: device.clone(),
            pool: Arc::new(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(rayon::current_num_threads())
                    .thread_name(|i| format!("modelship-decoder-{i}"))
                    .build()
                    .map_err(|e| candle_core::Error::Msg(e.to_string()))?,
            ),
        })
    }

    /// The hyper-parameters the model was loaded with.
    pub fn hparams(&self) -> &DecoderHparams {
        &self.weights.hp
    }

    /// Positions a sequence may reach: the model's context capped by the
    /// replica's.
    pub fn context(&self) -> usize {
        self.weights.context
    }

    /// Runs each sequence's `tokens` at its next positions, all sequences
    /// packed into one batch: the projections and the MLP see every token of
    /// every sequence as one matrix; attention runs per sequence over its own
    /// cache. Returns the logits after each sequence's last token, or after
    /// every token when `every_position` (scoring text, not generating).
    fn run(
        &self,
        batch: &mut [(&mut DecoderSequence, &[u32])],
        every_position: bool,
        mut probe: Option<&mut dyn Probe>,
    ) -> Result<Vec<Vec<f32>>> {
        let w = &*self.weights;
        let hp = &w.hp;
        let mut segments = Vec::with_capacity(batch.len());
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        for (seq, tokens) in batch.iter() {
            let start = ids.len();
            ids.extend_from_slice(tokens);
            positions.extend((seq.position..seq.position + tokens.len()).map(|p| p as u32));
            segments.push(Segment {
                start,
                len: tokens.len(),
                position: seq.position,
            });
        }
        let total = ids.len();
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let angles = |r: &RopeTables| -> Result<(Tensor, Tensor)> {
            Ok((
                r.cos.index_select(&positions, 0)?,
                r.sin.index_select(&positions, 0)?,
            ))
        };
        let global = angles(&w.rope_global)?;
        let local = w.rope_local.as_ref().map(angles).transpose()?;
        let mut x = w.embeddings.lookup(&ids, &self.device)?; // (tokens, width)
        if let Some(scale) = hp.embedding_scale {
            x = (x * scale as f64)?;
        }
        for (l, layer) in w.layers.iter().enumerate() {
            let mut caches: Vec<&mut Option<KvCache>> =
                batch.iter_mut().map(|(seq, _)| &mut seq.cache[l]).collect();
            let (cos, sin) = match (&local, layer.local) {
                (Some(loc), true) => (&loc.0, &loc.1),
                _ => (&global.0, &global.1),
            };
            // Blocks, so each step's tensors are freed before the next.
            let a = {
                let h = candle_nn::ops::rms_norm(&x, &layer.attn_norm, hp.rms_eps)?;
                let a = attention(w, layer, &h, cos, sin, &segments, &mut caches)?;
                let a = match probe.as_deref_mut() {
                    Some(p) => p.heads(l, a)?,
                    None => a,
                };
                let a = layer.wo.forward(&a)?;
                post_norm(a, layer.post_attn_norm.as_ref(), hp.rms_eps)?
            };
            x = (x + a)?;
            let m = {
                let h = candle_nn::ops::rms_norm(&x, &layer.ffn_norm, hp.rms_eps)?;
                let mut gated = gated(&layer.gate_up.forward_joined(&h)?, hp.activation)?;
                if let Some(p) = probe.as_deref_mut() {
                    gated = p.ffn(l, gated)?;
                }
                post_norm(
                    layer.down.forward(&gated)?,
                    layer.post_ffn_norm.as_ref(),
                    hp.rms_eps,
                )?
            };
            x = (x + m)?;
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
        let rows = candle_nn::ops::rms_norm(&rows, &w.norm, hp.rms_eps)?;
        let logits = w.output.forward(&rows)?;
        let logits = match hp.final_softcap {
            Some(c) => softcap(&logits, c)?,
            None => logits,
        };
        logits.to_vec2()
    }

    /// [`Self::score`] with `probe` called at each layer's FFN activations
    /// and attention heads.
    pub fn score_probed(
        &self,
        tokens: &[u32],
        probe: &mut dyn Probe,
    ) -> std::result::Result<Vec<Vec<f32>>, BackendError> {
        let mut seq = self.new_sequence();
        self.check_fits(&seq, tokens)?;
        self.pool
            .install(|| self.run(&mut [(&mut seq, tokens)], true, Some(probe)))
            .map_err(|e| BackendError(e.to_string()))
    }

    /// The logits after every token of `tokens`, run from position 0 as one
    /// sequence (llama.cpp's perplexity and KL-divergence scoring).
    pub fn score(&self, tokens: &[u32]) -> std::result::Result<Vec<Vec<f32>>, BackendError> {
        let mut seq = self.new_sequence();
        self.check_fits(&seq, tokens)?;
        self.pool
            .install(|| self.run(&mut [(&mut seq, tokens)], true, None))
            .map_err(|e| BackendError(e.to_string()))
    }

    fn check_fits(
        &self,
        seq: &DecoderSequence,
        tokens: &[u32],
    ) -> std::result::Result<(), BackendError> {
        let context = self.weights.context;
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

/// Gemma's norm of a block's output before it joins the residual stream.
fn post_norm(t: Tensor, weight: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    match weight {
        Some(w) => candle_nn::ops::rms_norm(&t, w, eps),
        None => Ok(t),
    }
}

/// `tanh(x / cap) · cap`.
fn softcap(x: &Tensor, cap: f32) -> Result<Tensor> {
    (x / cap as f64)?.tanh()? * cap as f64
}

/// One sequence's rows in a packed batch.
struct Segment {
    start: usize,
    len: usize,
    /// Position of its first row.
    position: usize,
}

/// Query positions attended at once during a prompt.
const QUERY_CHUNK: usize = 256;

/// Softmax attention of queries (kv, group, len, hd) over keys and values
/// (kv, total, hd), with an additive mask (len, total) for prompts.
fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scoring: Scoring,
) -> Result<Tensor> {
    let (kv_heads, group, len, hd) = q.dims4()?;
    let total = k.dim(1)?;
    let q = q.contiguous()?.reshape((kv_heads, group * len, hd))?;
    let scores = (q.matmul(&k.t()?)? * scoring.scale as f64)?; // (kv, group·len, total)
    let scores = match scoring.softcap {
        Some(c) => softcap(&scores, c)?,
        None => scores,
    };
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

/// The keys `len` queries from position `first` see: the range of key
/// positions, and an additive mask (len, keys) with -inf where a query would
/// see a later position or one outside its `window` (llama.cpp's standard
/// sliding window: a key `p − j ≥ window` behind the query is hidden). The
/// mask is `None` when nothing in the range is hidden.
fn visible_keys(
    first: usize,
    len: usize,
    window: Option<usize>,
    device: &Device,
) -> Result<(std::ops::Range<usize>, Option<Tensor>)> {
    let end = first + len;
    let start = window.map_or(0, |w| (first + 1).saturating_sub(w));
    let hidden = |i: usize, j: usize| key_hidden(first + i, j, window);
    let any_hidden = (0..len).any(|i| hidden(i, start) || hidden(i, end - 1));
    if !any_hidden {
        return Ok((start..end, None));
    }
    let data: Vec<f32> = (0..len)
        .flat_map(|i| (start..end).map(move |j| if hidden(i, j) { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    Ok((
        start..end,
        Some(Tensor::from_vec(data, (len, end - start), device)?),
    ))
}

/// Per-head RMS norm of (rows, heads·hd) projections, where the model has one.
fn head_norm(t: Tensor, weight: Option<&Tensor>, heads: usize, eps: f32) -> Result<Tensor> {
    match weight {
        None => Ok(t),
        Some(w) => {
            let (rows, all) = t.dims2()?;
            candle_nn::ops::rms_norm(&t.reshape((rows, heads, all / heads))?, w, eps)?
                .reshape((rows, all))
        }
    }
}

/// Self-attention of each segment over its cache: the heads' outputs,
/// before the output projection.
fn attention(
    w: &Weights,
    layer: &Layer,
    h: &Tensor,
    cos: &Tensor,
    sin: &Tensor,
    segments: &[Segment],
    caches: &mut [&mut Option<KvCache>],
) -> Result<Tensor> {
    let hp = &w.hp;
    let rows = h.dim(0)?;
    let (heads, kv_heads, hd) = (hp.heads, hp.kv_heads, hp.head_dim);
    let group = heads / kv_heads;
    // (rows, heads·hd) → (1, heads, rows, hd) for rope, each row at its own position.
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
    let rope = |t: &Tensor| match hp.rope_style {
        RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(t, cos, sin),
        RopeStyle::Halves => candle_nn::rotary_emb::rope(t, cos, sin),
    };
    // Each projection to its final form in one expression, so the steps in
    // between are freed as it goes (a shadowed binding would live to the end
    // of the function: a long prompt's peak held them all).
    let normed_roped = |t: Tensor, norm: Option<&Tensor>, count: usize| {
        through_f16(&rope(&split(head_norm(t, norm, count, hp.rms_eps)?, count)?)?.squeeze(0)?)
    };
    let q = normed_roped(q, layer.q_norm.as_ref(), heads)?;
    let k = normed_roped(k, layer.k_norm.as_ref(), kv_heads)?;
    let v = through_f16(&split(v, kv_heads)?.squeeze(0)?)?;
    let window = if layer.local { hp.sliding_window } else { None };
    let scoring = Scoring {
        scale: hp.attention_scale,
        softcap: hp.attention_softcap,
    };
    let mut outs = Vec::with_capacity(segments.len());
    for (seg, cache) in segments.iter().zip(caches.iter_mut()) {
        let n = seg.len;
        // (heads, n, hd) as (kv_heads, group, n, hd): query heads that share
        // a KV head are stacked against it.
        let q = q
            .narrow(1, seg.start, n)?
            .contiguous()?
            .reshape((kv_heads, group, n, hd))?;
        // Long prompts attend in chunks of queries, so the score matrix stays
        // small (a 4k prompt would otherwise build a 600 MB one per layer),
        // each chunk's keys and values appended to the cache first, so a
        // sliding-window layer holds only what its next chunk can see.
        let mut chunks = Vec::with_capacity(n.div_ceil(QUERY_CHUNK));
        for c0 in (0..n).step_by(QUERY_CHUNK) {
            let len = QUERY_CHUNK.min(n - c0);
            let position = seg.position + c0;
            let (k, v, first) = KvCache::append(
                cache,
                &k.narrow(1, seg.start + c0, len)?,
                &v.narrow(1, seg.start + c0, len)?,
                w.context,
                position,
                window,
            )?;
            let q = q.narrow(2, c0, len)?;
            if h.device().is_cpu() {
                chunks.push(attend_cpu(&q, &k, &v, (position, first), window, scoring)?);
                continue;
            }
            let (keys, mask) = visible_keys(position, len, window, h.device())?;
            let (k, v) = (
                k.narrow(1, keys.start - first, keys.len())?,
                v.narrow(1, keys.start - first, keys.len())?,
            );
            chunks.push(attend(&q, &k, &v, mask.as_ref(), scoring)?);
        }
        let out = Tensor::cat(&chunks, 2)?; // (kv, group, n, hd)
        outs.push(
            out.reshape((heads, n, hd))?
                .transpose(0, 1)?
                .contiguous()?
                .reshape((n, heads * hd))?,
        );
    }
    // The heads' outputs, (rows, heads · hd); the caller projects them.
    Tensor::cat(&outs, 0)
}

impl GenerateBackend for DecoderBackend {
    type Sequence = DecoderSequence;

    fn new_sequence(&self) -> DecoderSequence {
        DecoderSequence {
            cache: (0..self.weights.hp.layers).map(|_| None).collect(),
            position: 0,
        }
    }

    fn forward(
        &self,
        seq: &mut DecoderSequence,
        tokens: &[u32],
    ) -> std::result::Result<Vec<f32>, BackendError> {
        let mut logits = self.forward_batch(&mut [(seq, tokens)])?;
        Ok(logits.pop().expect("one sequence in, one out"))
    }

    fn forward_all(
        &self,
        seq: &mut DecoderSequence,
        tokens: &[u32],
    ) -> std::result::Result<Vec<Vec<f32>>, BackendError> {
        self.check_fits(seq, tokens)?;
        self.pool
            .install(|| self.run(&mut [(seq, tokens)], true, None))
            .map_err(|e| BackendError(e.to_string()))
    }

    fn fork(&self, seq: &DecoderSequence) -> std::result::Result<DecoderSequence, BackendError> {
        // A cache is written in place (`slice_set`): the copy owns its rows.
        let copy = |c: &KvCache| -> Result<KvCache> {
            Ok(KvCache {
                k: c.k.copy()?,
                v: c.v.copy()?,
                len: c.len,
                first: c.first,
            })
        };
        let cache = seq
            .cache
            .iter()
            .map(|c| c.as_ref().map(copy).transpose())
            .collect::<Result<_>>()
            .map_err(|e| BackendError(e.to_string()))?;
        Ok(DecoderSequence {
            cache,
            position: seq.position,
        })
    }

    fn forward_batch(
        &self,
        batch: &mut [(&mut DecoderSequence, &[u32])],
    ) -> std::result::Result<Vec<Vec<f32>>, BackendError> {
        for (seq, tokens) in batch.iter() {
            self.check_fits(seq, tokens)?;
        }
        self.pool
            .install(|| self.run(batch, false, None))
            .map_err(|e| BackendError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Attending in query chunks gives what attending at once gives, with
    /// and without a sliding window.
    #[test]
    fn chunked_attention_equals_whole() {
        let dev = Device::Cpu;
        let (kv, group, n, hd, pos) = (3, 3, 600, 64, 100);
        let total = pos + n;
        let q = Tensor::randn(0f32, 1.0, (kv, group, n, hd), &dev).unwrap();
        let k = Tensor::randn(0f32, 1.0, (kv, total, hd), &dev).unwrap();
        let v = Tensor::randn(0f32, 1.0, (kv, total, hd), &dev).unwrap();
        let scoring = Scoring {
            scale: 1.0 / (hd as f32).sqrt(),
            softcap: None,
        };
        for window in [None, Some(300)] {
            let (keys, mask) = visible_keys(pos, n, window, &dev).unwrap();
            let whole = attend(
                &q,
                &k.narrow(1, keys.start, keys.len()).unwrap(),
                &v.narrow(1, keys.start, keys.len()).unwrap(),
                mask.as_ref(),
                scoring,
            )
            .unwrap();
            let mut chunks = Vec::new();
            for c0 in (0..n).step_by(QUERY_CHUNK) {
                let len = QUERY_CHUNK.min(n - c0);
                let (keys, m) = visible_keys(pos + c0, len, window, &dev).unwrap();
                let (kc, vc) = (
                    k.narrow(1, keys.start, keys.len()).unwrap(),
                    v.narrow(1, keys.start, keys.len()).unwrap(),
                );
                let qc = q.narrow(2, c0, len).unwrap();
                chunks.push(attend(&qc, &kc, &vc, m.as_ref(), scoring).unwrap());
            }
            let chunked = Tensor::cat(&chunks, 2).unwrap();
            // A chunk attends only to the keys its queries can see (fewer
            // than the whole's), so its softmax sums run in another order
            // and an attention weight rounded to f16 can land one f16 step
            // (2^-11 relative) away; outputs are sums of such weights times
            // unit-sized values, so allow two steps at magnitude one. A
            // wrong mask or key range is off by far more (the values are
            // N(0, 1)).
            let diff = max_diff(&whole, &chunked);
            assert!(diff < 2f32.powi(-10), "window {window:?}: {diff}");
        }
    }

    /// The window hides exactly the keys `window` or more positions behind
    /// each query, and later ones.
    #[test]
    fn sliding_window_hides_old_and_future_keys() {
        let dev = Device::Cpu;
        let (keys, mask) = visible_keys(10, 3, Some(4), &dev).unwrap();
        assert_eq!(keys, 7..13);
        let m: Vec<Vec<f32>> = mask.unwrap().to_vec2().unwrap();
        let seen = |row: &Vec<f32>| -> Vec<usize> {
            row.iter()
                .enumerate()
                .filter(|(_, v)| v.is_finite())
                .map(|(j, _)| keys.start + j)
                .collect()
        };
        assert_eq!(seen(&m[0]), vec![7, 8, 9, 10]);
        assert_eq!(seen(&m[1]), vec![8, 9, 10, 11]);
        assert_eq!(seen(&m[2]), vec![9, 10, 11, 12]);
        // A decode step sees its window without a mask.
        let (keys, mask) = visible_keys(100, 1, Some(4), &dev).unwrap();
        assert_eq!((keys, mask.is_none()), (97..101, true));
        // Without a window a decode step sees everything.
        let (keys, mask) = visible_keys(100, 1, None, &dev).unwrap();
        assert_eq!((keys, mask.is_none()), (0..101, true));
    }

    /// A sliding-window layer's cache keeps, through a long prompt in
    /// chunks and then decode steps, every key a query sees, in order, and
    /// never more than `window_cache_positions` rows; a full layer's keeps
    /// every position.
    #[test]
    fn a_window_cache_holds_what_its_queries_see_and_no_more() {
        let dev = Device::Cpu;
        let rows = |p0: usize, n: usize| {
            let values: Vec<f32> = (p0..p0 + n).map(|p| p as f32).collect();
            Tensor::from_vec(values, (1, n, 1), &dev).unwrap()
        };
        for window in [None, Some(300)] {
            let (mut slot, mut position) = (None, 0);
            let passes = [256, 256, 256, 100]
                .into_iter()
                .chain(std::iter::repeat_n(1, 900));
            for n in passes {
                let new = rows(position, n);
                let (k, v, first) = KvCache::append(
                    &mut slot,
                    &new,
                    &(&new * 2.0).unwrap(),
                    4096,
                    position,
                    window,
                )
                .unwrap();
                let held: Vec<f32> = k.flatten_all().unwrap().to_vec1().unwrap();
                let want: Vec<f32> = (first..position + n).map(|p| p as f32).collect();
                assert_eq!(held, want, "window {window:?} at {position}");
                let doubled: Vec<f32> = v.flatten_all().unwrap().to_vec1().unwrap();
                assert_eq!(doubled, want.iter().map(|p| p * 2.0).collect::<Vec<_>>());
                let (keys, _) = visible_keys(position, n, window, &dev).unwrap();
                assert!(
                    keys.start >= first,
                    "key {} dropped (first {first})",
                    keys.start
                );
                let capacity = slot.as_ref().unwrap().k.dim(1).unwrap();
                match window {
                    Some(w) => assert!(capacity <= window_cache_positions(w), "{capacity} rows"),
                    None => assert_eq!(first, 0),
                }
                position += n;
            }
            if let Some(w) = window {
                assert!(slot.as_ref().unwrap().first > 0, "old rows dropped");
                assert!(position > window_cache_positions(w));
            }
        }
    }

    /// The CPU kernel reads the cache's rows in place and gives candle's
    /// ops' attention: causal, through a window, soft-capped.
    #[test]
    fn cpu_attention_equals_candle_ops() {
        let dev = Device::Cpu;
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n)
                .map(|i| (i as f32 * 0.37 + seed).sin() * 2.0)
                .collect()
        };
        let (kv, group, len, hd) = (2, 3, 4, 16);
        let first_query = 10;
        let buffer =
            |seed| Tensor::from_vec(values(kv * 20 * hd, seed), (kv, 20, hd), &dev).unwrap();
        let (kb, vb) = (buffer(1.0), buffer(2.0));
        let q = Tensor::from_vec(
            values(kv * group * len * hd, 3.0),
            (kv, group, len, hd),
            &dev,
        )
        .unwrap();
        // A full layer holds positions 0..14; a windowed one 2..14 (its
        // older rows dropped), both as rows 3.. of a larger cache buffer.
        for (window, softcap, first_key) in [(None, None, 0), (Some(5), Some(8.0), 2)] {
            let total = first_query + len - first_key;
            let (k, v) = (
                kb.narrow(1, 3, total).unwrap(),
                vb.narrow(1, 3, total).unwrap(),
            );
            let scoring = Scoring {
                scale: 0.25,
                softcap,
            };
            let ours = attend_cpu(&q, &k, &v, (first_query, first_key), window, scoring).unwrap();
            let (keys, mask) = visible_keys(first_query, len, window, &dev).unwrap();
            let from = keys.start - first_key;
            let theirs = attend(
                &q,
                &k.narrow(1, from, keys.len()).unwrap(),
                &v.narrow(1, from, keys.len()).unwrap(),
                mask.as_ref(),
                scoring,
            )
            .unwrap();
            let diff = (ours - theirs)
                .unwrap()
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(diff < 2e-3, "window {window:?}: {diff}");
        }
    }
}
