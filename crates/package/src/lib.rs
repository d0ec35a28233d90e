//! Packages a deployment as an OCI image without a daemon or a base image:
//! a runtime layer (the `modelship` binary, stripped, with the shared
//! libraries it links and a non-root user), a model layer (the optimized
//! weights and tokenizer) and a small deployment layer (spec, plan and
//! evaluation). Builds are reproducible: the same inputs give the same
//! digests, so an unchanged model layer is stored, exported and pushed once.
//! Exports an OCI layout, a `docker load` archive, or pushes through the
//! OCI distribution API. Knows nothing of deployments beyond what it is given.

pub mod archive;
pub mod elf;
mod image;
pub mod layer;
pub mod layout;
pub mod push;
pub mod reference;

use std::path::PathBuf;

use sha2::{Digest, Sha256};

pub use image::{BuiltImage, ImageSpec, LayerReport, MODEL_DIR, RUNTIME_BIN, USER_ID, build};
pub use layout::{Blob, Layout};
pub use reference::Reference;

/// OCI media types and annotation keys.
pub mod media {
    pub const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("{file}: {reason}")]
    Elf { file: String, reason: String },
    #[error("cannot find shared library {soname} (needed by {by}) in {searched}")]
    Library {
        soname: String,
        by: String,
        searched: String,
    },
    #[error("cannot add {path} to a layer")]
    Layer {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("refusing to package {path}: it {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("not a sha256 digest: {0:?}")]
    Digest(String),
    #[error("invalid image reference {reference:?}: {reason}")]
    Reference { reference: String, reason: String },
    #[error("registry {registry}: {what}")]
    Registry {
        registry: String,
        what: String,
        #[source]
        source: Option<reqwest::Error>,
    },
}

/// `sha256:<hex>` of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}
