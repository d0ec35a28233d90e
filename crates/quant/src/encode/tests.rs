use super::*;
use proptest::prelude::*;

fn f16_at(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// The reference dequantizers, written from the block layouts.
fn decode_block(dtype: GgmlDType, b: &[u8]) -> Vec<f32> {
    match dtype {
        GgmlDType::Q8_0 => b[2..].iter().map(|&q| q as i8 as f32 * f16_at(b)).collect(),
        GgmlDType::Q4_0 => {
            let d = f16_at(b);
            let lo = b[2..18].iter().map(|q| ((q & 15) as f32 - 8.0) * d);
            let hi = b[2..18].iter().map(|q| ((q >> 4) as f32 - 8.0) * d);
            lo.chain(hi).collect()
        }
        GgmlDType::Q4_1 => {
            let (d, m) = (f16_at(b), f16_at(&b[2..]));
            let lo = b[4..20].iter().map(|q| (q & 15) as f32 * d + m);
            let hi = b[4..20].iter().map(|q| (q >> 4) as f32 * d + m);
            lo.chain(hi).collect()
        }
        _ => unreachable!(),
    }
}

proptest! {
    /// Quantize → dequantize stays within half a step of the block's scale
    /// (plus the f16 rounding of the scale itself); q4_0 spends 8 steps on
    /// the side of its largest value and 7 on the other, so values there may
    /// be clipped by a whole step.
    #[test]
    fn block_error_is_bounded(x in prop::collection::vec(-4.0f32..4.0, 32)) {
        for (dtype, steps) in [(GgmlDType::Q8_0, 127.0), (GgmlDType::Q4_0, 8.0), (GgmlDType::Q4_1, 15.0)] {
            let bytes = encode(dtype, &x, 32).unwrap();
            let y = decode_block(dtype, &bytes);
            let range = match dtype {
                GgmlDType::Q4_1 => x.iter().cloned().fold(f32::MIN, f32::max) - x.iter().cloned().fold(f32::MAX, f32::min),
                _ => x.iter().fold(0f32, |m, v| m.max(v.abs())),
            };
            // q4_0 spends its 16 levels on [-m, m): one step is m / 8.
            let step = range / steps;
            let steps_off = if dtype == GgmlDType::Q4_0 { 1.0 } else { 0.5 };
            for (a, b) in x.iter().zip(&y) {
                prop_assert!((a - b).abs() <= step * steps_off * 1.01 + range * 2e-3 + 1e-6,
                    "{dtype:?}: {a} -> {b} (step {step})");
            }
        }
    }
}

#[test]
fn zero_blocks_encode_to_zero_scales() {
    for dtype in [GgmlDType::Q8_0, GgmlDType::Q4_0, GgmlDType::Q4_1] {
        let bytes = encode(dtype, &[0.0; 32], 32).unwrap();
        assert!(
            decode_block(dtype, &bytes).iter().all(|&v| v == 0.0),
            "{dtype:?}"
        );
    }
}

#[test]
fn rows_must_fit_the_block() {
    assert!(encode(GgmlDType::Q8_0, &[1.0; 48], 48).is_err());
    assert!(encode(GgmlDType::Q4K, &[1.0; 384], 384).is_err());
    assert!(encode(GgmlDType::Q8_0, &[1.0; 64], 32).is_ok());
}

#[test]
fn parallel_encoding_equals_one_pass() {
    let cols = 256;
    let data: Vec<f32> = (0..cols * 300)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
        .collect();
    for dtype in [
        GgmlDType::Q8_0,
        GgmlDType::Q4K,
        GgmlDType::Q6K,
        GgmlDType::F16,
    ] {
        let whole = encode(dtype, &data, cols).unwrap();
        let by_row: Vec<u8> = data
            .chunks(cols)
            .flat_map(|r| encode_one(dtype, r))
            .collect();
        assert_eq!(whole, by_row, "{dtype:?}");
        assert_eq!(whole.len(), encoded_len(dtype, data.len()));
    }
}

fn encode_one(dtype: GgmlDType, row: &[f32]) -> Vec<u8> {
    let mut out = vec![0u8; encoded_len(dtype, row.len())];
    encode_rows(dtype, row, &mut out).unwrap();
    out
}

#[test]
fn decode_inverts_encode_through_candle() {
    let cols = 256;
    let data: Vec<f32> = (0..cols * 40)
        .map(|i| ((i * 7919) % 1000) as f32 / 100.0 - 5.0)
        .collect();
    for dtype in [
        GgmlDType::Q8_0,
        GgmlDType::Q4_1,
        GgmlDType::Q6K,
        GgmlDType::F16,
    ] {
        let bytes = encode(dtype, &data, cols).unwrap();
        // 4-byte aligned, as the sources read it.
        let mut words = vec![0u32; bytes.len().div_ceil(4)];
        bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(&bytes);
        let mut out = Vec::new();
        decode_into(
            dtype,
            &bytemuck::cast_slice(&words)[..bytes.len()],
            cols,
            &mut out,
        )
        .unwrap();
        assert_eq!(out.len(), data.len());
        let expected: Vec<f32> = if dtype == GgmlDType::Q8_0 || dtype == GgmlDType::Q4_1 {
            bytes
                .chunks(if dtype == GgmlDType::Q8_0 { 34 } else { 20 })
                .flat_map(|b| decode_block(dtype, b))
                .collect()
        } else {
            data.clone()
        };
        let worst = out
            .iter()
            .zip(&expected)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            worst < if dtype == GgmlDType::Q6K { 0.2 } else { 1e-2 },
            "{dtype:?}: {worst}"
        );
    }
    assert!(decode_into(GgmlDType::Q8_0, &[0u8; 33], 32, &mut Vec::new()).is_err());
}
