//! Concurrency-based autoscaling (Knative's KPA): the replicas a deployment
//! needs from the average in-flight requests over a stable window, or over
//! a short panic window when a burst asks for far more than is running. A
//! pure function of the samples, the time and the panic state; the caller
//! samples the gateway and carries the state between calls.

use std::collections::VecDeque;

use modelship_types::Autoscale;
use serde::Serialize;

/// In-flight requests of a deployment at one moment.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at_ms: u64,
    pub concurrency: f64,
}

/// What the autoscaler carries between decisions.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScalerState {
    pub samples: VecDeque<Sample>,
    /// In panic mode until then: scale up on the panic window, never down.
    pub panic_until: Option<u64>,
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
    let clamp = |n: f64| (n.ceil().max(0.0) as u32).clamp(spec.min, spec.max);
    let Some(stable_avg) = average(&state.samples, now.saturating_sub(stable_ms)) else {
        return ScaleDecision {
            replicas: current.clamp(spec.min, spec.max),
            panic: false,
            reason: "no samples yet".into(),
        };
    };
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
}
