//! Kernel tests: SIMD against scalar, both against exact arithmetic.

use super::*;
use proptest::prelude::*;

/// Builds Q4_1 bytes for given scales, minimums and nibbles.
fn block(d: f32, m: f32, nibbles: &[u8; 32]) -> Vec<u8> {
    let mut b = Vec::with_capacity(Q4_1_BYTES);
    b.extend(f16::from_f32(d).to_bits().to_le_bytes());
    b.extend(f16::from_f32(m).to_bits().to_le_bytes());
    for j in 0..16 {
        b.push(nibbles[j] | (nibbles[j + 16] << 4));
    }
    b
}

fn dequantize(w: &[u8]) -> Vec<f32> {
    let mut out = Vec::new();
    for wb in w.chunks_exact(Q4_1_BYTES) {
        let (d, m) = (f16_bits(wb, 0), f16_bits(wb, 2));
        let mut vals = [0f32; 32];
        for j in 0..16 {
            vals[j] = (wb[4 + j] & 0x0F) as f32 * d + m;
            vals[j + 16] = (wb[4 + j] >> 4) as f32 * d + m;
        }
        out.extend(vals);
    }
    out
}

/// One weight row · one input row through the 8-bit-activation kernels
/// on `isa`.
fn int8_dot(isa: int8::Isa, format: BlockFormat, w: &[u8], x: &[f32]) -> f32 {
    let q = int8::Q8Inputs::quantize(x, 1, x.len());
    int8_tile::<1>(isa, format, [w], q.group(0))[0][0]
}

proptest! {
    /// The SIMD kernel equals the scalar formula, and both stay within the
    /// error Q8_1 allows of the exact float dot product: half a quantum per
    /// activation, plus the f16 rounding of the scales and of `s`.
    #[test]
    fn q4_1_matches_the_float_dot_within_q8_1_error(
        scales in prop::collection::vec((0.001f32..0.1, -1f32..1.0), 1..6),
        nibbles in prop::collection::vec(0u8..16, 32 * 6),
        x in prop::collection::vec(-4f32..4.0, 32 * 6),
    ) {
        let blocks = scales.len();
        let mut w = Vec::new();
        for (b, (d, m)) in scales.iter().enumerate() {
            w.extend(block(*d, *m, nibbles[b * 32..(b + 1) * 32].try_into().unwrap()));
        }
        let x = &x[..blocks * 32];
        let fast = int8_dot(int8::Isa::best(), BlockFormat::Q4_1, &w, x);
        let scalar = int8_dot(int8::Isa::Scalar, BlockFormat::Q4_1, &w, x);
        prop_assert!((fast - scalar).abs() <= 1e-4 * (1.0 + scalar.abs()), "{fast} vs {scalar}");
        let wd = dequantize(&w);
        let float: f64 = wd.iter().zip(x).map(|(a, b)| *a as f64 * *b as f64).sum();
        let mut bound = 1e-3;
        for b in 0..blocks {
            let amax = x[b * 32..(b + 1) * 32].iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            let wsum: f64 = wd[b * 32..(b + 1) * 32].iter().map(|v| v.abs() as f64).sum();
            // quantization of x, then f16 rounding of d (2^-11 relative), and of s
            bound += wsum * amax / 127.0 * 0.5 + wsum * amax * 2f64.powi(-10);
            bound += scales[b].1.abs() as f64 * 32.0 * amax * 2f64.powi(-10);
        }
        prop_assert!((fast as f64 - float).abs() <= bound, "{fast} vs float {float} (bound {bound})");
    }

    /// Q8_0: the kernel equals the exact integer dot product of the 16-bit
    /// activations, scaled, even at the extremes (-128 weights, full-scale
    /// activations); and it stays within half a 16-bit quantum per
    /// activation of the float dot product, where 8-bit activations would
    /// be 258 times further off.
    #[test]
    fn q8_0_matches_the_exact_sum_and_the_float_dot(
        scales in prop::collection::vec(0.001f32..0.1, 1..6),
        quants in prop::collection::vec(any::<i8>(), 32 * 6),
        x in prop::collection::vec(prop_oneof![-4f32..4.0, Just(-4.0), Just(4.0)], 32 * 6),
    ) {
        let blocks = scales.len();
        let mut w = Vec::new();
        for (b, d) in scales.iter().enumerate() {
            w.extend(f16::from_f32(*d).to_bits().to_le_bytes());
            w.extend(quants[b * 32..(b + 1) * 32].iter().map(|&q| q as u8));
        }
        let x = &x[..blocks * 32];
        let xq = quantize_q16(x);
        let dw = |i: usize| f16::from_f32(scales[i / 32]).to_f64();
        let exact: f64 = (0..blocks * 32)
            .map(|i| dw(i) * quants[i] as f64 * xq.d[i / 32] as f64 * xq.q[i] as f64)
            .sum();
        let fast = dot_q8_0(&w, &xq);
        prop_assert!((fast as f64 - exact).abs() <= 1e-4 * (1.0 + exact.abs()), "{fast} vs {exact}");
        prop_assert!((fast - scalar::dot_q8_0_scalar(&w, &xq)).abs() <= 1e-4 * (1.0 + fast.abs()));
        let float: f64 = (0..blocks * 32).map(|i| dw(i) * quants[i] as f64 * x[i] as f64).sum();
        let mut bound = 1e-4 * (1.0 + float.abs());
        for b in 0..blocks {
            let amax = x[b * 32..(b + 1) * 32].iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            let wsum: f64 = (b * 32..(b + 1) * 32).map(|i| dw(i) * (quants[i] as f64).abs()).sum();
            bound += wsum * amax / 32767.0 * 0.5;
        }
        prop_assert!((fast as f64 - float).abs() <= bound, "{fast} vs float {float} (bound {bound})");
    }
}

proptest! {
    /// F16 weights: the kernel equals the float dot product of the weights
    /// with the 16-bit activations (f32 sums), and stays within half a
    /// 16-bit quantum per activation of the dot product with `x` itself.
    #[test]
    fn f16_matches_the_float_dot_within_16_bit_error(
        w in prop::collection::vec(-2f32..2.0, 32 * 6),
        blocks in 1usize..6,
        x in prop::collection::vec(prop_oneof![-4f32..4.0, Just(-4.0), Just(4.0)], 32 * 6),
    ) {
        let n = blocks * 32;
        let w: Vec<f16> = w[..n].iter().map(|&v| f16::from_f32(v)).collect();
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
        let x = &x[..n];
        let xq = quantize_q16(x);
        let of_quants: f64 = (0..n)
            .map(|i| w[i].to_f64() * xq.d[i / 32] as f64 * xq.q[i] as f64)
            .sum();
        let fast = dot_f16(&bytes, &xq);
        prop_assert!((fast as f64 - of_quants).abs() <= 1e-4 * (1.0 + of_quants.abs()), "{fast} vs {of_quants}");
        prop_assert!((fast - scalar::dot_f16_scalar(&bytes, &xq)).abs() <= 1e-4 * (1.0 + fast.abs()));
        let float: f64 = (0..n).map(|i| w[i].to_f64() * x[i] as f64).sum();
        let mut bound = 1e-4 * (1.0 + float.abs());
        for b in 0..blocks {
            let amax = x[b * 32..(b + 1) * 32].iter().fold(0f64, |m, v| m.max(v.abs() as f64));
            let wsum: f64 = (b * 32..(b + 1) * 32).map(|i| w[i].to_f64().abs()).sum();
            bound += wsum * amax / 32767.0 * 0.5;
        }
        prop_assert!((fast as f64 - float).abs() <= bound, "{fast} vs float {float} (bound {bound})");
    }
}

proptest! {
    /// BF16 weights: the kernel equals the float dot product of the weights
    /// with the 16-bit activations, computed here from `half`'s own bf16
    /// decoding (an independent reading of the layout), and the scalar body.
    #[test]
    fn bf16_matches_the_float_dot_of_its_quants(
        w in prop::collection::vec(prop_oneof![-2f32..2.0, -1e30f32..1e30, -1e-30f32..1e-30], 32 * 6),
        blocks in 1usize..6,
        x in prop::collection::vec(-4f32..4.0, 32 * 6),
    ) {
        let n = blocks * 32;
        let w: Vec<half::bf16> = w[..n].iter().map(|&v| half::bf16::from_f32(v)).collect();
        let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_bits().to_le_bytes()).collect();
        let xq = quantize_q16(&x[..n]);
        let of_quants: f64 = (0..n)
            .map(|i| w[i].to_f64() * xq.d[i / 32] as f64 * xq.q[i] as f64)
            .sum();
        let magnitude: f64 = (0..n)
            .map(|i| (w[i].to_f64() * xq.d[i / 32] as f64 * xq.q[i] as f64).abs())
            .sum();
        let fast = dot_bf16(&bytes, &xq);
        prop_assert!((fast as f64 - of_quants).abs() <= 1e-5 * (1.0 + magnitude), "{fast} vs {of_quants}");
        let slow = scalar::dot_bf16_scalar(&bytes, &xq);
        prop_assert!((fast as f64 - slow as f64).abs() <= 1e-5 * (1.0 + magnitude), "{fast} vs scalar {slow}");
    }
}

proptest! {
    /// Four inputs at once give bit-identical results to one at a time
    /// (the 16-bit-activation formats).
    #[test]
    fn four_row_kernels_equal_the_single_row_ones(
        w8 in prop::collection::vec(any::<u8>(), 34 * 3),
        x in prop::collection::vec(-4f32..4.0, 96 * 4),
    ) {
        // Keep the f16 scales finite: clear the exponent's top bit.
        let mut w8 = w8;
        for b in w8.chunks_exact_mut(34) { b[1] &= 0x3B; }
        let rows16: [Q16Row; 4] = std::array::from_fn(|i| quantize_q16(&x[i * 96..(i + 1) * 96]));
        let wf: Vec<u8> = x[..96].iter().flat_map(|&v| f16::from_f32(v).to_bits().to_le_bytes()).collect();
        let eight = dot4_q8_0(&w8, &rows16);
        let half = dot4_f16(&wf, &rows16);
        let brain = dot4_bf16(&wf, &rows16);
        for i in 0..4 {
            prop_assert_eq!(brain[i].to_bits(), dot_bf16(&wf, &rows16[i]).to_bits());
            prop_assert_eq!(eight[i].to_bits(), dot_q8_0(&w8, &rows16[i]).to_bits());
            prop_assert_eq!(half[i].to_bits(), dot_f16(&wf, &rows16[i]).to_bits());
        }
    }
}

#[test]
fn matmul_lays_out_rows_and_inputs() {
    // Two output rows (all nibbles 1 and 2, d = 1, m = 0) over 32 inputs.
    let w: Vec<u8> = [block(1.0, 0.0, &[1; 32]), block(1.0, 0.0, &[2; 32])].concat();
    let m = QuantMatrix::from_ggml(BlockFormat::Q4_1, &w, 2, 32).unwrap();
    let x: Vec<f32> = [vec![1.0; 32], vec![-1.0; 32], vec![0.0; 32]].concat();
    let y = m.matmul(&x, 3);
    let expected = [32.0, 64.0, -32.0, -64.0, 0.0, 0.0];
    // 1.0 quantizes to 127 · f16(1/127): exact to within f16's rounding.
    for (got, want) in y.iter().zip(expected) {
        assert!((got - want).abs() <= 1e-3 * (1.0f32 + want.abs()), "{y:?}");
    }
    assert!(QuantMatrix::from_ggml(BlockFormat::Q4_1, &w, 3, 32).is_err());
    // Stacked, the two rows give the same outputs as apart.
    let one = |b: Vec<u8>| QuantMatrix::from_ggml(BlockFormat::Q4_1, &b, 1, 32).unwrap();
    let stacked = QuantMatrix::stack(vec![
        one(block(1.0, 0.0, &[1; 32])),
        one(block(1.0, 0.0, &[2; 32])),
    ])
    .unwrap();
    assert_eq!(stacked.matmul(&x, 3), y);
}

#[test]
fn an_f16_matrix_stacks_with_q8_0_ones_but_not_with_q4_1() {
    // Rows of 64 inputs: two Q8_0 rows, three f16 rows, one Q8_0 row.
    let cols = 64;
    let q8_row = |q: i8| -> Vec<u8> {
        let mut b = Vec::new();
        for _ in 0..cols / 32 {
            b.extend(f16::from_f32(0.01).to_bits().to_le_bytes());
            b.extend((0..32).map(|j| (q.wrapping_add(j as i8)) as u8));
        }
        b
    };
    let f16_row = |k: f32| -> Vec<u8> {
        (0..cols)
            .flat_map(|j| {
                f16::from_f32(k * (j as f32 - 30.0) / 64.0)
                    .to_bits()
                    .to_le_bytes()
            })
            .collect()
    };
    let q8a = QuantMatrix::from_ggml(
        BlockFormat::Q8_0,
        &[q8_row(3), q8_row(-40)].concat(),
        2,
        cols,
    )
    .unwrap();
    let half = QuantMatrix::from_ggml(
        BlockFormat::F16,
        &[f16_row(1.0), f16_row(-0.5), f16_row(2.0)].concat(),
        3,
        cols,
    )
    .unwrap();
    let q8b = QuantMatrix::from_ggml(BlockFormat::Q8_0, &q8_row(90), 1, cols).unwrap();
    let x: Vec<f32> = (0..5 * cols)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
        .collect();
    let apart: Vec<Vec<f32>> = [&q8a, &half, &q8b]
        .iter()
        .map(|m| m.matmul(&x, 5))
        .collect();
    let q8a_rows = (q8a.rows(), half.rows(), q8b.rows());
    let stacked = QuantMatrix::stack(vec![q8a, half, q8b]).unwrap();
    assert_eq!(stacked.rows(), 6);
    let joined = stacked.matmul(&x, 5);
    // Input i's outputs are the parts' outputs for input i, side by side.
    for i in 0..5 {
        let want: Vec<f32> = [
            &apart[0][i * q8a_rows.0..(i + 1) * q8a_rows.0],
            &apart[1][i * q8a_rows.1..(i + 1) * q8a_rows.1],
            &apart[2][i * q8a_rows.2..(i + 1) * q8a_rows.2],
        ]
        .concat();
        assert_eq!(&joined[i * 6..(i + 1) * 6], &want[..], "input {i}");
    }
    // One input alone (a decode step's path, a run of rows per part) gives
    // the same outputs.
    for i in 0..5 {
        let one = stacked.matmul(&x[i * cols..(i + 1) * cols], 1);
        assert_eq!(&one[..], &joined[i * 6..(i + 1) * 6], "input {i} alone");
    }
    // The f16 rows are not zero (the test would pass on a dropped part).
    assert!(apart[1].iter().any(|v| v.abs() > 0.1), "{:?}", apart[1]);
    // Decoded to f32 (an encoder's large batches), the stack's values give
    // the kernels' products to within the activations' 16-bit rounding.
    let w = stacked.dequantize().unwrap();
    assert_eq!(w.len(), 6 * cols);
    assert_eq!(w[0], f16::from_f32(0.01).to_f32() * 3.0, "Q8_0 d · q");
    assert_eq!(
        w[2 * cols + 1],
        f16::from_f32(-29.0 / 64.0).to_f32(),
        "f16 as stored"
    );
    for i in 0..5 {
        for r in 0..6 {
            let exact: f32 = (0..cols).map(|c| w[r * cols + c] * x[i * cols + c]).sum();
            let got = joined[i * 6 + r];
            assert!(
                (got - exact).abs() <= 1e-3 * (1.0 + exact.abs()),
                "input {i}, row {r}: {got} vs {exact}"
            );
        }
    }
    // Q4_1 takes 8-bit activations: it cannot share a stack with f16.
    let q4 = QuantMatrix::from_ggml(
        BlockFormat::Q4_1,
        &block(1.0, 0.0, &[1; 32]).repeat(2),
        1,
        cols,
    )
    .unwrap();
    let half = QuantMatrix::from_ggml(BlockFormat::F16, &f16_row(1.0), 1, cols).unwrap();
    assert!(QuantMatrix::stack(vec![q4, half]).is_none());
}

/// candle's own dequantization of GGUF blocks: an independent reading of
/// the Q4_0 and Q5_0 layouts.
fn candle_dequantize(dtype: candle_core::quantized::GgmlDType, bytes: &[u8]) -> Vec<f32> {
    let n = bytes.len() / dtype.type_size() * dtype.block_size();
    let t = candle_core::quantized::ggml_file::qtensor_from_ggml(
        dtype,
        bytes,
        vec![n],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    t.dequantize(&candle_core::Device::Cpu)
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Random block bytes with finite f16 scales (the exponent's top bit clear).
fn signed_blocks(raw: &[u8], block_bytes: usize) -> Vec<u8> {
    let mut w = raw[..raw.len() / block_bytes * block_bytes].to_vec();
    for b in w.chunks_exact_mut(block_bytes) {
        b[1] &= 0x3B;
    }
    w
}

/// A block as the kernels read it: 32 integer weights, the scale and the
/// minimum (Q4_1's; zero for the offset formats).
fn int8_ints(format: BlockFormat, wb: &[u8]) -> ([i32; 32], f32, f32) {
    let (u, dw, m) = match format {
        BlockFormat::Q4_0 => int8::unsigned_block::<{ int8::Q4_0 }>(wb),
        BlockFormat::Q5_0 => int8::unsigned_block::<{ int8::Q5_0 }>(wb),
        _ => int8::unsigned_block::<{ int8::Q4_1 }>(wb),
    };
    let offset = match format {
        BlockFormat::Q4_0 => 8,
        BlockFormat::Q5_0 => 16,
        _ => 0,
    };
    if offset != 0 {
        // The offset formats' term is −offset·dw.
        assert_eq!(m.to_bits(), (-(offset as f32) * dw).to_bits());
    }
    let min = if offset == 0 { m } else { 0.0 };
    (u.map(|u| u as i32 - offset), dw, min)
}

const INT8_FORMATS: [(BlockFormat, usize, candle_core::quantized::GgmlDType); 3] = [
    (
        BlockFormat::Q4_0,
        Q4_0_BYTES,
        candle_core::quantized::GgmlDType::Q4_0,
    ),
    (
        BlockFormat::Q5_0,
        Q5_0_BYTES,
        candle_core::quantized::GgmlDType::Q5_0,
    ),
    (
        BlockFormat::Q4_1,
        Q4_1_BYTES,
        candle_core::quantized::GgmlDType::Q4_1,
    ),
];

proptest! {
    /// Q4_0, Q5_0 and Q4_1: the values read are candle's, and every kernel
    /// (scalar, AVX2, AVX-512) equals the exact integer sum per block scaled
    /// by both scales, as ggml's `vec_dot_q4_0_q8_0` / `vec_dot_q5_0_q8_0`
    /// / `vec_dot_q4_1_q8_1` compute it.
    #[test]
    fn int8_formats_match_candle_and_the_exact_sum(
        raw in prop::collection::vec(any::<u8>(), 22 * 4),
        x in prop::collection::vec(-4f32..4.0, 32 * 4),
    ) {
        for (format, bytes, dtype) in INT8_FORMATS {
            let mut w = signed_blocks(&raw, bytes);
            if format == BlockFormat::Q4_1 {
                for b in w.chunks_exact_mut(bytes) { b[3] &= 0x3B; }
            }
            let blocks = w.len() / bytes;
            let cols = blocks * 32;
            let blocks_read: Vec<_> = w.chunks_exact(bytes).map(|wb| int8_ints(format, wb)).collect();
            let values: Vec<f32> = blocks_read
                .iter()
                .flat_map(|(ints, dw, min)| ints.map(|v| v as f32 * dw + min))
                .collect();
            prop_assert_eq!(&values, &candle_dequantize(dtype, &w), "{:?} values", format);
            let x = &x[..cols];
            let inputs = int8::Q8Inputs::quantize(x, 1, cols);
            let (d, q, s) = inputs.row(0);
            // The kernels scale each lane's integer partial sum (four
            // products) and add the lanes and the terms in f32, so they
            // round in another order than this sum of whole blocks; the
            // difference is bounded by the products' magnitudes, not the
            // result's (lanes and blocks can cancel).
            let (mut exact, mut magnitude) = (0f32, 0f32);
            for (b, (ints, dw, min)) in blocks_read.iter().enumerate() {
                let products = ints.iter().zip(&q[b * 32..(b + 1) * 32]).map(|(&v, &q)| v * q as i32);
                let (sumi, sum_abs) = products.fold((0i32, 0i32), |(t, a), p| (t + p, a + p.abs()));
                let scale = dw * d[b];
                exact += scale * sumi as f32 + min * s[b];
                magnitude += (scale * sum_abs as f32).abs() + (min * s[b]).abs();
            }
            for isa in int8::Isa::available() {
                let one = int8_dot(isa, format, &w, x);
                prop_assert!((one - exact).abs() <= 1e-5 * (1.0 + magnitude), "{:?} on {:?}: {} vs {}", format, isa, one, exact);
            }
        }
    }
}

proptest! {
    /// A matrix in tiles of rows × groups of inputs gives, bit for bit, what
    /// one row and one input at a time give (a batched prompt scores as its
    /// sequences would alone), and the SIMD kernels give the same bits.
    #[test]
    fn int8_tiles_equal_one_row_and_one_input(
        raw in prop::collection::vec(any::<u8>(), 22 * 3 * 7),
        x in prop::collection::vec(-4f32..4.0, 96 * 7),
    ) {
        let simd: Vec<int8::Isa> = int8::Isa::available().into_iter().filter(|&i| i != int8::Isa::Scalar).collect();
        for (format, bytes, _) in INT8_FORMATS {
            let w = signed_blocks(&raw[..bytes * 3 * 7], bytes);
            let rows: Vec<&[u8]> = w.chunks_exact(bytes * 3).collect();
            // Seven rows (a tile of four or two pairs, then one) by seven
            // inputs (groups of four and three).
            let m = QuantMatrix::from_ggml(format, &w, 7, 96).unwrap();
            let y = m.matmul(&x, 7);
            for i in 0..7 {
                let xi = &x[i * 96..(i + 1) * 96];
                // One input alone goes through the decode step's kernel.
                let column = m.matmul(xi, 1);
                for r in 0..7 {
                    prop_assert_eq!(column[r].to_bits(), y[i * 7 + r].to_bits(), "{:?} row {} input {} alone", format, r, i);
                }
                for (r, row) in rows.iter().enumerate() {
                    let alone: Vec<u32> = simd.iter().map(|&isa| int8_dot(isa, format, row, xi).to_bits()).collect();
                    prop_assert!(alone.iter().all(|&b| b == y[i * 7 + r].to_bits()), "{:?} row {} input {}: {:?} vs {}", format, r, i, alone, y[i * 7 + r]);
                }
            }
        }
    }
}

/// Q4_0, Q5_0 and Q4_1 parts stacked (they take the same 8-bit inputs),
/// with part boundaries inside the parallel tasks and the tiles, give each
/// part's own outputs for a batch and for one input alone.
#[test]
fn int8_parts_stack_and_split_across_tasks() {
    let cols = 64;
    let parts: Vec<(BlockFormat, usize, usize)> = vec![
        (BlockFormat::Q4_0, Q4_0_BYTES, 23),
        (BlockFormat::Q5_0, Q5_0_BYTES, 30),
        (BlockFormat::Q4_1, Q4_1_BYTES, 17),
    ];
    let matrix = |(format, bytes, rows): (BlockFormat, usize, usize), seed: usize| {
        let raw: Vec<u8> = (0..rows * cols / 32 * bytes)
            .map(|i| ((i * 131 + seed * 17) % 251) as u8)
            .collect();
        let mut w = signed_blocks(&raw, bytes);
        if format == BlockFormat::Q4_1 {
            for b in w.chunks_exact_mut(bytes) {
                b[3] &= 0x3B;
            }
        }
        QuantMatrix::from_ggml(format, &w, rows, cols).unwrap()
    };
    let x: Vec<f32> = (0..5 * cols)
        .map(|i| ((i * 29 % 97) as f32 - 48.0) / 20.0)
        .collect();
    for n in [5, 1] {
        let x = &x[..n * cols];
        let apart: Vec<Vec<f32>> = parts
            .iter()
            .enumerate()
            .map(|(k, &p)| matrix(p, k).matmul(x, n))
            .collect();
        let stacked = QuantMatrix::stack(
            parts
                .iter()
                .enumerate()
                .map(|(k, &p)| matrix(p, k))
                .collect(),
        )
        .unwrap();
        assert_eq!(stacked.rows(), 70);
        let joined = stacked.matmul(x, n);
        for i in 0..n {
            let want: Vec<f32> = parts
                .iter()
                .zip(&apart)
                .flat_map(|(&(_, _, rows), y)| y[i * rows..(i + 1) * rows].to_vec())
                .collect();
            assert_eq!(&joined[i * 70..(i + 1) * 70], &want[..], "n {n}, input {i}");
        }
        assert!(joined.iter().any(|v| v.abs() > 0.1), "{joined:?}");
    }
}
