//! Placement speed: 10,000 replicas of 100 deployments on 1,000 nodes, a
//! quarter of them with a zone selector. Prints one JSON line per run.
//!
//!   cargo run --release -p modelship-planner --example place_bench

use std::collections::BTreeMap;
use std::time::Instant;

use modelship_planner::{ReplicaRequest, place};
use modelship_types::{Bytes, Node};

fn main() {
    const GIB: u64 = 1 << 30;
    let nodes: Vec<Node> = (0..1000)
        .map(|i| Node {
            name: format!("node-{i:04}"),
            cpu: 16.0 + (i % 3) as f64 * 16.0,
            memory: Bytes((64 + (i % 4) * 64) * GIB),
            gpus: Vec::new(),
            labels: [("zone".to_string(), format!("z{}", i % 4))].into(),
        })
        .collect();
    let replicas: Vec<ReplicaRequest> = (0..10_000)
        .map(|i| ReplicaRequest {
            id: format!("d{}-{}", i % 100, i / 100),
            deployment: format!("d{}", i % 100),
            cpu: 0.5 * (1 + i % 8) as f64,
            memory: (1 + (i as u64 * 7919) % 16) * GIB / 2,
            gpus: 0,
            gpu_memory: 0,
            selector: if i % 4 == 0 {
                [("zone".to_string(), format!("z{}", i % 3))].into()
            } else {
                BTreeMap::new()
            },
        })
        .collect();
    for _ in 0..5 {
        let t = Instant::now();
        let plan = place(&nodes, &replicas);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        println!(
            "{{\"replicas\": {}, \"nodes\": {}, \"placed\": {}, \"pending\": {}, \"ms\": {ms:.1}}}",
            replicas.len(),
            nodes.len(),
            plan.placements.len(),
            plan.pending.len()
        );
    }
}
