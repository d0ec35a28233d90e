//! An OCI image layout on disk (`oci-layout`, `index.json`, `blobs/sha256/`):
//! where images are built, and what they are exported and pushed from.
//! Blobs are content-addressed, so a layer two images share is stored once.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::{PackageError, media};

/// A content descriptor: what a manifest says of a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Blob {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
}

pub struct Layout {
    root: PathBuf,
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PackageError {
    let what = what.into();
    move |source| PackageError::Io { what, source }
}

impl Layout {
    /// Opens `root` as a layout, creating it when missing.
    pub fn open(root: &Path) -> Result<Layout, PackageError> {
        let blobs = root.join("blobs").join("sha256");
        std::fs::create_dir_all(&blobs).map_err(io_err(format!("creating {}", blobs.display())))?;
        let marker = root.join("oci-layout");
        if !marker.exists() {
            std::fs::write(&marker, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(io_err(format!("writing {}", marker.display())))?;
        }
        Ok(Layout {
            root: root.to_owned(),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of a blob by digest (`sha256:<hex>`).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, PackageError> {
        let hex = digest
            .strip_prefix("sha256:")
            .filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| PackageError::Digest(digest.to_owned()))?;
        Ok(self.root.join("blobs").join("sha256").join(hex))
    }

    /// A new file to stream a blob into, in the layout (so the final rename
    /// stays on one filesystem).
    pub(crate) fn temp_blob(&self) -> Result<(PathBuf, File), PackageError> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static N: AtomicU64 = AtomicU64::new(0);
        let path = self.root.join(format!(
            ".tmp-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let file = File::create(&path).map_err(io_err(format!("creating {}", path.display())))?;
        Ok((path, file))
    }

    /// Moves a finished temporary blob to its content address.
    pub(crate) fn commit_blob(
        &self,
        tmp: &Path,
        digest: &str,
        size: u64,
        media_type: &str,
    ) -> Result<Blob, PackageError> {
        let dest = self.blob_path(digest)?;
        std::fs::rename(tmp, &dest).map_err(io_err(format!("storing blob {digest}")))?;
        Ok(Blob {
            media_type: media_type.to_owned(),
            digest: digest.to_owned(),
            size,
        })
    }

    /// Stores a small blob (a config, a manifest) given whole.
    pub fn put(&self, bytes: &[u8], media_type: &str) -> Result<Blob, PackageError> {
        let digest = crate::sha256(bytes);
        let dest = self.blob_path(&digest)?;
        if !dest.exists() {
            let (tmp, mut f) = self.temp_blob()?;
            f.write_all(bytes).map_err(io_err("writing a blob"))?;
            drop(f);
            std::fs::rename(&tmp, &dest).map_err(io_err(format!("storing blob {digest}")))?;
        }
        Ok(Blob {
            media_type: media_type.to_owned(),
            digest,
            size: bytes.len() as u64,
        })
    }

    /// A layer built before from inputs with digest `key`, if its blob is
    /// still here.
    pub(crate) fn cached_layer(&self, key: &str) -> Option<crate::layer::Layer> {
        let path = self
            .root
            .join("layers")
            .join(key.trim_start_matches("sha256:"));
        let layer: crate::layer::Layer = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
        let blob = self.blob_path(&layer.blob.digest).ok()?;
        (std::fs::metadata(blob).ok()?.len() == layer.blob.size).then_some(layer)
    }

    /// Remembers the layer built from inputs with digest `key`. A failure
    /// only costs the next build its shortcut.
    pub(crate) fn cache_layer(&self, key: &str, layer: &crate::layer::Layer) {
        let dir = self.root.join("layers");
        let write = std::fs::create_dir_all(&dir).and_then(|()| {
            let bytes = serde_json::to_vec(layer).expect("plain data serializes");
            let tmp = dir.join(format!(".tmp-{}", std::process::id()));
            std::fs::write(&tmp, bytes)?;
            std::fs::rename(&tmp, dir.join(key.trim_start_matches("sha256:")))
        });
        if let Err(e) = write {
            tracing::warn!("cannot record the layer cache in {}: {e}", dir.display());
        }
    }

    pub fn read(&self, digest: &str) -> Result<Vec<u8>, PackageError> {
        let path = self.blob_path(digest)?;
        std::fs::read(&path).map_err(io_err(format!("reading blob {digest}")))
    }

    /// Names `manifest` `reference` in `index.json`, replacing an earlier
    /// image of that name.
    pub fn tag(&self, manifest: &Blob, reference: &str) -> Result<(), PackageError> {
        let path = self.root.join("index.json");
        let mut manifests: Vec<serde_json::Value> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("manifests").cloned())
                .and_then(|m| serde_json::from_value(m).ok())
                .ok_or_else(|| PackageError::Corrupt {
                    path: path.clone(),
                    reason: "not an OCI image index".into(),
                })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        manifests.retain(|m| m["annotations"][media::REF_NAME] != reference);
        manifests.push(json!({
            "mediaType": manifest.media_type,
            "digest": manifest.digest,
            "size": manifest.size,
            "annotations": { media::REF_NAME: reference },
        }));
        let index = json!({
            "schemaVersion": 2,
            "mediaType": media::INDEX,
            "manifests": manifests,
        });
        let bytes = serde_json::to_vec_pretty(&index).expect("JSON values serialize");
        let (tmp, mut f) = self.temp_blob()?;
        f.write_all(&bytes).map_err(io_err("writing index.json"))?;
        drop(f);
        std::fs::rename(&tmp, &path).map_err(io_err("writing index.json"))
    }
}
