//! The optimize stage of a deploy: write each candidate precision, measure it
//! against the original, and keep the smallest that passes the gate.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use modelship_quant::{QuantError, QuantizeOptions, Source, quantize};
use modelship_types::{Gate, Optimize, QuantType, Tradeoff, TradeoffPoint};

use crate::eval::{Baseline, EvalError, EvalOptions, Report};
use crate::{Corpus, violations};

/// One precision tried.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub quant: QuantType,
    pub path: PathBuf,
    pub file_bytes: u64,
    pub bits_per_weight: f64,
    pub report: Report,
    /// The gate bounds it breaks; empty when it passes.
    pub violations: Vec<String>,
}

impl Candidate {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Every candidate and the one chosen.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The model candidates were measured against.
    pub reference: PathBuf,
    pub candidates: Vec<Candidate>,
    /// Index of the smallest passing candidate.
    pub chosen: Option<usize>,
}

impl Outcome {
    pub fn chosen(&self) -> Option<&Candidate> {
        self.chosen.map(|i| &self.candidates[i])
    }

    /// The candidates as a chart reads them: each one's size and the figure
    /// `gate` bounds (the task's main figure when it bounds none).
    pub fn tradeoff(&self, gate: &Gate) -> Tradeoff {
        let first = self.candidates.first().map(|c| &c.report);
        // (name, larger is better, the gate's bound, the figure of a report)
        type Figure = fn(&Report) -> f64;
        let (metric, higher, threshold, value): (&str, bool, Option<f64>, Figure) = match first {
            Some(Report::Generate(_)) => match (gate.max_ppl_increase, gate.max_kld, gate.min_top1)
            {
                (None, Some(k), _) => ("kld", false, Some(k), |r| match r {
                    Report::Generate(g) => g.kld,
                    _ => f64::NAN,
                }),
                (None, None, Some(t)) => ("top-1", true, Some(t), |r| match r {
                    Report::Generate(g) => g.top1_agreement,
                    _ => f64::NAN,
                }),
                (p, ..) => ("Δppl", false, p, |r| match r {
                    Report::Generate(g) => g.ppl_increase,
                    _ => f64::NAN,
                }),
            },
            Some(Report::Scores(_)) => match gate.min_top1 {
                Some(t) => ("top-1", true, Some(t), |r| match r {
                    Report::Scores(s) => s.top1_agreement,
                    _ => f64::NAN,
                }),
                None => ("spearman", true, None, |r| match r {
                    Report::Scores(s) => s.spearman,
                    _ => f64::NAN,
                }),
            },
            _ => ("cosine mean", true, gate.min_cosine, |r| match r {
                Report::Embeddings(e) => e.cosine_mean,
                _ => f64::NAN,
            }),
        };
        Tradeoff {
            metric: metric.to_owned(),
            higher_is_better: higher,
            threshold,
            candidates: self
                .candidates
                .iter()
                .enumerate()
                .map(|(i, c)| TradeoffPoint {
                    precision: c.quant.as_str().to_owned(),
                    file_bytes: c.file_bytes,
                    bits_per_weight: c.bits_per_weight,
                    value: Some(value(&c.report)).filter(|v| v.is_finite()),
                    violations: c.violations.clone(),
                    chosen: self.chosen == Some(i),
                })
                .collect(),
        }
    }

    /// The size/quality table, one row per candidate.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let first = self.candidates.first().map(|c| &c.report);
        if let Some(Report::Scores(_)) = first {
            let _ = writeln!(
                s,
                "{:<6} {:>9} {:>6} {:>9} {:>9} {:>9}  verdict",
                "type", "MiB", "bits/w", "max Δ", "spearman", "top1"
            );
        } else if let Some(Report::Generate(_)) = first {
            let _ = writeln!(
                s,
                "{:<6} {:>9} {:>6} {:>9} {:>8} {:>8} {:>7}  verdict",
                "type", "MiB", "bits/w", "ppl", "Δppl", "kld", "top1"
            );
        } else {
            let _ = writeln!(
                s,
                "{:<6} {:>9} {:>6} {:>9} {:>9} {:>9}  verdict",
                "type", "MiB", "bits/w", "cos mean", "cos min", "spearman"
            );
        }
        for (i, c) in self.candidates.iter().enumerate() {
            let verdict = if self.chosen == Some(i) {
                "pass, chosen".to_owned()
            } else if c.passed() {
                "pass".to_owned()
            } else {
                format!("fail: {}", c.violations.join(", "))
            };
            let mib = c.file_bytes as f64 / (1024.0 * 1024.0);
            let _ = match &c.report {
                Report::Generate(r) => writeln!(
                    s,
                    "{:<6} {mib:>9.2} {:>6.2} {:>9.4} {:>+7.2}% {:>8.5} {:>6.2}%  {verdict}",
                    c.quant.as_str(),
                    c.bits_per_weight,
                    r.perplexity,
                    100.0 * r.ppl_increase,
                    r.kld,
                    100.0 * r.top1_agreement
                ),
                Report::Embeddings(r) => writeln!(
                    s,
                    "{:<6} {mib:>9.2} {:>6.2} {:>9.5} {:>9.5} {:>9.5}  {verdict}",
                    c.quant.as_str(),
                    c.bits_per_weight,
                    r.cosine_mean,
                    r.cosine_min,
                    r.spearman
                ),
                Report::Scores(r) => writeln!(
                    s,
                    "{:<6} {mib:>9.2} {:>6.2} {:>9.5} {:>9.5} {:>8.2}%  {verdict}",
                    c.quant.as_str(),
                    c.bits_per_weight,
                    r.max_score_diff,
                    r.spearman,
                    100.0 * r.top1_agreement
                ),
            };
        }
        s
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OptimizeError {
    #[error(transparent)]
    Quant(#[from] QuantError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    #[error("cannot read the evaluation corpus {path}")]
    Corpus {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create the work directory {path}")]
    Workdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Runs `opt` on the model at `source`, writing candidates into `workdir`.
/// `progress` hears one line per step. No candidates (quantize `none`
/// without pruning) gives an empty outcome: the original is served as is.
pub fn optimize(
    source: &Path,
    opt: &Optimize,
    workdir: &Path,
    eval: EvalOptions,
    progress: &mut dyn FnMut(&str),
) -> Result<Outcome, OptimizeError> {
    let mut types = opt.quantize.candidates();
    if types.is_empty() && opt.prune.is_some() {
        types.push(QuantType::F16);
    }
    if types.is_empty() {
        return Ok(Outcome {
            reference: source.to_owned(),
            candidates: Vec::new(),
            chosen: None,
        });
    }
    std::fs::create_dir_all(workdir).map_err(|e| OptimizeError::Workdir {
        path: workdir.to_owned(),
        source: e,
    })?;
    let corpus = match &opt.eval {
        Some(path) => Corpus::from_file(path).map_err(|e| OptimizeError::Corpus {
            path: path.clone(),
            source: e,
        })?,
        None => Corpus::builtin(),
    };
    let src = Source::open(source)?;
    let stem = source
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    // A block-quantized original (SmolLM2 ships as Q4_1) is measured through
    // its exact f32 expansion: the same weights, without the activation
    // rounding the quantized kernels add.
    let reference = if src.tensors.iter().any(|t| t.dtype.block_size() > 1) {
        let path = workdir.join(format!("{stem}.reference-f32.gguf"));
        progress(&format!("writing the f32 reference {}", path.display()));
        quantize(
            &src,
            &path,
            QuantizeOptions {
                to: QuantType::F32,
                prune: None,
            },
            &mut |_, _, _| {},
        )?;
        path
    } else {
        source.to_owned()
    };
    progress(&format!("measuring the reference {}", reference.display()));
    let baseline = Baseline::compute(&reference, &corpus, eval)?;
    let mut candidates = Vec::with_capacity(types.len());
    for quant in types {
        let path = workdir.join(format!("{stem}.{quant}.gguf"));
        progress(&format!("writing {quant}: {}", path.display()));
        let summary = quantize(
            &src,
            &path,
            QuantizeOptions {
                to: quant,
                prune: opt.prune,
            },
            &mut |_, _, _| {},
        )?;
        progress(&format!("measuring {quant}"));
        let report = baseline.compare(&path)?;
        candidates.push(Candidate {
            quant,
            violations: violations(&opt.gate, &report),
            path,
            file_bytes: summary.file_bytes_out,
            bits_per_weight: summary.bits_per_weight(),
            report,
        });
    }
    let chosen = candidates
        .iter()
        .enumerate()
        .filter(|(_, c)| c.passed())
        .min_by_key(|(_, c)| c.file_bytes)
        .map(|(i, _)| i);
    Ok(Outcome {
        reference,
        candidates,
        chosen,
    })
}
