//! modelship's shared vocabulary: what a model is for ([`Task`]), the limits a
//! replica enforces ([`ServingLimits`]), precisions ([`QuantType`]) and the
//! deployment spec. Pure data with validation; no I/O, no async runtime,
//! nothing heavier than serde.

pub mod auth;
mod autoscale;
pub mod errors;
mod limits;
mod live;
mod optimize;
mod plan;
mod precision;
mod resources;
mod rollout;
pub mod spec;
mod state;
pub mod stats;
mod task;

pub use autoscale::Autoscale;
pub use limits::{LimitError, ServingLimits};
pub use live::{CosineFigures, LiveQuality, LiveSample, Mirror};
pub use optimize::{
    Gate, Optimize, OptimizeError, PrunePattern, PruneSpec, QuantChoice, StructuredPrune,
};
pub use plan::{Estimate, Pending, Placement, ReplicaPlan};
pub use precision::{ParseQuantTypeError, QuantType};
pub use resources::{Bytes, Gpu, Node, NodesError, NodesFile, Resources, Slo};
pub use rollout::{Canary, Fault, Quality, Rollout, Shadow, Span, Strategy};
pub use spec::{ModelDeployment, Target};
pub use state::{
    Deployment, Event, Phase, Progress, Replica, ReplicaState, Revision, Run, RunStatus, Stage,
    Tradeoff, TradeoffPoint,
};
pub use task::{ParseTaskError, Task};
