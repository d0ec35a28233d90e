//! `spec.autoscale`: concurrency-based scaling with a stable and a panic
//! window, Knative's KPA shape, and scale to zero (`min: 0`) after an idle
//! window.

use serde::{Deserialize, Serialize};

use crate::Span;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Autoscale {
    /// Fewest replicas; 0 scales to zero after `idle_window` without a
    /// request, and the gateway holds the next request until one is ready.
    #[serde(default = "one")]
    pub min: u32,
    pub max: u32,
    /// In-flight requests one replica should carry on average.
    pub target_concurrency: f64,
    /// The average that decides in normal times.
    #[serde(default = "sixty_seconds")]
    pub stable_window: Span,
    /// The shorter average that reacts to bursts.
    #[serde(default = "six_seconds")]
    pub panic_window: Span,
    /// Panic when the panic window asks for this many times the replicas
    /// running.
    #[serde(default = "two")]
    pub panic_threshold: f64,
    /// With `min: 0`: how long without a request before the deployment
    /// scales to zero.
    #[serde(default = "sixty_seconds")]
    pub idle_window: Span,
}

fn one() -> u32 {
    1
}

fn two() -> f64 {
    2.0
}

fn sixty_seconds() -> Span {
    Span(std::time::Duration::from_secs(60))
}

fn six_seconds() -> Span {
    Span(std::time::Duration::from_secs(6))
}

impl Autoscale {
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.max == 0 || self.max > 10_000 {
            return Some(("max", format!("{} is not from 1 to 10000", self.max)));
        }
        if self.min > self.max {
            return Some(("min", format!("{} is more than max {}", self.min, self.max)));
        }
        if !(self.target_concurrency > 0.0 && self.target_concurrency.is_finite()) {
            return Some(("target_concurrency", "must be a positive number".into()));
        }
        if self.panic_window.0.is_zero() || self.panic_window >= self.stable_window {
            return Some((
                "panic_window",
                format!(
                    "{} must be above 0 and shorter than stable_window {}",
                    self.panic_window, self.stable_window
                ),
            ));
        }
        if !(self.panic_threshold > 1.0 && self.panic_threshold.is_finite()) {
            return Some(("panic_threshold", "must be a number above 1".into()));
        }
        if self.idle_window.0.is_zero() {
            return Some(("idle_window", "must be longer than 0s".into()));
        }
        None
    }
}
