//! Float rows to the bytes of one ggml tensor type.
//!
//! q8_0, q4_0 and q4_1 are ours and reproduce llama.cpp's reference quantizer
//! (and PyPI `gguf`'s `quants.py`) bit for bit: the same f32 operations in
//! the same order, no fused multiply-add, round-half-away-from-zero for q8_0
//! and truncation after `+ 8.5` / `+ 0.5` for the 4-bit types. The k-quants
//! and the q5 fallbacks use candle's ports of ggml's quantizers.

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Bytes `n` weights take in `dtype`.
pub fn encoded_len(dtype: GgmlDType, n: usize) -> usize {
    n / dtype.block_size() * dtype.type_size()
}

/// Whether rows of `cols` weights can be stored as `dtype`.
pub fn fits(dtype: GgmlDType, cols: usize) -> bool {
    cols.is_multiple_of(dtype.block_size())
}

/// Encodes `data`, rows of `cols` weights, as `dtype`, rows in parallel.
/// `cols` must be a multiple of the type's block size (see [`fits`]).
pub fn encode(dtype: GgmlDType, data: &[f32], cols: usize) -> candle_core::Result<Vec<u8>> {
    if cols == 0 || !fits(dtype, cols) || !data.len().is_multiple_of(cols) {
        candle_core::bail!(
            "{} rows of {cols} cannot be encoded as {dtype:?}",
            data.len()
        );
    }
    // About 64 KiB of input per task: enough work to amortize scheduling.
    let rows_per_task = (16_384 / cols).max(1);
    let row_bytes = encoded_len(dtype, cols);
    let mut out = vec![0u8; data.len() / cols * row_bytes];
    out.par_chunks_mut(rows_per_task * row_bytes)
        .zip(data.par_chunks(rows_per_task * cols))
        .try_for_each(|(dst, src)| encode_rows(dtype, src, dst))?;
    Ok(out)
}

fn encode_rows(dtype: GgmlDType, src: &[f32], dst: &mut [u8]) -> candle_core::Result<()> {
    match dtype {
        GgmlDType::F32 => {
            for (d, x) in dst.chunks_exact_mut(4).zip(src) {
                d.copy_from_slice(&x.to_le_bytes());
            }
        }
        GgmlDType::F16 => {
            for (d, x) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&f16::from_f32(*x).to_le_bytes());
            }
        }
        GgmlDType::BF16 => {
            for (d, x) in dst.chunks_exact_mut(2).zip(src) {
                d.copy_from_slice(&bf16::from_f32(*x).to_le_bytes());
            }
        }
        GgmlDType::Q8_0 => blocks(src, dst, 34, q8_0),
        GgmlDType::Q4_0 => blocks(src, dst, 18, q4_0),
        GgmlDType::Q4_1 => blocks(src, dst, 20, q4_1),
        other => {
            let t = Tensor::from_slice(src, src.len(), &Device::Cpu)?;
            let q = QTensor::quantize(&t, other)?;
            dst.copy_from_slice(&q.data()?);
        }
    }
    Ok(())
}

fn blocks(src: &[f32], dst: &mut [u8], bytes: usize, f: fn(&[f32; 32], &mut [u8])) {
    for (x, d) in src.chunks_exact(32).zip(dst.chunks_exact_mut(bytes)) {
        f(x.try_into().expect("chunks of 32"), d);
    }
}

fn put_f16(dst: &mut [u8], v: f32) {
    dst.copy_from_slice(&f16::from_f32(v).to_le_bytes());
}

fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

/// `d = max|x| / 127`, `q = round(x / d)`: 2 bytes of f16 scale, 32 i8.
fn q8_0(x: &[f32; 32], dst: &mut [u8]) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    put_f16(&mut dst[..2], d);
    for (q, v) in dst[2..].iter_mut().zip(x) {
        *q = (v * id).round() as i8 as u8;
    }
}

/// `d = m / -8` where `m` is the value of largest magnitude (the first such),
/// `q = trunc(x / d + 8.5)` clamped to 15; low nibbles hold weights 0..16.
fn q4_0(x: &[f32; 32], dst: &mut [u8]) {
    let mut m = 0f32;
    for &v in x {
        if v.abs() > m.abs() {
            m = v;
        }
    }
    let d = m / -8.0;
    let id = inverse(d);
    put_f16(&mut dst[..2], d);
    let q = |v: f32| ((v * id + 8.5) as u8).min(15);
    for j in 0..16 {
        dst[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
}

/// `d = (max - min) / 15`, `q = trunc((x - min) / d + 0.5)` clamped to 15;
/// f16 scale, f16 minimum, then nibbles as in q4_0.
fn q4_1(x: &[f32; 32], dst: &mut [u8]) {
    let (mut lo, mut hi) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in x {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let d = (hi - lo) / 15.0;
    let id = inverse(d);
    put_f16(&mut dst[..2], d);
    put_f16(&mut dst[2..4], lo);
    let q = |v: f32| (((v - lo) * id + 0.5) as u8).min(15);
    for j in 0..16 {
        dst[4 + j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
}

#[cfg(test)]
mod tests;
