//! The plan stage: from a spec and the model itself, what one replica needs
//! (the planner's estimate with its terms), how many replicas (the spec's
//! count or its SLO against a measured capacity profile), and where they go
//! on the nodes. `modelship plan` prints it; `deploy` records it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::quantized::GgmlDType;
use modelship_model::{ModelInfo, inspect};
use modelship_planner::{
    CapacityProfile, Estimate, ModelShape, Plan, ReplicaRequest, SlidingWindow, TensorFootprint,
    WeightsFile, estimate, place, resident_weights, size_for_slo,
};
use modelship_quant::encode::encoded_len;
use modelship_quant::{Source, planned_tensors};
use modelship_types::{Bytes, ModelDeployment, Node, QuantChoice, Task};
use serde::Serialize;

#[derive(Serialize)]
pub struct Report {
    pub name: String,
    pub model: PathBuf,
    /// The precision the weights were counted in.
    pub precision: String,
    pub estimate: Estimate,
    /// What one replica asks the nodes for.
    pub request: Request,
    pub replicas: u32,
    pub replicas_reason: String,
    pub placements: Vec<modelship_planner::Placement>,
    pub pending: Vec<modelship_planner::Pending>,
}

#[derive(Serialize)]
pub struct Request {
    pub cpu: f64,
    pub memory_bytes: u64,
    pub gpus: u32,
}

/// The plan of `spec` once optimized: its model replaced by `artifact`,
/// the optimized file, which is planned as it is stored.
pub fn plan_artifact(
    spec: &ModelDeployment,
    artifact: &Path,
    nodes: &[Node],
) -> anyhow::Result<Report> {
    let mut planned = spec.clone();
    planned.spec.model.source = artifact.to_owned();
    planned.spec.optimize.quantize = QuantChoice::None;
    plan(&planned, nodes)
}

/// A replica's memory limit: the spec's, else the plan's estimate with a
/// quarter more, so an estimate a little short does not get it killed.
/// Every target limits replicas by this.
pub fn memory_limit(spec_memory: Option<Bytes>, estimate: u64) -> u64 {
    spec_memory.map_or(estimate + estimate / 4, |m| m.0)
}

/// The estimate, replica count and placement of `spec` on `nodes`.
pub fn plan(spec: &ModelDeployment, nodes: &[Node]) -> anyhow::Result<Report> {
    let source = &spec.spec.model.source;
    let info = inspect(source).with_context(|| format!("cannot read {}", source.display()))?;
    let task = spec.spec.model.task.or(info.task).ok_or_else(|| {
        anyhow::anyhow!(
            "{}: cannot tell its task; set spec.model.task",
            source.display()
        )
    })?;
    let (footprints, file, precision) = weights(source, spec.spec.optimize.quantize)?;
    let (resident, loading) = resident_weights(task, file, &footprints);
    // What the down projections' kernels copy of their FFN-wide inputs (see
    // ModelShape::ffn_input_copy_per_256): ours an f32 copy and 8- or 16-bit
    // quants, candle's k-quant kernels Q8_K blocks, its float matmul none.
    let ffn_input_copy_per_256 = footprints
        .iter()
        .filter(|t| t.dims == 2 && t.name.ends_with("ffn_down.weight"))
        .map(|t| match (t.own_kernel, t.block_quantized) {
            (true, _) if t.wide_input => 256 * (4 + 2),
            (true, _) => 256 * (4 + 1),
            (false, true) => 292,
            (false, false) => 0,
        })
        .max()
        .unwrap_or(0);
    let shape = ModelShape {
        on_gpu: spec.spec.resources.gpu > 0,
        ..shape(&info, task, (resident, loading), ffn_input_copy_per_256)?
    };
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
) -> anyhow::Result<(Vec<TensorFootprint>, WeightsFile, String)> {
    let src = Source::open(source).with_context(|| format!("cannot read {}", source.display()))?;
    let footprint =
        |t: &modelship_quant::SourceTensor, stored: u64, dtype: GgmlDType| TensorFootprint {
            name: t.name.clone(),
            elements: t.elements() as u64,
            stored_bytes: stored,
            block_quantized: dtype.block_size() > 1,
            wide_input: matches!(dtype, GgmlDType::Q8_0 | GgmlDType::F16 | GgmlDType::BF16),
            own_kernel: modelship_engine_candle::reads_in_place(dtype),
            packed_bytes: match t.shape.as_slice() {
                &[rows, cols] => modelship_engine_candle::candle_packed_bytes(dtype, rows, cols),
                _ => 0,
            },
            dims: t.shape.len(),
        };
    if let QuantChoice::Type(to) = q {
        // Served from the GGUF that optimize writes.
        let tensors = planned_tensors(&src, to)
            .into_iter()
            .map(|(t, d)| footprint(t, encoded_len(d.dtype, t.elements()) as u64, d.dtype))
            .collect();
        return Ok((tensors, WeightsFile::Gguf, to.to_string()));
    }
    let tensors = src
        .tensors
        .iter()
        .map(|t| footprint(t, t.bytes, t.dtype))
        .collect();
    // BERT directories are memory-mapped whole while the engine copies their
    // tensors out; a decoder checkpoint is mapped and read as a GGUF file is.
    let file = if source.is_dir() && src.architecture == "bert" {
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
    ffn_input_copy_per_256: u64,
) -> anyhow::Result<ModelShape> {
    let need = |v: Option<usize>, what: &str| {
        v.ok_or_else(|| {
            anyhow::anyhow!(
                "{}: the model does not state its {what}",
                info.path.display()
            )
        })
    };
    let hidden = need(info.hidden_size, "hidden size")?;
    let heads = need(info.attention_heads, "attention heads")?;
    Ok(ModelShape {
        task,
        weight_bytes,
        loading_bytes,
        ffn_input_copy_per_256,
        layers: need(info.layers, "layer count")?,
        hidden,
        heads,
        head_dim: info
            .decoder
            .as_ref()
            .map_or(hidden / heads.max(1), |d| d.head_dim),
        kv_heads: need(info.kv_heads, "key/value heads")?,
        ffn: need(info.feed_forward, "feed-forward width")?,
        vocab: need(info.vocab_size, "vocabulary size")?,
        context: need(info.context_length, "context length")?,
        sliding_window: info.decoder.as_ref().and_then(|d| {
            let window = d.sliding_window?;
            Some(SlidingWindow {
                layers: d.local_layers.iter().filter(|&&local| local).count(),
                positions: modelship_engine_candle::window_cache_positions(window),
            })
        }),
        on_gpu: false,
    })
}

/// `spec.replicas`, or with an `slo` the count its capacity profile asks for.
fn replica_count(spec: &ModelDeployment) -> anyhow::Result<(u32, String)> {
    let Some(slo) = &spec.spec.slo else {
        return Ok((
            spec.spec.replicas,
            format!("spec.replicas = {}", spec.spec.replicas),
        ));
    };
    let path = profile_path(&spec.spec.model.source);
    let text = std::fs::read(&path).map_err(|e| {
        anyhow::Error::new(e).context(format!(
            "spec.slo needs the capacity profile {}\nhint: run `modelship bench {}` first",
            path.display(),
            spec.spec.model.source.display()
        ))
    })?;
    let profile: CapacityProfile = serde_json::from_slice(&text)
        .with_context(|| format!("invalid capacity profile {}", path.display()))?;
    let sizing = size_for_slo(&profile, slo).map_err(|e| anyhow::anyhow!(e))?;
    Ok((sizing.replicas, sizing.reason))
}

/// This machine as the only node: its CPUs and total memory.
pub fn this_machine() -> anyhow::Result<Node> {
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

/// Where `modelship bench MODEL` keeps a model's capacity profile.
pub fn profile_path(model: &Path) -> PathBuf {
    let cache = std::env::var_os("MODELSHIP_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/modelship")))
        .unwrap_or_else(|| PathBuf::from("."));
    let name = model
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    cache.join("profiles").join(format!("{name}.json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_limit_is_the_specs_else_the_estimate_and_a_quarter() {
        assert_eq!(memory_limit(Some(Bytes(1 << 30)), 400 << 20), 1 << 30);
        assert_eq!(memory_limit(None, 400 << 20), 500 << 20);
    }
}
