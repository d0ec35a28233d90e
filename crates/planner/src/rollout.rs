//! Rollouts as recorded state: a deployment's [`Phase`] says where its
//! rollout stands, [`desired`] says what that phase runs and how traffic
//! splits, and [`step`] decides, from what was observed this tick and the
//! time, the next phase. The controller observes once per tick, calls
//! [`step`], records what it returns and acts on [`desired`]; a restarted
//! control plane reads the phase back and goes on. No decision waits in a
//! loop: time passes between calls.

use std::collections::BTreeMap;

use modelship_types::{Deployment, Mirror, Phase, Progress, Rollout, Strategy, Target};

use crate::canary::{Analysis, Verdict, judge_canary};
use crate::reconcile::Desired;

/// Restarts of one new replica that count as a crash loop.
pub const CRASH_LOOP_RESTARTS: u32 = 3;
/// Longest a phase may wait for the new revision's replicas to be ready.
pub const READY_TIMEOUT_MS: u64 = 600_000;
/// Longest a step judged on live quality may run past its interval while
/// it has fewer compared requests than it needs: then it fails (too little
/// traffic to judge it is not a pass).
pub const SAMPLES_TIMEOUT_MS: u64 = 600_000;

/// What the controller saw of one deployment this tick.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RolloutObserved {
    /// Ready replicas of each revision.
    pub ready: BTreeMap<u32, u32>,
    /// Replicas of each revision that run, start or wait (not terminating).
    pub live: BTreeMap<u32, u32>,
    /// The new revision's replica restarted most often, and how often.
    pub restarts: Option<(String, u32)>,
    /// A canary step's (or the shadow phase's) traffic and live comparison
    /// since its analysis began.
    pub analysis: Option<Analysis>,
    /// Kubernetes: the cluster's rollout of the revision (its Deployment's
    /// status), which stands in for the replica counts.
    pub cluster: Option<ClusterRollout>,
    /// A replica of the new revision waiting for room, and why.
    pub pending: Option<(String, String)>,
}

impl RolloutObserved {
    fn ready(&self, revision: u32) -> u32 {
        self.ready.get(&revision).copied().unwrap_or(0)
    }

    /// Replicas of revisions other than `revision`.
    fn others(&self, revision: u32) -> u32 {
        self.live
            .iter()
            .filter(|(r, _)| **r != revision)
            .map(|(_, n)| n)
            .sum()
    }
}

/// A Kubernetes Deployment's rollout as the cluster reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterRollout {
    Progressing,
    Complete,
    /// Its progress deadline passed, and why.
    Failed(String),
}

/// What a tick decided for one deployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The revision and phase to record; `None`: remove the deployment (its
    /// first revision failed, nothing served before it).
    pub next: Option<(u32, Phase)>,
    /// What happened, for the deployment's events.
    pub events: Vec<String>,
    /// The rollout ended: the line its run's rollout stage records, `Ok` when
    /// the revision serves, `Err` with why when it failed.
    pub ended: Option<Result<String, String>>,
}

/// The phase a new revision's rollout starts in. Kubernetes rolls its own
/// Deployment (a canary's split is the gateway's, which a cluster's traffic
/// does not pass through); a first revision has nothing to compare with or
/// switch from.
pub fn first_phase(
    rollout: &Rollout,
    target: Target,
    previous: Option<u32>,
    run: Option<u64>,
    now: u64,
) -> Phase {
    let progress = Progress {
        run,
        previous,
        started_at: now,
        since: now,
        record: Vec::new(),
        ready: 0,
    };
    match (rollout.strategy, previous) {
        _ if target == Target::Kubernetes => Phase::Rolling { progress },
        (_, Some(stable)) if rollout.shadow.is_some() => Phase::Shadow {
            progress,
            stable,
            analysis_from: None,
        },
        (Strategy::Canary, Some(stable)) => Phase::Canary {
            progress,
            stable,
            step: 0,
            analysis_from: None,
        },
        (Strategy::BlueGreen, Some(stable)) => Phase::BlueGreen {
            progress,
            stable,
            switched_at: None,
        },
        _ => Phase::Rolling { progress },
    }
}

/// The percent of traffic canary step `step` sends to the new revision.
pub(crate) fn percent(rollout: &Rollout, step: u32) -> u32 {
    let steps = &rollout.canary.steps;
    steps
        .get(step as usize)
        .or(steps.last())
        .copied()
        .unwrap_or(100)
}

/// The canary's share of `replicas` at `percent`, at least one: the gateway
/// splits traffic by weight whatever the counts.
fn canary_replicas(replicas: u32, percent: u32) -> u32 {
    (replicas * percent).div_ceil(100).max(1)
}

/// The shadow phase's mirrored share, in percent.
fn shadow_percent(rollout: &Rollout) -> f64 {
    rollout.shadow.as_ref().map_or(100.0, |s| s.percent)
}

/// What `d`'s phase compares: the shadow phase mirrors `shadow.percent`,
/// a canary with `quality` bounds compares `quality.percent` of each step.
pub fn mirror(d: &Deployment, rollout: &Rollout) -> Option<Mirror> {
    let (stable, percent) = match &d.phase {
        Phase::Shadow { stable, .. } => (*stable, shadow_percent(rollout)),
        Phase::Canary { stable, .. } => (*stable, rollout.canary.quality.as_ref()?.percent),
        _ => return None,
    };
    Some(Mirror {
        stable,
        candidate: d.revision,
        percent,
    })
}

/// What `d`'s phase runs: replicas of its revision, the stable revision's
/// beside them, and the traffic split. `rollout` is the revision's.
pub fn desired(d: &Deployment, rollout: &Rollout) -> Desired {
    let (replicas, stable, traffic) = match &d.phase {
        // Sized for the mirrored share; no client traffic.
        Phase::Shadow { stable, .. } => (
            canary_replicas(d.replicas, shadow_percent(rollout).ceil() as u32),
            Some((*stable, d.replicas)),
            Some(0),
        ),
        Phase::Canary { stable, step, .. } => {
            let p = percent(rollout, *step);
            (
                canary_replicas(d.replicas, p),
                Some((*stable, d.replicas)),
                Some(p),
            )
        }
        Phase::BlueGreen {
            stable,
            switched_at,
            ..
        } => (
            d.replicas,
            Some((*stable, d.replicas)),
            Some(if switched_at.is_some() { 100 } else { 0 }),
        ),
        Phase::Steady | Phase::Rolling { .. } => (d.replicas, None, None),
    };
    Desired {
        deployment: d.name.clone(),
        revision: d.revision,
        replicas,
        rollout: rollout.clone(),
        stable,
        traffic,
        blocked: false,
    }
}

/// The next phase of `d` at `now` given what was `seen`; `None` when
/// nothing changes. `rollout` is the revision's.
pub fn step(d: &Deployment, rollout: &Rollout, seen: &RolloutObserved, now: u64) -> Option<Step> {
    let rev = d.revision;
    match &d.phase {
        Phase::Steady => None,
        Phase::Rolling { progress } => {
            let done = match &seen.cluster {
                Some(ClusterRollout::Failed(why)) => {
                    return Some(fail(
                        d,
                        progress,
                        format!("the Deployment did not roll out: {why}"),
                    ));
                }
                Some(ClusterRollout::Complete) => true,
                Some(ClusterRollout::Progressing) => false,
                None => seen.ready(rev) >= d.replicas && seen.others(rev) == 0,
            };
            if done {
                let line = if progress.previous == Some(rev) {
                    format!(
                        "unchanged: revision {rev} serves with {} ready replica(s)",
                        d.replicas
                    )
                } else {
                    format!(
                        "revision {rev} serves with {} ready replica(s) after {:.1} s{}",
                        d.replicas,
                        now.saturating_sub(progress.started_at) as f64 / 1e3,
                        record(progress)
                    )
                };
                return Some(Step {
                    next: Some((rev, Phase::Steady)),
                    events: Vec::new(),
                    ended: Some(Ok(line)),
                });
            }
            if let Some(failed) = crash_loop(d, progress, seen) {
                return Some(failed);
            }
            // One more replica ready: progress, and the timeout starts over.
            let ready = seen.ready(rev);
            if seen.cluster.is_none() && ready > progress.ready {
                let progress = Progress {
                    ready,
                    since: now,
                    ..progress.clone()
                };
                return Some(Step {
                    next: Some((rev, Phase::Rolling { progress })),
                    events: Vec::new(),
                    ended: None,
                });
            }
            waiting(d, progress, seen, now)
        }
        Phase::Shadow {
            progress,
            stable,
            analysis_from,
        } => {
            let p = shadow_percent(rollout);
            let label = format!("shadow {p}%");
            let analyse_from_now = |events| Step {
                next: Some((
                    rev,
                    Phase::Shadow {
                        progress: progress.clone(),
                        stable: *stable,
                        analysis_from: Some(now),
                    },
                )),
                events,
                ended: None,
            };
            let Some(from) = analysis_from else {
                if seen.ready(rev) >= canary_replicas(d.replicas, p.ceil() as u32) {
                    return Some(analyse_from_now(Vec::new()));
                }
                return waiting(d, progress, seen, now);
            };
            if let Some(failed) = crash_loop(d, progress, seen) {
                return Some(failed);
            }
            let Some(analysis) = &seen.analysis else {
                return Some(analyse_from_now(vec![format!(
                    "{label}: its comparisons were lost with the control plane; measuring it again"
                )]));
            };
            let duration = rollout
                .shadow
                .as_ref()
                .map_or(0, |s| s.duration.0.as_millis() as u64);
            let why = match judged(
                d,
                progress,
                &label,
                analysis,
                rollout,
                *from,
                from + duration,
                now,
            ) {
                Judged::Pass(why) => why,
                Judged::Running => return None,
                Judged::Failed(step) => return Some(step),
            };
            let mut progress = Progress {
                since: now,
                ..progress.clone()
            };
            progress.record.push(format!("{label}: {why}"));
            let stable = *stable;
            let phase = match rollout.strategy {
                Strategy::Canary => Phase::Canary {
                    progress,
                    stable,
                    step: 0,
                    analysis_from: None,
                },
                Strategy::BlueGreen => Phase::BlueGreen {
                    progress,
                    stable,
                    switched_at: None,
                },
                Strategy::Rolling => Phase::Rolling { progress },
            };
            Some(Step {
                next: Some((rev, phase)),
                events: vec![format!("{label} passed: {why}")],
                ended: None,
            })
        }
        Phase::Canary {
            progress,
            stable,
            step,
            analysis_from,
        } => {
            let p = percent(rollout, *step);
            // This step's analysis (re)starts now, for a whole interval.
            let analyse_from_now = |events| Step {
                next: Some((
                    rev,
                    Phase::Canary {
                        progress: progress.clone(),
                        stable: *stable,
                        step: *step,
                        analysis_from: Some(now),
                    },
                )),
                events,
                ended: None,
            };
            let Some(from) = analysis_from else {
                if seen.ready(rev) >= canary_replicas(d.replicas, p) {
                    return Some(analyse_from_now(Vec::new()));
                }
                return waiting(d, progress, seen, now);
            };
            if let Some(failed) = crash_loop(d, progress, seen) {
                return Some(failed);
            }
            let Some(analysis) = &seen.analysis else {
                // The step's counts are gone (the control plane restarted).
                return Some(analyse_from_now(vec![format!(
                    "canary step {p}%: its counts were lost with the control plane; measuring it again"
                )]));
            };
            let due = from + rollout.canary.interval.0.as_millis() as u64;
            let label = format!("canary step {p}%");
            match judged(d, progress, &label, analysis, rollout, *from, due, now) {
                Judged::Running => None,
                Judged::Failed(step) => Some(step),
                Judged::Pass(why) => {
                    let mut progress = Progress {
                        since: now,
                        ..progress.clone()
                    };
                    progress.record.push(format!("{p}%: {why}"));
                    let mut events = vec![format!("canary step {p}% passed: {why}")];
                    let last = *step as usize + 1 >= rollout.canary.steps.len();
                    let phase = if last {
                        events.push(format!(
                            "revision {rev} promoted: revision {stable}'s replicas are replaced"
                        ));
                        Phase::Rolling { progress }
                    } else {
                        Phase::Canary {
                            progress,
                            stable: *stable,
                            step: step + 1,
                            analysis_from: None,
                        }
                    };
                    Some(Step {
                        next: Some((rev, phase)),
                        events,
                        ended: None,
                    })
                }
            }
        }
        Phase::BlueGreen {
            progress,
            stable,
            switched_at,
        } => {
            let delay = rollout.scale_down_delay;
            let Some(at) = switched_at else {
                if seen.ready(rev) >= d.replicas {
                    let mut progress = progress.clone();
                    progress.record.push(format!(
                        "switched when {} replica(s) were ready, revision {stable} kept {delay}",
                        d.replicas
                    ));
                    return Some(Step {
                        next: Some((
                            rev,
                            Phase::BlueGreen {
                                progress,
                                stable: *stable,
                                switched_at: Some(now),
                            },
                        )),
                        events: vec![format!(
                            "switched all traffic to revision {rev}; revision {stable} stays {delay} for an instant rollback"
                        )],
                        ended: None,
                    });
                }
                return waiting(d, progress, seen, now);
            };
            if let Some(failed) = crash_loop(d, progress, seen) {
                return Some(failed);
            }
            if now < at + delay.0.as_millis() as u64 {
                return None;
            }
            Some(Step {
                next: Some((
                    rev,
                    Phase::Rolling {
                        progress: Progress {
                            since: now,
                            ..progress.clone()
                        },
                    },
                )),
                events: vec![format!("retiring revision {stable}")],
                ended: None,
            })
        }
    }
}

/// What becomes of a step under analysis.
enum Judged {
    /// It passed, and why.
    Pass(String),
    /// It runs on: not due yet, or too few compared requests so far.
    Running,
    /// The rollout fails, with the figure that failed and its value.
    Failed(Step),
}

/// The verdict on a step whose analysis began at `from` and is due at `due`.
#[allow(clippy::too_many_arguments)]
fn judged(
    d: &Deployment,
    progress: &Progress,
    label: &str,
    analysis: &Analysis,
    rollout: &Rollout,
    from: u64,
    due: u64,
    now: u64,
) -> Judged {
    if now < due {
        return Judged::Running;
    }
    match judge_canary(analysis, &rollout.canary) {
        Verdict::Promote(why) => Judged::Pass(why),
        Verdict::RollBack(why) => Judged::Failed(fail(d, progress, format!("{label}: {why}"))),
        Verdict::Wait(_) if now < due + SAMPLES_TIMEOUT_MS => Judged::Running,
        Verdict::Wait(why) => Judged::Failed(fail(
            d,
            progress,
            format!(
                "{label}: too little traffic to judge: {why} after {} s",
                (now - from) / 1000
            ),
        )),
    }
}

/// The record's lines, one per finished step.
fn record(progress: &Progress) -> String {
    progress
        .record
        .iter()
        .map(|line| format!("\n  {line}"))
        .collect()
}

/// While waiting for replicas: fails on a crash loop or the ready timeout.
fn waiting(d: &Deployment, progress: &Progress, seen: &RolloutObserved, now: u64) -> Option<Step> {
    if let Some(failed) = crash_loop(d, progress, seen) {
        return Some(failed);
    }
    if now >= progress.since + READY_TIMEOUT_MS {
        let why = match &seen.pending {
            Some((id, reason)) => format!(": replica {id} is pending: {reason}"),
            None => String::new(),
        };
        return Some(fail(
            d,
            progress,
            format!("not ready after {} s{why}", READY_TIMEOUT_MS / 1000),
        ));
    }
    None
}

fn crash_loop(d: &Deployment, progress: &Progress, seen: &RolloutObserved) -> Option<Step> {
    let (id, restarts) = seen.restarts.as_ref()?;
    (*restarts >= CRASH_LOOP_RESTARTS).then(|| {
        fail(
            d,
            progress,
            format!("replica {id} exited {} times", restarts + 1),
        )
    })
}

/// The rollout failed for `why`: back to the revision that served before,
/// or, when none did, the deployment goes.
pub(crate) fn fail(d: &Deployment, progress: &Progress, why: String) -> Step {
    let rev = d.revision;
    let (next, what) = match progress.previous {
        Some(p) if p != rev => (
            Some((p, Phase::Steady)),
            format!("rolled back to revision {p}"),
        ),
        Some(_) => (Some((rev, Phase::Steady)), "left as it is".to_owned()),
        None => (
            None,
            "nothing served before it: the deployment was removed".to_owned(),
        ),
    };
    Step {
        next,
        events: vec![format!("rollout of revision {rev} failed: {why}; {what}")],
        ended: Some(Err(format!("revision {rev}: {why}; {what}"))),
    }
}

#[cfg(test)]
mod tests;
