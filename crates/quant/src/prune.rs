//! Magnitude pruning: the smallest weights of each linear layer become zero,
//! anywhere in the matrix (unstructured) or two of every four consecutive
//! weights of a row (2:4).

use modelship_types::{PrunePattern, PruneSpec};

/// Whether a tensor is a linear layer's weight matrix, the only tensors
/// pruning touches (embeddings, norms and the output projection are kept).
pub fn is_prunable(name: &str, shape: &[usize]) -> bool {
    const LINEAR: [&str; 7] = [
        "attn_q",
        "attn_k",
        "attn_v",
        "attn_output",
        "ffn_gate",
        "ffn_up",
        "ffn_down",
    ];
    shape.len() == 2
        && name.starts_with("blk.")
        && LINEAR
            .iter()
            .any(|l| name.ends_with(&format!(".{l}.weight")))
}

/// Prunes `w` (rows of `cols`) in place; returns how many weights are zero
/// afterwards.
pub fn prune(w: &mut [f32], cols: usize, spec: PruneSpec) -> Result<usize, String> {
    match spec.pattern {
        PrunePattern::Unstructured => Ok(unstructured(w, spec.sparsity)),
        PrunePattern::TwoFour => {
            if !cols.is_multiple_of(4) {
                return Err(format!("rows of {cols} weights cannot be pruned 2:4"));
            }
            two_four(w);
            Ok(w.iter().filter(|v| **v == 0.0).count())
        }
    }
}

/// Zeros the `sparsity` fraction of weights with the smallest magnitude
/// (ties broken by position, so exactly that many become zero).
fn unstructured(w: &mut [f32], sparsity: f64) -> usize {
    let k = (w.len() as f64 * sparsity).round() as usize;
    if k > 0 {
        let mut order: Vec<u32> = (0..w.len() as u32).collect();
        order.select_nth_unstable_by(k - 1, |&a, &b| {
            w[a as usize]
                .abs()
                .total_cmp(&w[b as usize].abs())
                .then(a.cmp(&b))
        });
        for &i in &order[..k] {
            w[i as usize] = 0.0;
        }
    }
    w.iter().filter(|v| **v == 0.0).count()
}

/// In each group of four, the two of smallest magnitude become zero.
fn two_four(w: &mut [f32]) {
    for g in w.chunks_exact_mut(4) {
        let mut idx = [0usize, 1, 2, 3];
        idx.sort_by(|&a, &b| g[a].abs().total_cmp(&g[b].abs()));
        g[idx[0]] = 0.0;
        g[idx[1]] = 0.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(sparsity: f64, pattern: PrunePattern) -> PruneSpec {
        PruneSpec { sparsity, pattern }
    }

    proptest! {
        /// Exactly the requested share is zero, and every zeroed weight was no
        /// larger than every kept one.
        #[test]
        fn unstructured_zeros_the_smallest(
            w in prop::collection::vec(-1.0f32..1.0, 1..400),
            s in 0.0f64..0.99,
        ) {
            let mut p = w.clone();
            let zeros = prune(&mut p, w.len(), spec(s, PrunePattern::Unstructured)).unwrap();
            let k = (w.len() as f64 * s).round() as usize;
            prop_assert!(zeros >= k);
            let removed = w.iter().zip(&p).filter(|(a, b)| **a != 0.0 && **b == 0.0).map(|(a, _)| a.abs());
            let kept_min = p.iter().filter(|v| **v != 0.0).map(|v| v.abs()).fold(f32::MAX, f32::min);
            for r in removed {
                prop_assert!(r <= kept_min);
            }
            prop_assert!(w.iter().zip(&p).all(|(a, b)| *b == 0.0 || a == b));
        }

        /// 2:4 leaves at most two non-zeros in every group of four, the larger two.
        #[test]
        fn two_four_keeps_the_two_largest(w in prop::collection::vec(-1.0f32..1.0, 4..64)) {
            let n = w.len() / 4 * 4;
            let mut p = w[..n].to_vec();
            prune(&mut p, 4, spec(0.5, PrunePattern::TwoFour)).unwrap();
            for (orig, g) in w[..n].chunks(4).zip(p.chunks(4)) {
                prop_assert!(g.iter().filter(|v| **v != 0.0).count() <= 2);
                let mut mags: Vec<f32> = orig.iter().map(|v| v.abs()).collect();
                mags.sort_by(f32::total_cmp);
                for (o, v) in orig.iter().zip(g) {
                    if *v == 0.0 && *o != 0.0 { prop_assert!(o.abs() <= mags[1]); }
                }
            }
        }
    }

    #[test]
    fn only_linear_layers_are_pruned() {
        assert!(is_prunable("blk.0.ffn_down.weight", &[4, 4]));
        assert!(is_prunable("blk.11.attn_q.weight", &[4, 4]));
        assert!(!is_prunable("blk.0.attn_q.bias", &[4]));
        assert!(!is_prunable("token_embd.weight", &[4, 4]));
        assert!(!is_prunable("blk.0.attn_output_norm.weight", &[4]));
        assert!(prune(&mut [1.0; 6], 6, spec(0.5, PrunePattern::TwoFour)).is_err());
    }
}
