//! Transformer encoders — BERT, RoBERTa, XLM-RoBERTa, MPNet — with the
//! pooling and normalization sentence-transformers' modules ask for, or a
//! sequence-classification head (rerankers, classifiers).
//!
//! The batch is packed, not padded: the tokens of every sequence are stacked
//! into one (tokens, hidden) matrix, so each linear layer is one large matrix
//! product and no work is spent on padding; only attention runs per sequence.
//! One builder reads both sources — a Hugging Face directory (each tensor
//! found by its GGUF name through [`gguf_tensor_name`]) and a GGUF file — so
//! the two cannot drift apart.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use modelship_engine::{BackendError, EncodeBackend, Sequence};
use modelship_model::{
    Encoder, EncoderOutput, GgufFile, HfModel, Pooling, RelativeBuckets, gguf_tensor_name,
};

use crate::linear::{Linear, Projections};
use crate::probe::Probe;
use crate::weight_bytes::GgufTensors;

type Result<T> = candle_core::Result<T>;

/// Token rows from which a block-quantized matrix is decoded to f32 for the
/// product (the planner counts the decoded copy of the widest matrix).
pub const DECODED_FROM_ROWS: usize = 32;

/// A dense layer: a float weight stored transposed, (in, out), for `x · w`,
/// or a GGUF matrix run by our or candle's quantized kernels.
struct Dense {
    w: Weight,
    b: Tensor,
}

enum Weight {
    Transposed(Tensor),
    Gguf(Linear),
    /// GGUF matrices of one input, stacked when the kernels allow.
    GgufFused(Projections),
}

impl Dense {
    /// Several layers reading the same input, fused into one product.
    fn fused(parts: Vec<Dense>) -> Result<Self> {
        let bs: Vec<&Tensor> = parts.iter().map(|d| &d.b).collect();
        let b = Tensor::cat(&bs, 0)?;
        let mut ws = Vec::with_capacity(parts.len());
        let mut qs = Vec::with_capacity(parts.len());
        for p in parts {
            match p.w {
                Weight::Transposed(w) => ws.push(w),
                Weight::Gguf(l) => qs.push(l),
                Weight::GgufFused(_) => candle_core::bail!("fusing already fused layers"),
            }
        }
        let w = if qs.is_empty() {
            let ws: Vec<&Tensor> = ws.iter().collect();
            Weight::Transposed(Tensor::cat(&ws, 1)?.contiguous()?)
        } else if ws.is_empty() {
            Weight::GgufFused(Projections::from_linears(qs)?)
        } else {
            candle_core::bail!("fusing float and quantized layers")
        };
        Ok(Self { w, b })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // A batch of many tokens is one large product: decoding the matrix
        // to f32 for the float GEMM (a transient copy, one matrix at a
        // time) beats the dot-product kernels, which win for a few rows.
        let many = x.dim(0)? >= DECODED_FROM_ROWS && x.device().is_cpu();
        let y = match &self.w {
            Weight::Transposed(w) => x.matmul(w)?,
            Weight::Gguf(l) if many => x.matmul(&l.dequantize(x.device())?.t()?)?,
            Weight::GgufFused(p) if many => x.matmul(&p.dequantize(x.device())?.t()?)?,
            Weight::Gguf(l) => l.forward(x)?,
            Weight::GgufFused(p) => p.forward_joined(x)?,
        };
        y.broadcast_add(&self.b)
    }
}

struct Norm {
    w: Tensor,
    b: Tensor,
    eps: f32,
}

impl Norm {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.w, &self.b, self.eps)
    }
}

struct Layer {
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    up: Dense,
    down: Dense,
    out_norm: Norm,
}

/// MPNet's relative position bias, by distance: for each head, the bias of
/// every key-minus-query distance from `-(span - 1)` to `span - 1`.
struct RelativeBias {
    /// (heads, 2·span − 1), row-major.
    by_distance: Vec<f32>,
    span: usize,
    heads: usize,
}

impl RelativeBias {
    /// From the learned (buckets, heads) table, for sequences of up to
    /// `span` tokens.
    fn new(table: &Tensor, buckets: RelativeBuckets, span: usize) -> Result<Self> {
        let table: Vec<Vec<f32>> = table.to_vec2()?;
        let heads = table.first().map_or(0, Vec::len);
        let width = 2 * span - 1;
        let mut by_distance = vec![0f32; heads * width];
        for (i, d) in (-(span as i64 - 1)..span as i64).enumerate() {
            let row = &table[buckets.bucket(d)];
            for (h, &v) in row.iter().enumerate() {
                by_distance[h * width + i] = v;
            }
        }
        Ok(Self {
            by_distance,
            span,
            heads,
        })
    }

    /// The (heads, n, n) bias added to one sequence's attention scores.
    fn for_length(&self, n: usize, device: &Device) -> Result<Tensor> {
        let width = 2 * self.span - 1;
        let mut out = Vec::with_capacity(self.heads * n * n);
        for h in 0..self.heads {
            let row = &self.by_distance[h * width..(h + 1) * width];
            for q in 0..n {
                // Distance k − q for k in 0..n starts at −q: index span−1−q.
                let start = self.span - 1 - q;
                out.extend_from_slice(&row[start..start + n]);
            }
        }
        Tensor::from_vec(out, (self.heads, n, n), device)
    }
}

enum Output {
    Pooled {
        pooling: Pooling,
        normalize: bool,
    },
    /// The first token through `dense`, tanh, then `out`: one logit per
    /// label (BERT's pooler and classifier, RoBERTa's classification head).
    Classifier {
        dense: Dense,
        out: Dense,
    },
}

pub struct EncoderBackend {
    word: Tensor,
    position: Tensor,
    position_offset: usize,
    /// The segment table when it has rows for more than one segment; its
    /// one row added to every token otherwise.
    token_type: TokenTypes,
    embed_norm: Norm,
    layers: Vec<Layer>,
    relative: Option<RelativeBias>,
    output: Output,
    heads: usize,
    head_dim: usize,
    hidden: usize,
    context: usize,
    device: Device,
    /// Forward passes run inside this pool (see `DecoderBackend::pool`).
    pool: rayon::ThreadPool,
}

enum TokenTypes {
    None,
    Single(Tensor),
    Table(Tensor),
}

/// Where an encoder's tensors come from, each asked for by its GGUF name.
enum Tensors<'a> {
    Hf {
        vb: VarBuilder<'a>,
        /// GGUF name → (checkpoint name, shape).
        names: HashMap<String, (String, Vec<usize>)>,
    },
    Gguf(GgufTensors<'a>),
}

impl Tensors<'_> {
    fn has(&self, name: &str) -> bool {
        match self {
            Tensors::Hf { names, .. } => names.contains_key(name),
            Tensors::Gguf(t) => t.has(name),
        }
    }

    /// A tensor's dims, rows first.
    fn dims(&self, name: &str) -> Result<Vec<usize>> {
        match self {
            Tensors::Hf { names, .. } => match names.get(name) {
                Some((_, shape)) => Ok(shape.clone()),
                None => candle_core::bail!("tensor `{name}` is missing"),
            },
            Tensors::Gguf(t) => Ok(t.get(name)?.dims),
        }
    }

    /// Checked against `dims` here, at load: a kernel handed a wrong shape
    /// asserts, on the first request.
    fn check(&self, name: &str, dims: &[usize]) -> Result<()> {
        let got = self.dims(name)?;
        if got != dims {
            candle_core::bail!(
                "tensor `{name}` has shape {got:?} where the model implies {dims:?}"
            );
        }
        Ok(())
    }

    /// As f32 values on `device`, of the given dims.
    fn float(&self, name: &str, dims: &[usize], device: &Device) -> Result<Tensor> {
        self.check(name, dims)?;
        match self {
            Tensors::Hf { vb, names } => vb.get(dims, &names[name].0),
            Tensors::Gguf(t) => t.get(name)?.dequantize(device),
        }
    }

    /// A table of `width` columns and however many rows it has.
    fn table(&self, name: &str, width: usize, device: &Device) -> Result<Tensor> {
        let rows = self.dims(name)?.first().copied().unwrap_or(0);
        self.float(name, &[rows, width], device)
    }

    /// `{stem}.weight` (out, in) and `{stem}.bias`.
    fn dense(&self, stem: &str, (out, inp): (usize, usize), device: &Device) -> Result<Dense> {
        let name = format!("{stem}.weight");
        let b = self.float(&format!("{stem}.bias"), &[out], device)?;
        let w = match self {
            Tensors::Gguf(t) => {
                self.check(&name, &[out, inp])?;
                let w = t.get(&name)?;
                if w.dtype.block_size() == 1 {
                    Weight::Transposed(w.dequantize(device)?.t()?.contiguous()?)
                } else {
                    Weight::Gguf(Linear::new(w, device)?)
                }
            }
            Tensors::Hf { .. } => {
                Weight::Transposed(self.float(&name, &[out, inp], device)?.t()?.contiguous()?)
            }
        };
        Ok(Dense { w, b })
    }

    fn norm(&self, stem: &str, size: usize, eps: f64, device: &Device) -> Result<Norm> {
        Ok(Norm {
            w: self.float(&format!("{stem}.weight"), &[size], device)?,
            b: self.float(&format!("{stem}.bias"), &[size], device)?,
            eps: eps as f32,
        })
    }
}

impl EncoderBackend {
    /// A Hugging Face directory's encoder, as [`Encoder::from_hf`] describes it.
    pub fn load(hf: &HfModel, encoder: &Encoder, device: &Device) -> Result<Self> {
        let classifier = matches!(encoder.output, EncoderOutput::Classifier(_));
        let mut names = HashMap::new();
        // Tensors the served model does not read (a pre-training head) are
        // passed over; a missing one it reads fails below, by its name.
        for t in &hf.tensors {
            if let Ok(Some(g)) = gguf_tensor_name(encoder.family, &t.name, classifier) {
                names.insert(g, (t.name.clone(), t.shape.clone()));
            }
        }
        // SAFETY: the weight files are memory-mapped read-only; modelship does
        // not modify model files while serving them.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&hf.weight_files, DType::F32, device)? };
        Self::build(encoder, &Tensors::Hf { vb, names }, device)
    }

    /// A GGUF encoder as modelship (or, for BERT, llama.cpp's converter)
    /// writes it: float tensors become f32 matrices, block-quantized ones
    /// stay quantized and run through the quantized kernels.
    pub fn from_gguf(gguf: &GgufFile, encoder: &Encoder, device: &Device) -> Result<Self> {
        Self::build(encoder, &Tensors::Gguf(GgufTensors::open(gguf)?), device)
    }

    fn build(e: &Encoder, t: &Tensors, device: &Device) -> Result<Self> {
        let h = e.hidden;
        let word = t.table("token_embd.weight", h, device)?;
        let position = t.float("position_embd.weight", &[e.positions, h], device)?;
        let token_type = match e.token_types {
            0 if !t.has("token_types.weight") => TokenTypes::None,
            0 | 1 => TokenTypes::Single(t.table("token_types.weight", h, device)?.get(0)?),
            n => TokenTypes::Table(t.float("token_types.weight", &[n, h], device)?),
        };
        let embed_norm = t.norm("token_embd_norm", h, e.eps, device)?;
        let relative = match e.relative {
            None => None,
            Some(r) => {
                let table = t.float("rel_attn_bias.weight", &[r.buckets, e.heads], device)?;
                Some(RelativeBias::new(&table, r, e.context())?)
            }
        };
        // Not reserved from the model's count: a missing layer fails below.
        let mut layers = Vec::new();
        for i in 0..e.layers {
            let dense = |name: &str, dims| t.dense(&format!("blk.{i}.{name}"), dims, device);
            let norm = |name: &str| t.norm(&format!("blk.{i}.{name}"), h, e.eps, device);
            // Narrower than the width when heads were pruned.
            let heads = (e.heads * e.head_dim, h);
            layers.push(Layer {
                qkv: Dense::fused(vec![
                    dense("attn_q", heads)?,
                    dense("attn_k", heads)?,
                    dense("attn_v", heads)?,
                ])?,
                attn_out: dense("attn_output", (h, heads.0))?,
                attn_norm: norm("attn_output_norm")?,
                up: dense("ffn_up", (e.feed_forward, h))?,
                down: dense("ffn_down", (h, e.feed_forward))?,
                out_norm: norm("layer_output_norm")?,
            });
        }
        let output = match &e.output {
            EncoderOutput::Pooled { pooling, normalize } => Output::Pooled {
                pooling: *pooling,
                normalize: *normalize,
            },
            EncoderOutput::Classifier(head) => Output::Classifier {
                dense: t.dense("cls", (h, h), device)?,
                out: t.dense("cls.output", (head.labels.len(), h), device)?,
            },
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("modelship-encoder-{i}"))
            .build()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Self {
            word,
            position,
            position_offset: e.position_offset,
            token_type,
            embed_norm,
            layers,
            relative,
            output,
            heads: e.heads,
            head_dim: e.head_dim,
            hidden: h,
            context: e.context(),
            device: device.clone(),
            pool,
        })
    }

    /// Rows of the token table: ids past them have no vector.
    pub fn token_rows(&self) -> usize {
        self.word.dim(0).unwrap_or(0)
    }

    /// The width of one output: the embedding size, or the label count.
    pub fn dimensions(&self) -> usize {
        match &self.output {
            Output::Pooled { .. } => self.hidden,
            Output::Classifier { out, .. } => out.b.dims1().unwrap_or(0),
        }
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// [`EncodeBackend::encode`] with `probe` called at each layer's FFN
    /// activations and attention heads.
    pub fn encode_probed(
        &self,
        batch: &[&Sequence],
        probe: &mut dyn Probe,
    ) -> std::result::Result<Vec<Vec<f32>>, BackendError> {
        self.check_inputs(batch)?;
        self.pool
            .install(|| self.forward(batch, Some(probe)))
            .map_err(|e| BackendError(e.to_string()))
    }

    /// Inputs the tables can embed, refused before any work.
    fn check_inputs(&self, batch: &[&Sequence]) -> std::result::Result<(), BackendError> {
        let types = match &self.token_type {
            TokenTypes::Table(t) => t.dim(0).unwrap_or(0),
            _ => usize::MAX,
        };
        let vocab = self.word.dim(0).unwrap_or(0);
        for s in batch {
            if s.is_empty() || s.len() > self.context || s.type_ids.len() != s.len() {
                return Err(BackendError(
                    "an input is empty, longer than the position table or its segments do not match its tokens".into(),
                ));
            }
            if s.ids.iter().any(|&id| id as usize >= vocab)
                || s.type_ids.iter().any(|&t| t as usize >= types)
            {
                return Err(BackendError(
                    "a token or segment id is outside the model's tables".into(),
                ));
            }
        }
        Ok(())
    }

    fn forward(
        &self,
        batch: &[&Sequence],
        mut probe: Option<&mut dyn Probe>,
    ) -> Result<Vec<Vec<f32>>> {
        let lengths: Vec<usize> = batch.iter().map(|s| s.len()).collect();
        let ids: Vec<u32> = batch.iter().flat_map(|s| s.ids.iter().copied()).collect();
        let offset = self.position_offset as u32;
        let positions: Vec<u32> = lengths
            .iter()
            .flat_map(|&n| offset..offset + n as u32)
            .collect();
        let total = ids.len();
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let x = (self.word.index_select(&ids, 0)? + self.position.index_select(&positions, 0)?)?;
        let x = match &self.token_type {
            TokenTypes::None => x,
            TokenTypes::Single(row) => x.broadcast_add(row)?,
            TokenTypes::Table(table) => {
                let types: Vec<u32> = batch
                    .iter()
                    .flat_map(|s| s.type_ids.iter().copied())
                    .collect();
                let types = Tensor::from_vec(types, total, &self.device)?;
                (x + table.index_select(&types, 0)?)?
            }
        };
        let mut x = self.embed_norm.forward(&x)?; // (tokens, hidden)
        for (l, layer) in self.layers.iter().enumerate() {
            let mut a = self.attention(layer, &x, &lengths)?;
            if let Some(p) = probe.as_deref_mut() {
                a = p.heads(l, a)?;
            }
            let a = layer.attn_out.forward(&a)?;
            x = layer.attn_norm.forward(&(a + &x)?)?;
            let mut f = gelu(&layer.up.forward(&x)?)?;
            if let Some(p) = probe.as_deref_mut() {
                f = p.ffn(l, f)?;
            }
            let f = layer.down.forward(&f)?;
            x = layer.out_norm.forward(&(f + &x)?)?;
        }
        match &self.output {
            Output::Pooled { pooling, normalize } => {
                let mut out = Vec::with_capacity(batch.len());
                let mut start = 0;
                for &n in &lengths {
                    let v = pool(&x.narrow(0, start, n)?, *pooling)?;
                    let v = if *normalize {
                        let norm = v.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?.max(1e-12);
                        (v / norm as f64)?
                    } else {
                        v
                    };
                    out.push(v.to_vec1()?);
                    start += n;
                }
                Ok(out)
            }
            Output::Classifier { dense, out } => {
                let mut firsts = Vec::with_capacity(batch.len());
                let mut start = 0u32;
                for &n in &lengths {
                    firsts.push(start);
                    start += n as u32;
                }
                let firsts = Tensor::from_vec(firsts, batch.len(), &self.device)?;
                let cls = x.index_select(&firsts, 0)?; // (batch, hidden)
                out.forward(&dense.forward(&cls)?.tanh()?)?.to_vec2()
            }
        }
    }

    /// Self-attention of each sequence over its own tokens only, with its
    /// relative position bias where the model has one: the heads' outputs,
    /// before the output projection.
    fn attention(&self, layer: &Layer, x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let d = self.head_dim;
        let h = self.heads * d;
        let qkv = layer.qkv.forward(x)?; // (tokens, 3 · heads · d)
        let scale = 1.0 / (d as f64).sqrt();
        let mut outs = Vec::with_capacity(lengths.len());
        let mut start = 0;
        for &n in lengths {
            let s = qkv.narrow(0, start, n)?;
            let split = |i: usize| -> Result<Tensor> {
                s.narrow(1, i * h, h)?
                    .reshape((n, self.heads, d))?
                    .transpose(0, 1)?
                    .contiguous()
            };
            let (q, k, v) = (split(0)?, split(1)?, split(2)?); // (heads, n, d)
            let mut scores = (q.matmul(&k.t()?)? * scale)?;
            // Rebuilt per layer, one sequence at a time: a copy of heads × n²
            // values (~1% of the scores' own product at 512 tokens), where
            // keeping every sequence's for the pass would hold them all.
            if let Some(r) = &self.relative {
                scores = (scores + r.for_length(n, &self.device)?)?;
            }
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(0, 1)?.reshape((n, h))?;
            outs.push(ctx);
            start += n;
        }
        Tensor::cat(&outs, 0)
    }
}

/// GELU with the exact (erf) form these encoders use, over the pool's threads: candle's
/// version calls libm's scalar `erff` on one thread and was a fifth of the
/// encoder's time.
fn gelu(x: &Tensor) -> Result<Tensor> {
    use rayon::prelude::*;
    let mut data = x.flatten_all()?.to_vec1::<f32>()?;
    data.par_chunks_mut(4096).for_each(|chunk| {
        for v in chunk {
            *v *= 0.5 * (1.0 + erf(*v * std::f32::consts::FRAC_1_SQRT_2));
        }
    });
    Tensor::from_vec(data, x.shape(), x.device())
}

/// erf by Abramowitz & Stegun 7.1.28, `1 - (1 + a1·x + … + a6·x⁶)^-16`:
/// absolute error below 3e-7, and no `exp` call, so the loop above
/// vectorizes.
#[allow(clippy::excessive_precision)] // the coefficients as published
#[inline]
fn erf(x: f32) -> f32 {
    let z = x.abs();
    let p = 1.0
        + z * (0.070_523_078_4
            + z * (0.042_282_012_3
                + z * (0.009_270_527_2
                    + z * (0.000_152_014_3 + z * (0.000_276_567_2 + z * 0.000_043_063_8)))));
    let p2 = p * p;
    let p4 = p2 * p2;
    let p8 = p4 * p4;
    (1.0 - 1.0 / (p8 * p8)).copysign(x)
}

/// One sequence's token vectors (n, hidden) to one vector.
fn pool(tokens: &Tensor, pooling: Pooling) -> Result<Tensor> {
    let n = tokens.dim(0)?;
    match pooling {
        Pooling::Cls => tokens.get(0),
        Pooling::Mean => tokens.mean(0),
        Pooling::MeanSqrtLen => tokens.sum(0)? / (n as f64).sqrt(),
        Pooling::Max => tokens.max(0),
        Pooling::LastToken => tokens.get(n - 1),
    }
}

impl EncodeBackend for EncoderBackend {
    fn encode(&mut self, batch: &[&Sequence]) -> std::result::Result<Vec<Vec<f32>>, BackendError> {
        self.check_inputs(batch)?;
        self.pool
            .install(|| self.forward(batch, None))
            .map_err(|e| BackendError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bias by distance is laid out so that each query's row of keys
    /// reads the bucket of its own distances.
    #[test]
    fn relative_bias_reads_each_pairs_bucket() {
        let buckets = RelativeBuckets {
            buckets: 32,
            max_distance: 128,
        };
        let heads = 2;
        // Bucket b of head h has bias 100·h + b.
        let table: Vec<f32> = (0..32)
            .flat_map(|b| (0..heads).map(move |h| (100 * h + b) as f32))
            .collect();
        let table = Tensor::from_vec(table, (32, heads), &Device::Cpu).unwrap();
        let bias = RelativeBias::new(&table, buckets, 300).unwrap();
        let n = 260;
        let got: Vec<Vec<Vec<f32>>> = bias.for_length(n, &Device::Cpu).unwrap().to_vec3().unwrap();
        for (h, head) in got.iter().enumerate() {
            for q in [0, 1, 7, 130, n - 1] {
                for k in [0, 3, 8, 129, n - 1] {
                    let want = (100 * h + buckets.bucket(k as i64 - q as i64)) as f32;
                    assert_eq!(head[q][k], want, "head {h}, query {q}, key {k}");
                }
            }
        }
    }

    #[test]
    fn erf_matches_known_values() {
        // erf(x) to 9 digits (Abramowitz & Stegun, table 7.1).
        for (x, want) in [
            (0.0, 0.0),
            (0.1, 0.112_462_916),
            (0.5, 0.520_499_878),
            (1.0, 0.842_700_793),
            (2.0, 0.995_322_265),
            (3.5, 0.999_999_257),
        ] {
            assert!((erf(x) as f64 - want).abs() < 5e-7, "erf({x}) = {}", erf(x));
            assert!((erf(-x) as f64 + want).abs() < 5e-7);
        }
    }
}
