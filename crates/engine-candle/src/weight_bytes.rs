//! A model file's bytes, memory-mapped: the weights our kernels read are
//! used where they lie in the file (no copy at load, shared through the page
//! cache by every replica on the node), and the ones candle needs in its own
//! storage are copied out and their pages let go.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::gguf_file::Content;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Result};
use memmap2::{Advice, Mmap, UncheckedAdvice};
use modelship_model::GgufFile;

/// One tensor as its file stores it: GGUF type, dims rows first, bytes.
pub(crate) struct StoredTensor {
    pub dtype: GgmlDType,
    pub dims: Vec<usize>,
    pub bytes: WeightBytes,
}

impl StoredTensor {
    /// The bytes `dims` of `dtype` take, if the dims are whole blocks and
    /// the count fits in memory.
    pub(crate) fn expected_bytes(dtype: GgmlDType, dims: &[usize]) -> Option<usize> {
        let elements = dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d))?;
        let block = dtype.block_size();
        elements
            .is_multiple_of(block)
            .then(|| (elements / block).checked_mul(dtype.type_size()))?
    }

    /// A copy in candle's storage on `device`, the file's pages let go:
    /// candle's copy is the one the replica keeps.
    pub(crate) fn into_qtensor(self, device: &Device) -> Result<QTensor> {
        let t = self.qtensor(device)?;
        self.bytes.release();
        Ok(t)
    }

    /// A copy in candle's storage on `device`.
    pub(crate) fn qtensor(&self, device: &Device) -> Result<QTensor> {
        if Self::expected_bytes(self.dtype, &self.dims) != Some(self.bytes.len()) {
            candle_core::bail!(
                "a {:?} tensor of dims {:?} cannot be {} bytes",
                self.dtype,
                self.dims,
                self.bytes.len()
            );
        }
        // candle views the bytes as its block type (aligned to at most 8):
        // a safetensors tensor may start anywhere, so copy it when it must.
        let t = if (self.bytes.as_ptr() as usize).is_multiple_of(8) {
            candle_core::quantized::ggml_file::qtensor_from_ggml(
                self.dtype,
                &self.bytes,
                self.dims.clone(),
                device,
            )?
        } else {
            let mut aligned = vec![0u64; self.bytes.len().div_ceil(8)];
            // SAFETY: `aligned` holds at least `len` bytes, and u64 has no
            // invalid bit patterns to view as bytes.
            let view = unsafe {
                std::slice::from_raw_parts_mut(aligned.as_mut_ptr().cast::<u8>(), self.bytes.len())
            };
            view.copy_from_slice(&self.bytes);
            candle_core::quantized::ggml_file::qtensor_from_ggml(
                self.dtype,
                view,
                self.dims.clone(),
                device,
            )?
        };
        Ok(t)
    }

    /// As f32 values on `device` (norms, biases).
    pub(crate) fn dequantize(self, device: &Device) -> Result<candle_core::Tensor> {
        self.into_qtensor(device)?.dequantize(device)
    }
}

/// A GGUF file's tensors, read from its mapping.
pub(crate) struct GgufTensors<'a> {
    content: &'a Content,
    map: WeightBytes,
}

impl<'a> GgufTensors<'a> {
    pub(crate) fn open(gguf: &'a GgufFile) -> Result<Self> {
        let map = WeightBytes::map(&gguf.path)
            .map_err(|e| candle_core::Error::Msg(format!("{}: {e}", gguf.path.display())))?;
        Ok(Self {
            content: &gguf.content,
            map,
        })
    }

    pub(crate) fn has(&self, name: &str) -> bool {
        self.content.tensor_infos.contains_key(name)
    }

    /// The tensor `name`, its bytes checked to lie inside the file.
    pub(crate) fn get(&self, name: &str) -> Result<StoredTensor> {
        let Some(info) = self.content.tensor_infos.get(name) else {
            candle_core::bail!("tensor `{name}` is missing");
        };
        let (dtype, dims) = (info.ggml_dtype, info.shape.dims().to_vec());
        let Some(len) = StoredTensor::expected_bytes(dtype, &dims) else {
            candle_core::bail!("tensor `{name}`: dims {dims:?} are not whole {dtype:?} blocks");
        };
        let start = (self.content.tensor_data_offset).checked_add(info.offset);
        let Some(bytes) = start.and_then(|s| self.map.slice(s, len as u64)) else {
            candle_core::bail!(
                "tensor `{name}`: its {len} bytes at offset {} of the data lie past the end of the file ({} bytes)",
                info.offset,
                self.map.len()
            );
        };
        Ok(StoredTensor { dtype, dims, bytes })
    }
}

/// A range of bytes: of a read-only file mapping, or of an owned buffer.
/// Clones share the bytes.
#[derive(Clone)]
pub(crate) struct WeightBytes {
    backing: Arc<Backing>,
    start: usize,
    len: usize,
}

enum Backing {
    Mapped(Mmap),
    Owned(Box<[u8]>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(b) => b,
        }
    }
}

impl WeightBytes {
    pub(crate) fn owned(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        Self {
            backing: Arc::new(Backing::Owned(bytes.into_boxed_slice())),
            start: 0,
            len,
        }
    }

    /// The whole of the regular file at `path`, mapped read-only.
    ///
    /// The file must not be written or truncated while it is mapped, as for
    /// llama.cpp and every runtime that maps its weights: the mapping is
    /// shared, so a write shows through and a truncation faults the replica
    /// (SIGBUS). modelship writes models under new names and renames them
    /// into place, which leaves a mapped file as it was.
    pub(crate) fn map(path: &Path) -> std::io::Result<Self> {
        // The project's one rule for model files (a FIFO would block the open).
        modelship_model::regular_file(path)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e.to_string()))?;
        let file = File::open(path)?;
        // SAFETY: read-only; sound while nobody writes or truncates the file
        // (above), which modelship itself never does to a model it serves.
        let map = unsafe { Mmap::map(&file)? };
        let len = map.len();
        Ok(Self {
            backing: Arc::new(Backing::Mapped(map)),
            start: 0,
            len,
        })
    }

    /// Bytes `offset..offset + len` of these, or `None` past their end.
    pub(crate) fn slice(&self, offset: u64, len: u64) -> Option<Self> {
        let offset = usize::try_from(offset).ok()?;
        let len = usize::try_from(len).ok()?;
        (offset.checked_add(len)? <= self.len).then(|| Self {
            backing: self.backing.clone(),
            start: self.start + offset,
            len,
        })
    }

    /// Whether these lie in a file mapping (used in place) rather than in
    /// memory of their own.
    #[cfg(test)]
    pub(crate) fn is_mapped(&self) -> bool {
        matches!(*self.backing, Backing::Mapped(_))
    }

    /// Asks the kernel to read these ahead: they will be used in place, and
    /// a first request faulting them in one page at a time is slower.
    pub(crate) fn will_need(&self) {
        if let Backing::Mapped(m) = &*self.backing {
            // Advice only: a kernel that refuses it loses nothing.
            let _ = m.advise_range(Advice::WillNeed, self.start, self.len);
        }
    }

    /// Lets go of the pages wholly inside these once their values have been
    /// copied elsewhere (into candle's storage), so they are not counted in
    /// the replica's resident memory a second time. The bytes stay readable:
    /// a later read faults them in again from the file.
    pub(crate) fn release(&self) {
        let Backing::Mapped(m) = &*self.backing else {
            return;
        };
        let first = self.start.next_multiple_of(RELEASE_ALIGN);
        let end = (self.start + self.len) / RELEASE_ALIGN * RELEASE_ALIGN;
        if end > first {
            // SAFETY: the mapping is read-only, so no page holds a change
            // that DONTNEED could discard: a later access reads the file.
            let _ =
                unsafe { m.unchecked_advise_range(UncheckedAdvice::DontNeed, first, end - first) };
        }
    }
}

impl std::ops::Deref for WeightBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        &self.backing.bytes()[self.start..self.start + self.len]
    }
}

/// `release` lets go of whole 64 KiB units only: the largest page Linux
/// uses on x86-64 and aarch64 (4, 16 or 64 KiB), so the advice never
/// reaches a page the next tensor shares, whatever the page size, and at
/// most 128 KiB of a tensor stays resident.
const RELEASE_ALIGN: usize = 64 << 10;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_of_a_mapping_read_the_file_and_stop_at_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.bin");
        let data: Vec<u8> = (0..3 * RELEASE_ALIGN + 17)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        std::fs::write(&path, &data).unwrap();
        let map = WeightBytes::map(&path).unwrap();
        assert!(map.is_mapped());
        let (a, b) = (4000, 2 * RELEASE_ALIGN + 5000);
        let s = map.slice(a as u64, (b - a) as u64).unwrap();
        assert_eq!(&*s, &data[a..b]);
        let inner = s.slice(100, 10).unwrap();
        assert_eq!(&*inner, &data[a + 100..a + 110]);
        assert!(map.slice(data.len() as u64 - 3, 4).is_none());
        assert!(map.slice(u64::MAX, 2).is_none());
        assert!(s.slice((b - a - 1) as u64, 2).is_none());
        // Released pages read the file again.
        s.release();
        assert_eq!(&*s, &data[a..b]);
    }

    #[test]
    fn only_regular_files_are_mapped() {
        let dir = tempfile::tempdir().unwrap();
        let err = WeightBytes::map(dir.path()).err().unwrap();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
