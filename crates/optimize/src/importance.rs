//! Which FFN channels and attention heads a model can lose: each one's
//! contribution to the residual stream, measured on a corpus, and the cut
//! that removes the least important of every layer.
//!
//! A channel `j` adds `a_j · W_down[:, j]` to the stream, so over the corpus
//! its contribution has energy `Σ a_j² · ‖W_down[:, j]‖²`; a head `h` adds
//! `c_h · W_oᵀ[h]`, whose energy `Σ ‖W_o[h] c_h‖² = ⟨Σ c_h c_hᵀ, W_o[h]ᵀ W_o[h]⟩`
//! follows exactly from the Gram matrix the probe records. Removing what
//! contributes least is the first-order choice (as in the structured
//! pruning literature's activation-weighted criteria); it needs no
//! gradient and one forward pass over the corpus.

use std::path::Path;

use modelship_engine::Sequence;
use modelship_engine_candle::{Activity, OpenModel};
use modelship_quant::Source;
use modelship_quant::surgery::{Cut, LayerCut};
use modelship_types::StructuredPrune;

use crate::eval::{EvalError, chunk, open_model, run_err, tokenized_sentences};
use crate::{Corpus, EvalOptions};

/// How much of the corpus the measurement reads.
#[derive(Debug, Clone, Copy)]
pub struct ImportanceOptions {
    /// Sentences, for encoders.
    pub sentences: usize,
    /// Chunks of `ctx` tokens, for decoders.
    pub chunks: usize,
    pub ctx: usize,
}

impl Default for ImportanceOptions {
    fn default() -> Self {
        Self {
            sentences: 128,
            chunks: 8,
            ctx: 256,
        }
    }
}

/// Contribution energies per layer, of each FFN channel and each head.
#[derive(Debug, Clone, PartialEq)]
pub struct Importance {
    pub ffn: Vec<Vec<f64>>,
    pub heads: Vec<Vec<f64>>,
    /// Query heads per KV head.
    pub group: usize,
    /// Tokens the measurement saw.
    pub tokens: usize,
}

/// Runs `model` over `corpus` and weighs what reached each projection by
/// the projection's weights.
pub fn measure(
    model: &Path,
    corpus: &Corpus,
    opts: ImportanceOptions,
) -> Result<Importance, EvalError> {
    let (activity, group) = match open_model(model, opts.ctx)? {
        OpenModel::Encoder {
            tokenizer,
            backend,
            encoder,
        } => {
            let mut activity = Activity::new(backend.head_dim());
            let sentences =
                tokenized_sentences(&tokenizer, corpus, opts.sentences, encoder.context())
                    .map_err(run_err(model, "tokenizing the corpus"))?;
            if sentences.is_empty() {
                return Err(EvalError::TooFewSentences(0));
            }
            for batch in sentences.chunks(32) {
                let refs: Vec<&Sequence> = batch.iter().collect();
                backend
                    .encode_probed(&refs, &mut activity)
                    .map_err(|e| run_err(model, "measuring importance")(e.0))?;
            }
            (activity, 1)
        }
        OpenModel::Generate {
            tokenizer, backend, ..
        } => {
            let hp = backend.hparams();
            let mut activity = Activity::new(hp.head_dim);
            let group = hp.heads / hp.kv_heads.max(1);
            let eval = EvalOptions {
                ctx: opts.ctx,
                chunks: Some(opts.chunks),
                ..EvalOptions::default()
            };
            for c in chunk(&tokenizer, corpus, eval, model)? {
                backend
                    .score_probed(&c, &mut activity)
                    .map_err(|e| run_err(model, "measuring importance")(e.0))?;
            }
            (activity, group)
        }
    };
    let source =
        Source::open(model).map_err(|e| run_err(model, "reading weights")(e.to_string()))?;
    weigh(&source, &activity, group).map_err(run_err(model, "reading weights"))
}

/// The activity weighted by each layer's `ffn_down` columns and
/// `attn_output` head blocks.
fn weigh(source: &Source, activity: &Activity, group: usize) -> Result<Importance, String> {
    let matrix = |name: String| -> Result<(Vec<f32>, usize), String> {
        let t = source
            .tensors
            .iter()
            .find(|t| t.name == name)
            .ok_or_else(|| format!("tensor `{name}` is missing"))?;
        let cols = t.shape.last().copied().unwrap_or(1);
        let floats = source.floats(t, Vec::new()).map_err(|e| e.to_string())?;
        Ok((floats.into_owned(), cols))
    };
    let d = activity.head_dim;
    let mut ffn = Vec::with_capacity(activity.ffn.len());
    let mut heads = Vec::with_capacity(activity.heads.len());
    for (l, (squares, grams)) in activity.ffn.iter().zip(&activity.heads).enumerate() {
        let (down, cols) = matrix(format!("blk.{l}.ffn_down.weight"))?;
        if cols != squares.len() {
            return Err(format!(
                "blk.{l}.ffn_down.weight has {cols} columns for {} channels",
                squares.len()
            ));
        }
        let mut norms = vec![0f64; cols];
        for row in down.chunks_exact(cols) {
            for (n, w) in norms.iter_mut().zip(row) {
                *n += f64::from(*w) * f64::from(*w);
            }
        }
        ffn.push(norms.iter().zip(squares).map(|(n, s)| n * s).collect());
        let (wo, cols) = matrix(format!("blk.{l}.attn_output.weight"))?;
        if cols != grams.len() * d {
            return Err(format!(
                "blk.{l}.attn_output.weight has {cols} columns for {} heads of {d}",
                grams.len()
            ));
        }
        let energy = |h: usize, gram: &[f64]| {
            // ⟨G, WᵀW⟩ over this head's columns of W = attn_output.
            let mut e = 0.0;
            for row in wo.chunks_exact(cols) {
                let w = &row[h * d..(h + 1) * d];
                for (a, wa) in w.iter().enumerate() {
                    for (b, wb) in w.iter().enumerate() {
                        e += gram[a * d + b] * f64::from(*wa) * f64::from(*wb);
                    }
                }
            }
            e
        };
        heads.push(
            grams
                .iter()
                .enumerate()
                .map(|(h, g)| energy(h, g))
                .collect(),
        );
    }
    Ok(Importance {
        ffn,
        heads,
        group,
        tokens: activity.tokens,
    })
}

/// FFN channels kept when `fraction` of `all` go: a multiple of 32 (the
/// block of our quantized kernels and of q8_0/q4_0), at least 32.
pub fn kept_channels(all: usize, fraction: f64) -> usize {
    let kept = (all as f64 * (1.0 - fraction)).round() as usize;
    (kept.div_ceil(32) * 32).clamp(32.min(all), all)
}

/// Query heads kept per KV head when `fraction` of `group` go (the whole
/// heads, KV head included, when each has one query head): at least one.
pub fn kept_heads(all: usize, fraction: f64) -> usize {
    ((all as f64 * (1.0 - fraction)).round() as usize).clamp(1, all)
}

/// The cut that removes `prune`'s share of each layer's least important
/// channels and heads. With grouped-query attention, every KV head keeps
/// the same number of its query heads (so the model keeps its shape);
/// otherwise whole heads go.
pub fn choose(importance: &Importance, prune: StructuredPrune) -> Cut {
    let layers = importance
        .ffn
        .iter()
        .zip(&importance.heads)
        .enumerate()
        .map(|(source, (ffn, heads))| {
            let ffn = (prune.ffn > 0.0).then(|| top(ffn, kept_channels(ffn.len(), prune.ffn)));
            let heads = (prune.heads > 0.0).then(|| {
                let g = importance.group.max(1);
                if g == 1 {
                    top(heads, kept_heads(heads.len(), prune.heads))
                } else {
                    let per = kept_heads(g, prune.heads);
                    heads
                        .chunks(g)
                        .enumerate()
                        .flat_map(|(kv, scores)| {
                            top(scores, per).into_iter().map(move |i| kv * g + i)
                        })
                        .collect()
                }
            });
            LayerCut { source, ffn, heads }
        })
        .collect();
    Cut { layers }
}

/// The indices of the `k` largest scores, ascending (ties to the lower
/// index, so the choice is deterministic).
fn top(scores: &[f64], k: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order.truncate(k);
    order.sort_unstable();
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_round_to_whole_blocks_and_heads() {
        assert_eq!(kept_channels(1536, 0.25), 1152);
        assert_eq!(kept_channels(1536, 0.3), 1088);
        assert_eq!(kept_channels(100, 0.99), 32);
        assert_eq!(kept_channels(16, 0.5), 16);
        assert_eq!(kept_heads(12, 0.25), 9);
        assert_eq!(kept_heads(3, 0.34), 2);
        assert_eq!(kept_heads(3, 0.9), 1);
    }

    #[test]
    fn the_least_important_go_and_groups_stay_even() {
        let imp = Importance {
            ffn: vec![(0..64).map(|j| j as f64).collect()],
            // Two KV heads of three query heads each.
            heads: vec![vec![5.0, 1.0, 3.0, 0.5, 9.0, 2.0]],
            group: 3,
            tokens: 1,
        };
        let cut = choose(
            &imp,
            StructuredPrune {
                ffn: 0.5,
                heads: 0.34,
            },
        );
        let l = &cut.layers[0];
        assert_eq!(l.ffn.as_deref(), Some(&(32..64).collect::<Vec<_>>()[..]));
        assert_eq!(l.heads.as_deref(), Some(&[0, 2, 4, 5][..]));
        let none = choose(&imp, StructuredPrune::default());
        assert_eq!(
            (none.layers[0].ffn.clone(), none.layers[0].heads.clone()),
            (None, None)
        );
        // Without grouping, whole heads by score.
        let imp = Importance { group: 1, ..imp };
        let cut = choose(
            &imp,
            StructuredPrune {
                ffn: 0.0,
                heads: 0.5,
            },
        );
        assert_eq!(cut.layers[0].heads.as_deref(), Some(&[0, 2, 4][..]));
    }
}
