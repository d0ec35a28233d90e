//! Docker Swarm: a replicated service per revision. Swarm starts, places,
//! restarts and health-checks the tasks; modelship sets each service's count
//! (the planner's `scale_services`) and reads the tasks back as replicas for
//! the gateway. Each task publishes its port on its node (host mode, a port
//! Swarm picks), so the gateway reaches every task directly and balances
//! itself instead of through Swarm's routing mesh.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use hyper::Method;
use modelship_types::{Replica, ReplicaState, ServingLimits, Target};
use serde_json::{Value, json};

use crate::docker::{CONTAINER_PORT, MANAGED_LABEL, health_check};
use crate::engine::{Engine, EngineError, query_value};
use crate::{ReplicaSpec, now_ms, ready, serve_args, serve_env};

const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a task may drain after SIGTERM before Swarm kills it.
const STOP_GRACE: Duration = Duration::from_secs(30);

/// One revision's service, to create or scale.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub deployment: String,
    pub revision: u32,
    pub image: String,
    /// The model's path in the image.
    pub model: String,
    pub limits: ServingLimits,
    pub threads: u32,
    pub cpu: Option<f64>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// What to reserve on a node: the plan's estimate.
    pub reserve_memory: Option<u64>,
    pub replicas: u32,
    /// The key its replicas require (see [`ReplicaSpec::api_key`]).
    pub api_key: Option<modelship_types::auth::Secret>,
}

/// A service modelship created.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub id: String,
    pub name: String,
    pub deployment: String,
    pub revision: u32,
    pub replicas: u32,
}

pub struct Swarm {
    engine: Engine,
    /// Node id → address, for task endpoints.
    nodes: Mutex<HashMap<String, String>>,
}

/// The service of a revision.
pub fn service_name(deployment: &str, revision: u32) -> String {
    format!("modelship-{deployment}-r{revision}")
}

impl Swarm {
    /// Connects to an engine that is a Swarm manager.
    pub async fn connect() -> Result<Swarm, EngineError> {
        let engine = Engine::connect().await?;
        let info = engine.get("/info").await?;
        if info["Swarm"]["ControlAvailable"] != true {
            return Err(EngineError::Unexpected {
                what: format!(
                    "this engine is not a Swarm manager (swarm state: {}); run `docker swarm init`",
                    info["Swarm"]["LocalNodeState"]
                ),
            });
        }
        Ok(Swarm {
            engine,
            nodes: Mutex::default(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The service's definition: the container, its limits and
    /// reservations, health check, restart and update policies.
    pub fn definition(spec: &ServiceSpec) -> Value {
        let replica = ReplicaSpec {
            id: String::new(),
            deployment: spec.deployment.clone(),
            revision: spec.revision,
            artifact: spec.model.clone().into(),
            image: Some(spec.image.clone()),
            limits: spec.limits,
            threads: spec.threads,
            cpu: spec.cpu,
            memory: spec.memory,
            api_key: spec.api_key.clone(),
        };
        let env: Vec<String> = serve_env(&replica)
            .into_iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let labels = json!({
            MANAGED_LABEL: "true",
            "dev.modelship.deployment": spec.deployment,
            "dev.modelship.revision": spec.revision.to_string(),
        });
        let nano = |cpu: f64| (cpu * 1e9) as u64;
        let mut limits = json!({});
        let mut reservations = json!({});
        if let Some(cpu) = spec.cpu {
            limits["NanoCPUs"] = json!(nano(cpu));
            reservations["NanoCPUs"] = json!(nano(cpu));
        }
        if let Some(m) = spec.memory {
            limits["MemoryBytes"] = json!(m);
        }
        if let Some(m) = spec.reserve_memory.or(spec.memory) {
            reservations["MemoryBytes"] = json!(m);
        }
        json!({
            "Name": service_name(&spec.deployment, spec.revision),
            "Labels": labels,
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": spec.image,
                    "Args": serve_args(&spec.model, "0.0.0.0", CONTAINER_PORT, &replica),
                    "Env": env,
                    "Labels": labels,
                    "ReadOnly": true,
                    "Mounts": [{ "Type": "tmpfs", "Target": "/tmp" }],
                    "StopSignal": "SIGTERM",
                    "StopGracePeriod": STOP_GRACE.as_nanos() as u64,
                    "Healthcheck": health_check(),
                },
                "Resources": { "Limits": limits, "Reservations": reservations },
                "RestartPolicy": { "Condition": "on-failure", "Delay": 1_000_000_000u64, "MaxAttempts": 0 },
            },
            "Mode": { "Replicated": { "Replicas": spec.replicas } },
            // An in-place update of this service (a new runtime for the same
            // revision) goes one task at a time, new before old, and rolls
            // itself back when a task fails within the monitor window.
            "UpdateConfig": {
                "Parallelism": 1,
                "Order": "start-first",
                "FailureAction": "rollback",
                "Monitor": 15_000_000_000u64,
                "MaxFailureRatio": 0.0,
            },
            "RollbackConfig": { "Parallelism": 1, "Order": "start-first", "FailureAction": "pause" },
            "EndpointSpec": {
                "Mode": "vip",
                "Ports": [{ "Protocol": "tcp", "TargetPort": CONTAINER_PORT, "PublishMode": "host" }],
            },
        })
    }

    /// Every service modelship made.
    pub async fn services(&self) -> Result<Vec<Service>, EngineError> {
        let filter =
            query_value(&json!({ "label": [format!("{MANAGED_LABEL}=true")] }).to_string());
        let all = self
            .engine
            .get(&format!("/services?filters={filter}"))
            .await?;
        Ok(all
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| {
                let labels = &s["Spec"]["Labels"];
                Some(Service {
                    id: s["ID"].as_str()?.to_owned(),
                    name: s["Spec"]["Name"].as_str()?.to_owned(),
                    deployment: labels["dev.modelship.deployment"].as_str()?.to_owned(),
                    revision: labels["dev.modelship.revision"].as_str()?.parse().ok()?,
                    replicas: s["Spec"]["Mode"]["Replicated"]["Replicas"].as_u64()? as u32,
                })
            })
            .collect())
    }

    pub async fn create(&self, spec: &ServiceSpec) -> Result<(), EngineError> {
        self.engine
            .call(
                Method::POST,
                "/services/create",
                Some(&Swarm::definition(spec)),
            )
            .await?;
        Ok(())
    }

    /// Sets a service's replica count (Swarm starts or stops tasks).
    pub async fn scale(&self, service: &Service, replicas: u32) -> Result<(), EngineError> {
        let current = self
            .engine
            .get(&format!("/services/{}", service.id))
            .await?;
        let version =
            current["Version"]["Index"]
                .as_u64()
                .ok_or_else(|| EngineError::Unexpected {
                    what: format!("service {} has no version", service.name),
                })?;
        let mut spec = current["Spec"].clone();
        spec["Mode"]["Replicated"]["Replicas"] = json!(replicas);
        self.engine
            .call(
                Method::POST,
                &format!("/services/{}/update?version={version}", service.id),
                Some(&spec),
            )
            .await?;
        Ok(())
    }

    pub async fn remove(&self, service: &Service) -> Result<(), EngineError> {
        self.engine
            .delete(&format!("/services/{}", service.id))
            .await
    }

    /// The service's tasks as replicas: those Swarm wants running, each with
    /// its node's address and published port, ready when it answers its
    /// readiness check, with the failed tasks of its slot as restarts.
    /// `known` carries start times over from earlier observations.
    pub async fn replicas(
        &self,
        service: &Service,
        known: &[Replica],
    ) -> Result<Vec<Replica>, EngineError> {
        let filter = query_value(&json!({ "service": [service.name] }).to_string());
        let tasks = self.engine.get(&format!("/tasks?filters={filter}")).await?;
        let tasks: &[Value] = tasks.as_array().map_or(&[], Vec::as_slice);
        let mut failed: HashMap<u64, u32> = HashMap::new();
        for t in tasks {
            if matches!(t["Status"]["State"].as_str(), Some("failed" | "rejected")) {
                *failed.entry(t["Slot"].as_u64().unwrap_or(0)).or_default() += 1;
            }
        }
        let mut out = Vec::new();
        let mut running = Vec::new();
        for t in tasks.iter().filter(|t| t["DesiredState"] == "running") {
            let slot = t["Slot"].as_u64().unwrap_or(0);
            let id = format!("{}-{}-s{slot}", service.deployment, service.revision);
            let port = t["Status"]["PortStatus"]["Ports"]
                .as_array()
                .and_then(|ps| ps.iter().find(|p| p["TargetPort"] == CONTAINER_PORT))
                .and_then(|p| p["PublishedPort"].as_u64());
            let node = t["NodeID"].as_str().unwrap_or_default();
            let endpoint = match port {
                Some(port) if !node.is_empty() => {
                    format!("{}:{port}", self.node_addr(node).await?)
                }
                _ => String::new(),
            };
            let before = known.iter().find(|r| r.id == id);
            running.push(t["Status"]["State"] == "running" && !endpoint.is_empty());
            out.push(Replica {
                id,
                deployment: service.deployment.clone(),
                revision: service.revision,
                endpoint,
                pid: None,
                // Settled below, once probed.
                state: before.map_or(ReplicaState::Starting, |r| r.state),
                restarts: failed.get(&slot).copied().unwrap_or(0),
                exited_at: None,
                started_at: before.map_or_else(now_ms, |r| r.started_at),
                target: Target::Swarm,
                reason: None,
                reserved: None,
            });
        }
        // Probed together: one slow task must not hold up the others.
        let probes = out
            .iter()
            .zip(&running)
            .map(|(r, &up)| async move { up && ready(&r.endpoint, PROBE_TIMEOUT).await });
        let answers = futures::future::join_all(probes).await;
        for ((r, up), answered) in out.iter_mut().zip(running).zip(answers) {
            r.state = match (answered, r.state) {
                (true, _) => ReplicaState::Ready,
                (false, ReplicaState::Ready | ReplicaState::Unready) if up => ReplicaState::Unready,
                _ => ReplicaState::Starting,
            };
        }
        Ok(out)
    }

    /// A node's address (cached: nodes do not move).
    async fn node_addr(&self, node: &str) -> Result<String, EngineError> {
        if let Some(a) = self
            .nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(node)
        {
            return Ok(a.clone());
        }
        let info = self.engine.get(&format!("/nodes/{node}")).await?;
        let addr = info["Status"]["Addr"]
            .as_str()
            .filter(|a| !a.is_empty() && *a != "0.0.0.0")
            .unwrap_or("127.0.0.1")
            .to_owned();
        self.nodes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(node.to_owned(), addr.clone());
        Ok(addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_carries_limits_reservations_health_and_rollback_on_failure() {
        let spec = ServiceSpec {
            deployment: "minilm".into(),
            revision: 3,
            image: "modelship/minilm:abc".into(),
            model: "/models/m.gguf".into(),
            limits: ServingLimits::default(),
            threads: 1,
            cpu: Some(1.0),
            memory: Some(1 << 30),
            reserve_memory: Some(512 << 20),
            replicas: 2,
            api_key: Some(modelship_types::auth::Secret::new("replica-key".into())),
        };
        let s = Swarm::definition(&spec);
        assert_eq!(
            s["TaskTemplate"]["ContainerSpec"]["Env"],
            json!(["MODELSHIP_API_KEY=replica-key"])
        );
        assert_eq!(s["Name"], "modelship-minilm-r3");
        assert_eq!(s["Mode"]["Replicated"]["Replicas"], 2);
        let r = &s["TaskTemplate"]["Resources"];
        assert_eq!(r["Limits"]["NanoCPUs"], 1_000_000_000u64);
        assert_eq!(r["Limits"]["MemoryBytes"], 1u64 << 30);
        assert_eq!(r["Reservations"]["MemoryBytes"], 512u64 << 20);
        assert_eq!(s["UpdateConfig"]["FailureAction"], "rollback");
        assert_eq!(s["EndpointSpec"]["Ports"][0]["PublishMode"], "host");
        assert_eq!(
            s["TaskTemplate"]["ContainerSpec"]["Healthcheck"]["Test"][2],
            "probe"
        );
        assert_eq!(s["Labels"]["dev.modelship.revision"], "3");
    }
}
