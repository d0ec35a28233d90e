//! Kubernetes: the objects a deployment becomes (`render kubernetes`), and
//! the `ModelDeployment` CRD generated from the spec's Rust types. Pure:
//! values in, JSON objects out; applying them is the client's business.

use std::collections::{BTreeMap, BTreeSet};

use modelship_types::{ModelDeployment, ReplicaPlan, Strategy};
use serde_json::{Map, Value, json};

use crate::package::PORT;

/// The field manager of server-side apply, and the `managed-by` label.
pub const MANAGER: &str = "modelship";
/// How long a pod may drain after SIGTERM.
const GRACE_SECONDS: u64 = 40;
/// Seconds a terminating pod keeps serving while endpoints drop it.
const PRE_STOP_SECONDS: u64 = 5;

/// Where a pod finds the API keys (the Secret's one file).
const API_KEYS_DIR: &str = "/var/run/modelship/api-keys";
const API_KEYS_FILE: &str = "keys";

/// The objects of `spec` running `image`, with the plan's resources, in
/// `namespace`: ServiceAccount, Deployment, Service, PodDisruptionBudget,
/// NetworkPolicy and, when the spec autoscales, a HorizontalPodAutoscaler.
///
/// With `api_keys`, the pods require them: on a cluster the Service is the
/// way in (no gateway stands in front), so it asks for the keys the gateway
/// would. They travel in a Secret mounted as a file (never in the pod spec,
/// where anyone who may read Deployments would see them). With `keys_salt`
/// (a secret of the control plane's own) a digest of the keys salted with
/// it goes on the pod template, so pods roll when the keys change and the
/// digest tells nothing about weak keys; without one there is none, and
/// pods pick up new keys when they restart.
pub fn manifests(
    spec: &ModelDeployment,
    image: &str,
    plan: &ReplicaPlan,
    replicas: u32,
    namespace: &str,
    api_keys: &BTreeSet<String>,
    keys_salt: Option<&str>,
) -> Vec<Value> {
    let name = &spec.metadata.name;
    let s = &spec.spec;
    let labels = json!({
        "app.kubernetes.io/name": name,
        "app.kubernetes.io/component": "model-server",
        "app.kubernetes.io/managed-by": MANAGER,
    });
    let selector =
        json!({ "app.kubernetes.io/name": name, "app.kubernetes.io/component": "model-server" });
    let metadata = json!({ "name": name, "namespace": namespace, "labels": labels });

    // What the plan recorded on the revision, as every target reads it.
    let cpu_limit = plan.cpu_limit.unwrap_or(plan.cpu_request);
    let mut resources = json!({
        "requests": { "cpu": quantity(plan.cpu_request), "memory": mebibytes(plan.memory_request) },
        "limits": { "cpu": quantity(cpu_limit), "memory": mebibytes(plan.memory_limit) },
    });
    if s.resources.gpu > 0 {
        resources["limits"]["nvidia.com/gpu"] = json!(s.resources.gpu);
    }
    let probe = |path: &str, period: u64, failures: u64| {
        json!({
            "httpGet": { "path": path, "port": "http" },
            "periodSeconds": period,
            "timeoutSeconds": 2,
            "failureThreshold": failures,
        })
    };
    let container = json!({
        "name": "server",
        "image": image,
        // The image's command serves the model with the spec's limits.
        "ports": [{ "name": "http", "containerPort": PORT, "protocol": "TCP" }],
        "resources": resources,
        // Loading a model takes seconds to minutes: liveness waits for it.
        "startupProbe": probe("/v2/health/live", 2, 150),
        "readinessProbe": probe("/v2/health/ready", 2, 2),
        "livenessProbe": probe("/v2/health/live", 10, 3),
        "lifecycle": { "preStop": { "sleep": { "seconds": PRE_STOP_SECONDS } } },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "capabilities": { "drop": ["ALL"] },
        },
        "volumeMounts": [{ "name": "tmp", "mountPath": "/tmp" }],
    });
    let mut pod_spec = json!({
        "serviceAccountName": name,
        "automountServiceAccountToken": false,
        "terminationGracePeriodSeconds": GRACE_SECONDS,
        "securityContext": {
            "runAsNonRoot": true,
            "runAsUser": modelship_package::USER_ID,
            "runAsGroup": modelship_package::USER_ID,
            // Mounted Secrets (the API keys) belong to this group, so the
            // server, not root only, may read them.
            "fsGroup": modelship_package::USER_ID,
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "containers": [container],
        "volumes": [{ "name": "tmp", "emptyDir": { "medium": "Memory", "sizeLimit": "64Mi" } }],
        "topologySpreadConstraints": [{
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": { "matchLabels": selector },
        }],
    });
    if !s.node_selector.is_empty() {
        pod_spec["nodeSelector"] = json!(s.node_selector);
    }
    let mut pod_annotations = json!({
        "prometheus.io/scrape": "true",
        "prometheus.io/port": PORT.to_string(),
        "prometheus.io/path": "/metrics",
    });
    let keys_secret = format!("{name}-api-keys");
    let keys_text: String = api_keys.iter().map(|k| format!("{k}\n")).collect();
    if !api_keys.is_empty() {
        let server = &mut pod_spec["containers"][0];
        server["env"] = json!([{
            "name": "MODELSHIP_API_KEYS_FILE",
            "value": format!("{API_KEYS_DIR}/{API_KEYS_FILE}"),
        }]);
        server["volumeMounts"]
            .as_array_mut()
            .expect("a list above")
            .push(json!({ "name": "api-keys", "mountPath": API_KEYS_DIR, "readOnly": true }));
        pod_spec["volumes"]
            .as_array_mut()
            .expect("a list above")
            .push(json!({
                "name": "api-keys",
                "secret": { "secretName": keys_secret, "defaultMode": 0o440 },
            }));
        if let Some(salt) = keys_salt {
            let salted = format!("{salt}\n{keys_text}");
            pod_annotations["modelship.dev/api-keys-digest"] =
                json!(crate::digest::of_bytes(salted.as_bytes()));
        }
    }
    let mut deployment_spec = json!({
        "selector": { "matchLabels": selector },
        "revisionHistoryLimit": 5,
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": { "maxSurge": s.rollout.max_surge, "maxUnavailable": s.rollout.max_unavailable },
        },
        "template": {
            "metadata": { "labels": labels, "annotations": pod_annotations },
            "spec": pod_spec,
        },
    });
    // With an autoscaler the count is its to set: leaving `replicas` out
    // keeps every apply from resetting it.
    if s.autoscale.is_none() {
        deployment_spec["replicas"] = json!(replicas);
    }
    let mut deployment_meta = metadata.clone();
    if s.rollout.strategy != Strategy::Rolling {
        deployment_meta["annotations"] = json!({
            "modelship.dev/rollout": format!(
                "{:?}: a Deployment rolls; canary and blue-green need modelship's gateway or a rollout controller",
                s.rollout.strategy
            ),
        });
    }
    let mut objects = vec![
        json!({ "apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata, "automountServiceAccountToken": false }),
    ];
    if !api_keys.is_empty() {
        let mut secret_meta = metadata.clone();
        secret_meta["name"] = json!(keys_secret);
        objects.push(json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": secret_meta,
            "type": "Opaque",
            "immutable": false,
            "stringData": { API_KEYS_FILE: keys_text },
        }));
    }
    objects.extend([
        json!({ "apiVersion": "apps/v1", "kind": "Deployment", "metadata": deployment_meta, "spec": deployment_spec }),
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata,
            "spec": {
                "type": "ClusterIP",
                "selector": selector,
                "ports": [{ "name": "http", "port": 80, "targetPort": "http", "protocol": "TCP" }],
            },
        }),
        json!({
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": metadata,
            "spec": {
                "maxUnavailable": s.rollout.max_unavailable.max(1),
                "selector": { "matchLabels": selector },
                // A pod that never got ready may always be evicted.
                "unhealthyPodEvictionPolicy": "AlwaysAllow",
            },
        }),
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": metadata,
            "spec": {
                "podSelector": { "matchLabels": selector },
                "policyTypes": ["Ingress"],
                "ingress": [{ "ports": [{ "port": "http", "protocol": "TCP" }] }],
            },
        }),
    ]);
    if let Some(a) = &s.autoscale {
        objects.push(json!({
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": metadata,
            "spec": {
                "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": name },
                "minReplicas": a.min.max(1),
                "maxReplicas": a.max,
                // Requests in flight per pod (the replica's own gauge, through
                // a metrics adapter such as prometheus-adapter), the signal
                // the local autoscaler follows too.
                "metrics": [{
                    "type": "Pods",
                    "pods": {
                        "metric": { "name": "modelship_requests_in_flight" },
                        "target": { "type": "AverageValue", "averageValue": quantity(a.target_concurrency) },
                    },
                }],
                "behavior": {
                    "scaleUp": { "stabilizationWindowSeconds": 0 },
                    "scaleDown": { "stabilizationWindowSeconds": a.stable_window.0.as_secs() },
                },
            },
        }));
    }
    objects
}

/// A number (CPUs, requests in flight) as a Kubernetes quantity: whole,
/// else in milli-units.
fn quantity(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{}m", (v * 1000.0).round() as u64)
    }
}

/// Bytes as a Kubernetes quantity in whole MiB, rounded up.
fn mebibytes(bytes: u64) -> String {
    format!("{}Mi", bytes.div_ceil(1 << 20))
}

/// The `ModelDeployment` CustomResourceDefinition, its schema generated
/// from the spec's types and made structural (inlined, no `$ref`, no
/// `additionalProperties: false`, which Kubernetes forbids beside
/// `properties` and gets by pruning instead).
pub fn crd() -> Value {
    let settings = schemars::generate::SchemaSettings::openapi3().with(|s| {
        s.inline_subschemas = true;
        s.meta_schema = None;
    });
    let schema = settings
        .into_generator()
        .into_root_schema_for::<modelship_types::spec::DeploymentSpec>();
    let mut spec = schema.to_value();
    structural(&mut spec);
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": { "name": "modeldeployments.modelship.dev" },
        "spec": {
            "group": "modelship.dev",
            "names": {
                "kind": modelship_types::spec::KIND,
                "listKind": "ModelDeploymentList",
                "plural": "modeldeployments",
                "singular": "modeldeployment",
                "shortNames": ["md"],
                "categories": ["modelship"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1alpha1",
                "served": true,
                "storage": true,
                "schema": { "openAPIV3Schema": {
                    "type": "object",
                    "description": "A model deployed by modelship: its model, optimization and quality gate, serving limits, resources, replicas, rollout and target.",
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": { "type": "string" },
                        "kind": { "type": "string" },
                        "metadata": { "type": "object" },
                        "spec": spec,
                        "status": { "type": "object", "x-kubernetes-preserve-unknown-fields": true },
                    },
                }},
                "subresources": { "status": {} },
                "additionalPrinterColumns": [
                    { "name": "Task", "type": "string", "jsonPath": ".spec.model.task" },
                    { "name": "Quantize", "type": "string", "jsonPath": ".spec.optimize.quantize" },
                    { "name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas" },
                    { "name": "Target", "type": "string", "jsonPath": ".spec.target" },
                    { "name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp" },
                ],
            }],
        },
    })
}

/// Rewrites a generated schema into a Kubernetes structural schema.
fn structural(v: &mut Value) {
    let Some(obj) = v.as_object_mut() else {
        if let Some(items) = v.as_array_mut() {
            items.iter_mut().for_each(structural);
        }
        return;
    };
    for key in [
        "$schema",
        "title",
        "default",
        "definitions",
        "$defs",
        "examples",
    ] {
        obj.remove(key);
    }
    if obj.get("additionalProperties") == Some(&Value::Bool(false)) {
        obj.remove("additionalProperties");
    }
    // Formats Kubernetes does not know (uint32, uint, …) are dropped; the
    // `minimum` schemars adds keeps the meaning.
    if let Some(Value::String(f)) = obj.get("format")
        && !["int32", "int64", "float", "double", "byte", "date-time"].contains(&f.as_str())
    {
        obj.remove("format");
    }
    merge_nullable_any_of(obj);
    collapse_enum_one_of(obj);
    for (_, child) in obj.iter_mut() {
        structural(child);
    }
}

/// An optional field whose type has its own schema comes out as
/// `anyOf: [schema, {enum: [null], nullable: true}]`: the schema itself,
/// nullable.
fn merge_nullable_any_of(obj: &mut Map<String, Value>) {
    let Some(Value::Array(options)) = obj.get("anyOf") else {
        return;
    };
    let is_null = |o: &Value| {
        o.get("nullable") == Some(&json!(true))
            && o.get("properties").is_none()
            && o.get("type").is_none()
    };
    if options.len() != 2 || !options.iter().any(is_null) {
        return;
    }
    let Some(Value::Object(inner)) = options.iter().find(|o| !is_null(o)).cloned() else {
        return;
    };
    obj.remove("anyOf");
    for (k, v) in inner {
        obj.entry(k).or_insert(v);
    }
    obj.insert("nullable".into(), json!(true));
}

/// Documented unit enum variants come out as `oneOf` single-value enums;
/// Kubernetes wants one `enum` on a typed schema.
fn collapse_enum_one_of(obj: &mut Map<String, Value>) {
    let Some(Value::Array(options)) = obj.get("oneOf") else {
        return;
    };
    let mut values = Vec::new();
    let mut docs = BTreeMap::new();
    for o in options {
        match o.get("enum").and_then(Value::as_array) {
            Some(e) if o.get("type") == Some(&json!("string")) => {
                for v in e {
                    values.push(v.clone());
                    if let (Some(name), Some(d)) =
                        (v.as_str(), o.get("description").and_then(Value::as_str))
                    {
                        docs.insert(name.to_owned(), d.to_owned());
                    }
                }
            }
            _ => return,
        }
    }
    obj.remove("oneOf");
    obj.insert("type".into(), json!("string"));
    obj.insert("enum".into(), Value::Array(values));
    if !docs.is_empty() && !obj.contains_key("description") {
        let text = docs
            .iter()
            .map(|(k, d)| format!("{k}: {d}"))
            .collect::<Vec<_>>()
            .join("; ");
        obj.insert("description".into(), json!(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn walk<'a>(v: &'a Value, path: String, out: &mut Vec<(String, &'a Value)>) {
        out.push((path.clone(), v));
        match v {
            Value::Object(m) => m
                .iter()
                .for_each(|(k, c)| walk(c, format!("{path}.{k}"), out)),
            Value::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, c)| walk(c, format!("{path}[{i}]"), out)),
            _ => {}
        }
    }

    #[test]
    fn the_crd_schema_is_structural() {
        let crd = crd();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        let mut all = Vec::new();
        walk(schema, "spec".into(), &mut all);
        for (path, v) in &all {
            let Some(m) = v.as_object() else { continue };
            assert!(!m.contains_key("$ref"), "{path} has a $ref");
            assert!(
                !(m.contains_key("properties") && m.contains_key("additionalProperties")),
                "{path}"
            );
            assert!(!m.contains_key("oneOf"), "{path} keeps a oneOf: {v}");
        }
        let target = &schema["properties"]["target"];
        assert_eq!(
            target["enum"],
            json!(["local", "docker", "swarm", "kubernetes"]),
            "{target}"
        );
        assert_eq!(
            schema["properties"]["optimize"]["properties"]["quantize"]["type"],
            "string"
        );
        assert_eq!(
            schema["properties"]["resources"]["properties"]["memory"]["x-kubernetes-int-or-string"],
            true
        );
        assert!(
            schema["required"]
                .as_array()
                .unwrap()
                .contains(&json!("model"))
        );
    }

    #[test]
    fn api_keys_travel_in_a_secret_the_pods_mount() {
        let spec: ModelDeployment = serde_json::from_value(json!({
            "apiVersion": "modelship.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": { "name": "smol" },
            "spec": {
                "model": { "source": modelship_testkit::minilm(), "task": "embeddings" },
                "target": "kubernetes",
            },
        }))
        .unwrap();
        let report = crate::plan::plan(&spec, &[]).unwrap();
        let plan = &report.replica;
        let open = manifests(&spec, "img", plan, 1, "ns", &BTreeSet::new(), Some("salt"));
        assert!(open.iter().all(|o| o["kind"] != "Secret"));
        let keys = BTreeSet::from(["key-one".to_owned(), "key-two".to_owned()]);
        let guarded = manifests(&spec, "img", plan, 1, "ns", &keys, Some("salt"));
        let secret = guarded.iter().find(|o| o["kind"] == "Secret").unwrap();
        assert_eq!(secret["metadata"]["name"], "smol-api-keys");
        assert_eq!(secret["stringData"]["keys"], "key-one\nkey-two\n");
        let deployment = guarded.iter().find(|o| o["kind"] == "Deployment").unwrap();
        let pod = &deployment["spec"]["template"];
        let server = &pod["spec"]["containers"][0];
        assert_eq!(
            server["env"][0],
            json!({ "name": "MODELSHIP_API_KEYS_FILE", "value": "/var/run/modelship/api-keys/keys" })
        );
        assert!(
            pod["spec"]["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["secret"]["secretName"] == "smol-api-keys")
        );
        // The keys are in the Secret only; a change of keys changes the pods.
        assert!(!deployment.to_string().contains("key-one"));
        let other = manifests(
            &spec,
            "img",
            plan,
            1,
            "ns",
            &BTreeSet::from(["key-three".to_owned()]),
            Some("salt"),
        );
        let digest = |objects: &[Value]| {
            objects.iter().find(|o| o["kind"] == "Deployment").unwrap()["spec"]["template"]
                ["metadata"]["annotations"]["modelship.dev/api-keys-digest"]
                .clone()
        };
        assert_ne!(digest(&guarded), digest(&other));
        // Salted: the digest is not the keys' own.
        let unsalted = crate::digest::of_bytes(b"key-one\nkey-two\n");
        assert!(digest(&guarded).is_string() && digest(&guarded) != json!(unsalted));
        // Without a salt, no digest at all.
        let rendered = manifests(&spec, "img", plan, 1, "ns", &keys, None);
        assert!(digest(&rendered).is_null());
    }

    #[test]
    fn quantities() {
        assert_eq!(quantity(1.0), "1");
        assert_eq!(quantity(0.5), "500m");
        assert_eq!(quantity(2.5), "2500m");
        assert_eq!(mebibytes(1 << 20), "1Mi");
        assert_eq!(mebibytes((1 << 20) + 1), "2Mi");
    }
}
