//! Pure planning: what one replica needs ([`estimate`]), where replicas go
//! ([`place`]), how many ([`size_for_slo`]) and which waiting deployments
//! start when capacity frees ([`admit`]), and what to start and stop to get
//! there ([`reconcile`], or [`scale_services`] for engines with a service per revision), where a rollout goes next ([`step`], or by an operator's hand: [`intervene`]) and whether a canary may go on ([`judge_canary`]), and
//! how many replicas the load asks for ([`autoscale`]). Functions of their inputs only: no I/O, no clock, no async;
//! callers gather the model's shape and the nodes and act on the result.

mod admission;
mod autoscale;
mod canary;
mod capacity;
mod estimate;
mod intervene;
mod placement;
mod reconcile;
mod rollout;
mod services;

pub use admission::{Admission, admit};
pub use autoscale::{Idle, Sample, ScaleDecision, ScalerState, autoscale, make_room};
pub use canary::{Analysis, Verdict, Window, judge_canary};
pub use capacity::{CapacityPoint, CapacityProfile, Sizing, size_for_slo};
pub use estimate::{
    ModelShape, RUNTIME_BYTES, SlidingWindow, TensorFootprint, WeightsFile, estimate,
    resident_weights,
};
pub use intervene::{Intervention, Refused, intervene};
pub use modelship_types::{Estimate, Mirror, Pending, Placement};
pub use placement::{Plan, ReplicaRequest, place, place_onto};
pub use reconcile::{
    Action, BACKOFF_BASE_MS, BACKOFF_MAX_MS, Desired, reconcile, restart_backoff_ms,
};
pub use rollout::{
    CRASH_LOOP_RESTARTS, ClusterRollout, READY_TIMEOUT_MS, RolloutObserved, SAMPLES_TIMEOUT_MS,
    Step, desired, first_phase, mirror, step,
};
pub use services::{ServiceObserved, scale_services};
