//! Replicas onto nodes: largest first, each onto the node that fits it, that
//! honours its node selector, that runs the fewest replicas of the same
//! deployment (spread), and that it fills best (least memory left), then by
//! node order. Deterministic: the same input gives the same plan.

use std::collections::{BTreeMap, HashMap};

use modelship_types::{Bytes, Node, Pending, Placement};
use serde::Serialize;

/// One replica to place.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ReplicaRequest {
    /// Unique, e.g. `minilm-0`.
    pub id: String,
    pub deployment: String,
    pub cpu: f64,
    pub memory: u64,
    pub gpus: u32,
    /// Memory each of its GPUs must have free.
    pub gpu_memory: u64,
    pub selector: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub placements: Vec<Placement>,
    pub pending: Vec<Pending>,
}

/// What is left on a node.
#[derive(Debug, Clone)]
struct Free {
    cpu: f64,
    memory: u64,
    /// Free memory of each unused GPU.
    gpus: Vec<u64>,
}

impl Free {
    fn of(n: &Node) -> Self {
        Self {
            cpu: n.cpu,
            memory: n.memory.0,
            gpus: n.gpus.iter().map(|g| g.memory.0).collect(),
        }
    }

    fn usable_gpus(&self, r: &ReplicaRequest) -> usize {
        self.gpus.iter().filter(|&&m| m >= r.gpu_memory).count()
    }

    fn fits(&self, r: &ReplicaRequest) -> bool {
        // A small tolerance keeps 0.1 + 0.2 CPUs from failing a 0.3 node.
        r.cpu <= self.cpu + 1e-9
            && r.memory <= self.memory
            && (r.gpus == 0 || self.usable_gpus(r) >= r.gpus as usize)
    }

    fn take(&mut self, r: &ReplicaRequest) {
        self.cpu -= r.cpu;
        // What already runs may exceed the node (a node shrank, limits
        // changed): nothing is left then, not a wrapped-around plenty.
        self.memory = self.memory.saturating_sub(r.memory);
        for _ in 0..r.gpus {
            // The smallest GPU that is big enough.
            if let Some(i) = (0..self.gpus.len())
                .filter(|&i| self.gpus[i] >= r.gpu_memory)
                .min_by_key(|&i| self.gpus[i])
            {
                self.gpus.swap_remove(i);
            }
        }
    }
}

fn matches(node: &Node, selector: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| node.labels.get(k) == Some(v))
}

/// Places `replicas` on `nodes` given what `already` runs there (placements
/// of replicas not in `replicas`, with their requests).
pub fn place(nodes: &[Node], replicas: &[ReplicaRequest]) -> Plan {
    place_onto(nodes, &[], replicas)
}

/// [`place`] with capacity already taken by `running` replicas.
pub fn place_onto(
    nodes: &[Node],
    running: &[(ReplicaRequest, String)],
    replicas: &[ReplicaRequest],
) -> Plan {
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    let mut free: Vec<Free> = nodes.iter().map(Free::of).collect();
    // Replicas per (deployment, node), deployments numbered in order of
    // first appearance: a flat table, not a map, in the hot loop.
    let mut deployments: HashMap<&str, usize> = HashMap::new();
    for r in running.iter().map(|(r, _)| r).chain(replicas) {
        let next = deployments.len();
        deployments.entry(r.deployment.as_str()).or_insert(next);
    }
    let mut spread = Spread {
        nodes: nodes.len(),
        counts: vec![0; deployments.len() * nodes.len()],
    };
    for (r, node) in running {
        if let Some(&i) = index.get(node.as_str()) {
            free[i].take(r);
            spread.add(deployments[r.deployment.as_str()], i);
        }
    }
    // Eligible nodes per distinct selector, computed once.
    let mut eligible: HashMap<&BTreeMap<String, String>, Vec<usize>> = HashMap::new();
    for r in replicas {
        eligible.entry(&r.selector).or_insert_with(|| {
            (0..nodes.len())
                .filter(|&i| matches(&nodes[i], &r.selector))
                .collect()
        });
    }
    let ctx = Context {
        nodes,
        eligible: &eligible,
        deployments: &deployments,
    };
    // Greedy placement in several orders; the plan that places the most
    // replicas wins (ties: the earlier, the first spreads best). Largest
    // first packs big replicas while room is left; most-constrained first
    // serves selectors before others take their nodes; smallest first
    // places the most when not all fit. Spreading is the first choice only
    // in the first order: elsewhere it breaks ties of best fit.
    let size = |r: &ReplicaRequest| (r.memory, r.gpus, (r.cpu * 1e6) as u64);
    let choices = |r: &ReplicaRequest| eligible[&r.selector].len();
    type Order<'o> = Box<dyn Fn(&ReplicaRequest, &ReplicaRequest) -> std::cmp::Ordering + 'o>;
    let orders: [(Order, bool); 5] = [
        (
            Box::new(|a, b| size(b).cmp(&size(a)).then(a.id.cmp(&b.id))),
            true,
        ),
        (
            Box::new(|a, b| size(b).cmp(&size(a)).then(a.id.cmp(&b.id))),
            false,
        ),
        (
            Box::new(|a, b| {
                choices(a)
                    .cmp(&choices(b))
                    .then(size(b).cmp(&size(a)))
                    .then(a.id.cmp(&b.id))
            }),
            false,
        ),
        (
            Box::new(|a, b| {
                choices(a)
                    .cmp(&choices(b))
                    .then(size(a).cmp(&size(b)))
                    .then(a.id.cmp(&b.id))
            }),
            false,
        ),
        (
            Box::new(|a, b| size(a).cmp(&size(b)).then(a.id.cmp(&b.id))),
            false,
        ),
    ];
    let mut best: Option<Plan> = None;
    for (order, spread_first) in &orders {
        let mut sorted: Vec<&ReplicaRequest> = replicas.iter().collect();
        sorted.sort_by(|a, b| order(a, b));
        let plan = ctx.greedy(&sorted, free.clone(), spread.clone(), *spread_first);
        if best
            .as_ref()
            .is_none_or(|b| plan.placements.len() > b.placements.len())
        {
            best = Some(plan);
        }
        if best.as_ref().is_some_and(|b| b.pending.is_empty()) {
            break;
        }
    }
    best.unwrap_or_default()
}

struct Context<'a> {
    nodes: &'a [Node],
    eligible: &'a HashMap<&'a BTreeMap<String, String>, Vec<usize>>,
    deployments: &'a HashMap<&'a str, usize>,
}

#[derive(Clone)]
struct Spread {
    nodes: usize,
    counts: Vec<u32>,
}

impl Spread {
    fn get(&self, deployment: usize, node: usize) -> u32 {
        self.counts[deployment * self.nodes + node]
    }

    fn add(&mut self, deployment: usize, node: usize) {
        self.counts[deployment * self.nodes + node] += 1;
    }
}

impl Context<'_> {
    /// Places `order` one by one onto the eligible node that fits, runs the
    /// fewest of the same deployment, and is left with the least memory.
    fn greedy(
        &self,
        order: &[&ReplicaRequest],
        mut free: Vec<Free>,
        mut spread: Spread,
        spread_first: bool,
    ) -> Plan {
        let mut plan = Plan::default();
        for &r in order {
            let candidates = &self.eligible[&r.selector];
            let d = self.deployments[r.deployment.as_str()];
            let best = candidates
                .iter()
                .copied()
                .filter(|&i| free[i].fits(r))
                // One integer key keeps the scan over a thousand nodes
                // branch-free: count (32 bits), bytes left (64), node (32),
                // or bytes left first.
                .min_by_key(|&i| {
                    let (same, left) = (
                        spread.get(d, i) as u128,
                        (free[i].memory - r.memory) as u128,
                    );
                    if spread_first {
                        (same << 96) | (left << 32) | i as u128
                    } else {
                        (left << 64) | (same << 32) | i as u128
                    }
                });
            match best {
                Some(i) => {
                    free[i].take(r);
                    spread.add(d, i);
                    plan.placements.push(Placement {
                        replica: r.id.clone(),
                        node: self.nodes[i].name.clone(),
                    });
                }
                None => plan.pending.push(Pending {
                    replica: r.id.clone(),
                    reason: why_not(self.nodes, &free, candidates, r),
                }),
            }
        }
        plan
    }
}

/// Why no node takes `r`: its selector, or the resource it runs out of, with
/// the best the cluster offers.
fn why_not(nodes: &[Node], free: &[Free], candidates: &[usize], r: &ReplicaRequest) -> String {
    if candidates.is_empty() {
        let sel: Vec<String> = r.selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
        return format!("no node matches node_selector {}", sel.join(","));
    }
    let most = |key: &dyn Fn(&Free) -> f64| {
        candidates
            .iter()
            .copied()
            .max_by(|&a, &b| key(&free[a]).total_cmp(&key(&free[b])).then(b.cmp(&a)))
            .expect("candidates is not empty")
    };
    let m = most(&|f| f.memory as f64);
    if free[m].memory < r.memory {
        return format!(
            "needs {} memory, largest free {} on {}",
            Bytes(r.memory),
            Bytes(free[m].memory),
            nodes[m].name
        );
    }
    let c = most(&|f| f.cpu);
    if free[c].cpu + 1e-9 < r.cpu {
        return format!(
            "needs {} CPU, most free {:.2} on {}",
            r.cpu,
            free[c].cpu.max(0.0),
            nodes[c].name
        );
    }
    let g = most(&|f| f.usable_gpus(r) as f64);
    if free[g].usable_gpus(r) < r.gpus as usize {
        return format!(
            "needs {} GPU(s) with {} free, at most {} on {}",
            r.gpus,
            Bytes(r.gpu_memory),
            free[g].usable_gpus(r),
            nodes[g].name
        );
    }
    format!(
        "needs {} memory and {} CPU on one node; no node has both free",
        Bytes(r.memory),
        r.cpu
    )
}

#[cfg(test)]
mod tests;
