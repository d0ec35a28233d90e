//! llama-family decoders from GGUF through candle's quantized llama: the
//! weights are shared, each sequence clones the layer handles and owns its KV
//! cache.

use candle_core::{Device, Tensor};
use candle_transformers::models::quantized_llama::{MAX_SEQ_LEN, ModelWeights};
use modelship_engine::{BackendError, GenerateBackend};

pub struct LlamaBackend {
    weights: ModelWeights,
    device: Device,
}

/// One sequence: its own view of the model (sharing weights) and KV cache.
pub struct LlamaSequence {
    model: ModelWeights,
    position: usize,
}

impl LlamaBackend {
    /// Longest sequence candle's rotary tables cover.
    pub const MAX_CONTEXT: usize = MAX_SEQ_LEN;

    pub fn new(weights: ModelWeights, device: Device) -> Self {
        Self { weights, device }
    }

    fn step(&self, seq: &mut LlamaSequence, tokens: &[u32]) -> candle_core::Result<Vec<f32>> {
        let input = Tensor::new(tokens, &self.device)?.unsqueeze(0)?;
        let logits = seq.model.forward(&input, seq.position)?;
        seq.position += tokens.len();
        logits.squeeze(0)?.to_dtype(candle_core::DType::F32)?.to_vec1()
    }
}

impl GenerateBackend for LlamaBackend {
    type Sequence = LlamaSequence;

    fn new_sequence(&self) -> LlamaSequence {
        let mut model = self.weights.clone();
        model.clear_kv_cache();
        LlamaSequence { model, position: 0 }
    }

    fn forward(&self, seq: &mut LlamaSequence, tokens: &[u32]) -> Result<Vec<f32>, BackendError> {
        if seq.position + tokens.len() > Self::MAX_CONTEXT {
            return Err(BackendError(format!(
                "sequence of {} tokens exceeds the backend's {} positions",
                seq.position + tokens.len(),
                Self::MAX_CONTEXT
            )));
        }
        self.step(seq, tokens).map_err(|e| BackendError(e.to_string()))
    }
}
