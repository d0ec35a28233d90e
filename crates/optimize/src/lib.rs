//! Quality of compressed models: evaluation against the original (perplexity,
//! KL divergence and top-1 agreement for generation; cosine similarity and
//! rank agreement for embeddings), the spec's quality gate, and the optimize
//! stage that tries precisions and keeps the smallest that passes.
//!
//! Runs models through `modelship-engine-candle`; writes them through
//! `modelship-quant`. No network, no async.

mod corpus;
mod eval;
mod gate;
pub mod importance;
pub mod metrics;
mod optimize;

pub use corpus::Corpus;
pub use eval::{
    Baseline, EmbeddingsReport, EvalError, EvalOptions, GenerateReport, Report, evaluate,
};
pub use gate::violations;
pub use optimize::{Candidate, OptimizeError, Outcome, optimize};
