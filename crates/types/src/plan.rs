//! What the plan stage decides for a revision, recorded on it: one
//! replica's estimate term by term, what it asks a node for, its limits and
//! threads, and where the replicas went. Every target (local processes,
//! Docker, Swarm, Kubernetes), the image and `render kubernetes` read this
//! record; nothing plans a revision again later.

use serde::{Deserialize, Serialize};

/// One replica's needs, term by term. The peak is the weights and the
/// runtime plus the larger of loading (before serving) and the KV cache with
/// activations (while serving).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Estimate {
    pub weights_bytes: u64,
    pub loading_bytes: u64,
    /// Keys and values of every sequence at full context: 2 × kv_heads ×
    /// head_dim × 4 bytes (the cache holds f32) × concurrent sequences ×
    /// the positions the layers hold: the context in each full-attention
    /// layer, at most the window in each sliding-window one. Zero for
    /// encoders.
    pub kv_cache_bytes: u64,
    /// The largest forward pass's live tensors.
    pub activations_bytes: u64,
    /// The process besides model and workload, with a large vocabulary's
    /// tokenizer.
    pub runtime_bytes: u64,
    pub total_bytes: u64,
    /// Compute threads (one per CPU asked for, at least one).
    pub cpu_threads: u32,
}

/// A replica placed on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    pub replica: String,
    pub node: String,
}

/// A replica that does not fit now, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub replica: String,
    pub reason: String,
}

/// What one replica of a revision gets, as the plan stage decided it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplicaPlan {
    /// CPUs reserved on a node. 0 on this machine (`local`, `docker`)
    /// without `resources.cpu`: replicas share its cores.
    pub cpu_request: f64,
    /// The CPU quota; none: no quota.
    pub cpu_limit: Option<f64>,
    /// Compute threads the replica runs.
    pub threads: u32,
    /// Memory reserved on a node: the spec's, else the estimate.
    pub memory_request: u64,
    /// Memory the replica is killed above.
    pub memory_limit: u64,
    pub gpus: u32,
    /// The precision its weights are in.
    pub precision: String,
    pub estimate: Estimate,
    /// Where the planned replicas went when the plan was made (the
    /// controller admits them as capacity allows).
    pub placements: Vec<Placement>,
    pub pending: Vec<Pending>,
}
