//! The controller's pass over Kubernetes deployments: when a deployment's
//! revision or replica count differs from what was last applied, render that
//! revision's objects and server-side apply them; when a deployment is gone,
//! delete what was applied for it. The cluster runs and rolls the pods;
//! a rollout's phase follows the Deployment's status ([`rollout`]).

use std::collections::HashMap;

use modelship_planner::{ClusterRollout, Desired};
use modelship_types::Revision;
use serde_json::Value;

use crate::Ctx;

/// What was last applied for a deployment.
#[derive(Debug, Clone)]
pub(crate) struct Applied {
    pub revision: u32,
    pub replicas: u32,
    pub namespace: String,
    pub objects: Vec<Value>,
}

pub(crate) type AppliedMap = HashMap<String, Applied>;

/// The objects `rev` renders to with `replicas` pods, in `namespace`; the
/// pods require the control plane's API keys when it has any.
pub(crate) fn objects(
    ctx: &Ctx,
    rev: &Revision,
    replicas: u32,
    namespace: &str,
) -> anyhow::Result<Vec<Value>> {
    let image = rev
        .image
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("revision {} has no image", rev.number))?;
    let plan = crate::plan::recorded(rev);
    // The replica key salts the keys' digest: a secret nobody reading the
    // Deployment knows.
    let salt = ctx.replica_key.as_ref().map(|k| k.expose());
    Ok(crate::kubernetes::manifests(
        &rev.spec,
        image,
        &plan,
        replicas,
        namespace,
        &ctx.api_keys,
        salt,
    ))
}

/// One pass over the Kubernetes deployments in `desired`.
pub(crate) async fn pass(ctx: &Ctx, desired: &[Desired]) -> anyhow::Result<()> {
    let kube = ctx.targets.kubernetes().await?;
    let namespace = kube.default_namespace().to_owned();
    let (to_apply, gone): (Vec<&Desired>, Vec<String>) = {
        let applied = ctx.applied.lock().unwrap_or_else(|p| p.into_inner());
        let to_apply = desired
            .iter()
            .filter(|d| {
                applied
                    .get(&d.deployment)
                    .is_none_or(|a| a.revision != d.revision || a.replicas != d.replicas)
            })
            .collect();
        let gone = applied
            .keys()
            .filter(|n| !desired.iter().any(|d| &d.deployment == *n))
            .cloned()
            .collect();
        (to_apply, gone)
    };
    for name in gone {
        let applied = ctx
            .applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&name)
            .cloned();
        if let Some(a) = applied {
            // Forgotten only once deleted, so a failure is tried again.
            kube.delete(&a.objects).await?;
            ctx.applied
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&name);
            ctx.event(
                &name,
                format!("deleted its Kubernetes objects in {}", a.namespace),
            );
        }
    }
    for d in to_apply {
        let Some(rev) = ctx.store.revision(&d.deployment, d.revision)? else {
            continue;
        };
        // One deployment failing to apply does not hold back the others.
        let applied = match objects(ctx, &rev, d.replicas, &namespace) {
            Ok(objects) => kube
                .apply(&objects)
                .await
                .map(|()| objects)
                .map_err(anyhow::Error::from),
            Err(e) => Err(e),
        };
        let objects = match applied {
            Ok(objects) => objects,
            Err(e) => {
                tracing::error!(deployment = %d.deployment, "kubernetes: {e:#}");
                continue;
            }
        };
        ctx.event(
            &d.deployment,
            format!(
                "applied revision {} ({} replica(s)) to Kubernetes namespace {namespace}",
                d.revision, d.replicas
            ),
        );
        ctx.applied
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(
                d.deployment.clone(),
                Applied {
                    revision: d.revision,
                    replicas: d.replicas,
                    namespace: namespace.clone(),
                    objects,
                },
            );
    }
    Ok(())
}

/// Where the cluster's rollout of revision `number` of `name` stands: still
/// progressing until that revision is applied, then the Deployment's
/// status (its progress deadline passed: failed).
pub(crate) async fn rollout(ctx: &Ctx, name: &str, number: u32) -> anyhow::Result<ClusterRollout> {
    let namespace = ctx
        .applied
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(name)
        .filter(|a| a.revision == number)
        .map(|a| a.namespace.clone());
    let Some(ns) = namespace else {
        return Ok(ClusterRollout::Progressing);
    };
    let kube = ctx.targets.kubernetes().await?;
    let status = kube.rollout_status(&ns, name).await?;
    Ok(match status.failed {
        Some(why) => ClusterRollout::Failed(why),
        None if status.complete => ClusterRollout::Complete,
        None => ClusterRollout::Progressing,
    })
}
