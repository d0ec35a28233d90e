//! BERT-family sentence encoders: candle's `BertModel` plus the pooling and
//! normalization that sentence-transformers' modules ask for.

use candle_core::{D, DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use modelship_engine::{BackendError, EmbedBackend};
use modelship_model::{HfModel, Pooling};

pub struct BertBackend {
    model: BertModel,
    pooling: Pooling,
    normalize: bool,
    pad_id: u32,
    device: Device,
    dimensions: usize,
}

impl BertBackend {
    pub fn load(hf: &HfModel, device: &Device) -> Result<Self, candle_core::Error> {
        let config: Config = serde_json::from_value(hf.config.clone())
            .map_err(|e| candle_core::Error::Msg(format!("config.json: {e}")))?;
        // SAFETY: the weight files are memory-mapped read-only; modelship does
        // not modify model files while serving them.
        let vb =
            unsafe { VarBuilder::from_mmaped_safetensors(&hf.weight_files, DType::F32, device)? };
        let model = BertModel::load(vb, &config)?;
        Ok(Self {
            model,
            pooling: hf.pooling,
            normalize: hf.normalize,
            pad_id: config.pad_token_id as u32,
            device: device.clone(),
            dimensions: config.hidden_size,
        })
    }

    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    fn forward(&self, batch: &[&[u32]]) -> candle_core::Result<Vec<Vec<f32>>> {
        let n = batch.len();
        let len = batch.iter().map(|t| t.len()).max().unwrap_or(0);
        let mut ids = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for t in batch {
            ids.extend_from_slice(t);
            ids.extend(std::iter::repeat_n(self.pad_id, len - t.len()));
            mask.extend(std::iter::repeat_n(1f32, t.len()));
            mask.extend(std::iter::repeat_n(0f32, len - t.len()));
        }
        let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
        let types = ids.zeros_like()?;
        let hidden = self.model.forward(&ids, &types, Some(&mask))?; // (n, len, h)
        let lengths: Vec<usize> = batch.iter().map(|t| t.len()).collect();
        let pooled = pool(&hidden, &mask, &lengths, self.pooling)?;
        let pooled = if self.normalize {
            let norm = pooled
                .sqr()?
                .sum_keepdim(D::Minus1)?
                .sqrt()?
                .clamp(1e-12, f64::MAX)?;
            pooled.broadcast_div(&norm)?
        } else {
            pooled
        };
        pooled.to_dtype(DType::F32)?.to_vec2()
    }
}

fn pool(
    hidden: &Tensor,
    mask: &Tensor,
    lengths: &[usize],
    pooling: Pooling,
) -> candle_core::Result<Tensor> {
    let mask3 = mask.unsqueeze(2)?.to_dtype(hidden.dtype())?; // (n, len, 1)
    match pooling {
        Pooling::Cls => hidden.narrow(1, 0, 1)?.squeeze(1),
        Pooling::Mean | Pooling::MeanSqrtLen => {
            let sum = hidden.broadcast_mul(&mask3)?.sum(1)?; // (n, h)
            let count = mask3.sum(1)?; // (n, 1)
            let denom = if pooling == Pooling::Mean {
                count
            } else {
                count.sqrt()?
            };
            sum.broadcast_div(&denom)
        }
        Pooling::Max => {
            // Padded positions must never win: push them far down first.
            let penalty = ((mask3.ones_like()? - &mask3)? * -1e9)?;
            hidden.broadcast_add(&penalty)?.max(1)
        }
        Pooling::LastToken => {
            let rows = lengths
                .iter()
                .enumerate()
                .map(|(i, &l)| hidden.get(i)?.get(l - 1))
                .collect::<candle_core::Result<Vec<_>>>()?;
            Tensor::stack(&rows, 0)
        }
    }
}

impl EmbedBackend for BertBackend {
    fn embed(&mut self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>, BackendError> {
        self.forward(batch).map_err(|e| BackendError(e.to_string()))
    }
}
