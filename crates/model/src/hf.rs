//! Hugging Face model directories: `config.json`, safetensors headers, and the
//! sentence-transformers modules that say how token vectors become one vector.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::ModelError;
use crate::encoder::Prompts;

/// Headers larger than this are not safetensors headers but corruption.
const MAX_HEADER_BYTES: u64 = 100 * 1024 * 1024;

/// One tensor of a safetensors file, from its header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SafetensorsTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub bytes: u64,
    /// Which of the model's weight files holds it, and where its bytes start
    /// in that file.
    pub file: usize,
    pub offset: u64,
}

impl SafetensorsTensor {
    pub fn elements(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }
}

/// How token vectors are pooled into one text vector (sentence-transformers'
/// `1_Pooling/config.json`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    Mean,
    Cls,
    Max,
    MeanSqrtLen,
    LastToken,
}

#[derive(Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
    #[serde(default)]
    pooling_mode_lasttoken: bool,
}

#[derive(Deserialize)]
struct StModule {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

/// A Hugging Face model directory, read but not loaded.
#[derive(Debug, Clone)]
pub struct HfModel {
    pub dir: PathBuf,
    /// `config.json` as written; architectures read what they need from it.
    pub config: serde_json::Value,
    pub weight_files: Vec<PathBuf>,
    pub tensors: Vec<SafetensorsTensor>,
    pub pooling: Pooling,
    pub normalize: bool,
    /// sentence-transformers' prompts (`config_sentence_transformers.json`).
    pub prompts: Prompts,
}

impl HfModel {
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let config: serde_json::Value = read_json(&dir.join("config.json"))?;
        if !config.is_object() {
            return Err(ModelError::invalid(
                dir.join("config.json"),
                "expected a JSON object",
            ));
        }
        let weight_files = weight_files(dir)?;
        let mut tensors = Vec::new();
        for (i, f) in weight_files.iter().enumerate() {
            tensors.extend(read_safetensors_header(f, i)?);
        }
        let (pooling, normalize) = read_sentence_transformers(dir)?;
        let prompts = read_prompts(dir)?;
        Ok(Self {
            dir: dir.to_owned(),
            config,
            weight_files,
            tensors,
            pooling,
            normalize,
            prompts,
        })
    }

    /// `model_type` from config.json (`bert`, `llama`, ...).
    pub fn model_type(&self) -> Option<&str> {
        self.config.get("model_type").and_then(|v| v.as_str())
    }

    /// An integer field of config.json.
    pub fn config_usize(&self, key: &str) -> Option<usize> {
        self.config
            .get(key)
            .and_then(|v| v.as_u64())
            .map(|v| v as usize)
    }

    pub fn tokenizer_path(&self) -> PathBuf {
        self.dir.join("tokenizer.json")
    }
}

/// The weight files: the shards `model.safetensors.index.json` names (each
/// must exist), else every `*.safetensors` file of the directory.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index_path = dir.join("model.safetensors.index.json");
    if index_path.is_file() {
        #[derive(Deserialize)]
        struct Index {
            weight_map: std::collections::BTreeMap<String, String>,
        }
        let index: Index = read_json(&index_path)?;
        let names: std::collections::BTreeSet<&String> = index.weight_map.values().collect();
        let mut files = Vec::with_capacity(names.len());
        for name in names {
            let file = dir.join(name);
            if name.contains('/') || !file.is_file() {
                return Err(ModelError::invalid(
                    &index_path,
                    format!(
                        "the shard `{name}` it names is not a file in {}",
                        dir.display()
                    ),
                ));
            }
            files.push(file);
        }
        if files.is_empty() {
            return Err(ModelError::invalid(
                &index_path,
                "its weight_map names no shard",
            ));
        }
        return Ok(files);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(ModelError::io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ModelError::invalid(dir, "no *.safetensors weights"));
    }
    Ok(files)
}

pub(crate) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ModelError> {
    let bytes = crate::files::read_small(path, crate::files::MAX_SMALL_FILE)?;
    serde_json::from_slice(&bytes).map_err(|source| ModelError::Json {
        path: path.to_owned(),
        source,
    })
}

/// Reads the JSON header of a safetensors file and checks that every tensor's
/// byte range matches its dtype and shape and lies inside the file.
fn read_safetensors_header(path: &Path, file: usize) -> Result<Vec<SafetensorsTensor>, ModelError> {
    crate::files::regular_file(path)?;
    let mut f = File::open(path).map_err(ModelError::io(path))?;
    let file_len = f.metadata().map_err(ModelError::io(path))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| ModelError::invalid(path, "shorter than the 8-byte header length"))?;
    let header_len = header_length(u64::from_le_bytes(len), file_len)
        .map_err(|reason| ModelError::invalid(path, reason))?;
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(ModelError::io(path))?;
    parse_safetensors_header(&header, file_len, file).map_err(|e| match e {
        HeaderError::Json(source) => ModelError::Json {
            path: path.to_owned(),
            source,
        },
        HeaderError::Invalid(reason) => ModelError::invalid(path, reason),
    })
}

/// The header's length from the file's first 8 bytes, if it fits the file
/// and the limit.
pub(crate) fn header_length(declared: u64, file_len: u64) -> Result<u64, String> {
    if declared > MAX_HEADER_BYTES || declared + 8 > file_len {
        // Not the value read: the file may be anything (a linked secret),
        // and an error must not print its bytes.
        return Err(format!(
            "not a safetensors file: its 8-byte header length at offset 0 \
             does not fit the file ({file_len} bytes) or the {MAX_HEADER_BYTES}-byte limit"
        ));
    }
    Ok(declared)
}

pub(crate) enum HeaderError {
    Json(serde_json::Error),
    Invalid(String),
}

/// The tensors a safetensors JSON header `header` lists, in a file of
/// `file_len` bytes (the header starting at byte 8): every range checked
/// against its dtype and shape and against the data that follows.
pub(crate) fn parse_safetensors_header(
    header: &[u8],
    file_len: u64,
    file: usize,
) -> Result<Vec<SafetensorsTensor>, HeaderError> {
    let header_len = header.len() as u64;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(HeaderError::Json)?;
    let data_len = file_len
        .checked_sub(8 + header_len)
        .ok_or_else(|| HeaderError::Invalid("the header is longer than the file".into()))?;
    let mut tensors = Vec::with_capacity(header.len());
    for (name, entry) in header {
        if name == "__metadata__" {
            continue;
        }
        #[derive(Deserialize)]
        struct Entry {
            dtype: String,
            shape: Vec<usize>,
            data_offsets: (u64, u64),
        }
        let e: Entry = serde_json::from_value(entry)
            .map_err(|err| HeaderError::Invalid(format!("tensor `{name}`: {err}")))?;
        let (begin, end) = e.data_offsets;
        let width = dtype_width(&e.dtype).ok_or_else(|| {
            HeaderError::Invalid(format!("tensor `{name}`: unknown dtype `{}`", e.dtype))
        })?;
        // Checked: a hostile shape must not wrap around to a plausible size.
        let elements = e
            .shape
            .iter()
            .try_fold(1u64, |n, &d| n.checked_mul(d as u64));
        let size = elements.and_then(|n| n.checked_mul(width));
        let elements = elements.unwrap_or(u64::MAX);
        if end < begin || end > data_len || Some(end - begin) != size {
            return Err(HeaderError::Invalid(format!(
                "tensor `{name}`: data_offsets [{begin}, {end}] do not hold {elements} {} values inside {data_len} data bytes",
                e.dtype
            )));
        }
        tensors.push(SafetensorsTensor {
            name,
            dtype: e.dtype,
            shape: e.shape,
            bytes: end - begin,
            file,
            offset: 8 + header_len + begin,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(tensors)
}

fn dtype_width(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" | "F8_E4M3" | "F8_E5M2" => 1,
        _ => return None,
    })
}

/// Pooling and normalization from `modules.json`; without one, mean pooling and
/// no normalization (what most BERT sentence encoders use).
fn read_sentence_transformers(dir: &Path) -> Result<(Pooling, bool), ModelError> {
    let modules_path = dir.join("modules.json");
    if !modules_path.is_file() {
        return Ok((Pooling::Mean, false));
    }
    let modules: Vec<StModule> = read_json(&modules_path)?;
    let normalize = modules.iter().any(|m| m.kind.ends_with(".Normalize"));
    let pooling = match modules.iter().find(|m| m.kind.ends_with(".Pooling")) {
        None => Pooling::Mean,
        Some(m) => {
            let cfg_path = dir.join(&m.path).join("config.json");
            let cfg: PoolingConfig = read_json(&cfg_path)?;
            pooling_from(&cfg)
                .ok_or_else(|| ModelError::invalid(cfg_path, "no pooling_mode_* is set to true"))?
        }
    };
    Ok((pooling, normalize))
}

/// The prompts of `config_sentence_transformers.json`, if the model has one
/// (that the default is one of them, [`crate::Encoder`] checks).
fn read_prompts(dir: &Path) -> Result<Prompts, ModelError> {
    let path = dir.join("config_sentence_transformers.json");
    if !path.is_file() {
        return Ok(Prompts::default());
    }
    #[derive(Deserialize)]
    struct Config {
        #[serde(default)]
        prompts: std::collections::BTreeMap<String, String>,
        #[serde(default)]
        default_prompt_name: Option<String>,
    }
    let c: Config = read_json(&path)?;
    Ok(Prompts {
        named: c.prompts,
        default: c.default_prompt_name,
    })
}

fn pooling_from(c: &PoolingConfig) -> Option<Pooling> {
    // sentence-transformers allows several modes at once (concatenated); the
    // models we serve set exactly one, so the first set one wins.
    [
        (c.pooling_mode_cls_token, Pooling::Cls),
        (c.pooling_mode_mean_tokens, Pooling::Mean),
        (c.pooling_mode_max_tokens, Pooling::Max),
        (c.pooling_mode_mean_sqrt_len_tokens, Pooling::MeanSqrtLen),
        (c.pooling_mode_lasttoken, Pooling::LastToken),
    ]
    .into_iter()
    .find_map(|(on, p)| on.then_some(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_safetensors(dir: &Path, header: &str, data_len: usize) -> PathBuf {
        let path = dir.join("model.safetensors");
        let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(header.as_bytes());
        bytes.extend(std::iter::repeat_n(0u8, data_len));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn reads_a_valid_header() {
        let d = tempfile::tempdir().unwrap();
        let p = write_safetensors(
            d.path(),
            r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},"__metadata__":{"format":"pt"}}"#,
            24,
        );
        let t = read_safetensors_header(&p, 0).unwrap();
        assert_eq!(t.len(), 1);
        assert_eq!(t[0].elements(), 6);
        assert_eq!(t[0].bytes, 24);
    }

    #[test]
    fn rejects_offsets_outside_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = write_safetensors(
            d.path(),
            r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]}}"#,
            8,
        );
        let err = read_safetensors_header(&p, 0).unwrap_err().to_string();
        assert!(err.contains("tensor `a`"), "{err}");
    }

    #[test]
    fn rejects_a_header_length_past_the_end() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("model.safetensors");
        std::fs::write(&p, 1_000_000u64.to_le_bytes()).unwrap();
        let err = read_safetensors_header(&p, 0).unwrap_err().to_string();
        assert!(err.contains("offset 0"), "{err}");
    }

    /// A `model.safetensors` that is something else (a secret linked in):
    /// the error says so without printing what its first bytes hold.
    #[test]
    fn a_file_that_is_not_safetensors_is_not_echoed() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("model.safetensors");
        let secret = b"hunter2-password-of-the-admin";
        std::fs::write(&p, secret).unwrap();
        let err = read_safetensors_header(&p, 0).unwrap_err().to_string();
        let as_length = u64::from_le_bytes(secret[..8].try_into().unwrap());
        assert!(err.contains("not a safetensors file"), "{err}");
        assert!(!err.contains(&as_length.to_string()), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn pooling_mode_is_read() {
        let cfg: PoolingConfig =
            serde_json::from_str(r#"{"pooling_mode_cls_token": true}"#).unwrap();
        assert_eq!(pooling_from(&cfg), Some(Pooling::Cls));
        let none: PoolingConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(pooling_from(&none), None);
    }
}
