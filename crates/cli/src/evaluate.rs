//! `modelship eval MODEL --reference REF` and `modelship optimize -f SPEC`.

use std::path::{Path, PathBuf};

use anyhow::Context;
use modelship_optimize::{Corpus, EvalOptions, Report, evaluate, optimize};

use crate::Failure;
use crate::compute::init_threads;
use crate::spec::read_spec;

#[derive(clap::Args)]
pub struct EvalArgs {
    /// The model to measure (HF directory or GGUF file).
    model: PathBuf,
    /// The model it is measured against, usually the original.
    #[arg(long)]
    reference: PathBuf,
    /// Evaluation text (default: the built-in Shakespeare corpus).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Tokens per perplexity chunk (llama.cpp's `-c`).
    #[arg(long, default_value_t = EvalOptions::default().ctx)]
    ctx: usize,
    /// Score at most this many chunks (llama.cpp's `--chunks`).
    #[arg(long)]
    chunks: Option<usize>,
    /// Sentences for embedding models.
    #[arg(long, default_value_t = EvalOptions::default().sentences)]
    sentences: usize,
    #[arg(long, env = "MODELSHIP_THREADS")]
    threads: Option<usize>,
    /// Print every figure as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct OptimizeArgs {
    /// The deployment spec (modelship.yaml).
    #[arg(short = 'f', long = "file")]
    spec: PathBuf,
    /// Where candidate models are written.
    #[arg(long, default_value = "modelship-optimize")]
    out_dir: PathBuf,
    #[arg(long, default_value_t = EvalOptions::default().ctx)]
    ctx: usize,
    #[arg(long)]
    chunks: Option<usize>,
    #[arg(long, env = "MODELSHIP_THREADS")]
    threads: Option<usize>,
}

pub fn run_eval(args: EvalArgs) -> Result<(), Failure> {
    if args.ctx < 4 {
        return Err(Failure::Config(anyhow::anyhow!(
            "invalid `--ctx`: {} is fewer than 4 tokens",
            args.ctx
        )));
    }
    init_threads(args.threads)?;
    let corpus = corpus(args.corpus.as_deref())?;
    let opts = EvalOptions {
        ctx: args.ctx,
        chunks: args.chunks,
        sentences: args.sentences,
    };
    let report = evaluate(&args.model, &args.reference, &corpus, opts)
        .with_context(|| format!("cannot evaluate {}", args.model.display()))?;
    crate::print_output(args.json, &report, report_lines);
    Ok(())
}

fn report_lines(r: &Report) -> String {
    match r {
        Report::Generate(g) => format!(
            "corpus          {}\nchunks          {} × {} tokens ({} scored)\nperplexity      {:.4} (reference {:.4}, {:+.2}%)\nKL divergence   {:.6}\ntop-1 agreement {:.2}%\n",
            g.corpus,
            g.chunks,
            g.ctx,
            g.tokens_scored,
            g.perplexity,
            g.reference_perplexity,
            100.0 * g.ppl_increase,
            g.kld,
            100.0 * g.top1_agreement
        ),
        Report::Embeddings(e) => format!(
            "corpus          {}\nsentences       {}\ncosine mean     {:.6}\ncosine min      {:.6}\nspearman        {:.6}\n",
            e.corpus, e.sentences, e.cosine_mean, e.cosine_min, e.spearman
        ),
        Report::Scores(s) => format!(
            "corpus          {}
{:<15} {}
max score diff  {:.6}
spearman        {:.6}
top-1 agreement {:.2}%
",
            s.corpus,
            if s.task == modelship_types::Task::Rerank {
                "pairs"
            } else {
                "texts"
            },
            s.inputs,
            s.max_score_diff,
            s.spearman,
            100.0 * s.top1_agreement
        ),
    }
}

pub fn run_optimize(args: OptimizeArgs) -> Result<(), Failure> {
    let spec = read_spec(&args.spec)?;
    init_threads(args.threads)?;
    let opts = EvalOptions {
        ctx: args.ctx,
        chunks: args.chunks,
        ..EvalOptions::default()
    };
    let workdir = args.out_dir.join(&spec.metadata.name);
    let outcome = optimize(
        &spec.spec.model.source,
        &spec.spec.optimize,
        &workdir,
        opts,
        &mut |step| eprintln!("{step}"),
    )
    .with_context(|| format!("cannot optimize {}", spec.metadata.name))?;
    if outcome.candidates.is_empty() {
        println!(
            "nothing to optimize: quantize is `none` and no pruning; serving {}",
            spec.spec.model.source.display()
        );
        return Ok(());
    }
    println!("reference: {}", outcome.reference.display());
    print!("{}", outcome.table());
    match outcome.chosen() {
        Some(c) => {
            println!("chosen: {} ({})", c.quant, c.path.display());
            Ok(())
        }
        None => Err(Failure::User(anyhow::anyhow!(
            "no candidate passes the quality gate of {}",
            spec.metadata.name
        ))),
    }
}

/// `--corpus FILE`, or the built-in corpus.
pub fn corpus(path: Option<&Path>) -> Result<Corpus, Failure> {
    Ok(match path {
        Some(p) => Corpus::from_file(p).with_context(|| format!("cannot read {}", p.display()))?,
        None => Corpus::builtin(),
    })
}
