//! Evaluation against independent references: perplexity, KL divergence and
//! top-1 agreement as llama.cpp computes them (tests/fixtures/
//! llama_perplexity.json, from scripts/reference/llama_perplexity.py), and
//! the optimize stage choosing by the gate.

use modelship_optimize::{Corpus, EvalOptions, Report, evaluate, optimize};
use modelship_types::{Gate, Optimize, QuantChoice, QuantType};

#[test]
fn perplexity_kld_and_top1_agree_with_llama_cpp() {
    let dir = tempfile::tempdir().unwrap();
    let smollm = modelship_testkit::smollm();
    let reference = modelship_testkit::quantized(&smollm, QuantType::F32, dir.path());
    let fx = modelship_testkit::fixture("llama_perplexity.json");
    for run in fx["runs"].as_array().unwrap() {
        let opts = EvalOptions {
            ctx: run["ctx"].as_u64().unwrap() as usize,
            chunks: Some(run["chunks"].as_u64().unwrap() as usize),
            ..EvalOptions::default()
        };
        let Report::Generate(r) = evaluate(&smollm, &reference, &Corpus::builtin(), opts).unwrap()
        else {
            panic!("a generative model")
        };
        let f = |k: &str| run[k].as_f64().unwrap();
        eprintln!("ctx {}: ours {r:?}\n llama.cpp {run}", opts.ctx);
        assert_eq!(
            r.tokens_scored as u64,
            run["tokens_scored"].as_u64().unwrap(),
            "same positions scored"
        );
        for (ours, theirs, what) in [
            (r.perplexity, f("perplexity"), "perplexity"),
            (
                r.reference_perplexity,
                f("reference_perplexity"),
                "reference perplexity",
            ),
        ] {
            assert!(
                (ours / theirs - 1.0).abs() < 0.01,
                "{what}: ours {ours}, llama.cpp {theirs}"
            );
        }
        // The file's tied output matrix is Q8_0, which our engine multiplies
        // with 16-bit activations where llama.cpp quantizes them to 8 bits:
        // ours is closer to the reference, by a bounded margin.
        assert!(
            (0.5..1.2).contains(&(r.kld / f("kld"))),
            "kld: ours {}, llama.cpp {}",
            r.kld,
            f("kld")
        );
        assert!(
            (-0.01..0.02).contains(&(r.top1_agreement - f("top1_agreement"))),
            "top-1: ours {}",
            r.top1_agreement
        );
    }
}

#[test]
fn embedding_quality_tracks_precision() {
    let dir = tempfile::tempdir().unwrap();
    let minilm = modelship_testkit::minilm();
    let opts = EvalOptions {
        sentences: 48,
        ..EvalOptions::default()
    };
    let eval = |to| match evaluate(
        &modelship_testkit::quantized(&minilm, to, dir.path()),
        &minilm,
        &Corpus::builtin(),
        opts,
    )
    .unwrap()
    {
        Report::Embeddings(r) => r,
        other => panic!("an embedding model: {other:?}"),
    };
    let f32 = eval(QuantType::F32);
    assert_eq!(f32.sentences, 48);
    assert!(f32.cosine_min > 0.99999, "{f32:?}");
    let q8 = eval(QuantType::Q8_0);
    assert!(q8.cosine_mean >= 0.999 && q8.spearman > 0.99, "{q8:?}");
    let q4 = eval(QuantType::Q4_0);
    assert!(
        q4.cosine_mean < q8.cosine_mean && q4.cosine_min <= q4.cosine_mean,
        "{q4:?} vs {q8:?}"
    );
}

#[test]
fn optimize_keeps_the_smallest_passing_precision_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let minilm = modelship_testkit::minilm();
    let opts = EvalOptions {
        sentences: 32,
        ..EvalOptions::default()
    };
    let spec = Optimize {
        quantize: QuantChoice::Auto,
        gate: Gate {
            min_cosine: Some(0.999),
            ..Gate::default()
        },
        ..Optimize::default()
    };
    let outcome = optimize(&minilm, &spec, dir.path(), opts, &mut |_| {}).unwrap();
    assert_eq!(outcome.candidates.len(), QuantType::ALL.len());
    let chosen = outcome.chosen().expect("q8_0 passes 0.999");
    assert!(chosen.passed() && chosen.path.exists());
    for c in &outcome.candidates {
        if c.file_bytes < chosen.file_bytes {
            assert!(
                !c.passed(),
                "{} is smaller and passes: {}",
                c.quant,
                outcome.table()
            );
        }
    }
    assert!(outcome.table().contains("pass, chosen"));

    let strict = Optimize {
        quantize: QuantChoice::Type(QuantType::Q4_0),
        gate: Gate {
            min_cosine: Some(0.9999),
            ..Gate::default()
        },
        ..Optimize::default()
    };
    let outcome = optimize(&minilm, &strict, dir.path(), opts, &mut |_| {}).unwrap();
    assert!(outcome.chosen().is_none());
    assert!(
        outcome.table().contains("fail: cosine_mean"),
        "{}",
        outcome.table()
    );
}

/// `auto` on a Hugging Face checkpoint measures every candidate against the
/// checkpoint itself, served as stored (no f32 reference file is written):
/// the bf16 candidate holds the same values, so its perplexity is the
/// checkpoint's to the last bit, its top-1 agreement full and its KL
/// divergence only the f16 rounding of the stored reference log-probabilities
/// (~4e-5); the 4-bit ones diverge more than q8_0, and the smallest passing
/// candidate is chosen.
#[test]
fn optimize_measures_candidates_against_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = modelship_testkit::smollm_checkpoint_bf16();
    let opts = EvalOptions {
        ctx: 128,
        chunks: Some(2),
        ..EvalOptions::default()
    };
    let spec = Optimize {
        quantize: QuantChoice::Auto,
        gate: Gate {
            max_kld: Some(0.05),
            ..Gate::default()
        },
        ..Optimize::default()
    };
    let outcome = optimize(&checkpoint, &spec, dir.path(), opts, &mut |_| {}).unwrap();
    assert_eq!(outcome.reference, checkpoint);
    assert_eq!(outcome.candidates.len(), QuantType::ALL.len());
    let report = |q: QuantType| match &outcome
        .candidates
        .iter()
        .find(|c| c.quant == q)
        .unwrap()
        .report
    {
        Report::Generate(r) => r.clone(),
        other => panic!("{other:?}"),
    };
    // The same bf16 weights: the checkpoint is served with Hugging Face's
    // rope (halves) and its GGUF with llama.cpp's order (interleaved), the
    // same products summed in another order, so only rounding differs.
    let bf16 = report(QuantType::Bf16);
    assert!(
        bf16.ppl_increase.abs() < 1e-4 && bf16.top1_agreement == 1.0 && bf16.kld < 1e-4,
        "{bf16:?}"
    );
    let (q8, q4) = (report(QuantType::Q8_0), report(QuantType::Q4_0));
    assert!(q8.kld > 0.0 && q4.kld > q8.kld, "q8_0 {q8:?}\nq4_0 {q4:?}");
    let chosen = outcome.chosen().expect("q8_0 passes a KL bound of 0.05");
    for c in &outcome.candidates {
        assert!(
            c.file_bytes >= chosen.file_bytes || !c.passed(),
            "{} is smaller and passes:\n{}",
            c.quant,
            outcome.table()
        );
    }
}

/// MPNet (relative position buckets) quantized to q8_0 is served with the
/// quantized kernels and keeps its embeddings.
#[test]
fn mpnet_q8_0_keeps_its_embeddings() {
    let dir = tempfile::tempdir().unwrap();
    let mpnet = modelship_testkit::mpnet();
    let opts = EvalOptions {
        sentences: 48,
        ..EvalOptions::default()
    };
    let q8 = modelship_testkit::quantized(&mpnet, QuantType::Q8_0, dir.path());
    let info = modelship_model::inspect(&q8).unwrap();
    assert_eq!(info.architecture, "mpnet");
    assert!(info.dtypes["Q8_0"].tensors >= 72, "{:?}", info.dtypes);
    match evaluate(&q8, &mpnet, &Corpus::builtin(), opts).unwrap() {
        Report::Embeddings(r) => {
            assert!(r.cosine_mean >= 0.999 && r.spearman > 0.99, "{r:?}")
        }
        other => panic!("{other:?}"),
    }
}

/// A reranker's and a classifier's scores through precisions: the f32 GGUF
/// scores as the checkpoint does, 4-bit ones drift more than q8_0, and `auto`
/// keeps the smallest precision whose best answers agree.
#[test]
fn score_quality_tracks_precision() {
    let dir = tempfile::tempdir().unwrap();
    let opts = EvalOptions {
        sentences: 90,
        ..EvalOptions::default()
    };
    for (name, task) in [
        ("bert-reranker", modelship_types::Task::Rerank),
        ("bert-classifier", modelship_types::Task::Classify),
    ] {
        let model = modelship_testkit::tiny_encoder(name);
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let eval = |to| match evaluate(
            &modelship_testkit::quantized(&model, to, &sub),
            &model,
            &Corpus::builtin(),
            opts,
        )
        .unwrap()
        {
            Report::Scores(r) => r,
            other => panic!("{name}: a scores report, not {other:?}"),
        };
        let f32 = eval(QuantType::F32);
        assert_eq!(f32.task, task);
        // A reranker scores 10 queries × 8 candidates; a classifier each text.
        let inputs = if task == modelship_types::Task::Rerank {
            80
        } else {
            90
        };
        assert_eq!(f32.inputs, inputs, "{name}");
        assert!(
            f32.max_score_diff < 1e-4 && f32.top1_agreement == 1.0,
            "{name}: {f32:?}"
        );
        let (q8, q4) = (eval(QuantType::Q8_0), eval(QuantType::Q4_0));
        assert!(q8.spearman > 0.99, "{name}: {q8:?}");
        assert!(
            q4.max_score_diff > q8.max_score_diff,
            "{name}: q4_0 {q4:?}\nq8_0 {q8:?}"
        );
        let spec = Optimize {
            quantize: QuantChoice::Auto,
            gate: Gate {
                min_top1: Some(0.95),
                ..Gate::default()
            },
            ..Optimize::default()
        };
        let outcome = optimize(&model, &spec, &sub.join("auto"), opts, &mut |_| {}).unwrap();
        let chosen = outcome.chosen().expect("f32 at least passes");
        assert!(outcome.table().contains("top1"), "{}", outcome.table());
        for c in &outcome.candidates {
            assert!(
                c.file_bytes >= chosen.file_bytes || !c.passed(),
                "{name}: {} is smaller and passes:\n{}",
                c.quant,
                outcome.table()
            );
        }
    }
}
