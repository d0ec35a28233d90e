//! Typed reads of GGUF metadata for the loaders.

use candle_core::Result;
use candle_core::quantized::gguf_file::Content;

/// A required unsigned integer.
pub(crate) fn md_u32(ct: &Content, key: &str) -> Result<usize> {
    match ct.metadata.get(key) {
        Some(v) => Ok(v.to_u32()? as usize),
        None => candle_core::bail!("GGUF metadata `{key}` is missing"),
    }
}

/// A float, `default` when absent (an error when present but not a float).
pub(crate) fn md_f32(ct: &Content, key: &str, default: f32) -> Result<f32> {
    match ct.metadata.get(key) {
        Some(v) => v.to_f32(),
        None => Ok(default),
    }
}
