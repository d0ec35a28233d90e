//! `modelship inspect MODEL [--json]`.

use std::path::PathBuf;

use anyhow::Context;
use modelship_model::{ModelInfo, inspect};

use crate::Failure;

#[derive(clap::Args)]
pub struct Args {
    /// An HF model directory or a GGUF file.
    model: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let info =
        inspect(&args.model).with_context(|| format!("cannot inspect {}", args.model.display()))?;
    crate::print_output(args.json, &info, table);
    Ok(())
}

fn table(i: &ModelInfo) -> String {
    let opt = |v: Option<usize>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
    let mut s = String::new();
    let mut row = |k: &str, v: String| s.push_str(&format!("{k:<16}{v}\n"));
    row("path", i.path.display().to_string());
    row("format", format!("{:?}", i.format).to_lowercase());
    row("architecture", i.architecture.clone());
    if let Some(n) = &i.name {
        row("name", n.clone());
    }
    row(
        "task",
        i.task.map(|t| t.to_string()).unwrap_or_else(|| "-".into()),
    );
    row(
        "parameters",
        format!("{} ({})", i.parameters, human_count(i.parameters)),
    );
    row(
        "file size",
        format!("{} ({})", i.file_bytes, human_bytes(i.file_bytes)),
    );
    row("weights", human_bytes(i.weight_bytes));
    row("context length", opt(i.context_length));
    row("vocabulary", opt(i.vocab_size));
    row("hidden size", opt(i.hidden_size));
    row("layers", opt(i.layers));
    row(
        "heads (kv)",
        format!("{} ({})", opt(i.attention_heads), opt(i.kv_heads)),
    );
    if let Some(d) = &i.decoder {
        row("head size", d.head_dim.to_string());
        row("feed forward", d.feed_forward.to_string());
        let rope = if d.rope_local != d.rope {
            format!("{} (sliding layers {})", d.rope.base, d.rope_local.base)
        } else {
            d.rope.base.to_string()
        };
        row("rope base", rope);
        row(
            "rope scaling",
            i.rope_scaling.clone().unwrap_or_else(|| "none".into()),
        );
        let local = d.local_layers.iter().filter(|&&l| l).count();
        row(
            "sliding window",
            match d.sliding_window {
                Some(w) if local > 0 => format!("{w} ({local} of {} layers)", d.layers),
                _ => "none".into(),
            },
        );
        if let Some(c) = d.final_softcap {
            row("logit softcap", c.to_string());
        }
    }
    row(
        "chat template",
        if i.chat_template { "yes" } else { "no" }.into(),
    );
    s.push_str("\ndtype      tensors   parameters        bytes\n");
    for (dtype, d) in &i.dtypes {
        s.push_str(&format!(
            "{dtype:<10}{:>8}{:>13}{:>13}\n",
            d.tensors,
            d.parameters,
            human_bytes(d.bytes)
        ));
    }
    s
}

fn human_count(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.2}B", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
