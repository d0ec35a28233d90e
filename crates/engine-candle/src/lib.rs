//! candle implementations of modelship's inference backends: BERT-family
//! encoders from HF directories ([`BertBackend`]) and llama-family decoders
//! from GGUF files ([`LlamaBackend`]), and [`load`], which turns a model path
//! into a running [`modelship_engine::Engine`].

mod bert;
mod device;
mod gguf_md;
mod linear;
mod llama;
mod load;
mod quant_matmul;

pub use bert::BertBackend;
pub use candle_core::Device;
pub use device::{DeviceError, parse_device};
pub use llama::LlamaBackend;
pub use load::{LoadError, LoadOptions, OpenModel, load, open};
