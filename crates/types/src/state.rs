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

impl Run {
    /// This run, ended as failed at `now_ms` because the control plane that
    /// ran it stopped (killed, crashed) before it finished: a run left
    /// `running` would read as still in progress forever. Its open stage
    /// fails too, named in the error. `None` when it had finished.
    pub fn interrupted(&self, now_ms: u64) -> Option<Run> {
        if self.status != RunStatus::Running {
            return None;
        }
        let mut run = self.clone();
        let stage = run
            .stages
            .iter_mut()
            .rev()
            .find(|s| s.status == RunStatus::Running);
        let during = match stage {
            Some(stage) => {
                stage.status = RunStatus::Failed;
                stage.duration_ms = Some(now_ms.saturating_sub(stage.started_at));
                stage.detail = "interrupted".to_owned();
                format!(" during its {} stage", stage.name)
            }
            None => String::new(),
        };
        run.status = RunStatus::Failed;
        run.error = Some(format!(
            "interrupted: the control plane stopped{during} before the run finished"
        ));
        run.finished_at = Some(now_ms);
        Some(run)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(name: &str, status: RunStatus) -> Stage {
        Stage {
            name: name.into(),
            status,
            inputs_digest: String::new(),
            outputs_digest: None,
            started_at: 1_000,
            duration_ms: None,
            detail: String::new(),
        }
    }

    #[test]
    fn an_unfinished_run_is_failed_naming_its_open_stage() {
        let run = Run {
            id: 3,
            deployment: "d".into(),
            revision: Some(2),
            status: RunStatus::Running,
            error: None,
            stages: vec![
                stage("validate", RunStatus::Succeeded),
                stage("rollout", RunStatus::Running),
            ],
            started_at: 900,
            finished_at: None,
        };
        let ended = run.interrupted(5_000).unwrap();
        assert_eq!(ended.status, RunStatus::Failed);
        assert_eq!(ended.finished_at, Some(5_000));
        assert!(ended.error.as_deref().unwrap().contains("rollout stage"));
        assert_eq!(ended.stages[0].status, RunStatus::Succeeded);
        assert_eq!(ended.stages[1].status, RunStatus::Failed);
        assert_eq!(ended.stages[1].duration_ms, Some(4_000));
        // A finished run is left alone.
        assert_eq!(ended.interrupted(9_000), None);
    }
}
