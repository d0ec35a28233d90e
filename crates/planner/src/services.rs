//! Scaling services: for engines that run a replicated service per revision
//! (Docker Swarm; Kubernetes' ReplicaSets are the same idea), the replica
//! count each revision's service should have now. A rolling update is the
//! new service growing within the surge budget while old ones shrink within
//! the unavailability budget — Kubernetes' Deployment controller's rule —
//! and a canary or blue-green rollout holds both revisions at their counts.
//! The engine starts, restarts and places the tasks.

use std::collections::BTreeMap;

use crate::Desired;

/// One revision's service as observed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceObserved {
    pub revision: u32,
    /// The count it is set to.
    pub replicas: u32,
    /// Tasks that answer their readiness check.
    pub ready: u32,
}

/// The count each revision's service should be set to; a revision mapped to
/// 0 (or absent from `observed` and the result) has no service.
pub fn scale_services(d: &Desired, observed: &[ServiceObserved]) -> BTreeMap<u32, u32> {
    let mut out: BTreeMap<u32, u32> = observed.iter().map(|s| (s.revision, 0)).collect();
    if let Some((stable, count)) = d.stable {
        out.insert(d.revision, d.replicas);
        out.insert(stable, count);
        return out;
    }
    let n = d.replicas;
    let new = observed
        .iter()
        .find(|s| s.revision == d.revision)
        .copied()
        .unwrap_or(ServiceObserved {
            revision: d.revision,
            replicas: 0,
            ready: 0,
        });
    let mut old: Vec<ServiceObserved> = observed
        .iter()
        .filter(|s| s.revision != d.revision && s.replicas > 0)
        .copied()
        .collect();
    if old.is_empty() || new.ready >= n {
        out.insert(d.revision, n);
        return out;
    }
    let old_total: u32 = old.iter().map(|s| s.replicas).sum();
    // Grow the new service as far as the surge allows (never shrink it
    // mid-rollout, unless the count itself went down).
    let room = (n + d.rollout.max_surge).saturating_sub(old_total);
    let new_count = new.replicas.max(room).min(n);
    out.insert(d.revision, new_count);
    // Shrink old services, oldest first: tasks that are not ready go
    // freely; ready ones only while enough stay ready.
    let min_ready = n.saturating_sub(d.rollout.max_unavailable);
    let ready_total =
        new.ready.min(new_count) + old.iter().map(|s| s.ready.min(s.replicas)).sum::<u32>();
    let mut budget = ready_total.saturating_sub(min_ready);
    old.sort_by_key(|s| s.revision);
    for s in old {
        let ready = s.ready.min(s.replicas);
        let take = ready.min(budget);
        budget -= take;
        out.insert(s.revision, ready - take);
    }
    out
}

#[cfg(test)]
mod tests {
    use modelship_types::Rollout;
    use proptest::prelude::*;

    use super::*;

    fn desired(revision: u32, replicas: u32, surge: u32, unavailable: u32) -> Desired {
        Desired {
            deployment: "m".into(),
            revision,
            replicas,
            rollout: Rollout {
                max_surge: surge,
                max_unavailable: unavailable,
                ..Rollout::default()
            },
            stable: None,
            traffic: None,
            blocked: false,
        }
    }

    fn obs(revision: u32, replicas: u32, ready: u32) -> ServiceObserved {
        ServiceObserved {
            revision,
            replicas,
            ready,
        }
    }

    #[test]
    fn table() {
        type Case = (&'static str, Desired, Vec<ServiceObserved>, Vec<(u32, u32)>);
        let cases: &[Case] = &[
            ("first deploy", desired(1, 3, 1, 0), vec![], vec![(1, 3)]),
            (
                "scale up",
                desired(1, 5, 1, 0),
                vec![obs(1, 3, 3)],
                vec![(1, 5)],
            ),
            (
                "scale down",
                desired(1, 2, 1, 0),
                vec![obs(1, 3, 3)],
                vec![(1, 2)],
            ),
            (
                "rolling starts: one surge",
                desired(2, 3, 1, 0),
                vec![obs(1, 3, 3)],
                vec![(1, 3), (2, 1)],
            ),
            (
                "one new ready: one old goes",
                desired(2, 3, 1, 0),
                vec![obs(1, 3, 3), obs(2, 1, 1)],
                vec![(1, 2), (2, 1)],
            ),
            (
                "then the next new starts",
                desired(2, 3, 1, 0),
                vec![obs(1, 2, 2), obs(2, 1, 1)],
                vec![(1, 2), (2, 2)],
            ),
            (
                "all new ready: old gone",
                desired(2, 3, 1, 0),
                vec![obs(1, 1, 1), obs(2, 3, 3)],
                vec![(1, 0), (2, 3)],
            ),
            (
                "no surge: an old one goes first",
                desired(2, 2, 0, 1),
                vec![obs(1, 2, 2)],
                vec![(1, 1), (2, 0)],
            ),
            (
                "unready old tasks go freely",
                desired(2, 2, 1, 0),
                vec![obs(1, 2, 0)],
                vec![(1, 0), (2, 1)],
            ),
            (
                "crashing new: old stays",
                desired(2, 2, 1, 0),
                vec![obs(1, 2, 2), obs(2, 1, 0)],
                vec![(1, 2), (2, 1)],
            ),
            (
                "canary holds both",
                Desired {
                    stable: Some((1, 4)),
                    traffic: None,
                    blocked: false,
                    ..desired(2, 1, 1, 0)
                },
                vec![obs(1, 4, 4), obs(3, 1, 1)],
                vec![(1, 4), (2, 1), (3, 0)],
            ),
        ];
        for (name, d, observed, want) in cases {
            let got: Vec<(u32, u32)> = scale_services(d, observed).into_iter().collect();
            assert_eq!(&got, want, "{name}");
        }
    }

    proptest! {
        /// Tasks become ready one step after their service is scaled: the
        /// rollout converges to the new revision alone, never runs more than
        /// n + surge tasks, and keeps n - unavailable ready throughout.
        #[test]
        fn rolling_converges_within_budgets(n in 1u32..8, surge in 0u32..3, unavailable in 0u32..3) {
            prop_assume!(surge + unavailable > 0);
            let d = desired(2, n, surge, unavailable);
            let mut observed = vec![obs(1, n, n)];
            for _ in 0..(4 * n + 8) {
                let next = scale_services(&d, &observed);
                let total: u32 = next.values().sum();
                prop_assert!(total <= n + surge, "{next:?}");
                // Ready now: what was ready and is still wanted.
                let ready: u32 = observed.iter().map(|s| s.ready.min(next.get(&s.revision).copied().unwrap_or(0))).sum();
                prop_assert!(ready >= n.saturating_sub(unavailable), "{observed:?} -> {next:?}");
                observed = next.iter().filter(|(_, c)| **c > 0).map(|(&r, &c)| obs(r, c, c)).collect();
            }
            prop_assert_eq!(observed, vec![obs(2, n, n)]);
        }

        /// Applying the result to a converged state changes nothing.
        #[test]
        fn converged_is_a_fixed_point(n in 1u32..8) {
            let d = desired(3, n, 1, 0);
            let observed = vec![obs(3, n, n)];
            let next: Vec<(u32, u32)> = scale_services(&d, &observed).into_iter().collect();
            prop_assert_eq!(next, vec![(3, n)]);
        }
    }
}
