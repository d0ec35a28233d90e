//! Replicas as Docker containers: one per replica, named after it, on a
//! `modelship` bridge network, its port published on loopback for the
//! gateway, with the plan's CPU and memory limits, the image's health check,
//! a bounded restart policy (the controller takes over after it, with its
//! backoff and crash-loop rollback), a read-only root filesystem and no
//! capabilities. Containers outlive the control plane; a restarted one finds
//! them by name.

use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use hyper::{Method, StatusCode};
use modelship_types::{Replica, ReplicaState, Target};
use serde_json::{Value, json};

use crate::engine::{Engine, EngineError, query_value};
use crate::{
    Liveness, Orchestrator, OrchestratorError, ReplicaSpec, now_ms, ready, serve_args, serve_env,
};

/// The port replicas listen on inside their container.
pub const CONTAINER_PORT: u16 = 8080;
/// The network replicas join.
const NETWORK: &str = "modelship";
/// Label every object modelship creates carries, for cleanup and listing.
pub const MANAGED_LABEL: &str = "dev.modelship.managed";
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub struct Docker {
    engine: Engine,
}

/// The container of a replica.
pub fn container_name(replica_id: &str) -> String {
    format!("modelship-{replica_id}")
}

fn start_error(id: &str, e: EngineError) -> OrchestratorError {
    OrchestratorError::Start {
        id: id.to_owned(),
        source: std::io::Error::other(e),
    }
}

impl Docker {
    /// Connects and makes sure the network exists.
    pub async fn connect() -> Result<Docker, EngineError> {
        let engine = Engine::connect().await?;
        let filter = query_value(&json!({ "name": [NETWORK] }).to_string());
        let nets = engine.get(&format!("/networks?filters={filter}")).await?;
        let exists = nets
            .as_array()
            .is_some_and(|a| a.iter().any(|n| n["Name"] == NETWORK));
        if !exists {
            engine
                .call(
                    Method::POST,
                    "/networks/create",
                    Some(&json!({
                        "Name": NETWORK,
                        "Driver": "bridge",
                        "CheckDuplicate": true,
                        "Labels": { MANAGED_LABEL: "true" },
                    })),
                )
                .await?;
        }
        Ok(Docker { engine })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The create request for a replica listening on `host_port`.
    fn container(spec: &ReplicaSpec, image: &str, host_port: u16) -> Value {
        let model = spec.artifact.to_string_lossy();
        let args = serve_args(&model, "0.0.0.0", CONTAINER_PORT, spec);
        let port = format!("{CONTAINER_PORT}/tcp");
        let mut host = json!({
            "PortBindings": { &port: [{ "HostIp": "127.0.0.1", "HostPort": host_port.to_string() }] },
            "RestartPolicy": { "Name": "on-failure", "MaximumRetryCount": 2 },
            "NetworkMode": NETWORK,
            "ReadonlyRootfs": true,
            "Tmpfs": { "/tmp": "rw,noexec,nosuid,size=64m" },
            "CapDrop": ["ALL"],
            "SecurityOpt": ["no-new-privileges"],
            "Init": false,
        });
        if let Some(cpu) = spec.cpu {
            host["NanoCpus"] = json!((cpu * 1e9) as u64);
        }
        if let Some(memory) = spec.memory {
            host["Memory"] = json!(memory);
        }
        let env: Vec<String> = serve_env(spec)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        json!({
            "Image": image,
            "Cmd": args,
            "Env": env,
            "ExposedPorts": { &port: {} },
            "Labels": labels(spec),
            "Healthcheck": health_check(),
            "HostConfig": host,
        })
    }
}

/// The container health check: the image has no shell or curl, so the
/// binary probes its own readiness endpoint. (`/usr/local/bin/modelship` is
/// where the image builder puts it.)
pub(crate) fn health_check() -> Value {
    json!({
        "Test": ["CMD", "/usr/local/bin/modelship", "probe",
                 format!("http://127.0.0.1:{CONTAINER_PORT}/v2/health/ready")],
        "Interval": 2_000_000_000u64,
        "Timeout": 1_000_000_000u64,
        "StartPeriod": 60_000_000_000u64,
        "Retries": 3,
    })
}

/// Lines from the Engine's log stream: frames of an 8-byte header (stream,
/// three zero bytes, big-endian length) and the payload, for a container
/// without a TTY.
fn demultiplex(bytes: &[u8]) -> Vec<String> {
    let mut text = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 8 {
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = (8 + len).min(rest.len());
        text.extend_from_slice(&rest[8..end]);
        rest = &rest[end..];
    }
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The labels that tie an engine object to its deployment and revision.
pub fn labels(spec: &ReplicaSpec) -> Value {
    json!({
        MANAGED_LABEL: "true",
        "dev.modelship.deployment": spec.deployment,
        "dev.modelship.revision": spec.revision.to_string(),
        "dev.modelship.replica": spec.id,
    })
}

impl Orchestrator for Docker {
    fn start<'a>(
        &'a self,
        spec: &'a ReplicaSpec,
        restarts: u32,
    ) -> BoxFuture<'a, Result<Replica, OrchestratorError>> {
        async move {
            let Some(image) = spec.image.as_deref() else {
                return Err(start_error(
                    &spec.id,
                    EngineError::Unexpected {
                        what: "the revision has no image (was it built?)".into(),
                    },
                ));
            };
            let name = container_name(&spec.id);
            // A restart replaces the exited container of the same name.
            self.engine
                .delete(&format!("/containers/{name}?force=true"))
                .await
                .map_err(|e| start_error(&spec.id, e))?;
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|source| OrchestratorError::Start {
                    id: spec.id.clone(),
                    source,
                })?
                .port();
            let body = Docker::container(spec, image, port);
            self.engine
                .call(
                    Method::POST,
                    &format!("/containers/create?name={name}"),
                    Some(&body),
                )
                .await
                .map_err(|e| start_error(&spec.id, e))?;
            self.engine
                .call(Method::POST, &format!("/containers/{name}/start"), None)
                .await
                .map_err(|e| start_error(&spec.id, e))?;
            Ok(Replica {
                id: spec.id.clone(),
                deployment: spec.deployment.clone(),
                revision: spec.revision,
                endpoint: format!("127.0.0.1:{port}"),
                pid: None,
                state: ReplicaState::Starting,
                restarts,
                exited_at: None,
                started_at: now_ms(),
                target: Target::Docker,
                reason: None,
                reserved: None,
            })
        }
        .boxed()
    }

    fn observe<'a>(&'a self, replica: &'a Replica) -> BoxFuture<'a, Liveness> {
        async move {
            let name = container_name(&replica.id);
            let info = match self.engine.find(&format!("/containers/{name}/json")).await {
                Ok(Some(info)) => info,
                Ok(None) => return Liveness::Gone,
                Err(e) => {
                    // The engine is unreachable: say nothing changed for the
                    // worse rather than restart every replica.
                    tracing::warn!(replica = %replica.id, "{e}");
                    return Liveness::Running;
                }
            };
            match info["State"]["Status"].as_str() {
                Some("running") => {
                    let unhealthy = info["State"]["Health"]["Status"] == "unhealthy";
                    if !unhealthy && ready(&replica.endpoint, PROBE_TIMEOUT).await {
                        Liveness::Ready
                    } else {
                        Liveness::Running
                    }
                }
                Some("created" | "restarting") => Liveness::Running,
                _ => Liveness::Gone,
            }
        }
        .boxed()
    }

    fn stop<'a>(
        &'a self,
        replica: &'a Replica,
        grace: Duration,
    ) -> BoxFuture<'a, Result<(), OrchestratorError>> {
        async move {
            let name = container_name(&replica.id);
            let err = |e: EngineError| OrchestratorError::Stop {
                id: replica.id.clone(),
                source: std::io::Error::other(e),
            };
            // SIGTERM (the image's stop signal), SIGKILL after the grace.
            let stop = format!("/containers/{name}/stop?t={}", grace.as_secs());
            match self.engine.call(Method::POST, &stop, None).await {
                Err(e)
                    if e.status() != Some(StatusCode::NOT_FOUND)
                        && e.status() != Some(StatusCode::NOT_MODIFIED) =>
                {
                    return Err(err(e));
                }
                _ => {}
            }
            self.engine
                .delete(&format!("/containers/{name}?force=true"))
                .await
                .map_err(err)
        }
        .boxed()
    }

    fn logs<'a>(
        &'a self,
        replica: &'a Replica,
        tail: usize,
    ) -> BoxFuture<'a, std::io::Result<Vec<String>>> {
        async move {
            let name = container_name(&replica.id);
            let path = format!("/containers/{name}/logs?stdout=1&stderr=1&tail={tail}");
            match self.engine.raw(hyper::Method::GET, &path).await {
                Ok(bytes) => Ok(demultiplex(&bytes)),
                Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(Vec::new()),
                Err(e) => Err(std::io::Error::other(e)),
            }
        }
        .boxed()
    }

    fn limits_note(&self) -> String {
        format!(
            "docker (API {}): CPU and memory limits per container",
            self.engine.version()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn containers_carry_the_plans_limits_and_publish_on_loopback_only() {
        let spec = ReplicaSpec {
            id: "minilm-2-abcde".into(),
            deployment: "minilm".into(),
            revision: 2,
            artifact: "/models/m.gguf".into(),
            image: Some("modelship/minilm:abc".into()),
            limits: Default::default(),
            threads: 2,
            cpu: Some(1.5),
            memory: Some(512 << 20),
            api_key: Some(modelship_types::auth::Secret::new("replica-key".into())),
        };
        let c = Docker::container(&spec, "modelship/minilm:abc", 41000);
        assert_eq!(c["Env"], json!(["MODELSHIP_API_KEY=replica-key"]));
        assert_eq!(c["HostConfig"]["NanoCpus"], 1_500_000_000u64);
        assert_eq!(c["HostConfig"]["Memory"], 512u64 << 20);
        assert_eq!(
            c["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"],
            "127.0.0.1"
        );
        assert_eq!(
            c["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostPort"],
            "41000"
        );
        assert_eq!(c["Labels"]["dev.modelship.revision"], "2");
        let cmd: Vec<&str> = c["Cmd"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(&cmd[..2], ["serve", "/models/m.gguf"]);
        assert!(cmd.windows(2).any(|w| w == ["--threads", "2"]), "{cmd:?}");
        assert!(
            cmd.windows(2).any(|w| w == ["--host", "0.0.0.0"]),
            "{cmd:?}"
        );
    }

    #[test]
    fn log_frames_are_joined_into_lines() {
        let frame = |stream: u8, s: &str| {
            let mut f = vec![stream, 0, 0, 0];
            f.extend_from_slice(&(s.len() as u32).to_be_bytes());
            f.extend_from_slice(s.as_bytes());
            f
        };
        let mut bytes = frame(1, "loaded\nserving ");
        bytes.extend(frame(2, "on :8080\n"));
        bytes.extend(&frame(1, "cut short")[..10]);
        assert_eq!(demultiplex(&bytes), ["loaded", "serving on :8080", "cu"]);
    }
}
