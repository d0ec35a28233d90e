//! A GGUF file's header (metadata and tensor table) read from its bytes with
//! every count, length and offset checked before anything is allocated: a
//! model file is untrusted input. candle's reader divides by a zero
//! alignment, allocates what a count claims, and turns a 50 MB metadata
//! array into gigabytes of `Value`s; this one refuses or skips instead, and
//! returns candle's [`Content`] so the rest of modelship reads it as before.

use std::collections::HashMap;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, TensorInfo, Value, VersionedMagic};

/// Most tensors and metadata entries a header may declare (llama.cpp's
/// largest models hold a few thousand tensors).
const MAX_ENTRIES: u64 = 1 << 20;
/// Longest key or tensor name.
const MAX_NAME: u64 = 1 << 12;
/// Longest string value (a chat template is tens of kilobytes).
const MAX_STRING: u64 = 16 << 20;
/// Arrays up to this many elements are kept whatever their key; longer
/// ones only under `tokenizer.` (a vocabulary, its scores and merges).
const SMALL_ARRAY: u64 = 1 << 16;
/// The most elements a kept array may hold.
const MAX_ARRAY: u64 = 1 << 24;
/// ggml's limit on a tensor's dimensions.
const MAX_DIMS: u32 = 4;

/// The header, and the metadata keys whose arrays were skipped (long, and
/// nothing modelship reads).
pub(crate) struct Header {
    pub content: Content,
    pub skipped: Vec<String>,
}

/// Reads the header of the GGUF file whose bytes are `b`; the error names
/// what is wrong and where.
pub(crate) fn read(b: &[u8]) -> Result<Header, String> {
    let mut r = Reader { b, at: 0 };
    if r.take(4)? != b"GGUF" {
        return Err("not a GGUF file (no GGUF magic)".into());
    }
    let magic = match r.u32()? {
        2 => VersionedMagic::GgufV2,
        3 => VersionedMagic::GgufV3,
        v => return Err(format!("GGUF version {v} (versions 2 and 3 are read)")),
    };
    // Each tensor entry takes at least 8 (name length) + 4 + 4 + 8 bytes,
    // each metadata entry 8 + 4 + 1.
    let tensors = r.count("tensor count", MAX_ENTRIES, 24)?;
    let entries = r.count("metadata count", MAX_ENTRIES, 13)?;
    let mut metadata = HashMap::new();
    let mut skipped = Vec::new();
    for _ in 0..entries {
        let key = r.string(MAX_NAME, "a metadata key")?.to_owned();
        let ty = r.u32()?;
        let keep = key.starts_with("tokenizer.");
        match r.value(ty, &key, keep, 0)? {
            Some(v) => {
                if metadata.insert(key.clone(), v).is_some() {
                    return Err(format!("metadata key `{key}` appears twice"));
                }
            }
            None => skipped.push(key),
        }
    }
    let alignment = match metadata.get("general.alignment") {
        None => 32,
        Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
        Some(v) => return Err(format!("general.alignment is {v:?}, not a power of two")),
    };
    let mut infos = HashMap::new();
    let mut spans = Vec::with_capacity(tensors);
    for _ in 0..tensors {
        let at = r.at;
        let name = r.string(MAX_NAME, "a tensor name")?.to_owned();
        let n_dims = r.u32()?;
        if n_dims == 0 || n_dims > MAX_DIMS {
            return Err(format!(
                "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS})"
            ));
        }
        // GGUF lists the fastest-varying dimension first; candle's shapes
        // are rows first.
        let mut dims = (0..n_dims)
            .map(|_| r.u64())
            .collect::<Result<Vec<_>, _>>()?;
        dims.reverse();
        let ty = r.u32()?;
        let dtype = dtype(ty).ok_or_else(|| format!("tensor `{name}` has unknown type {ty}"))?;
        let offset = r.u64()?;
        let bytes = tensor_bytes(dtype, &dims).ok_or_else(|| {
            format!(
                "tensor `{name}`: dims {dims:?} are not whole {dtype:?} blocks of a size that fits"
            )
        })?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
            ));
        }
        let dims = dims
            .iter()
            .map(|&d| {
                usize::try_from(d)
                    .map_err(|_| format!("tensor `{name}`: dimension {d} is too large"))
            })
            .collect::<Result<Vec<_>, _>>()?;
        spans.push((offset, bytes, name.clone()));
        let info = TensorInfo {
            ggml_dtype: dtype,
            shape: dims.into(),
            offset,
        };
        if infos.insert(name.clone(), info).is_some() {
            return Err(format!(
                "tensor `{name}` (entry at byte {at}) appears twice"
            ));
        }
    }
    let data = (r.at as u64).next_multiple_of(alignment);
    let file = b.len() as u64;
    spans.sort();
    let mut end = 0u64;
    for (offset, bytes, name) in &spans {
        if *offset < end {
            return Err(format!(
                "tensor `{name}` at data offset {offset} overlaps the tensor before it (which ends at {end})"
            ));
        }
        end = offset
            .checked_add(*bytes)
            .filter(|e| data.checked_add(*e).is_some_and(|abs| abs <= file))
            .ok_or_else(|| {
                format!("tensor `{name}`: {bytes} bytes at data offset {offset} run past the end of the file ({file} bytes, data from {data})")
            })?;
    }
    Ok(Header {
        content: Content {
            magic,
            metadata,
            tensor_infos: infos,
            tensor_data_offset: data,
        },
        skipped,
    })
}

/// Bytes of a tensor of `dtype` with `dims`, if whole blocks and at most
/// 2^62.
fn tensor_bytes(dtype: GgmlDType, dims: &[u64]) -> Option<u64> {
    let elements = dims.iter().try_fold(1u64, |n, &d| n.checked_mul(d))?;
    let block = dtype.block_size() as u64;
    let bytes = (elements % block == 0)
        .then(|| (elements / block).checked_mul(dtype.type_size() as u64))??;
    (bytes <= 1 << 62).then_some(bytes)
}

/// ggml's type numbers (`ggml_type`).
fn dtype(t: u32) -> Option<GgmlDType> {
    use GgmlDType::*;
    Some(match t {
        0 => F32,
        1 => F16,
        2 => Q4_0,
        3 => Q4_1,
        6 => Q5_0,
        7 => Q5_1,
        8 => Q8_0,
        9 => Q8_1,
        10 => Q2K,
        11 => Q3K,
        12 => Q4K,
        13 => Q5K,
        14 => Q6K,
        15 => Q8K,
        30 => BF16,
        _ => return None,
    })
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| {
                format!(
                    "the header is cut short at byte {} ({n} more bytes needed)",
                    self.at
                )
            })?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        Ok(self.take(N)?.try_into().expect("took N bytes"))
    }

    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn left(&self) -> u64 {
        (self.b.len() - self.at) as u64
    }

    /// A count of items taking at least `each` bytes: at most `max`, and
    /// no more than the bytes left could hold.
    fn count(&mut self, what: &str, max: u64, each: u64) -> Result<usize, String> {
        let at = self.at;
        let n = self.u64()?;
        if n > max || n.saturating_mul(each) > self.left() {
            return Err(format!(
                "{what} {n} at byte {at} is more than the file could hold"
            ));
        }
        Ok(n as usize)
    }

    fn string(&mut self, max: u64, what: &str) -> Result<&'a str, String> {
        let at = self.at;
        let len = self.u64()?;
        if len > max || len > self.left() {
            return Err(format!("{what} at byte {at} claims {len} bytes"));
        }
        std::str::from_utf8(self.take(len as usize)?)
            .map_err(|_| format!("{what} at byte {at} is not UTF-8"))
    }

    /// A value of type `ty` (for `key`, in errors); arrays are kept when
    /// `keep` or small, else skipped (`None`).
    fn value(
        &mut self,
        ty: u32,
        key: &str,
        keep: bool,
        depth: u8,
    ) -> Result<Option<Value>, String> {
        let at = self.at;
        Ok(Some(match ty {
            0 => Value::U8(self.array::<1>()?[0]),
            1 => Value::I8(self.array::<1>()?[0] as i8),
            2 => Value::U16(u16::from_le_bytes(self.array()?)),
            3 => Value::I16(i16::from_le_bytes(self.array()?)),
            4 => Value::U32(self.u32()?),
            5 => Value::I32(i32::from_le_bytes(self.array()?)),
            6 => Value::F32(f32::from_le_bytes(self.array()?)),
            7 => match self.array::<1>()?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(format!("`{key}`: {b} at byte {at} is not a boolean")),
            },
            8 => Value::String(self.string(MAX_STRING, &format!("`{key}`"))?.to_owned()),
            9 if depth > 0 => return Err(format!("`{key}`: arrays nest at most once")),
            9 => {
                let elem = self.u32()?;
                let each = fixed_size(elem).unwrap_or(8);
                let n = self.count(&format!("`{key}` array length"), u64::MAX, each)?;
                if !(keep || n as u64 <= SMALL_ARRAY) || n as u64 > MAX_ARRAY {
                    self.skip(elem, n, key)?;
                    return Ok(None);
                }
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(
                        self.value(elem, key, keep, depth + 1)?
                            .expect("elements are never skipped"),
                    );
                }
                Value::Array(items)
            }
            10 => Value::U64(self.u64()?),
            11 => Value::I64(i64::from_le_bytes(self.array()?)),
            12 => Value::F64(f64::from_le_bytes(self.array()?)),
            other => {
                return Err(format!(
                    "`{key}`: value type {other} at byte {at} is none GGUF defines"
                ));
            }
        }))
    }

    /// Steps over `n` elements of type `elem` without keeping them.
    fn skip(&mut self, elem: u32, n: usize, key: &str) -> Result<(), String> {
        match (elem, fixed_size(elem)) {
            (_, Some(size)) => {
                self.take(n * size as usize)?;
            }
            (8, None) => {
                for _ in 0..n {
                    self.string(MAX_STRING, &format!("`{key}`"))?;
                }
            }
            (other, None) => return Err(format!("`{key}`: an array of type {other} is not read")),
        }
        Ok(())
    }
}

/// Bytes of one value of a fixed-size type.
fn fixed_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header writer for the tests: metadata entries, then tensors.
    #[derive(Default)]
    struct Gguf {
        kv: Vec<u8>,
        n_kv: u64,
        tensors: Vec<u8>,
        n_tensors: u64,
        data: u64,
    }

    impl Gguf {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.extend((s.len() as u64).to_le_bytes());
            out.extend(s.as_bytes());
        }

        fn kv(mut self, key: &str, ty: u32, value: &[u8]) -> Self {
            Self::string(&mut self.kv, key);
            self.kv.extend(ty.to_le_bytes());
            self.kv.extend(value);
            self.n_kv += 1;
            self
        }

        fn tensor(mut self, name: &str, dims: &[u64], ty: u32, offset: u64) -> Self {
            Self::string(&mut self.tensors, name);
            self.tensors.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                self.tensors.extend(d.to_le_bytes());
            }
            self.tensors.extend(ty.to_le_bytes());
            self.tensors.extend(offset.to_le_bytes());
            self.n_tensors += 1;
            self
        }

        fn data(mut self, bytes: u64) -> Self {
            self.data = bytes;
            self
        }

        fn bytes(&self) -> Vec<u8> {
            let mut out = b"GGUF".to_vec();
            out.extend(3u32.to_le_bytes());
            out.extend(self.n_tensors.to_le_bytes());
            out.extend(self.n_kv.to_le_bytes());
            out.extend(&self.kv);
            out.extend(&self.tensors);
            out.resize(out.len().next_multiple_of(32) + self.data as usize, 0);
            out
        }
    }

    fn u32v(v: u32) -> Vec<u8> {
        v.to_le_bytes().to_vec()
    }

    #[test]
    fn reads_metadata_and_tensors_rows_first() {
        let mut tokens = 3u32.to_le_bytes().to_vec(); // strings
        tokens.extend(2u64.to_le_bytes());
        for t in ["a", "bc"] {
            Gguf::string(&mut tokens, t);
        }
        let g = Gguf::default()
            .kv("general.architecture", 8, &{
                let mut v = Vec::new();
                Gguf::string(&mut v, "llama");
                v
            })
            .kv("llama.block_count", 4, &u32v(2))
            .kv("tokenizer.ggml.tokens", 9, &{
                let mut v = 8u32.to_le_bytes().to_vec();
                v.extend(&tokens[4..]);
                v
            })
            .tensor("w", &[64, 3], 8, 0) // 3 rows of 64 Q8_0 values
            .tensor("n", &[64], 0, 224)
            .data(224 + 256);
        let h = read(&g.bytes()).unwrap();
        let c = &h.content;
        assert_eq!(c.metadata["llama.block_count"].to_u32().unwrap(), 2);
        assert_eq!(
            c.metadata["tokenizer.ggml.tokens"].to_vec().unwrap().len(),
            2
        );
        assert_eq!(c.tensor_infos["w"].shape.dims(), &[3, 64]);
        assert_eq!(c.tensor_infos["n"].offset, 224);
        assert_eq!(c.tensor_data_offset % 32, 0);
        assert!(h.skipped.is_empty());
    }

    #[test]
    fn long_arrays_nothing_reads_are_skipped() {
        let n = SMALL_ARRAY + 1;
        let mut v = 0u32.to_le_bytes().to_vec(); // u8 elements
        v.extend(n.to_le_bytes());
        v.extend(vec![7u8; n as usize]);
        let g = Gguf::default()
            .kv("general.blob", 9, &v)
            .kv("x.y", 4, &u32v(1));
        let h = read(&g.bytes()).unwrap();
        assert_eq!(h.skipped, ["general.blob"]);
        assert_eq!(h.content.metadata["x.y"].to_u32().unwrap(), 1);
    }

    #[test]
    fn hostile_headers_are_named_errors() {
        let bad = |g: Gguf| read(&g.bytes()).err().expect("refused");
        assert!(bad(Gguf::default().kv("general.alignment", 4, &u32v(0))).contains("power of two"));
        assert!(bad(Gguf::default().kv("general.alignment", 4, &u32v(3))).contains("power of two"));
        // An array claiming more elements than the file holds.
        let mut v = 0u32.to_le_bytes().to_vec();
        v.extend(u64::MAX.to_le_bytes());
        assert!(bad(Gguf::default().kv("general.blob", 9, &v)).contains("more than the file"));
        // A string longer than the file.
        let mut s = (1u64 << 40).to_le_bytes().to_vec();
        s.extend(b"x");
        assert!(bad(Gguf::default().kv("k", 8, &s)).contains("claims"));
        // 2^32 × 2^32 elements; past the end; overlapping; misaligned.
        assert!(bad(Gguf::default().tensor("t", &[1 << 32, 1 << 32], 0, 0)).contains("fits"));
        assert!(bad(Gguf::default().tensor("t", &[64], 0, 0).data(100)).contains("past the end"));
        let overlap = Gguf::default()
            .tensor("a", &[64], 0, 0)
            .tensor("b", &[64], 0, 128)
            .data(512);
        assert!(bad(overlap).contains("overlaps"));
        assert!(bad(Gguf::default().tensor("t", &[8], 0, 3).data(64)).contains("alignment"));
        assert!(
            bad(Gguf::default().tensor("t", &[8, 1, 1, 1, 1], 0, 0).data(64))
                .contains("dimensions")
        );
        assert!(bad(Gguf::default().tensor("t", &[8], 99, 0).data(64)).contains("unknown type"));
        // Counts beyond the file.
        let mut b = Gguf::default().bytes();
        b[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        let err = |b: &[u8]| read(b).err().expect("refused");
        assert!(err(&b).contains("tensor count"));
        assert!(err(&b[..10]).contains("cut short"));
        assert!(err(b"GGUF\x01\0\0\0").contains("version 1"));
    }
}
