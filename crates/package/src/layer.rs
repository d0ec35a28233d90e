//! Image layers: gzipped tar archives written so that the same files give
//! the same bytes every time — entries in path order, one fixed timestamp,
//! fixed owners and modes, no gzip name or time — hashed as they stream to
//! disk, never held whole in memory.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use sha2::{Digest, Sha256};

use crate::PackageError;
use crate::layout::{Blob, Layout};

/// Where an entry's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    File(PathBuf),
    Bytes(Vec<u8>),
}

/// One entry of a layer.
#[derive(Debug, Clone)]
pub enum Entry {
    Dir { mode: u32 },
    File { source: Source, mode: u32 },
}

/// A layer's contents by path in the image (no leading `/`), owned by `uid`.
#[derive(Debug, Clone, Default)]
pub struct Files {
    entries: BTreeMap<String, (Entry, u32)>,
}

impl Files {
    pub fn dir(&mut self, path: &str, mode: u32, uid: u32) {
        self.entries.insert(
            path.trim_matches('/').to_owned(),
            (Entry::Dir { mode }, uid),
        );
    }

    /// The paths of the entries, in order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// Adds a file, and every missing parent directory (0755, root).
    pub fn file(&mut self, path: &str, source: Source, mode: u32) {
        let path = path.trim_matches('/');
        let mut parent = Path::new(path).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.entries
                .entry(p.to_string_lossy().into_owned())
                .or_insert((Entry::Dir { mode: 0o755 }, 0));
            parent = p.parent();
        }
        self.entries
            .insert(path.to_owned(), (Entry::File { source, mode }, 0));
    }
}

/// A written layer: its blob (compressed) and the digest of its tar.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Layer {
    pub blob: Blob,
    /// `sha256:` of the uncompressed tar (the image config's `diff_ids`).
    pub diff_id: String,
}

/// Writes `files` as a gzipped tar into `layout`. `mtime` stamps every entry.
/// A layer written before from the same inputs (paths, modes, owners,
/// contents, time and level) is reused: hashing the inputs is far cheaper
/// than compressing them again, and gives the same bytes by construction.
pub fn write(
    layout: &Layout,
    files: &Files,
    mtime: u64,
    level: Compression,
) -> Result<Layer, PackageError> {
    let key = inputs_digest(files, mtime, level)?;
    if let Some(layer) = layout.cached_layer(&key) {
        return Ok(layer);
    }
    let layer = write_new(layout, files, mtime, level)?;
    layout.cache_layer(&key, &layer);
    Ok(layer)
}

/// The digest of everything that decides a layer's bytes.
fn inputs_digest(files: &Files, mtime: u64, level: Compression) -> Result<String, PackageError> {
    let mut h = Sha256::new();
    h.update(format!("modelship-layer-v1 {mtime} {}\n", level.level()));
    for (path, (entry, uid)) in &files.entries {
        match entry {
            Entry::Dir { mode } => h.update(format!("d {path} {mode:o} {uid}\n")),
            Entry::File { source, mode } => {
                h.update(format!("f {path} {mode:o} {uid}\n"));
                match source {
                    Source::Bytes(b) => h.update(crate::sha256(b)),
                    Source::File(f) => {
                        h.update(file_digest(f).map_err(|e| PackageError::Layer {
                            path: path.clone(),
                            source: io::Error::new(
                                e.kind(),
                                format!("cannot read {}: {e}", f.display()),
                            ),
                        })?)
                    }
                }
                h.update("\n");
            }
        }
    }
    Ok(format!("sha256:{:x}", h.finalize()))
}

fn file_digest(path: &Path) -> io::Result<String> {
    let mut h = Hashing::new(io::sink());
    io::copy(&mut std::fs::File::open(path)?, &mut h)?;
    Ok(h.finish().1)
}

fn write_new(
    layout: &Layout,
    files: &Files,
    mtime: u64,
    level: Compression,
) -> Result<Layer, PackageError> {
    let (tmp, file) = layout.temp_blob()?;
    let written = write_to(file, files, mtime, level);
    let (digest, diff_id, size) = match written {
        Ok(w) => w,
        Err(e) => {
            // A half-written blob must not stay behind in the layout.
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let blob = layout.commit_blob(&tmp, &digest, size, crate::media::LAYER_GZIP)?;
    Ok(Layer { blob, diff_id })
}

/// Streams the layer into `file`: (compressed digest, tar digest, size).
fn write_to(
    file: std::fs::File,
    files: &Files,
    mtime: u64,
    level: Compression,
) -> Result<(String, String, u64), PackageError> {
    let compressed = Hashing::new(file);
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(compressed, level);
    let mut tar = tar::Builder::new(Hashing::new(gz));
    tar.mode(tar::HeaderMode::Deterministic);
    for (path, (entry, uid)) in &files.entries {
        append(&mut tar, path, entry, *uid, mtime).map_err(|e| PackageError::Layer {
            path: path.clone(),
            source: e,
        })?;
    }
    let io = |source| PackageError::Io {
        what: "writing a layer".into(),
        source,
    };
    let uncompressed = tar.into_inner().map_err(io)?;
    let (gz, diff) = uncompressed.finish();
    let compressed = gz.finish().map_err(io)?;
    let (mut file, digest) = compressed.finish();
    file.flush().map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    Ok((digest, diff, size))
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    path: &str,
    entry: &Entry,
    uid: u32,
    mtime: u64,
) -> io::Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_mtime(mtime);
    header.set_uid(u64::from(uid));
    header.set_gid(u64::from(uid));
    match entry {
        Entry::Dir { mode } => {
            header.set_entry_type(tar::EntryType::Directory);
            header.set_mode(*mode);
            header.set_size(0);
            tar.append_data(&mut header, format!("{path}/"), io::empty())
        }
        Entry::File { source, mode } => {
            header.set_entry_type(tar::EntryType::Regular);
            header.set_mode(*mode);
            match source {
                Source::Bytes(b) => {
                    header.set_size(b.len() as u64);
                    tar.append_data(&mut header, path, b.as_slice())
                }
                Source::File(f) => {
                    let file = std::fs::File::open(f).map_err(|e| {
                        io::Error::new(e.kind(), format!("cannot open {}: {e}", f.display()))
                    })?;
                    header.set_size(file.metadata()?.len());
                    tar.append_data(&mut header, path, file.take(u64::MAX))
                }
            }
        }
    }
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
        }
    }

    fn finish(self) -> (W, String) {
        (self.inner, format!("sha256:{:x}", self.hasher.finalize()))
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(content: &[u8]) -> Files {
        let mut f = Files::default();
        f.file("/b/model.gguf", Source::Bytes(content.to_vec()), 0o644);
        f.file("/a/bin", Source::Bytes(b"#!".to_vec()), 0o755);
        f.dir("/tmp", 0o1777, 0);
        f
    }

    #[test]
    fn the_same_files_give_the_same_digests_and_any_change_another() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let a = write(&layout, &files(b"weights"), 0, Compression::fast()).unwrap();
        let b = write(&layout, &files(b"weights"), 0, Compression::fast()).unwrap();
        assert_eq!((&a.blob, &a.diff_id), (&b.blob, &b.diff_id));
        let c = write(&layout, &files(b"weightz"), 0, Compression::fast()).unwrap();
        assert_ne!(a.diff_id, c.diff_id);
        let d = write(&layout, &files(b"weights"), 1, Compression::fast()).unwrap();
        assert_ne!(a.diff_id, d.diff_id, "the timestamp is part of the layer");
        // The blob is stored under its digest, and no temporary file is left.
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".tmp")), "{names:?}");
        assert_eq!(
            std::fs::metadata(layout.blob_path(&a.blob.digest).unwrap())
                .unwrap()
                .len(),
            a.blob.size
        );
    }

    #[test]
    fn a_layer_from_unchanged_inputs_is_reused_and_a_lost_blob_rebuilt() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let src = dir.path().join("weights.bin");
        std::fs::write(&src, b"weights").unwrap();
        let mut f = Files::default();
        f.file("/models/w.bin", Source::File(src.clone()), 0o644);
        let first = write(&layout, &f, 0, Compression::fast()).unwrap();
        let blob = layout.blob_path(&first.blob.digest).unwrap();
        let built_at = std::fs::metadata(&blob).unwrap().modified().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let again = write(&layout, &f, 0, Compression::fast()).unwrap();
        assert_eq!(again.blob, first.blob);
        let now = std::fs::metadata(&blob).unwrap().modified().unwrap();
        assert_eq!(now, built_at, "the blob was written again");
        // The cache follows the content, not the path.
        std::fs::write(&src, b"weightz").unwrap();
        assert_ne!(
            write(&layout, &f, 0, Compression::fast()).unwrap().blob,
            first.blob
        );
        std::fs::write(&src, b"weights").unwrap();
        std::fs::remove_file(&blob).unwrap();
        let rebuilt = write(&layout, &f, 0, Compression::fast()).unwrap();
        assert_eq!(rebuilt.blob, first.blob);
        assert!(blob.exists());
    }

    #[test]
    fn entries_are_in_path_order_with_their_parents() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let layer = write(&layout, &files(b"w"), 0, Compression::fast()).unwrap();
        let gz = std::fs::File::open(layout.blob_path(&layer.blob.digest).unwrap()).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().mode().unwrap(),
                )
            })
            .collect();
        let paths: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(paths, ["a/", "a/bin", "b/", "b/model.gguf", "tmp/"]);
        assert_eq!(entries[4].1, 0o1777);
    }

    #[test]
    fn a_missing_source_file_is_an_error_naming_it_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::open(dir.path()).unwrap();
        let mut f = Files::default();
        f.file("/m", Source::File("/nonexistent/model.gguf".into()), 0o644);
        let e = write(&layout, &f, 0, Compression::fast()).unwrap_err();
        let chain = format!("{e}: {}", std::error::Error::source(&e).unwrap());
        assert!(chain.contains("/nonexistent/model.gguf"), "{chain}");
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs/sha256"))
                .unwrap()
                .count(),
            0
        );
        assert!(
            std::fs::read_dir(dir.path()).unwrap().all(|e| !e
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".tmp"))
        );
    }
}
