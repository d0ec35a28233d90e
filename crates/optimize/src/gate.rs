//! The quality gate: which of the spec's bounds a report breaks.

use modelship_types::Gate;

use crate::eval::Report;

/// The bounds `report` breaks, each as a short sentence; empty when it
/// passes. Bounds of the other task (`min_cosine` on a generative model) do
/// not apply.
pub fn violations(gate: &Gate, report: &Report) -> Vec<String> {
    let mut out = Vec::new();
    let mut at_least = |name: &str, value: f64, min: Option<f64>| {
        if let Some(min) = min.filter(|&m| value < m) {
            out.push(format!("{name} {value:.4} < {min}"));
        }
    };
    match report {
        Report::Embeddings(r) => at_least("cosine_mean", r.cosine_mean, gate.min_cosine),
        Report::Generate(r) => at_least("top1_agreement", r.top1_agreement, gate.min_top1),
        Report::Scores(r) => at_least("top1_agreement", r.top1_agreement, gate.min_top1),
    }
    if let Report::Generate(r) = report {
        let mut at_most = |name: &str, value: f64, max: Option<f64>| {
            if let Some(max) = max.filter(|&m| value > m) {
                out.push(format!("{name} {value:.4} > {max}"));
            }
        };
        at_most("ppl_increase", r.ppl_increase, gate.max_ppl_increase);
        at_most("kld", r.kld, gate.max_kld);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{EmbeddingsReport, GenerateReport};

    fn generate(ppl_increase: f64, kld: f64, top1: f64) -> Report {
        Report::Generate(GenerateReport {
            model: "m".into(),
            reference: "r".into(),
            corpus: "c".into(),
            ctx: 8,
            chunks: 1,
            tokens_scored: 3,
            perplexity: 10.0 * (1.0 + ppl_increase),
            reference_perplexity: 10.0,
            ppl_increase,
            kld,
            top1_agreement: top1,
        })
    }

    fn embeddings(cosine_mean: f64) -> Report {
        Report::Embeddings(EmbeddingsReport {
            model: "m".into(),
            reference: "r".into(),
            corpus: "c".into(),
            sentences: 2,
            cosine_mean,
            cosine_min: cosine_mean,
            spearman: 1.0,
        })
    }

    #[test]
    fn table() {
        let gate = Gate {
            min_cosine: Some(0.99),
            max_ppl_increase: Some(0.05),
            max_kld: Some(0.1),
            min_top1: Some(0.9),
        };
        let cases: [(Report, &[&str]); 6] = [
            (embeddings(0.995), &[]),
            (embeddings(0.98), &["cosine_mean"]),
            (generate(0.01, 0.05, 0.95), &[]),
            (generate(0.06, 0.05, 0.95), &["ppl_increase"]),
            (generate(0.01, 0.2, 0.95), &["kld"]),
            (
                generate(0.10, 0.2, 0.5),
                &["top1_agreement", "ppl_increase", "kld"],
            ),
        ];
        for (report, broken) in cases {
            let v = violations(&gate, &report);
            let names: Vec<&str> = v.iter().map(|s| s.split(' ').next().unwrap()).collect();
            assert_eq!(names, broken, "{v:?}");
        }
        assert!(violations(&Gate::default(), &generate(9.0, 9.0, 0.0)).is_empty());
    }
}
