//! Quantization and pruning of model weights: a Hugging Face BERT directory or
//! a GGUF file in, a GGUF file with llama.cpp's tensor names, metadata and
//! per-tensor type policy out, streamed tensor by tensor.
//!
//! Owns tensor encodings and the GGUF writer; runs no model (quality is
//! measured by `modelship-optimize`). No network, no async.

pub mod codebook;
pub mod encode;
mod encoder;
mod error;
pub mod gguf_writer;
pub mod policy;
pub mod prune;
mod quantize;
mod source;
pub mod surgery;

pub use error::QuantError;
pub use policy::{Decision, ModelShape, Rule};
pub use quantize::{
    QuantizeOptions, Summary, TensorReport, planned_bytes, planned_tensors, quantize,
    quantize_verified,
};
pub use source::{Source, SourceTensor};
