//! What the control plane records: deployments, their revisions, the
//! replicas that serve them, and pipeline runs. Plain data shared by the
//! store (which persists it), the planner (which decides on it) and the API
//! (which shows it). Times are milliseconds since the Unix epoch.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ModelDeployment;

/// A deployment: the latest spec applied under a name, the revision that
/// should serve, and how many replicas.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub name: String,
    /// The revision rolled out (or being rolled out).
    pub revision: u32,
    /// Desired replicas (the spec's, or what `scale` set since).
    pub replicas: u32,
    /// During a canary or blue-green rollout: the revision that served
    /// before, kept running beside `revision`.
    #[serde(default)]
    pub stable: Option<u32>,
    /// While `stable` runs: percent of traffic to `revision` (the rest to
    /// `stable`).
    #[serde(default)]
    pub traffic: Option<u32>,
    /// While `stable` runs: replicas of `revision` to run (a canary's share).
    #[serde(default)]
    pub new_replicas: Option<u32>,
    pub created_at: u64,
    pub updated_at: u64,
}

/// One immutable version of a deployment: the spec and the model artifact
/// the pipeline produced for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Revision {
    pub deployment: String,
    pub number: u32,
    pub spec: ModelDeployment,
    /// The model file or directory replicas load (the optimized artifact).
    pub artifact: PathBuf,
    /// sha256 of the artifact's bytes.
    pub artifact_digest: String,
    /// The OCI image replicas run from, for targets other than `local`.
    #[serde(default)]
    pub image: Option<String>,
    /// The plan's estimate of one replica's memory, in bytes.
    #[serde(default)]
    pub memory_estimate: Option<u64>,
    /// Why it exists: `deploy` (run N) or `rollback to N`.
    pub cause: String,
    pub created_at: u64,
}

/// One running (or restarting) copy of a revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Replica {
    /// `<deployment>-<revision>-<n>`.
    pub id: String,
    pub deployment: String,
    pub revision: u32,
    /// `host:port` it serves on.
    pub endpoint: String,
    /// The process, for local replicas.
    pub pid: Option<u32>,
    pub state: ReplicaState,
    /// Times it was started again after exiting.
    pub restarts: u32,
    /// When it last exited unexpectedly.
    pub exited_at: Option<u64>,
    pub started_at: u64,
    /// What runs it.
    #[serde(default)]
    pub target: crate::Target,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Started, not ready yet: gets no traffic.
    Starting,
    /// Answers its readiness check: gets traffic.
    Ready,
    /// Running but failing its readiness check: gets no traffic.
    Unready,
    /// Its process is gone without being asked to stop; restarted after a
    /// backoff.
    Exited,
    /// Asked to stop: drains, gets no new traffic.
    Terminating,
}

impl ReplicaState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplicaState::Starting => "starting",
            ReplicaState::Ready => "ready",
            ReplicaState::Unready => "unready",
            ReplicaState::Exited => "exited",
            ReplicaState::Terminating => "terminating",
        }
    }
}

/// One pass of the deploy pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: u64,
    pub deployment: String,
    /// The revision it created, once it got that far.
    pub revision: Option<u32>,
    pub status: RunStatus,
    /// Why it failed.
    pub error: Option<String>,
    pub stages: Vec<Stage>,
    pub started_at: u64,
    pub finished_at: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    Running,
    Succeeded,
    Failed,
}

/// One stage of a run: what went in, what came out, how long it took.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// validate | optimize | plan | rollout
    pub name: String,
    pub status: RunStatus,
    /// sha256 of the stage's inputs (spec, model bytes).
    pub inputs_digest: String,
    /// sha256 of what it produced.
    pub outputs_digest: Option<String>,
    pub started_at: u64,
    pub duration_ms: Option<u64>,
    /// A line or a table for people: the chosen precision, the estimate, why
    /// it failed.
    pub detail: String,
}

/// Something that happened to a deployment, for `status` and `history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub deployment: String,
    pub at: u64,
    pub message: String,
}
