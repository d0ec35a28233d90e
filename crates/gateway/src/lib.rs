//! The gateway in front of the replicas: OpenAI routes routed by the
//! request's `model` field to that deployment, a revision chosen by traffic
//! weight, a replica by least outstanding requests among two random choices,
//! requests that failed before any response byte retried on another replica,
//! replicas that keep failing ejected for a while, responses (SSE streams
//! included) passed through as they come. The controller tells it what is
//! ready through [`Gateway::set_routes`]; it owns no discovery of its own.

mod balance;
mod error;
pub mod etcd;
#[doc(hidden)]
pub mod fuzz;
mod http1;
mod listen;
mod proxy;
mod shadow;
mod stats;
mod tls;
mod upstream;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

pub use balance::{Abort, Endpoint, Pick, RevisionRoute, Share, Table};
pub use listen::serve;
pub use stats::{RevisionStats, StatsSnapshot};
pub use tls::Tls;

/// One ready replica the gateway may send a deployment's traffic to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub deployment: String,
    pub revision: u32,
    pub replica: String,
    /// host:port
    pub endpoint: String,
}

/// How the gateway behaves; the defaults suit a replica on loopback.
/// `Debug` shows how many keys it has, never the keys.
#[derive(Clone)]
pub struct Config {
    /// Attempts per request (the first included) when upstreams fail before
    /// answering.
    pub attempts: usize,
    /// Longest wait for an upstream's response headers.
    pub upstream_timeout: Duration,
    /// Consecutive failures that eject a replica.
    pub eject_after: u32,
    /// How long an ejected replica gets no traffic.
    pub eject_for: Duration,
    /// Largest request body buffered (bodies are kept to retry them).
    pub max_body_bytes: usize,
    /// Longest a request's head may take from its first byte, and its body
    /// after the head (the client gets 408 and the connection closes).
    pub request_timeout: Duration,
    /// How long a kept-alive client connection may sit between requests
    /// before the gateway closes it.
    pub idle_timeout: Duration,
    /// Bearer keys accepted; empty: no authentication.
    pub api_keys: BTreeSet<String>,
    /// The key replicas require (the control plane gives its replicas one,
    /// so their ports do not bypass `api_keys`): sent upstream in place of
    /// the client's.
    pub upstream_key: Option<String>,
    /// Serve `/metrics` without a key even when `api_keys` guard the rest.
    pub public_metrics: bool,
    /// Longest a request waits for a deployment at zero to wake.
    pub hold_timeout: Duration,
    /// Most requests that wait for one deployment to wake; more get 503.
    pub max_held: usize,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |n: usize| format!("<{n} redacted>");
        f.debug_struct("Config")
            .field("attempts", &self.attempts)
            .field("upstream_timeout", &self.upstream_timeout)
            .field("eject_after", &self.eject_after)
            .field("eject_for", &self.eject_for)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("request_timeout", &self.request_timeout)
            .field("idle_timeout", &self.idle_timeout)
            .field("api_keys", &redacted(self.api_keys.len()))
            .field(
                "upstream_key",
                &redacted(usize::from(self.upstream_key.is_some())),
            )
            .field("public_metrics", &self.public_metrics)
            .field("hold_timeout", &self.hold_timeout)
            .field("max_held", &self.max_held)
            .finish()
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            attempts: 3,
            upstream_timeout: Duration::from_secs(300),
            eject_after: 3,
            eject_for: Duration::from_secs(10),
            max_body_bytes: 16 << 20,
            request_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(75),
            api_keys: BTreeSet::new(),
            upstream_key: None,
            public_metrics: false,
            hold_timeout: Duration::from_secs(120),
            max_held: 256,
        }
    }
}

/// The gateway's shared state: the routing table and its statistics.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

struct Inner {
    config: Config,
    table: RwLock<Arc<Table>>,
    stats: stats::Stats,
    metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>,
    /// Deployments that scale from zero: with no ready replica their
    /// requests wait for one (Knative's activator) instead of a 503.
    waking: RwLock<Arc<HashSet<String>>>,
    /// Requests waiting now, per deployment.
    held: Mutex<HashMap<String, usize>>,
    /// Told when a request starts waiting: the controller scales up on it.
    holding: Arc<tokio::sync::Notify>,
    /// Bumped by every [`Gateway::set_routes`]: waiting requests look again.
    routes_changed: tokio::sync::watch::Sender<u64>,
    /// Mirrored requests and the comparison of answers.
    shadow: shadow::Shadow,
}

impl Gateway {
    /// `metrics` renders the process's Prometheus registry for `/metrics`.
    pub fn new(config: Config, metrics: Option<Arc<dyn Fn() -> String + Send + Sync>>) -> Gateway {
        Gateway {
            inner: Arc::new(Inner {
                config,
                table: RwLock::new(Arc::new(Table::default())),
                stats: stats::Stats::default(),
                metrics,
                waking: RwLock::default(),
                held: Mutex::default(),
                holding: Arc::default(),
                routes_changed: tokio::sync::watch::Sender::new(0),
                shadow: shadow::Shadow::default(),
            }),
        }
    }

    /// Replaces what is routable: `routes` are the ready replicas, `shares`
    /// the traffic weight (and injected faults) of each deployment's
    /// revisions (a revision absent from `shares` gets weight 1). Counters
    /// of replicas that stay are kept.
    pub fn set_routes(&self, routes: &[Route], shares: &HashMap<(String, u32), Share>) {
        let old = self.table();
        let table = Table::build(&old, routes, shares, &self.inner.stats);
        *self.inner.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(table);
        self.inner.routes_changed.send_modify(|n| *n += 1);
    }

    /// The deployments that scale from zero: while one has no ready
    /// replica, its requests wait (up to [`Config::hold_timeout`]) rather
    /// than get a 503.
    pub fn set_waking(&self, deployments: HashSet<String>) {
        *self.inner.waking.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(deployments);
    }

    /// Requests waiting now for `deployment` to wake.
    pub fn held(&self, deployment: &str) -> usize {
        self.inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(deployment)
            .copied()
            .unwrap_or(0)
    }

    /// Whether any request waits for a deployment to wake.
    pub fn any_held(&self) -> bool {
        !self
            .inner
            .held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_empty()
    }

    /// Notified each time a request starts waiting for a deployment.
    pub fn holding(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.inner.holding)
    }

    pub fn table(&self) -> Arc<Table> {
        self.inner
            .table
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Requests in flight to `deployment`'s replicas now (the autoscaler's
    /// signal).
    pub fn in_flight(&self, deployment: &str) -> usize {
        self.table()
            .deployments
            .get(deployment)
            .map_or(0, |revisions| {
                revisions
                    .iter()
                    .flat_map(|r| &r.endpoints)
                    .map(|e| e.outstanding.load(std::sync::atomic::Ordering::Relaxed))
                    .sum()
            })
    }

    /// Waits, as one of the requests held for `deployment`, until the
    /// routing table has a replica for it. `Err` with the answer to give:
    /// too many already wait, or it did not wake in time.
    pub(crate) async fn wait_for_replica(&self, deployment: &str) -> Result<(), proxy::Local> {
        let config = &self.inner.config;
        let Some(_held) = Held::take(&self.inner, deployment, config.max_held) else {
            return Err(error::GatewayError::WakeQueueFull {
                deployment: deployment.to_owned(),
                max: config.max_held,
            }
            .answer());
        };
        self.inner.holding.notify_one();
        // Subscribed before looking: a change after the look wakes us.
        let mut changed = self.inner.routes_changed.subscribe();
        let deadline = tokio::time::Instant::now() + config.hold_timeout;
        loop {
            if self.table().has_replica(deployment) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return Err(error::GatewayError::WakeTimeout {
                        deployment: deployment.to_owned(),
                        after: config.hold_timeout,
                    }
                    .answer());
                }
            }
        }
    }

    /// Whether `deployment`'s requests wait for a replica when none is ready.
    pub(crate) fn is_waking(&self, deployment: &str) -> bool {
        self.inner
            .waking
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(deployment)
    }

    /// Requests, errors and latency per deployment revision since start.
    pub fn stats(&self) -> StatsSnapshot {
        self.inner.stats.snapshot()
    }
}

/// One request counted as waiting for its deployment while alive.
struct Held<'a> {
    inner: &'a Inner,
    deployment: String,
}

impl<'a> Held<'a> {
    /// Counts one more waiting request, unless `max` already wait.
    fn take(inner: &'a Inner, deployment: &str, max: usize) -> Option<Held<'a>> {
        let mut held = inner.held.lock().unwrap_or_else(|p| p.into_inner());
        let n = held.entry(deployment.to_owned()).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Held {
            inner,
            deployment: deployment.to_owned(),
        })
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut held = self.inner.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = held.get_mut(&self.deployment) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.deployment);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_held_request_gives_up_after_the_hold_timeout_and_counts_down() {
        let gateway = Gateway::new(
            Config {
                hold_timeout: Duration::from_secs(90),
                ..Config::default()
            },
            None,
        );
        gateway.set_routes(
            &[],
            &HashMap::from([(("m".to_owned(), 1), Share::weight(1))]),
        );
        gateway.set_waking(["m".to_owned()].into());
        let started = tokio::time::Instant::now();
        let waiting = gateway.wait_for_replica("m");
        tokio::pin!(waiting);
        // Not given up after a minute of (paused) time...
        assert!(
            tokio::time::timeout(Duration::from_secs(60), &mut waiting)
                .await
                .is_err()
        );
        assert_eq!(gateway.held("m"), 1);
        // ...given up at 90 s, with a 503 that says so.
        let answer = waiting.await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(90));
        assert_eq!(answer.status, 503);
        assert!(String::from_utf8_lossy(&answer.body).contains("did not wake within 90s"));
        assert_eq!(gateway.held("m"), 0);
    }

    #[test]
    fn debug_never_shows_a_key() {
        let config = super::Config {
            api_keys: ["client-key-123".to_owned()].into(),
            upstream_key: Some("replica-key-456".into()),
            ..super::Config::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("client-key-123") && !shown.contains("replica-key-456"));
        assert!(shown.contains("api_keys: \"<1 redacted>\""), "{shown}");
    }
}
