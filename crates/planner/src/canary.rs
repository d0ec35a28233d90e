//! The canary analysis: over one step's interval, is the new revision worse
//! than the stable one by more than the spec allows? A pure function of the
//! two revisions' counts; the caller measures them (the gateway's
//! statistics) and acts on the verdict.

use modelship_types::{Canary, LiveQuality, Quality};
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

/// What one step (or the shadow phase) measured since its analysis began:
/// each revision's client traffic, and the live comparison of their answers
/// to the same requests.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Analysis {
    pub canary: Window,
    pub stable: Window,
    pub live: LiveQuality,
}

/// Promote (go on to the next step), roll back, or keep measuring (too few
/// compared requests to judge yet), and why, in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    Promote(String),
    RollBack(String),
    Wait(String),
}

/// Judges one step. The canary fails when its error rate exceeds the
/// stable revision's by more than `max_error_rate` (its failures on
/// compared requests count too), when its p99 is above `max_p99_ms` and
/// above the stable revision's (a slow machine slows both), or when a live
/// figure is out of `quality`'s bounds; with `quality`, a step needs
/// `min_samples` compared requests before it can pass.
pub fn judge_canary(a: &Analysis, spec: &Canary) -> Verdict {
    let (canary, stable) = (&a.canary, &a.stable);
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
    let live = &a.live;
    let compared = live.samples + live.failed;
    // With quality bounds, failures are judged over as many compared
    // requests as the figures are: one early failure is not a verdict.
    let enough = spec
        .quality
        .as_ref()
        .is_none_or(|q| compared >= u64::from(q.min_samples));
    if enough && compared > 0 && live.failed as f64 / compared as f64 > s + spec.max_error_rate {
        return Verdict::RollBack(format!(
            "the new revision failed {} of {compared} compared requests the stable revision answered",
            live.failed
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
    if let Some(q) = &spec.quality {
        if live.samples < u64::from(q.min_samples) {
            return Verdict::Wait(format!(
                "{} of the {} compared requests needed",
                live.samples, q.min_samples
            ));
        }
        if let Some(why) = out_of_bounds(live, q) {
            return Verdict::RollBack(why);
        }
    }
    let traffic = if canary.requests == 0 {
        "no client requests reached the canary".to_owned()
    } else {
        format!(
            "canary error rate {:.1}% over {} requests (stable {:.1}%), p99 {}",
            100.0 * c,
            canary.requests,
            100.0 * s,
            canary.p99_ms.map_or("-".into(), |p| format!("≤ {p:.0} ms"))
        )
    };
    if spec.quality.is_some() || compared > 0 {
        return Verdict::Promote(format!("{traffic}; live: {}", live.summary()));
    }
    Verdict::Promote(match canary.requests {
        0 => format!("{traffic} in this step: nothing to compare"),
        _ => traffic,
    })
}

/// The first live figure outside `q`'s bounds: the figure, its value and
/// the bound, in words.
fn out_of_bounds(live: &LiveQuality, q: &Quality) -> Option<String> {
    if let (Some(min), Some(c)) = (q.min_live_cosine, &live.cosine)
        && (c.mean < min || c.mean.is_nan())
    {
        return Some(format!(
            "live cosine {:.4} is below min_live_cosine {min} (p1 {:.4}, min {:.4}, over {} vectors of {} requests)",
            c.mean, c.p1, c.min, c.vectors, live.samples
        ));
    }
    if let (Some(min), Some(top1)) = (q.min_live_top1, live.top1)
        && (top1 < min || top1.is_nan())
    {
        return Some(format!(
            "live top-1 agreement {top1:.4} is below min_live_top1 {min} (over {} tokens of {} requests)",
            live.tokens, live.samples
        ));
    }
    if let (Some(max), Some(kld)) = (q.max_live_kld, live.kld)
        && (kld > max || kld.is_nan())
    {
        return Some(format!(
            "live KLD {kld:.4} is above max_live_kld {max} (over {} tokens of {} requests)",
            live.tokens, live.samples
        ));
    }
    None
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
        let judge = |canary, stable| {
            judge_canary(
                &Analysis {
                    canary,
                    stable,
                    live: LiveQuality::default(),
                },
                &spec,
            )
        };
        let promote = |c, s| matches!(judge(c, s), Verdict::Promote(_));
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
        match judge(w(10, 5, None), w(10, 0, None)) {
            Verdict::RollBack(why) => {
                assert!(why.contains("50.0%") && why.contains("5 of 10"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn live_quality_verdicts_name_the_figure() {
        use modelship_types::LiveSample;
        let spec = Canary {
            quality: Some(Quality {
                min_live_cosine: Some(0.99),
                min_live_top1: Some(0.9),
                max_live_kld: Some(0.05),
                min_samples: 3,
                percent: 10.0,
            }),
            ..Canary::default()
        };
        let judge = |samples: &[LiveSample]| {
            judge_canary(
                &Analysis {
                    canary: w(50, 0, Some(20.0)),
                    stable: w(50, 0, Some(20.0)),
                    live: LiveQuality::of(samples),
                },
                &spec,
            )
        };
        let close = LiveSample::Embeddings {
            cosines: vec![0.999, 0.998],
        };
        let far = LiveSample::Embeddings {
            cosines: vec![0.95, 0.96],
        };
        // Too few compared requests: keep measuring, whatever they show.
        assert!(matches!(
            judge(std::slice::from_ref(&far)),
            Verdict::Wait(_)
        ));
        assert!(matches!(
            judge(&[close.clone(), close.clone(), close.clone()]),
            Verdict::Promote(_)
        ));
        match judge(&[far.clone(), far.clone(), far]) {
            Verdict::RollBack(why) => assert!(
                why.contains("live cosine 0.9550") && why.contains("min_live_cosine 0.99"),
                "{why}"
            ),
            other => panic!("{other:?}"),
        }
        let tokens = |agree, kld| LiveSample::Generation {
            tokens: 100,
            top1_agree: agree,
            logprob_diff: 0.0,
            kld,
            greedy_match: None,
        };
        assert!(matches!(
            judge(&[tokens(99, 1.0), tokens(98, 1.0), tokens(97, 1.0)]),
            Verdict::Promote(_)
        ));
        match judge(&[tokens(80, 1.0), tokens(85, 1.0), tokens(90, 1.0)]) {
            Verdict::RollBack(why) => assert!(why.contains("top-1 agreement 0.8500"), "{why}"),
            other => panic!("{other:?}"),
        }
        match judge(&[tokens(99, 9.0), tokens(99, 9.0), tokens(99, 9.0)]) {
            Verdict::RollBack(why) => assert!(why.contains("live KLD 0.0900"), "{why}"),
            other => panic!("{other:?}"),
        }
        // One early failure is not a verdict; a candidate that keeps
        // failing what the stable revision answers is.
        assert!(matches!(judge(&[LiveSample::Failed]), Verdict::Wait(_)));
        match judge(&[close.clone(), LiveSample::Failed, LiveSample::Failed, close]) {
            Verdict::RollBack(why) => assert!(why.contains("failed 2 of 4"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
