//! Token sampling: greedy at temperature 0, otherwise temperature, top-k,
//! top-p (nucleus) and min-p filtering, then a draw from a seeded generator so that the
//! same seed gives the same text.

/// How the next token is chosen. Defaults follow OpenAI's API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (always the most likely token).
    pub temperature: f32,
    /// Keep the smallest set of tokens whose probability reaches `top_p`.
    pub top_p: f32,
    /// Keep the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Drop tokens less likely than `min_p` times the most likely one
    /// (vLLM's and llama.cpp's min-p); 0 keeps all.
    pub min_p: f32,
    pub seed: Option<u64>,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            temperature: 1.0,
            top_p: 1.0,
            top_k: 0,
            min_p: 0.0,
            seed: None,
        }
    }
}

impl SamplingParams {
    pub fn greedy() -> Self {
        Self {
            temperature: 0.0,
            ..Self::default()
        }
    }
}

/// A sampler for one sequence.
pub struct Sampler {
    params: SamplingParams,
    rng: SplitMix64,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Self {
        let seed = params.seed.unwrap_or_else(|| {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(std::time::SystemTime::now())
        });
        Self {
            params,
            rng: SplitMix64(seed),
        }
    }

    /// The next token given the logits over the vocabulary.
    pub fn sample(&mut self, logits: &[f32]) -> u32 {
        let p = self.params;
        if p.temperature <= 0.0 || p.top_k == 1 {
            return argmax(logits);
        }
        // Candidates sorted by logit, best first; ties keep the lower id.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let keep = if p.top_k == 0 {
            logits.len()
        } else {
            p.top_k.min(logits.len())
        };
        let by_logit = |a: &u32, b: &u32| {
            logits[*b as usize]
                .total_cmp(&logits[*a as usize])
                .then(a.cmp(b))
        };
        if keep < order.len() {
            order.select_nth_unstable_by(keep - 1, by_logit);
            order.truncate(keep);
        }
        order.sort_unstable_by(by_logit);

        let max = logits[order[0] as usize];
        let mut probs: Vec<f32> = order
            .iter()
            .map(|&i| ((logits[i as usize] - max) / p.temperature).exp())
            .collect();
        let total: f32 = probs.iter().sum();
        probs.iter_mut().for_each(|x| *x /= total);

        if p.top_p < 1.0 {
            let mut cumulative = 0.0;
            let mut cut = probs.len();
            for (i, &pr) in probs.iter().enumerate() {
                cumulative += pr;
                if cumulative >= p.top_p {
                    cut = i + 1;
                    break;
                }
            }
            probs.truncate(cut);
            order.truncate(cut);
        }
        if p.min_p > 0.0 {
            // Sorted best first: the kept tokens are a prefix.
            let floor = p.min_p * probs[0];
            let cut = probs.iter().take_while(|&&pr| pr >= floor).count();
            probs.truncate(cut.max(1));
            order.truncate(cut.max(1));
        }
        let total: f32 = probs.iter().sum();
        let mut r = self.rng.next_f32() * total;
        for (i, &pr) in probs.iter().enumerate() {
            r -= pr;
            if r <= 0.0 {
                return order[i];
            }
        }
        *order.last().expect("at least one candidate")
    }
}

/// Index of the largest logit; the first one on ties (as llama.cpp's greedy
/// sampler).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in logits.iter().enumerate() {
        if x > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// SplitMix64: small, fast, and good enough for sampling.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_f32(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 24) as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn greedy_picks_the_first_maximum() {
        let mut s = Sampler::new(SamplingParams::greedy());
        assert_eq!(s.sample(&[0.1, 3.0, 3.0, -1.0]), 1);
    }

    #[test]
    fn same_seed_same_tokens() {
        let logits: Vec<f32> = (0..100).map(|i| ((i * 37) % 11) as f32 / 3.0).collect();
        let params = SamplingParams {
            temperature: 1.0,
            seed: Some(42),
            ..Default::default()
        };
        let a: Vec<u32> = {
            let mut s = Sampler::new(params);
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        let b: Vec<u32> = {
            let mut s = Sampler::new(params);
            (0..20).map(|_| s.sample(&logits)).collect()
        };
        assert_eq!(a, b);
        // A high temperature over near-equal logits does not always pick one token.
        assert!(a.iter().any(|&t| t != a[0]));
    }

    #[test]
    fn sampling_follows_the_distribution() {
        // p(0) = e^0/(e^0+e^-ln3) = 0.75
        let logits = [0.0, -(3f32.ln())];
        let mut s = Sampler::new(SamplingParams {
            seed: Some(7),
            ..Default::default()
        });
        let zeros = (0..20_000).filter(|_| s.sample(&logits) == 0).count();
        let share = zeros as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.02, "{share}");
    }

    proptest! {
        #[test]
        fn top_k_keeps_only_the_k_best(
            logits in prop::collection::vec(-10f32..10.0, 2..200),
            k in 1usize..10,
            seed in any::<u64>(),
        ) {
            let mut s = Sampler::new(SamplingParams { temperature: 2.0, top_k: k, seed: Some(seed), ..Default::default() });
            let t = s.sample(&logits) as usize;
            let better = logits.iter().filter(|&&x| x > logits[t]).count();
            prop_assert!(better < k);
        }

        #[test]
        fn min_p_drops_the_unlikely(
            logits in prop::collection::vec(-5f32..5.0, 2..100),
            min_p in 0.01f32..1.0,
            seed in any::<u64>(),
        ) {
            let mut s = Sampler::new(SamplingParams { min_p, seed: Some(seed), ..Default::default() });
            let t = s.sample(&logits) as usize;
            let max = logits.iter().cloned().fold(f32::MIN, f32::max);
            // p(t) / p(max) = exp(logit_t − max) ≥ min_p.
            prop_assert!((logits[t] - max).exp() >= min_p * (1.0 - 1e-4));
        }

        #[test]
        fn top_p_keeps_the_nucleus(
            logits in prop::collection::vec(-5f32..5.0, 2..100),
            top_p in 0.05f32..0.95,
            seed in any::<u64>(),
        ) {
            let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p, seed: Some(seed), ..Default::default() });
            let t = s.sample(&logits) as usize;
            // The probability mass strictly above the sampled token is below top_p.
            let max = logits.iter().cloned().fold(f32::MIN, f32::max);
            let z: f32 = logits.iter().map(|x| (x - max).exp()).sum();
            let above: f32 = logits.iter().filter(|&&x| x > logits[t]).map(|x| (x - max).exp() / z).sum();
            prop_assert!(above < top_p + 1e-4);
        }
    }
}
