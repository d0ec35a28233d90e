use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::stats::Stats;

fn routes(spec: &[(u32, &str)]) -> Vec<Route> {
    spec.iter()
        .map(|(rev, id)| Route {
            deployment: "m".into(),
            revision: *rev,
            replica: (*id).into(),
            endpoint: format!("127.0.0.1:{}", 1000 + id.len()),
        })
        .collect()
}

fn counter_rng(seed: u64) -> impl FnMut() -> u64 {
    let mut x = seed;
    move || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 11
    }
}

fn picked(p: Pick) -> String {
    match p {
        Pick::Endpoint(e, _) => e.replica.clone(),
        other => panic!("expected a replica, got {other:?}"),
    }
}

#[test]
fn unknown_models_and_empty_deployments_differ() {
    let weights = HashMap::from([(("m".to_owned(), 1), Share::weight(100))]);
    let t = Table::build(&Table::default(), &[], &weights, &Stats::default());
    assert!(matches!(
        t.pick("m", &[], 0, &mut counter_rng(1)),
        Pick::NoReplica
    ));
    assert!(matches!(
        t.pick("x", &[], 0, &mut counter_rng(1)),
        Pick::UnknownModel
    ));
}

#[test]
fn the_less_loaded_of_two_wins() {
    let t = Table::build(
        &Table::default(),
        &routes(&[(1, "a"), (1, "b")]),
        &HashMap::new(),
        &Stats::default(),
    );
    let a = &t.deployments["m"][0].endpoints[0];
    a.outstanding.store(5, Ordering::Relaxed);
    for seed in 0..20 {
        assert_eq!(picked(t.pick("m", &[], 0, &mut counter_rng(seed))), "b");
    }
}

#[test]
fn counters_survive_a_rebuild() {
    let t = Table::build(
        &Table::default(),
        &routes(&[(1, "a")]),
        &HashMap::new(),
        &Stats::default(),
    );
    t.deployments["m"][0].endpoints[0]
        .outstanding
        .store(3, Ordering::Relaxed);
    let t2 = Table::build(
        &t,
        &routes(&[(1, "a"), (1, "b")]),
        &HashMap::new(),
        &Stats::default(),
    );
    assert_eq!(
        t2.deployments["m"][0].endpoints[0]
            .outstanding
            .load(Ordering::Relaxed),
        3
    );
}

#[test]
fn weights_split_traffic() {
    let weights = HashMap::from([
        (("m".to_owned(), 1), Share::weight(90)),
        (("m".to_owned(), 2), Share::weight(10)),
    ]);
    let t = Table::build(
        &Table::default(),
        &routes(&[(1, "a"), (2, "bb")]),
        &weights,
        &Stats::default(),
    );
    let mut rng = counter_rng(7);
    let to_b = (0..10_000)
        .filter(|_| picked(t.pick("m", &[], 0, &mut rng)) == "bb")
        .count();
    assert!(
        (800..1200).contains(&to_b),
        "{to_b} of 10000 to the 10% revision"
    );
    // Weight 0: no traffic while the other revision can take it.
    let weights = HashMap::from([
        (("m".to_owned(), 1), Share::weight(100)),
        (("m".to_owned(), 2), Share::weight(0)),
    ]);
    let t = Table::build(
        &Table::default(),
        &routes(&[(1, "a"), (2, "bb")]),
        &weights,
        &Stats::default(),
    );
    assert!((0..1000).all(|_| picked(t.pick("m", &[], 0, &mut rng)) == "a"));
    // Not even when its only replica was tried (a shadow's answer never
    // reaches a client); ejected, it is still preferred to the shadow.
    assert!(matches!(
        t.pick("m", &["a".into()], 0, &mut rng),
        Pick::NoReplica
    ));
    t.deployments["m"][0].endpoints[0]
        .ejected_until
        .store(100, Ordering::Relaxed);
    assert!((0..100).all(|_| picked(t.pick("m", &[], 50, &mut rng)) == "a"));
    // The stable revision with no ready replica at all: still no client
    // reaches the shadow.
    let t = Table::build(
        &Table::default(),
        &routes(&[(2, "bb")]),
        &weights,
        &Stats::default(),
    );
    assert!(matches!(t.pick("m", &[], 0, &mut rng), Pick::NoReplica));
}

#[test]
fn failures_eject_for_a_while() {
    let t = Table::build(
        &Table::default(),
        &routes(&[(1, "a"), (1, "b")]),
        &HashMap::new(),
        &Stats::default(),
    );
    let a = &t.deployments["m"][0].endpoints[0];
    for _ in 0..3 {
        a.failed(1_000, 3, 10_000);
    }
    let mut rng = counter_rng(3);
    assert!((0..100).all(|_| picked(t.pick("m", &[], 5_000, &mut rng)) == "b"));
    // Back after the ejection ends.
    assert!((0..100).any(|_| picked(t.pick("m", &[], 11_000, &mut rng)) == "a"));
}

proptest! {
    /// Never an ejected replica while another untried one is healthy, and
    /// never one already tried.
    #[test]
    fn never_picks_ejected_or_tried(
        n in 1usize..6, ejected in proptest::collection::vec(any::<bool>(), 6),
        tried in proptest::collection::vec(any::<bool>(), 6), seed in any::<u64>(),
    ) {
        let ids: Vec<String> = (0..n).map(|i| "r".repeat(i + 1)).collect();
        let spec: Vec<(u32, &str)> = ids.iter().map(|s| (1, s.as_str())).collect();
        let t = Table::build(&Table::default(), &routes(&spec), &HashMap::new(), &Stats::default());
        for (e, &ej) in t.deployments["m"][0].endpoints.iter().zip(&ejected) {
            if ej { e.ejected_until.store(100, Ordering::Relaxed); }
        }
        let tried: Vec<String> = ids.iter().zip(&tried).filter(|(_, t)| **t).map(|(i, _)| i.clone()).collect();
        let healthy_left = t.deployments["m"][0].endpoints.iter()
            .any(|e| !tried.contains(&e.replica) && !e.ejected(50));
        match t.pick("m", &tried, 50, &mut counter_rng(seed)) {
            Pick::Endpoint(e, _) => {
                prop_assert!(!tried.contains(&e.replica));
                prop_assert!(!healthy_left || !e.ejected(50));
            }
            Pick::NoReplica => prop_assert!(tried.len() == n),
            Pick::UnknownModel => prop_assert!(false),
        }
    }
}
