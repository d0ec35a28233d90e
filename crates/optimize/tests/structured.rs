//! Structured pruning against its definition: a model with FFN channels and
//! heads cut out of its matrices computes what the original computes with
//! the same channels and heads zeroed inside the forward pass; and the
//! measured importance chooses better than its opposite.

use std::path::{Path, PathBuf};

use modelship_engine::{EncodeBackend, Sequence};
use modelship_engine_candle::{Device, Mask, OpenModel, open};
use modelship_optimize::importance::{self, Importance, ImportanceOptions};
use modelship_optimize::{Corpus, EvalOptions, Report, evaluate};
use modelship_quant::surgery::Cut;
use modelship_quant::{QuantizeOptions, Source, quantize};
use modelship_types::{QuantType, StructuredPrune};

/// `model` with `cut` applied, written as f32.
fn write_cut(model: &Path, cut: &Cut, out: PathBuf) -> PathBuf {
    let source = Source::open(model).unwrap().cut(cut).unwrap();
    let opts = QuantizeOptions {
        to: QuantType::F32,
        prune: None,
    };
    quantize(&source, &out, opts, &mut |_, _, _| {}).unwrap();
    out
}

/// The probe that zeroes what `cut` removes from a model of these counts.
fn mask_of(cut: &Cut, ffn: usize, heads: usize, head_dim: usize) -> Mask {
    let removed = |kept: &Option<Vec<usize>>, all: usize| match kept {
        None => Vec::new(),
        Some(k) => (0..all).filter(|i| !k.contains(i)).collect(),
    };
    Mask {
        head_dim,
        ffn: cut.layers.iter().map(|l| removed(&l.ffn, ffn)).collect(),
        heads: cut
            .layers
            .iter()
            .map(|l| removed(&l.heads, heads))
            .collect(),
    }
}

fn max_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0.0, f32::max)
}

fn ranked(model: &Path) -> Importance {
    let imp = importance::measure(model, &Corpus::builtin(), ImportanceOptions::default()).unwrap();
    assert!(imp.tokens > 1000, "{} tokens", imp.tokens);
    imp
}

#[test]
fn a_pruned_encoder_equals_the_original_with_the_same_channels_and_heads_masked() {
    let dir = tempfile::tempdir().unwrap();
    let minilm = modelship_testkit::minilm();
    let imp = ranked(&minilm);
    assert_eq!(
        (imp.ffn.len(), imp.ffn[0].len(), imp.heads[0].len()),
        (6, 1536, 12)
    );
    let cut = importance::choose(
        &imp,
        StructuredPrune {
            ffn: 0.3,
            heads: 0.25,
        },
    );
    let pruned = write_cut(&minilm, &cut, dir.path().join("pruned.gguf"));

    let open_encoder = |p: &Path| match open(p, &Device::Cpu, 512).unwrap() {
        OpenModel::Encoder {
            tokenizer, backend, ..
        } => (tokenizer, backend),
        _ => panic!("an encoder"),
    };
    let (tokenizer, original) = open_encoder(&minilm);
    let (_, mut small) = open_encoder(&pruned);
    let inputs: Vec<Sequence> = Corpus::builtin()
        .sentences(16)
        .iter()
        .map(|s| {
            let (ids, type_ids) = tokenizer.encode_sequence(s, None, Some(512)).unwrap();
            Sequence { ids, type_ids }
        })
        .collect();
    let refs: Vec<&Sequence> = inputs.iter().collect();
    let mut mask = mask_of(&cut, 1536, 12, original.head_dim());
    let masked = original.encode_probed(&refs, &mut mask).unwrap();
    let unmasked = original.encode_probed(&refs, &mut Mask::default()).unwrap();
    let got = small.encode(&refs).unwrap();
    let d = max_diff(&got, &masked);
    assert!(d < 2e-5, "pruned and masked embeddings differ by {d}");
    // Not the same model: the cut changed what it computes.
    assert!(max_diff(&got, &unmasked) > 1e-2);
}

#[test]
fn a_pruned_decoder_equals_the_original_with_the_same_channels_and_heads_masked() {
    let dir = tempfile::tempdir().unwrap();
    // f32 weights on both sides, so only the cut differs.
    let smollm =
        modelship_testkit::quantized(&modelship_testkit::smollm(), QuantType::F32, dir.path());
    let imp = ranked(&smollm);
    // 30 layers; 9 query heads over 3 KV heads.
    assert_eq!(
        (
            imp.ffn.len(),
            imp.ffn[0].len(),
            imp.heads[0].len(),
            imp.group
        ),
        (30, 1536, 9, 3)
    );
    let cut = importance::choose(
        &imp,
        StructuredPrune {
            ffn: 0.25,
            heads: 0.34,
        },
    );
    for l in &cut.layers {
        let heads = l.heads.as_ref().unwrap();
        assert_eq!(heads.len(), 6, "two query heads of each KV head");
        for kv in 0..3 {
            assert_eq!(heads.iter().filter(|h| *h / 3 == kv).count(), 2);
        }
    }
    let pruned = write_cut(&smollm, &cut, dir.path().join("pruned.gguf"));
    let open_decoder = |p: &Path| match open(p, &Device::Cpu, 512).unwrap() {
        OpenModel::Generate {
            tokenizer, backend, ..
        } => (tokenizer, backend),
        _ => panic!("a decoder"),
    };
    let (tokenizer, original) = open_decoder(&smollm);
    let (_, small) = open_decoder(&pruned);
    assert_eq!(
        (
            small.hparams().heads,
            small.hparams().kv_heads,
            small.hparams().feed_forward
        ),
        (6, 3, 1152)
    );
    let text = &Corpus::builtin().text;
    let tokens = tokenizer.encode(&text[text.len() - 2000..], true).unwrap();
    let tokens = &tokens[..96];
    let hp = original.hparams();
    let mut mask = mask_of(&cut, hp.feed_forward, hp.heads, hp.head_dim);
    let masked = original.score_probed(tokens, &mut mask).unwrap();
    let unmasked = original.score(tokens).unwrap();
    let got = small.score(tokens).unwrap();
    let d = max_diff(&got, &masked);
    let changed = max_diff(&got, &unmasked);
    // A shorter `ffn_down` sums in another order, and the f16 KV cache turns
    // those last-bit differences into f16 roundings that 30 layers carry:
    // the logits agree to ~1e-3 of their range, where one wrong channel or
    // head would move them as much as the cut does.
    assert!(
        d < 0.01 * changed,
        "pruned and masked logits differ by {d} (the cut moves them {changed})"
    );
    let argmax = |v: &Vec<f32>| (0..v.len()).max_by(|&a, &b| v[a].total_cmp(&v[b])).unwrap();
    let agree = got
        .iter()
        .zip(&masked)
        .filter(|(a, b)| argmax(a) == argmax(b))
        .count();
    assert!(
        agree + 1 >= tokens.len(),
        "{agree} of {} next tokens agree",
        tokens.len()
    );
}

/// Removing the channels and heads the ranking calls least important keeps
/// far more of the model than removing the same number of the most
/// important.
#[test]
fn the_ranking_keeps_what_matters() {
    let dir = tempfile::tempdir().unwrap();
    let minilm = modelship_testkit::minilm();
    let imp = ranked(&minilm);
    let prune = StructuredPrune {
        ffn: 0.5,
        heads: 0.25,
    };
    let best = importance::choose(&imp, prune);
    let negated = Importance {
        ffn: imp
            .ffn
            .iter()
            .map(|l| l.iter().map(|v| -v).collect())
            .collect(),
        heads: imp
            .heads
            .iter()
            .map(|l| l.iter().map(|v| -v).collect())
            .collect(),
        ..imp.clone()
    };
    let worst = importance::choose(&negated, prune);
    let cosine = |cut: &Cut, name: &str| {
        let m = write_cut(&minilm, cut, dir.path().join(name));
        let opts = EvalOptions {
            sentences: 64,
            ..EvalOptions::default()
        };
        match evaluate(&m, &minilm, &Corpus::builtin(), opts).unwrap() {
            Report::Embeddings(e) => e.cosine_mean,
            r => panic!("{r:?}"),
        }
    };
    let (b, w) = (cosine(&best, "best.gguf"), cosine(&worst, "worst.gguf"));
    eprintln!("cosine: least important removed {b:.4}, most important removed {w:.4}");
    assert!(b > w + 0.1, "least important removed {b}, most {w}");
}
