//! The contract between the schedulers and a model implementation. Backends do
//! blocking compute and are driven from one dedicated thread each.

/// A failure inside a backend (a tensor op, a shape): reported as a 500.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

/// One input of an encoder: its token ids and each token's segment (0, or 1
/// in the second text of a pair, where the tokenizer says so).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub type_ids: Vec<u32>,
}

impl Sequence {
    /// One text: every token in segment 0.
    pub fn single(ids: Vec<u32>) -> Self {
        let type_ids = vec![0; ids.len()];
        Self { ids, type_ids }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// Encoders: token sequences in, one vector per sequence out — a pooled
/// embedding, or a classification head's logits.
pub trait EncodeBackend: Send + 'static {
    /// The output of each sequence of a batch of possibly different lengths.
    fn encode(&mut self, batch: &[&Sequence]) -> Result<Vec<Vec<f32>>, BackendError>;
}

/// Autoregressive decoders: each sequence keeps its own KV cache.
pub trait GenerateBackend: Send + 'static {
    type Sequence: Send;

    /// A fresh sequence with an empty cache.
    fn new_sequence(&self) -> Self::Sequence;

    /// Appends `tokens` to the sequence at its next positions and returns the
    /// logits for the token after the last one.
    fn forward(&self, seq: &mut Self::Sequence, tokens: &[u32]) -> Result<Vec<f32>, BackendError>;

    /// Appends `tokens` and returns the logits after each of them (a
    /// prompt's own log-probabilities). The default runs one token at a time.
    fn forward_all(
        &self,
        seq: &mut Self::Sequence,
        tokens: &[u32],
    ) -> Result<Vec<Vec<f32>>, BackendError> {
        tokens
            .iter()
            .map(|&t| self.forward(seq, std::slice::from_ref(&t)))
            .collect()
    }

    /// An independent copy of `seq`, cache included: samples of one prompt
    /// share its prefill.
    fn fork(&self, seq: &Self::Sequence) -> Result<Self::Sequence, BackendError>;

    /// `forward` for several sequences at once (prompts and decode steps
    /// alike); backends that can pack them into one pass override this.
    fn forward_batch(
        &self,
        batch: &mut [(&mut Self::Sequence, &[u32])],
    ) -> Result<Vec<Vec<f32>>, BackendError> {
        batch
            .iter_mut()
            .map(|(seq, tokens)| self.forward(seq, tokens))
            .collect()
    }
}
