//! `render haproxy|nginx NAME`: another proxy's configuration for a
//! deployment's ready replicas. `render kubernetes -f SPEC`: the objects a
//! deployment becomes on Kubernetes. `crd`: the `ModelDeployment` CRD.

use std::path::PathBuf;

use modelship_control::DeploymentSummary;
use modelship_types::Replica;

use crate::Failure;
use crate::ops::{Api, get_json, parse};
use crate::spec::read_spec;
use modelship_types::spec::dns_label_problem;

#[derive(clap::Subcommand)]
pub enum RenderCommand {
    /// An HAProxy configuration in front of a deployment's ready replicas.
    Haproxy(RenderArgs),
    /// An nginx configuration in front of a deployment's ready replicas.
    Nginx(RenderArgs),
    /// Kubernetes objects for a spec: Deployment, Service, PodDisruptionBudget,
    /// NetworkPolicy, ServiceAccount and, when it autoscales, an HPA.
    Kubernetes(KubernetesArgs),
}

#[derive(clap::Args)]
pub struct KubernetesArgs {
    /// The deployment spec.
    #[arg(short = 'f', long = "file")]
    spec: PathBuf,
    /// The image pods run. By default the spec's image is built (as
    /// `modelship build` does) and named by its digest, so the objects pin
    /// exactly what `build --push` pushes.
    #[arg(long)]
    image: Option<String>,
    #[arg(short, long, default_value = "default")]
    namespace: String,
    /// Where optimized models are cached (shared with `build` and `up`).
    #[arg(long, env = "MODELSHIP_DATA_DIR", default_value = ".modelship")]
    data_dir: PathBuf,
    /// API keys the pods require, one a line (as `up --api-keys`): they go
    /// into a Secret the pods mount.
    #[arg(long)]
    api_keys: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct RenderArgs {
    name: String,
    /// Where the proxy listens.
    #[arg(long, default_value = "127.0.0.1:8081")]
    bind: String,
    #[command(flatten)]
    api: Api,
}

pub fn render(command: RenderCommand) -> Result<(), Failure> {
    let (args, haproxy) = match command {
        RenderCommand::Haproxy(a) => (a, true),
        RenderCommand::Nginx(a) => (a, false),
        RenderCommand::Kubernetes(a) => return kubernetes(a),
    };
    let v = get_json(
        &args.api,
        &format!("/v1/deployments/{}", crate::ops::segment(&args.name)),
    )?;
    let d: DeploymentSummary = parse(v["deployment"].clone())?;
    let replicas: Vec<Replica> = parse(v["replicas"].clone())?;
    let ready: Vec<(String, String, u32)> = replicas
        .iter()
        .filter(|r| r.state == modelship_types::ReplicaState::Ready)
        .map(|r| (r.id.clone(), r.endpoint.clone(), r.revision))
        .collect();
    if ready.is_empty() {
        return Err(Failure::User(anyhow::anyhow!(
            "`{}` has no ready replica to render",
            args.name
        )));
    }
    // The gateway's split: the rollout's percentages while a stable revision
    // runs beside the new one, else equal per ready replica.
    let count = |rev: u32| ready.iter().filter(|r| r.2 == rev).count() as u32;
    let percent_of = |rev: u32| match (d.stable, d.traffic) {
        (Some(_), Some(t)) if rev == d.revision => t.min(100),
        (Some(_), Some(t)) => 100 - t.min(100),
        _ => count(rev),
    };
    let upstreams = modelship_control::render::weights(&ready, percent_of);
    let text = if haproxy {
        modelship_control::render::haproxy(&args.name, &args.bind, &upstreams)
    } else {
        modelship_control::render::nginx(&args.name, &args.bind, &upstreams)
    }
    .map_err(|e| Failure::Config(anyhow::anyhow!(e)))?;
    print!("{text}");
    Ok(())
}

fn kubernetes(args: KubernetesArgs) -> Result<(), Failure> {
    let spec = read_spec(&args.spec)?;
    if let Some(reason) = dns_label_problem(&args.namespace) {
        return Err(Failure::Config(anyhow::anyhow!("--namespace: {reason}")));
    }
    let image = match args.image {
        Some(i) => i,
        None => crate::build::reference_of(&spec, &args.data_dir).map_err(Failure::User)?,
    };
    // Planned as `deploy` plans a revision for a cluster: the optimized
    // model (`quantize: auto` decided; from the data directory's cache when
    // built before) on the cluster's terms.
    let mut cluster = spec.clone();
    cluster.spec.target = modelship_types::Target::Kubernetes;
    let artifact = crate::build::async_runtime()?
        .block_on(modelship_control::optimized_model(&args.data_dir, &cluster))?;
    let plan = modelship_control::plan::plan_artifact(&cluster, &artifact.path, &[])
        .map_err(Failure::User)?;
    let keys = match &args.api_keys {
        Some(path) => crate::up::read_api_keys(path)?,
        None => Default::default(),
    };
    // No salt for the keys' digest here: pods of rendered objects pick up
    // new keys when they restart.
    let objects = modelship_control::kubernetes::manifests(
        &spec,
        &image,
        &plan.replica,
        plan.replicas,
        &args.namespace,
        &keys,
        None,
    );
    print!("{}", yaml_documents(&objects).map_err(Failure::User)?);
    Ok(())
}

/// Prints the `ModelDeployment` CustomResourceDefinition.
pub fn crd() -> Result<(), Failure> {
    print!(
        "{}",
        yaml_documents(&[modelship_control::kubernetes::crd()]).map_err(Failure::User)?
    );
    Ok(())
}

/// Objects as a YAML stream, one document each.
pub fn yaml_documents(objects: &[serde_json::Value]) -> anyhow::Result<String> {
    let mut out = String::new();
    for o in objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string(o)?);
    }
    Ok(out)
}
