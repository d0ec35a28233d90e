//! The quality figures, as pure functions over logits and vectors.

pub use modelship_types::stats::{cosine, spearman};

/// `log softmax(logits)`, in f64 as llama.cpp's perplexity accumulates it.
pub fn log_softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    let sum: f64 = logits.iter().map(|&v| (v as f64 - max).exp()).sum();
    let log_sum = sum.ln() + max;
    logits.iter().map(|&v| v as f64 - log_sum).collect()
}

/// `KL(p ‖ q) = Σ p (log p − log q)` from log-probabilities.
pub fn kl_divergence(log_p: &[f64], log_q: &[f64]) -> f64 {
    log_p
        .iter()
        .zip(log_q)
        .map(|(&lp, &lq)| lp.exp() * (lp - lq))
        .sum::<f64>()
        .max(0.0)
}

/// Index of the largest value (the first of equals).
pub fn argmax<T: PartialOrd + Copy>(v: &[T]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Cosine similarity of every pair `i < j`, row by row.
pub fn pairwise_cosines(vectors: &[Vec<f32>]) -> Vec<f64> {
    let mut out = Vec::with_capacity(vectors.len() * vectors.len().saturating_sub(1) / 2);
    for (i, a) in vectors.iter().enumerate() {
        for b in &vectors[i + 1..] {
            out.push(cosine(a, b));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn log_softmax_of_equal_logits_is_uniform() {
        let l = log_softmax(&[3.0; 4]);
        assert!(l.iter().all(|v| (v + 4f64.ln()).abs() < 1e-12));
    }

    #[test]
    fn kl_of_known_distributions() {
        // p = (0.5, 0.5), q = (0.25, 0.75): KL = 0.5 ln 2 + 0.5 ln(2/3).
        let p = [0.5f64.ln(), 0.5f64.ln()];
        let q = [0.25f64.ln(), 0.75f64.ln()];
        let want = 0.5 * 2f64.ln() + 0.5 * (2.0f64 / 3.0).ln();
        assert!((kl_divergence(&p, &q) - want).abs() < 1e-12);
        assert_eq!(kl_divergence(&p, &p), 0.0);
    }

    proptest! {
        #[test]
        fn kl_is_non_negative(a in prop::collection::vec(-5.0f32..5.0, 8), b in prop::collection::vec(-5.0f32..5.0, 8)) {
            prop_assert!(kl_divergence(&log_softmax(&a), &log_softmax(&b)) >= 0.0);
        }
    }
}
