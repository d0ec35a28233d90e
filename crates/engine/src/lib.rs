//! Inference: the contract a backend implements ([`EmbedBackend`],
//! [`GenerateBackend`]), the schedulers that drive it on their own threads, and
//! the [`Engine`] façade a server talks to.
//!
//! Batching and queueing are plain state machines ([`batcher::BatchQueue`],
//! [`stop::StopMatcher`], [`sampler::Sampler`], [`tools::ToolParser`]) and
//! plain functions over a step's logits ([`logits`]: log-probabilities,
//! penalties, biases) driven by small actor loops, so they are tested
//! without threads or time; grammars (JSON schemas, demanded tool calls)
//! are llguidance's. No HTTP here; the only async piece is tokio's channels.

mod backend;
pub mod batcher;
mod constraint;
mod embedder;
mod engine;
mod error;
mod generator;
pub mod logits;
mod request;
pub mod sampler;
pub mod stop;
mod thread;
pub mod tools;

pub use backend::{BackendError, EncodeBackend, GenerateBackend, Sequence};
pub use engine::{
    Embeddings, EncodeInput, EncodeInputs, EncodeOptions, EncoderServing, Engine, ModelCard,
    OutputFormat, Prompt, Scores,
};
pub use error::EngineError;
pub use generator::{FinishReason, GenerateParams, GenerationEvent, GenerationStream, Usage};
pub use logits::TokenLogprob;
pub use request::{GenerateRequest, MAX_N, MAX_TOP_LOGPROBS};
pub use sampler::SamplingParams;
pub use tools::{Function, ToolChoice, ToolOutput, ToolParser, Tools};
