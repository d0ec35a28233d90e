//! Runs replicas. [`Orchestrator`] is the contract the controller drives —
//! start, observe, stop — and [`Local`] runs each replica as a
//! `modelship serve` child process on this machine, limited by cgroups where
//! the machine allows. Knows nothing of rollouts or policy: the planner
//! decides, an orchestrator carries out.

mod cgroup;
mod local;
mod probe;

use std::path::PathBuf;

use futures::future::BoxFuture;
use modelship_types::{Replica, ServingLimits};

pub use cgroup::Cgroups;
pub use local::Local;
pub use probe::ready;

/// Everything needed to start one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaSpec {
    pub id: String,
    pub deployment: String,
    pub revision: u32,
    /// The model file or directory to serve.
    pub artifact: PathBuf,
    pub limits: ServingLimits,
    /// CPUs: the replica's compute threads, and its CPU quota.
    pub cpu: Option<f64>,
    /// Memory limit in bytes.
    pub memory: Option<u64>,
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
/// (here); Docker, Swarm and Kubernetes join with their issue.
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

    /// Where the replica's output goes, when it is a file.
    fn log_path(&self, replica_id: &str) -> Option<PathBuf>;

    /// A line for `status` on how resources are enforced.
    fn limits_note(&self) -> String;
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
