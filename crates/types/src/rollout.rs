//! How a new revision replaces the serving one (`spec.rollout`), and faults
//! a revision's traffic may be given on purpose (`spec.fault`).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// `spec.rollout`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    #[serde(default)]
    pub strategy: Strategy,
    /// Rolling: replicas of the new revision started above the desired
    /// count while old ones still serve.
    #[serde(default = "one")]
    pub max_surge: u32,
    /// Rolling: replicas below the desired count allowed to be not ready.
    /// With 0 (the default) capacity never drops.
    #[serde(default)]
    pub max_unavailable: u32,
    /// Canary: the traffic steps and the analysis at each.
    #[serde(default)]
    pub canary: Canary,
    /// Before any traffic shifts: a share of the stable revision's
    /// requests mirrored to the new one, their answers compared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<Shadow>,
    /// Blue-green: how long the old revision keeps running after the switch,
    /// for an instant rollback.
    #[serde(default = "thirty_seconds")]
    pub scale_down_delay: Span,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            strategy: Strategy::Rolling,
            max_surge: 1,
            max_unavailable: 0,
            canary: Canary::default(),
            shadow: None,
            scale_down_delay: thirty_seconds(),
        }
    }
}

fn one() -> u32 {
    1
}

fn thirty_seconds() -> Span {
    Span(Duration::from_secs(30))
}

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "kebab-case")]
pub enum Strategy {
    /// Replace replicas a few at a time (Kubernetes' RollingUpdate).
    #[default]
    Rolling,
    /// Send a growing share of traffic to the new revision, comparing it
    /// with the stable one at each step (Argo Rollouts' canary).
    Canary,
    /// Start the new revision in full, switch all traffic when it is ready,
    /// keep the old one for a while.
    BlueGreen,
}

/// `spec.rollout.canary`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    /// Percent of traffic to the new revision at each step; the last is 100.
    #[serde(default = "default_steps")]
    pub steps: Vec<u32>,
    /// How long each step runs before it is judged.
    #[serde(default = "thirty_seconds")]
    pub interval: Span,
    /// Error rate (5xx and failed requests) the canary may have above the
    /// stable revision's over a step.
    #[serde(default = "default_error_rate")]
    pub max_error_rate: f64,
    /// p99 latency the canary may reach over a step (when the stable
    /// revision's is lower).
    #[serde(default)]
    pub max_p99_ms: Option<f64>,
    /// What the new revision answers, compared with the stable revision's
    /// answer to the same request: the bounds it must keep (in the shadow
    /// phase and at every step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quality: Option<Quality>,
}

impl Default for Canary {
    fn default() -> Self {
        Canary {
            steps: default_steps(),
            interval: thirty_seconds(),
            max_error_rate: default_error_rate(),
            max_p99_ms: None,
            quality: None,
        }
    }
}

/// `spec.rollout.canary.quality`: live comparison of answers. Each figure
/// is over the requests compared in one step (or the shadow phase).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Quality {
    /// Embeddings: the lowest mean cosine between the two revisions'
    /// vectors for the same input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_live_cosine: Option<f64>,
    /// Generation: the lowest share of the stable revision's generated
    /// tokens at which the new revision's most likely token is the stable
    /// one's (teacher-forced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_live_top1: Option<f64>,
    /// Generation: the highest mean KL divergence per token from the stable
    /// revision's distribution to the new one's (nats).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_live_kld: Option<f64>,
    /// Compared requests a step needs before it can be promoted; a step
    /// short of them runs on until it has them (or times out and fails).
    #[serde(default = "twenty")]
    pub min_samples: u32,
    /// Percent of each canary step's requests also sent to the other
    /// revision to compare (the shadow phase mirrors `shadow.percent`).
    #[serde(default = "ten_percent")]
    pub percent: f64,
}

fn twenty() -> u32 {
    20
}

fn ten_percent() -> f64 {
    10.0
}

/// `spec.rollout.shadow`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Shadow {
    /// Percent of the stable revision's requests mirrored to the new one,
    /// above 0 and at most 100.
    pub percent: f64,
    /// How long the shadow runs before it is judged.
    pub duration: Span,
}

fn default_steps() -> Vec<u32> {
    vec![10, 50, 100]
}

fn default_error_rate() -> f64 {
    0.01
}

impl Rollout {
    /// The first field that cannot work, and why.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.strategy == Strategy::Rolling && self.max_surge == 0 && self.max_unavailable == 0 {
            return Some((
                "max_surge",
                "max_surge and max_unavailable cannot both be 0: the rollout could never start a new replica".into(),
            ));
        }
        let c = &self.canary;
        if c.steps.is_empty() || c.steps.last() != Some(&100) {
            return Some(("canary.steps", "must end with 100".into()));
        }
        if c.steps.iter().any(|&s| s == 0 || s > 100) || c.steps.windows(2).any(|w| w[0] >= w[1]) {
            return Some((
                "canary.steps",
                format!("{:?} must rise strictly, each from 1 to 100", c.steps),
            ));
        }
        if !(0.0..=1.0).contains(&c.max_error_rate) {
            return Some((
                "canary.max_error_rate",
                format!("{} is not between 0 and 1", c.max_error_rate),
            ));
        }
        if c.max_p99_ms.is_some_and(|p| !(p > 0.0 && p.is_finite())) {
            return Some((
                "canary.max_p99_ms",
                "must be a positive number of ms".into(),
            ));
        }
        if c.interval.0.is_zero() {
            return Some(("canary.interval", "must be longer than 0s".into()));
        }
        if let Some(q) = &c.quality {
            let unit = |v: Option<f64>| v.is_some_and(|v| !(0.0..=1.0).contains(&v));
            if unit(q.min_live_cosine) {
                return Some((
                    "canary.quality.min_live_cosine",
                    "must be between 0 and 1".into(),
                ));
            }
            if unit(q.min_live_top1) {
                return Some((
                    "canary.quality.min_live_top1",
                    "must be between 0 and 1".into(),
                ));
            }
            if q.max_live_kld.is_some_and(|k| !(k >= 0.0 && k.is_finite())) {
                return Some((
                    "canary.quality.max_live_kld",
                    "must be a number of nats, 0 or more".into(),
                ));
            }
            if q.min_live_cosine.is_none() && q.min_live_top1.is_none() && q.max_live_kld.is_none()
            {
                return Some((
                    "canary.quality",
                    "sets no bound: give min_live_cosine, min_live_top1 or max_live_kld".into(),
                ));
            }
            if !(q.percent > 0.0 && q.percent <= 100.0) {
                return Some((
                    "canary.quality.percent",
                    format!("{} is not above 0 and at most 100", q.percent),
                ));
            }
        }
        if let Some(s) = &self.shadow {
            if !(s.percent > 0.0 && s.percent <= 100.0) {
                return Some((
                    "shadow.percent",
                    format!("{} is not above 0 and at most 100", s.percent),
                ));
            }
            if s.duration.0.is_zero() {
                return Some(("shadow.duration", "must be longer than 0s".into()));
            }
        }
        None
    }
}

/// `spec.fault`: answer a share of a revision's requests with an error at
/// the gateway, without reaching a replica (Istio's fault injection), to
/// rehearse how rollouts and alerts react.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    /// Percent of requests aborted, 0 to 100.
    pub abort_percent: f64,
    /// The status they get.
    #[serde(default = "internal_error")]
    pub status: u16,
}

fn internal_error() -> u16 {
    500
}

impl Fault {
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if !(0.0..=100.0).contains(&self.abort_percent) {
            return Some((
                "abort_percent",
                format!("{} is not between 0 and 100", self.abort_percent),
            ));
        }
        if !(400..=599).contains(&self.status) {
            return Some((
                "status",
                format!("{} is not an HTTP error status", self.status),
            ));
        }
        None
    }
}

/// A duration written `500ms`, `30s`, `2m` or `1h` (or a number of seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Span(pub Duration);

impl Span {
    pub fn parse(s: &str) -> Result<Span, String> {
        let s = s.trim();
        let (value, unit) = crate::resources::number_and_unit(s)
            .ok_or_else(|| format!("`{s}` is not a duration like 500ms, 30s, 2m or 1h"))?;
        let seconds = match unit {
            "ms" => value / 1e3,
            "" | "s" => value,
            "m" => value * 60.0,
            "h" => value * 3600.0,
            other => return Err(format!("`{other}` in `{s}` is not a unit (ms, s, m, h)")),
        };
        if !(0.0..1e9).contains(&seconds) {
            return Err(format!("`{s}` is not a duration from 0 to a few years"));
        }
        Ok(Span(Duration::from_secs_f64(seconds)))
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if !ms.is_multiple_of(1000) {
            write!(f, "{ms}ms")
        } else {
            write!(f, "{}s", ms / 1000)
        }
    }
}

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl schemars::JsonSchema for Span {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Span".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "A duration: 500ms, 30s, 2m, 1h, or a number of seconds.",
            "x-kubernetes-int-or-string": true,
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?(ms|s|m|h)?$" }
            ]
        })
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Span::parse(&n.to_string()).map_err(serde::de::Error::custom),
            Raw::Text(s) => Span::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_parse_and_print_back() {
        for (text, ms) in [
            ("500ms", 500),
            ("30s", 30_000),
            ("2m", 120_000),
            ("1h", 3_600_000),
            ("1.5", 1_500),
        ] {
            let s = Span::parse(text).unwrap();
            assert_eq!(s.0.as_millis(), ms, "{text}");
            assert_eq!(Span::parse(&s.to_string()).unwrap(), s);
        }
        for bad in ["", "x", "5d", "-1s"] {
            assert!(Span::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rollout_problems_name_their_field() {
        let mut r = Rollout::default();
        assert_eq!(r.problem(), None);
        r.canary.steps = vec![10, 50];
        assert_eq!(r.problem().unwrap().0, "canary.steps");
        r.canary.steps = vec![50, 10, 100];
        assert_eq!(r.problem().unwrap().0, "canary.steps");
        r.canary.steps = vec![100];
        r.canary.max_error_rate = 2.0;
        assert_eq!(r.problem().unwrap().0, "canary.max_error_rate");
        let r = Rollout {
            max_surge: 0,
            ..Rollout::default()
        };
        assert_eq!(r.problem().unwrap().0, "max_surge");
        let f = Fault {
            abort_percent: 101.0,
            status: 500,
        };
        assert_eq!(f.problem().unwrap().0, "abort_percent");
        let mut r = Rollout::default();
        r.canary.quality = Some(Quality {
            min_live_cosine: Some(1.5),
            min_live_top1: None,
            max_live_kld: None,
            min_samples: 20,
            percent: 10.0,
        });
        assert_eq!(r.problem().unwrap().0, "canary.quality.min_live_cosine");
        r.canary.quality.as_mut().unwrap().min_live_cosine = None;
        assert_eq!(r.problem().unwrap().0, "canary.quality");
        r.canary.quality.as_mut().unwrap().max_live_kld = Some(0.1);
        assert_eq!(r.problem(), None);
        r.shadow = Some(Shadow {
            percent: 0.0,
            duration: Span(Duration::from_secs(5)),
        });
        assert_eq!(r.problem().unwrap().0, "shadow.percent");
    }
}
