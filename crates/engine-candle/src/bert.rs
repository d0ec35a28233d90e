//! BERT-family sentence encoders, with the pooling and normalization that
//! sentence-transformers' modules ask for.
//!
//! The batch is packed, not padded: the tokens of every sequence are stacked
//! into one (tokens, hidden) matrix, so each linear layer is one large matrix
//! product and no work is spent on padding; only attention runs per sequence.

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use modelship_engine::{BackendError, EmbedBackend};
use modelship_model::{GgufFile, HfModel, NORMALIZE_KEY, POOLING_KEY, Pooling};

use crate::gguf_md::{md_f32, md_u32};
use crate::linear::{Linear, Projections};
use crate::weight_bytes::{GgufTensors, StoredTensor};
use serde::Deserialize;

type Result<T> = candle_core::Result<T>;

/// The config.json fields the encoder needs.
#[derive(Debug, Clone, Deserialize)]
struct BertConfig {
    vocab_size: usize,
    #[serde(default = "default_types")]
    type_vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    max_position_embeddings: usize,
    #[serde(default = "default_eps")]
    layer_norm_eps: f64,
    #[serde(default = "default_act")]
    hidden_act: String,
    #[serde(default)]
    position_embedding_type: Option<String>,
}

fn default_types() -> usize {
    2
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

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
    fn load(vb: &VarBuilder, name: &str, inp: usize, out: usize) -> Result<Self> {
        Ok(Self {
            w: Weight::Transposed(
                vb.get((out, inp), &format!("{name}.weight"))?
                    .t()?
                    .contiguous()?,
            ),
            b: vb.get(out, &format!("{name}.bias"))?,
        })
    }

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
        let y = match &self.w {
            Weight::Transposed(w) => x.matmul(w)?,
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
    fn load(vb: &VarBuilder, name: &str, size: usize, eps: f64) -> Result<Self> {
        Ok(Self {
            w: vb.get(size, &format!("{name}.weight"))?,
            b: vb.get(size, &format!("{name}.bias"))?,
            eps: eps as f32,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::layer_norm(x, &self.w, &self.b, self.eps)
    }
}

/// The embedding tables and their norm.
struct Embeddings {
    word: Tensor,
    position: Tensor,
    /// The type-0 row: every input is a single segment.
    token_type: Tensor,
    norm: Norm,
}

struct Layer {
    qkv: Dense,
    attn_out: Dense,
    attn_norm: Norm,
    up: Dense,
    down: Dense,
    out_norm: Norm,
}

pub struct BertBackend {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embed_norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    hidden: usize,
    pooling: Pooling,
    normalize: bool,
    device: Device,
    /// Forward passes run inside this pool (see `DecoderBackend::pool`).
    pool: rayon::ThreadPool,
}

impl BertBackend {
    pub fn load(hf: &HfModel, device: &Device) -> Result<Self> {
        let cfg: BertConfig = serde_json::from_value(hf.config.clone())
            .map_err(|e| candle_core::Error::Msg(format!("config.json: {e}")))?;
        if cfg.hidden_act != "gelu" {
            candle_core::bail!("hidden_act `{}` is not supported (gelu)", cfg.hidden_act);
        }
        if cfg
            .position_embedding_type
            .as_deref()
            .is_some_and(|p| p != "absolute")
        {
            candle_core::bail!("only absolute position embeddings are supported");
        }
        if cfg.num_attention_heads == 0 || !cfg.hidden_size.is_multiple_of(cfg.num_attention_heads)
        {
            candle_core::bail!("hidden_size is not a multiple of num_attention_heads");
        }
        // SAFETY: the weight files are memory-mapped read-only; modelship does
        // not modify model files while serving them.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&hf.weight_files, DType::F32, device)? };
        let vb = if vb.contains_tensor("bert.embeddings.word_embeddings.weight") {
            vb.pp("bert")
        } else {
            vb
        };
        let h = cfg.hidden_size;
        let e = vb.pp("embeddings");
        let word = e.get((cfg.vocab_size, h), "word_embeddings.weight")?;
        let position = e.get(
            (cfg.max_position_embeddings, h),
            "position_embeddings.weight",
        )?;
        let token_type = e
            .get((cfg.type_vocab_size, h), "token_type_embeddings.weight")?
            .get(0)?;
        let embed_norm = Norm::load(&e, "LayerNorm", h, cfg.layer_norm_eps)?;
        // Not reserved from the config's count: a missing layer fails below.
        let mut layers = Vec::new();
        for i in 0..cfg.num_hidden_layers {
            let l = vb.pp(format!("encoder.layer.{i}"));
            let qkv = ["query", "key", "value"]
                .iter()
                .map(|n| Dense::load(&l, &format!("attention.self.{n}"), h, h))
                .collect::<Result<Vec<_>>>()?;
            layers.push(Layer {
                qkv: Dense::fused(qkv)?,
                attn_out: Dense::load(&l, "attention.output.dense", h, h)?,
                attn_norm: Norm::load(&l, "attention.output.LayerNorm", h, cfg.layer_norm_eps)?,
                up: Dense::load(&l, "intermediate.dense", h, cfg.intermediate_size)?,
                down: Dense::load(&l, "output.dense", cfg.intermediate_size, h)?,
                out_norm: Norm::load(&l, "output.LayerNorm", h, cfg.layer_norm_eps)?,
            });
        }
        Self::assemble(
            Embeddings {
                word,
                position,
                token_type,
                norm: embed_norm,
            },
            layers,
            cfg.num_attention_heads,
            (hf.pooling, hf.normalize),
            device,
        )
    }

    /// A BERT GGUF as modelship (or llama.cpp's converter) writes it: float
    /// tensors become f32 matrices, block-quantized ones stay quantized and
    /// run through the quantized kernels.
    pub fn from_gguf(gguf: &GgufFile, device: &Device) -> Result<Self> {
        let ct = &gguf.content;
        let tensors = GgufTensors::open(gguf)?;
        let layers_n = md_u32(ct, "bert.block_count")?;
        let heads = md_u32(ct, "bert.attention.head_count")?;
        let hidden = md_u32(ct, "bert.embedding_length")?;
        if heads == 0 || !hidden.is_multiple_of(heads) {
            candle_core::bail!(
                "bert.embedding_length is not a multiple of bert.attention.head_count"
            );
        }
        let eps = md_f32(ct, "bert.attention.layer_norm_epsilon", 1e-12)? as f64;
        let pooling = match ct.metadata.get(POOLING_KEY) {
            Some(v) => serde_json::from_value(serde_json::Value::String(v.to_string()?.clone()))
                .map_err(|e| candle_core::Error::Msg(format!("{POOLING_KEY}: {e}")))?,
            None => match ct.metadata.get("bert.pooling_type").map(|v| v.to_u32()) {
                Some(Ok(2)) => Pooling::Cls,
                Some(Ok(3)) => Pooling::LastToken,
                _ => Pooling::Mean,
            },
        };
        // llama.cpp's server normalizes embeddings unless told otherwise.
        let normalize = match ct.metadata.get(NORMALIZE_KEY) {
            Some(v) => v.to_bool()?,
            None => true,
        };
        let ff = md_u32(ct, "bert.feed_forward_length")?;
        // Every tensor's shape is checked against the metadata here, at
        // load: a kernel handed a wrong one asserts, on the first request.
        let q = |name: &str, dims: &[usize]| -> Result<StoredTensor> {
            let t = tensors.get(name)?;
            if t.dims != dims {
                candle_core::bail!(
                    "tensor `{name}` has shape {:?} where the metadata implies {dims:?}",
                    t.dims
                );
            }
            Ok(t)
        };
        // Tables have as many rows as they have (vocabulary, positions).
        let table = |name: &str| -> Result<Tensor> {
            let rows = tensors.get(name)?.dims.first().copied().unwrap_or(0);
            q(name, &[rows, hidden])?.dequantize(device)
        };
        let vector = |name: &str, len: usize| q(name, &[len])?.dequantize(device);
        let word = table("token_embd.weight")?;
        let position = table("position_embd.weight")?;
        let token_type = table("token_types.weight")?.get(0)?;
        let norm = Norm {
            w: vector("token_embd_norm.weight", hidden)?,
            b: vector("token_embd_norm.bias", hidden)?,
            eps: eps as f32,
        };
        // Not reserved from the metadata's count: a missing layer fails below.
        let mut layers = Vec::new();
        for i in 0..layers_n {
            let dense = |name: &str, (rows, cols): (usize, usize)| -> Result<Dense> {
                let w = q(&format!("blk.{i}.{name}.weight"), &[rows, cols])?;
                let b = vector(&format!("blk.{i}.{name}.bias"), rows)?;
                let w = if w.dtype.block_size() == 1 {
                    Weight::Transposed(w.dequantize(device)?.t()?.contiguous()?)
                } else {
                    Weight::Gguf(Linear::new(w, device)?)
                };
                Ok(Dense { w, b })
            };
            let square = (hidden, hidden);
            let qkv = Dense::fused(vec![
                dense("attn_q", square)?,
                dense("attn_k", square)?,
                dense("attn_v", square)?,
            ])?;
            let attn_out = dense("attn_output", square)?;
            let up = dense("ffn_up", (ff, hidden))?;
            let down = dense("ffn_down", (hidden, ff))?;
            let norm = |name: &str| -> Result<Norm> {
                Ok(Norm {
                    w: vector(&format!("blk.{i}.{name}.weight"), hidden)?,
                    b: vector(&format!("blk.{i}.{name}.bias"), hidden)?,
                    eps: eps as f32,
                })
            };
            layers.push(Layer {
                qkv,
                attn_out,
                attn_norm: norm("attn_output_norm")?,
                up,
                down,
                out_norm: norm("layer_output_norm")?,
            });
        }
        Self::assemble(
            Embeddings {
                word,
                position,
                token_type,
                norm,
            },
            layers,
            heads,
            (pooling, normalize),
            device,
        )
    }

    fn assemble(
        e: Embeddings,
        layers: Vec<Layer>,
        heads: usize,
        (pooling, normalize): (Pooling, bool),
        device: &Device,
    ) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .thread_name(|i| format!("modelship-bert-{i}"))
            .build()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok(Self {
            hidden: e.word.dim(1)?,
            word: e.word,
            position: e.position,
            token_type: e.token_type,
            embed_norm: e.norm,
            layers,
            heads,
            pooling,
            normalize,
            device: device.clone(),
            pool,
        })
    }

    pub fn dimensions(&self) -> usize {
        self.hidden
    }

    fn forward(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        let lengths: Vec<usize> = batch.iter().map(|t| t.len()).collect();
        let ids: Vec<u32> = batch.iter().flat_map(|t| t.iter().copied()).collect();
        let positions: Vec<u32> = lengths.iter().flat_map(|&n| 0..n as u32).collect();
        let total = ids.len();
        let ids = Tensor::from_vec(ids, total, &self.device)?;
        let positions = Tensor::from_vec(positions, total, &self.device)?;
        let x = (self.word.index_select(&ids, 0)? + self.position.index_select(&positions, 0)?)?
            .broadcast_add(&self.token_type)?;
        let mut x = self.embed_norm.forward(&x)?; // (tokens, hidden)
        for layer in &self.layers {
            let a = self.attention(layer, &x, &lengths)?;
            x = layer.attn_norm.forward(&(a + &x)?)?;
            let f = layer.down.forward(&gelu(&layer.up.forward(&x)?)?)?;
            x = layer.out_norm.forward(&(f + &x)?)?;
        }
        let mut out = Vec::with_capacity(batch.len());
        let mut start = 0;
        for &n in &lengths {
            let v = pool(&x.narrow(0, start, n)?, self.pooling)?;
            let v = if self.normalize {
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

    /// Self-attention of each sequence over its own tokens only.
    fn attention(&self, layer: &Layer, x: &Tensor, lengths: &[usize]) -> Result<Tensor> {
        let h = self.hidden;
        let d = h / self.heads;
        let qkv = layer.qkv.forward(x)?; // (tokens, 3h)
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
            let scores = (q.matmul(&k.t()?)? * scale)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let ctx = probs.matmul(&v)?.transpose(0, 1)?.reshape((n, h))?;
            outs.push(ctx);
            start += n;
        }
        let ctx = Tensor::cat(&outs, 0)?;
        layer.attn_out.forward(&ctx)
    }
}

/// GELU with the exact (erf) form BERT uses, over the pool's threads: candle's
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

impl EmbedBackend for BertBackend {
    fn embed(&mut self, batch: &[&[u32]]) -> std::result::Result<Vec<Vec<f32>>, BackendError> {
        if batch
            .iter()
            .any(|t| t.is_empty() || t.len() > self.position.dim(0).unwrap_or(0))
        {
            return Err(BackendError(
                "an input is empty or longer than the position table".into(),
            ));
        }
        self.pool
            .install(|| self.forward(batch))
            .map_err(|e| BackendError(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::erf;

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
