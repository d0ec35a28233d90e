//! Quantized (and f16) weights × f32 activations on the CPU. Each activation
//! row is quantized to blocks of 32 integers with one scale, then every
//! output is a sum of per-block dot products:
//!
//! - Q4_1 weights take 8-bit Q8_1 activations, and Q4_0 and Q5_0 weights
//!   8-bit Q8_0 ones, quantized exactly as ggml quantizes them (the
//!   llama.cpp agreement tests hold the original SmolLM2, Qwen2.5 and
//!   Gemma 3 files to its numerics); their kernels ([`int8`]) read the
//!   weights as unsigned integers with a per-block offset term;
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
//! candle's CPU kernels for Q4_0, Q4_1 and Q5_0 are scalar and its Q8_0 one
//! runs on a second thread pool that fights rayon's for the cores; these use
//! AVX2 where the build has it (and AVX-512 where the CPU has it, for the
//! 8-bit-activation formats) and split output rows across rayon.

use half::f16;
use rayon::prelude::*;

use crate::weight_bytes::WeightBytes;

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
/// all taking the same activations, each part's bytes where they lie (a
/// model file's mapping, or the token table a tied output shares).
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    parts: Vec<Part>,
}

/// A run of rows in one format.
#[derive(Clone)]
struct Part {
    format: BlockFormat,
    first_row: usize,
    /// Its rows' blocks, rows first.
    blocks: WeightBytes,
}

impl Part {
    fn row_bytes(&self, cols: usize) -> usize {
        cols / QK * self.format.block_bytes()
    }
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
    /// From GGUF bytes of a (rows, cols) tensor, copied.
    #[cfg(test)]
    pub fn from_ggml(
        format: BlockFormat,
        bytes: &[u8],
        rows: usize,
        cols: usize,
    ) -> Result<Self, String> {
        Self::from_bytes(format, WeightBytes::owned(bytes.to_vec()), rows, cols)
    }

    /// As [`QuantMatrix::from_ggml`], reading `bytes` where they lie.
    pub(crate) fn from_bytes(
        format: BlockFormat,
        bytes: WeightBytes,
        rows: usize,
        cols: usize,
    ) -> Result<Self, String> {
        if !cols.is_multiple_of(QK) {
            return Err(format!(
                "{format:?} rows of {cols} values are not whole blocks of {QK}"
            ));
        }
        let expected = rows
            .checked_mul(cols / QK)
            .and_then(|b| b.checked_mul(format.block_bytes()));
        if expected != Some(bytes.len()) {
            return Err(format!(
                "a ({rows}, {cols}) {format:?} tensor needs {} bytes, not {}",
                expected.map_or("more than 2^64".into(), |e| e.to_string()),
                bytes.len()
            ));
        }
        Ok(Self {
            rows,
            cols,
            parts: vec![Part {
                format,
                first_row: 0,
                blocks: bytes,
            }],
        })
    }

    /// Every weight as f32, rows first: for a product with many input rows
    /// (an encoder's batch), where a float GEMM on the decoded matrix beats
    /// the dot-product kernels. candle's dequantizers decode the blocks.
    pub(crate) fn dequantize(&self) -> candle_core::Result<Vec<f32>> {
        use candle_core::quantized::{GgmlDType, QStorage, QTensor};
        use std::borrow::Cow;
        let mut out = vec![0f32; self.rows * self.cols];
        for (p, part) in self.parts.iter().enumerate() {
            let dtype = match part.format {
                BlockFormat::Q4_0 => GgmlDType::Q4_0,
                BlockFormat::Q4_1 => GgmlDType::Q4_1,
                BlockFormat::Q5_0 => GgmlDType::Q5_0,
                BlockFormat::Q8_0 => GgmlDType::Q8_0,
                BlockFormat::F16 => GgmlDType::F16,
                BlockFormat::BF16 => GgmlDType::BF16,
            };
            let rows = self.part_rows(p);
            let row_bytes = part.row_bytes(self.cols);
            let per_task = (16_384 / self.cols).max(1);
            out[rows.start * self.cols..rows.end * self.cols]
                .par_chunks_mut(per_task * self.cols)
                .zip(part.blocks.par_chunks(per_task * row_bytes))
                .try_for_each(|(dst, src)| {
                    // candle reads blocks in place: 2-byte aligned for their
                    // f16 scales (always so in a GGUF mapping; copied if not).
                    let src: Cow<[u8]> = if (src.as_ptr() as usize).is_multiple_of(2) {
                        Cow::Borrowed(src)
                    } else {
                        Cow::Owned(src.to_vec())
                    };
                    let storage = QStorage::from_data(src, &candle_core::Device::Cpu, dtype)?;
                    let q = QTensor::new(storage, (dst.len() / self.cols, self.cols))?;
                    let values = q.dequantize(&candle_core::Device::Cpu)?.flatten_all()?;
                    dst.copy_from_slice(&values.to_vec1::<f32>()?);
                    Ok::<(), candle_core::Error>(())
                })?;
        }
        Ok(out)
    }

    pub fn cols(&self) -> usize {
        self.cols
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
        let (mut rows, mut parts) = (0, Vec::new());
        for m in matrices {
            for p in m.parts {
                parts.push(Part {
                    first_row: rows + p.first_row,
                    ..p
                });
            }
            rows += m.rows;
        }
        Some(QuantMatrix { rows, cols, parts })
    }

    /// The activations every part takes (one kind: `stack` checks).
    fn activations(&self) -> Activations {
        self.parts[0].format.activations()
    }

    /// `x` is `n` rows of `cols` values; returns `n` rows of `rows` values.
    pub fn matmul(&self, x: &[f32], n: usize) -> Vec<f32> {
        assert_eq!(x.len(), n * self.cols, "activation shape");
        match self.activations() {
            Activations::Q8_1 => self.times_int8(&int8::Q8Inputs::quantize(x, n, self.cols)),
            Activations::Q16 => {
                let rows: Vec<Q16Row> = x.chunks_exact(self.cols).map(quantize_q16).collect();
                if n == 1 {
                    return self.column_q16(&rows[0]);
                }
                self.times(&rows, |format| match format {
                    BlockFormat::F16 => Kernels {
                        dot: dot_f16,
                        dot4: dot4_f16,
                    },
                    BlockFormat::BF16 => Kernels {
                        dot: dot_bf16,
                        dot4: dot4_bf16,
                    },
                    _ => Kernels {
                        dot: dot_q8_0,
                        dot4: dot4_q8_0,
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
        let start = (row - part.first_row) * row_bytes;
        (part, &part.blocks[start..start + row_bytes])
    }

    /// The rows of part `p`.
    fn part_rows(&self, p: usize) -> std::ops::Range<usize> {
        let end = self
            .parts
            .get(p + 1)
            .map_or(self.rows, |next| next.first_row);
        self.parts[p].first_row..end
    }

    /// Rows per parallel task: four tasks a thread, whole tiles of four.
    fn rows_per_task(&self) -> usize {
        (self.rows / (rayon::current_num_threads() * 4)).max(16) & !3
    }

    /// Every weight row (Q4_0, Q5_0, Q4_1) · every 8-bit input row, in
    /// tiles of rows (four on AVX-512, two on AVX2) × a group of inputs: the
    /// rows' blocks are decoded once per group, each input block loaded once
    /// for all the tile's rows. A task
    /// takes a range of rows for every input, so each weight row is read
    /// from memory once, and writes its outputs in place.
    fn times_int8(&self, x: &int8::Q8Inputs) -> Vec<f32> {
        let (n, rows) = (x.rows(), self.rows);
        let mut out = vec![0f32; n * rows];
        if n == 1 {
            self.column_int8(x.group(0), &mut out);
            return out;
        }
        let sink = Sink {
            out: out.as_mut_ptr(),
            rows,
        };
        let (per_task, isa) = (self.rows_per_task(), int8::Isa::best());
        (0..rows.div_ceil(per_task))
            .into_par_iter()
            .for_each(|task| {
                let mine = task * per_task..rows.min((task + 1) * per_task);
                for p in 0..self.parts.len() {
                    let part_rows = self.part_rows(p);
                    let range = mine.start.max(part_rows.start)..mine.end.min(part_rows.end);
                    let format = self.parts[p].format;
                    let mut r = range.start;
                    while r < range.end {
                        // The tallest tile that fits: its rows' blocks are
                        // decoded once per group.
                        let tallest = isa.tile_rows();
                        let take = [4, 2, 1]
                            .into_iter()
                            .find(|&t| t <= tallest.min(range.end - r))
                            .expect("a row is left");
                        let w: [&[u8]; 4] =
                            std::array::from_fn(|k| self.row(r + k.min(take - 1)).1);
                        for g in 0..x.groups() {
                            let group = x.group(g);
                            let (first, width) = (g * int8::GROUP, group.width);
                            let emit = |outputs: &[[f32; int8::GROUP]]| {
                                for (k, o) in outputs.iter().enumerate() {
                                    for (i, &v) in o[..width].iter().enumerate() {
                                        // SAFETY: this task alone writes rows
                                        // `mine` (r + k is one) of every input.
                                        unsafe { sink.set(first + i, r + k, v) };
                                    }
                                }
                            };
                            match take {
                                4 => emit(&int8_tile::<4>(isa, format, w, group)),
                                2 => emit(&int8_tile::<2>(isa, format, [w[0], w[1]], group)),
                                _ => emit(&int8_tile::<1>(isa, format, [w[0]], group)),
                            }
                        }
                        r += take;
                    }
                }
            });
        out
    }

    /// Every weight row · one 8-bit input (a decode step).
    fn column_int8(&self, x: int8::Q8Group<'_>, out: &mut [f32]) {
        let isa = int8::Isa::best();
        self.runs(out, |format, w, out| match format {
            BlockFormat::Q4_0 => int8::column::<{ int8::Q4_0 }>(isa, w, x, out),
            BlockFormat::Q5_0 => int8::column::<{ int8::Q5_0 }>(isa, w, x, out),
            BlockFormat::Q4_1 => int8::column::<{ int8::Q4_1 }>(isa, w, x, out),
            other => unreachable!("{other:?} takes 16-bit activations"),
        });
    }

    /// Every weight row · one 16-bit input (a decode step).
    fn column_q16(&self, x: &Q16Row) -> Vec<f32> {
        let mut out = vec![0f32; self.rows];
        let row_bytes = |format: BlockFormat| self.cols / QK * format.block_bytes();
        self.runs(&mut out, |format, w, out| {
            column_q16(format, w, row_bytes(format), x, out)
        });
        out
    }

    /// Splits the outputs of one input across tasks and calls `run` with
    /// each task's rows of one part: their format, their bytes and their
    /// outputs. One kernel call for a run of rows, not one per row: a call
    /// per row of 28 blocks cost a decode step 15% on Qwen2.5.
    fn runs(&self, out: &mut [f32], run: impl Fn(BlockFormat, &[u8], &mut [f32]) + Sync) {
        let per_task = self.rows_per_task();
        out.par_chunks_mut(per_task)
            .enumerate()
            .for_each(|(task, out)| {
                let mine = task * per_task..task * per_task + out.len();
                for p in 0..self.parts.len() {
                    let part_rows = self.part_rows(p);
                    let range = mine.start.max(part_rows.start)..mine.end.min(part_rows.end);
                    if range.is_empty() {
                        continue;
                    }
                    let part = &self.parts[p];
                    let row_bytes = part.row_bytes(self.cols);
                    let first = (range.start - part.first_row) * row_bytes;
                    let w = &part.blocks[first..first + range.len() * row_bytes];
                    run(
                        part.format,
                        w,
                        &mut out[range.start - mine.start..range.end - mine.start],
                    );
                }
            });
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
        let per_task = self.rows_per_task();
        by_row
            .par_chunks_mut(per_task * n)
            .enumerate()
            .for_each(|(chunk, out)| {
                let first = chunk * per_task;
                for (r, out_row) in out.chunks_exact_mut(n).enumerate() {
                    let (part, w) = self.row(first + r);
                    let k = kernels(part.format);
                    // Four inputs per pass over the weight row: its blocks are
                    // unpacked once for all four (prompts, batches).
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

/// `R` rows of an 8-bit-activation format · one group of inputs.
fn int8_tile<const R: usize>(
    isa: int8::Isa,
    format: BlockFormat,
    w: [&[u8]; R],
    x: int8::Q8Group<'_>,
) -> [[f32; int8::GROUP]; R] {
    match format {
        BlockFormat::Q4_0 => int8::tile::<{ int8::Q4_0 }, R>(isa, w, x),
        BlockFormat::Q5_0 => int8::tile::<{ int8::Q5_0 }, R>(isa, w, x),
        BlockFormat::Q4_1 => int8::tile::<{ int8::Q4_1 }, R>(isa, w, x),
        other => unreachable!("{other:?} takes 16-bit activations"),
    }
}

/// The output of a matmul, `n` inputs × `rows` outputs, written by tasks
/// that each own a range of rows across every input.
struct Sink {
    out: *mut f32,
    rows: usize,
}

// SAFETY: tasks write disjoint elements (each owns its rows), and the
// buffer outlives them (`times_int8` joins its tasks before returning it).
unsafe impl Sync for Sink {}

impl Sink {
    /// # Safety
    /// `input` and `row` are inside the output, and no other task writes
    /// this row.
    unsafe fn set(&self, input: usize, row: usize, v: f32) {
        // SAFETY: inside the buffer and owned by the caller (above).
        unsafe { *self.out.add(input * self.rows + row) = v };
    }
}

/// One format's kernels.
struct Kernels<R> {
    dot: Dot<R>,
    dot4: Dot4<R>,
}

/// One weight row · one quantized input row.
type Dot<R> = fn(&[u8], &R) -> f32;
/// One weight row · four quantized input rows.
type Dot4<R> = fn(&[u8], &[R; 4]) -> [f32; 4];

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
        #[cfg(x86_v3)]
        {
            // SAFETY: the target features are enabled for this build, and every
            // activation row holds as many whole blocks as the weight row
            // (checked in `from_ggml` and `matmul`).
            unsafe { avx2::$avx2 $(::<$generic>)? ($($arg),*) }
        }
        #[cfg(not(x86_v3))]
        {
            $scalar
        }
    }};
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

/// Each row of `w` (rows of `row_bytes`, in a 16-bit-activation format) ·
/// one 16-bit input: `out[r]`, as the one-row kernels give it.
fn column_q16(format: BlockFormat, w: &[u8], row_bytes: usize, x: &Q16Row, out: &mut [f32]) {
    assert_eq!(w.len(), out.len() * row_bytes, "a run of whole rows");
    match format {
        BlockFormat::F16 => simd_or_scalar!(
            column_q16_avx2::<{ avx2::F16 }>(w, row_bytes, x, out),
            rows_scalar(w, row_bytes, out, |row| scalar::dot_f16_scalar(row, x))
        ),
        BlockFormat::BF16 => simd_or_scalar!(
            column_q16_avx2::<{ avx2::BF16 }>(w, row_bytes, x, out),
            rows_scalar(w, row_bytes, out, |row| scalar::dot_bf16_scalar(row, x))
        ),
        _ => simd_or_scalar!(
            column_q16_avx2::<{ avx2::Q8_0 }>(w, row_bytes, x, out),
            rows_scalar(w, row_bytes, out, |row| scalar::dot_q8_0_scalar(row, x))
        ),
    }
}

#[cfg_attr(x86_v3, allow(dead_code))]
fn rows_scalar(w: &[u8], row_bytes: usize, out: &mut [f32], dot: impl Fn(&[u8]) -> f32) {
    for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
        *o = dot(row);
    }
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
#[cfg_attr(x86_v3, allow(dead_code))]
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
}

/// The AVX2 kernels (the build enables AVX2, FMA and F16C for x86-64-v3:
/// .cargo/config.toml).
#[cfg(x86_v3)]
mod avx2 {
    use super::*;

    /// [`column_q16_avx2`]'s formats.
    pub(super) const Q8_0: u8 = 0;
    pub(super) const F16: u8 = 1;
    pub(super) const BF16: u8 = 2;

    /// Each row of `w` · one 16-bit input, in one call.
    ///
    /// # Safety
    /// `w` is whole rows of `row_bytes` in format `KIND`, each as wide as
    /// `x`; AVX2, FMA and F16C are available.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn column_q16_avx2<const KIND: u8>(
        w: &[u8],
        row_bytes: usize,
        x: &Q16Row,
        out: &mut [f32],
    ) {
        for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
            // SAFETY: as the caller's.
            *o = unsafe {
                match KIND {
                    Q8_0 => dot_q8_0_avx2(row, x),
                    F16 => dot_half_avx2::<false>(row, x),
                    _ => dot_half_avx2::<true>(row, x),
                }
            };
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
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
    #[inline]
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

    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: std::arch::x86_64::__m256) -> f32 {
        use std::arch::x86_64::*;
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }
}

mod int8;

#[cfg(test)]
mod tests;
