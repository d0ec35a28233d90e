//! The gated feed-forward activation, `act(gate) · up`, in one pass over the
//! joined gate/up output on the CPU. candle's `gelu` calls libm's `tanhf`
//! per value and its `silu` its `expf`, then a second op multiplies: on
//! Gemma 3 a prompt spent ~11% of its time in `tanhf` and `expm1f`. Both
//! activations are `x / (1 + e^(−k(x)))` (GELU-tanh's `0.5·(1 + tanh z)` is
//! the sigmoid of `2z`), computed here with a polynomial `exp` the compiler
//! vectorizes.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};
use modelship_model::Activation;
use rayon::prelude::*;

/// `act(gate) · up` for `joined` (n, 2F): each row is F gate values, then F
/// up values (the order of [`crate::linear::Projections`]' outputs). Returns
/// (n, F).
pub(crate) fn gated(joined: &Tensor, activation: Activation) -> Result<Tensor> {
    let (n, width) = joined.dims2()?;
    let f = width / 2;
    if !joined.device().is_cpu() || joined.dtype() != DType::F32 {
        let gate = joined.narrow(1, 0, f)?;
        let act = match activation {
            Activation::Silu => gate.silu()?,
            Activation::GeluTanh => gate.gelu()?,
        };
        return act * joined.narrow(1, f, f)?;
    }
    // The projections' output, read where it is (a copy only if it is not
    // one contiguous f32 buffer).
    let (storage, layout) = joined.storage_and_layout();
    let data: std::borrow::Cow<[f32]> = match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(all)), Some((from, to))) => all[from..to].into(),
        _ => joined.flatten_all()?.to_vec1::<f32>()?.into(),
    };
    let mut out = vec![0f32; n * f];
    let rows = out.par_chunks_mut(f).zip(data.par_chunks_exact(width));
    rows.for_each(|(out, row)| {
        let (gate, up) = row.split_at(f);
        match activation {
            Activation::Silu => apply(out, gate, up, |x| x),
            Activation::GeluTanh => apply(out, gate, up, gelu_argument),
        }
    });
    Tensor::from_vec(out, (n, f), joined.device())
}

/// `out = x / (1 + e^(−k(x))) · up`, for each gate value `x`.
#[inline(always)]
fn apply(out: &mut [f32], gate: &[f32], up: &[f32], k: impl Fn(f32) -> f32) {
    for ((o, &x), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = x / (1.0 + exp(-k(x))) * u;
    }
}

/// GELU-tanh's `2·√(2/π)·(x + 0.044715·x³)`.
#[inline(always)]
fn gelu_argument(x: f32) -> f32 {
    const TWO_SQRT_2_OVER_PI: f32 = 1.595_769;
    TWO_SQRT_2_OVER_PI * x * (1.0 + 0.044715 * x * x)
}

/// `e^x` to within `3e-7 + 1e-7·|x|` relative (the rounding of `x·log2(e)`
/// grows with `x`), for `x` in ±87 (clamped beyond: the
/// activations only need its limits there): `2^t` for `t = x·log2(e)`,
/// split into `round(t)`, put in the exponent bits, and `2^r = e^(r·ln 2)`
/// for the rest `|r| ≤ 0.5` by the Taylor polynomial of degree 6 of `e^f`,
/// `|f| ≤ 0.35`.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // 1.5·2^23: adding it leaves round(t) in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    let t = (x * std::f32::consts::LOG2_E).clamp(-126.0, 126.0);
    let shifted = t + ROUND;
    let n = shifted - ROUND;
    let f = (t - n) * std::f32::consts::LN_2;
    let p = 1.0
        + f * (1.0
            + f * (0.5
                + f * (1.0 / 6.0 + f * (1.0 / 24.0 + f * (1.0 / 120.0 + f * (1.0 / 720.0))))));
    let whole = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    p * f32::from_bits(((whole + 127) as u32) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gelu_tanh(x: f64) -> f64 {
        0.5 * x * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (x + 0.044715 * x.powi(3))).tanh())
    }

    fn silu(x: f64) -> f64 {
        x / (1.0 + (-x).exp())
    }

    #[test]
    fn exp_is_within_its_bound() {
        for i in -8700..=8700 {
            let x = i as f32 / 100.0;
            let want = (x as f64).exp();
            let got = exp(x) as f64;
            assert!(
                (got - want).abs() <= (3e-7 + 1e-7 * x.abs() as f64) * want,
                "exp({x}) = {got}, not {want}"
            );
        }
        assert_eq!(exp(-1e4), exp(-126.0 / std::f32::consts::LOG2_E));
        assert!(exp(1e4).is_finite());
    }

    #[test]
    fn the_gated_activations_match_their_formulas() {
        // Two rows of 600 gate values from −30 to 30 and up values of ±1.5.
        let f = 600;
        let row = |sign: f32| -> Vec<f32> {
            let gate = (0..f).map(|j| (j as f32 - 300.0) / 10.0);
            let up = (0..f).map(|j| sign * if j % 2 == 0 { 1.5 } else { -1.5 });
            gate.chain(up).collect()
        };
        let joined = [row(1.0), row(-1.0)].concat();
        let t = Tensor::from_vec(joined.clone(), (2, 2 * f), &candle_core::Device::Cpu).unwrap();
        for (activation, exact) in [
            (Activation::GeluTanh, gelu_tanh as fn(f64) -> f64),
            (Activation::Silu, silu),
        ] {
            let out: Vec<Vec<f32>> = gated(&t, activation).unwrap().to_vec2().unwrap();
            for (r, values) in out.iter().enumerate() {
                let src = &joined[r * 2 * f..(r + 1) * 2 * f];
                for (j, &got) in values.iter().enumerate() {
                    let want = exact(src[j] as f64) * src[f + j] as f64;
                    let err = (got as f64 - want).abs();
                    assert!(
                        err <= 1e-6 * (1.0 + want.abs()),
                        "{activation:?} row {r} [{j}]: {got} vs {want}"
                    );
                }
            }
        }
    }
}
