//! The deploy pipeline: validate → optimize → plan → rollout, each stage
//! recorded in the run with its inputs' and outputs' digests, duration and
//! result. A failed stage fails the run and leaves what serves untouched;
//! the rollout stage ([`crate::rollout`]) rolls back a revision that fails.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use modelship_optimize::{EvalOptions, optimize};
use modelship_orchestrator::now_ms;
use modelship_types::{
    ModelDeployment, Node, QuantChoice, Revision, Run, RunStatus, Stage, Tradeoff,
};
use serde::{Deserialize, Serialize};

use crate::{Ctx, digest, plan, rollout};

/// What a stage produced.
struct Output {
    digest: Option<String>,
    detail: String,
}

/// The run as it goes, written to the store after each change.
struct Recorder<'a> {
    ctx: &'a Ctx,
    run: Run,
}

impl Recorder<'_> {
    fn save(&self) {
        if let Err(e) = self.ctx.store.put_run(&self.run) {
            tracing::error!("cannot record run {}: {e:#}", self.run.id);
        }
    }

    fn begin(&mut self, name: &str, inputs_digest: String) {
        self.run.stages.push(Stage {
            name: name.to_owned(),
            status: RunStatus::Running,
            inputs_digest,
            outputs_digest: None,
            started_at: now_ms(),
            duration_ms: None,
            detail: String::new(),
            tradeoff: None,
        });
        self.save();
    }

    /// What the current stage weighed, for the run's chart.
    fn tradeoff(&mut self, tradeoff: Option<Tradeoff>) {
        if let Some(stage) = self.run.stages.last_mut() {
            stage.tradeoff = tradeoff;
        }
    }

    /// Closes the current stage with `result`; an error fails the run.
    fn end(&mut self, result: anyhow::Result<Output>) -> anyhow::Result<()> {
        let now = now_ms();
        let outcome = match result {
            Ok(out) => {
                self.run.stage_succeeded(now, out.digest, out.detail);
                Ok(())
            }
            Err(e) => {
                self.run.fail(now, &format!("{e:#}"));
                Err(e)
            }
        };
        self.save();
        outcome
    }
}

/// The optimized model a spec's model and `optimize` section produce,
/// cached under the digest of both.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Artifact {
    pub path: PathBuf,
    pub digest: String,
    /// What optimize chose and its evaluation table.
    pub detail: String,
    /// Found in the cache rather than optimized now.
    #[serde(skip)]
    pub cached: bool,
    /// The candidates weighed (none when served as given).
    #[serde(default)]
    pub tradeoff: Option<Tradeoff>,
}

/// The gate refused every candidate: the table, and the candidates for the
/// run's record.
#[derive(Debug, thiserror::Error)]
#[error("no precision passes the gate:\n{table}")]
struct GateRefused {
    table: String,
    tradeoff: Tradeoff,
}

/// The optimized model of `spec` (from `data_dir`'s cache when built
/// before): what `modelship build` packages. The work runs on blocking
/// threads.
pub async fn optimized_model(data_dir: &Path, spec: &ModelDeployment) -> anyhow::Result<Artifact> {
    let source = spec.spec.model.source.clone();
    let model_digest = blocking(move || {
        modelship_model::inspect(&source)
            .with_context(|| format!("spec.model.source: cannot read {}", source.display()))?;
        Ok(digest::of_path(&source)?)
    })
    .await?;
    let key = optimize_key(&model_digest, spec)?;
    optimized(data_dir, spec, &model_digest, &key).await
}

/// The cache key of an optimized model: the source's digest and the
/// `optimize` section.
fn optimize_key(model_digest: &str, spec: &ModelDeployment) -> anyhow::Result<String> {
    Ok(digest::of_bytes(
        format!(
            "{model_digest}\n{}",
            serde_json::to_string(&spec.spec.optimize)?
        )
        .as_bytes(),
    ))
}

/// Why a run could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
    #[error("a deploy of this deployment is already running")]
    Running,
    #[error(transparent)]
    Store(#[from] modelship_store::StoreError),
}

/// Records a run of `spec` (a retry of `retry_of` when given) and starts
/// it in the background; returns its id.
pub(crate) fn start(
    ctx: &Arc<Ctx>,
    spec: ModelDeployment,
    retry_of: Option<&Run>,
) -> Result<u64, StartError> {
    let name = spec.metadata.name.clone();
    if !ctx
        .running
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(name.clone())
    {
        return Err(StartError::Running);
    }
    let run = ctx.store.start_run(Run {
        id: 0,
        deployment: name.clone(),
        revision: None,
        status: RunStatus::Running,
        error: None,
        stages: vec![],
        started_at: now_ms(),
        finished_at: None,
        spec: Some(spec.clone()),
        retry_of: retry_of.map(|r| r.id),
        attempt: retry_of.map_or(1, |r| r.attempt + 1),
        retried_as: None,
    });
    let run = match run {
        Ok(r) => r,
        Err(e) => {
            ctx.running
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            return Err(e.into());
        }
    };
    let id = run.id;
    tokio::spawn(deploy(Arc::clone(ctx), spec, run));
    Ok(id)
}

/// Runs the pipeline for `spec` as `run` (already recorded, `Running`) up
/// to its rollout stage, which the controller drives and closes.
async fn deploy(ctx: Arc<Ctx>, spec: ModelDeployment, run: Run) {
    let name = spec.metadata.name.clone();
    // Whatever happens to this task (a panic included), the deployment is
    // free for the next deploy once it ends.
    let _running = Running {
        ctx: &ctx,
        name: name.clone(),
    };
    let mut rec = Recorder { ctx: &ctx, run };
    if stages(&ctx, &mut rec, spec).await.is_err() {
        let e = rec.run.error.clone().unwrap_or_default();
        ctx.event(&name, format!("run {} failed: {e}", rec.run.id));
    }
}

/// A deployment's place in [`Ctx::running`], given up when dropped.
struct Running<'a> {
    ctx: &'a Ctx,
    name: String,
}

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.ctx
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.name);
    }
}

async fn stages(
    ctx: &Arc<Ctx>,
    rec: &mut Recorder<'_>,
    spec: ModelDeployment,
) -> anyhow::Result<()> {
    let spec_digest = digest::of_bytes(&serde_json::to_vec(&spec)?);

    // validate: the spec (checked by the API already) and the model itself.
    rec.begin("validate", spec_digest.clone());
    let source = spec.spec.model.source.clone();
    let checked = spec.clone();
    let model = blocking(move || {
        let info = modelship_model::inspect(&source)
            .with_context(|| format!("spec.model.source: cannot read {}", source.display()))?;
        let task = plan::served_task(&checked, &info)?;
        let digest = digest::of_path(&source)?;
        Ok((info, task, digest))
    })
    .await;
    let (info, task, model_digest) = match model {
        Ok(m) => m,
        Err(e) => return rec.end(Err(e)),
    };
    let detail = format!(
        "{task} model {} ({}, {:.1}M parameters)",
        info.path.display(),
        info.architecture,
        info.parameters as f64 / 1e6
    );
    rec.end(Ok(Output {
        digest: Some(model_digest.clone()),
        detail,
    }))?;

    // optimize: quantize/prune behind the gate, cached by content.
    let key = optimize_key(&model_digest, &spec)?;
    rec.begin("optimize", key.clone());
    let artifact = optimized(&ctx.data_dir, &spec, &model_digest, &key).await;
    let artifact = match artifact {
        Ok(a) => a,
        Err(e) => {
            rec.tradeoff(e.downcast_ref::<GateRefused>().map(|g| g.tradeoff.clone()));
            return rec.end(Err(e));
        }
    };
    rec.tradeoff(artifact.tradeoff.clone());
    rec.end(Ok(Output {
        digest: Some(artifact.digest.clone()),
        detail: if artifact.cached {
            format!("cached: {}", artifact.detail)
        } else {
            artifact.detail.clone()
        },
    }))?;

    // plan: the estimate, the replica count and what each replica gets,
    // recorded on the revision. Replicas that do not fit now wait
    // (`pending`) until capacity frees; one that could never fit fails here.
    rec.begin("plan", artifact.digest.clone());
    let (planned, served) = (spec.clone(), artifact.path.clone());
    let report = blocking(move || {
        let node: Node = plan::this_machine()?;
        let report = plan::plan_artifact(&planned, &served, std::slice::from_ref(&node))?;
        if report.replicas > 0 {
            let alone = modelship_planner::place(
                std::slice::from_ref(&node),
                &[plan::request(&report.replica, "one".into(), &planned)],
            );
            if let Some(p) = alone.pending.first() {
                anyhow::bail!(
                    "a replica can never be placed on {}: {}",
                    node.name,
                    p.reason
                );
            }
        }
        Ok(report)
    })
    .await;
    let report = match report {
        Ok(r) => r,
        Err(e) => return rec.end(Err(e)),
    };
    let r = &report.replica;
    let mut detail = format!(
        "{} replica(s) ({}), {} each; reserves {} CPU and {}, limit {}",
        report.replicas,
        report.replicas_reason,
        modelship_types::Bytes(r.estimate.total_bytes),
        r.cpu_request,
        modelship_types::Bytes(r.memory_request),
        modelship_types::Bytes(r.memory_limit),
    );
    if let Some(p) = r.pending.first() {
        detail.push_str(&format!(
            "; {} of {} do not fit now and wait: {}",
            r.pending.len(),
            report.replicas,
            p.reason
        ));
    }
    let plan_digest = digest::of_bytes(&serde_json::to_vec(&report)?);
    rec.end(Ok(Output {
        digest: Some(plan_digest.clone()),
        detail,
    }))?;

    // package: the OCI image, for targets that run one.
    let mut image = None;
    let mut rollout_input = plan_digest;
    if spec.spec.target.needs_image() {
        rec.begin("package", artifact.digest.clone());
        match package(ctx, &spec, &artifact, &report.replica).await {
            Ok((reference, manifest, detail)) => {
                image = Some(reference);
                rollout_input = manifest.clone();
                rec.end(Ok(Output {
                    digest: Some(manifest),
                    detail,
                }))?;
            }
            Err(e) => return rec.end(Err(e)),
        }
    }

    // rollout: a new revision (unless nothing changed) in the phase its
    // strategy starts in; the controller carries it on and closes the stage.
    rec.begin("rollout", rollout_input);
    let new = Revision {
        deployment: spec.metadata.name.clone(),
        number: 0,
        spec,
        artifact: artifact.path.clone(),
        artifact_digest: artifact.digest.clone(),
        image,
        plan: Some(report.replica),
        legacy_memory_estimate: None,
        cause: String::new(),
        created_at: 0,
    };
    if let Err(e) = rollout::begin(ctx, &mut rec.run, new, report.replicas) {
        return rec.end(Err(e));
    }
    Ok(())
}

/// The cached artifact for `key`, or the outcome of optimizing now.
async fn optimized(
    data_dir: &Path,
    spec: &ModelDeployment,
    model_digest: &str,
    key: &str,
) -> anyhow::Result<Artifact> {
    let opt = spec.spec.optimize.clone();
    let source = spec.spec.model.source.clone();
    if opt.quantize == QuantChoice::None && opt.prune.is_none() {
        return Ok(Artifact {
            path: source,
            digest: model_digest.to_owned(),
            detail: "served as given (no optimize section)".into(),
            cached: false,
            tradeoff: None,
        });
    }
    let dir = data_dir
        .join("artifacts")
        .join(key.trim_start_matches("sha256:"));
    let record = dir.join("artifact.json");
    if let Ok(bytes) = std::fs::read(&record)
        && let Ok(mut a) = serde_json::from_slice::<Artifact>(&bytes)
        && a.path.exists()
    {
        a.cached = true;
        return Ok(a);
    }
    blocking(move || {
        let outcome = optimize(&source, &opt, &dir, EvalOptions::default(), &mut |line| {
            tracing::info!("optimize: {line}")
        })?;
        let table = outcome.table();
        let tradeoff = outcome.tradeoff(&opt.gate);
        let Some(chosen) = outcome.chosen() else {
            return Err(GateRefused { table, tradeoff }.into());
        };
        // Keep the chosen file only.
        for c in &outcome.candidates {
            if c.path != chosen.path {
                let _ = std::fs::remove_file(&c.path);
            }
        }
        if outcome.reference != source {
            let _ = std::fs::remove_file(&outcome.reference);
        }
        let artifact = Artifact {
            path: chosen.path.clone(),
            digest: digest::of_path(&chosen.path)?,
            detail: format!("{} chosen\n{table}", chosen.quant),
            cached: false,
            tradeoff: Some(tradeoff),
        };
        std::fs::write(&record, serde_json::to_vec_pretty(&artifact)?)?;
        Ok(artifact)
    })
    .await
}

/// Builds the image and puts it where replicas pull it from: the registry
/// the spec names, else the local Docker engine. Returns the reference
/// replicas run, the manifest digest, and a line for the record.
async fn package(
    ctx: &Arc<Ctx>,
    spec: &ModelDeployment,
    artifact: &Artifact,
    plan: &modelship_types::ReplicaPlan,
) -> anyhow::Result<(String, String, String)> {
    let exe = std::env::current_exe().context("cannot find the modelship binary to package")?;
    let created = crate::package::source_date_epoch()?;
    let (data_dir, spec2, artifact2, plan2) = (
        ctx.data_dir.clone(),
        spec.clone(),
        artifact.clone(),
        plan.clone(),
    );
    // Planning reads the model and building compresses it: off the workers.
    let (layout, image) = blocking(move || {
        // A spec has no switch for links leaving the model directory:
        // `modelship build --follow-links` and `spec.image` package those.
        let image_spec =
            crate::package::image_spec(&spec2, &artifact2, &plan2, exe, created, false)?;
        crate::package::build(&data_dir, &image_spec, &mut |step| {
            tracing::debug!("package: {step}")
        })
    })
    .await?;
    let sizes = image
        .report()
        .iter()
        .map(|l| format!("{} {}", l.role, modelship_types::Bytes(l.size)))
        .collect::<Vec<_>>()
        .join(", ");
    match &spec.spec.image {
        Some(repository) => {
            let reference = crate::package::reference(repository, &image)?;
            let login = modelship_package::push::Credentials::from_env();
            let pushed = modelship_package::push::push(&layout, &image, &reference, login).await?;
            Ok((
                format!("{}@{}", reference, pushed.digest),
                image.manifest.digest.clone(),
                format!(
                    "pushed {reference} ({sizes}; {} blob(s) uploaded, {} already there)",
                    pushed.uploaded.len(),
                    pushed.skipped.len()
                ),
            ))
        }
        None => {
            let reference = crate::package::reference(
                &crate::package::local_repository(&spec.metadata.name),
                &image,
            )?;
            let engine = ctx.targets.engine(spec.spec.target).await?;
            let what = load(&engine, layout.root(), &image, &reference).await?;
            Ok((
                reference.to_string(),
                image.manifest.digest.clone(),
                format!("{what} {reference} in the Docker engine ({sizes})"),
            ))
        }
    }
}

/// Puts the image into the engine unless it holds it already (Docker's
/// image id is the config's digest); returns what it did.
async fn load(
    engine: &modelship_orchestrator::Engine,
    layout_root: &Path,
    image: &modelship_package::BuiltImage,
    reference: &modelship_package::Reference,
) -> anyhow::Result<&'static str> {
    let present = engine.find(&format!("/images/{reference}/json")).await?;
    if present.is_some_and(|i| i["Id"] == image.config.digest) {
        return Ok("found");
    }
    // Named after the image: two deploys of different images load at once.
    let archive = layout_root.join(format!(
        ".load-{}-{}.tar",
        std::process::id(),
        image.manifest.digest.trim_start_matches("sha256:")
    ));
    let (write_to, write_image, write_ref) = (archive.clone(), image.clone(), reference.clone());
    let layout_root = layout_root.to_owned();
    blocking(move || {
        let layout = modelship_package::Layout::open(&layout_root)?;
        let file = std::io::BufWriter::new(std::fs::File::create(&write_to)?);
        modelship_package::archive::write(&layout, &write_image, &write_ref, file)?;
        Ok(())
    })
    .await?;
    let loaded = engine.load_image(&archive).await;
    let _ = std::fs::remove_file(&archive);
    loaded?;
    Ok("loaded")
}

/// Runs blocking work (model reads, quantization) off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .context("a pipeline stage panicked")?
}
