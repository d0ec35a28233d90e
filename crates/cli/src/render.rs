//! `render haproxy|nginx NAME`: another proxy's configuration for a
//! deployment's ready replicas.

use modelship_control::DeploymentSummary;
use modelship_types::Replica;

use crate::Failure;
use crate::ops::{Api, get_json, parse};

#[derive(clap::Subcommand)]
pub enum RenderCommand {
    /// An HAProxy configuration in front of a deployment's ready replicas.
    Haproxy(RenderArgs),
    /// An nginx configuration in front of a deployment's ready replicas.
    Nginx(RenderArgs),
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
    };
    let v = get_json(&args.api, &format!("/v1/deployments/{}", args.name))?;
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
    };
    print!("{text}");
    Ok(())
}
