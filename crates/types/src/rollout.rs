//! How a new revision replaces the serving one (`spec.rollout`).

use serde::{Deserialize, Serialize};

/// `spec.rollout`. Only the strategies that are built parse: a spec asking
/// for another is an error naming the field, never silently rolled out some
/// other way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    #[serde(default)]
    pub strategy: Strategy,
    /// Replicas of the new revision started above the desired count while
    /// old ones still serve.
    #[serde(default = "one")]
    pub max_surge: u32,
    /// Replicas below the desired count allowed to be not ready during the
    /// rollout. With 0 (the default) capacity never drops.
    #[serde(default)]
    pub max_unavailable: u32,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            strategy: Strategy::Rolling,
            max_surge: 1,
            max_unavailable: 0,
        }
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Replace replicas a few at a time (Kubernetes' RollingUpdate).
    #[default]
    Rolling,
}

impl Rollout {
    /// The pair that could never make progress: no surge and no
    /// unavailability. Returns the field and why.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        (self.max_surge == 0 && self.max_unavailable == 0).then(|| {
            (
                "max_surge",
                "max_surge and max_unavailable cannot both be 0: the rollout could never start a new replica".to_owned(),
            )
        })
    }
}
