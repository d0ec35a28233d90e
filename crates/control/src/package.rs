//! A deployment's OCI image: what goes into it (the optimized model, the
//! serve command, the spec, plan and evaluation) and where it goes (an
//! engine's image store or a registry). `modelship build` and the pipeline's
//! package stage both come through here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use modelship_orchestrator::{ReplicaSpec, serve_args};
use modelship_package::{BuiltImage, ImageSpec, Layout, Reference};
use modelship_types::{ModelDeployment, ReplicaPlan};
use serde_json::json;

use crate::pipeline::Artifact;

/// The port a containerized replica listens on.
pub const PORT: u16 = modelship_orchestrator::docker::CONTAINER_PORT;

/// Where built images are kept: one OCI layout, so layers two revisions
/// share are stored once.
pub fn images_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("images")
}

/// What the image of `spec` serving `artifact` holds, planned as `plan`
/// (the revision's record; where its replicas went is left out: the image
/// records what one replica needs, not where it ran). `created` stamps it
/// (seconds since the epoch; `SOURCE_DATE_EPOCH` or 0); `follow_links`
/// packages what links leaving the model directory point to
/// ([`ImageSpec::follow_links`]).
pub fn image_spec(
    spec: &ModelDeployment,
    artifact: &Artifact,
    plan: &ReplicaPlan,
    runtime: PathBuf,
    created: u64,
    follow_links: bool,
) -> anyhow::Result<ImageSpec> {
    let plan = ReplicaPlan {
        placements: Vec::new(),
        pending: Vec::new(),
        ..plan.clone()
    };
    let replica = ReplicaSpec {
        id: String::new(),
        deployment: spec.metadata.name.clone(),
        revision: 0,
        artifact: PathBuf::new(),
        image: None,
        limits: spec.spec.serving,
        threads: plan.threads,
        cpu: spec.spec.resources.cpu,
        memory: spec.spec.resources.memory.map(|m| m.0),
        // An image never carries a key: the control plane gives its own.
        api_key: None,
    };
    let model = ImageSpec::model_in_image(&artifact.path);
    let cmd = serve_args(&model, "0.0.0.0", PORT, &replica);
    let spec_json = serde_json::to_value(spec)?;
    let labels = BTreeMap::from([
        (
            "org.opencontainers.image.title".to_owned(),
            spec.metadata.name.clone(),
        ),
        (
            "org.opencontainers.image.description".to_owned(),
            format!("{} served by modelship", spec.metadata.name),
        ),
        (
            "dev.modelship.deployment".to_owned(),
            spec.metadata.name.clone(),
        ),
        (
            "dev.modelship.model.digest".to_owned(),
            artifact.digest.clone(),
        ),
        (
            "dev.modelship.spec.digest".to_owned(),
            crate::digest::of_bytes(spec_json.to_string().as_bytes()),
        ),
        ("dev.modelship.precision".to_owned(), plan.precision.clone()),
        (
            "dev.modelship.memory.bytes".to_owned(),
            plan.memory_request.to_string(),
        ),
    ]);
    Ok(ImageSpec {
        runtime,
        model: artifact.path.clone(),
        deployment: json!({
            "spec": spec_json,
            "plan": plan,
            "evaluation": artifact.detail,
        }),
        cmd,
        port: PORT,
        labels,
        created,
        follow_links,
    })
}

/// `SOURCE_DATE_EPOCH` when set (reproducible-builds.org), else 0.
pub fn source_date_epoch() -> anyhow::Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds")),
        Err(_) => Ok(0),
    }
}

/// `repository:tag` with the tag taken from the manifest's digest, so the
/// same image always gets the same name and a changed one a new name.
pub fn reference(repository: &str, image: &BuiltImage) -> anyhow::Result<Reference> {
    let hex = image.manifest.digest.trim_start_matches("sha256:");
    Ok(Reference::parse(&format!("{repository}:{}", &hex[..12]))?)
}

/// The repository a deployment's images go to when the spec names none.
pub fn local_repository(name: &str) -> String {
    format!("modelship/{name}")
}

/// Builds into `data_dir`'s layout; blocking (it reads and compresses the model).
pub fn build(
    data_dir: &Path,
    spec: &ImageSpec,
    progress: &mut dyn FnMut(&str),
) -> anyhow::Result<(Layout, BuiltImage)> {
    let layout = Layout::open(&images_dir(data_dir))?;
    let image = modelship_package::build(spec, &layout, progress)?;
    Ok((layout, image))
}
