//! The canary analysis: over one step's interval, is the new revision worse
//! than the stable one by more than the spec allows? A pure function of the
//! two revisions' counts; the caller measures them (the gateway's
//! statistics) and acts on the verdict.

use modelship_types::Canary;
use serde::Serialize;

/// What one revision answered over an interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Window {
    pub requests: u64,
    /// 5xx answers and requests no replica answered.
    pub errors: u64,
    pub p99_ms: Option<f64>,
}

impl Window {
    pub fn error_rate(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.errors as f64 / self.requests as f64
        }
    }
}

/// Promote (go on to the next step) or roll back, and why, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    Promote(String),
    RollBack(String),
}

/// Judges one step. The canary fails when its error rate exceeds the
/// stable revision's by more than `max_error_rate`, or when its p99 is above
/// `max_p99_ms` and above the stable revision's (a slow machine slows both).
pub fn judge_canary(canary: &Window, stable: &Window, spec: &Canary) -> Verdict {
    let (c, s) = (canary.error_rate(), stable.error_rate());
    if canary.requests > 0 && c > s + spec.max_error_rate {
        return Verdict::RollBack(format!(
            "canary error rate {:.1}% ({} of {}) exceeds the stable revision's {:.1}% by more than {:.1}%",
            100.0 * c,
            canary.errors,
            canary.requests,
            100.0 * s,
            100.0 * spec.max_error_rate
        ));
    }
    if let (Some(limit), Some(p99)) = (spec.max_p99_ms, canary.p99_ms)
        && p99 > limit
        && stable.p99_ms.is_none_or(|sp| p99 > sp)
    {
        return Verdict::RollBack(format!(
            "canary p99 {p99:.0} ms exceeds {limit:.0} ms (stable revision: {})",
            stable
                .p99_ms
                .map_or("no requests".into(), |p| format!("{p:.0} ms"))
        ));
    }
    if canary.requests == 0 {
        return Verdict::Promote(
            "no requests reached the canary in this step: nothing to compare".into(),
        );
    }
    Verdict::Promote(format!(
        "canary error rate {:.1}% over {} requests (stable {:.1}%), p99 {}",
        100.0 * c,
        canary.requests,
        100.0 * s,
        canary.p99_ms.map_or("-".into(), |p| format!("≤ {p:.0} ms"))
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(requests: u64, errors: u64, p99: Option<f64>) -> Window {
        Window {
            requests,
            errors,
            p99_ms: p99,
        }
    }

    #[test]
    fn verdicts() {
        let spec = Canary {
            max_p99_ms: Some(500.0),
            ..Canary::default()
        }; // 1% error budget
        let promote = |c, s| matches!(judge_canary(&c, &s, &spec), Verdict::Promote(_));
        assert!(promote(w(100, 0, Some(20.0)), w(900, 0, Some(20.0))));
        assert!(
            !promote(w(100, 50, Some(20.0)), w(900, 0, Some(20.0))),
            "half the canary's requests fail"
        );
        assert!(
            promote(w(100, 5, Some(20.0)), w(900, 45, Some(20.0))),
            "as bad as stable: the cause is elsewhere"
        );
        assert!(
            !promote(w(100, 0, Some(1000.0)), w(900, 0, Some(50.0))),
            "slow canary"
        );
        assert!(
            promote(w(100, 0, Some(1000.0)), w(900, 0, Some(2000.0))),
            "slower stable: load, not the canary"
        );
        assert!(promote(w(0, 0, None), w(900, 0, Some(20.0))));
        match judge_canary(&w(10, 5, None), &w(10, 0, None), &spec) {
            Verdict::RollBack(why) => {
                assert!(why.contains("50.0%") && why.contains("5 of 10"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
}
