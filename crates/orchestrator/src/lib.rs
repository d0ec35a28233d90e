//! Runs replicas. [`Orchestrator`] is the contract the controller drives —
//! start, observe, stop — and [`Local`] runs each replica as a
//! `modelship serve` child process on this machine, limited by cgroups where
//! the machine allows; [`Docker`] runs each as a container. Knows nothing of rollouts or policy: the planner
//! decides, an orchestrator carries out.

mod cgroup;
pub mod docker;
pub mod engine;
pub mod kubernetes;
mod local;
mod probe;
pub mod swarm;

use std::path::PathBuf;

use futures::future::BoxFuture;
use modelship_types::auth::Secret;
use modelship_types::{Replica, ServingLimits};

pub use cgroup::Cgroups;
pub use docker::Docker;
pub use engine::{Engine, EngineError};
pub use kubernetes::Kubernetes;
pub use local::Local;
pub use probe::{metrics, ready};
pub use swarm::Swarm;

/// Everything needed to start one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSpec {
    pub id: String,
    pub deployment: String,
    pub revision: u32,
    /// The model file or directory to serve, as the replica sees it (a path
    /// in the image for containers).
    pub artifact: PathBuf,
    /// The OCI image, for containers.
    pub image: Option<String>,
    pub limits: ServingLimits,
    /// Compute threads.
    pub threads: u32,
    /// The CPU quota; none: no quota.
    pub cpu: Option<f64>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
    /// The key the replica requires (the control plane's replica key, when
    /// its gateway has keys: a replica's own port then bypasses nothing).
    pub api_key: Option<Secret>,
}

/// The arguments of `modelship serve` for a replica of `spec` serving
/// `model` (a path as the replica sees it) on `host:port`: one place, so
/// processes, containers and pods run replicas alike.
pub fn serve_args(model: &str, host: &str, port: u16, spec: &ReplicaSpec) -> Vec<String> {
    let threads = spec.threads.max(1);
    let l = &spec.limits;
    let flags = [
        ("--host", host.to_owned()),
        ("--port", port.to_string()),
        ("--name", spec.deployment.clone()),
        ("--threads", threads.to_string()),
        ("--max-context", l.max_context.to_string()),
        ("--max-concurrent", l.max_concurrent.to_string()),
        ("--max-batch-tokens", l.max_batch_tokens.to_string()),
        ("--max-queue", l.max_queue.to_string()),
        ("--max-tokens", l.max_tokens.to_string()),
        ("--max-body-bytes", l.max_body_bytes.to_string()),
        ("--max-inputs", l.max_inputs.to_string()),
    ];
    let mut args = vec!["serve".to_owned(), model.to_owned()];
    for (flag, value) in flags {
        args.push(flag.to_owned());
        args.push(value);
    }
    args
}

/// The environment of `modelship serve` for a replica of `spec`, beside
/// [`serve_args`]: its key goes in `MODELSHIP_API_KEY`, not on a command
/// line every local user can read.
pub fn serve_env(spec: &ReplicaSpec) -> Vec<(&'static str, String)> {
    spec.api_key
        .iter()
        .map(|k| ("MODELSHIP_API_KEY", k.expose().to_owned()))
        .collect()
}

/// What an orchestrator sees of a replica it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    /// Running and answering its readiness check.
    Ready,
    /// Running, not (yet) ready.
    Running,
    /// Its process is gone.
    Gone,
}

#[derive(Debug, thiserror::Error)]
pub enum OrchestratorError {
    #[error("cannot start replica {id}")]
    Start {
        id: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot stop replica {id}")]
    Stop {
        id: String,
        #[source]
        source: std::io::Error,
    },
}

/// The contract the controller drives. Implementations: local processes
/// ([`Local`]) and Docker containers ([`Docker`]).
pub trait Orchestrator: Send + Sync {
    /// Starts a replica; returns its record (state `Starting`, its endpoint
    /// and process). `restarts` carries over when a replica is restarted.
    fn start<'a>(
        &'a self,
        spec: &'a ReplicaSpec,
        restarts: u32,
    ) -> BoxFuture<'a, Result<Replica, OrchestratorError>>;

    /// Is the replica's process alive, and is it ready?
    fn observe<'a>(&'a self, replica: &'a Replica) -> BoxFuture<'a, Liveness>;

    /// Asks the replica to drain and exit; kills it after `grace`.
    fn stop<'a>(
        &'a self,
        replica: &'a Replica,
        grace: std::time::Duration,
    ) -> BoxFuture<'a, Result<(), OrchestratorError>>;

    /// The last `tail` lines the replica wrote (stdout and stderr).
    fn logs<'a>(
        &'a self,
        replica: &'a Replica,
        tail: usize,
    ) -> BoxFuture<'a, std::io::Result<Vec<String>>>;

    /// A line for `status` on how resources are enforced.
    fn limits_note(&self) -> String;

    /// Kills the replicas this orchestrator runs for this control plane
    /// whose ids are not in `known` (their records were lost with the
    /// store); returns their ids. Called once, before the controller starts.
    fn reap<'a>(
        &'a self,
        known: &'a std::collections::HashSet<String>,
    ) -> BoxFuture<'a, Vec<String>> {
        let _ = known;
        Box::pin(async { Vec::new() })
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
