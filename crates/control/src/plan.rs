//! The plan stage: from a spec and the model itself, what one replica needs
//! (the planner's estimate with its terms), how many replicas (the spec's
//! count or its SLO against a measured capacity profile), and where they go
//! on the nodes. `modelship plan` prints it; `deploy` records it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use candle_core::quantized::GgmlDType;
use modelship_model::{EncoderFamily, ModelInfo, inspect};
use modelship_planner::{
    CapacityProfile, ModelShape, Plan, ReplicaRequest, SlidingWindow, TensorFootprint, WeightsFile,
    estimate, place, resident_weights, size_for_slo,
};
use modelship_quant::encode::encoded_len;
use modelship_quant::{Source, planned_tensors};
use modelship_types::{
    Bytes, Estimate, ModelDeployment, Node, QuantChoice, ReplicaPlan, Resources, Target, Task,
};
use serde::Serialize;

#[derive(Serialize)]
pub struct Report {
    pub name: String,
    pub model: PathBuf,
    pub replicas: u32,
    pub replicas_reason: String,
    /// What each replica gets, and where they went: recorded on the
    /// revision by `deploy`.
    #[serde(flatten)]
    pub replica: ReplicaPlan,
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
fn memory_limit(spec_memory: Option<Bytes>, estimate: u64) -> u64 {
    spec_memory.map_or(estimate + estimate / 4, |m| m.0)
}

/// The one rule for what a replica gets from its spec's `resources` and
/// its estimate; every target reads the result from the revision.
/// - CPU: the spec's, reserved on the node and set as the quota. Without
///   one, replicas on this machine (`local`, `docker`) share its cores
///   (nothing is reserved, no quota); on a cluster one CPU is reserved, and
///   Kubernetes sets the reservation as the limit too.
/// - Memory: the spec's, reserved and the limit; without it the estimate
///   is reserved and the limit leaves a quarter more.
fn replica_plan(
    resources: &Resources,
    target: Target,
    est: Estimate,
    precision: String,
) -> ReplicaPlan {
    let shares_cores = matches!(target, Target::Local | Target::Docker) && resources.cpu.is_none();
    let cpu_request = match resources.cpu {
        Some(cpu) => cpu,
        None if shares_cores => 0.0,
        None => 1.0,
    };
    let cpu_limit = match target {
        Target::Kubernetes => Some(cpu_request),
        _ => resources.cpu,
    };
    ReplicaPlan {
        cpu_request,
        cpu_limit,
        threads: est.cpu_threads,
        memory_request: resources.memory.map_or(est.total_bytes, |m| m.0),
        memory_limit: memory_limit(resources.memory, est.total_bytes),
        gpus: resources.gpu,
        precision,
        estimate: est,
        placements: Vec::new(),
        pending: Vec::new(),
    }
}

/// The task the deployment serves: what the model says it does, which
/// `spec.model.task` may state but not contradict (an encoder's head
/// decides between embeddings, reranking and classification), or what the
/// spec says when the model cannot tell.
pub fn served_task(spec: &ModelDeployment, info: &ModelInfo) -> anyhow::Result<Task> {
    let task = said_or_found_task(spec, info)?;
    // A live bound must be one the task's answers give.
    if let Some(q) = &spec.spec.rollout.canary.quality {
        let figures = [
            (
                "min_live_cosine",
                q.min_live_cosine.is_some(),
                Task::Embeddings,
            ),
            ("min_live_top1", q.min_live_top1.is_some(), Task::Generate),
            ("max_live_kld", q.max_live_kld.is_some(), Task::Generate),
        ];
        if let Some((field, _, wants)) = figures
            .iter()
            .find(|(_, set, wants)| *set && *wants != task)
        {
            anyhow::bail!(
                "spec.rollout.canary.quality.{field} compares {wants} answers, but {} is a {task} model",
                info.path.display()
            );
        }
    }
    Ok(task)
}

fn said_or_found_task(spec: &ModelDeployment, info: &ModelInfo) -> anyhow::Result<Task> {
    match (spec.spec.model.task, info.task) {
        (Some(said), Some(is)) if said != is => anyhow::bail!(
            "spec.model.task is `{said}`, but {} ({}) is a {is} model",
            info.path.display(),
            info.architecture
        ),
        (said, is) => said.or(is).ok_or_else(|| {
            anyhow::anyhow!(
                "{}: cannot tell its task; set spec.model.task",
                info.path.display()
            )
        }),
    }
}

/// The estimate, replica count and placement of `spec` on `nodes`.
pub fn plan(spec: &ModelDeployment, nodes: &[Node]) -> anyhow::Result<Report> {
    let source = &spec.spec.model.source;
    let info = inspect(source).with_context(|| format!("cannot read {}", source.display()))?;
    let task = served_task(spec, &info)?;
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
    let est = estimate(
        &shape,
        &spec.spec.serving,
        spec.spec.resources.cpu.unwrap_or(1.0),
    );
    let mut replica = replica_plan(&spec.spec.resources, spec.spec.target, est, precision);
    let name = &spec.metadata.name;
    let (count, replicas_reason) = replica_count(spec)?;
    let replicas: Vec<ReplicaRequest> = (0..count)
        .map(|i| request(&replica, format!("{name}-{i}"), spec))
        .collect();
    let Plan {
        placements,
        pending,
    } = place(nodes, &replicas);
    replica.placements = placements;
    replica.pending = pending;
    Ok(Report {
        name: name.clone(),
        model: source.clone(),
        replicas: count,
        replicas_reason,
        replica,
    })
}

/// What the plan stage recorded for `rev`'s replicas. A revision recorded
/// before plans were gets the same rule applied to its spec and the memory
/// estimate it kept (none: a memory limit of 0, meaning no limit).
pub fn recorded(rev: &modelship_types::Revision) -> ReplicaPlan {
    if let Some(plan) = &rev.plan {
        return plan.clone();
    }
    let resources = &rev.spec.spec.resources;
    let estimate = Estimate {
        weights_bytes: 0,
        loading_bytes: 0,
        kv_cache_bytes: 0,
        activations_bytes: 0,
        runtime_bytes: 0,
        total_bytes: rev.legacy_memory_estimate.unwrap_or(0),
        cpu_threads: resources.cpu.map_or(1, |c| c.ceil().max(1.0) as u32),
    };
    replica_plan(
        resources,
        rev.spec.spec.target,
        estimate,
        "as recorded before plans were".into(),
    )
}

/// What replica `id` of `spec`, planned as `plan`, asks a node for.
pub fn request(plan: &ReplicaPlan, id: String, spec: &ModelDeployment) -> ReplicaRequest {
    ReplicaRequest {
        id,
        deployment: spec.metadata.name.clone(),
        cpu: plan.cpu_request,
        memory: plan.memory_request,
        gpus: plan.gpus,
        // Each GPU must hold the whole replica: no tensor parallelism yet.
        gpu_memory: if plan.gpus > 0 {
            plan.estimate.total_bytes
        } else {
            0
        },
        selector: spec.spec.node_selector.clone(),
    }
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
    // Encoder directories are memory-mapped whole while the engine copies
    // their tensors out; a decoder checkpoint is mapped and read as a GGUF
    // file is.
    let file = if source.is_dir() && EncoderFamily::from_name(&src.architecture).is_some() {
        WeightsFile::Safetensors {
            file_bytes: src.weight_bytes(),
        }
    } else {
        WeightsFile::Gguf
    };
    let stored = stored_precision(&src);
    let precision = match q {
        QuantChoice::Auto => format!("{stored} as stored (quantize: auto is decided by optimize)"),
        _ => stored,
    };
    Ok((tensors, file, precision))
}

/// The type most of a model's matrix weights are stored in (`q4_k`, `f32`):
/// a quantized file mixes a few (llama.cpp's policy keeps some tensors
/// wider), and it is named by the one that holds most of them.
fn stored_precision(src: &Source) -> String {
    let mut by_type: std::collections::BTreeMap<&'static str, u64> = Default::default();
    for t in src.tensors.iter().filter(|t| t.shape.len() == 2) {
        *by_type
            .entry(modelship_model::ggml_dtype_name(t.dtype))
            .or_default() += t.elements() as u64;
    }
    by_type.into_iter().max_by_key(|&(_, n)| n).map_or_else(
        || "unknown".to_owned(),
        |(name, _)| name.to_ascii_lowercase(),
    )
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
        relative_positions: info.architecture == "mpnet",
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

    #[test]
    fn local_replicas_without_a_cpu_share_the_cores() {
        let est = Estimate {
            weights_bytes: 0,
            loading_bytes: 0,
            kv_cache_bytes: 0,
            activations_bytes: 0,
            runtime_bytes: 0,
            total_bytes: 400 << 20,
            cpu_threads: 1,
        };
        let resources = |cpu| Resources {
            cpu,
            memory: None,
            gpu: 0,
        };
        // (spec cpu, target) -> (reserved, quota)
        let table = [
            (None, Target::Local, 0.0, None),
            (None, Target::Docker, 0.0, None),
            (None, Target::Swarm, 1.0, None),
            (None, Target::Kubernetes, 1.0, Some(1.0)),
            (Some(2.0), Target::Local, 2.0, Some(2.0)),
            (Some(0.5), Target::Kubernetes, 0.5, Some(0.5)),
        ];
        for (cpu, target, request, limit) in table {
            let p = replica_plan(&resources(cpu), target, est, "f32".into());
            assert_eq!(
                (p.cpu_request, p.cpu_limit),
                (request, limit),
                "{cpu:?} {target}"
            );
            assert_eq!((p.memory_request, p.memory_limit), (400 << 20, 500 << 20));
        }
    }
}
