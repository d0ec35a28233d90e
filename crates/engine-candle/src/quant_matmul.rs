//! Quantized (and f16) weights × f32 activations on the CPU. Each activation
//! row is quantized to blocks of 32 integers with one scale, then every
//! output is a sum of per-block dot products:
//!
//! - Q4_1 weights take 8-bit Q8_1 activations, and Q4_0 and Q5_0 weights
//!   8-bit Q8_0 ones, exactly as ggml computes them (the llama.cpp agreement
//!   tests hold the original SmolLM2, Qwen2.5 and Gemma 3 files to its
//!   numerics);
//! - Q8_0 weights take 16-bit activations (W8A16). ggml quantizes them to 8
//!   bits, which adds an error as large as the weights' own: on SmolLM2 the
//!   q8_0 file's top-1 agreement with its f32 original goes from 96.1% to
//!   98.1% and its KL divergence from 0.0039 to 0.0012 (docs/benchmarks.md),
//!   and `madd_epi16` keeps the kernel nearly as fast;
//! - F16 and BF16 weights take the same 16-bit activations, so a 16-bit
//!   matrix can be stacked with Q8_0 ones that read the same input (a q8_0
//!   file's grouped-query `attn_v` is f16 beside Q8_0 `attn_q` and `attn_k`),
//!   and a checkpoint's f16 or bf16 weights are read as stored, never
//!   widened to f32 in memory.
//!
//! candle's CPU kernels for Q4_0, Q4_1 and Q5_0 are scalar and its Q8_0 one runs on a second
//! thread pool that fights rayon's for the cores; these use AVX2 where the
//! build has it and split output rows across rayon.

use std::sync::Arc;

use half::f16;
use rayon::prelude::*;

/// Values per block.
const QK: usize = 32;
/// Bytes of a Q4_1 block: f16 scale, f16 minimum, 16 bytes of nibbles.
const Q4_1_BYTES: usize = 20;
/// Bytes of a Q8_0 block: f16 scale, 32 signed bytes.
const Q8_0_BYTES: usize = 34;
/// Bytes of a Q4_0 block: f16 scale, 16 bytes of nibbles (value − 8).
const Q4_0_BYTES: usize = 18;
/// Bytes of a Q5_0 block: f16 scale, 32 fifth bits, 16 bytes of nibbles
/// (value − 16).
const Q5_0_BYTES: usize = 22;
/// Bytes of 32 f16 or bf16 weights, the unit the 16-bit kernels step by.
const F16_BYTES: usize = 64;

/// The weight formats with a kernel here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockFormat {
    Q4_0,
    Q4_1,
    Q5_0,
    Q8_0,
    F16,
    BF16,
}

/// How a format's kernel wants its input quantized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activations {
    Q8_1,
    Q16,
}

impl BlockFormat {
    fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => Q4_0_BYTES,
            Self::Q4_1 => Q4_1_BYTES,
            Self::Q5_0 => Q5_0_BYTES,
            Self::Q8_0 => Q8_0_BYTES,
            Self::F16 | Self::BF16 => F16_BYTES,
        }
    }

    fn activations(self) -> Activations {
        match self {
            // Q4_0 and Q5_0 take ggml's Q8_0 activations: Q8_1's quants and
            // scales, without its sum term.
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 => Activations::Q8_1,
            Self::Q8_0 | Self::F16 | Self::BF16 => Activations::Q16,
        }
    }
}

/// A row-major matrix of weights in blocks: `rows` outputs, each `cols`
/// inputs wide. A stacked matrix's rows come in parts of different formats,
/// all taking the same activations.
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    parts: Vec<Part>,
    /// Shared with the token table when a model ties its embeddings.
    blocks: Arc<[u8]>,
}

/// A run of rows in one format.
#[derive(Debug, Clone, Copy)]
struct Part {
    format: BlockFormat,
    first_row: usize,
    /// Where its first row starts in `blocks`.
    offset: usize,
}

impl Part {
    fn row_bytes(&self, cols: usize) -> usize {
        cols / QK * self.format.block_bytes()
    }
}

/// One activation row in 8-bit blocks: per block, the scale `d`, `s = d·Σq`
/// (Q8_1's extra term, used against Q4_1's minimum) and 32 quants.
struct Q81Row {
    d: Vec<f32>,
    s: Vec<f32>,
    q: Vec<i8>,
}

/// One activation row in 16-bit blocks: per block, the scale `d` (kept in
/// f32: this format never leaves memory) and 32 quants.
struct Q16Row {
    d: Vec<f32>,
    q: Vec<i16>,
}

fn f16_bits(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

impl QuantMatrix {
    /// From GGUF bytes of a (rows, cols) tensor.
    pub fn from_ggml(
        format: BlockFormat,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, String> {
        Self::from_shared(format, Arc::from(bytes), rows, cols)
    }

    /// As [`QuantMatrix::from_ggml`], holding `bytes` without a copy.
    pub fn from_shared(
        format: BlockFormat,
        bytes: Arc<[u8]>,
        rows: usize,
        cols: usize,
    ) -> Result<Self, String> {
        if !cols.is_multiple_of(QK) {
            return Err(format!(
                "{format:?} rows of {cols} values are not whole blocks of {QK}"
            ));
        }
        let expected = rows * cols / QK * format.block_bytes();
        if bytes.len() != expected {
            return Err(format!(
                "a ({rows}, {cols}) {format:?} tensor has {expected} bytes, not {}",
                bytes.len()
            ));
        }
        Ok(Self {
            rows,
            cols,
            parts: vec![Part {
                format,
                first_row: 0,
                offset: 0,
            }],
            blocks: bytes,
        })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether `matrices` can be stacked: some, all of one width, in
    /// formats that take the same activations.
    pub fn stackable(matrices: &[QuantMatrix]) -> bool {
        matrices.first().is_some_and(|first| {
            matrices
                .iter()
                .all(|m| m.cols == first.cols && m.activations() == first.activations())
        })
    }

    /// Stacks matrices that read the same input (same width, formats that
    /// take the same activations) into one, so one pass quantizes the input
    /// once and splits once across threads. `None` when they do not match
    /// ([`QuantMatrix::stackable`]).
    pub fn stack(matrices: Vec<QuantMatrix>) -> Option<QuantMatrix> {
        if !Self::stackable(&matrices) {
            return None;
        }
        let cols = matrices[0].cols;
        let (mut rows, mut parts, mut blocks) = (0, Vec::new(), Vec::new());
        for m in matrices {
            for p in m.parts {
                parts.push(Part {
                    first_row: rows + p.first_row,
                    offset: blocks.len() + p.offset,
                    ..p
                });
            }
            rows += m.rows;
            blocks.extend_from_slice(&m.blocks);
        }
        Some(QuantMatrix {
            rows,
            cols,
            parts,
            blocks: blocks.into(),
        })
    }

    /// The activations every part takes (one kind: `stack` checks).
    fn activations(&self) -> Activations {
        self.parts[0].format.activations()
    }

    /// `x` is `n` rows of `cols` values; returns `n` rows of `rows` values.
    pub fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "activation shape");
        let inputs = x.chunks_exact(self.cols);
        match self.activations() {
            Activations::Q8_1 => {
                let rows: Vec<Q81Row> = inputs.map(quantize_q8_1).collect();
                self.times(&rows, |format| match format {
                    BlockFormat::Q4_0 => Kernels {
                        dot: dot_q4_0,
                        dot4: dot4_q4_0,
                        dot2x4: Some(dot2x4_q4_0),
                    },
                    BlockFormat::Q5_0 => Kernels {
                        dot: dot_q5_0,
                        dot4: dot4_q5_0,
                        dot2x4: Some(dot2x4_q5_0),
                    },
                    _ => Kernels {
                        dot: dot_q4_1,
                        dot4: dot4_q4_1,
                        dot2x4: None,
                    },
                })
            }
            Activations::Q16 => {
                let rows: Vec<Q16Row> = inputs.map(quantize_q16).collect();
                self.times(&rows, |format| match format {
                    BlockFormat::F16 => Kernels {
                        dot: dot_f16,
                        dot4: dot4_f16,
                        dot2x4: None,
                    },
                    BlockFormat::BF16 => Kernels {
                        dot: dot_bf16,
                        dot4: dot4_bf16,
                        dot2x4: None,
                    },
                    _ => Kernels {
                        dot: dot_q8_0,
                        dot4: dot4_q8_0,
                        dot2x4: None,
                    },
                })
            }
        }
    }

    /// The part holding `row`, and that row's bytes.
    fn row(&self, row: usize) -> (&Part, &[u8]) {
        let part = self
            .parts
            .iter()
            .rfind(|p| p.first_row <= row)
            .expect("parts start at row 0");
        let row_bytes = part.row_bytes(self.cols);
        let start = part.offset + (row - part.first_row) * row_bytes;
        (part, &self.blocks[start..start + row_bytes])
    }

    /// Every weight row · every quantized input row, laid out as `matmul`
    /// returns them; `kernels` gives the dot products of each format present.
    fn times<R: Sync>(
        &self,
        quantized: &[R],
        kernels: impl Fn(BlockFormat) -> Kernels<R> + Sync,
    ) -> Vec<f32> {
        let n = quantized.len();
        // Output rows × inputs, then transposed: each weight row is read once
        // for all inputs.
        let mut by_row = vec![0f32; self.rows * n];
        // An even count, so row pairs never straddle two tasks.
        let per_task = (self.rows / (rayon::current_num_threads() * 4)).max(16) & !1;
        by_row
            .par_chunks_mut(per_task * n)
            .enumerate()
            .for_each(|(chunk, out)| {
                let first = chunk * per_task;
                let mut out_rows: Vec<&mut [f32]> = out.chunks_exact_mut(n).collect();
                let mut r = 0;
                while r < out_rows.len() {
                    let row = first + r;
                    let (part, w) = self.row(row);
                    let k = kernels(part.format);
                    // Two rows of one part at once for four inputs where the
                    // format has a kernel for it (prompts): each input block
                    // is loaded once for both. (Four rows for one input, for
                    // decode steps, measured slower: 30 vs 38 tok/s on Qwen2.5.)
                    let pair_in_part =
                        r + 1 < out_rows.len() && self.row(row + 1).0.first_row == part.first_row;
                    if let (Some(dot2x4), true) = (k.dot2x4, n >= 4 && pair_in_part) {
                        let w1 = self.row(row + 1).1;
                        let (head, tail) = out_rows.split_at_mut(r + 1);
                        pairs(
                            [w, w1],
                            [&mut head[r], &mut tail[0]],
                            quantized,
                            k.dot,
                            dot2x4,
                        );
                        r += 2;
                        continue;
                    }
                    // Four inputs per pass over the weight row: its blocks are
                    // unpacked once for all four (prompts, batches).
                    let out_row = &mut out_rows[r];
                    for (o, xq) in out_row.chunks_mut(4).zip(quantized.chunks(4)) {
                        if let (Ok(o4), Ok(x4)) =
                            (<&mut [f32; 4]>::try_from(&mut *o), <&[R; 4]>::try_from(xq))
                        {
                            *o4 = (k.dot4)(w, x4);
                        } else {
                            for (o, x) in o.iter_mut().zip(xq) {
                                *o = (k.dot)(w, x);
                            }
                        }
                    }
                    r += 1;
                }
            });
        if n == 1 {
            return by_row;
        }
        let mut out = vec![0f32; n * self.rows];
        for r in 0..self.rows {
            for i in 0..n {
                out[i * self.rows + r] = by_row[r * n + i];
            }
        }
        out
    }
}

/// Two weight rows · every input: four inputs at a time through `dot2x4`,
/// the rest one by one.
fn pairs<R>(
    [w0, w1]: [&[u8]; 2],
    [out0, out1]: [&mut &mut [f32]; 2],
    quantized: &[R],
    dot: Dot<R>,
    dot2x4: Dot2x4<R>,
) {
    for ((o0, o1), xq) in out0
        .chunks_mut(4)
        .zip(out1.chunks_mut(4))
        .zip(quantized.chunks(4))
    {
        if let Ok(x4) = <&[R; 4]>::try_from(xq) {
            let [a, b] = dot2x4([w0, w1], x4);
            o0.copy_from_slice(&a);
            o1.copy_from_slice(&b);
        } else {
            for ((o0, o1), x) in o0.iter_mut().zip(o1.iter_mut()).zip(xq) {
                *o0 = dot(w0, x);
                *o1 = dot(w1, x);
            }
        }
    }
}

/// One format's kernels.
struct Kernels<R> {
    dot: Dot<R>,
    dot4: Dot4<R>,
    /// Two rows × four inputs, where the format has one.
    dot2x4: Option<Dot2x4<R>>,
}

/// One weight row · one quantized input row.
type Dot<R> = fn(&[u8], &R) -> f32;
/// Two weight rows · four quantized input rows.
type Dot2x4<R> = fn([&[u8]; 2], &[R; 4]) -> [[f32; 4]; 2];

/// One weight row · four quantized input rows.
type Dot4<R> = fn(&[u8], &[R; 4]) -> [f32; 4];

/// ggml's `quantize_row_q8_1` (and, ignoring `s`, `quantize_row_q8_0`): scale
/// by the block's largest magnitude to ±127, rounding half away from zero
/// (`roundf`; ties to even agreed with llama.cpp on fewer greedy steps).
fn quantize_q8_1(x: &[f32]) -> Q81Row {
    let blocks = x.len() / QK;
    let mut row = Q81Row {
        d: Vec::with_capacity(blocks),
        s: Vec::with_capacity(blocks),
        q: Vec::with_capacity(x.len()),
    };
    for block in x.chunks_exact(QK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        let mut sum = 0i32;
        for &v in block {
            let q = (v * id).round() as i8;
            sum += q as i32;
            row.q.push(q);
        }
        // Stored as f16 in ggml's block; round the same way.
        row.d.push(f16::from_f32(d).to_f32());
        row.s.push(f16::from_f32(sum as f32 * d).to_f32());
    }
    row
}

/// 16-bit blocks: scale by the block's largest magnitude to ±32767. The
/// rounding error is 1/258 of 8-bit blocks', so a block holding one outlier
/// (LLM activations have a few channels far larger than the rest) no longer
/// flattens its other 31 values to a handful of levels.
fn quantize_q16(x: &[f32]) -> Q16Row {
    let mut row = Q16Row {
        d: Vec::with_capacity(x.len() / QK),
        q: Vec::with_capacity(x.len()),
    };
    for block in x.chunks_exact(QK) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 32767.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        row.q.extend(block.iter().map(|&v| (v * id).round() as i16));
        row.d.push(d);
    }
    row
}

/// The AVX2 kernel where the build has AVX2, FMA and F16C (see
/// .cargo/config.toml), else the scalar expression.
macro_rules! simd_or_scalar {
    ($avx2:ident $(::<$generic:tt>)? ($($arg:expr),*), $scalar:expr) => {{
        #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
        {
            // SAFETY: the target features are enabled for this build, and every
            // activation row holds as many whole blocks as the weight row
            // (checked in `from_ggml` and `matmul`).
            unsafe { avx2::$avx2 $(::<$generic>)? ($($arg),*) }
        }
        #[cfg(not(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c")))]
        {
            $scalar
        }
    }};
}

/// One Q4_1 weight row · four Q8_1 activation rows, each summed exactly as
/// [`dot_q4_1`] sums it.
fn dot4_q4_1(w: &[u8], x: &[Q81Row; 4]) -> [f32; 4] {
    simd_or_scalar!(
        dot4_q4_1_avx2(w, x),
        std::array::from_fn(|i| scalar::dot_q4_1_scalar(w, &x[i]))
    )
}

/// One Q8_0 weight row · four 16-bit activation rows.
fn dot4_q8_0(w: &[u8], x: &[Q16Row; 4]) -> [f32; 4] {
    simd_or_scalar!(
        dot4_q8_0_avx2(w, x),
        std::array::from_fn(|i| scalar::dot_q8_0_scalar(w, &x[i]))
    )
}

/// One F16 weight row · four 16-bit activation rows.
fn dot4_f16(w: &[u8], x: &[Q16Row; 4]) -> [f32; 4] {
    simd_or_scalar!(
        dot4_half_avx2::<false>(w, x),
        std::array::from_fn(|i| scalar::dot_f16_scalar(w, &x[i]))
    )
}

/// One BF16 weight row · four 16-bit activation rows.
fn dot4_bf16(w: &[u8], x: &[Q16Row; 4]) -> [f32; 4] {
    simd_or_scalar!(
        dot4_half_avx2::<true>(w, x),
        std::array::from_fn(|i| scalar::dot_bf16_scalar(w, &x[i]))
    )
}

/// One Q4_0 weight row · four Q8_0 activation rows.
fn dot4_q4_0(w: &[u8], x: &[Q81Row; 4]) -> [f32; 4] {
    simd_or_scalar!(
        dot4_q4_0_avx2(w, x),
        std::array::from_fn(|i| scalar::dot_q4_0_scalar(w, &x[i]))
    )
}

/// One Q5_0 weight row · four Q8_0 activation rows.
fn dot4_q5_0(w: &[u8], x: &[Q81Row; 4]) -> [f32; 4] {
    simd_or_scalar!(
        dot4_q5_0_avx2(w, x),
        std::array::from_fn(|i| scalar::dot_q5_0_scalar(w, &x[i]))
    )
}

/// Two Q4_0 weight rows · four Q8_0 activation rows, each output summed
/// exactly as [`dot_q4_0`] sums it.
fn dot2x4_q4_0(w: [&[u8]; 2], x: &[Q81Row; 4]) -> [[f32; 4]; 2] {
    simd_or_scalar!(
        dot2x4_q4_0_avx2(w, x),
        w.map(|w| std::array::from_fn(|i| scalar::dot_q4_0_scalar(w, &x[i])))
    )
}

/// Two Q5_0 weight rows · four Q8_0 activation rows.
fn dot2x4_q5_0(w: [&[u8]; 2], x: &[Q81Row; 4]) -> [[f32; 4]; 2] {
    simd_or_scalar!(
        dot2x4_q5_0_avx2(w, x),
        w.map(|w| std::array::from_fn(|i| scalar::dot_q5_0_scalar(w, &x[i])))
    )
}

/// One Q4_0 weight row · one Q8_0 activation row.
fn dot_q4_0(w: &[u8], x: &Q81Row) -> f32 {
    simd_or_scalar!(dot_q4_0_avx2(w, x), scalar::dot_q4_0_scalar(w, x))
}

/// One Q5_0 weight row · one Q8_0 activation row.
fn dot_q5_0(w: &[u8], x: &Q81Row) -> f32 {
    simd_or_scalar!(dot_q5_0_avx2(w, x), scalar::dot_q5_0_scalar(w, x))
}

/// One Q4_1 weight row · one Q8_1 activation row.
fn dot_q4_1(w: &[u8], x: &Q81Row) -> f32 {
    simd_or_scalar!(dot_q4_1_avx2(w, x), scalar::dot_q4_1_scalar(w, x))
}

/// One Q8_0 weight row · one 16-bit activation row.
fn dot_q8_0(w: &[u8], x: &Q16Row) -> f32 {
    simd_or_scalar!(dot_q8_0_avx2(w, x), scalar::dot_q8_0_scalar(w, x))
}

/// One F16 weight row · one 16-bit activation row.
fn dot_f16(w: &[u8], x: &Q16Row) -> f32 {
    simd_or_scalar!(dot_half_avx2::<false>(w, x), scalar::dot_f16_scalar(w, x))
}

/// One BF16 weight row · one 16-bit activation row.
fn dot_bf16(w: &[u8], x: &Q16Row) -> f32 {
    simd_or_scalar!(dot_half_avx2::<true>(w, x), scalar::dot_bf16_scalar(w, x))
}

fn bf16_bits(b: &[u8], at: usize) -> f32 {
    half::bf16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// The formulas the AVX2 kernels compute, for builds without them and for
/// the tests.
#[cfg_attr(
    all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ),
    allow(dead_code)
)]
mod scalar {
    use super::*;

    pub(super) fn dot_f16_scalar(w: &[u8], x: &Q16Row) -> f32 {
        dot_half_scalar(w, x, f16_bits)
    }

    pub(super) fn dot_bf16_scalar(w: &[u8], x: &Q16Row) -> f32 {
        dot_half_scalar(w, x, bf16_bits)
    }

    /// 16-bit weights read by `value(block, byte offset)`.
    fn dot_half_scalar(w: &[u8], x: &Q16Row, value: fn(&[u8], usize) -> f32) -> f32 {
        let mut sum = 0f32;
        for (b, wb) in w.chunks_exact(F16_BYTES).enumerate() {
            let q = &x.q[b * QK..(b + 1) * QK];
            let block: f32 = (0..QK).map(|j| value(wb, 2 * j) * q[j] as f32).sum();
            sum += x.d[b] * block;
        }
        sum
    }

    pub(super) fn dot_q8_0_scalar(w: &[u8], x: &Q16Row) -> f32 {
        let mut sum = 0f32;
        for (b, wb) in w.chunks_exact(Q8_0_BYTES).enumerate() {
            let q = &x.q[b * QK..(b + 1) * QK];
            let sumi: i32 = wb[2..]
                .iter()
                .zip(q)
                .map(|(&a, &b)| a as i8 as i32 * b as i32)
                .sum();
            sum += f16_bits(wb, 0) * x.d[b] * sumi as f32;
        }
        sum
    }

    /// The 32 signed weights of a Q4_0 block, in order.
    pub(super) fn q4_0_values(wb: &[u8]) -> [i8; QK] {
        std::array::from_fn(|j| {
            let byte = wb[2 + j % (QK / 2)];
            let nibble = if j < QK / 2 { byte & 0x0F } else { byte >> 4 };
            nibble as i8 - 8
        })
    }

    /// The 32 signed weights of a Q5_0 block, in order: value j's fifth bit
    /// is bit j of the little-endian `qh`.
    pub(super) fn q5_0_values(wb: &[u8]) -> [i8; QK] {
        let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
        std::array::from_fn(|j| {
            let byte = wb[6 + j % (QK / 2)];
            let nibble = if j < QK / 2 { byte & 0x0F } else { byte >> 4 };
            (nibble | (((qh >> j) & 1) as u8) << 4) as i8 - 16
        })
    }

    /// ggml's `vec_dot_q4_0_q8_0` / `vec_dot_q5_0_q8_0`: per block, the
    /// integer sum scaled by both scales.
    fn dot_signed_blocks(
        w: &[u8],
        x: &Q81Row,
        block_bytes: usize,
        values: fn(&[u8]) -> [i8; QK],
    ) -> f32 {
        let mut sum = 0f32;
        for (b, wb) in w.chunks_exact(block_bytes).enumerate() {
            let q = &x.q[b * QK..(b + 1) * QK];
            let sumi: i32 = values(wb)
                .iter()
                .zip(q)
                .map(|(&a, &b)| a as i32 * b as i32)
                .sum();
            sum += f16_bits(wb, 0) * x.d[b] * sumi as f32;
        }
        sum
    }

    pub(super) fn dot_q4_0_scalar(w: &[u8], x: &Q81Row) -> f32 {
        dot_signed_blocks(w, x, Q4_0_BYTES, q4_0_values)
    }

    pub(super) fn dot_q5_0_scalar(w: &[u8], x: &Q81Row) -> f32 {
        dot_signed_blocks(w, x, Q5_0_BYTES, q5_0_values)
    }

    pub(super) fn dot_q4_1_scalar(w: &[u8], x: &Q81Row) -> f32 {
        let mut sum = 0f32;
        for (b, wb) in w.chunks_exact(Q4_1_BYTES).enumerate() {
            let (dw, mw) = (f16_bits(wb, 0), f16_bits(wb, 2));
            let q = &x.q[b * QK..(b + 1) * QK];
            let mut sumi = 0i32;
            for j in 0..QK / 2 {
                let byte = wb[4 + j];
                sumi +=
                    (byte & 0x0F) as i32 * q[j] as i32 + (byte >> 4) as i32 * q[j + QK / 2] as i32;
            }
            sum += dw * x.d[b] * sumi as f32 + mw * x.s[b];
        }
        sum
    }
}

/// The AVX2 kernels (the build enables AVX2, FMA and F16C for x86-64-v3:
/// .cargo/config.toml).
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
mod avx2 {
    use super::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4_1_avx2(w: &[u8], x: &Q81Row) -> f32 {
        use std::arch::x86_64::*;
        let low4 = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        let blocks = w
            .chunks_exact(Q4_1_BYTES)
            .zip(x.q.chunks_exact(QK))
            .zip(x.d.iter().zip(&x.s));
        for ((wb, q), (&xd, &xs)) in blocks {
            let (dw, mw) = (f16_bits(wb, 0), f16_bits(wb, 2));
            // SAFETY: wb[4..20] is 16 bytes and q is 32 bytes (chunks_exact).
            let (nib, q) = unsafe {
                (
                    _mm_loadu_si128(wb.as_ptr().add(4) as *const __m128i),
                    _mm256_loadu_si256(q.as_ptr() as *const __m256i),
                )
            };
            // Low nibbles are values 0..16, high nibbles 16..32.
            let lo = _mm_and_si128(nib, low4);
            let hi = _mm_and_si128(_mm_srli_epi16(nib, 4), low4);
            let wq = _mm256_set_m128i(hi, lo);
            let pairs = _mm256_maddubs_epi16(wq, q);
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, ones));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(dw * xd), sums, acc);
            mins += mw * xs;
        }
        // SAFETY: AVX2 is enabled for this function.
        unsafe { hsum(acc) + mins }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8_0_avx2(w: &[u8], x: &Q16Row) -> f32 {
        use std::arch::x86_64::*;
        let mut acc = _mm256_setzero_ps();
        let blocks = w
            .chunks_exact(Q8_0_BYTES)
            .zip(x.q.chunks_exact(QK))
            .zip(&x.d);
        for ((wb, q), &xd) in blocks {
            // SAFETY: wb[2..34] is 32 bytes and q is 32 values (chunks_exact).
            let sums = unsafe {
                let (wlo, whi) = widen_q8(wb);
                let p = q.as_ptr() as *const __m256i;
                // Each lane: four products of at most 128 · 32767, under 2^24,
                // so the integer sum and its conversion to f32 are exact.
                _mm256_add_epi32(
                    _mm256_madd_epi16(wlo, _mm256_loadu_si256(p)),
                    _mm256_madd_epi16(whi, _mm256_loadu_si256(p.add(1))),
                )
            };
            acc = _mm256_fmadd_ps(
                _mm256_set1_ps(f16_bits(wb, 0) * xd),
                _mm256_cvtepi32_ps(sums),
                acc,
            );
        }
        // SAFETY: AVX2 is enabled for this function.
        unsafe { hsum(acc) }
    }

    /// A Q8_0 block's 32 weights widened to two vectors of 16 `i16`.
    ///
    /// # Safety
    /// `wb` holds a whole Q8_0 block (34 bytes); AVX2 is available.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen_q8(wb: &[u8]) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
        use std::arch::x86_64::*;
        debug_assert!(wb.len() >= Q8_0_BYTES);
        // SAFETY: bytes 2..18 and 18..34 are inside the block (caller).
        unsafe {
            (
                _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.as_ptr().add(2) as *const __m128i)),
                _mm256_cvtepi8_epi16(_mm_loadu_si128(wb.as_ptr().add(18) as *const __m128i)),
            )
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_q4_1_avx2(w: &[u8], x: &[Q81Row; 4]) -> [f32; 4] {
        use std::arch::x86_64::*;
        let blocks = w.len() / Q4_1_BYTES;
        assert!(
            x.iter()
                .all(|r| r.q.len() >= blocks * QK && r.d.len() >= blocks && r.s.len() >= blocks)
        );
        let low4 = _mm_set1_epi8(0x0F);
        let ones = _mm256_set1_epi16(1);
        let mut acc = [_mm256_setzero_ps(); 4];
        let mut mins = [0f32; 4];
        for (b, wb) in w.chunks_exact(Q4_1_BYTES).enumerate() {
            let (dw, mw) = (f16_bits(wb, 0), f16_bits(wb, 2));
            // SAFETY: wb[4..20] is 16 bytes.
            let nib = unsafe { _mm_loadu_si128(wb.as_ptr().add(4) as *const __m128i) };
            let lo = _mm_and_si128(nib, low4);
            let hi = _mm_and_si128(_mm_srli_epi16(nib, 4), low4);
            let wq = _mm256_set_m128i(hi, lo);
            for i in 0..4 {
                // SAFETY: row i holds `blocks` blocks of 32 quants (asserted above).
                let q =
                    unsafe { _mm256_loadu_si256(x[i].q.as_ptr().add(b * QK) as *const __m256i) };
                let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(wq, q), ones));
                acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(dw * x[i].d[b]), sums, acc[i]);
                mins[i] += mw * x[i].s[b];
            }
        }
        // SAFETY: AVX2 is enabled for this function.
        std::array::from_fn(|i| unsafe { hsum(acc[i]) } + mins[i])
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_q8_0_avx2(w: &[u8], x: &[Q16Row; 4]) -> [f32; 4] {
        use std::arch::x86_64::*;
        let blocks = w.len() / Q8_0_BYTES;
        assert!(
            x.iter()
                .all(|r| r.q.len() >= blocks * QK && r.d.len() >= blocks)
        );
        let mut acc = [_mm256_setzero_ps(); 4];
        for (b, wb) in w.chunks_exact(Q8_0_BYTES).enumerate() {
            let dw = f16_bits(wb, 0);
            // SAFETY: wb is a whole block (chunks_exact).
            let (wlo, whi) = unsafe { widen_q8(wb) };
            for i in 0..4 {
                // SAFETY: row i holds `blocks` blocks of 32 quants (asserted above).
                let sums = unsafe {
                    let p = x[i].q.as_ptr().add(b * QK) as *const __m256i;
                    _mm256_add_epi32(
                        _mm256_madd_epi16(wlo, _mm256_loadu_si256(p)),
                        _mm256_madd_epi16(whi, _mm256_loadu_si256(p.add(1))),
                    )
                };
                acc[i] = _mm256_fmadd_ps(
                    _mm256_set1_ps(dw * x[i].d[b]),
                    _mm256_cvtepi32_ps(sums),
                    acc[i],
                );
            }
        }
        // SAFETY: AVX2 is enabled for this function.
        std::array::from_fn(|i| unsafe { hsum(acc[i]) })
    }

    /// Σ over one block of 32 f16 weights × 16-bit quants, in f32 lanes.
    ///
    /// # Safety
    /// `wb` holds 64 bytes and `q` 32 values; AVX2, FMA and F16C are available.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn block_f16(
        w: &[std::arch::x86_64::__m256; 4],
        q: &[i16],
    ) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        debug_assert!(q.len() >= QK);
        let mut acc = _mm256_setzero_ps();
        for (k, wk) in w.iter().enumerate() {
            // SAFETY: values 8k..8k+8 are inside the block (caller).
            let qk = unsafe { _mm_loadu_si128(q.as_ptr().add(8 * k) as *const __m128i) };
            acc = _mm256_fmadd_ps(*wk, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(qk)), acc);
        }
        acc
    }

    /// A block of 32 f16 weights as four vectors of 8 f32.
    ///
    /// # Safety
    /// `wb` holds 64 bytes; AVX2 and F16C are available.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen_f16(wb: &[u8]) -> [std::arch::x86_64::__m256; 4] {
        use std::arch::x86_64::*;
        debug_assert!(wb.len() >= F16_BYTES);
        // SAFETY: bytes 16k..16k+16 are inside the block (caller).
        std::array::from_fn(|k| unsafe {
            _mm256_cvtph_ps(_mm_loadu_si128(wb.as_ptr().add(16 * k) as *const __m128i))
        })
    }

    /// A block of 32 bf16 weights as four vectors of 8 f32 (a bf16 is the
    /// top half of an f32).
    ///
    /// # Safety
    /// `wb` holds 64 bytes; AVX2 is available.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen_bf16(wb: &[u8]) -> [std::arch::x86_64::__m256; 4] {
        use std::arch::x86_64::*;
        debug_assert!(wb.len() >= F16_BYTES);
        // SAFETY: bytes 16k..16k+16 are inside the block (caller).
        std::array::from_fn(|k| unsafe {
            let h = _mm_loadu_si128(wb.as_ptr().add(16 * k) as *const __m128i);
            _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
        })
    }

    /// A block of 32 16-bit weights widened: bf16 where `BF16`, else f16.
    ///
    /// # Safety
    /// `wb` holds 64 bytes; AVX2 and F16C are available.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn widen_half<const BF16: bool>(wb: &[u8]) -> [std::arch::x86_64::__m256; 4] {
        // SAFETY: as the caller's.
        unsafe { if BF16 { widen_bf16(wb) } else { widen_f16(wb) } }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_half_avx2<const BF16: bool>(w: &[u8], x: &Q16Row) -> f32 {
        use std::arch::x86_64::*;
        let mut acc = _mm256_setzero_ps();
        let blocks = w
            .chunks_exact(F16_BYTES)
            .zip(x.q.chunks_exact(QK))
            .zip(&x.d);
        for ((wb, q), &xd) in blocks {
            // SAFETY: wb is 64 bytes and q 32 values (chunks_exact).
            let sums = unsafe { block_f16(&widen_half::<BF16>(wb), q) };
            acc = _mm256_fmadd_ps(_mm256_set1_ps(xd), sums, acc);
        }
        // SAFETY: AVX2 is enabled for this function.
        unsafe { hsum(acc) }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_half_avx2<const BF16: bool>(w: &[u8], x: &[Q16Row; 4]) -> [f32; 4] {
        use std::arch::x86_64::*;
        let blocks = w.len() / F16_BYTES;
        assert!(
            x.iter()
                .all(|r| r.q.len() >= blocks * QK && r.d.len() >= blocks)
        );
        let mut acc = [_mm256_setzero_ps(); 4];
        for (b, wb) in w.chunks_exact(F16_BYTES).enumerate() {
            // SAFETY: wb is a whole block (chunks_exact).
            let wf = unsafe { widen_half::<BF16>(wb) };
            for i in 0..4 {
                // SAFETY: row i holds `blocks` blocks of 32 quants (asserted above).
                let sums = unsafe { block_f16(&wf, &x[i].q[b * QK..]) };
                acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(x[i].d[b]), sums, acc[i]);
            }
        }
        // SAFETY: AVX2 is enabled for this function.
        std::array::from_fn(|i| unsafe { hsum(acc[i]) })
    }

    /// A Q4_0 block's 32 weights as signed bytes (nibble − 8), in order.
    ///
    /// # Safety
    /// `wb` holds a whole Q4_0 block (18 bytes); AVX2 is available.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_0_bytes(wb: &[u8]) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        debug_assert!(wb.len() >= Q4_0_BYTES);
        let low4 = _mm_set1_epi8(0x0F);
        // SAFETY: bytes 2..18 are inside the block (caller).
        let nib = unsafe { _mm_loadu_si128(wb.as_ptr().add(2) as *const __m128i) };
        let lo = _mm_and_si128(nib, low4);
        let hi = _mm_and_si128(_mm_srli_epi16(nib, 4), low4);
        _mm256_sub_epi8(_mm256_set_m128i(hi, lo), _mm256_set1_epi8(8))
    }

    /// A Q5_0 block's 32 weights as signed bytes (5-bit value − 16), in order.
    ///
    /// # Safety
    /// `wb` holds a whole Q5_0 block (22 bytes); AVX2 is available.
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_0_bytes(wb: &[u8]) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        debug_assert!(wb.len() >= Q5_0_BYTES);
        let low4 = _mm_set1_epi8(0x0F);
        let qh = i32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
        // SAFETY: bytes 6..22 are inside the block (caller).
        let nib = unsafe { _mm_loadu_si128(wb.as_ptr().add(6) as *const __m128i) };
        let lo = _mm_and_si128(nib, low4);
        let hi = _mm_and_si128(_mm_srli_epi16(nib, 4), low4);
        let nibbles = _mm256_set_m128i(hi, lo);
        // Byte j holds byte j/8 of qh with every bit but j%8 set, so it is
        // all ones exactly when bit j of qh is.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(qh),
            _mm256_set_epi64x(
                0x0303030303030303,
                0x0202020202020202,
                0x0101010101010101,
                0,
            ),
        );
        let bit_set = _mm256_cmpeq_epi8(
            _mm256_or_si256(spread, _mm256_set1_epi64x(0x7fbfdfeff7fbfdfe)),
            _mm256_set1_epi64x(-1),
        );
        // value − 16: a nibble whose fifth bit is clear becomes nibble − 16
        // (high bits set), one whose bit is set stays the nibble.
        _mm256_or_si256(
            nibbles,
            _mm256_andnot_si256(bit_set, _mm256_set1_epi8(0xF0u8 as i8)),
        )
    }

    /// Σ over 32 pairs of signed bytes, as eight i32 lanes converted to f32
    /// (exact: each lane is at most 4 · 128 · 127).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn signed_pairs(
        w: std::arch::x86_64::__m256i,
        q: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256 {
        use std::arch::x86_64::*;
        // maddubs multiplies unsigned by signed bytes: move w's sign onto q.
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(q, w));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// A signed-byte block's 32 weights: Q5_0's when `Q5`, else Q4_0's.
    /// A const parameter rather than a function pointer, so the decoding is
    /// inlined into the kernels' loops.
    ///
    /// # Safety
    /// `wb` holds a whole block of the format; AVX2 is available.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    unsafe fn signed_values<const Q5: bool>(wb: &[u8]) -> std::arch::x86_64::__m256i {
        // SAFETY: as the caller's.
        unsafe { if Q5 { q5_0_bytes(wb) } else { q4_0_bytes(wb) } }
    }

    const fn signed_block_bytes<const Q5: bool>() -> usize {
        if Q5 { Q5_0_BYTES } else { Q4_0_BYTES }
    }

    /// One row of signed-byte blocks (Q4_0, Q5_0) · one Q8_0 activation row.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_signed_avx2<const Q5: bool>(w: &[u8], x: &Q81Row) -> f32 {
        dot_rows_signed_avx2::<Q5, 1, 1>([w], [x])[0][0]
    }

    /// One row of signed-byte blocks · four Q8_0 activation rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot4_signed_avx2<const Q5: bool>(w: &[u8], x: &[Q81Row; 4]) -> [f32; 4] {
        let [out] = dot_rows_signed_avx2::<Q5, 1, 4>([w], x.each_ref());
        out
    }

    /// `R` rows of signed-byte blocks · `N` Q8_0 activation rows: each
    /// activation block is loaded once for the `R` rows, each weight block
    /// decoded once for the `N` inputs, and the `R × N` sums are independent
    /// chains the core overlaps. Every output is summed in the same order as
    /// [`dot_signed_avx2`] sums it.
    #[target_feature(enable = "avx2,fma,f16c")]
    fn dot_rows_signed_avx2<const Q5: bool, const R: usize, const N: usize>(
        w: [&[u8]; R],
        x: [&Q81Row; N],
    ) -> [[f32; N]; R] {
        use std::arch::x86_64::*;
        let bytes = signed_block_bytes::<Q5>();
        let blocks = w[0].len() / bytes;
        assert!(w.iter().all(|r| r.len() == blocks * bytes));
        assert!(
            x.iter()
                .all(|r| r.q.len() >= blocks * QK && r.d.len() >= blocks)
        );
        let mut acc = [[_mm256_setzero_ps(); N]; R];
        for b in 0..blocks {
            let at = b * bytes;
            // Plain loops, not closures: a closure would not inherit this
            // function's target features, and the decoding would not inline.
            let mut wq = [_mm256_setzero_si256(); R];
            let mut dw = [0f32; R];
            for r in 0..R {
                // SAFETY: each row holds `blocks` whole blocks (asserted above).
                wq[r] = unsafe { signed_values::<Q5>(&w[r][at..at + bytes]) };
                dw[r] = f16_bits(w[r], at);
            }
            for i in 0..N {
                // SAFETY: row i holds `blocks` blocks of 32 quants (asserted above).
                let q =
                    unsafe { _mm256_loadu_si256(x[i].q.as_ptr().add(b * QK) as *const __m256i) };
                let dx = x[i].d[b];
                for r in 0..R {
                    acc[r][i] = _mm256_fmadd_ps(
                        _mm256_set1_ps(dw[r] * dx),
                        signed_pairs(wq[r], q),
                        acc[r][i],
                    );
                }
            }
        }
        // SAFETY: AVX2 is enabled for this function.
        std::array::from_fn(|r| std::array::from_fn(|i| unsafe { hsum(acc[r][i]) }))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4_0_avx2(w: &[u8], x: &Q81Row) -> f32 {
        dot_signed_avx2::<false>(w, x)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q5_0_avx2(w: &[u8], x: &Q81Row) -> f32 {
        dot_signed_avx2::<true>(w, x)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_q4_0_avx2(w: &[u8], x: &[Q81Row; 4]) -> [f32; 4] {
        dot4_signed_avx2::<false>(w, x)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot4_q5_0_avx2(w: &[u8], x: &[Q81Row; 4]) -> [f32; 4] {
        dot4_signed_avx2::<true>(w, x)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot2x4_q4_0_avx2(w: [&[u8]; 2], x: &[Q81Row; 4]) -> [[f32; 4]; 2] {
        dot_rows_signed_avx2::<false, 2, 4>(w, x.each_ref())
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot2x4_q5_0_avx2(w: [&[u8]; 2], x: &[Q81Row; 4]) -> [[f32; 4]; 2] {
        dot_rows_signed_avx2::<true, 2, 4>(w, x.each_ref())
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
        use std::arch::x86_64::*;
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

#[cfg(test)]
mod tests;
