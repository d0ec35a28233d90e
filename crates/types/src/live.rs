//! Live comparison of two revisions' answers to the same request: one
//! [`LiveSample`] per compared request, and [`LiveQuality`], the figures
//! over a run of them that a rollout is judged on and shows.

use serde::{Deserialize, Serialize};

/// Requests of a deployment compared between two revisions while its
/// rollout runs: `percent` of each one's requests also go to the other and
/// the answers are compared (the candidate's never reach a client).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Mirror {
    pub stable: u32,
    pub candidate: u32,
    pub percent: f64,
}

/// What one request compared between the stable revision (the reference)
/// and the candidate showed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum LiveSample {
    /// The candidate did not answer what the stable revision answered: an
    /// error status, no answer, or one that cannot be read.
    Failed,
    /// Cosine between the two vectors of each input.
    Embeddings { cosines: Vec<f32> },
    /// The stable revision's generated tokens scored by both, teacher-forced.
    Generation {
        tokens: u32,
        /// Tokens where both revisions' most likely next token is the same.
        top1_agree: u32,
        /// Σ over tokens of log p_stable(token) − log p_candidate(token).
        logprob_diff: f64,
        /// Σ over tokens of the KL divergence from the stable revision's
        /// distribution to the candidate's, over the stable revision's most
        /// likely tokens and the rest of the mass as one outcome (a lower
        /// bound of the full divergence).
        kld: f64,
        /// With temperature 0: whether the candidate would have generated
        /// exactly the same tokens (its most likely token was the stable
        /// one's at every position).
        greedy_match: Option<bool>,
    },
    /// Rerank scores of the same documents: Spearman's rank correlation.
    Ranking { spearman: f64 },
    /// Classification: whether the most likely label is the same, per input.
    Labels { agree: u32, inputs: u32 },
}

/// The spread of cosines over every compared vector.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CosineFigures {
    pub mean: f64,
    /// The first percentile: 1% of vectors are this far apart or further.
    pub p1: f64,
    pub min: f64,
    pub vectors: u64,
}

/// Figures over a run of compared requests; `None` where no sample gave
/// that figure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LiveQuality {
    /// Requests compared (failed ones not included).
    pub samples: u64,
    /// Requests the candidate failed on.
    pub failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cosine: Option<CosineFigures>,
    /// Generated tokens scored.
    #[serde(default)]
    pub tokens: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top1: Option<f64>,
    /// Mean over tokens of log p_stable − log p_candidate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logprob_diff: Option<f64>,
    /// Mean KL divergence per token (nats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kld: Option<f64>,
    /// Share of greedy (temperature 0) generations the candidate matches
    /// exactly, and over how many.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact_match: Option<(f64, u64)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spearman: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_agreement: Option<f64>,
}

impl LiveQuality {
    pub fn of(samples: &[LiveSample]) -> LiveQuality {
        let mut q = LiveQuality::default();
        let mut cosines: Vec<f32> = Vec::new();
        let (mut agree, mut diff, mut kld) = (0u64, 0.0, 0.0);
        let (mut greedy, mut matched) = (0u64, 0u64);
        let (mut rankings, mut spearman) = (0u64, 0.0);
        let (mut labels, mut labels_agree) = (0u64, 0u64);
        for s in samples {
            if *s == LiveSample::Failed {
                q.failed += 1;
                continue;
            }
            q.samples += 1;
            match s {
                LiveSample::Failed => {}
                LiveSample::Embeddings { cosines: c } => cosines.extend(c),
                LiveSample::Generation {
                    tokens,
                    top1_agree,
                    logprob_diff,
                    kld: k,
                    greedy_match,
                } => {
                    q.tokens += u64::from(*tokens);
                    agree += u64::from(*top1_agree);
                    diff += logprob_diff;
                    kld += k;
                    if let Some(m) = greedy_match {
                        greedy += 1;
                        matched += u64::from(*m);
                    }
                }
                LiveSample::Ranking { spearman: r } => {
                    rankings += 1;
                    spearman += r;
                }
                LiveSample::Labels { agree, inputs } => {
                    labels += u64::from(*inputs);
                    labels_agree += u64::from(*agree);
                }
            }
        }
        if !cosines.is_empty() {
            cosines.sort_by(f32::total_cmp);
            let n = cosines.len();
            let mean = cosines.iter().map(|&c| f64::from(c)).sum::<f64>() / n as f64;
            // The nearest-rank first percentile.
            let p1 = cosines[((n as f64 * 0.01).ceil() as usize).clamp(1, n) - 1];
            q.cosine = Some(CosineFigures {
                mean,
                p1: f64::from(p1),
                min: f64::from(cosines[0]),
                vectors: n as u64,
            });
        }
        if q.tokens > 0 {
            let n = q.tokens as f64;
            q.top1 = Some(agree as f64 / n);
            q.logprob_diff = Some(diff / n);
            q.kld = Some(kld / n);
        }
        if greedy > 0 {
            q.exact_match = Some((matched as f64 / greedy as f64, greedy));
        }
        if rankings > 0 {
            q.spearman = Some(spearman / rankings as f64);
        }
        if labels > 0 {
            q.label_agreement = Some(labels_agree as f64 / labels as f64);
        }
        q
    }

    /// The figures in one line, for events, records and tables.
    pub fn summary(&self) -> String {
        let mut parts = vec![format!("{} compared", self.samples)];
        if self.failed > 0 {
            parts.push(format!("{} failed", self.failed));
        }
        if let Some(c) = &self.cosine {
            parts.push(format!(
                "cosine mean {:.4} p1 {:.4} min {:.4}",
                c.mean, c.p1, c.min
            ));
        }
        if let (Some(top1), Some(kld)) = (self.top1, self.kld) {
            parts.push(format!(
                "top-1 {:.1}% over {} tokens, KLD {kld:.4}",
                100.0 * top1,
                self.tokens
            ));
        }
        if let Some(d) = self.logprob_diff {
            parts.push(format!("Δlogprob {d:.4}"));
        }
        if let Some((m, n)) = self.exact_match {
            parts.push(format!("greedy exact match {:.1}% of {n}", 100.0 * m));
        }
        if let Some(r) = self.spearman {
            parts.push(format!("spearman {r:.4}"));
        }
        if let Some(a) = self.label_agreement {
            parts.push(format!("labels agree {:.1}%", 100.0 * a));
        }
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_over_samples() {
        let mut samples = vec![LiveSample::Failed];
        // 200 vectors: one at 0.5, one at 0.9, the rest at 1.0.
        let mut cosines = vec![1.0f32; 198];
        cosines.extend([0.5, 0.9]);
        samples.push(LiveSample::Embeddings { cosines });
        samples.push(LiveSample::Generation {
            tokens: 10,
            top1_agree: 9,
            logprob_diff: 1.0,
            kld: 0.5,
            greedy_match: Some(false),
        });
        samples.push(LiveSample::Generation {
            tokens: 30,
            top1_agree: 30,
            logprob_diff: 1.0,
            kld: 0.3,
            greedy_match: Some(true),
        });
        let q = LiveQuality::of(&samples);
        assert_eq!((q.samples, q.failed), (3, 1));
        let c = q.cosine.unwrap();
        assert_eq!((c.min, c.p1, c.vectors), (0.5, f64::from(0.9f32), 200));
        assert!((c.mean - (198.0 + 1.4) / 200.0).abs() < 1e-9);
        assert_eq!(q.tokens, 40);
        assert!((q.top1.unwrap() - 39.0 / 40.0).abs() < 1e-12);
        assert!((q.kld.unwrap() - 0.8 / 40.0).abs() < 1e-12);
        assert!((q.logprob_diff.unwrap() - 2.0 / 40.0).abs() < 1e-12);
        assert_eq!(q.exact_match, Some((0.5, 2)));
        let line = q.summary();
        assert!(
            line.contains("cosine mean 0.9970") && line.contains("top-1 97.5%"),
            "{line}"
        );
        assert_eq!(LiveQuality::of(&[]), LiveQuality::default());
    }
}
