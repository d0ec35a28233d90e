//! Kubernetes: the cluster runs the replicas; modelship server-side applies
//! the objects a revision renders to (field manager `modelship`, forced: the
//! objects are modelship's), reads the Deployment's rollout status, and
//! deletes the objects. The kubeconfig comes from the usual places
//! (`KUBECONFIG`, `~/.kube/config`, or the in-cluster service account).

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde_json::Value;

/// The field manager of every apply.
pub const FIELD_MANAGER: &str = "modelship";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error("cannot configure a Kubernetes client (KUBECONFIG, ~/.kube/config or in-cluster)")]
    Config(#[source] kube::Error),
    #[error("{what}")]
    Api {
        what: String,
        #[source]
        source: kube::Error,
    },
    #[error("object {index} has no {field}")]
    Object { index: usize, field: &'static str },
}

/// Where a Deployment's rollout stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RolloutStatus {
    pub desired: u32,
    pub updated: u32,
    pub available: u32,
    /// Every replica runs the latest template and is available, and the
    /// controller has seen the latest spec.
    pub complete: bool,
    /// Why the rollout cannot go on (`ProgressDeadlineExceeded`).
    pub failed: Option<String>,
}

pub struct Kubernetes {
    client: kube::Client,
}

impl Kubernetes {
    pub async fn connect() -> Result<Kubernetes, KubeError> {
        let client = kube::Client::try_default()
            .await
            .map_err(KubeError::Config)?;
        Ok(Kubernetes { client })
    }

    /// The kubeconfig context's namespace (`default` when it names none).
    pub fn default_namespace(&self) -> &str {
        self.client.default_namespace()
    }

    fn api(&self, object: &Value, index: usize) -> Result<(Api<DynamicObject>, String), KubeError> {
        let field = |f: &'static str, v: Option<&str>| {
            v.map(str::to_owned)
                .ok_or(KubeError::Object { index, field: f })
        };
        let api_version = field("apiVersion", object["apiVersion"].as_str())?;
        let kind = field("kind", object["kind"].as_str())?;
        let name = field("metadata.name", object["metadata"]["name"].as_str())?;
        let namespace = field(
            "metadata.namespace",
            object["metadata"]["namespace"].as_str(),
        )?;
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, &kind));
        Ok((
            Api::namespaced_with(self.client.clone(), &namespace, &resource),
            name,
        ))
    }

    /// Server-side applies each object, in order.
    pub async fn apply(&self, objects: &[Value]) -> Result<(), KubeError> {
        let params = PatchParams::apply(FIELD_MANAGER).force();
        for (i, object) in objects.iter().enumerate() {
            let (api, name) = self.api(object, i)?;
            api.patch(&name, &params, &Patch::Apply(object))
                .await
                .map_err(|source| KubeError::Api {
                    what: format!(
                        "applying {} {name}",
                        object["kind"].as_str().unwrap_or("object")
                    ),
                    source,
                })?;
        }
        Ok(())
    }

    /// Deletes the objects; ones already gone are fine.
    pub async fn delete(&self, objects: &[Value]) -> Result<(), KubeError> {
        for (i, object) in objects.iter().enumerate().rev() {
            let (api, name) = self.api(object, i)?;
            match api.delete(&name, &DeleteParams::foreground()).await {
                Ok(_) => {}
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(source) => {
                    return Err(KubeError::Api {
                        what: format!("deleting {name}"),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// The Deployment's rollout, as `kubectl rollout status` judges it.
    pub async fn rollout_status(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<RolloutStatus, KubeError> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), namespace);
        let d = api.get(name).await.map_err(|source| KubeError::Api {
            what: format!("reading Deployment {namespace}/{name}"),
            source,
        })?;
        Ok(rollout_status(&d))
    }

    /// Polls until the rollout completes, fails, or `timeout` passes.
    pub async fn wait_rollout(
        &self,
        namespace: &str,
        name: &str,
        timeout: Duration,
    ) -> Result<RolloutStatus, KubeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.rollout_status(namespace, name).await?;
            if s.complete || s.failed.is_some() || tokio::time::Instant::now() >= deadline {
                return Ok(s);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// `kubectl rollout status`'s rule on a Deployment.
pub fn rollout_status(d: &Deployment) -> RolloutStatus {
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1).max(0) as u32;
    let status = d.status.clone().unwrap_or_default();
    let updated = status.updated_replicas.unwrap_or(0).max(0) as u32;
    let available = status.available_replicas.unwrap_or(0).max(0) as u32;
    let total = status.replicas.unwrap_or(0).max(0) as u32;
    let observed = status.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let failed = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| {
            c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
        })
        .map(|c| {
            c.message
                .unwrap_or_else(|| "progress deadline exceeded".into())
        });
    RolloutStatus {
        desired,
        updated,
        available,
        complete: observed && updated == desired && total == desired && available == desired,
        failed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(
        generation: i64,
        observed: i64,
        replicas: i32,
        updated: i32,
        total: i32,
        available: i32,
    ) -> Deployment {
        serde_json::from_value(serde_json::json!({
            "metadata": { "name": "m", "generation": generation },
            "spec": { "replicas": replicas, "selector": {}, "template": {} },
            "status": { "observedGeneration": observed, "replicas": total,
                        "updatedReplicas": updated, "availableReplicas": available },
        }))
        .unwrap()
    }

    #[test]
    fn rollout_status_follows_kubectl() {
        let cases = [
            ("done", deployment(2, 2, 3, 3, 3, 3), true),
            ("spec not seen yet", deployment(3, 2, 3, 3, 3, 3), false),
            (
                "old pods still running",
                deployment(2, 2, 3, 3, 4, 3),
                false,
            ),
            (
                "new pods not available",
                deployment(2, 2, 3, 3, 3, 2),
                false,
            ),
            ("not all updated", deployment(2, 2, 3, 2, 3, 3), false),
        ];
        for (name, d, complete) in cases {
            assert_eq!(rollout_status(&d).complete, complete, "{name}");
        }
        let mut stuck = deployment(2, 2, 3, 1, 4, 3);
        stuck.status.as_mut().unwrap().conditions = Some(vec![
            serde_json::from_value(serde_json::json!({
                "type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                "message": "ReplicaSet \"m-1\" has timed out progressing."
            }))
            .unwrap(),
        ]);
        assert!(rollout_status(&stuck).failed.unwrap().contains("timed out"));
    }
}
