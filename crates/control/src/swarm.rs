//! The controller's pass over Swarm deployments: observe each revision's
//! service and its tasks, ask the planner how many tasks each service
//! should run (`scale_services`), create, scale and remove services to
//! match, and hand the tasks back as replicas for the store and the
//! gateway. Swarm itself starts, places, restarts and health-checks tasks.

use std::collections::HashMap;

use modelship_orchestrator::swarm::{Service, ServiceSpec, service_name};
use modelship_planner::{Desired, ServiceObserved, scale_services};
use modelship_types::{Replica, ReplicaState};

use crate::Ctx;

/// One pass; returns the replicas (tasks) of every modelship service.
/// `stored` are the Swarm replicas the store holds, for start times.
pub(crate) async fn pass(
    ctx: &Ctx,
    desired: &[Desired],
    stored: &[Replica],
) -> anyhow::Result<Vec<Replica>> {
    let swarm = ctx.targets.swarm().await?;
    let services = swarm.services().await?;
    let mut replicas = Vec::new();
    let mut ready: HashMap<(String, u32), u32> = HashMap::new();
    for s in &services {
        let tasks = swarm.replicas(s, stored).await?;
        let n = tasks
            .iter()
            .filter(|r| r.state == ReplicaState::Ready)
            .count() as u32;
        ready.insert((s.deployment.clone(), s.revision), n);
        replicas.extend(tasks);
    }
    for d in desired {
        let mine: Vec<&Service> = services
            .iter()
            .filter(|s| s.deployment == d.deployment)
            .collect();
        let observed: Vec<ServiceObserved> = mine
            .iter()
            .map(|s| ServiceObserved {
                revision: s.revision,
                replicas: s.replicas,
                ready: ready
                    .get(&(s.deployment.clone(), s.revision))
                    .copied()
                    .unwrap_or(0),
            })
            .collect();
        for (revision, count) in scale_services(d, &observed) {
            let existing = mine.iter().find(|s| s.revision == revision);
            let result = match existing {
                Some(s) if count == 0 => swarm
                    .remove(s)
                    .await
                    .map(|()| Some(format!("removed service {}", s.name))),
                Some(s) if s.replicas != count => swarm.scale(s, count).await.map(|()| {
                    Some(format!(
                        "scaled service {} from {} to {count}",
                        s.name, s.replicas
                    ))
                }),
                Some(_) => Ok(None),
                None if count == 0 => Ok(None),
                None => match service_spec(ctx, &d.deployment, revision, count) {
                    Ok(spec) => swarm.create(&spec).await.map(|()| {
                        Some(format!(
                            "created service {} ({count} replica(s), image {})",
                            service_name(&d.deployment, revision),
                            spec.image
                        ))
                    }),
                    Err(e) => {
                        tracing::error!("swarm: {e:#}");
                        Ok(None)
                    }
                },
            };
            match result {
                Ok(Some(line)) => ctx.event(&d.deployment, line),
                Ok(None) => {}
                Err(e) => tracing::error!("swarm: {}: {e}", d.deployment),
            }
        }
    }
    // Services of deployments that are gone, or no longer on Swarm.
    for s in services
        .iter()
        .filter(|s| !desired.iter().any(|d| d.deployment == s.deployment))
    {
        match swarm.remove(s).await {
            Ok(()) => ctx.event(&s.deployment, format!("removed service {}", s.name)),
            Err(e) => tracing::error!("swarm: {e}"),
        }
    }
    Ok(replicas)
}

/// What the service of `deployment`'s `revision` runs.
fn service_spec(
    ctx: &Ctx,
    deployment: &str,
    revision: u32,
    replicas: u32,
) -> anyhow::Result<ServiceSpec> {
    let rev = ctx
        .store
        .revision(deployment, revision)?
        .ok_or_else(|| anyhow::anyhow!("{deployment} has no revision {revision}"))?;
    let image = rev
        .image
        .clone()
        .ok_or_else(|| anyhow::anyhow!("{deployment} revision {revision} has no image"))?;
    let s = &rev.spec.spec;
    let (threads, cpu, memory) = crate::controller::resources(&rev);
    Ok(ServiceSpec {
        deployment: deployment.to_owned(),
        revision,
        image,
        model: modelship_package::ImageSpec::model_in_image(&rev.artifact),
        limits: s.serving,
        threads,
        cpu,
        memory,
        reserve_memory: Some(crate::plan::recorded(&rev).memory_request).filter(|&m| m > 0),
        replicas,
        api_key: ctx.replica_key.clone(),
    })
}
