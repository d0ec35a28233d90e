//! candle implementations of modelship's inference backends: BERT-family
//! encoders from HF directories ([`BertBackend`]) and decoders (llama,
//! Mistral, Qwen2/3, Gemma 2/3, Phi-3) from GGUF files ([`DecoderBackend`]), and [`load`], which turns a model path
//! into a running [`modelship_engine::Engine`].

mod attention;
mod bert;
mod decoder;
mod device;
mod gated;
mod gguf_md;
mod linear;
mod load;
mod quant_matmul;
mod weight_bytes;

pub use bert::BertBackend;
pub use candle_core::Device;
pub use decoder::{DecoderBackend, window_cache_positions};
pub use device::{DeviceError, parse_device};
pub use linear::{candle_packed_bytes, reads_in_place};
pub use load::{LoadError, LoadOptions, OpenModel, check_gguf_weights, load, open};
