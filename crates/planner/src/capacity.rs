//! SLO-driven sizing: from a replica's measured capacity profile (throughput
//! and latency at increasing concurrency, `modelship bench`) and a target
//! (`slo: { rps, p99_ms }`) to a replica count, with the reasoning.

use modelship_types::Slo;
use serde::{Deserialize, Serialize};

/// One concurrency level of a capacity profile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CapacityPoint {
    pub concurrency: u32,
    /// Completed requests per second.
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What one replica sustains, as measured.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapacityProfile {
    pub model: String,
    /// The request the profile was measured with (e.g. "1 text" or "16 tokens").
    pub request: String,
    pub threads: u32,
    pub points: Vec<CapacityPoint>,
}

/// A replica count and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sizing {
    pub replicas: u32,
    /// The operating point each replica runs at.
    pub point: CapacityPoint,
    pub reason: String,
}

/// Replicas for `slo`: each replica runs at the highest-throughput point of
/// its profile whose p99 meets the target; enough replicas to carry the
/// rate. `None` when no point meets the latency target.
pub fn size_for_slo(profile: &CapacityProfile, slo: &Slo) -> Result<Sizing, String> {
    let point = profile
        .points
        .iter()
        .filter(|p| p.p99_ms <= slo.p99_ms && p.rps > 0.0)
        .max_by(|a, b| {
            a.rps
                .total_cmp(&b.rps)
                .then(b.concurrency.cmp(&a.concurrency))
        })
        .copied()
        .ok_or_else(|| {
            let best = profile
                .points
                .iter()
                .map(|p| p.p99_ms)
                .fold(f64::INFINITY, f64::min);
            format!(
                "no measured concurrency meets p99 ≤ {} ms (the best p99 of {} is {best:.0} ms)",
                slo.p99_ms, profile.model
            )
        })?;
    let replicas = (slo.rps / point.rps).ceil().max(1.0) as u32;
    Ok(Sizing {
        replicas,
        point,
        reason: format!(
            "slo {} rps at p99 ≤ {} ms: one replica sustains {:.1} rps at concurrency {} (p99 {:.0} ms), so ⌈{} / {:.1}⌉ = {replicas}",
            slo.rps, slo.p99_ms, point.rps, point.concurrency, point.p99_ms, slo.rps, point.rps
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile() -> CapacityProfile {
        let p = |concurrency, rps, p99_ms| CapacityPoint {
            concurrency,
            rps,
            p50_ms: p99_ms / 2.0,
            p99_ms,
        };
        CapacityProfile {
            model: "m".into(),
            request: "1 text".into(),
            threads: 2,
            points: vec![p(1, 100.0, 15.0), p(4, 300.0, 40.0), p(16, 400.0, 120.0)],
        }
    }

    #[test]
    fn picks_the_fastest_point_within_the_latency_target() {
        let s = size_for_slo(
            &profile(),
            &Slo {
                rps: 1000.0,
                p99_ms: 50.0,
            },
        )
        .unwrap();
        assert_eq!((s.replicas, s.point.concurrency), (4, 4)); // ⌈1000 / 300⌉
        let s = size_for_slo(
            &profile(),
            &Slo {
                rps: 1000.0,
                p99_ms: 200.0,
            },
        )
        .unwrap();
        assert_eq!((s.replicas, s.point.concurrency), (3, 16)); // ⌈1000 / 400⌉
        assert!(s.reason.contains("⌈1000 / 400.0⌉ = 3"), "{}", s.reason);
        let s = size_for_slo(
            &profile(),
            &Slo {
                rps: 1.0,
                p99_ms: 20.0,
            },
        )
        .unwrap();
        assert_eq!(s.replicas, 1);
    }

    #[test]
    fn an_unreachable_latency_is_an_error_naming_the_best() {
        let e = size_for_slo(
            &profile(),
            &Slo {
                rps: 10.0,
                p99_ms: 5.0,
            },
        )
        .unwrap_err();
        assert!(e.contains("best p99 of m is 15 ms"), "{e}");
    }
}
