//! Q4_0, Q5_0 and Q4_1 weights × 8-bit activations.
//!
//! Every weight is read as an unsigned integer `u` (the nibble, or the
//! nibble and fifth bit) with a per-block scale `dw` and a per-block term
//! `m` that each activation block's `d·Σq` is multiplied by: Q4_1's value
//! is `dw·u + min`, so `m = min`; Q4_0's is `dw·(u − 8)`, so `m = −8·dw`;
//! Q5_0's `dw·(u − 16)`, so `m = −16·dw`. A block's dot product is then
//! `dw·dx·Σ u·q + m·(dx·Σq)`: one `maddubs` of unsigned weights by signed
//! activations, with no sign juggling per input, and the offset term a
//! single multiply-add per row and block for four inputs at once.
//!
//! Activations are ggml's `quantize_row_q8_1` blocks (Q8_0's quants and
//! scales for Q4_0 and Q5_0), laid out in groups of up to four input rows
//! interleaved block by block ([`Q8Inputs`]), so a tile of rows × inputs
//! reads its inputs as one stream.

use half::f16;

use super::{Q4_0_BYTES, Q4_1_BYTES, Q5_0_BYTES, QK, f16_bits};

/// Formats of this module, as const parameters of the kernels (so the
/// decoding is inlined into their loops).
pub(super) const Q4_0: u8 = 0;
pub(super) const Q5_0: u8 = 1;
pub(super) const Q4_1: u8 = 2;

/// Input rows per group.
pub(super) const GROUP: usize = 4;

const fn block_bytes(format: u8) -> usize {
    match format {
        Q4_0 => Q4_0_BYTES,
        Q5_0 => Q5_0_BYTES,
        _ => Q4_1_BYTES,
    }
}

/// Input rows quantized to 8-bit blocks, in groups of [`GROUP`] rows (the
/// last may hold fewer): block `b` of a group of `w` rows keeps the rows'
/// `w` scales, terms and `w × 32` quants side by side.
pub(super) struct Q8Inputs {
    n: usize,
    blocks: usize,
    d: Vec<f32>,
    /// `d·Σq` exactly, the term of the offset formats (Q4_0, Q5_0).
    sum: Vec<f32>,
    /// `d·Σq` rounded through f16, as ggml's Q8_1 block stores it: Q4_1's.
    s: Vec<f32>,
    q: Vec<i8>,
}

/// One group of [`Q8Inputs`]: `width` rows, interleaved by block.
#[derive(Clone, Copy)]
pub(super) struct Q8Group<'a> {
    pub(super) width: usize,
    d: &'a [f32],
    sum: &'a [f32],
    s: &'a [f32],
    q: &'a [i8],
}

impl Q8Group<'_> {
    /// The per-block terms format `F`'s offset multiplies: Q4_1's f16-rounded
    /// `d·Σq` (as ggml's Q8_1 stores it), the exact one for Q4_0 and Q5_0.
    fn terms<const F: u8>(&self) -> &[f32] {
        if F == Q4_1 { self.s } else { self.sum }
    }
}

impl Q8Inputs {
    /// `x` is `n` rows of `cols` values, `cols` whole blocks.
    ///
    /// Each block is scaled by its largest magnitude to ±127, rounding half
    /// away from zero (`roundf`; ties to even agreed with llama.cpp on fewer
    /// greedy steps), with the scale rounded through f16 as ggml stores it.
    pub(super) fn quantize(x: &[f32], n: usize, cols: usize) -> Self {
        assert_eq!(x.len(), n * cols, "activation shape");
        let blocks = cols / QK;
        let mut inputs = Self {
            n,
            blocks,
            d: vec![0.0; n * blocks],
            sum: vec![0.0; n * blocks],
            s: vec![0.0; n * blocks],
            q: vec![0; n * cols],
        };
        for (row, values) in x.chunks_exact(cols).enumerate() {
            let (group, i) = (row / GROUP, row % GROUP);
            let width = GROUP.min(n - group * GROUP);
            let first = group * GROUP * blocks;
            for (b, block) in values.chunks_exact(QK).enumerate() {
                let at = first + b * width + i;
                let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
                let exact = amax / 127.0;
                let id = if exact != 0.0 { 1.0 / exact } else { 0.0 };
                let quants = &mut inputs.q[at * QK..(at + 1) * QK];
                let mut total = 0i32;
                for (q, &v) in quants.iter_mut().zip(block) {
                    *q = (v * id).round() as i8;
                    total += *q as i32;
                }
                let d = f16::from_f32(exact).to_f32();
                inputs.d[at] = d;
                inputs.sum[at] = d * total as f32;
                inputs.s[at] = f16::from_f32(total as f32 * exact).to_f32();
            }
        }
        inputs
    }

    pub(super) fn rows(&self) -> usize {
        self.n
    }

    /// Row `i`'s scales, quants and Q4_1 terms, de-interleaved.
    #[cfg(test)]
    pub(super) fn row(&self, i: usize) -> (Vec<f32>, Vec<i8>, Vec<f32>) {
        let group = self.group(i / GROUP);
        let (w, k) = (group.width, i % GROUP);
        let at = |b: usize| b * w + k;
        let d = (0..self.blocks).map(|b| group.d[at(b)]).collect();
        let s = (0..self.blocks).map(|b| group.s[at(b)]).collect();
        let q = (0..self.blocks)
            .flat_map(|b| group.q[at(b) * QK..(at(b) + 1) * QK].to_vec())
            .collect();
        (d, q, s)
    }

    pub(super) fn groups(&self) -> usize {
        self.n.div_ceil(GROUP)
    }

    /// Group `g`: rows `GROUP·g ..`.
    pub(super) fn group(&self, g: usize) -> Q8Group<'_> {
        let width = GROUP.min(self.n - g * GROUP);
        let (first, len) = (g * GROUP * self.blocks, width * self.blocks);
        Q8Group {
            width,
            d: &self.d[first..first + len],
            sum: &self.sum[first..first + len],
            s: &self.s[first..first + len],
            q: &self.q[first * QK..(first + len) * QK],
        }
    }
}

/// The kernels a CPU can run, best last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Isa {
    Scalar,
    Avx2,
    Avx512,
}

impl Isa {
    /// The kernels this CPU runs: AVX2 where the build has it (x86-64-v3,
    /// .cargo/config.toml), AVX-512 where the CPU also has it (checked once).
    pub(super) fn available() -> Vec<Isa> {
        let mut isas = vec![Isa::Scalar];
        if cfg!(x86_v3) {
            isas.push(Isa::Avx2);
            #[cfg(x86_v3)]
            if avx512::available() {
                isas.push(Isa::Avx512);
            }
        }
        isas
    }

    pub(super) fn best() -> Isa {
        static BEST: std::sync::OnceLock<Isa> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| *Isa::available().last().expect("scalar is always there"))
    }

    /// Weight rows per tile for prompts and batches: four where AVX-512's
    /// 32 registers hold the 16 sums, else two.
    pub(super) fn tile_rows(self) -> usize {
        if self == Isa::Avx512 { 4 } else { 2 }
    }
}

/// `$call` on `$isa`'s kernels: the `scalar`, `avx2` or `avx512` module's
/// function of that name.
///
/// SAFETY (of the SIMD arms): the build enables AVX2, FMA and F16C, AVX-512
/// is asserted present before its kernels run, and the callers assert that
/// the rows and the inputs hold the `blocks` whole blocks the kernels read.
macro_rules! on_isa {
    ($isa:expr, $($call:tt)*) => {
        match $isa {
            Isa::Scalar => scalar::$($call)*,
            #[cfg(x86_v3)]
            Isa::Avx2 => unsafe { avx2::$($call)* },
            #[cfg(x86_v3)]
            Isa::Avx512 => {
                assert!(avx512::available(), "AVX-512 kernels on a CPU without them");
                unsafe { avx512::$($call)* }
            }
            #[allow(unreachable_patterns)]
            other => unreachable!("{other:?} kernels are not in this build"),
        }
    };
}

/// `R` weight rows of `format` · a group's inputs on `isa` (one of
/// [`Isa::available`]): `out[r][i]` for input `i < group.width`. Every
/// output is summed in the same order whatever `R`, the group's width and
/// the SIMD kernel, so a batched prompt scores as its sequences would alone.
#[inline]
pub(super) fn tile<const F: u8, const R: usize>(
    isa: Isa,
    w: [&[u8]; R],
    x: Q8Group<'_>,
) -> [[f32; GROUP]; R] {
    macro_rules! widths {
        ($($n:literal)*) => {
            match x.width {
                $($n => widen(tile_n::<F, R, $n>(isa, w, x)),)*
                _ => unreachable!("groups hold 1 to {GROUP} rows"),
            }
        };
    }
    widths!(1 2 3 4)
}

#[inline]
fn widen<const R: usize, const N: usize>(out: [[f32; N]; R]) -> [[f32; GROUP]; R] {
    out.map(|row| std::array::from_fn(|i| if i < N { row[i] } else { 0.0 }))
}

#[inline]
fn tile_n<const F: u8, const R: usize, const N: usize>(
    isa: Isa,
    w: [&[u8]; R],
    x: Q8Group<'_>,
) -> [[f32; N]; R] {
    let bytes = block_bytes(F);
    let blocks = w[0].len() / bytes;
    assert!(
        w.iter().all(|r| r.len() == blocks * bytes),
        "weight rows of one width"
    );
    assert!(
        x.width == N && x.d.len() == blocks * N && x.q.len() == blocks * N * QK,
        "a group of {N} inputs as wide as the weight rows"
    );
    on_isa!(isa, tile::<F, R, N>(w, x.d, x.terms::<F>(), x.q, blocks))
}

/// `out.len()` weight rows of `format`, one after another in `w`, · a group
/// of one input (a decode step): what [`tile`] gives for each row alone, in
/// one call.
pub(super) fn column<const F: u8>(isa: Isa, w: &[u8], x: Q8Group<'_>, out: &mut [f32]) {
    let blocks = x.d.len();
    assert!(
        x.width == 1 && x.q.len() == blocks * QK && w.len() == out.len() * blocks * block_bytes(F),
        "one input as wide as the weight rows"
    );
    on_isa!(isa, column::<F>(w, x.d, x.terms::<F>(), x.q, blocks, out))
}

/// A block's weights as unsigned integers, its scale `dw` and its term `m`
/// (see the module's note). Scalar reading, for the tests and for builds
/// without AVX2.
pub(super) fn unsigned_block<const F: u8>(wb: &[u8]) -> ([u8; QK], f32, f32) {
    let dw = f16_bits(wb, 0);
    let nibble = |nibbles: &[u8], j: usize| {
        let byte = nibbles[j % (QK / 2)];
        if j < QK / 2 { byte & 0x0F } else { byte >> 4 }
    };
    match F {
        Q4_0 => (std::array::from_fn(|j| nibble(&wb[2..], j)), dw, -8.0 * dw),
        Q5_0 => {
            let qh = u32::from_le_bytes([wb[2], wb[3], wb[4], wb[5]]);
            let u = std::array::from_fn(|j| nibble(&wb[6..], j) | (((qh >> j) & 1) as u8) << 4);
            (u, dw, -16.0 * dw)
        }
        _ => (
            std::array::from_fn(|j| nibble(&wb[4..], j)),
            dw,
            f16_bits(wb, 2),
        ),
    }
}

mod scalar {
    use super::*;

    /// The formula the AVX2 tile computes, per output: the blocks' integer
    /// sums scaled by both scales, plus the terms.
    pub(super) fn tile<const F: u8, const R: usize, const N: usize>(
        w: [&[u8]; R],
        d: &[f32],
        terms: &[f32],
        q: &[i8],
        blocks: usize,
    ) -> [[f32; N]; R] {
        let bytes = block_bytes(F);
        std::array::from_fn(|r| {
            std::array::from_fn(|i| {
                let (mut sum, mut offsets) = (0f32, 0f32);
                for b in 0..blocks {
                    let (u, dw, m) = unsigned_block::<F>(&w[r][b * bytes..(b + 1) * bytes]);
                    let at = b * N + i;
                    let quants = &q[at * QK..(at + 1) * QK];
                    let sumi: i32 = u
                        .iter()
                        .zip(quants)
                        .map(|(&u, &q)| u as i32 * q as i32)
                        .sum();
                    sum += dw * d[at] * sumi as f32;
                    offsets += m * terms[at];
                }
                sum + offsets
            })
        })
    }

    /// Each row of `w` · one input, as [`tile`] with `R = N = 1` gives it.
    pub(super) fn column<const F: u8>(
        w: &[u8],
        d: &[f32],
        terms: &[f32],
        q: &[i8],
        blocks: usize,
        out: &mut [f32],
    ) {
        let row_bytes = blocks * block_bytes(F);
        for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
            *o = tile::<F, 1, 1>([row], d, terms, q, blocks)[0][0];
        }
    }
}

/// The kernels both instruction sets share, compiled for `$features`; a
/// module using it defines `fifth_bits` and `dot_u8_i8`.
macro_rules! shared_kernels {
    ($features:literal) => {
        /// A block's 32 weights as unsigned bytes, its scale and its term.
        ///
        /// # Safety
        /// `wb` holds a whole block of format `F`; AVX2 is available.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn unsigned_block<const F: u8>(wb: *const u8) -> (__m256i, f32, f32) {
            // SAFETY (here and at each `nibbles` below): the block starts
            // with its f16 scale, and its 16 nibble bytes start at the offset
            // given (caller: a whole block of format F).
            let dw = unsafe { f16::from_bits(u16::from_le_bytes([*wb, *wb.add(1)])).to_f32() };
            match F {
                Q4_0 => (unsafe { nibbles(wb.add(2)) }, dw, -8.0 * dw),
                Q5_0 => {
                    // SAFETY: bytes 2..6 are the fifth bits (caller).
                    let qh = unsafe { (wb.add(2) as *const i32).read_unaligned() };
                    let fifth = fifth_bits(qh);
                    (
                        _mm256_or_si256(unsafe { nibbles(wb.add(6)) }, fifth),
                        dw,
                        -16.0 * dw,
                    )
                }
                _ => {
                    // SAFETY: the minimum follows the scale (caller).
                    let min =
                        unsafe { f16::from_bits(u16::from_le_bytes([*wb.add(2), *wb.add(3)])) };
                    (unsafe { nibbles(wb.add(4)) }, dw, min.to_f32())
                }
            }
        }

        /// The sum of `v`'s lanes.
        #[target_feature(enable = $features)]
        #[inline]
        fn hsum(v: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
            _mm_cvtss_f32(s)
        }

        /// 16 bytes of nibbles at `p` as 32 bytes: the low nibbles, then the high.
        ///
        /// # Safety
        /// `p` points at 16 bytes; AVX2 is available.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn nibbles(p: *const u8) -> __m256i {
            let low4 = _mm_set1_epi8(0x0F);
            // SAFETY: 16 bytes (caller).
            let nib = unsafe { _mm_loadu_si128(p as *const __m128i) };
            let lo = _mm_and_si128(nib, low4);
            let hi = _mm_and_si128(_mm_srli_epi16(nib, 4), low4);
            _mm256_set_m128i(hi, lo)
        }

        /// `N` of a group's values at `p`, zeros after them.
        ///
        /// # Safety
        /// `p` points at `N ≤ 4` floats; AVX is available.
        #[target_feature(enable = $features)]
        #[inline]
        unsafe fn load_n<const N: usize>(p: *const f32) -> __m128 {
            // Loads of exactly N floats: a wider load of a copy in a stack
            // array stalls on store forwarding, once a block.
            // SAFETY: N floats at p (caller).
            unsafe {
                // `movq` for two floats: `p` is only 4-byte aligned, and
                // `_mm_load_sd` reads through an aligned `*const f64`.
                let two = || _mm_castsi128_ps(_mm_loadl_epi64(p as *const __m128i));
                match N {
                    1 => _mm_load_ss(p),
                    2 => two(),
                    3 => _mm_movelh_ps(two(), _mm_load_ss(p.add(2))),
                    _ => _mm_loadu_ps(p),
                }
            }
        }

        /// `R` weight rows · `N` interleaved inputs (see [`super::tile`]): each
        /// weight block is decoded once for the `N` inputs, each input block
        /// loaded once for the `R` rows; the `R × N` sums are independent chains.
        ///
        /// # Safety
        /// Each row holds `blocks` blocks of format `F`; `d` and `terms` hold
        /// `blocks · N` values and `q` `blocks · N · 32`; AVX2, FMA and F16C are
        /// available.
        #[target_feature(enable = $features)]
        #[inline]
        pub(super) unsafe fn tile<const F: u8, const R: usize, const N: usize>(
            w: [&[u8]; R],
            d: &[f32],
            terms: &[f32],
            q: &[i8],
            blocks: usize,
        ) -> [[f32; N]; R] {
            let bytes = block_bytes(F);
            let mut acc = [[_mm256_setzero_ps(); N]; R];
            let mut offsets = [_mm_setzero_ps(); R];
            for b in 0..blocks {
                // SAFETY: block b's N scales and terms (caller).
                let (dx, t) = unsafe {
                    (
                        load_n::<N>(d.as_ptr().add(b * N)),
                        load_n::<N>(terms.as_ptr().add(b * N)),
                    )
                };
                let mut u = [_mm256_setzero_si256(); R];
                let mut scales = [_mm256_setzero_ps(); R];
                for r in 0..R {
                    // SAFETY: block b of row r (caller).
                    let (ur, dw, m) = unsafe { unsigned_block::<F>(w[r].as_ptr().add(b * bytes)) };
                    u[r] = ur;
                    let s = _mm_mul_ps(_mm_set1_ps(dw), dx);
                    scales[r] = _mm256_set_m128(s, s);
                    offsets[r] = _mm_fmadd_ps(_mm_set1_ps(m), t, offsets[r]);
                }
                for i in 0..N {
                    // SAFETY: block b of input i (caller).
                    let qi = unsafe {
                        _mm256_loadu_si256(q.as_ptr().add((b * N + i) * QK) as *const __m256i)
                    };
                    let lane = _mm256_set1_epi32(i as i32);
                    for r in 0..R {
                        let dot = dot_u8_i8(u[r], qi);
                        acc[r][i] = _mm256_fmadd_ps(
                            _mm256_permutevar_ps(scales[r], lane),
                            _mm256_cvtepi32_ps(dot),
                            acc[r][i],
                        );
                    }
                }
            }
            std::array::from_fn(|r| {
                let mut o = [0f32; 4];
                // SAFETY: `o` is four floats.
                unsafe { _mm_storeu_ps(o.as_mut_ptr(), offsets[r]) };
                std::array::from_fn(|i| hsum(acc[r][i]) + o[i])
            })
        }

        /// Each row of `w` (`out.len()` rows of `blocks` blocks) · one input,
        /// the decode step's product: one call for a run of rows, each summed
        /// as [`tile`] sums it.
        ///
        /// # Safety
        /// As [`tile`]'s with `R = N = 1`, for every row.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn column<const F: u8>(
            w: &[u8],
            d: &[f32],
            terms: &[f32],
            q: &[i8],
            blocks: usize,
            out: &mut [f32],
        ) {
            let row_bytes = blocks * block_bytes(F);
            for (o, row) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
                // SAFETY: as the caller's.
                *o = unsafe { tile::<F, 1, 1>([row], d, terms, q, blocks) }[0][0];
            }
        }
    };
}

/// AVX2: the fifth bits spread by a shuffle and a compare, the products
/// summed by `maddubs` and `madd`.
#[cfg(x86_v3)]
mod avx2 {
    use std::arch::x86_64::*;

    use super::*;

    shared_kernels!("avx2,fma,f16c");

    /// Bit j of `qh` as 0x10 in byte j.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn fifth_bits(qh: i32) -> __m256i {
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
        _mm256_and_si256(bit_set, _mm256_set1_epi8(0x10))
    }

    /// Σ of each four products of unsigned `u` and signed `q` bytes, in i32
    /// lanes. u ≤ 31 and |q| ≤ 127: a pair of products stays far inside the
    /// i16 that `maddubs` saturates at.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    fn dot_u8_i8(u: __m256i, q: __m256i) -> __m256i {
        _mm256_madd_epi16(_mm256_maddubs_epi16(u, q), _mm256_set1_epi16(1))
    }
}

/// AVX-512 (with VNNI and 256-bit forms), chosen at run time: the fifth
/// bits are a mask, the products one `vpdpbusd`, and 32 vector registers
/// hold a tile of four rows × four inputs. The integer lanes are the AVX2
/// kernel's, so both give the same outputs.
#[cfg(x86_v3)]
mod avx512 {
    use std::arch::x86_64::*;

    use super::*;

    shared_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");

    /// Whether this CPU runs these kernels.
    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512vnni")
    }

    /// Bit j of `qh` as 0x10 in byte j.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn fifth_bits(qh: i32) -> __m256i {
        _mm256_maskz_mov_epi8(qh as u32, _mm256_set1_epi8(0x10))
    }

    /// Σ of each four products of unsigned `u` and signed `q` bytes, in i32
    /// lanes.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
    #[inline]
    fn dot_u8_i8(u: __m256i, q: __m256i) -> __m256i {
        _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, q)
    }
}
