//! Float rows to the bytes of one ggml tensor type.
//!
//! q8_0, q4_0 and q4_1 are ours and reproduce llama.cpp's reference quantizer
//! (and PyPI `gguf`'s `quants.py`) bit for bit: the same f32 operations in
//! the same order, no fused multiply-add, round-half-away-from-zero for q8_0
//! and truncation after `+ 8.5` / `+ 0.5` for the 4-bit types. The k-quants
//! and the q5 fallbacks use candle's ports of ggml's quantizers.

use std::borrow::Cow;

use candle_core::quantized::{GgmlDType, QStorage, QTensor};
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
    let mut out = Vec::new();
    encode_into(dtype, data, cols, &mut out)?;
    Ok(out)
}

/// [`encode`] into a buffer reused across tensors.
pub fn encode_into(
    dtype: GgmlDType,
    data: &[f32],
    cols: usize,
    out: &mut Vec<u8>,
) -> candle_core::Result<()> {
    if cols == 0 || !fits(dtype, cols) || !data.len().is_multiple_of(cols) {
        candle_core::bail!(
            "{} rows of {cols} cannot be encoded as {dtype:?}",
            data.len()
        );
    }
    // About 64 KiB of input per task: enough work to amortize scheduling.
    let rows_per_task = (16_384 / cols).max(1);
    let row_bytes = encoded_len(dtype, cols);
    out.resize(data.len() / cols * row_bytes, 0);
    out.par_chunks_mut(rows_per_task * row_bytes)
        .zip(data.par_chunks(rows_per_task * cols))
        .try_for_each(|(dst, src)| encode_rows(dtype, src, dst))
}

/// Decodes `raw`, rows of `cols` weights stored as `dtype`, into `out`,
/// rows in parallel (candle's dequantizers, which read blocks in place and
/// so want `raw` aligned for them: callers read into 4-byte-aligned memory).
pub fn decode_into(
    dtype: GgmlDType,
    raw: &[u8],
    cols: usize,
    out: &mut Vec<f32>,
) -> candle_core::Result<()> {
    let row_bytes = encoded_len(dtype, cols);
    if cols == 0 || !fits(dtype, cols) || !raw.len().is_multiple_of(row_bytes) {
        candle_core::bail!(
            "{} bytes are not rows of {cols} {dtype:?} weights",
            raw.len()
        );
    }
    let rows_per_task = (16_384 / cols).max(1);
    out.resize(raw.len() / row_bytes * cols, 0.0);
    out.par_chunks_mut(rows_per_task * cols)
        .zip(raw.par_chunks(rows_per_task * row_bytes))
        .try_for_each(|(dst, src)| {
            let storage = QStorage::from_data(Cow::Borrowed(src), &Device::Cpu, dtype)?;
            let q = QTensor::new(storage, (dst.len() / cols, cols))?;
            dst.copy_from_slice(
                &q.dequantize(&Device::Cpu)?
                    .flatten_all()?
                    .to_vec1::<f32>()?,
            );
            Ok(())
        })
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

/// Reduces a block with `pick` in eight independent lanes: written as a
/// select (not `f32::max`, whose NaN rule is not one instruction), each lane
/// compiles to one vector min/max per eight weights.
#[inline(always)]
fn reduce(x: &[f32; 32], init: f32, pick: impl Fn(f32, f32) -> f32) -> f32 {
    let mut lanes = [init; 8];
    for chunk in x.chunks_exact(8) {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l = pick(*l, v);
        }
    }
    lanes.into_iter().fold(init, &pick)
}

#[inline(always)]
fn amax(x: &[f32; 32]) -> f32 {
    reduce(x, 0.0, |m, v| if v.abs() > m { v.abs() } else { m })
}

/// `d = max|x| / 127`, `q = round(x / d)`: 2 bytes of f16 scale, 32 i8.
fn q8_0(x: &[f32; 32], dst: &mut [u8]) {
    let d = amax(x) / 127.0;
    let id = inverse(d);
    put_f16(&mut dst[..2], d);
    for (q, v) in dst[2..].iter_mut().zip(x) {
        *q = to_int((v * id).round(), -128.0, 127.0) as i8 as u8;
    }
}

/// `v` clamped to `[lo, hi]` (NaN to `lo`), truncated toward zero. The
/// clamp also makes the conversion a plain vector instruction: Rust's
/// saturating `as` on an unbounded float compiles to scalar code here.
#[inline(always)]
fn to_int(v: f32, lo: f32, hi: f32) -> i32 {
    let v = v.max(lo).min(hi);
    // SAFETY: `v` is finite and within i32's range: `max` maps NaN to `lo`,
    // and `lo`/`hi` are small integers.
    unsafe { v.to_int_unchecked::<i32>() }
}

/// Packs 32 4-bit values: weights 0..16 in the low nibbles, 16..32 high.
fn put_nibbles(dst: &mut [u8], q: impl Fn(f32) -> i32, x: &[f32; 32]) {
    for j in 0..16 {
        dst[j] = (q(x[j]) | (q(x[j + 16]) << 4)) as u8;
    }
}

/// `d = m / -8` where `m` is the value of largest magnitude (the first such),
/// `q = trunc(x / d + 8.5)` clamped to 15; low nibbles hold weights 0..16.
fn q4_0(x: &[f32; 32], dst: &mut [u8]) {
    // The first value of largest magnitude, as the reference's strict `>`
    // scan (and numpy's argmax) finds it.
    let a = amax(x);
    let m = x.iter().copied().find(|v| v.abs() == a).unwrap_or(0.0);
    let d = m / -8.0;
    let id = inverse(d);
    put_f16(&mut dst[..2], d);
    // x·id + 8.5 lies in [0.5, 16.5]: truncation is the floor, 16 clamps to 15.
    put_nibbles(&mut dst[2..18], |v| to_int(v * id + 8.5, 0.0, 15.0), x);
}

/// `d = (max - min) / 15`, `q = trunc((x - min) / d + 0.5)` clamped to 15;
/// f16 scale, f16 minimum, then nibbles as in q4_0.
fn q4_1(x: &[f32; 32], dst: &mut [u8]) {
    let lo = reduce(x, f32::INFINITY, |m, v| if v < m { v } else { m });
    let hi = reduce(x, f32::NEG_INFINITY, |m, v| if v > m { v } else { m });
    let d = (hi - lo) / 15.0;
    let id = inverse(d);
    put_f16(&mut dst[..2], d);
    put_f16(&mut dst[2..4], lo);
    put_nibbles(
        &mut dst[4..20],
        |v| to_int((v - lo) * id + 0.5, 0.0, 15.0),
        x,
    );
}

#[cfg(test)]
mod tests;
