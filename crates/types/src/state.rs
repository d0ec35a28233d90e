//! What the control plane records: deployments, their revisions, the
//! replicas that serve them, and pipeline runs. Plain data shared by the
//! store (which persists it), the planner (which decides on it) and the API
//! (which shows it). Times are milliseconds since the Unix epoch.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::ModelDeployment;

/// A deployment: the latest spec applied under a name, the revision that
/// should serve, how many replicas, and where its rollout stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredDeployment")]
pub struct Deployment {
    pub name: String,
    /// The revision rolled out (or being rolled out).
    pub revision: u32,
    /// Desired replicas (the spec's, or what `scale` or the autoscaler set
    /// since).
    pub replicas: u32,
    /// Where the rollout of `revision` stands.
    #[serde(default)]
    pub phase: Phase,
    pub created_at: u64,
    pub updated_at: u64,
}

/// A deployment as stored, by this version or the one before, which kept a
/// canary or blue-green rollout as `stable` (the revision serving beside
/// `revision`) and no phase: such a rollout, cut short by the upgrade, goes
/// back to its stable revision (its run is ended as interrupted).
#[derive(Deserialize)]
struct StoredDeployment {
    name: String,
    revision: u32,
    replicas: u32,
    #[serde(default)]
    phase: Phase,
    #[serde(default)]
    stable: Option<u32>,
    created_at: u64,
    updated_at: u64,
}

impl From<StoredDeployment> for Deployment {
    fn from(d: StoredDeployment) -> Deployment {
        let revision = match (&d.phase, d.stable) {
            (Phase::Steady, Some(stable)) => stable,
            _ => d.revision,
        };
        Deployment {
            name: d.name,
            revision,
            replicas: d.replicas,
            phase: d.phase,
            created_at: d.created_at,
            updated_at: d.updated_at,
        }
    }
}

/// Where a deployment's rollout stands, recorded so that a control plane
/// that restarts goes on from it. The controller moves it on, one tick at a
/// time (`modelship_planner::step`); times are ms since the Unix epoch.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// `revision` serves; nothing is being watched.
    #[default]
    Steady,
    /// Replicas of other revisions are replaced by `revision`'s within the
    /// surge budget; done when only `revision` runs, all of it ready.
    Rolling { progress: Progress },
    /// `stable` keeps serving beside `revision`, which gets the share of
    /// traffic of canary step `step`. Once its replicas are ready
    /// (`analysis_from`), the step runs its interval and is judged.
    Canary {
        progress: Progress,
        stable: u32,
        step: u32,
        analysis_from: Option<u64>,
    },
    /// `stable` takes all traffic while a share of its requests is mirrored
    /// to `revision` (answers compared, never returned). Once its replicas
    /// are ready (`analysis_from`), the shadow runs its duration and is
    /// judged; then the strategy's rollout begins.
    Shadow {
        progress: Progress,
        stable: u32,
        analysis_from: Option<u64>,
    },
    /// `revision` starts in full beside `stable`, which takes all traffic
    /// until then; at `switched_at` all of it moved to `revision`, and
    /// `stable` stays for the scale-down delay (an instant rollback).
    BlueGreen {
        progress: Progress,
        stable: u32,
        switched_at: Option<u64>,
    },
}

/// A rollout in progress: what started it, what it falls back to, and what
/// it has found so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The pipeline run whose rollout stage this is, closed when it ends.
    pub run: Option<u64>,
    /// The revision that served before: what a failure goes back to. None:
    /// nothing served before, and a failure removes the deployment. Equal
    /// to the revision itself when a deploy changed nothing but the count.
    pub previous: Option<u32>,
    /// When the rollout began.
    pub started_at: u64,
    /// When this phase (or canary step) began: timeouts count from here.
    pub since: u64,
    /// What each finished step found, for the run's record.
    #[serde(default)]
    pub record: Vec<String>,
    /// The new revision's ready replicas when `since` was last moved: a
    /// rollout that makes progress (one replica at a time) is not timed out.
    #[serde(default)]
    pub ready: u32,
}

impl Phase {
    pub fn progress(&self) -> Option<&Progress> {
        match self {
            Phase::Steady => None,
            Phase::Rolling { progress }
            | Phase::Shadow { progress, .. }
            | Phase::Canary { progress, .. }
            | Phase::BlueGreen { progress, .. } => Some(progress),
        }
    }

    /// The revision kept running beside the new one (shadow, canary,
    /// blue-green).
    pub fn stable(&self) -> Option<u32> {
        match self {
            Phase::Shadow { stable, .. }
            | Phase::Canary { stable, .. }
            | Phase::BlueGreen { stable, .. } => Some(*stable),
            Phase::Steady | Phase::Rolling { .. } => None,
        }
    }

    /// The run this rollout belongs to.
    pub fn run(&self) -> Option<u64> {
        self.progress().and_then(|p| p.run)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Phase::Steady => "steady",
            Phase::Rolling { .. } => "rolling",
            Phase::Shadow { .. } => "shadow",
            Phase::Canary { .. } => "canary",
            Phase::BlueGreen { .. } => "blue-green",
        }
    }
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
    /// What the plan stage decided for each replica; none for revisions
    /// recorded before plans were.
    #[serde(default)]
    pub plan: Option<crate::ReplicaPlan>,
    /// Revisions recorded before plans were: the plan's memory estimate of
    /// one replica, which their limits came from. Read, never written.
    #[serde(default, rename = "memory_estimate", skip_serializing)]
    pub legacy_memory_estimate: Option<u64>,
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
    /// While `pending`: why it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// What it reserves on its node (CPUs, bytes), from its revision's plan
    /// when it was wanted: counted until it is gone, even once its
    /// deployment and revisions were deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserved: Option<(f64, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaState {
    /// Wanted, but waits for a node with room (its `reason` says what is
    /// short); no process yet. Admitted in order as capacity frees.
    Pending,
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
            ReplicaState::Pending => "pending",
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
    /// The spec it deploys, so a run the control plane's stop interrupted
    /// can be tried again.
    #[serde(default)]
    pub spec: Option<ModelDeployment>,
    /// The run this one tries again, when the first was interrupted.
    #[serde(default)]
    pub retry_of: Option<u64>,
    /// Times this spec's run was tried (1 for the first).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// The run that tries this one again, when it was interrupted.
    #[serde(default)]
    pub retried_as: Option<u64>,
}

fn first_attempt() -> u32 {
    1
}

impl Run {
    /// The stage still running, if any.
    fn open_stage(&mut self) -> Option<&mut Stage> {
        self.stages
            .iter_mut()
            .rev()
            .find(|s| s.status == RunStatus::Running)
    }

    /// Closes the open stage at `now_ms` as succeeded.
    pub fn stage_succeeded(&mut self, now_ms: u64, outputs_digest: Option<String>, detail: String) {
        if let Some(stage) = self.open_stage() {
            stage.status = RunStatus::Succeeded;
            stage.duration_ms = Some(now_ms.saturating_sub(stage.started_at));
            stage.outputs_digest = outputs_digest;
            stage.detail = detail;
        }
    }

    /// Ends the run at `now_ms` as failed with `error`; its open stage (if
    /// any) fails with it, and the error names that stage.
    pub fn fail(&mut self, now_ms: u64, error: &str) {
        let name = match self.open_stage() {
            Some(stage) => {
                stage.status = RunStatus::Failed;
                stage.duration_ms = Some(now_ms.saturating_sub(stage.started_at));
                stage.detail = error.to_owned();
                format!("{} failed: ", stage.name)
            }
            None => String::new(),
        };
        self.status = RunStatus::Failed;
        self.error = Some(format!("{name}{error}"));
        self.finished_at = Some(now_ms);
    }

    /// Ends the run at `now_ms` as succeeded.
    pub fn succeed(&mut self, now_ms: u64) {
        self.status = RunStatus::Succeeded;
        self.finished_at = Some(now_ms);
    }

    /// The stage it is in (or stopped in), for messages.
    pub fn current_stage(&self) -> Option<&str> {
        self.stages
            .iter()
            .rev()
            .find(|s| s.status != RunStatus::Succeeded)
            .or(self.stages.last())
            .map(|s| s.name.as_str())
    }

    /// This run, ended as failed at `now_ms` because the control plane that
    /// ran it stopped (killed, crashed) before it finished: a run left
    /// `running` would read as still in progress forever. Its open stage
    /// fails too, named in the error. `None` when it had finished.
    pub fn interrupted(&self, now_ms: u64) -> Option<Run> {
        if self.status != RunStatus::Running {
            return None;
        }
        let mut run = self.clone();
        let during = match run.open_stage() {
            Some(stage) => format!(" during its {} stage", stage.name),
            None => String::new(),
        };
        run.fail(now_ms, "interrupted");
        // The stage says what happened to it; the run says where.
        run.error = Some(format!(
            "interrupted: the control plane stopped{during} before the run finished"
        ));
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
    /// The optimize stage's candidates, for a size-against-quality chart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tradeoff: Option<Tradeoff>,
}

/// What the optimize stage weighed: each candidate precision's size and the
/// figure its gate judged, with the gate's bound on that figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tradeoff {
    /// The figure on the quality axis (`cosine mean`, `Δppl`, `kld`, `top-1`,
    /// `spearman`): the one the gate bounds, else the task's main one.
    pub metric: String,
    /// Whether a larger figure is better (cosine) or worse (Δppl, KLD).
    pub higher_is_better: bool,
    /// The gate's bound on `metric`, when it has one.
    pub threshold: Option<f64>,
    pub candidates: Vec<TradeoffPoint>,
}

/// One candidate precision of a [`Tradeoff`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TradeoffPoint {
    pub precision: String,
    pub file_bytes: u64,
    pub bits_per_weight: f64,
    /// None when the figure is not finite (a perplexity that overflowed):
    /// JSON has no NaN or infinity to record it with.
    pub value: Option<f64>,
    /// The gate's bounds it breaks; empty when it passes.
    pub violations: Vec<String>,
    pub chosen: bool,
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

    #[test]
    fn a_record_of_the_version_before_reads_back() {
        // Mid-canary, as the version before stored it: back to the stable
        // revision, steady.
        let old = r#"{"name":"m","revision":3,"replicas":2,"stable":2,"traffic":10,
                      "new_replicas":1,"created_at":1,"updated_at":2}"#;
        let d: Deployment = serde_json::from_str(old).unwrap();
        assert_eq!((d.revision, &d.phase), (2, &Phase::Steady));
        let plain = r#"{"name":"m","revision":3,"replicas":2,"created_at":1,"updated_at":2}"#;
        let d: Deployment = serde_json::from_str(plain).unwrap();
        assert_eq!(d.revision, 3);
        // And this version's records read back as written.
        let again: Deployment = serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(again, d);
    }

    fn stage(name: &str, status: RunStatus) -> Stage {
        Stage {
            name: name.into(),
            status,
            inputs_digest: String::new(),
            outputs_digest: None,
            started_at: 1_000,
            duration_ms: None,
            detail: String::new(),
            tradeoff: None,
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
            spec: None,
            retry_of: None,
            attempt: 1,
            retried_as: None,
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
