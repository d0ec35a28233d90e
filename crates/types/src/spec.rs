//! The deployment spec (`modelship.yaml`), Kubernetes-shaped. Unknown fields
//! are errors. This holds the sections built so far (model, optimize,
//! serving, resources, replicas, node_selector, slo, rollout, autoscale,
//! fault); `target` joins with the cluster orchestrators.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{Autoscale, Fault, Optimize, Resources, Rollout, ServingLimits, Slo, Task};

pub const API_VERSION: &str = "modelship.dev/v1alpha1";
pub const KIND: &str = "ModelDeployment";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ModelDeployment {
    pub api_version: String,
    pub kind: String,
    pub metadata: Metadata,
    pub spec: DeploymentSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// A DNS-1123 label: it names services, containers and URLs.
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeploymentSpec {
    pub model: ModelRef,
    #[serde(default)]
    pub optimize: Optimize,
    #[serde(default)]
    pub serving: ServingLimits,
    #[serde(default)]
    pub resources: Resources,
    /// Replicas to run.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Labels a node must carry to run a replica.
    #[serde(default)]
    pub node_selector: BTreeMap<String, String>,
    /// When set, the planner sizes `replicas` from a capacity profile.
    #[serde(default)]
    pub slo: Option<Slo>,
    /// How a new revision replaces the serving one.
    #[serde(default)]
    pub rollout: Rollout,
    /// Replicas follow the load between `min` and `max`; `replicas` is the
    /// count to start with.
    #[serde(default)]
    pub autoscale: Option<Autoscale>,
    /// Errors injected at the gateway into this revision's traffic.
    #[serde(default)]
    pub fault: Option<Fault>,
    /// Where replicas run.
    #[serde(default)]
    pub target: Target,
    /// The repository the deployment's image is pushed to
    /// (`host[:port]/name`), for engines that pull it; without it the image
    /// is loaded into the local engine.
    #[serde(default)]
    pub image: Option<String>,
}

/// Where a deployment's replicas run.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `modelship serve` processes on this machine.
    #[default]
    Local,
    /// Containers through the Docker Engine API.
    Docker,
    /// A Docker Swarm service per revision.
    Swarm,
    /// Kubernetes objects by server-side apply.
    Kubernetes,
}

impl Target {
    /// Replicas run from the deployment's OCI image.
    pub fn needs_image(self) -> bool {
        self != Target::Local
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Target::Local => "local",
            Target::Docker => "docker",
            Target::Swarm => "swarm",
            Target::Kubernetes => "kubernetes",
        })
    }
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ModelRef {
    /// An HF directory or a .gguf file, relative to the spec file.
    pub source: PathBuf,
    /// Detected from the model when omitted.
    #[serde(default)]
    pub task: Option<Task>,
}

/// A spec field that cannot work, named by its path.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid `{field}`: {reason}")]
pub struct SpecError {
    pub field: String,
    pub reason: String,
}

impl ModelDeployment {
    /// Checks every section; the first problem names its field.
    pub fn validate(&self) -> Result<(), SpecError> {
        let err = |field: &str, reason: String| SpecError {
            field: field.to_owned(),
            reason,
        };
        if self.api_version != API_VERSION {
            return Err(err(
                "apiVersion",
                format!("`{}` is not `{API_VERSION}`", self.api_version),
            ));
        }
        if self.kind != KIND {
            return Err(err("kind", format!("`{}` is not `{KIND}`", self.kind)));
        }
        if let Some(reason) = dns_label_problem(&self.metadata.name) {
            return Err(err("metadata.name", reason));
        }
        if self.spec.model.source.as_os_str().is_empty() {
            return Err(err("spec.model.source", "is empty".into()));
        }
        self.spec
            .optimize
            .validate()
            .map_err(|e| err(&format!("spec.{}", e.field), e.reason))?;
        if self
            .spec
            .resources
            .cpu
            .is_some_and(|c| !(c > 0.0 && c.is_finite()))
        {
            return Err(err(
                "spec.resources.cpu",
                "must be a positive number of CPUs".into(),
            ));
        }
        if let Some(slo) = &self.spec.slo {
            for (field, v) in [("spec.slo.rps", slo.rps), ("spec.slo.p99_ms", slo.p99_ms)] {
                if !(v > 0.0 && v.is_finite()) {
                    return Err(err(field, format!("{v} is not a positive number")));
                }
            }
        }
        if let Some((field, reason)) = self.spec.rollout.problem() {
            return Err(err(&format!("spec.rollout.{field}"), reason));
        }
        // Comparing answers is the gateway's work: a cluster's traffic does
        // not pass through it.
        let rollout = &self.spec.rollout;
        if self.spec.target == Target::Kubernetes
            && (rollout.shadow.is_some() || rollout.canary.quality.is_some())
        {
            let field = match rollout.shadow {
                Some(_) => "spec.rollout.shadow",
                None => "spec.rollout.canary.quality",
            };
            return Err(err(
                field,
                "the gateway compares answers, and a kubernetes target's traffic does not pass through it".into(),
            ));
        }
        if let Some((field, reason)) = self.spec.autoscale.as_ref().and_then(Autoscale::problem) {
            return Err(err(&format!("spec.autoscale.{field}"), reason));
        }
        if let Some((field, reason)) = self.spec.fault.as_ref().and_then(Fault::problem) {
            return Err(err(&format!("spec.fault.{field}"), reason));
        }
        if let Some(image) = &self.spec.image
            && let Some(reason) = repository_problem(image)
        {
            return Err(err("spec.image", reason));
        }
        if self.spec.replicas > 10_000 {
            return Err(err(
                "spec.replicas",
                format!("{} is more than 10000", self.spec.replicas),
            ));
        }
        self.spec
            .serving
            .validate()
            .map_err(|e| err(&format!("spec.serving.{}", e.field), e.reason))
    }
}

/// Why `name` is not a DNS-1123 label, if it is not.
pub fn dns_label_problem(name: &str) -> Option<String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if name.is_empty() || name.len() > 63 {
        Some(format!("`{name}` must be 1 to 63 characters"))
    } else if !ok_chars || name.starts_with('-') || name.ends_with('-') {
        Some(format!(
            "`{name}` must be lowercase letters, digits and '-', starting and ending with a letter or digit"
        ))
    } else {
        None
    }
}

/// Why `s` cannot name an image repository (`[host[:port]/]path`, no tag).
fn repository_problem(s: &str) -> Option<String> {
    let (host, path) = match s.split_once('/') {
        Some((h, p)) if h.contains(['.', ':']) || h == "localhost" => (Some(h), p),
        _ => (None, s),
    };
    if host.is_some_and(|h| h.is_empty() || h.contains(char::is_whitespace)) {
        return Some(format!("`{s}`: the registry host is not valid"));
    }
    let ok = !path.is_empty()
        && path.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        });
    (!ok).then(|| {
        format!(
            "`{s}` is not a repository: lowercase letters, digits, '.', '_', '-' and '/', without a tag"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, optimize: &str) -> String {
        format!(
            r#"{{"apiVersion":"modelship.dev/v1alpha1","kind":"ModelDeployment","metadata":{{"name":"{name}"}},
               "spec":{{"model":{{"source":"m"}},"optimize":{optimize}}}}}"#
        )
    }

    #[test]
    fn a_valid_spec_passes() {
        let d: ModelDeployment = serde_json::from_str(&spec("minilm-1", "{}")).unwrap();
        d.validate().unwrap();
        assert_eq!(d.spec.serving, ServingLimits::default());
    }

    #[test]
    fn problems_name_their_field() {
        for (name, optimize, field) in [
            ("Bad_Name", "{}", "metadata.name"),
            ("-x", "{}", "metadata.name"),
            (
                "ok",
                r#"{"gate":{"min_top1":3}}"#,
                "spec.optimize.gate.min_top1",
            ),
        ] {
            let d: ModelDeployment = serde_json::from_str(&spec(name, optimize)).unwrap();
            assert_eq!(d.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn unknown_fields_are_errors() {
        let json = spec("ok", "{}").replace(r#""model""#, r#""modle""#);
        let err = serde_json::from_str::<ModelDeployment>(&json).unwrap_err();
        assert!(err.to_string().contains("modle"), "{err}");
    }

    #[test]
    fn target_and_image_repository() {
        let with = |extra: &str| {
            let json = spec("ok", "{}")
                .replace(r#""optimize":{}"#, &format!(r#""optimize":{{}},{extra}"#));
            serde_json::from_str::<ModelDeployment>(&json)
        };
        let d = with(r#""target":"swarm","image":"localhost:5000/team/minilm""#).unwrap();
        assert_eq!(d.spec.target, Target::Swarm);
        d.validate().unwrap();
        assert_eq!(
            with("\"target\":\"local\"").unwrap().spec.target,
            Target::Local
        );
        assert!(with(r#""target":"nomad""#).is_err());
        for bad in ["localhost:5000/MiniLM", "minilm:v1", "a//b", ""] {
            let d = with(&format!(r#""image":"{bad}""#)).unwrap();
            assert_eq!(d.validate().unwrap_err().field, "spec.image", "{bad}");
        }
    }
}
