//! `modelship plan -f SPEC [--nodes NODES.yaml] [--json]`: the estimate with
//! its terms, the replica count and why, the placement, what is pending.

use std::path::PathBuf;

use modelship_control::plan::{Report, plan, this_machine};
use modelship_types::Bytes;

use crate::Failure;
use crate::spec::{read_nodes, read_spec};

#[derive(clap::Args)]
pub struct Args {
    /// The deployment spec.
    #[arg(short = 'f', long = "file")]
    spec: PathBuf,
    /// The cluster's nodes (default: this machine).
    #[arg(long)]
    nodes: Option<PathBuf>,
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> Result<(), Failure> {
    let spec = read_spec(&args.spec)?;
    let nodes = match &args.nodes {
        Some(path) => read_nodes(path)?.nodes,
        None => vec![this_machine()?],
    };
    let report = plan(&spec, &nodes)?;
    crate::print_output(args.json, &report, text);
    Ok(())
}

fn text(r: &Report) -> String {
    let p = &r.replica;
    let e = &p.estimate;
    let mut s = format!(
        "{} ({}, weights {})\n\nper replica\n",
        r.name,
        r.model.display(),
        p.precision
    );
    for (term, bytes) in [
        ("weights", e.weights_bytes),
        ("loading", e.loading_bytes),
        ("kv cache", e.kv_cache_bytes),
        ("activations", e.activations_bytes),
        ("runtime", e.runtime_bytes),
        ("total", e.total_bytes),
    ] {
        s.push_str(&format!("  {term:<12} {:>12}\n", Bytes(bytes).to_string()));
    }
    s.push_str(&format!("  {:<12} {:>12}\n", "cpu threads", e.cpu_threads));
    let cpu = match p.cpu_request {
        0.0 => "shares the machine's cores".to_owned(),
        c => format!("{c} CPU"),
    };
    s.push_str(&format!(
        "\nrequest      {cpu}, {}, {} GPU\nlimit        {}, {}\nreplicas     {} ({})\n",
        Bytes(p.memory_request),
        p.gpus,
        p.cpu_limit
            .map_or("no CPU quota".to_owned(), |c| format!("{c} CPU")),
        Bytes(p.memory_limit),
        r.replicas,
        r.replicas_reason
    ));
    for placed in &p.placements {
        s.push_str(&format!("  {:<20} -> {}\n", placed.replica, placed.node));
    }
    for waiting in &p.pending {
        s.push_str(&format!(
            "  {:<20} pending: {}\n",
            waiting.replica, waiting.reason
        ));
    }
    s
}
