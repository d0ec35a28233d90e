//! The routing table and the choice of a replica: a revision by weight,
//! then the less loaded of two random replicas (power of two choices over
//! outstanding requests), skipping replicas already tried and, while any
//! other is available, those ejected for failing. Pure apart from the
//! counters it reads: randomness and time come in as arguments.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::Route;
use crate::stats::{Counters, Stats};

/// A revision's share of its deployment's traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Share {
    pub weight: u32,
    /// Requests answered with an error at the gateway, on purpose.
    pub abort: Option<Abort>,
}

impl Share {
    pub fn weight(weight: u32) -> Share {
        Share {
            weight,
            abort: None,
        }
    }
}

/// Fault injection: `percent` of requests get `status` without reaching a
/// replica.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Abort {
    pub percent: f64,
    pub status: u16,
}

/// A ready replica and its live counters.
#[derive(Debug)]
pub struct Endpoint {
    pub deployment: String,
    pub revision: u32,
    pub replica: String,
    pub addr: String,
    /// Requests sent and not yet answered in full.
    pub outstanding: AtomicUsize,
    pub consecutive_failures: AtomicU32,
    /// Gets no traffic before this time (ms on the gateway's clock).
    pub ejected_until: AtomicU64,
    /// Its revision's counters (the canary analysis reads them).
    pub(crate) stats: Arc<Counters>,
    /// Prometheus handles resolved once, not per request.
    pub(crate) answered_ok: metrics::Counter,
    pub(crate) latency: metrics::Histogram,
}

impl Endpoint {
    fn new(r: &Route, stats: &Stats) -> Endpoint {
        let revision = r.revision.to_string();
        Endpoint {
            stats: stats.counters(&r.deployment, r.revision),
            answered_ok: metrics::counter!("modelship_gateway_requests_total",
                "deployment" => r.deployment.clone(), "revision" => revision.clone(),
                "replica" => r.replica.clone(), "code" => "200"),
            latency: metrics::histogram!("modelship_gateway_upstream_seconds",
                "deployment" => r.deployment.clone(), "revision" => revision),
            deployment: r.deployment.clone(),
            revision: r.revision,
            replica: r.replica.clone(),
            addr: r.endpoint.clone(),
            outstanding: AtomicUsize::new(0),
            consecutive_failures: AtomicU32::new(0),
            ejected_until: AtomicU64::new(0),
        }
    }

    pub fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
    }

    /// Counts a failure; ejects the replica for `eject_ms` after
    /// `eject_after` in a row.
    pub fn failed(&self, now_ms: u64, eject_after: u32, eject_ms: u64) {
        let n = self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= eject_after {
            self.ejected_until
                .store(now_ms + eject_ms, Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            tracing::warn!(replica = %self.replica, "ejected after {n} failures in a row");
        }
    }

    pub fn succeeded(&self) {
        self.consecutive_failures.store(0, Ordering::Relaxed);
    }
}

/// One revision of a deployment: its traffic weight and ready replicas.
#[derive(Debug)]
pub struct RevisionRoute {
    pub revision: u32,
    pub weight: u32,
    pub abort: Option<Abort>,
    pub endpoints: Vec<Arc<Endpoint>>,
}

/// Deployment name → its revisions.
#[derive(Debug, Default)]
pub struct Table {
    pub deployments: HashMap<String, Vec<RevisionRoute>>,
}

/// The outcome of choosing where a request goes.
#[derive(Debug)]
pub enum Pick {
    /// Send it to this replica, or answer with the revision's injected
    /// fault.
    Endpoint(Arc<Endpoint>, Option<Abort>),
    /// No deployment serves this model name.
    UnknownModel,
    /// The deployment exists but has no replica left to try.
    NoReplica,
}

impl Table {
    /// A table for `routes`, reusing `old`'s endpoints (and so their
    /// counters) for replicas that stay.
    pub(crate) fn build(
        old: &Table,
        routes: &[Route],
        shares: &HashMap<(String, u32), Share>,
        stats: &Stats,
    ) -> Table {
        let existing: HashMap<&str, &Arc<Endpoint>> = old
            .deployments
            .values()
            .flatten()
            .flat_map(|r| &r.endpoints)
            .map(|e| (e.replica.as_str(), e))
            .collect();
        let mut deployments: HashMap<String, Vec<RevisionRoute>> = HashMap::new();
        for route in routes {
            let endpoint = match existing.get(route.replica.as_str()) {
                Some(e) if e.addr == route.endpoint && e.revision == route.revision => {
                    Arc::clone(e)
                }
                _ => Arc::new(Endpoint::new(route, stats)),
            };
            let revisions = deployments.entry(route.deployment.clone()).or_default();
            match revisions.iter_mut().find(|r| r.revision == route.revision) {
                Some(r) => r.endpoints.push(endpoint),
                None => {
                    let share = shares
                        .get(&(route.deployment.clone(), route.revision))
                        .copied()
                        .unwrap_or(Share::weight(1));
                    revisions.push(RevisionRoute {
                        revision: route.revision,
                        weight: share.weight,
                        abort: share.abort,
                        endpoints: vec![endpoint],
                    })
                }
            }
        }
        // Revisions with shares but no ready replica still exist, with their
        // weight: a deployment's requests get 503, not 404, and a revision
        // of weight 0 (a shadow) is not the only one with replicas to pick
        // while its stable revision, of weight 100, has none.
        for ((deployment, revision), share) in shares {
            let revisions = deployments.entry(deployment.clone()).or_default();
            if !revisions.iter().any(|r| r.revision == *revision) {
                revisions.push(RevisionRoute {
                    revision: *revision,
                    weight: share.weight,
                    abort: share.abort,
                    endpoints: Vec::new(),
                });
            }
        }
        for revisions in deployments.values_mut() {
            revisions.sort_by_key(|r| r.revision);
            for r in revisions.iter_mut() {
                r.endpoints.sort_by(|a, b| a.replica.cmp(&b.replica));
            }
        }
        Table { deployments }
    }

    /// Whether any revision of `deployment` has a ready replica.
    pub fn has_replica(&self, deployment: &str) -> bool {
        self.deployments
            .get(deployment)
            .is_some_and(|revisions| revisions.iter().any(|r| !r.endpoints.is_empty()))
    }

    /// Chooses a replica of `deployment` not in `tried`. `random` yields
    /// uniform u64s.
    pub fn pick(
        &self,
        deployment: &str,
        tried: &[String],
        now_ms: u64,
        random: &mut impl FnMut() -> u64,
    ) -> Pick {
        let Some(revisions) = self.deployments.get(deployment) else {
            return Pick::UnknownModel;
        };
        let untried = |e: &&Arc<Endpoint>| !tried.contains(&e.replica);
        // Revisions that can take the request, by preference: some replica
        // not ejected, else any untried one (all ejected: better a suspect
        // replica than a certain error).
        let healthy: Vec<&RevisionRoute> = revisions
            .iter()
            .filter(|r| {
                r.weight > 0
                    && r.endpoints
                        .iter()
                        .filter(untried)
                        .any(|e| !e.ejected(now_ms))
            })
            .collect();
        let (candidates, skip_ejected) = if healthy.is_empty() {
            // A revision of weight 0 (a shadow, a blue-green revision before
            // its switch) answers no client while another has weight.
            let weighted = revisions.iter().any(|r| r.weight > 0);
            let any: Vec<&RevisionRoute> = revisions
                .iter()
                .filter(|r| r.weight > 0 || !weighted)
                .filter(|r| r.endpoints.iter().any(|e| untried(&e)))
                .collect();
            (any, false)
        } else {
            (healthy, true)
        };
        let Some(revision) = by_weight(&candidates, random) else {
            return Pick::NoReplica;
        };
        let pool: Vec<&Arc<Endpoint>> = revision
            .endpoints
            .iter()
            .filter(untried)
            .filter(|e| !skip_ejected || !e.ejected(now_ms))
            .collect();
        match pool.len() {
            0 => Pick::NoReplica,
            1 => Pick::Endpoint(Arc::clone(pool[0]), revision.abort),
            n => {
                let a = (random() % n as u64) as usize;
                let b = (a + 1 + (random() % (n as u64 - 1)) as usize) % n;
                let (ea, eb) = (pool[a], pool[b]);
                let load = |e: &Endpoint| e.outstanding.load(Ordering::Relaxed);
                let chosen = if load(eb) < load(ea) { eb } else { ea };
                Pick::Endpoint(Arc::clone(chosen), revision.abort)
            }
        }
    }
}

/// A revision drawn with probability proportional to its weight; revisions
/// all of weight 0 are drawn uniformly.
fn by_weight<'a>(
    revisions: &[&'a RevisionRoute],
    random: &mut impl FnMut() -> u64,
) -> Option<&'a RevisionRoute> {
    let total: u64 = revisions.iter().map(|r| r.weight as u64).sum();
    if total == 0 {
        return (!revisions.is_empty())
            .then(|| revisions[(random() % revisions.len() as u64) as usize]);
    }
    let mut x = random() % total;
    for r in revisions {
        if x < r.weight as u64 {
            return Some(r);
        }
        x -= r.weight as u64;
    }
    None
}

#[cfg(test)]
mod tests;
