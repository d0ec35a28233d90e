//! candle implementations of modelship's inference backends: encoders
//! (BERT, RoBERTa, XLM-RoBERTa, MPNet; embeddings, rerankers, classifiers)
//! from HF directories and GGUF files ([`EncoderBackend`]) and decoders (llama,
//! Mistral, Qwen2/3, Gemma 2/3, Phi-3) from GGUF files ([`DecoderBackend`]), and [`load`], which turns a model path
//! into a running [`modelship_engine::Engine`].

mod attention;
mod decoder;
mod device;
mod encoder;
mod gated;
mod linear;
mod load;
mod probe;
mod quant_matmul;
mod weight_bytes;

pub use candle_core::Device;
pub use decoder::{DecoderBackend, window_cache_positions};
pub use device::{DeviceError, parse_device};
pub use encoder::EncoderBackend;
pub use linear::{candle_packed_bytes, reads_in_place};
pub use load::{LoadError, LoadOptions, OpenModel, check_gguf_weights, load, open};
pub use probe::{Activity, Mask, Probe};
