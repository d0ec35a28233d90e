//! Content digests: what the pipeline records for each stage's inputs and
//! outputs, and the key that lets an unchanged model skip optimization.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

/// `sha256:<hex>` of bytes.
pub fn of_bytes(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// `sha256:<hex>` of a model: a file's bytes, or a directory's files in
/// name order, each preceded by its relative path (so a rename changes it).
pub fn of_path(path: &Path) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    if path.is_dir() {
        let mut files = Vec::new();
        collect(path, path, &mut files)?;
        files.sort();
        for rel in files {
            hasher.update(rel.as_bytes());
            hasher.update([0]);
            feed(&mut hasher, &path.join(&rel))?;
        }
    } else {
        feed(&mut hasher, path)?;
    }
    Ok(format!("sha256:{:x}", hasher.finalize()))
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
        } else {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            out.push(rel.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

fn feed(hasher: &mut Sha256, file: &Path) -> std::io::Result<()> {
    let mut f = std::fs::File::open(file)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        hasher.update(&buf[..n]);
    }
}
