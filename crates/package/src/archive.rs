//! One image as a single tar that is both an OCI layout and what
//! `docker load` reads (its `manifest.json`), as `docker save` writes since
//! Docker 25. Layers stay gzipped; `docker load` inflates them.

use std::io::Write;

use serde_json::json;

use crate::image::BuiltImage;
use crate::layout::Layout;
use crate::reference::Reference;
use crate::{PackageError, media};

/// Writes `image` from `layout`, tagged `reference`, as a tar to `out`.
pub fn write(
    layout: &Layout,
    image: &BuiltImage,
    reference: &Reference,
    out: impl Write,
) -> Result<(), PackageError> {
    let io = |source| PackageError::Io {
        what: "writing the image archive".into(),
        source,
    };
    let mut tar = tar::Builder::new(out);
    let blob_name = |digest: &str| format!("blobs/sha256/{}", digest.trim_start_matches("sha256:"));
    let small = |tar: &mut tar::Builder<_>, name: &str, bytes: &[u8]| {
        let mut h = header(bytes.len() as u64);
        tar.append_data(&mut h, name, bytes)
    };
    small(&mut tar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
    let index = json!({
        "schemaVersion": 2,
        "mediaType": media::INDEX,
        "manifests": [{
            "mediaType": image.manifest.media_type,
            "digest": image.manifest.digest,
            "size": image.manifest.size,
            "annotations": {
                media::REF_NAME: reference.tag,
                "io.containerd.image.name": reference.to_string(),
            },
        }],
    });
    small(
        &mut tar,
        "index.json",
        &serde_json::to_vec(&index).expect("JSON values serialize"),
    )
    .map_err(io)?;
    let docker = json!([{
        "Config": blob_name(&image.config.digest),
        "RepoTags": [reference.to_string()],
        "Layers": image.layers.iter().map(|(_, l)| blob_name(&l.blob.digest)).collect::<Vec<_>>(),
    }]);
    small(
        &mut tar,
        "manifest.json",
        &serde_json::to_vec(&docker).expect("JSON values serialize"),
    )
    .map_err(io)?;
    let mut blobs: Vec<&str> = vec![&image.manifest.digest, &image.config.digest];
    blobs.extend(image.layers.iter().map(|(_, l)| l.blob.digest.as_str()));
    blobs.sort_unstable();
    blobs.dedup();
    for digest in blobs {
        let path = layout.blob_path(digest)?;
        let file = std::fs::File::open(&path).map_err(|source| PackageError::Io {
            what: format!("reading blob {digest}"),
            source,
        })?;
        let mut h = header(file.metadata().map_err(io)?.len());
        tar.append_data(&mut h, blob_name(digest), file)
            .map_err(io)?;
    }
    tar.into_inner().map_err(io)?.flush().map_err(io)
}

fn header(size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h
}
