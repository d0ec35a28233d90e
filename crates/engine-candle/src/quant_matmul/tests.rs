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
        let xq = quantize_q8_1(x);
        let fast = dot_q4_1(&w, &xq);
        let scalar = dot_q4_1_scalar(&w, &xq);
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
        prop_assert!((fast - dot_q8_0_scalar(&w, &xq)).abs() <= 1e-4 * (1.0 + fast.abs()));
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
    /// Four rows at once give bit-identical results to one at a time.
    #[test]
    fn four_row_kernels_equal_the_single_row_ones(
        w4 in prop::collection::vec(any::<u8>(), 20 * 3),
        w8 in prop::collection::vec(any::<u8>(), 34 * 3),
        x in prop::collection::vec(-4f32..4.0, 96 * 4),
    ) {
        // Keep the f16 scales finite: clear the exponent's top bit.
        let mut w4 = w4;
        for b in w4.chunks_exact_mut(20) { b[1] &= 0x3B; b[3] &= 0x3B; }
        let mut w8 = w8;
        for b in w8.chunks_exact_mut(34) { b[1] &= 0x3B; }
        let rows8: [Q81Row; 4] = std::array::from_fn(|i| quantize_q8_1(&x[i * 96..(i + 1) * 96]));
        let rows16: [Q16Row; 4] = std::array::from_fn(|i| quantize_q16(&x[i * 96..(i + 1) * 96]));
        let four = dot4_q4_1(&w4, &rows8);
        let eight = dot4_q8_0(&w8, &rows16);
        for i in 0..4 {
            prop_assert_eq!(four[i].to_bits(), dot_q4_1(&w4, &rows8[i]).to_bits());
            prop_assert_eq!(eight[i].to_bits(), dot_q8_0(&w8, &rows16[i]).to_bits());
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
