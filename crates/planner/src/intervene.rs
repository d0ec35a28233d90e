//! An operator's hand on a rollout in progress, as `kubectl argo rollouts
//! promote` and `abort`: the same [`Step`] a controller tick would record,
//! decided from the recorded phase alone. Promoting skips what the current
//! step was waiting for (its analysis, the blue-green scale-down delay);
//! aborting fails the rollout, which goes back to the revision that served
//! before it.

use modelship_types::{Deployment, Phase, Progress, Rollout, Strategy};

use crate::rollout::{Step, fail};

/// What an operator asks of a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intervention {
    /// On to the next step; `full`: past every step, replacing the stable
    /// revision at once.
    Promote {
        full: bool,
    },
    Abort,
}

/// Why a rollout cannot be promoted or aborted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub String);

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// The step `what` makes of `d`'s rollout at `now`; `rollout` is the
/// revision's.
pub fn intervene(
    d: &Deployment,
    rollout: &Rollout,
    what: Intervention,
    now: u64,
) -> Result<Step, Refused> {
    let Some(progress) = d.phase.progress() else {
        return Err(steady(d));
    };
    match what {
        Intervention::Abort => Ok(fail(d, progress, "aborted by an operator".to_owned())),
        Intervention::Promote { full } => promote(d, rollout, progress, full, now),
    }
}

fn steady(d: &Deployment) -> Refused {
    Refused(format!(
        "no rollout in progress: revision {} serves",
        d.revision
    ))
}

fn promote(
    d: &Deployment,
    rollout: &Rollout,
    progress: &Progress,
    full: bool,
    now: u64,
) -> Result<Step, Refused> {
    let rev = d.revision;
    let moved = |line: String| {
        let mut p = Progress {
            since: now,
            ..progress.clone()
        };
        p.record.push(line);
        p
    };
    let replace = |progress: Progress, stable: u32, events: Vec<String>| {
        let mut events = events;
        events.push(format!(
            "revision {rev} promoted by an operator: revision {stable}'s replicas are replaced"
        ));
        Step {
            next: Some((rev, Phase::Rolling { progress })),
            events,
            ended: None,
        }
    };
    let step = match &d.phase {
        Phase::Steady => return Err(steady(d)),
        Phase::Rolling { .. } => {
            return Err(Refused(format!(
                "revision {rev} is replacing the replicas already; abort it to go back"
            )));
        }
        Phase::Shadow { stable, .. } => {
            let stable = *stable;
            let progress = moved("shadow: promoted by an operator".to_owned());
            let line = "shadow promoted by an operator before it was judged".to_owned();
            match rollout.strategy {
                _ if full => replace(progress, stable, vec![line]),
                Strategy::Canary => Step {
                    next: Some((
                        rev,
                        Phase::Canary {
                            progress,
                            stable,
                            step: 0,
                            analysis_from: None,
                        },
                    )),
                    events: vec![line],
                    ended: None,
                },
                Strategy::BlueGreen => Step {
                    next: Some((
                        rev,
                        Phase::BlueGreen {
                            progress,
                            stable,
                            switched_at: None,
                        },
                    )),
                    events: vec![line],
                    ended: None,
                },
                Strategy::Rolling => replace(progress, stable, vec![line]),
            }
        }
        Phase::Canary { stable, step, .. } => {
            let p = crate::rollout::percent(rollout, *step);
            let line = format!("canary step {p}% promoted by an operator before it was judged");
            let progress = moved(format!("{p}%: promoted by an operator"));
            let last = *step as usize + 1 >= rollout.canary.steps.len();
            if full || last {
                replace(progress, *stable, vec![line])
            } else {
                Step {
                    next: Some((
                        rev,
                        Phase::Canary {
                            progress,
                            stable: *stable,
                            step: step + 1,
                            analysis_from: None,
                        },
                    )),
                    events: vec![line],
                    ended: None,
                }
            }
        }
        Phase::BlueGreen {
            stable,
            switched_at: None,
            ..
        } => {
            return Err(Refused(format!(
                "revision {rev} takes the traffic as soon as its replicas are ready; \
                 promote after the switch to retire revision {stable} at once"
            )));
        }
        Phase::BlueGreen {
            stable,
            switched_at: Some(_),
            ..
        } => Step {
            next: Some((
                rev,
                Phase::Rolling {
                    progress: moved(format!("revision {stable} retired early by an operator")),
                },
            )),
            events: vec![format!(
                "retiring revision {stable}: promoted by an operator before its scale-down delay"
            )],
            ended: None,
        },
    };
    Ok(step)
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelship_types::Canary;

    fn progress() -> Progress {
        Progress {
            run: Some(7),
            previous: Some(1),
            started_at: 1_000,
            since: 1_000,
            record: Vec::new(),
            ready: 0,
        }
    }

    fn deployment(phase: Phase) -> Deployment {
        Deployment {
            name: "m".into(),
            revision: 2,
            replicas: 2,
            phase,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn canary(steps: Vec<u32>) -> Rollout {
        Rollout {
            strategy: Strategy::Canary,
            canary: Canary {
                steps,
                ..Canary::default()
            },
            ..Rollout::default()
        }
    }

    fn at_step(step: u32) -> Phase {
        Phase::Canary {
            progress: progress(),
            stable: 1,
            step,
            analysis_from: Some(2_000),
        }
    }

    fn promote(full: bool) -> Intervention {
        Intervention::Promote { full }
    }

    #[test]
    fn promoting_a_canary_moves_one_step_and_restarts_its_analysis() {
        let d = deployment(at_step(0));
        let s = intervene(&d, &canary(vec![10, 50, 100]), promote(false), 5_000).unwrap();
        let Some((
            2,
            Phase::Canary {
                step,
                analysis_from,
                progress,
                ..
            },
        )) = s.next
        else {
            panic!("not the next canary step: {:?}", s.next);
        };
        assert_eq!((step, analysis_from, progress.since), (1, None, 5_000));
        assert_eq!(progress.record, ["10%: promoted by an operator"]);
        assert_eq!(s.ended, None, "the rollout goes on");
    }

    #[test]
    fn promoting_the_last_step_or_in_full_replaces_the_stable_revision() {
        let rollout = canary(vec![10, 50]);
        for (phase, full) in [(at_step(1), false), (at_step(0), true)] {
            let s = intervene(&deployment(phase), &rollout, promote(full), 5_000).unwrap();
            assert!(
                matches!(s.next, Some((2, Phase::Rolling { .. }))),
                "{:?}",
                s.next
            );
            assert!(s.events.iter().any(|e| e.contains("revision 1's replicas")));
        }
    }

    #[test]
    fn a_shadow_promoted_begins_its_strategy() {
        let shadow = Phase::Shadow {
            progress: progress(),
            stable: 1,
            analysis_from: Some(2_000),
        };
        let d = deployment(shadow);
        let cases = [
            (Strategy::Canary, false, "canary"),
            (Strategy::BlueGreen, false, "blue-green"),
            (Strategy::Rolling, false, "rolling"),
            (Strategy::Canary, true, "rolling"),
        ];
        for (strategy, full, phase) in cases {
            let rollout = Rollout {
                strategy,
                ..canary(vec![10, 100])
            };
            let s = intervene(&d, &rollout, promote(full), 5_000).unwrap();
            let (rev, next) = s.next.unwrap();
            assert_eq!((rev, next.name()), (2, phase), "{strategy:?} full={full}");
        }
    }

    #[test]
    fn blue_green_is_promoted_only_after_its_switch() {
        let rollout = Rollout {
            strategy: Strategy::BlueGreen,
            ..Rollout::default()
        };
        let waiting = deployment(Phase::BlueGreen {
            progress: progress(),
            stable: 1,
            switched_at: None,
        });
        assert!(intervene(&waiting, &rollout, promote(false), 5_000).is_err());
        let switched = deployment(Phase::BlueGreen {
            progress: progress(),
            stable: 1,
            switched_at: Some(3_000),
        });
        let s = intervene(&switched, &rollout, promote(false), 5_000).unwrap();
        assert!(matches!(s.next, Some((2, Phase::Rolling { .. }))));
    }

    #[test]
    fn aborting_goes_back_to_the_revision_before_and_fails_the_run() {
        for phase in [
            at_step(1),
            Phase::Rolling {
                progress: progress(),
            },
        ] {
            let s = intervene(
                &deployment(phase),
                &canary(vec![10]),
                Intervention::Abort,
                5_000,
            )
            .unwrap();
            assert_eq!(s.next, Some((1, Phase::Steady)));
            let Some(Err(why)) = s.ended else {
                panic!("the run is not failed: {:?}", s.ended);
            };
            assert!(why.contains("aborted by an operator"), "{why}");
        }
    }

    #[test]
    fn a_steady_deployment_or_a_rolling_update_is_not_promoted() {
        let rollout = canary(vec![10]);
        assert!(intervene(&deployment(Phase::Steady), &rollout, Intervention::Abort, 0).is_err());
        assert!(intervene(&deployment(Phase::Steady), &rollout, promote(true), 0).is_err());
        let rolling = deployment(Phase::Rolling {
            progress: progress(),
        });
        assert!(intervene(&rolling, &rollout, promote(false), 0).is_err());
    }
}
