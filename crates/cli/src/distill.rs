//! `modelship distill`: a student built from its teacher by dropping whole
//! layers (as DistilBERT and shortened LLaMA are), written as GGUF.

use std::path::PathBuf;

use modelship_quant::surgery::{Cut, spread};
use modelship_types::QuantType;

use crate::Failure;
use crate::compute::init_threads;

#[derive(clap::Args)]
pub struct Args {
    /// The teacher: an HF directory (BERT or a decoder checkpoint) or a GGUF file.
    teacher: PathBuf,
    /// Layers the student keeps, spread evenly over the teacher's (the
    /// first and the last always among them).
    #[arg(
        long,
        required_unless_present = "drop_layers",
        conflicts_with = "drop_layers"
    )]
    student_layers: Option<usize>,
    /// The teacher's layers to drop, by index: `2,4` or `20-25`.
    #[arg(long, value_delimiter = ',', value_parser = parse_range)]
    drop_layers: Vec<std::ops::RangeInclusive<usize>>,
    /// Training steps on the corpus with the teacher's outputs. Only 0 (the
    /// dropped student, untrained) is built so far.
    #[arg(long, default_value_t = 0)]
    steps: usize,
    /// Type of the written tensors.
    #[arg(long, default_value = "f16")]
    to: QuantType,
    #[arg(short, long)]
    output: PathBuf,
    #[arg(long, env = "MODELSHIP_THREADS")]
    threads: Option<usize>,
}

fn parse_range(s: &str) -> Result<std::ops::RangeInclusive<usize>, String> {
    let index = |v: &str| {
        v.trim()
            .parse::<usize>()
            .map_err(|_| format!("`{v}` is not a layer index"))
    };
    match s.split_once('-') {
        Some((a, b)) => {
            let (a, b) = (index(a)?, index(b)?);
            if a > b {
                return Err(format!("`{s}` runs backwards"));
            }
            Ok(a..=b)
        }
        None => index(s).map(|i| i..=i),
    }
}

pub fn run(args: Args) -> Result<(), Failure> {
    if args.steps > 0 {
        return Err(Failure::Config(anyhow::anyhow!(
            "invalid `--steps`: training the student is not built yet; `--steps 0` writes the dropped student"
        )));
    }
    init_threads(args.threads)?;
    let teacher = modelship_quant::Source::open(&args.teacher).map_err(|e| {
        Failure::User(
            anyhow::Error::new(e).context(format!("cannot open {}", args.teacher.display())),
        )
    })?;
    let layers = teacher.layers();
    drop(teacher);
    let kept: Vec<usize> = match args.student_layers {
        Some(n) if n == 0 || n > layers => {
            return Err(Failure::Config(anyhow::anyhow!(
                "invalid `--student-layers`: {n} is not between 1 and the teacher's {layers}"
            )));
        }
        Some(n) => spread(layers, n),
        None => {
            if let Some(r) = args.drop_layers.iter().find(|r| *r.end() >= layers) {
                return Err(Failure::Config(anyhow::anyhow!(
                    "invalid `--drop-layers`: layer {} is past the teacher's {layers}",
                    r.end()
                )));
            }
            let kept: Vec<usize> = (0..layers)
                .filter(|l| !args.drop_layers.iter().any(|r| r.contains(l)))
                .collect();
            if kept.is_empty() {
                return Err(Failure::Config(anyhow::anyhow!(
                    "invalid `--drop-layers`: it drops all {layers} layers"
                )));
            }
            kept
        }
    };
    println!(
        "student keeps {} of {layers} layers: {}",
        kept.len(),
        kept.iter()
            .map(usize::to_string)
            .collect::<Vec<_>>()
            .join(",")
    );
    crate::quantize::write_cut(&args.teacher, &Cut::layers(kept), args.to, &args.output)
}
