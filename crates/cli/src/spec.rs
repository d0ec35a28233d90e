//! Spec and nodes files: read, parse, validate; every problem is a
//! configuration error (exit 64) naming the file and field.

use std::path::Path;

use anyhow::Context;
use modelship_types::{ModelDeployment, NodesFile};

use crate::Failure;

/// Reads and validates a spec; problems are configuration errors (exit 64).
pub fn read_spec(path: &Path) -> Result<ModelDeployment, Failure> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(Failure::Config)?;
    let mut spec: ModelDeployment = serde_saphyr::from_str(&text)
        .with_context(|| format!("invalid spec {}", path.display()))
        .map_err(Failure::Config)?;
    spec.validate()
        .with_context(|| format!("invalid spec {}", path.display()))
        .map_err(Failure::Config)?;
    // Paths in a spec are relative to the spec file (`join` keeps absolute ones).
    let base = path.parent().unwrap_or(Path::new("."));
    spec.spec.model.source = base.join(&spec.spec.model.source);
    spec.spec.optimize.eval = spec.spec.optimize.eval.map(|e| base.join(e));
    Ok(spec)
}

/// Reads and validates a nodes file.
pub fn read_nodes(path: &Path) -> Result<NodesFile, Failure> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read {}", path.display()))
        .map_err(Failure::Config)?;
    let nodes: NodesFile = serde_saphyr::from_str(&text)
        .with_context(|| format!("invalid nodes file {}", path.display()))
        .map_err(Failure::Config)?;
    nodes
        .validate()
        .with_context(|| format!("invalid nodes file {}", path.display()))
        .map_err(Failure::Config)?;
    Ok(nodes)
}
