//! A model to quantize, tensor by tensor: a GGUF file (any type candle
//! reads), a Hugging Face BERT directory, or a Hugging Face decoder
//! checkpoint (read as the GGUF llama.cpp's converter writes from it), with
//! tensors under their GGUF names and the GGUF metadata the output will
//! carry.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;
use candle_core::safetensors::MmapedSafetensors;
use modelship_model::{
    DecoderCheckpoint, ENCODER_TYPES, Encoder, EncoderFamily, EncoderOutput, HfModel, ModelSource,
    checkpoint_family, gguf_tensor_name,
};

use crate::encoder;
use crate::surgery::{self, Cut, Piece};
use crate::{QuantError, encode};

/// One tensor of the source: its GGUF name, shape (rows first) and type.
#[derive(Debug, Clone)]
pub struct SourceTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
    /// Bytes it takes in the source.
    pub bytes: u64,
    /// Its name in the source file.
    source_name: String,
    /// Where its bytes start in a GGUF file (unused for safetensors).
    file_offset: u64,
}

impl SourceTensor {
    pub fn elements(&self) -> usize {
        self.shape.iter().product()
    }
}

enum Reader {
    Gguf(memmap2::Mmap),
    Safetensors(MmapedSafetensors),
    Checkpoint(DecoderCheckpoint),
    /// Another source with a [`Cut`] applied: each tensor by its new name,
    /// the index of the tensor it comes from and what of it is kept.
    Cut {
        base: Box<Source>,
        pieces: HashMap<String, (usize, Piece)>,
    },
}

/// An opened source model.
pub struct Source {
    pub path: PathBuf,
    pub architecture: String,
    /// GGUF metadata to carry over (the file type is set by the writer).
    pub metadata: Vec<(String, Value)>,
    pub tensors: Vec<SourceTensor>,
    reader: Reader,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Source")
            .field("path", &self.path)
            .field("architecture", &self.architecture)
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Source {
    pub fn open(path: &Path) -> Result<Self, QuantError> {
        match ModelSource::detect(path)? {
            ModelSource::Gguf(file) => Self::open_gguf(&file),
            ModelSource::HfDir(dir) => Self::open_hf(&dir),
        }
    }

    fn open_gguf(path: &Path) -> Result<Self, QuantError> {
        let gguf = modelship_model::GgufFile::open(path)?;
        let architecture = gguf.architecture()?.to_owned();
        let content = gguf.content;
        let mut metadata: Vec<(String, Value)> = content
            .metadata
            .iter()
            .filter(|(k, _)| !k.starts_with("quantize.imatrix"))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        // Deterministic output: the reader's map has no order.
        metadata.sort_by(|a, b| a.0.cmp(&b.0));
        let mut tensors: Vec<SourceTensor> = content
            .tensor_infos
            .iter()
            .map(|(name, info)| SourceTensor {
                name: name.clone(),
                shape: info.shape.dims().to_vec(),
                dtype: info.ggml_dtype,
                bytes: crate::encode::encoded_len(info.ggml_dtype, info.shape.elem_count()) as u64,
                source_name: name.clone(),
                file_offset: content.tensor_data_offset + info.offset,
            })
            .collect();
        // File order, so that reading streams forward through the file.
        tensors.sort_by_key(|t| t.file_offset);
        let file = File::open(path).map_err(modelship_model::ModelError::io(path))?;
        // SAFETY: mapped read-only; modelship does not modify a model while
        // reading it (the same contract as candle's safetensors mapping).
        let map =
            unsafe { memmap2::Mmap::map(&file) }.map_err(modelship_model::ModelError::io(path))?;
        let _ = map.advise(memmap2::Advice::Sequential);
        for t in &tensors {
            if t.file_offset
                .checked_add(t.bytes)
                .is_none_or(|end| end > map.len() as u64)
            {
                return Err(QuantError::Invalid {
                    path: path.to_owned(),
                    reason: format!("tensor `{}` runs past the end of the file", t.name),
                });
            }
        }
        Ok(Self {
            path: path.to_owned(),
            architecture,
            metadata,
            tensors,
            reader: Reader::Gguf(map),
        })
    }

    fn open_hf(dir: &Path) -> Result<Self, QuantError> {
        let hf = HfModel::open(dir)?;
        let architecture = hf.model_type().unwrap_or("unknown").to_owned();
        if checkpoint_family(&architecture).is_some() {
            return Self::open_checkpoint(dir, DecoderCheckpoint::open(&hf)?);
        }
        let Some(family) = EncoderFamily::from_name(&architecture) else {
            return Err(QuantError::Unsupported {
                path: dir.to_owned(),
                what: format!(
                    "Hugging Face architecture `{architecture}` ({ENCODER_TYPES} and {} are)",
                    modelship_model::CHECKPOINT_TYPES
                ),
            });
        };
        let described = Encoder::from_hf(&hf)?;
        let classifier = matches!(described.output, EncoderOutput::Classifier(_));
        let invalid = |reason: String| QuantError::Invalid {
            path: dir.to_owned(),
            reason,
        };
        let tokenizer_path = hf.tokenizer_path();
        let tokenizer_json = std::fs::read_to_string(&tokenizer_path)
            .map_err(modelship_model::ModelError::io(&tokenizer_path))?;
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| architecture.clone());
        let metadata = encoder::metadata(&name, &described, &tokenizer_json).map_err(invalid)?;
        let mut tensors = Vec::new();
        for t in &hf.tensors {
            let Some(name) = gguf_tensor_name(family, &t.name, classifier).map_err(invalid)? else {
                continue;
            };
            let dtype = match t.dtype.as_str() {
                "F32" => GgmlDType::F32,
                "F16" => GgmlDType::F16,
                "BF16" => GgmlDType::BF16,
                other => return Err(invalid(format!("tensor `{}` has dtype {other}", t.name))),
            };
            tensors.push(SourceTensor {
                name,
                shape: t.shape.clone(),
                dtype,
                bytes: t.bytes,
                source_name: t.name.clone(),
                file_offset: 0,
            });
        }
        tensors.sort_by_key(|t| encoder_order(&t.name));
        // SAFETY: the weight files are mapped read-only and modelship does not
        // modify a model while reading it.
        let st = unsafe { MmapedSafetensors::multi(&hf.weight_files) }.map_err(|source| {
            QuantError::Read {
                path: dir.to_owned(),
                tensor: String::new(),
                source: Box::new(source),
            }
        })?;
        Ok(Self {
            path: dir.to_owned(),
            architecture,
            metadata,
            tensors,
            reader: Reader::Safetensors(st),
        })
    }

    fn open_checkpoint(dir: &Path, checkpoint: DecoderCheckpoint) -> Result<Self, QuantError> {
        let architecture = checkpoint.gguf.architecture()?.to_owned();
        let mut metadata: Vec<(String, Value)> = checkpoint
            .gguf
            .content
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        metadata.sort_by(|a, b| a.0.cmp(&b.0));
        let tensors = checkpoint
            .tensors
            .iter()
            .map(|t| SourceTensor {
                name: t.name.clone(),
                shape: t.shape.clone(),
                dtype: t.dtype,
                bytes: encode::encoded_len(t.dtype, t.shape.iter().product()) as u64,
                source_name: t.name.clone(),
                file_offset: 0,
            })
            .collect();
        Ok(Self {
            path: dir.to_owned(),
            architecture,
            metadata,
            tensors,
            reader: Reader::Checkpoint(checkpoint),
        })
    }

    /// This model with `cut` applied: its tensors renamed and narrowed as
    /// [`surgery::plan`] says, read from this one on demand. A tensor kept
    /// whole keeps its stored type and bytes; a narrowed one reads as f32.
    pub fn cut(self, cut: &Cut) -> Result<Self, QuantError> {
        let invalid = |reason: String| QuantError::Invalid {
            path: self.path.clone(),
            reason,
        };
        let shape = surgery::shape(&self.architecture, &self.metadata).map_err(invalid)?;
        let list: Vec<(String, Vec<usize>)> = self
            .tensors
            .iter()
            .map(|t| (t.name.clone(), t.shape.clone()))
            .collect();
        let plan = surgery::plan(&self.architecture, &list, shape, cut).map_err(invalid)?;
        let index: HashMap<&str, usize> = self
            .tensors
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.as_str(), i))
            .collect();
        let mut tensors = Vec::with_capacity(plan.pieces.len());
        let mut pieces = HashMap::with_capacity(plan.pieces.len());
        for piece in plan.pieces {
            let i = index[piece.from.as_str()];
            let from = &self.tensors[i];
            let narrowed = piece.rows.is_some() || piece.cols.is_some();
            let elements: usize = piece.shape.iter().product();
            tensors.push(SourceTensor {
                name: piece.name.clone(),
                shape: piece.shape.clone(),
                dtype: if narrowed { GgmlDType::F32 } else { from.dtype },
                bytes: if narrowed {
                    elements as u64 * 4
                } else {
                    from.bytes
                },
                source_name: from.name.clone(),
                file_offset: from.file_offset,
            });
            pieces.insert(piece.name.clone(), (i, piece));
        }
        let mut metadata = self.metadata.clone();
        for (key, value) in plan.metadata {
            match metadata.iter_mut().find(|(k, _)| *k == key) {
                Some(slot) => slot.1 = value,
                None => metadata.push((key, value)),
            }
        }
        metadata.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(Self {
            path: self.path.clone(),
            architecture: self.architecture.clone(),
            metadata,
            tensors,
            reader: Reader::Cut {
                base: Box::new(self),
                pieces,
            },
        })
    }

    /// A cut source's piece for `t`, and the base tensor it reads.
    fn piece<'a>(
        &self,
        base: &'a Source,
        pieces: &'a HashMap<String, (usize, Piece)>,
        t: &SourceTensor,
    ) -> Result<(&'a SourceTensor, &'a Piece), QuantError> {
        let (i, piece) = pieces.get(&t.name).ok_or_else(|| QuantError::Invalid {
            path: self.path.clone(),
            reason: format!("tensor `{}` is not in the cut model", t.name),
        })?;
        Ok((&base.tensors[*i], piece))
    }

    /// Transformer layers (`<arch>.block_count`).
    pub fn layers(&self) -> usize {
        self.arch_u32("block_count").unwrap_or(0) as usize
    }

    /// Query heads per key/value head (`attention.head_count` over
    /// `attention.head_count_kv`): 1 without grouped-query attention, or
    /// when either count is missing.
    pub fn query_heads_per_kv(&self) -> usize {
        match (
            self.arch_u32("attention.head_count"),
            self.arch_u32("attention.head_count_kv"),
        ) {
            (Some(q), Some(kv)) if kv > 0 => (q / kv).max(1) as usize,
            _ => 1,
        }
    }

    /// The metadata value `<arch>.<key>` as an integer.
    fn arch_u32(&self, key: &str) -> Option<u32> {
        let key = format!("{}.{key}", self.architecture);
        self.metadata
            .iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.to_u32().ok())
    }

    /// Bytes of all tensors in the source.
    pub fn weight_bytes(&self) -> u64 {
        self.tensors.iter().map(|t| t.bytes).sum()
    }

    /// One tensor's stored bytes: straight from the mapped file, or (for a
    /// checkpoint) read and converted.
    pub fn stored(&self, t: &SourceTensor) -> Result<Cow<'_, [u8]>, QuantError> {
        let bytes = match &self.reader {
            Reader::Gguf(map) => {
                // In bounds: checked for every tensor when the file was opened.
                let start = t.file_offset as usize;
                Cow::Borrowed(&map[start..start + t.bytes as usize])
            }
            Reader::Safetensors(st) => Cow::Borrowed(
                st.get(&t.source_name)
                    .map_err(|source| QuantError::Read {
                        path: self.path.clone(),
                        tensor: t.name.clone(),
                        source: Box::new(source),
                    })?
                    .data(),
            ),
            Reader::Checkpoint(c) => {
                let ct = c
                    .tensor(&t.source_name)
                    .ok_or_else(|| QuantError::Invalid {
                        path: self.path.clone(),
                        reason: format!("tensor `{}` is missing", t.name),
                    })?;
                Cow::Owned(c.read(ct)?)
            }
            Reader::Cut { base, pieces } => {
                let (from, piece) = self.piece(base, pieces, t)?;
                if piece.rows.is_none() && piece.cols.is_none() {
                    base.stored(from)?
                } else {
                    let floats = self.floats(t, Vec::new())?;
                    Cow::Owned(floats.iter().flat_map(|v| v.to_le_bytes()).collect())
                }
            }
        };
        if bytes.len() as u64 != t.bytes {
            return Err(QuantError::Invalid {
                path: self.path.clone(),
                reason: format!(
                    "tensor `{}` has {} bytes, not {}",
                    t.name,
                    bytes.len(),
                    t.bytes
                ),
            });
        }
        Ok(bytes)
    }

    /// Tells the OS this process is done with a tensor's pages: resident
    /// memory then stays near the tensors in flight instead of growing to
    /// the whole mapped file (the pages stay in the page cache).
    pub fn release(&self, t: &SourceTensor) {
        if let Reader::Cut { base, pieces } = &self.reader
            && let Ok((from, _)) = self.piece(base, pieces, t)
        {
            base.release(from);
        }
        if let Reader::Gguf(map) = &self.reader {
            let start = t.file_offset as usize;
            // SAFETY: the mapping is a read-only view of a file: dropping its
            // pages loses nothing, and a later read (a slice still borrowed,
            // or a neighbour sharing the first page) faults them in again
            // from the file with the same bytes.
            let _ = unsafe {
                map.unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    start,
                    t.bytes as usize,
                )
            };
        }
    }

    /// One tensor as f32, rows first: borrowed from the mapped file when it
    /// is stored as aligned little-endian f32 (no copy), else decoded into
    /// `scratch`'s allocation.
    pub fn floats(
        &self,
        t: &SourceTensor,
        mut scratch: Vec<f32>,
    ) -> Result<Cow<'_, [f32]>, QuantError> {
        if let Reader::Cut { base, pieces } = &self.reader {
            let (from, piece) = self.piece(base, pieces, t)?;
            let all = base.floats(from, scratch)?;
            if piece.rows.is_none() && piece.cols.is_none() {
                return Ok(all);
            }
            let cols = from.shape.last().copied().unwrap_or(1);
            // A vector's kept elements are its kept rows of one column.
            let (cols, rows, keep) = match from.shape.len() {
                1 => (1, piece.rows.as_deref(), None),
                _ => (cols, piece.rows.as_deref(), piece.cols.as_deref()),
            };
            return Ok(Cow::Owned(surgery::select(&all, cols, rows, keep)));
        }
        let bytes = self.stored(t)?;
        if let Cow::Borrowed(bytes) = bytes
            && t.dtype == GgmlDType::F32
            && cfg!(target_endian = "little")
            && let Ok(floats) = bytemuck::try_cast_slice::<u8, f32>(bytes)
        {
            return Ok(Cow::Borrowed(floats));
        }
        let bytes = &bytes[..];
        if matches!(t.dtype, GgmlDType::F32 | GgmlDType::F16 | GgmlDType::BF16) {
            floats_from_le(t.dtype, bytes, t.elements(), &mut scratch);
            return Ok(Cow::Owned(scratch));
        }
        // candle's dequantizers read blocks in place and assert their
        // alignment; a file with odd offsets is copied to aligned memory.
        let aligned;
        let bytes = if bytes.as_ptr().align_offset(4) == 0 {
            bytes
        } else {
            let mut words = vec![0u32; bytes.len().div_ceil(4)];
            bytemuck::cast_slice_mut::<u32, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
            aligned = words;
            &bytemuck::cast_slice(&aligned)[..bytes.len()]
        };
        let cols = t.shape.last().copied().unwrap_or(1);
        encode::decode_into(t.dtype, bytes, cols, &mut scratch).map_err(|source| {
            QuantError::Read {
                path: self.path.clone(),
                tensor: t.name.clone(),
                source: Box::new(source),
            }
        })?;
        Ok(Cow::Owned(scratch))
    }
}

/// Little-endian f32/f16/bf16 bytes to `n` floats in `out`.
fn floats_from_le(dtype: GgmlDType, raw: &[u8], n: usize, out: &mut Vec<f32>) {
    out.clear();
    out.reserve(n);
    out.extend(modelship_model::floats_le(dtype, raw));
}

/// llama.cpp's order for BERT: embeddings, then each layer's tensors.
fn encoder_order(name: &str) -> (usize, String) {
    match name.strip_prefix("blk.").and_then(|r| r.split_once('.')) {
        Some((layer, rest)) => (layer.parse::<usize>().unwrap_or(0) + 1, rest.to_owned()),
        None => (0, name.to_owned()),
    }
}
