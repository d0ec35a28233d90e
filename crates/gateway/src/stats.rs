//! Per-revision request counts, errors and a latency histogram, kept so the
//! controller can compare a canary with the stable revision over an
//! interval (the difference of two snapshots).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::Serialize;

/// Upper bounds of the latency buckets, in ms (the last is unbounded).
const BOUNDS_MS: [f64; 16] = [
    1.0,
    2.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1e3,
    2e3,
    5e3,
    1e4,
    3e4,
    6e4,
    f64::INFINITY,
];

/// Each revision's live counters, created when its first replica is routed
/// and kept for the life of the gateway (a canary's figures must survive
/// routing changes).
#[derive(Default)]
pub(crate) struct Stats {
    by_revision: Mutex<HashMap<(String, u32), Arc<Counters>>>,
}

/// One revision's counters, updated without a lock on every request.
#[derive(Debug, Default)]
pub struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; 16],
}

impl Counters {
    pub(crate) fn record(&self, ms: f64, error: bool) {
        self.requests.fetch_add(1, Ordering::Release);
        if error {
            self.errors.fetch_add(1, Ordering::Release);
        }
        let bucket = BOUNDS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(BOUNDS_MS.len() - 1);
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
    }
}

/// What one revision of a deployment answered.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct RevisionStats {
    pub deployment: String,
    pub revision: u32,
    pub requests: u64,
    /// 5xx answers and upstream failures.
    pub errors: u64,
    /// Counts per latency bucket (time to response headers).
    pub buckets: [u64; 16],
}

impl RevisionStats {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: Option<&RevisionStats>) -> RevisionStats {
        let Some(e) = earlier else {
            return self.clone();
        };
        let mut d = self.clone();
        d.requests -= e.requests.min(d.requests);
        d.errors -= e.errors.min(d.errors);
        // An error whose request the earlier snapshot counted lands here
        // alone: a window never has more errors than requests.
        d.errors = d.errors.min(d.requests);
        for (b, eb) in d.buckets.iter_mut().zip(e.buckets) {
            *b -= eb.min(*b);
        }
        d
    }

    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }

    /// Adds `other`'s counts to these (one figure for several revisions).
    pub fn merge(&mut self, other: &RevisionStats) {
        self.requests += other.requests;
        self.errors += other.errors;
        for (b, o) in self.buckets.iter_mut().zip(other.buckets) {
            *b += o;
        }
    }

    /// The `q` quantile of latency in ms, interpolated linearly inside its
    /// bucket as Prometheus' `histogram_quantile` does (so within the
    /// bucket's bounds, not exact); the open last bucket gives its lower
    /// bound. `None` without requests.
    pub fn quantile_ms(&self, q: f64) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut below = 0u64;
        for (i, (&count, &upper)) in self.buckets.iter().zip(&BOUNDS_MS).enumerate() {
            let lower = if i == 0 { 0.0 } else { BOUNDS_MS[i - 1] };
            if count > 0 && (below + count) as f64 >= rank {
                if upper.is_infinite() {
                    return Some(lower);
                }
                let within = (rank - below as f64) / count as f64;
                return Some(lower + (upper - lower) * within);
            }
            below += count;
        }
        Some(BOUNDS_MS[BOUNDS_MS.len() - 2])
    }

    /// The 99th percentile latency's bucket bound in ms (an upper estimate),
    /// `None` without requests.
    pub fn p99_ms(&self) -> Option<f64> {
        let total: u64 = self.buckets.iter().sum();
        if total == 0 {
            return None;
        }
        let rank = (total as f64 * 0.99).ceil() as u64;
        let mut seen = 0;
        for (count, bound) in self.buckets.iter().zip(BOUNDS_MS) {
            seen += count;
            if seen >= rank {
                return Some(bound);
            }
        }
        Some(f64::INFINITY)
    }
}

/// Every revision's counters at one moment.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StatsSnapshot {
    pub revisions: Vec<RevisionStats>,
}

impl StatsSnapshot {
    pub fn get(&self, deployment: &str, revision: u32) -> Option<&RevisionStats> {
        self.revisions
            .iter()
            .find(|r| r.deployment == deployment && r.revision == revision)
    }
}

impl Stats {
    pub(crate) fn counters(&self, deployment: &str, revision: u32) -> Arc<Counters> {
        let mut map = self.by_revision.lock().unwrap_or_else(|p| p.into_inner());
        Arc::clone(map.entry((deployment.to_owned(), revision)).or_default())
    }

    pub(crate) fn snapshot(&self) -> StatsSnapshot {
        let map = self.by_revision.lock().unwrap_or_else(|p| p.into_inner());
        let mut revisions: Vec<RevisionStats> = map
            .iter()
            .map(|((deployment, revision), c)| RevisionStats {
                deployment: deployment.clone(),
                revision: *revision,
                // Errors before requests: a request is counted before its
                // error, so a snapshot never has more errors than requests.
                errors: c.errors.load(Ordering::Acquire),
                requests: c.requests.load(Ordering::Acquire),
                buckets: std::array::from_fn(|i| c.buckets[i].load(Ordering::Relaxed)),
            })
            .collect();
        revisions.sort_by(|a, b| (&a.deployment, a.revision).cmp(&(&b.deployment, b.revision)));
        StatsSnapshot { revisions }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(latencies_ms: &[f64]) -> RevisionStats {
        let c = Counters::default();
        for &ms in latencies_ms {
            c.record(ms, false);
        }
        RevisionStats {
            deployment: "m".into(),
            revision: 1,
            requests: c.requests.load(Ordering::Relaxed),
            errors: 0,
            buckets: std::array::from_fn(|i| c.buckets[i].load(Ordering::Relaxed)),
        }
    }

    #[test]
    fn quantiles_are_interpolated_inside_their_bucket() {
        // 100 requests in (5, 10] ms: the median is halfway through it.
        let s = stats(&[7.0; 100]);
        assert_eq!(s.quantile_ms(0.5), Some(7.5));
        assert_eq!(s.quantile_ms(1.0), Some(10.0));
        // 90 fast, 10 slow: p50 among the fast, p99 among the slow.
        let mut mixed = vec![1.5; 90];
        mixed.extend([150.0; 10]);
        let s = stats(&mixed);
        let p50 = s.quantile_ms(0.5).unwrap();
        let p99 = s.quantile_ms(0.99).unwrap();
        assert!((1.0..=2.0).contains(&p50), "{p50}");
        assert!((100.0..=200.0).contains(&p99), "{p99}");
        // Past the last bound: its lower bound, never infinity.
        assert_eq!(stats(&[1e6]).quantile_ms(0.5), Some(6e4));
        assert_eq!(stats(&[]).quantile_ms(0.5), None);
    }

    #[test]
    fn merged_counts_add_up() {
        let mut a = stats(&[1.0, 3.0]);
        a.merge(&stats(&[3.0]));
        assert_eq!(a.requests, 3);
        assert_eq!(a.buckets[2], 2);
    }
}
