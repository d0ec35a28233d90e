//! The admission queue: deployments that do not fit wait in arrival order;
//! when capacity frees, the head is admitted if all its replicas fit, then
//! the next, and so on. A deployment never starts half-placed, and a later,
//! smaller one never overtakes a waiting one (no starvation of large ones).

use modelship_types::{Node, Pending, Placement};
use serde::Serialize;

use crate::placement::{ReplicaRequest, place_onto};

/// The decision for a queue, given what runs now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Admission {
    /// Deployments admitted now, in order, with where their replicas go.
    pub admitted: Vec<(String, Vec<Placement>)>,
    /// Those still waiting, in order, each with why: the first names what
    /// it lacks, the others wait behind it.
    pub waiting: Vec<Pending>,
}

/// Admits from the head of `queue` (deployment name, its replicas) onto
/// `nodes` already running `running`.
pub fn admit(
    nodes: &[Node],
    running: &[(ReplicaRequest, String)],
    queue: &[(String, Vec<ReplicaRequest>)],
) -> Admission {
    let mut running = running.to_vec();
    let mut admitted = Vec::new();
    let mut rest = queue.iter();
    for (name, replicas) in rest.by_ref() {
        let plan = place_onto(nodes, &running, replicas);
        if let Some(short) = plan.pending.first() {
            let head = Pending {
                replica: name.clone(),
                reason: short.reason.clone(),
            };
            let behind = rest.map(|(n, _)| Pending {
                replica: n.clone(),
                reason: format!("waits behind {name}"),
            });
            return Admission {
                admitted,
                waiting: std::iter::once(head).chain(behind).collect(),
            };
        }
        for p in &plan.placements {
            let r = replicas
                .iter()
                .find(|r| r.id == p.replica)
                .expect("placed from this list");
            running.push((r.clone(), p.node.clone()));
        }
        admitted.push((name.clone(), plan.placements));
    }
    Admission {
        admitted,
        waiting: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelship_types::Bytes;
    use std::collections::BTreeMap;

    const GIB: u64 = 1 << 30;

    fn names(waiting: &[Pending]) -> Vec<&str> {
        waiting.iter().map(|p| p.replica.as_str()).collect()
    }

    fn deployment(name: &str, replicas: usize, gib: u64) -> (String, Vec<ReplicaRequest>) {
        let rs = (0..replicas)
            .map(|i| ReplicaRequest {
                id: format!("{name}-{i}"),
                deployment: name.into(),
                cpu: 1.0,
                memory: gib * GIB,
                gpus: 0,
                gpu_memory: 0,
                selector: BTreeMap::new(),
            })
            .collect();
        (name.into(), rs)
    }

    fn nodes() -> Vec<Node> {
        vec![Node {
            name: "a".into(),
            cpu: 8.0,
            memory: Bytes(8 * GIB),
            gpus: vec![],
            labels: BTreeMap::new(),
        }]
    }

    #[test]
    fn waits_in_order_and_is_admitted_when_capacity_frees() {
        let big = deployment("big", 2, 3);
        let huge = deployment("huge", 1, 5);
        let small = deployment("small", 1, 1);
        let queue = vec![big.clone(), huge.clone(), small.clone()];
        // 8 GiB: big (6) fits, huge (5) does not, small (1) would but waits behind it.
        let first = admit(&nodes(), &[], &queue);
        assert_eq!(
            first
                .admitted
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["big"]
        );
        assert_eq!(names(&first.waiting), ["huge", "small"]);
        assert!(
            first.waiting[0].reason.contains("memory"),
            "{:?}",
            first.waiting
        );
        assert_eq!(first.waiting[1].reason, "waits behind huge");
        // Nothing changed: the same decision (the function is pure).
        let running: Vec<(ReplicaRequest, String)> =
            big.1.iter().map(|r| (r.clone(), "a".to_string())).collect();
        let again = admit(&nodes(), &running, &queue[1..]);
        assert!(again.admitted.is_empty());
        assert_eq!(names(&again.waiting), ["huge", "small"]);
        // big stops: huge, then small, start.
        let freed = admit(&nodes(), &[], &queue[1..]);
        assert_eq!(
            freed
                .admitted
                .iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>(),
            ["huge", "small"]
        );
        assert!(freed.waiting.is_empty());
    }

    #[test]
    fn a_deployment_is_admitted_whole_or_not_at_all() {
        let two = deployment("two", 2, 5);
        let a = admit(&nodes(), &[], &[two]);
        assert!(a.admitted.is_empty());
        assert_eq!(names(&a.waiting), ["two"]);
    }
}
