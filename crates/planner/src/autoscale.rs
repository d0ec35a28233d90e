//! Concurrency-based autoscaling (Knative's KPA): the replicas a deployment
//! needs from the average in-flight requests over a stable window, or over
//! a short panic window when a burst asks for far more than is running;
//! with `min: 0`, zero after an idle window without a request, and one as
//! soon as a request waits. A pure function of the samples, the time and
//! the scaler's state; the caller samples the gateway and carries the state
//! between calls. [`make_room`] picks idle deployments to scale to zero
//! when a waking one does not fit (Ollama's keep-alive).

use std::collections::VecDeque;

use modelship_types::Autoscale;
use serde::Serialize;

/// A deployment's load at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    /// Requests in flight, and those waiting for a replica to wake.
    pub concurrency: f64,
    /// Requests received since the gateway started (it only grows): a change
    /// between samples is activity even when none was in flight at either.
    pub requests: u64,
}

/// What the autoscaler carries between decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScalerState {
    pub samples: VecDeque<Sample>,
    /// In panic mode until then: scale up on the panic window, never down.
    pub panic_until: Option<u64>,
    /// When a request was last in flight or received (the first sample
    /// counts: nothing scales to zero before a whole idle window passed).
    pub last_active: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScaleDecision {
    pub replicas: u32,
    pub panic: bool,
    pub reason: String,
}

impl ScalerState {
    /// Adds a sample and forgets those older than the stable window.
    pub fn observe(&mut self, spec: &Autoscale, sample: Sample) {
        let received = self
            .samples
            .back()
            .is_none_or(|last| last.requests != sample.requests);
        if sample.concurrency > 0.0 || received || self.last_active.is_none() {
            self.last_active = Some(sample.at_ms);
        }
        self.samples.push_back(sample);
        let horizon = sample
            .at_ms
            .saturating_sub(spec.stable_window.0.as_millis() as u64);
        while self.samples.front().is_some_and(|s| s.at_ms < horizon) {
            self.samples.pop_front();
        }
    }
}

fn average(samples: &VecDeque<Sample>, since: u64) -> Option<f64> {
    let (sum, n) = samples
        .iter()
        .filter(|s| s.at_ms >= since)
        .fold((0.0, 0usize), |(sum, n), s| (sum + s.concurrency, n + 1));
    (n > 0).then(|| sum / n as f64)
}

/// The replicas to run at `now` with `current` running.
pub fn autoscale(
    spec: &Autoscale,
    state: &mut ScalerState,
    now: u64,
    current: u32,
) -> ScaleDecision {
    let stable_ms = spec.stable_window.0.as_millis() as u64;
    let panic_ms = spec.panic_window.0.as_millis() as u64;
    let idle_ms = spec.idle_window.0.as_millis() as u64;
    // Zero only after a whole idle window; a request waiting means one.
    let idle = state.last_active.is_some_and(|t| now >= t + idle_ms);
    let min = if spec.min == 0 && !idle { 1 } else { spec.min };
    let clamp = |n: f64| (n.ceil().max(0.0) as u32).clamp(min, spec.max);
    let Some(stable_avg) = average(&state.samples, now.saturating_sub(stable_ms)) else {
        return ScaleDecision {
            replicas: current.clamp(spec.min, spec.max),
            panic: false,
            reason: "no samples yet".into(),
        };
    };
    if spec.min == 0 && idle && state.panic_until.is_none() {
        return ScaleDecision {
            replicas: 0,
            panic: false,
            reason: format!("no request for {}: scaled to zero", spec.idle_window),
        };
    }
    // Asleep (idle, or put to sleep to make room for another): only a
    // request wakes it.
    let waiting = state.samples.back().is_some_and(|s| s.concurrency > 0.0);
    if spec.min == 0 && current == 0 && !waiting {
        return ScaleDecision {
            replicas: 0,
            panic: false,
            reason: "at zero until a request comes".into(),
        };
    }
    let panic_avg = average(&state.samples, now.saturating_sub(panic_ms)).unwrap_or(stable_avg);
    let want_stable = stable_avg / spec.target_concurrency;
    let want_panic = panic_avg / spec.target_concurrency;
    if want_panic >= spec.panic_threshold * current.max(1) as f64 {
        // (Re)enter panic: it lasts at least one stable window.
        state.panic_until = Some(now + stable_ms);
    }
    if state.panic_until.is_some_and(|until| now >= until) {
        state.panic_until = None;
    }
    if state.panic_until.is_some() {
        let replicas = clamp(want_panic).max(current.min(spec.max));
        return ScaleDecision {
            replicas,
            panic: true,
            reason: format!(
                "panic: {panic_avg:.1} in flight over {} ÷ {} per replica wants {:.1} (≥ {}× the {current} running)",
                spec.panic_window, spec.target_concurrency, want_panic, spec.panic_threshold
            ),
        };
    }
    ScaleDecision {
        replicas: clamp(want_stable),
        panic: false,
        reason: format!(
            "{stable_avg:.1} in flight over {} ÷ {} per replica = {want_stable:.1} → {} (min {}, max {})",
            spec.stable_window,
            spec.target_concurrency,
            clamp(want_stable),
            spec.min,
            spec.max
        ),
    }
}

/// A deployment that may be scaled to zero to make room: idle, `min: 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idle {
    pub deployment: String,
    /// When it last had a request (ms).
    pub last_active: u64,
    /// What its replicas hold on the node.
    pub memory: u64,
}

/// The idle deployments to scale to zero, least recently used first, so
/// that `needed` more bytes free up; none when all of them together would
/// not free enough (then nothing is stopped for nothing).
pub fn make_room(needed: u64, idle: &[Idle]) -> Vec<String> {
    let mut by_age: Vec<&Idle> = idle.iter().collect();
    by_age.sort_by(|a, b| (a.last_active, &a.deployment).cmp(&(b.last_active, &b.deployment)));
    let mut freed = 0u64;
    let mut chosen = Vec::new();
    for i in by_age {
        if freed >= needed {
            break;
        }
        freed = freed.saturating_add(i.memory);
        chosen.push(i.deployment.clone());
    }
    if freed >= needed { chosen } else { Vec::new() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use modelship_types::Span;
    use std::time::Duration;

    fn spec() -> Autoscale {
        Autoscale {
            min: 1,
            max: 10,
            target_concurrency: 2.0,
            stable_window: Span(Duration::from_secs(60)),
            panic_window: Span(Duration::from_secs(6)),
            panic_threshold: 2.0,
            idle_window: Span(Duration::from_secs(30)),
        }
    }

    /// Feeds one sample a second of `concurrency` from `from` to `to` (s),
    /// deciding each second; returns the last decision.
    fn run(
        s: &Autoscale,
        st: &mut ScalerState,
        current: &mut u32,
        from: u64,
        to: u64,
        concurrency: f64,
    ) -> ScaleDecision {
        let mut last = None;
        for t in from..to {
            st.observe(
                s,
                Sample {
                    at_ms: t * 1000,
                    concurrency,
                    // One new request a second while there is load.
                    requests: if concurrency > 0.0 { t } else { 0 },
                },
            );
            let d = autoscale(s, st, t * 1000, *current);
            *current = d.replicas;
            last = Some(d);
        }
        last.unwrap()
    }

    #[test]
    fn steady_load_sizes_by_the_stable_average() {
        let (s, mut st, mut n) = (spec(), ScalerState::default(), 1);
        let d = run(&s, &mut st, &mut n, 0, 120, 6.0);
        assert_eq!(d.replicas, 3, "{d:?}"); // 6 in flight / 2 per replica
        assert!(!d.panic);
    }

    #[test]
    fn a_burst_panics_and_scales_up_within_the_panic_window() {
        let (s, mut st, mut n) = (spec(), ScalerState::default(), 1);
        run(&s, &mut st, &mut n, 0, 60, 1.0);
        assert_eq!(n, 1);
        // 20 in flight: the stable average moves slowly, the panic one fast.
        let d = run(&s, &mut st, &mut n, 60, 63, 20.0);
        assert!(d.panic, "{d:?}");
        assert!(d.replicas >= 5, "{d:?}");
        let d = run(&s, &mut st, &mut n, 63, 70, 20.0);
        assert_eq!(d.replicas, 10, "{d:?}");
    }

    #[test]
    fn panic_never_scales_down_and_ends_after_a_stable_window() {
        let (s, mut st, mut n) = (spec(), ScalerState::default(), 1);
        run(&s, &mut st, &mut n, 0, 10, 20.0);
        assert_eq!(n, 10);
        // Load drops at once: panic holds the replicas...
        let d = run(&s, &mut st, &mut n, 10, 40, 0.0);
        assert!(d.panic && d.replicas == 10, "{d:?}");
        // ...until a stable window without a burst has passed.
        let d = run(&s, &mut st, &mut n, 40, 140, 0.0);
        assert!(!d.panic && d.replicas == 1, "{d:?}");
    }

    #[test]
    fn bounds_hold() {
        let s = Autoscale {
            min: 2,
            max: 4,
            ..spec()
        };
        let (mut st, mut n) = (ScalerState::default(), 2);
        assert_eq!(run(&s, &mut st, &mut n, 0, 100, 0.0).replicas, 2);
        assert_eq!(run(&s, &mut st, &mut n, 100, 300, 100.0).replicas, 4);
        let d = autoscale(&s, &mut ScalerState::default(), 0, 9);
        assert_eq!(d.replicas, 4, "no samples: clamp what runs");
    }

    #[test]
    fn min_zero_scales_to_zero_after_an_idle_window_and_back_on_demand() {
        let s = Autoscale { min: 0, ..spec() };
        let (mut st, mut n) = (ScalerState::default(), 1);
        // Idle from the start: one replica until the idle window (30 s) passes.
        let d = run(&s, &mut st, &mut n, 0, 29, 0.0);
        assert_eq!(d.replicas, 1, "{d:?}");
        let d = run(&s, &mut st, &mut n, 29, 31, 0.0);
        assert_eq!(d.replicas, 0, "{d:?}");
        assert!(d.reason.contains("scaled to zero"), "{d:?}");
        // A request waits: one replica at once, whatever the averages say.
        let d = run(&s, &mut st, &mut n, 31, 32, 1.0);
        assert_eq!(d.replicas, 1, "{d:?}");
        // Short requests between samples still count as activity.
        st.observe(
            &s,
            Sample {
                at_ms: 40_000,
                concurrency: 0.0,
                requests: 7,
            },
        );
        st.observe(
            &s,
            Sample {
                at_ms: 55_000,
                concurrency: 0.0,
                requests: 9,
            },
        );
        assert_eq!(autoscale(&s, &mut st, 70_000, 1).replicas, 1);
        assert_eq!(autoscale(&s, &mut st, 85_000, 1).replicas, 0);
        // Put to sleep (by another's need for room) while busy a moment ago:
        // it stays asleep until a request waits for it.
        let mut st = ScalerState::default();
        st.observe(
            &s,
            Sample {
                at_ms: 0,
                concurrency: 0.0,
                requests: 3,
            },
        );
        assert_eq!(autoscale(&s, &mut st, 1_000, 0).replicas, 0);
        st.observe(
            &s,
            Sample {
                at_ms: 2_000,
                concurrency: 1.0,
                requests: 3,
            },
        );
        assert_eq!(autoscale(&s, &mut st, 2_000, 0).replicas, 1);
        // With min 1 it never goes to zero.
        let one = Autoscale { min: 1, ..spec() };
        let (mut st, mut n) = (ScalerState::default(), 1);
        assert_eq!(run(&one, &mut st, &mut n, 0, 200, 0.0).replicas, 1);
    }

    #[test]
    fn room_is_made_from_the_least_recently_used_and_only_if_it_suffices() {
        let idle = |name: &str, at, gib: u64| Idle {
            deployment: name.into(),
            last_active: at,
            memory: gib << 30,
        };
        let pool = [idle("b", 20, 2), idle("a", 10, 1), idle("c", 30, 4)];
        assert_eq!(make_room(1 << 30, &pool), ["a"]);
        assert_eq!(make_room(2 << 30, &pool), ["a", "b"]);
        assert_eq!(make_room(7 << 30, &pool), ["a", "b", "c"]);
        assert!(
            make_room(8 << 30, &pool).is_empty(),
            "cannot suffice: stop none"
        );
        assert!(make_room(0, &pool).is_empty());
    }
}
