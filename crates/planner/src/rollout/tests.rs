use std::time::Duration;

use modelship_types::{Canary, LiveQuality, LiveSample, Quality, Shadow, Span};

use super::*;
use crate::canary::Window;

const S: u64 = 1_000;

/// Each tick: its time, the phase after it, and the rollout's outcome.
type Trace = Vec<(u64, &'static str, Option<Result<String, String>>)>;

fn deployment(revision: u32, replicas: u32, phase: Phase) -> Deployment {
    Deployment {
        name: "d".into(),
        revision,
        replicas,
        phase,
        created_at: 0,
        updated_at: 0,
    }
}

fn rollout(strategy: Strategy) -> Rollout {
    Rollout {
        strategy,
        canary: Canary {
            steps: vec![10, 50, 100],
            interval: Span(Duration::from_secs(30)),
            ..Canary::default()
        },
        scale_down_delay: Span(Duration::from_secs(60)),
        ..Rollout::default()
    }
}

/// Observed: (revision, live, ready) per revision.
fn seen(counts: &[(u32, u32, u32)]) -> RolloutObserved {
    RolloutObserved {
        live: counts.iter().map(|&(r, live, _)| (r, live)).collect(),
        ready: counts.iter().map(|&(r, _, ready)| (r, ready)).collect(),
        ..RolloutObserved::default()
    }
}

fn window(requests: u64, errors: u64) -> Window {
    Window {
        requests,
        errors,
        p99_ms: Some(10.0),
    }
}

fn analysis(canary: Window, stable: Window) -> Analysis {
    Analysis {
        canary,
        stable,
        live: LiveQuality::default(),
    }
}

/// Drives `d` through `script` (time, observation), applying each step as
/// the controller does; returns each tick's phase name and outcome. The
/// phase goes through its JSON form between ticks, as it does through the
/// store when the control plane restarts: the decision must not change.
fn drive(
    mut d: Deployment,
    r: &Rollout,
    script: &[(u64, RolloutObserved)],
) -> (Option<Deployment>, Trace) {
    let mut trace = Vec::new();
    for (now, obs) in script {
        let restored: Deployment =
            serde_json::from_str(&serde_json::to_string(&d).unwrap()).unwrap();
        assert_eq!(restored, d, "the phase survives the store");
        let Some(s) = step(&restored, r, obs, *now) else {
            trace.push((*now, d.phase.name(), None));
            continue;
        };
        assert_eq!(s, step(&d, r, obs, *now).unwrap(), "a pure function");
        match s.next {
            Some((revision, phase)) => {
                d.revision = revision;
                d.phase = phase;
            }
            None => return (None, trace_with(trace, *now, "removed", s.ended)),
        }
        trace.push((*now, d.phase.name(), s.ended));
    }
    (Some(d), trace)
}

fn trace_with(
    mut trace: Trace,
    now: u64,
    name: &'static str,
    ended: Option<Result<String, String>>,
) -> Trace {
    trace.push((now, name, ended));
    trace
}

/// Run 7's canary of revision 2 beside stable revision 1, at `step`.
fn canary_phase(step: u32, analysis_from: Option<u64>) -> Phase {
    Phase::Canary {
        progress: Progress {
            run: Some(7),
            previous: Some(1),
            started_at: 0,
            since: 0,
            record: vec![],
            ready: 0,
        },
        stable: 1,
        step,
        analysis_from,
    }
}

fn started(r: &Rollout, previous: Option<u32>, target: Target) -> Phase {
    first_phase(r, target, previous, Some(7), 0)
}

#[test]
fn the_first_phase_follows_strategy_target_and_history() {
    let table = [
        (Strategy::Rolling, Some(1), Target::Local, "rolling"),
        (Strategy::Canary, Some(1), Target::Local, "canary"),
        (Strategy::Canary, None, Target::Local, "rolling"),
        (Strategy::BlueGreen, Some(1), Target::Docker, "blue-green"),
        (Strategy::BlueGreen, None, Target::Docker, "rolling"),
        (Strategy::Canary, Some(1), Target::Kubernetes, "rolling"),
    ];
    for (strategy, previous, target, phase) in table {
        let p = started(&rollout(strategy), previous, target);
        assert_eq!(p.name(), phase, "{strategy:?} {previous:?} {target}");
        assert_eq!(p.run(), Some(7));
    }
}

#[test]
fn a_rolling_update_ends_when_only_the_new_revision_runs_ready() {
    let r = rollout(Strategy::Rolling);
    let d = deployment(2, 2, started(&r, Some(1), Target::Local));
    let (d, trace) = drive(
        d,
        &r,
        &[
            (S, seen(&[(1, 2, 2), (2, 1, 0)])),
            (2 * S, seen(&[(1, 1, 1), (2, 2, 1)])),
            // Both new ready, one old still draining: not yet.
            (3 * S, seen(&[(1, 1, 1), (2, 2, 2)])),
            (4 * S, seen(&[(2, 2, 2)])),
            (5 * S, seen(&[(2, 2, 2)])),
        ],
    );
    let names: Vec<_> = trace.iter().map(|t| t.1).collect();
    assert_eq!(names, ["rolling", "rolling", "rolling", "steady", "steady"]);
    let line = trace[3].2.clone().unwrap().unwrap();
    assert!(
        line.starts_with("revision 2 serves with 2 ready replica(s) after 4.0 s"),
        "{line}"
    );
    assert_eq!(d.unwrap().revision, 2);
}

#[test]
fn failures_roll_back_or_remove_a_first_revision() {
    let r = rollout(Strategy::Rolling);
    let crashing = RolloutObserved {
        restarts: Some(("d-2-abcde".into(), CRASH_LOOP_RESTARTS)),
        ..seen(&[(1, 2, 2), (2, 1, 0)])
    };
    // A crash loop of the new revision: back to revision 1.
    let d = deployment(2, 2, started(&r, Some(1), Target::Local));
    let (d, trace) = drive(d, &r, &[(S, crashing.clone())]);
    let d = d.unwrap();
    assert_eq!((d.revision, d.phase.name()), (1, "steady"));
    let why = trace[0].2.clone().unwrap().unwrap_err();
    assert_eq!(
        why,
        "revision 2: replica d-2-abcde exited 4 times; rolled back to revision 1"
    );
    // Nothing served before: the deployment goes.
    let d = deployment(1, 2, started(&r, None, Target::Local));
    let (gone, trace) = drive(d, &r, &[(S, crashing)]);
    assert!(gone.is_none());
    assert!(
        trace[0]
            .2
            .clone()
            .unwrap()
            .unwrap_err()
            .ends_with("the deployment was removed")
    );
    // Never ready: the timeout counts from the phase's start.
    let d = deployment(2, 1, started(&r, Some(1), Target::Local));
    let slow = seen(&[(1, 1, 1), (2, 1, 0)]);
    let (d, trace) = drive(
        d,
        &r,
        &[
            (READY_TIMEOUT_MS - 1, slow.clone()),
            (READY_TIMEOUT_MS, slow),
        ],
    );
    assert_eq!(trace[0].1, "rolling");
    assert!(
        trace[1]
            .2
            .clone()
            .unwrap()
            .unwrap_err()
            .contains("not ready after 600 s")
    );
    assert_eq!(d.unwrap().revision, 1);
    // An unchanged deploy that fails leaves the revision as it is.
    let d = deployment(3, 1, started(&r, Some(3), Target::Local));
    let (d, trace) = drive(d, &r, &[(READY_TIMEOUT_MS, seen(&[(3, 1, 0)]))]);
    assert_eq!(d.unwrap().revision, 3);
    assert!(
        trace[0]
            .2
            .clone()
            .unwrap()
            .unwrap_err()
            .ends_with("left as it is")
    );
}

#[test]
fn a_canary_walks_its_steps_each_judged_after_its_interval() {
    let r = rollout(Strategy::Canary);
    let d = deployment(2, 4, started(&r, Some(1), Target::Local));
    let healthy = |canary: u32| RolloutObserved {
        analysis: Some(analysis(window(100, 0), window(900, 1))),
        ..seen(&[(1, 4, 4), (2, canary, canary)])
    };
    let t = |s: u64| s * S;
    let (d, trace) = drive(
        d,
        &r,
        &[
            // 10% of 4 replicas: one canary replica, not ready yet.
            (t(1), seen(&[(1, 4, 4), (2, 1, 0)])),
            // Ready at 2 s: the analysis starts.
            (t(2), healthy(1)),
            (t(31), healthy(1)),
            // 30 s after: judged, promoted to 50%.
            (t(32), healthy(1)),
            (t(33), healthy(2)),
            (t(63), healthy(2)),
            // 100%: all four, judged, then the stable revision is replaced.
            (t(64), healthy(4)),
            (t(94), healthy(4)),
            (t(95), seen(&[(2, 4, 4)])),
        ],
    );
    let names: Vec<_> = trace.iter().map(|t| t.1).collect();
    assert_eq!(
        names,
        [
            "canary", "canary", "canary", "canary", "canary", "canary", "canary", "rolling",
            "steady"
        ]
    );
    let line = trace[8].2.clone().unwrap().unwrap();
    for step in ["10%: canary error rate 0.0%", "50%:", "100%:"] {
        assert!(line.contains(step), "{line}");
    }
    assert_eq!(d.unwrap().revision, 2);
}

#[test]
fn a_failing_canary_step_rolls_back_to_the_stable_revision() {
    let r = rollout(Strategy::Canary);
    let d = deployment(2, 4, canary_phase(1, Some(10 * S)));
    let bad = RolloutObserved {
        analysis: Some(analysis(window(100, 40), window(900, 0))),
        ..seen(&[(1, 4, 4), (2, 2, 2)])
    };
    let (d, trace) = drive(d, &r, &[(39 * S, bad.clone()), (40 * S, bad)]);
    assert_eq!(trace[0].2, None, "judged only after the interval");
    let why = trace[1].2.clone().unwrap().unwrap_err();
    assert!(
        why.starts_with("revision 2: canary step 50%: canary error rate 40.0%")
            && why.ends_with("rolled back to revision 1"),
        "{why}"
    );
    let d = d.unwrap();
    assert_eq!((d.revision, d.phase.name()), (1, "steady"));
}

#[test]
fn blue_green_switches_when_ready_and_keeps_the_old_revision_for_the_delay() {
    let r = rollout(Strategy::BlueGreen);
    let d = deployment(2, 2, started(&r, Some(1), Target::Local));
    assert_eq!(desired(&d, &r).traffic, Some(0));
    let both = seen(&[(1, 2, 2), (2, 2, 2)]);
    let (d, trace) = drive(
        d,
        &r,
        &[
            (S, seen(&[(1, 2, 2), (2, 2, 1)])),
            (2 * S, both.clone()),
            (61 * S, both.clone()),
            (62 * S, both),
            (63 * S, seen(&[(2, 2, 2)])),
        ],
    );
    let names: Vec<_> = trace.iter().map(|t| t.1).collect();
    assert_eq!(
        names,
        [
            "blue-green",
            "blue-green",
            "blue-green",
            "rolling",
            "steady"
        ]
    );
    let line = trace[4].2.clone().unwrap().unwrap();
    assert!(
        line.contains("switched when 2 replica(s) were ready, revision 1 kept 60s"),
        "{line}"
    );
    assert_eq!(d.unwrap().phase, Phase::Steady);
}

#[test]
fn each_phase_runs_its_share_and_splits_traffic() {
    let r = rollout(Strategy::Canary);
    let progress = Progress {
        run: None,
        previous: Some(1),
        started_at: 0,
        since: 0,
        record: vec![],
        ready: 0,
    };
    let canary = |step| Phase::Canary {
        progress: progress.clone(),
        stable: 1,
        step,
        analysis_from: None,
    };
    let table = [
        (Phase::Steady, 4, None, None),
        (canary(0), 1, Some((1, 4)), Some(10)),
        (canary(1), 2, Some((1, 4)), Some(50)),
        (canary(2), 4, Some((1, 4)), Some(100)),
        (
            Phase::BlueGreen {
                progress: progress.clone(),
                stable: 1,
                switched_at: Some(5),
            },
            4,
            Some((1, 4)),
            Some(100),
        ),
        (Phase::Rolling { progress }, 4, None, None),
    ];
    for (phase, replicas, stable, traffic) in table {
        let name = phase.name();
        let want = desired(&deployment(2, 4, phase), &r);
        assert_eq!(
            (want.replicas, want.stable, want.traffic),
            (replicas, stable, traffic),
            "{name}"
        );
    }
}

#[test]
fn kubernetes_rollouts_follow_the_clusters_status() {
    let r = rollout(Strategy::Rolling);
    let d = deployment(2, 2, started(&r, Some(1), Target::Kubernetes));
    let cluster = |c| RolloutObserved {
        cluster: Some(c),
        ..RolloutObserved::default()
    };
    let (done, trace) = drive(
        d.clone(),
        &r,
        &[
            (S, cluster(ClusterRollout::Progressing)),
            (2 * S, cluster(ClusterRollout::Complete)),
        ],
    );
    assert_eq!(trace[0].1, "rolling");
    assert!(trace[1].2.clone().unwrap().is_ok());
    assert_eq!(done.unwrap().revision, 2);
    let (back, trace) = drive(
        d,
        &r,
        &[(S, cluster(ClusterRollout::Failed("deadline".into())))],
    );
    assert_eq!(back.unwrap().revision, 1);
    assert!(
        trace[0]
            .2
            .clone()
            .unwrap()
            .unwrap_err()
            .contains("did not roll out: deadline")
    );
}

#[test]
fn a_canary_step_whose_counts_were_lost_is_measured_again() {
    let r = rollout(Strategy::Canary);
    let d = deployment(2, 2, canary_phase(0, Some(0)));
    // After a restart the interval has long passed, but nothing measured it.
    let blind = seen(&[(1, 2, 2), (2, 1, 1)]);
    let s = step(&d, &r, &blind, 100 * S).unwrap();
    assert!(s.ended.is_none());
    assert!(s.events[0].contains("measuring it again"), "{:?}", s.events);
    match s.next {
        Some((
            2,
            Phase::Canary {
                step: 0,
                analysis_from: Some(t),
                ..
            },
        )) => assert_eq!(t, 100 * S),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_rollout_that_makes_progress_is_not_timed_out() {
    let r = rollout(Strategy::Rolling);
    let d = deployment(2, 3, started(&r, Some(1), Target::Local));
    let t = READY_TIMEOUT_MS / 2;
    // One replica ready at half the timeout, the next at one and a half.
    let (d, trace) = drive(
        d,
        &r,
        &[
            (t, seen(&[(1, 2, 2), (2, 1, 1)])),
            (3 * t, seen(&[(1, 1, 1), (2, 2, 2)])),
            (5 * t, seen(&[(2, 3, 3)])),
        ],
    );
    assert!(trace[..2].iter().all(|t| t.1 == "rolling" && t.2.is_none()));
    assert!(trace[2].2.clone().unwrap().is_ok(), "{trace:?}");
    assert_eq!(d.unwrap().revision, 2);
    // Stuck on a replica waiting for room: the timeout says why.
    let d = deployment(2, 1, started(&r, Some(1), Target::Local));
    let stuck = RolloutObserved {
        pending: Some((
            "d-2-abcde".into(),
            "needs 2 CPU, most free 0.00 on local".into(),
        )),
        ..seen(&[(1, 1, 1), (2, 1, 0)])
    };
    let s = step(&d, &r, &stuck, READY_TIMEOUT_MS).unwrap();
    assert!(
        s.ended
            .unwrap()
            .unwrap_err()
            .contains("replica d-2-abcde is pending: needs 2 CPU"),
    );
}

fn with_quality(mut r: Rollout, shadow: Option<(f64, u64)>) -> Rollout {
    r.canary.quality = Some(Quality {
        min_live_cosine: Some(0.99),
        min_live_top1: None,
        max_live_kld: None,
        min_samples: 2,
        percent: 25.0,
    });
    r.shadow = shadow.map(|(percent, secs)| Shadow {
        percent,
        duration: Span(Duration::from_secs(secs)),
    });
    r
}

/// Observed during a shadow or canary analysis: `samples` compared
/// requests, each with one vector at `cosine`.
fn compared(counts: &[(u32, u32, u32)], samples: usize, cosine: f32) -> RolloutObserved {
    RolloutObserved {
        analysis: Some(Analysis {
            canary: Window::default(),
            stable: window(100, 0),
            live: LiveQuality::of(&vec![
                LiveSample::Embeddings {
                    cosines: vec![cosine]
                };
                samples
            ]),
        }),
        ..seen(counts)
    }
}

#[test]
fn a_shadow_comes_first_then_the_strategy_and_mirrors_what_the_spec_says() {
    let r = with_quality(rollout(Strategy::Canary), Some((50.0, 20)));
    let d = deployment(2, 4, started(&r, Some(1), Target::Local));
    assert_eq!(d.phase.name(), "shadow");
    // Half the traffic mirrored: two candidate replicas, none of the
    // client traffic.
    let want = desired(&d, &r);
    assert_eq!(
        (want.replicas, want.stable, want.traffic),
        (2, Some((1, 4)), Some(0))
    );
    assert_eq!(
        mirror(&d, &r),
        Some(Mirror {
            stable: 1,
            candidate: 2,
            percent: 50.0
        })
    );
    let t = |s: u64| s * S;
    let (d, trace) = drive(
        d,
        &r,
        &[
            (t(1), seen(&[(1, 4, 4), (2, 2, 1)])),
            // Both ready: the shadow's analysis starts.
            (t(2), compared(&[(1, 4, 4), (2, 2, 2)], 0, 1.0)),
            (t(21), compared(&[(1, 4, 4), (2, 2, 2)], 5, 0.999)),
            // 20 s after: judged on the comparison, then the canary.
            (t(22), compared(&[(1, 4, 4), (2, 2, 2)], 5, 0.999)),
        ],
    );
    let names: Vec<_> = trace.iter().map(|t| t.1).collect();
    assert_eq!(names, ["shadow", "shadow", "shadow", "canary"]);
    let d = d.unwrap();
    let Phase::Canary { progress, step, .. } = &d.phase else {
        panic!("{:?}", d.phase)
    };
    assert_eq!(*step, 0);
    assert!(
        progress.record[0].starts_with("shadow 50%: no client requests")
            && progress.record[0].contains("cosine mean 0.9990"),
        "{:?}",
        progress.record
    );
    // The canary compares its quality share of each step.
    assert_eq!(mirror(&d, &r).unwrap().percent, 25.0);
    // A plain rolling strategy rolls after its shadow; without quality a
    // canary compares nothing.
    let plain = rollout(Strategy::Canary);
    assert_eq!(
        mirror(&deployment(2, 4, canary_phase(0, None)), &plain),
        None
    );
    let r = with_quality(rollout(Strategy::Rolling), Some((100.0, 5)));
    let d = deployment(2, 1, started(&r, Some(1), Target::Local));
    let (d, _) = drive(
        d,
        &r,
        &[
            (t(1), compared(&[(1, 1, 1), (2, 1, 1)], 0, 1.0)),
            (t(6), compared(&[(1, 1, 1), (2, 1, 1)], 3, 1.0)),
        ],
    );
    assert_eq!(d.unwrap().phase.name(), "rolling");
    // A first revision has nothing to shadow.
    assert_eq!(started(&r, None, Target::Local).name(), "rolling");
}

#[test]
fn a_shadow_that_answers_differently_is_rolled_back_with_the_figure() {
    let r = with_quality(rollout(Strategy::Canary), Some((10.0, 20)));
    let d = deployment(2, 2, started(&r, Some(1), Target::Local));
    let t = |s: u64| s * S;
    let (d, trace) = drive(
        d,
        &r,
        &[
            (t(1), compared(&[(1, 2, 2), (2, 1, 1)], 0, 1.0)),
            (t(21), compared(&[(1, 2, 2), (2, 1, 1)], 8, 0.93)),
        ],
    );
    let why = trace[1].2.clone().unwrap().unwrap_err();
    assert!(
        why.contains("shadow 10%: live cosine 0.9300 is below min_live_cosine 0.99")
            && why.ends_with("rolled back to revision 1"),
        "{why}"
    );
    assert_eq!(d.unwrap().revision, 1);
}

#[test]
fn a_step_short_of_compared_requests_waits_then_fails() {
    let r = with_quality(rollout(Strategy::Canary), None);
    let d = deployment(2, 4, canary_phase(0, Some(0)));
    let few = compared(&[(1, 4, 4), (2, 1, 1)], 1, 1.0);
    let t = |s: u64| s * S;
    let late = 30 + SAMPLES_TIMEOUT_MS / S;
    let (_, trace) = drive(
        d.clone(),
        &r,
        &[
            (t(31), few.clone()),
            (t(late - 1), few.clone()),
            (t(late), few),
        ],
    );
    // Past its interval with one of two compared requests: still running.
    assert_eq!((trace[0].1, &trace[0].2), ("canary", &None));
    assert_eq!((trace[1].1, &trace[1].2), ("canary", &None));
    let why = trace[2].2.clone().unwrap().unwrap_err();
    assert!(
        why.contains("too little traffic to judge: 1 of the 2 compared requests needed"),
        "{why}"
    );
    // Enough arrive late: it passes then.
    let (d, _) = drive(
        d,
        &r,
        &[(t(200), compared(&[(1, 4, 4), (2, 1, 1)], 2, 1.0))],
    );
    assert_eq!(d.unwrap().phase, {
        let mut p = canary_phase(1, None);
        if let Phase::Canary { progress, .. } = &mut p {
            progress.since = 200 * S;
            progress.record = vec![format!(
                "10%: no client requests reached the canary; live: {}",
                LiveQuality::of(&[
                    LiveSample::Embeddings { cosines: vec![1.0] },
                    LiveSample::Embeddings { cosines: vec![1.0] }
                ])
                .summary()
            )];
        }
        p
    });
}
