//! Reading the files of a model, which come from strangers: only regular
//! files (a FIFO would block, a device never end), and the small ones
//! (configs, tokenizers) only up to a size.

use std::io::Read;
use std::path::Path;

use crate::ModelError;

/// The largest JSON or tokenizer file read: Gemma 3's tokenizer.json is
/// 33 MB.
pub(crate) const MAX_SMALL_FILE: u64 = 256 << 20;

/// Fails unless `path` is a regular file (not a FIFO, device or folder).
/// Checked before opening: opening a FIFO waits for a writer.
pub fn regular_file(path: &Path) -> Result<(), ModelError> {
    let meta = std::fs::metadata(path).map_err(ModelError::io(path))?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(ModelError::invalid(path, "not a regular file"))
    }
}

/// The bytes of the regular file at `path`, at most `max` of them.
pub(crate) fn read_small(path: &Path, max: u64) -> Result<Vec<u8>, ModelError> {
    regular_file(path)?;
    let f = std::fs::File::open(path).map_err(ModelError::io(path))?;
    let mut bytes = Vec::new();
    // One byte past the limit tells a file that grew past it since.
    f.take(max + 1)
        .read_to_end(&mut bytes)
        .map_err(ModelError::io(path))?;
    if bytes.len() as u64 > max {
        return Err(ModelError::invalid(
            path,
            format!("larger than the {} MiB read of such a file", max >> 20),
        ));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_of_a_bounded_size_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let small = dir.path().join("a.json");
        std::fs::write(&small, b"{}").unwrap();
        assert_eq!(read_small(&small, 2).unwrap(), b"{}");
        let err = read_small(&small, 1).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
        // A device that never ends, and a folder.
        for path in [Path::new("/dev/zero"), dir.path()] {
            let err = read_small(path, 1 << 20).unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
    }
}
