//! The figures the dashboard charts, kept for the last hour: every
//! [`TICK`] the sampler reads the gateway's counters and each replica's
//! `/metrics`, and [`Telemetry::record`] turns the difference from the
//! reading before into one [`Point`] per deployment. `Telemetry` is plain
//! state (tested without a clock or sockets); [`run`] is the loop that
//! feeds it and tells the dashboard's streams.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use modelship_gateway::{RevisionStats, StatsSnapshot};
use modelship_orchestrator::now_ms;
use modelship_types::ReplicaState;
use serde::Serialize;

use crate::Ctx;

/// How often figures are read.
pub(crate) const TICK: Duration = Duration::from_secs(2);
/// How far back points are kept.
pub(crate) const KEEP_MS: u64 = 3_600_000;
/// Longest a replica's `/metrics` may take before its figures are left out
/// of a tick.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(800);

/// One deployment's figures over one tick.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Point {
    /// The end of the tick, ms since the Unix epoch.
    pub at: u64,
    /// Answers through the gateway per second, all revisions together.
    pub requests_per_s: f64,
    /// The share of them that failed (5xx, upstream failures).
    pub error_rate: f64,
    /// Latency to response headers at the gateway, from its histogram
    /// ([`RevisionStats::quantile_ms`]); none in a tick without requests.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Tokens generated per second by its replicas.
    pub tokens_per_s: f64,
    /// Requests waiting in its replicas' batch queues.
    pub queue: f64,
    /// Replicas ready at the end of the tick, and desired.
    pub ready: u32,
    pub desired: u32,
}

/// A replica at one tick, and what its `/metrics` said.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ReplicaReading {
    pub id: String,
    pub deployment: String,
    /// Ready (routed to, and scraped); one that is not keeps its last
    /// scrape for when it is again.
    pub ready: bool,
    /// `None`: not ready, or it did not answer in time this tick.
    pub scraped: Option<Scrape>,
}

/// The figures of one replica's `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Scrape {
    /// `modelship_generated_tokens_total` (cumulative: restarts reset it).
    pub generated_tokens: f64,
    pub queue: f64,
    pub resident_bytes: Option<u64>,
}

/// One tick's reading: cumulative counters and current gauges.
#[derive(Debug, Clone, Default)]
pub struct Reading {
    pub at: u64,
    pub gateway: StatsSnapshot,
    pub replicas: Vec<ReplicaReading>,
    /// Each deployment that exists: (ready replicas of any revision,
    /// desired replicas).
    pub deployments: BTreeMap<String, (u32, u32)>,
}

/// The sampler's state: the gateway's counters at the last reading, each
/// replica's last scrape, and each deployment's points.
#[derive(Debug, Default)]
pub struct Telemetry {
    before: Option<(u64, StatsSnapshot)>,
    scrapes: HashMap<String, Scrape>,
    /// The replicas ready at the reading before.
    ready_before: std::collections::HashSet<String>,
    series: HashMap<String, VecDeque<Point>>,
}

impl Telemetry {
    /// Adds one point per deployment for the tick that ends at `now.at`;
    /// the first reading only sets the counters to compare with. A
    /// replica that missed this tick's scrape keeps its last figures (its
    /// tokens are counted when it answers again); a deployment or replica
    /// gone from `now` is forgotten.
    pub fn record(&mut self, now: Reading) {
        self.series
            .retain(|name, _| now.deployments.contains_key(name));
        let mut tokens: HashMap<&str, f64> = HashMap::new();
        let mut queue: HashMap<&str, f64> = HashMap::new();
        let mut scrapes = HashMap::with_capacity(now.replicas.len());
        let measured = self.before.is_some();
        for r in &now.replicas {
            let earlier = self.scrapes.get(&r.id).copied();
            let Some(latest) = r.scraped.or(earlier) else {
                continue;
            };
            scrapes.insert(r.id.clone(), latest);
            if !r.ready {
                continue;
            }
            // A replica not ready at the reading before had no traffic
            // until since: all it counted is this tick's. One ready then but
            // never scraped (the control plane just started, or its scrapes
            // failed) counted in ticks nobody measured.
            let fresh = measured && !self.ready_before.contains(&r.id);
            let counted = match (r.scraped, earlier) {
                (Some(s), Some(e)) => counted_since(e.generated_tokens, s.generated_tokens),
                (Some(s), None) if fresh => s.generated_tokens,
                _ => 0.0,
            };
            *tokens.entry(&r.deployment).or_default() += counted;
            *queue.entry(&r.deployment).or_default() += latest.queue;
        }
        self.scrapes = scrapes;
        self.ready_before = now
            .replicas
            .iter()
            .filter(|r| r.ready)
            .map(|r| r.id.clone())
            .collect();
        let Some((before_at, before)) = self.before.take() else {
            self.before = Some((now.at, now.gateway));
            return;
        };
        let seconds = now.at.saturating_sub(before_at) as f64 / 1e3;
        if seconds <= 0.0 {
            self.before = Some((before_at, before));
            return;
        }
        for (name, &(ready, desired)) in &now.deployments {
            let answered = answered_between(&before, &now.gateway, name);
            let point = Point {
                at: now.at,
                requests_per_s: answered.requests as f64 / seconds,
                error_rate: answered.error_rate(),
                p50_ms: answered.quantile_ms(0.5),
                p99_ms: answered.quantile_ms(0.99),
                tokens_per_s: tokens.get(name.as_str()).copied().unwrap_or(0.0) / seconds,
                queue: queue.get(name.as_str()).copied().unwrap_or(0.0),
                ready,
                desired,
            };
            let series = self.series.entry(name.clone()).or_default();
            series.push_back(point);
            while series.front().is_some_and(|p| p.at + KEEP_MS < now.at) {
                series.pop_front();
            }
        }
        self.before = Some((now.at, now.gateway));
    }

    /// `deployment`'s points, oldest first.
    pub fn series(&self, deployment: &str) -> Vec<Point> {
        self.series
            .get(deployment)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// `deployment`'s last point, unless it is older than [`STALE_MS`] at
    /// `now` (the sampler could not read): an old figure is not shown as
    /// the current one.
    pub fn latest(&self, deployment: &str, now: u64) -> Option<Point> {
        let p = *self.series.get(deployment)?.back()?;
        (now.saturating_sub(p.at) <= STALE_MS).then_some(p)
    }

    /// A replica's resident memory at its last scrape.
    pub fn memory(&self, replica: &str) -> Option<u64> {
        self.scrapes.get(replica)?.resident_bytes
    }
}

/// How old the last point may be and still be the current figure: three
/// ticks.
pub(crate) const STALE_MS: u64 = 3 * TICK.as_millis() as u64;

/// What `deployment`'s revisions answered between two snapshots, merged.
fn answered_between(
    before: &StatsSnapshot,
    now: &StatsSnapshot,
    deployment: &str,
) -> RevisionStats {
    let mut total = RevisionStats {
        deployment: deployment.to_owned(),
        ..RevisionStats::default()
    };
    for r in now.revisions.iter().filter(|r| r.deployment == deployment) {
        total.merge(&r.since(before.get(deployment, r.revision)));
    }
    total
}

/// What a cumulative counter counted since `earlier`; a counter that went
/// down was restarted from zero, and counted `now` since.
fn counted_since(earlier: f64, now: f64) -> f64 {
    if now >= earlier { now - earlier } else { now }
}

/// The sum of every sample of `metric` in Prometheus text, whatever its
/// labels; `None` when there is none.
pub fn sum_of(text: &str, metric: &str) -> Option<f64> {
    let mut total = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(metric) else {
            continue;
        };
        // The name must end here: `modelship_queue_depth` is not
        // `modelship_queue_depth_max`.
        let value = match rest.as_bytes().first() {
            Some(b'{') => rest.rsplit_once('}').map(|(_, v)| v),
            Some(b' ') => Some(rest),
            _ => None,
        };
        if let Some(v) = value.and_then(|v| v.split_whitespace().next())
            && let Ok(v) = v.parse::<f64>()
            && v.is_finite()
        {
            *total.get_or_insert(0.0) += v;
        }
    }
    total
}

/// The control plane's sampler: reads, records, and tells the streams a
/// tick went by. Runs for the life of the control plane.
pub(crate) async fn run(ctx: Arc<Ctx>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match read(&ctx).await {
            Ok(reading) => ctx
                .telemetry
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .record(reading),
            Err(e) => tracing::warn!("telemetry: {e:#}"),
        }
        ctx.ticks.send_modify(|n| *n += 1);
    }
}

async fn read(ctx: &Ctx) -> anyhow::Result<Reading> {
    let replicas = ctx.store.replicas()?;
    let mut deployments: BTreeMap<String, (u32, u32)> = ctx
        .store
        .deployments()?
        .into_iter()
        .map(|d| (d.name, (0, d.replicas)))
        .collect();
    for r in replicas.iter().filter(|r| r.state == ReplicaState::Ready) {
        if let Some((n, _)) = deployments.get_mut(&r.deployment) {
            *n += 1;
        }
    }
    let scrapes = replicas.iter().map(|r| async move {
        let ready = r.state == ReplicaState::Ready;
        let text = if ready {
            modelship_orchestrator::metrics(&r.endpoint, SCRAPE_TIMEOUT).await
        } else {
            None
        };
        ReplicaReading {
            id: r.id.clone(),
            deployment: r.deployment.clone(),
            ready,
            scraped: text.map(|text| Scrape {
                generated_tokens: sum_of(&text, "modelship_generated_tokens_total").unwrap_or(0.0),
                queue: sum_of(&text, "modelship_queue_depth").unwrap_or(0.0),
                resident_bytes: sum_of(&text, "modelship_resident_memory_bytes").map(|b| b as u64),
            }),
        }
    });
    let replicas = futures::future::join_all(scrapes).await;
    Ok(Reading {
        at: now_ms(),
        gateway: ctx.gateway.stats(),
        replicas,
        deployments,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(deployment: &str, revision: u32, requests: u64, errors: u64) -> RevisionStats {
        let mut buckets = [0; 16];
        buckets[3] = requests; // (5, 10] ms
        RevisionStats {
            deployment: deployment.into(),
            revision,
            requests,
            errors,
            buckets,
        }
    }

    fn replica(id: &str, tokens: f64, queue: f64) -> ReplicaReading {
        ReplicaReading {
            id: id.into(),
            deployment: "m".into(),
            ready: true,
            scraped: Some(Scrape {
                generated_tokens: tokens,
                queue,
                resident_bytes: Some(100 << 20),
            }),
        }
    }

    fn reading(at: u64, revisions: Vec<RevisionStats>, replicas: Vec<ReplicaReading>) -> Reading {
        Reading {
            at,
            gateway: StatsSnapshot { revisions },
            replicas,
            deployments: [("m".to_owned(), (2, 2))].into(),
        }
    }

    #[test]
    fn rates_are_the_difference_over_the_tick_summed_over_revisions() {
        let mut t = Telemetry::default();
        t.record(reading(
            10_000,
            vec![revision("m", 1, 100, 0), revision("other", 1, 7, 0)],
            vec![replica("a", 50.0, 0.0), replica("b", 10.0, 0.0)],
        ));
        assert!(
            t.series("m").is_empty(),
            "the first reading only sets counters"
        );
        t.record(reading(
            12_000,
            vec![
                revision("m", 1, 140, 0),
                revision("m", 2, 60, 10),
                revision("other", 1, 1_000, 0),
            ],
            // b restarted: its counter began again from zero.
            vec![replica("a", 90.0, 3.0), replica("b", 4.0, 1.0)],
        ));
        let p = t.latest("m", 12_000).unwrap();
        assert_eq!(p.requests_per_s, 50.0); // (40 + 60) / 2 s
        assert_eq!(p.error_rate, 0.1);
        assert_eq!(p.tokens_per_s, 22.0); // (40 + 4) / 2 s
        assert_eq!(p.queue, 4.0);
        assert_eq!(p.p50_ms, Some(7.5));
        assert_eq!((p.ready, p.desired), (2, 2));
        assert_eq!(t.memory("a"), Some(100 << 20));
    }

    #[test]
    fn a_missed_scrape_keeps_the_replica_s_figures_and_counts_its_tokens_later() {
        let mut t = Telemetry::default();
        t.record(reading(0, vec![], vec![replica("a", 100.0, 2.0)]));
        let silent = ReplicaReading {
            scraped: None,
            ..replica("a", 0.0, 0.0)
        };
        t.record(reading(2_000, vec![], vec![silent]));
        let p = t.latest("m", 2_000).unwrap();
        assert_eq!(
            (p.tokens_per_s, p.queue),
            (0.0, 2.0),
            "its last queue stands"
        );
        assert_eq!(t.memory("a"), Some(100 << 20));
        t.record(reading(4_000, vec![], vec![replica("a", 140.0, 1.0)]));
        let p = t.latest("m", 4_000).unwrap();
        assert_eq!(
            p.tokens_per_s, 20.0,
            "the 40 tokens of both ticks, not lost"
        );
        // Gone from the reading: forgotten.
        t.record(reading(6_000, vec![], vec![]));
        assert_eq!(t.memory("a"), None);
    }

    #[test]
    fn a_replica_ready_since_the_reading_before_counts_from_zero_one_seen_late_does_not() {
        let mut t = Telemetry::default();
        // `new` is starting (not ready, not scraped); `old` is ready but its
        // scrape failed (its count began in ticks nobody measured).
        let starting = ReplicaReading {
            ready: false,
            scraped: None,
            ..replica("new", 0.0, 0.0)
        };
        let unanswered = ReplicaReading {
            scraped: None,
            ..replica("old", 0.0, 0.0)
        };
        t.record(reading(10_000, vec![], vec![starting, unanswered]));
        t.record(reading(
            12_000,
            vec![],
            vec![replica("new", 30.0, 0.0), replica("old", 500.0, 0.0)],
        ));
        assert_eq!(t.latest("m", 12_000).unwrap().tokens_per_s, 15.0);
    }

    #[test]
    fn a_replica_unready_for_a_while_is_not_counted_twice() {
        let mut t = Telemetry::default();
        t.record(reading(0, vec![], vec![replica("a", 100.0, 0.0)]));
        let resting = ReplicaReading {
            ready: false,
            scraped: None,
            ..replica("a", 0.0, 0.0)
        };
        t.record(reading(2_000, vec![], vec![resting]));
        t.record(reading(4_000, vec![], vec![replica("a", 110.0, 0.0)]));
        assert_eq!(t.latest("m", 4_000).unwrap().tokens_per_s, 5.0);
    }

    #[test]
    fn a_stale_point_is_not_the_current_figure() {
        let mut t = Telemetry::default();
        t.record(reading(0, vec![], vec![]));
        t.record(reading(2_000, vec![], vec![]));
        assert!(t.latest("m", 2_000 + STALE_MS).is_some());
        assert!(t.latest("m", 2_001 + STALE_MS).is_none());
        assert_eq!(t.series("m").len(), 1, "the chart keeps it");
    }

    #[test]
    fn a_quiet_tick_has_no_latency_and_old_points_go() {
        let mut t = Telemetry::default();
        for i in 0..=2_000u64 {
            t.record(reading(i * 2_000, vec![revision("m", 1, 5, 0)], vec![]));
        }
        let series = t.series("m");
        assert_eq!(series.len(), (KEEP_MS / 2_000 + 1) as usize);
        let p = series.last().unwrap();
        assert_eq!((p.requests_per_s, p.p50_ms, p.p99_ms), (0.0, None, None));
        assert!(series.windows(2).all(|w| w[0].at < w[1].at));
    }

    #[test]
    fn a_deleted_deployment_loses_its_points() {
        let mut t = Telemetry::default();
        t.record(reading(0, vec![], vec![]));
        t.record(reading(2_000, vec![], vec![]));
        assert_eq!(t.series("m").len(), 1);
        let mut gone = reading(4_000, vec![], vec![]);
        gone.deployments.clear();
        t.record(gone);
        assert!(t.series("m").is_empty());
    }

    #[test]
    fn metrics_are_summed_over_labels_by_exact_name() {
        let text = "# TYPE modelship_queue_depth gauge\n\
            modelship_queue_depth{task=\"embeddings\"} 3\n\
            modelship_queue_depth{task=\"generate\"} 2\n\
            modelship_queue_depth_max 99\n\
            modelship_generated_tokens_total 1234\n\
            modelship_resident_memory_bytes 1.5e8\n\
            modelship_broken{a=\"b\"} NaN\n";
        assert_eq!(sum_of(text, "modelship_queue_depth"), Some(5.0));
        assert_eq!(
            sum_of(text, "modelship_generated_tokens_total"),
            Some(1234.0)
        );
        assert_eq!(sum_of(text, "modelship_resident_memory_bytes"), Some(1.5e8));
        assert_eq!(sum_of(text, "modelship_broken"), None);
        assert_eq!(sum_of(text, "modelship_absent"), None);
    }
}
