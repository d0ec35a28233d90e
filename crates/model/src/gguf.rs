//! GGUF: the tensor table (read by `gguf_header`, every length checked
//! against the file) and typed metadata access.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};

use crate::ModelError;

const MAGIC: &[u8; 4] = b"GGUF";

pub(crate) fn has_magic(path: &Path) -> Result<bool, ModelError> {
    // Checked before opening: opening a FIFO would wait for a writer.
    crate::files::regular_file(path)?;
    let mut magic = [0u8; 4];
    let mut f = File::open(path).map_err(ModelError::io(path))?;
    match f.read_exact(&mut magic) {
        Ok(()) => Ok(&magic == MAGIC),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(ModelError::io(path)(e)),
    }
}

/// llama.cpp's name for a tensor type (`Q4_1`, `Q6_K`, ...).
pub fn ggml_dtype_name(t: GgmlDType) -> &'static str {
    use GgmlDType::*;
    match t {
        F32 => "F32",
        F16 => "F16",
        BF16 => "BF16",
        Q4_0 => "Q4_0",
        Q4_1 => "Q4_1",
        Q5_0 => "Q5_0",
        Q5_1 => "Q5_1",
        Q8_0 => "Q8_0",
        Q8_1 => "Q8_1",
        Q2K => "Q2_K",
        Q3K => "Q3_K",
        Q4K => "Q4_K",
        Q5K => "Q5_K",
        Q6K => "Q6_K",
        Q8K => "Q8_K",
    }
}

/// An f32 or f64 metadata value, as f32.
fn as_float(v: &Value) -> Option<f32> {
    match v {
        Value::F32(x) => Some(*x),
        Value::F64(x) => Some(*x as f32),
        _ => None,
    }
}

/// An opened GGUF file: its metadata and tensor table (no tensor data read).
pub struct GgufFile {
    pub path: PathBuf,
    pub content: Content,
    /// Metadata keys whose long arrays were skipped, not read (nothing in
    /// modelship reads them).
    pub skipped: Vec<String>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("tensors", &self.content.tensor_infos.len())
            .finish()
    }
}

impl GgufFile {
    /// The header of the GGUF file at `path`, every count, length and
    /// offset checked against the file (`gguf_header`).
    pub fn open(path: &Path) -> Result<Self, ModelError> {
        crate::files::regular_file(path)?;
        let file = File::open(path).map_err(ModelError::io(path))?;
        // SAFETY: read-only, and only while the header is read; modelship
        // does not write a model it reads.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(ModelError::io(path))?;
        let header =
            crate::gguf_header::read(&map).map_err(|reason| ModelError::invalid(path, reason))?;
        Ok(Self {
            path: path.to_owned(),
            content: header.content,
            skipped: header.skipped,
        })
    }

    fn get(&self, key: &str) -> Result<&Value, ModelError> {
        self.content
            .metadata
            .get(key)
            .ok_or_else(|| self.bad_key(key, "missing"))
    }

    fn bad_key(&self, key: &str, problem: &'static str) -> ModelError {
        ModelError::Metadata {
            path: self.path.clone(),
            key: key.to_owned(),
            problem,
        }
    }

    /// A string value.
    pub fn string(&self, key: &str) -> Result<&str, ModelError> {
        self.get(key)?
            .to_string()
            .map(String::as_str)
            .map_err(|_| self.bad_key(key, "not a string"))
    }

    /// An unsigned integer of any width.
    pub fn uint(&self, key: &str) -> Result<u64, ModelError> {
        let v = self.get(key)?;
        match v {
            Value::U8(x) => Ok(*x as u64),
            Value::U16(x) => Ok(*x as u64),
            Value::U32(x) => Ok(*x as u64),
            Value::U64(x) => Ok(*x),
            Value::I8(x) if *x >= 0 => Ok(*x as u64),
            Value::I16(x) if *x >= 0 => Ok(*x as u64),
            Value::I32(x) if *x >= 0 => Ok(*x as u64),
            Value::I64(x) if *x >= 0 => Ok(*x as u64),
            _ => Err(self.bad_key(key, "not a non-negative integer")),
        }
    }

    /// A float (f32 or f64).
    pub fn float(&self, key: &str) -> Result<f32, ModelError> {
        as_float(self.get(key)?).ok_or_else(|| self.bad_key(key, "not a float"))
    }

    pub fn bool(&self, key: &str) -> Result<bool, ModelError> {
        self.get(key)?
            .to_bool()
            .map_err(|_| self.bad_key(key, "not a boolean"))
    }

    /// An array's elements, each read by `item`; `what` names the element
    /// type in the error.
    fn array<'a, T>(
        &'a self,
        key: &str,
        what: &'static str,
        item: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Vec<T>, ModelError> {
        let arr = self
            .get(key)?
            .to_vec()
            .map_err(|_| self.bad_key(key, "not an array"))?;
        arr.iter()
            .map(|v| item(v).ok_or_else(|| self.bad_key(key, what)))
            .collect()
    }

    /// An array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>, ModelError> {
        self.array(key, "not an array of strings", |v| {
            v.to_string().ok().map(String::as_str)
        })
    }

    /// An array of integers.
    pub fn ints(&self, key: &str) -> Result<Vec<i64>, ModelError> {
        self.array(key, "not an array of integers", |v| match v {
            Value::I32(x) => Some(*x as i64),
            Value::U32(x) => Some(*x as i64),
            Value::I8(x) => Some(*x as i64),
            Value::U8(x) => Some(*x as i64),
            Value::I64(x) => Some(*x),
            _ => None,
        })
    }

    /// An array of floats (f32 or f64).
    pub fn floats(&self, key: &str) -> Result<Vec<f32>, ModelError> {
        self.array(key, "not an array of floats", as_float)
    }

    pub fn has(&self, key: &str) -> bool {
        self.content.metadata.contains_key(key)
    }

    /// `general.architecture`, e.g. `llama` or `bert`.
    pub fn architecture(&self) -> Result<&str, ModelError> {
        self.string("general.architecture")
    }

    /// An architecture-scoped integer such as `llama.context_length`.
    pub fn arch_uint(&self, suffix: &str) -> Result<u64, ModelError> {
        let key = format!("{}.{suffix}", self.architecture()?);
        self.uint(&key)
    }
}
