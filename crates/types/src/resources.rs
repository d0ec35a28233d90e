//! Resource quantities and nodes: `512Mi`, `2Gi`, `1.5` CPUs; the cluster's
//! nodes as a nodes file describes them.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A byte count written the Kubernetes way: `512Mi`, `2Gi`, `1G`, `1500000`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bytes(pub u64);

impl Bytes {
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (value, unit) = number_and_unit(s)
            .ok_or_else(|| format!("`{s}` is not a quantity like 512Mi or 2Gi"))?;
        let scale: u64 = match unit {
            "" => 1,
            "k" | "K" => 1_000,
            "M" => 1_000_000,
            "G" => 1_000_000_000,
            "T" => 1_000_000_000_000,
            "Ki" => 1 << 10,
            "Mi" => 1 << 20,
            "Gi" => 1 << 30,
            "Ti" => 1 << 40,
            other => {
                return Err(format!(
                    "`{other}` in `{s}` is not a unit (Ki, Mi, Gi, Ti, k, M, G, T)"
                ));
            }
        };
        if !(value >= 0.0 && value.is_finite()) {
            return Err(format!("`{s}` is not a non-negative quantity"));
        }
        Ok(Bytes((value * scale as f64).round() as u64))
    }
}

/// `512Mi` → (512.0, "Mi"): the leading number and the unit after it.
pub(crate) fn number_and_unit(s: &str) -> Option<(f64, &str)> {
    let split = s.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    Some((number.trim().parse().ok()?, unit))
}

impl fmt::Display for Bytes {
    /// Binary units with two decimals: `3.10 GiB`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0 as f64;
        let (v, unit) = if b >= (1u64 << 30) as f64 {
            (b / (1u64 << 30) as f64, "GiB")
        } else if b >= (1u64 << 20) as f64 {
            (b / (1u64 << 20) as f64, "MiB")
        } else if b >= 1024.0 {
            (b / 1024.0, "KiB")
        } else {
            return write!(f, "{} B", self.0);
        };
        write!(f, "{v:.2} {unit}")
    }
}

impl Serialize for Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl schemars::JsonSchema for Bytes {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Bytes".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "Bytes: a number, or with a unit (512Mi, 1Gi, 500M).",
            "x-kubernetes-int-or-string": true,
            "anyOf": [
                { "type": "integer", "minimum": 0 },
                { "type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?\\s*(k|K|M|G|T|Ki|Mi|Gi|Ti)?$" }
            ]
        })
    }
}

impl<'de> Deserialize<'de> for Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => Ok(Bytes(n)),
            Raw::Text(s) => Bytes::parse(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// `resources:` in a spec: what one replica asks for; omitted values are
/// computed by the planner.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    pub cpu: Option<f64>,
    pub memory: Option<Bytes>,
    #[serde(default)]
    pub gpu: u32,
}

/// `slo:` in a spec: the load the deployment must carry and the latency it
/// must keep; the planner sizes replicas from a measured capacity profile.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Slo {
    /// Requests per second across all replicas.
    pub rps: f64,
    /// 99th-percentile latency in milliseconds.
    pub p99_ms: f64,
}

/// A GPU of a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gpu {
    #[serde(rename = "type")]
    pub kind: String,
    pub memory: Bytes,
}

/// One machine replicas can run on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    pub name: String,
    pub cpu: f64,
    pub memory: Bytes,
    #[serde(default)]
    pub gpus: Vec<Gpu>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A nodes file: `nodes: [...]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodesFile {
    pub nodes: Vec<Node>,
}

/// A field of a nodes file that cannot work, named by its path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct NodesError {
    pub field: String,
    pub reason: String,
}

impl NodesFile {
    pub fn validate(&self) -> Result<(), NodesError> {
        let mut seen = std::collections::BTreeSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let err = |f: &str, reason: String| NodesError {
                field: format!("nodes[{i}].{f}"),
                reason,
            };
            if n.name.is_empty() {
                return Err(err("name", "is empty".into()));
            }
            if !seen.insert(n.name.as_str()) {
                return Err(err("name", format!("`{}` appears twice", n.name)));
            }
            if !(n.cpu > 0.0 && n.cpu.is_finite()) {
                return Err(err(
                    "cpu",
                    format!("{} is not a positive number of CPUs", n.cpu),
                ));
            }
            if n.memory.0 == 0 {
                return Err(err("memory", "must be more than 0".into()));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for (s, want) in [
            ("512Mi", 512u64 << 20),
            ("2Gi", 2 << 30),
            ("1.5Gi", 3 << 29),
            ("1G", 1_000_000_000),
            ("1500", 1500),
            ("0", 0),
        ] {
            assert_eq!(Bytes::parse(s), Ok(Bytes(want)), "{s}");
        }
        for bad in ["", "Gi", "12Q", "-1Gi", "1..2Mi"] {
            assert!(Bytes::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Bytes(3_328_599_654).to_string(), "3.10 GiB");
    }

    #[test]
    fn nodes_file_problems_name_their_field() {
        let parse = |json: &str| serde_json::from_str::<NodesFile>(json).unwrap().validate();
        assert!(parse(r#"{"nodes":[{"name":"a","cpu":2,"memory":"4Gi"}]}"#).is_ok());
        let e = parse(
            r#"{"nodes":[{"name":"a","cpu":2,"memory":"4Gi"},{"name":"a","cpu":1,"memory":1}]}"#,
        );
        assert_eq!(e.unwrap_err().field, "nodes[1].name");
        let e = parse(r#"{"nodes":[{"name":"a","cpu":0,"memory":"4Gi"}]}"#);
        assert_eq!(e.unwrap_err().field, "nodes[0].cpu");
        let e =
            serde_json::from_str::<NodesFile>(r#"{"nodes":[{"name":"a","cpu":1,"memory":"4Qi"}]}"#);
        assert!(e.unwrap_err().to_string().contains("4Qi"));
    }
}
