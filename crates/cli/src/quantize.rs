//! `modelship quantize` and `modelship prune`: one streaming pass over the
//! tensors, with a progress bar on a terminal and the per-tensor policy and
//! a summary after.

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use modelship_model::ggml_dtype_name;
use modelship_optimize::importance::{self, ImportanceOptions};
use modelship_quant::surgery::Cut;
use modelship_quant::{QuantizeOptions, Source, Summary, quantize_verified};
use modelship_types::{PrunePattern, PruneSpec, QuantType, StructuredPrune};

use crate::Failure;
use crate::compute::{init_threads, peak_rss_bytes};

#[derive(clap::Args)]
pub struct QuantizeArgs {
    /// An HF directory (BERT or a decoder checkpoint) or a GGUF file.
    model: PathBuf,
    /// f32, f16, bf16, q8_0, q6_k, q5_k, q4_1, q4_k or q4_0.
    #[arg(long)]
    to: QuantType,
    /// Where to write the GGUF file.
    #[arg(short, long)]
    output: PathBuf,
    /// Compute threads (default: all cores).
    #[arg(long, env = "MODELSHIP_THREADS")]
    threads: Option<usize>,
    /// Print a line for every tensor, not only the policy summary.
    #[arg(short, long)]
    verbose: bool,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// An HF directory (BERT or a decoder checkpoint) or a GGUF file.
    model: PathBuf,
    /// Magnitude pruning: the fraction of each linear layer's weights to
    /// zero, in [0, 1) (the matrices keep their shape).
    #[arg(long, required_unless_present_any = ["ffn", "heads"], conflicts_with_all = ["ffn", "heads"])]
    sparsity: Option<f64>,
    /// `unstructured` or `2:4`.
    #[arg(long, default_value = "unstructured", value_parser = parse_pattern)]
    pattern: PrunePattern,
    /// Structured pruning: the fraction of each layer's FFN channels to
    /// remove, the least important on the corpus first (the matrices shrink).
    #[arg(long)]
    ffn: Option<f64>,
    /// Structured pruning: the fraction of each layer's attention heads to
    /// remove (of each KV head's query heads, with grouped-query attention).
    #[arg(long)]
    heads: Option<f64>,
    /// Text that ranks channels and heads (default: the built-in corpus).
    #[arg(long)]
    corpus: Option<PathBuf>,
    /// Type of the written tensors (f16 keeps zeros exact and halves f32).
    #[arg(long, default_value = "f16")]
    to: QuantType,
    #[arg(short, long)]
    output: PathBuf,
    #[arg(long, env = "MODELSHIP_THREADS")]
    threads: Option<usize>,
}

fn parse_pattern(s: &str) -> Result<PrunePattern, String> {
    match s {
        "unstructured" => Ok(PrunePattern::Unstructured),
        "2:4" => Ok(PrunePattern::TwoFour),
        other => Err(format!("`{other}` is not `unstructured` or `2:4`")),
    }
}

pub fn run_quantize(args: QuantizeArgs) -> Result<(), Failure> {
    init_threads(args.threads)?;
    let opts = QuantizeOptions {
        to: args.to,
        prune: None,
    };
    let summary = run(&args.model, &args.output, opts)?;
    print!("{}", policy_table(&summary, args.verbose));
    print!("{}", summary_lines(&summary));
    Ok(())
}

pub fn run_prune(args: PruneArgs) -> Result<(), Failure> {
    let Some(sparsity) = args.sparsity else {
        return run_structured(args);
    };
    let spec = PruneSpec {
        sparsity,
        pattern: args.pattern,
    };
    spec.validate()
        .map_err(|e| Failure::Config(anyhow::anyhow!("invalid `--sparsity`: {}", e.reason)))?;
    init_threads(args.threads)?;
    let opts = QuantizeOptions {
        to: args.to,
        prune: Some(spec),
    };
    let summary = run(&args.model, &args.output, opts)?;
    print!("{}", sparsity_table(&summary));
    print!("{}", summary_lines(&summary));
    Ok(())
}

/// `prune --ffn/--heads`: rank channels and heads on the corpus, cut the
/// least important, write the smaller model.
fn run_structured(args: PruneArgs) -> Result<(), Failure> {
    let prune = StructuredPrune {
        ffn: args.ffn.unwrap_or(0.0),
        heads: args.heads.unwrap_or(0.0),
    };
    prune.validate().map_err(|e| {
        Failure::Config(anyhow::anyhow!(
            "invalid `--{}`: {}",
            e.field.rsplit('.').next().unwrap_or(e.field),
            e.reason
        ))
    })?;
    init_threads(args.threads)?;
    let corpus = crate::evaluate::corpus(args.corpus.as_deref())?;
    let started = std::time::Instant::now();
    let importance = importance::measure(&args.model, &corpus, ImportanceOptions::default())
        .with_context(|| {
            format!(
                "cannot rank the channels and heads of {}",
                args.model.display()
            )
        })?;
    eprintln!(
        "ranked channels and heads on {} tokens of {} in {:.1} s",
        importance.tokens,
        corpus.name,
        started.elapsed().as_secs_f64()
    );
    let cut = importance::choose(&importance, prune);
    write_cut(&args.model, &cut, args.to, &args.output)
}

/// Writes `model` with `cut` applied as `to`, and says what changed.
pub fn write_cut(model: &Path, cut: &Cut, to: QuantType, output: &Path) -> Result<(), Failure> {
    let source = open(model)?;
    let before = shape_of(&source)?;
    let parameters_before: u64 = source.tensors.iter().map(|t| t.elements() as u64).sum();
    let cut_source = source
        .cut(cut)
        .with_context(|| format!("cannot cut {}", model.display()))?;
    let after = shape_of(&cut_source)?;
    let opts = QuantizeOptions { to, prune: None };
    let summary = write(cut_source, output, opts)?;
    println!(
        "{:<14} {:>8} {:>8}\n{:<14} {:>8} {:>8}\n{:<14} {:>8} {:>8}\n{:<14} {:>8} {:>8}\n{:<14} {:>8.1}M {:>7.1}M",
        "",
        "before",
        "after",
        "layers",
        before.layers,
        after.layers,
        "FFN channels",
        before.feed_forward,
        after.feed_forward,
        "heads (KV)",
        format!("{} ({})", before.heads, before.kv_heads),
        format!("{} ({})", after.heads, after.kv_heads),
        "parameters",
        parameters_before as f64 / 1e6,
        summary.parameters as f64 / 1e6,
    );
    print!("{}", summary_lines(&summary));
    Ok(())
}

fn shape_of(source: &Source) -> Result<modelship_quant::surgery::Shape, Failure> {
    modelship_quant::surgery::shape(&source.architecture, &source.metadata)
        .map_err(|e| Failure::User(anyhow::anyhow!("{}: {e}", source.path.display())))
}

/// Runs the pass; the summary's time covers opening the model too (as
/// llama.cpp's `llama_model_quantize` does), not process start-up.
fn run(model: &Path, output: &Path, opts: QuantizeOptions) -> Result<Summary, Failure> {
    let started = std::time::Instant::now();
    let summary = write(open(model)?, output, opts)?;
    Ok(Summary {
        elapsed: started.elapsed(),
        ..summary
    })
}

fn open(model: &Path) -> Result<Source, Failure> {
    Ok(Source::open(model).with_context(|| format!("cannot open {}", model.display()))?)
}

/// One pass over `source`'s tensors to `output`, with a progress bar on a
/// terminal and the written file checked before it takes its name.
fn write(source: Source, output: &Path, opts: QuantizeOptions) -> Result<Summary, Failure> {
    let bar = if std::io::stderr().is_terminal() {
        let bar = ProgressBar::new(source.tensors.len() as u64);
        bar.set_style(
            ProgressStyle::with_template("{bar:30} {pos}/{len} tensors {msg}")
                .expect("a valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };
    let summary = quantize_verified(
        &source,
        output,
        opts,
        &mut |done, _, name| {
            bar.set_position(done as u64);
            bar.set_message(name.to_owned());
        },
        &servable,
    )
    .with_context(|| format!("cannot write {}", output.display()))?;
    bar.finish_and_clear();
    Ok(summary)
}

/// Whether `serve` can load the weights of the written model (no tensor
/// missing or of the wrong shape): the engine's loader is the one statement
/// of what each architecture needs, so it is asked rather than restated
/// here. Checking the output rather than the source catches a bad source
/// and a fault of the writer alike, and costs less: the matrices our kernels
/// read stay mapped where they lie. (The tokenizer metadata is copied as
/// read.)
fn servable(model: &Path) -> Result<(), String> {
    modelship_engine_candle::check_gguf_weights(model)
        .map_err(|e| format!("{:#}", anyhow::Error::new(e)))
}

/// Tensors grouped by the type they got and why.
fn policy_table(s: &Summary, verbose: bool) -> String {
    let mut out = String::new();
    if verbose {
        for t in &s.tensors {
            out.push_str(&format!(
                "{:<32} {:>14} {:>5} -> {:<5} {}\n",
                t.name,
                format!("{:?}", t.shape),
                ggml_dtype_name(t.from),
                ggml_dtype_name(t.to),
                t.rule
            ));
        }
        out.push('\n');
    }
    let mut groups: BTreeMap<(&str, String), (usize, u64, u64)> = BTreeMap::new();
    for t in &s.tensors {
        let g = groups
            .entry((ggml_dtype_name(t.to), t.rule.to_string()))
            .or_default();
        g.0 += 1;
        g.1 += t.shape.iter().product::<usize>() as u64;
        g.2 += t.bytes_out;
    }
    out.push_str(&format!(
        "{:<6} {:>7} {:>12} {:>10}  why\n",
        "type", "tensors", "weights", "MiB"
    ));
    for ((dtype, why), (n, weights, bytes)) in groups {
        out.push_str(&format!(
            "{dtype:<6} {n:>7} {weights:>12} {:>10.2}  {why}\n",
            mib(bytes)
        ));
    }
    out
}

/// Sparsity of each layer's pruned linear weights.
fn sparsity_table(s: &Summary) -> String {
    let mut layers: BTreeMap<usize, (usize, u64, u64)> = BTreeMap::new();
    for t in &s.tensors {
        let Some(zeros) = t.zeros else { continue };
        let layer = modelship_quant::policy::layer_of(&t.name).unwrap_or(0);
        let e = layers.entry(layer).or_default();
        e.0 += 1;
        e.1 += t.shape.iter().product::<usize>() as u64;
        e.2 += zeros as u64;
    }
    let mut out = format!(
        "{:<6} {:>7} {:>12} {:>12} {:>9}\n",
        "layer", "tensors", "weights", "zeros", "sparsity"
    );
    let (mut all, mut zero) = (0u64, 0u64);
    for (layer, (n, weights, zeros)) in layers {
        out.push_str(&format!(
            "{layer:<6} {n:>7} {weights:>12} {zeros:>12} {:>8.2}%\n",
            100.0 * zeros as f64 / weights.max(1) as f64
        ));
        all += weights;
        zero += zeros;
    }
    out.push_str(&format!(
        "{:<6} {:>7} {all:>12} {zero:>12} {:>8.2}%\n",
        "all",
        "",
        100.0 * zero as f64 / all.max(1) as f64
    ));
    out
}

fn summary_lines(s: &Summary) -> String {
    let peak = peak_rss_bytes()
        .map(|b| format!("{:.1} MiB", mib(b)))
        .unwrap_or_else(|| "unknown".into());
    format!(
        "wrote {} ({})\nweights: {:.2} MiB -> {:.2} MiB, {:.2} bits/weight over {} parameters\nfile: {:.2} MiB; {:.3} s ({:.0} MB/s of input); peak memory {peak}\n",
        s.output.display(),
        s.to,
        mib(s.weight_bytes_in),
        mib(s.weight_bytes_out),
        s.bits_per_weight(),
        s.parameters,
        mib(s.file_bytes_out),
        s.elapsed.as_secs_f64(),
        s.throughput_mb_s(),
    )
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}
