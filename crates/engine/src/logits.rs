//! What happens to a step's logits between the model and the sampler, as
//! plain functions over a slice: log-probabilities (read first: they are the
//! model's distribution, not the sampler's), then logit biases and
//! penalties, which change what the sampler sees.

use std::collections::{HashMap, HashSet};

/// A token's log-probability and, when asked, the most likely tokens at its
/// place (best first, ties by lower id).
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: u32,
    /// `None` for a prompt's first token: nothing came before it.
    pub logprob: Option<f32>,
    pub top: Vec<(u32, f32)>,
}

/// `log softmax(logits)[token]` and the `top` most likely tokens, then
/// those of `also` not among them.
pub fn logprob_of(logits: &[f32], token: u32, top: usize, also: &[u32]) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    // Summed in f64: 150k terms in f32 lose the small ones.
    let sum: f64 = logits.iter().map(|&x| ((x - max) as f64).exp()).sum();
    let log_z = max as f64 + sum.ln();
    let lp = |id: u32| {
        let x = logits
            .get(id as usize)
            .copied()
            .unwrap_or(f32::NEG_INFINITY);
        (x as f64 - log_z) as f32
    };
    TokenLogprob {
        token,
        logprob: Some(lp(token)),
        top: {
            let mut ids = top_ids(logits, top);
            for &id in also {
                if !ids.contains(&id) {
                    ids.push(id);
                }
            }
            ids.into_iter().map(|id| (id, lp(id))).collect()
        },
    }
}

/// The `k` largest logits' ids, best first; ties keep the lower id.
fn top_ids(logits: &[f32], k: usize) -> Vec<u32> {
    let k = k.min(logits.len());
    if k == 0 {
        return Vec::new();
    }
    let by_logit = |a: &u32, b: &u32| {
        logits[*b as usize]
            .total_cmp(&logits[*a as usize])
            .then(a.cmp(b))
    };
    let mut ids: Vec<u32> = (0..logits.len() as u32).collect();
    if k < ids.len() {
        ids.select_nth_unstable_by(k - 1, by_logit);
        ids.truncate(k);
    }
    ids.sort_unstable_by(by_logit);
    ids
}

/// OpenAI's presence and frequency penalties and vLLM's repetition penalty.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Penalties {
    /// Subtracted once from every token already generated.
    pub presence: f32,
    /// Subtracted per time a token was generated.
    pub frequency: f32,
    /// Above 1, tokens of the prompt or the output become less likely: a
    /// positive logit is divided by it, a negative one multiplied (CTRL's
    /// rule, as vLLM and llama.cpp apply it). 1 does nothing.
    pub repetition: f32,
}

impl Default for Penalties {
    fn default() -> Self {
        Self {
            presence: 0.0,
            frequency: 0.0,
            repetition: 1.0,
        }
    }
}

impl Penalties {
    pub fn is_none(&self) -> bool {
        *self == Self::default()
    }
}

/// The tokens one sequence has seen, for its penalties.
#[derive(Debug, Clone, Default)]
pub struct History {
    /// How many times each token was generated.
    generated: HashMap<u32, u32>,
    /// Every token of the prompt or the output (the repetition penalty's set).
    seen: HashSet<u32>,
}

impl History {
    pub fn new(prompt: &[u32]) -> Self {
        Self {
            generated: HashMap::new(),
            seen: prompt.iter().copied().collect(),
        }
    }

    pub fn push(&mut self, token: u32) {
        *self.generated.entry(token).or_default() += 1;
        self.seen.insert(token);
    }
}

/// Adds `bias` (token id, amount) to the logits, then applies the
/// penalties over `history`. Touches only the tokens named, so its cost
/// follows the text generated, not the vocabulary.
pub fn adjust(logits: &mut [f32], bias: &[(u32, f32)], penalties: &Penalties, history: &History) {
    for &(id, b) in bias {
        if let Some(x) = logits.get_mut(id as usize) {
            *x += b;
        }
    }
    if penalties.repetition != 1.0 {
        for &id in &history.seen {
            if let Some(x) = logits.get_mut(id as usize) {
                *x = if *x > 0.0 {
                    *x / penalties.repetition
                } else {
                    *x * penalties.repetition
                };
            }
        }
    }
    if penalties.presence != 0.0 || penalties.frequency != 0.0 {
        for (&id, &count) in &history.generated {
            if let Some(x) = logits.get_mut(id as usize) {
                *x -= penalties.presence + penalties.frequency * count as f32;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn logprobs_are_the_log_softmax() {
        // p = (0.5, 0.25, 0.25)
        let logits = [2f32.ln() + 3.0, 3.0, 3.0];
        let t = logprob_of(&logits, 1, 2, &[]);
        assert!((t.logprob.unwrap() - 0.25f32.ln()).abs() < 1e-6);
        assert_eq!(t.top.iter().map(|p| p.0).collect::<Vec<_>>(), [0, 1]);
        assert!((t.top[0].1 - 0.5f32.ln()).abs() < 1e-6);
        assert!(logprob_of(&logits, 0, 0, &[]).top.is_empty());
        // Asked-for ids follow the most likely, once each.
        let also = logprob_of(&logits, 0, 1, &[0, 2]);
        assert_eq!(also.top.iter().map(|t| t.0).collect::<Vec<_>>(), [0, 2]);
        assert!((also.top[1].1 - 0.25f32.ln()).abs() < 1e-6);
    }

    #[test]
    fn penalties_follow_openai_and_vllm() {
        let mut history = History::new(&[3]);
        history.push(0);
        history.push(0);
        history.push(1);
        let mut logits = [1.0, 2.0, 0.5, -2.0, 4.0];
        let p = Penalties {
            presence: 0.5,
            frequency: 0.25,
            repetition: 2.0,
        };
        adjust(&mut logits, &[(4, -100.0), (99, 1.0)], &p, &history);
        // Token 0: twice generated: 1/2 − 0.5 − 2·0.25; token 1: 2/2 − 0.5 − 0.25;
        // token 3 only in the prompt: −2·2; token 4 biased; token 2 untouched.
        assert_eq!(logits, [-0.5, 0.25, 0.5, -4.0, -96.0]);
    }

    proptest! {
        #[test]
        fn logprobs_sum_to_one_and_top_is_sorted(
            logits in prop::collection::vec(-30f32..30.0, 1..300),
            k in 0usize..25,
        ) {
            let all = logprob_of(&logits, 0, logits.len(), &[]);
            let total: f64 = all.top.iter().map(|p| (p.1 as f64).exp()).sum();
            prop_assert!((total - 1.0).abs() < 1e-4, "{total}");
            let t = logprob_of(&logits, 0, k, &[]);
            prop_assert_eq!(t.top.len(), k.min(logits.len()));
            prop_assert!(t.top.windows(2).all(|w| w[0].1 >= w[1].1));
            prop_assert_eq!(&t.top[..], &all.top[..t.top.len()]);
        }

        #[test]
        fn penalties_never_raise_a_seen_token_and_leave_the_rest(
            logits in prop::collection::vec(-10f32..10.0, 1..100),
            generated in prop::collection::vec(0u32..100, 0..40),
            presence in 0f32..2.0,
            frequency in 0f32..2.0,
            repetition in 1f32..3.0,
        ) {
            let mut history = History::new(&[]);
            generated.iter().for_each(|&t| history.push(t));
            let mut out = logits.clone();
            adjust(&mut out, &[], &Penalties { presence, frequency, repetition }, &history);
            for (i, (&before, &after)) in logits.iter().zip(&out).enumerate() {
                if generated.contains(&(i as u32)) {
                    prop_assert!(after <= before);
                } else {
                    prop_assert_eq!(after, before);
                }
            }
        }
    }
}
