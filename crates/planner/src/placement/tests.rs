use super::*;
use modelship_types::Gpu;
use proptest::prelude::*;

const GIB: u64 = 1 << 30;

fn node(name: &str, cpu: f64, mem_gib: u64, labels: &[(&str, &str)]) -> Node {
    Node {
        name: name.into(),
        cpu,
        memory: Bytes(mem_gib * GIB),
        gpus: Vec::new(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn replica(id: &str, deployment: &str, cpu: f64, memory: u64) -> ReplicaRequest {
    ReplicaRequest {
        id: id.into(),
        deployment: deployment.into(),
        cpu,
        memory,
        gpus: 0,
        gpu_memory: 0,
        selector: BTreeMap::new(),
    }
}

fn node_of<'a>(plan: &'a Plan, id: &str) -> Option<&'a str> {
    plan.placements
        .iter()
        .find(|p| p.replica == id)
        .map(|p| p.node.as_str())
}

#[test]
fn replicas_of_one_deployment_spread_across_nodes() {
    let nodes = [
        node("a", 8.0, 16, &[]),
        node("b", 8.0, 16, &[]),
        node("c", 8.0, 16, &[]),
    ];
    let rs: Vec<_> = (0..3)
        .map(|i| replica(&format!("m-{i}"), "m", 1.0, GIB))
        .collect();
    let plan = place(&nodes, &rs);
    let mut used: Vec<&str> = rs.iter().map(|r| node_of(&plan, &r.id).unwrap()).collect();
    used.sort();
    assert_eq!(used, ["a", "b", "c"]);
}

#[test]
fn selectors_and_gpus_are_honoured() {
    let mut g = node("gpu", 8.0, 64, &[("accel", "h200")]);
    g.gpus = vec![Gpu {
        kind: "h200".into(),
        memory: Bytes(80 * GIB),
    }];
    let nodes = [node("cpu", 64.0, 256, &[]), g];
    let mut r = replica("llm-0", "llm", 2.0, 8 * GIB);
    r.gpus = 1;
    r.gpu_memory = 40 * GIB;
    r.selector = [("accel".to_string(), "h200".to_string())].into();
    let mut second = r.clone();
    second.id = "llm-1".into();
    let plan = place(&nodes, &[r, second]);
    assert_eq!(node_of(&plan, "llm-0"), Some("gpu"));
    assert_eq!(plan.pending.len(), 1);
    assert!(plan.pending[0].reason.contains("GPU"), "{:?}", plan.pending);
}

#[test]
fn pending_reasons_name_what_is_missing() {
    let nodes = [
        node("node-a", 4.0, 1, &[]),
        node("node-b", 4.0, 2, &[("zone", "b")]),
    ];
    let big = replica("big-0", "big", 1.0, 3 * GIB + GIB / 10);
    let mut lost = replica("lost-0", "lost", 1.0, GIB / 2);
    lost.selector = [("zone".to_string(), "z".to_string())].into();
    let hungry = replica("cpu-0", "cpu", 16.0, GIB / 2);
    let plan = place(&nodes, &[big, lost, hungry]);
    let reason = |id: &str| {
        plan.pending
            .iter()
            .find(|p| p.replica == id)
            .unwrap()
            .reason
            .clone()
    };
    assert_eq!(
        reason("big-0"),
        "needs 3.10 GiB memory, largest free 2.00 GiB on node-b"
    );
    assert_eq!(reason("lost-0"), "no node matches node_selector zone=z");
    assert!(
        reason("cpu-0").starts_with("needs 16 CPU, most free 4.00"),
        "{}",
        reason("cpu-0")
    );
}

#[test]
fn running_replicas_take_capacity() {
    let nodes = [node("a", 2.0, 4, &[])];
    let running = vec![(replica("old-0", "old", 1.0, 3 * GIB), "a".to_string())];
    let plan = place_onto(&nodes, &running, &[replica("new-0", "new", 1.0, 2 * GIB)]);
    assert!(plan.placements.is_empty());
    assert!(plan.pending[0].reason.contains("largest free 1.00 GiB"));
}

/// A small random cluster and workload from a seed (SplitMix64).
fn instance(seed: u64, nodes_n: usize, replicas_n: usize) -> (Vec<Node>, Vec<ReplicaRequest>) {
    let mut s = seed;
    let mut next = move |n: u64| {
        s = s.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = s;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (z ^ (z >> 31)) % n
    };
    let nodes = (0..nodes_n)
        .map(|i| {
            let zone = if next(2) == 0 { "a" } else { "b" };
            node(
                &format!("n{i}"),
                1.0 + next(8) as f64,
                1 + next(8),
                &[("zone", zone)],
            )
        })
        .collect();
    let replicas = (0..replicas_n)
        .map(|i| {
            let mut r = replica(
                &format!("r{i}"),
                &format!("d{}", next(3)),
                0.5 * (1 + next(4)) as f64,
                (1 + next(6)) * GIB / 2,
            );
            if next(4) == 0 {
                r.selector = [(
                    "zone".to_string(),
                    if next(2) == 0 { "a" } else { "b" }.to_string(),
                )]
                .into();
            }
            r
        })
        .collect();
    (nodes, replicas)
}

/// The most replicas any assignment places (exhaustive search).
fn optimum(nodes: &[Node], replicas: &[ReplicaRequest]) -> usize {
    fn go(
        i: usize,
        nodes: &[Node],
        rs: &[ReplicaRequest],
        free: &mut Vec<Free>,
        placed: usize,
        best: &mut usize,
    ) {
        if placed + (rs.len() - i) <= *best {
            return;
        }
        if i == rs.len() {
            *best = placed;
            return;
        }
        for n in 0..nodes.len() {
            if matches(&nodes[n], &rs[i].selector) && free[n].fits(&rs[i]) {
                let saved = free[n].clone();
                free[n].take(&rs[i]);
                go(i + 1, nodes, rs, free, placed + 1, best);
                free[n] = saved;
            }
        }
        go(i + 1, nodes, rs, free, placed, best);
    }
    let mut free: Vec<Free> = nodes.iter().map(Free::of).collect();
    let mut best = 0;
    go(0, nodes, replicas, &mut free, 0, &mut best);
    best
}

#[test]
fn places_at_least_98_percent_of_the_optimum_on_small_instances() {
    let (mut ours, mut best) = (0, 0);
    for seed in 0..1000 {
        let (nodes, replicas) = instance(seed, 3, 7);
        ours += place(&nodes, &replicas).placements.len();
        best += optimum(&nodes, &replicas);
    }
    let ratio = ours as f64 / best as f64;
    eprintln!("placed {ours} of an optimal {best}: {ratio:.4}");
    assert!(ratio >= 0.98, "{ratio}");
}

proptest! {
    /// No node ever gives more than it has, and no replica lands on a node
    /// its selector rejects; every replica is placed or pending, once.
    #[test]
    fn never_overcommits_and_honours_selectors(seed in any::<u64>(), n in 1usize..6, r in 0usize..20) {
        let (nodes, replicas) = instance(seed, n, r);
        let plan = place(&nodes, &replicas);
        prop_assert_eq!(plan.placements.len() + plan.pending.len(), replicas.len());
        for node in &nodes {
            let on: Vec<&ReplicaRequest> = plan.placements.iter()
                .filter(|p| p.node == node.name)
                .map(|p| replicas.iter().find(|r| r.id == p.replica).unwrap())
                .collect();
            let cpu: f64 = on.iter().map(|r| r.cpu).sum();
            let mem: u64 = on.iter().map(|r| r.memory).sum();
            prop_assert!(cpu <= node.cpu + 1e-6 && mem <= node.memory.0);
            for r in on {
                prop_assert!(matches(node, &r.selector));
            }
        }
        prop_assert_eq!(place(&nodes, &replicas), plan, "deterministic");
    }
}
