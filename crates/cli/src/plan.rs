//! `modelship plan -f SPEC [--nodes NODES.yaml] [--json]`: the estimate with
//! its terms, the replica count and why, the placement, what is pending.

use std::path::{Path, PathBuf};

use anyhow::Context;
use modelship_model::{ModelInfo, inspect};
use modelship_planner::{
    CapacityProfile, Estimate, ModelShape, Plan, ReplicaRequest, TensorFootprint, WeightsFile,
    estimate, place, resident_weights, size_for_slo,
};
use modelship_quant::encode::encoded_len;
use modelship_quant::{Source, planned_tensors};
use modelship_types::{Bytes, ModelDeployment, Node, QuantChoice, Task};
use serde::Serialize;

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

#[derive(Serialize)]
struct Report {
    name: String,
    model: PathBuf,
    /// The precision the weights were counted in.
    precision: String,
    estimate: Estimate,
    /// What one replica asks the nodes for.
    request: Request,
    replicas: u32,
    replicas_reason: String,
    placements: Vec<modelship_planner::Placement>,
    pending: Vec<modelship_planner::Pending>,
}

#[derive(Serialize)]
struct Request {
    cpu: f64,
    memory_bytes: u64,
    gpus: u32,
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

fn plan(spec: &ModelDeployment, nodes: &[Node]) -> Result<Report, Failure> {
    let source = &spec.spec.model.source;
    let info = inspect(source).with_context(|| format!("cannot read {}", source.display()))?;
    let task = spec.spec.model.task.or(info.task).ok_or_else(|| {
        Failure::User(anyhow::anyhow!(
            "{}: cannot tell its task; set spec.model.task",
            source.display()
        ))
    })?;
    let (footprints, file, precision) = weights(source, spec.spec.optimize.quantize)?;
    let (resident, loading) = resident_weights(task, file, &footprints);
    let quantized = footprints
        .iter()
        .any(|t| t.dims == 2 && t.block_quantized && t.name.starts_with("blk."));
    let shape = shape(&info, task, (resident, loading), quantized)?;
    let cpu = spec.spec.resources.cpu.unwrap_or(1.0);
    let est = estimate(&shape, &spec.spec.serving, cpu);
    let request = Request {
        cpu,
        memory_bytes: spec.spec.resources.memory.map_or(est.total_bytes, |m| m.0),
        gpus: spec.spec.resources.gpu,
    };
    let name = &spec.metadata.name;
    let (count, replicas_reason) = replica_count(spec)?;
    let replicas: Vec<ReplicaRequest> = (0..count)
        .map(|i| ReplicaRequest {
            id: format!("{name}-{i}"),
            deployment: name.clone(),
            cpu: request.cpu,
            memory: request.memory_bytes,
            gpus: request.gpus,
            // Each GPU must hold the whole replica: no tensor parallelism yet.
            gpu_memory: if request.gpus > 0 { est.total_bytes } else { 0 },
            selector: spec.spec.node_selector.clone(),
        })
        .collect();
    let Plan {
        placements,
        pending,
    } = place(nodes, &replicas);
    Ok(Report {
        name: name.clone(),
        model: source.clone(),
        precision,
        estimate: est,
        request,
        replicas: count,
        replicas_reason,
        placements,
        pending,
    })
}

/// The weight tensors in the precision the spec serves, how they reach the
/// engine, and that precision's name.
fn weights(
    source: &Path,
    q: QuantChoice,
) -> Result<(Vec<TensorFootprint>, WeightsFile, String), Failure> {
    let src = Source::open(source).with_context(|| format!("cannot read {}", source.display()))?;
    let footprint =
        |t: &modelship_quant::SourceTensor, stored: u64, block_quantized: bool| TensorFootprint {
            name: t.name.clone(),
            elements: t.elements() as u64,
            stored_bytes: stored,
            block_quantized,
            dims: t.shape.len(),
        };
    if let QuantChoice::Type(to) = q {
        // Served from the GGUF that optimize writes.
        let tensors = planned_tensors(&src, to)
            .into_iter()
            .map(|(t, d)| {
                footprint(
                    t,
                    encoded_len(d.dtype, t.elements()) as u64,
                    d.dtype.block_size() > 1,
                )
            })
            .collect();
        return Ok((tensors, WeightsFile::Gguf, to.to_string()));
    }
    let tensors = src
        .tensors
        .iter()
        .map(|t| footprint(t, t.bytes, t.dtype.block_size() > 1))
        .collect();
    let file = if source.is_dir() {
        WeightsFile::Safetensors {
            file_bytes: src.weight_bytes(),
        }
    } else {
        WeightsFile::Gguf
    };
    let precision = match q {
        QuantChoice::Auto => "as stored (quantize: auto is decided by optimize)",
        _ => "as stored",
    };
    Ok((tensors, file, precision.into()))
}

fn shape(
    info: &ModelInfo,
    task: Task,
    (weight_bytes, loading_bytes): (u64, u64),
    quantized_matmuls: bool,
) -> Result<ModelShape, Failure> {
    let need = |v: Option<usize>, what: &str| {
        v.ok_or_else(|| {
            Failure::User(anyhow::anyhow!(
                "{}: the model does not state its {what}",
                info.path.display()
            ))
        })
    };
    Ok(ModelShape {
        task,
        weight_bytes,
        loading_bytes,
        quantized_matmuls,
        layers: need(info.layers, "layer count")?,
        hidden: need(info.hidden_size, "hidden size")?,
        heads: need(info.attention_heads, "attention heads")?,
        kv_heads: need(info.kv_heads, "key/value heads")?,
        ffn: need(info.feed_forward, "feed-forward width")?,
        vocab: need(info.vocab_size, "vocabulary size")?,
        context: need(info.context_length, "context length")?,
    })
}

/// `spec.replicas`, or with an `slo` the count its capacity profile asks for.
fn replica_count(spec: &ModelDeployment) -> Result<(u32, String), Failure> {
    let Some(slo) = &spec.spec.slo else {
        return Ok((
            spec.spec.replicas,
            format!("spec.replicas = {}", spec.spec.replicas),
        ));
    };
    let path = crate::bench::profile_path(&spec.spec.model.source);
    let text = std::fs::read(&path).map_err(|e| {
        Failure::User(anyhow::Error::new(e).context(format!(
            "spec.slo needs the capacity profile {}\nhint: run `modelship bench {}` first",
            path.display(),
            spec.spec.model.source.display()
        )))
    })?;
    let profile: CapacityProfile = serde_json::from_slice(&text)
        .with_context(|| format!("invalid capacity profile {}", path.display()))?;
    let sizing = size_for_slo(&profile, slo).map_err(|e| Failure::User(anyhow::anyhow!(e)))?;
    Ok((sizing.replicas, sizing.reason))
}

/// This machine as the only node: its CPUs and total memory.
fn this_machine() -> Result<Node, Failure> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").context("cannot read /proc/meminfo")?;
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .context("no MemTotal in /proc/meminfo")?;
    Ok(Node {
        name: "local".into(),
        cpu: std::thread::available_parallelism().map_or(1, |n| n.get()) as f64,
        memory: Bytes(kib * 1024),
        gpus: Vec::new(),
        labels: Default::default(),
    })
}

fn text(r: &Report) -> String {
    let e = &r.estimate;
    let mut s = format!(
        "{} ({}, weights {})\n\nper replica\n",
        r.name,
        r.model.display(),
        r.precision
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
    s.push_str(&format!(
        "\nrequest      {} CPU, {}, {} GPU\nreplicas     {} ({})\n",
        r.request.cpu,
        Bytes(r.request.memory_bytes),
        r.request.gpus,
        r.replicas,
        r.replicas_reason
    ));
    for p in &r.placements {
        s.push_str(&format!("  {:<20} -> {}\n", p.replica, p.node));
    }
    for p in &r.pending {
        s.push_str(&format!("  {:<20} pending: {}\n", p.replica, p.reason));
    }
    s
}
