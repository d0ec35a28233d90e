//! Reconcile: what to start and stop so that the observed replicas become
//! the desired ones, rolling from an old revision to a new one within the
//! rollout's surge and unavailability budget (Kubernetes' RollingUpdate), and
//! restarting exited replicas after an exponential backoff. A pure function
//! of the desired state, the observed replicas and the time: the controller
//! observes, calls [`reconcile`], applies the actions, and calls it again.

use std::collections::BTreeSet;

use modelship_types::{Replica, ReplicaState, Rollout};
use serde::Serialize;

/// What one deployment should look like.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub deployment: String,
    /// The revision that should serve.
    pub revision: u32,
    /// Replicas of `revision`.
    pub replicas: u32,
    pub rollout: Rollout,
    /// A revision kept running beside `revision` during a canary or
    /// blue-green rollout, and its replica count. Without one, replicas of
    /// other revisions are replaced by rolling.
    pub stable: Option<(u32, u32)>,
    /// While `stable` runs: the percent of traffic `revision` gets (the rest
    /// goes to `stable`). Without one, each ready replica gets an equal share.
    pub traffic: Option<u32>,
    /// The new revision's replicas wait for room on the node: a rolling
    /// update then takes an old replica out first (as `max_unavailable: 1`
    /// would) rather than wait for room that only its end would free.
    pub blocked: bool,
}

/// One step towards the desired state.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// Start a new replica of `revision`.
    Start { deployment: String, revision: u32 },
    /// Start an exited replica again (its backoff has passed).
    Restart { replica: String },
    /// Take a replica out of traffic, let it drain, and remove it.
    Stop { replica: String },
}

/// The first restart waits this long; each further one twice as long.
pub const BACKOFF_BASE_MS: u64 = 1_000;
/// Restarts never wait longer than this.
pub const BACKOFF_MAX_MS: u64 = 60_000;

/// How long a replica that has already been restarted `restarts` times waits
/// before its next start: 1 s, 2 s, 4 s, … up to a minute.
pub fn restart_backoff_ms(restarts: u32) -> u64 {
    BACKOFF_BASE_MS
        .saturating_mul(1u64 << restarts.min(16))
        .min(BACKOFF_MAX_MS)
}

/// The actions that move `observed` towards `desired` at time `now` (ms).
/// Replicas of deployments not in `desired` are stopped. Terminating
/// replicas are on their way out and count for nothing.
pub fn reconcile(desired: &[Desired], observed: &[Replica], now: u64) -> Vec<Action> {
    let mut actions = Vec::new();
    let wanted: BTreeSet<&str> = desired.iter().map(|d| d.deployment.as_str()).collect();
    for r in observed {
        if r.state != ReplicaState::Terminating && !wanted.contains(r.deployment.as_str()) {
            actions.push(stop(r));
        }
    }
    for d in desired {
        let live = observed
            .iter()
            .filter(|r| r.deployment == d.deployment && r.state != ReplicaState::Terminating);
        let (new, rest): (Vec<&Replica>, Vec<&Replica>) =
            live.partition(|r| r.revision == d.revision);
        let (stable, old): (Vec<&Replica>, Vec<&Replica>) = rest
            .into_iter()
            .partition(|r| d.stable.is_some_and(|(s, _)| r.revision == s));
        if let Some((revision, replicas)) = d.stable {
            let group = Group {
                revision,
                replicas,
                blocked: false,
                ..Group::of(d)
            };
            group_actions(&group, &stable, &[], now, &mut actions);
        }
        group_actions(&Group::of(d), &new, &old, now, &mut actions);
    }
    actions
}

/// One revision's target: `replicas` of it, replacing `old` within the
/// rollout's budget.
struct Group<'a> {
    deployment: &'a str,
    revision: u32,
    replicas: u32,
    rollout: &'a Rollout,
    blocked: bool,
}

impl<'a> Group<'a> {
    fn of(d: &'a Desired) -> Group<'a> {
        Group {
            deployment: &d.deployment,
            revision: d.revision,
            replicas: d.replicas,
            rollout: &d.rollout,
            blocked: d.blocked,
        }
    }
}

fn group_actions(
    d: &Group<'_>,
    new: &[&Replica],
    old: &[&Replica],
    now: u64,
    actions: &mut Vec<Action>,
) {
    let n = d.replicas as usize;
    let ready = |rs: &[&Replica]| rs.iter().filter(|r| r.state == ReplicaState::Ready).count();
    let (new_ready, old_ready) = (ready(new), ready(old));

    // Exited replicas of the serving revision come back after their backoff;
    // those of an old revision are replaced by new ones instead.
    for r in new.iter().take(n) {
        if r.state == ReplicaState::Exited
            && now >= r.exited_at.unwrap_or(0) + restart_backoff_ms(r.restarts)
        {
            actions.push(Action::Restart {
                replica: r.id.clone(),
            });
        }
    }

    // Too many of the new revision (scaled down): the least useful go.
    if new.len() > n {
        actions.extend(least_useful_first(new).take(new.len() - n).map(stop));
    }

    let start = |count: usize, actions: &mut Vec<Action>| {
        actions.extend((0..count).map(|_| Action::Start {
            deployment: d.deployment.to_owned(),
            revision: d.revision,
        }))
    };
    if old.is_empty() {
        start(n.saturating_sub(new.len()), actions);
        return;
    }

    // A rollout: never more than n + surge replicas, never fewer than
    // n - unavailable ready ones through our own stops.
    let max_total = n + d.rollout.max_surge as usize;
    let unavailable = match d.blocked {
        true => d.rollout.max_unavailable.max(1),
        false => d.rollout.max_unavailable,
    };
    let min_ready = n.saturating_sub(unavailable as usize);
    let not_ready_old: Vec<&&Replica> = old
        .iter()
        .filter(|r| r.state != ReplicaState::Ready)
        .collect();
    // Old replicas that serve nothing can always go.
    actions.extend(not_ready_old.iter().map(|r| stop(r)));
    let old_total = old_ready;
    let ready_stops = (old_ready + new_ready.min(n))
        .saturating_sub(min_ready)
        .min(old_ready);
    let mut ready_old: Vec<&&Replica> = old
        .iter()
        .filter(|r| r.state == ReplicaState::Ready)
        .collect();
    ready_old.sort_by(|a, b| (a.revision, &a.id).cmp(&(b.revision, &b.id)));
    actions.extend(ready_old.iter().take(ready_stops).map(|r| stop(r)));
    let total_after = new.len().min(n) + old_total - ready_stops;
    let to_start = n
        .saturating_sub(new.len())
        .min(max_total.saturating_sub(total_after));
    start(to_start, actions);
}

/// Replicas ordered so that the ones serving least come first: pending,
/// exited, then starting, then unready, then ready; the newest first among equals.
fn least_useful_first<'a>(rs: &[&'a Replica]) -> impl Iterator<Item = &'a Replica> {
    let rank = |s: ReplicaState| match s {
        ReplicaState::Pending => 0,
        ReplicaState::Exited => 1,
        ReplicaState::Starting => 2,
        ReplicaState::Unready => 3,
        ReplicaState::Ready => 4,
        ReplicaState::Terminating => 5,
    };
    let mut sorted = rs.to_vec();
    sorted.sort_by(|a, b| {
        rank(a.state)
            .cmp(&rank(b.state))
            .then(b.started_at.cmp(&a.started_at))
            .then(b.id.cmp(&a.id))
    });
    sorted.into_iter()
}

fn stop(r: &Replica) -> Action {
    Action::Stop {
        replica: r.id.clone(),
    }
}

#[cfg(test)]
mod tests;
