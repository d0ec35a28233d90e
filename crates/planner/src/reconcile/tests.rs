use proptest::prelude::*;

use super::*;

fn replica(id: &str, revision: u32, state: ReplicaState) -> Replica {
    Replica {
        id: id.into(),
        deployment: "m".into(),
        revision,
        endpoint: String::new(),
        pid: None,
        state,
        restarts: 0,
        exited_at: None,
        started_at: 0,
        target: Default::default(),
        reason: None,
        reserved: None,
    }
}

fn desired(revision: u32, replicas: u32, max_surge: u32, max_unavailable: u32) -> Desired {
    Desired {
        deployment: "m".into(),
        revision,
        replicas,
        rollout: Rollout {
            max_surge,
            max_unavailable,
            ..Rollout::default()
        },
        stable: None,
        traffic: None,
        blocked: false,
    }
}

fn start(revision: u32) -> Action {
    Action::Start {
        deployment: "m".into(),
        revision,
    }
}

fn stop(id: &str) -> Action {
    Action::Stop { replica: id.into() }
}

#[test]
fn steady_state_needs_nothing() {
    let observed = [
        replica("a", 1, ReplicaState::Ready),
        replica("b", 1, ReplicaState::Ready),
    ];
    assert!(reconcile(&[desired(1, 2, 1, 0)], &observed, 0).is_empty());
}

#[test]
fn table() {
    use ReplicaState::*;
    let cases: Vec<(&str, Desired, Vec<Replica>, Vec<Action>)> = vec![
        (
            "fresh deployment",
            desired(1, 2, 1, 0),
            vec![],
            vec![start(1), start(1)],
        ),
        (
            "scale down: the starting one goes first",
            desired(1, 1, 1, 0),
            vec![replica("a", 1, Ready), replica("b", 1, Starting)],
            vec![stop("b")],
        ),
        (
            "rollout begins with one surge replica",
            desired(2, 2, 1, 0),
            vec![replica("a", 1, Ready), replica("b", 1, Ready)],
            vec![start(2)],
        ),
        (
            "new replica not ready yet: wait",
            desired(2, 2, 1, 0),
            vec![
                replica("a", 1, Ready),
                replica("b", 1, Ready),
                replica("c", 2, Starting),
            ],
            vec![],
        ),
        (
            "new replica ready: one old goes, one more new starts",
            desired(2, 2, 1, 0),
            vec![
                replica("a", 1, Ready),
                replica("b", 1, Ready),
                replica("c", 2, Ready),
            ],
            vec![stop("a"), start(2)],
        ),
        (
            "no surge, one unavailable: stop first",
            desired(2, 2, 0, 1),
            vec![replica("a", 1, Ready), replica("b", 1, Ready)],
            vec![stop("a"), start(2)],
        ),
        (
            "an old replica that crashed is replaced, not restarted",
            desired(2, 2, 1, 0),
            vec![replica("a", 1, Exited), replica("b", 1, Ready)],
            // b plus two new is n + surge.
            vec![stop("a"), start(2), start(2)],
        ),
        (
            "terminating replicas count for nothing",
            desired(1, 1, 1, 0),
            vec![replica("a", 1, Terminating)],
            vec![start(1)],
        ),
    ];
    for (what, d, observed, want) in cases {
        assert_eq!(reconcile(&[d], &observed, 0), want, "{what}");
    }
}

#[test]
fn a_stable_revision_keeps_running_beside_a_canary() {
    use ReplicaState::*;
    let mut d = desired(2, 1, 1, 0);
    d.stable = Some((1, 2));
    let observed = [replica("a", 1, Ready), replica("b", 1, Ready)];
    assert_eq!(reconcile(&[d.clone()], &observed, 0), vec![start(2)]);
    // The stable revision is kept at its count (and not rolled away), other
    // revisions go.
    let observed = [
        replica("a", 1, Ready),
        replica("c", 2, Ready),
        replica("z", 0, Ready),
    ];
    assert_eq!(reconcile(&[d], &observed, 0), vec![start(1), stop("z")]);
}

#[test]
fn a_deleted_deployment_is_stopped() {
    let observed = [
        replica("a", 1, ReplicaState::Ready),
        replica("b", 1, ReplicaState::Terminating),
    ];
    assert_eq!(reconcile(&[], &observed, 0), vec![stop("a")]);
}

#[test]
fn exited_replicas_restart_after_a_growing_backoff() {
    let mut r = replica("a", 1, ReplicaState::Exited);
    r.exited_at = Some(10_000);
    r.restarts = 2; // waits 4 s
    let d = [desired(1, 1, 1, 0)];
    assert!(reconcile(&d, &[r.clone()], 13_999).is_empty());
    assert_eq!(
        reconcile(&d, &[r], 14_000),
        vec![Action::Restart {
            replica: "a".into()
        }]
    );
    assert_eq!(restart_backoff_ms(0), 1_000);
    assert_eq!(restart_backoff_ms(3), 8_000);
    assert_eq!(restart_backoff_ms(40), BACKOFF_MAX_MS);
}

/// Applies actions the way the controller does: starts become starting
/// replicas, stops terminate at once.
fn apply(observed: &mut Vec<Replica>, actions: &[Action], next_id: &mut u32) {
    for a in actions {
        match a {
            Action::Start { revision, .. } => {
                *next_id += 1;
                observed.push(replica(
                    &format!("r{next_id}"),
                    *revision,
                    ReplicaState::Starting,
                ));
            }
            Action::Restart { replica } => {
                let r = observed.iter_mut().find(|r| &r.id == replica).unwrap();
                r.state = ReplicaState::Starting;
            }
            Action::Stop { replica } => observed.retain(|r| &r.id != replica),
        }
    }
}

proptest! {
    /// A rollout from any number of ready old replicas ends with exactly the
    /// desired number of new ones, never runs more than n + surge, never
    /// stops a ready replica below n - unavailable, and a plan applied
    /// changes nothing when applied again.
    #[test]
    fn rollouts_converge_within_their_budget(
        old in 0u32..6, n in 0u32..6, surge in 0u32..3, unavailable in 0u32..3,
    ) {
        prop_assume!(surge + unavailable > 0);
        let d = [desired(2, n, surge, unavailable)];
        let mut observed: Vec<Replica> =
            (0..old).map(|i| replica(&format!("o{i}"), 1, ReplicaState::Ready)).collect();
        let mut next_id = 0;
        for _ in 0..50 {
            let actions = reconcile(&d, &observed, 0);
            let ready_before = observed.iter().filter(|r| r.state == ReplicaState::Ready).count();
            apply(&mut observed, &actions, &mut next_id);
            prop_assert!(observed.len() <= (n + surge).max(old) as usize, "{observed:?}");
            let ready_after = observed.iter().filter(|r| r.state == ReplicaState::Ready).count();
            let floor = (n.saturating_sub(unavailable) as usize).min(ready_before);
            prop_assert!(ready_after >= floor, "ready {ready_before} -> {ready_after}, floor {floor}");
            // Idempotent: nothing observed changed, so nothing more to do
            // beyond what is waiting for readiness.
            let again = reconcile(&d, &observed, 0);
            prop_assert!(again.iter().all(|a| !matches!(a, Action::Start { .. })) || actions.is_empty(),
                "started twice: {actions:?} then {again:?}");
            if actions.is_empty() && observed.iter().all(|r| r.state == ReplicaState::Ready) {
                break;
            }
            for r in observed.iter_mut() {
                r.state = ReplicaState::Ready; // every started replica becomes ready
            }
        }
        prop_assert_eq!(observed.len(), n as usize);
        prop_assert!(observed.iter().all(|r| r.revision == 2 && r.state == ReplicaState::Ready));
    }
}

#[test]
fn a_rollout_whose_new_replica_waits_for_room_replaces_one_at_a_time() {
    // One replica of revision 1 serving, revision 2's waiting for room that
    // only revision 1's end would free.
    let observed = [
        replica("m-1-a", 1, ReplicaState::Ready),
        replica("m-2-b", 2, ReplicaState::Pending),
    ];
    let mut d = desired(2, 1, 1, 0);
    assert!(
        reconcile(std::slice::from_ref(&d), &observed, 0).is_empty(),
        "within its budget it waits for the new replica"
    );
    d.blocked = true;
    assert_eq!(
        reconcile(&[d], &observed, 0),
        [Action::Stop {
            replica: "m-1-a".into()
        }]
    );
}
