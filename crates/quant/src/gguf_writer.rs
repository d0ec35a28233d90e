//! A streaming GGUF (v3) writer: the header and tensor table first — every
//! tensor's size follows from its type and shape — then each tensor's bytes
//! as they are produced, so a model is never held in memory whole.

use std::io::Write;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::Value;

use crate::encode::encoded_len;

const ALIGNMENT: u64 = 32;

/// One entry of the tensor table. `shape` is rows first (candle's order);
/// GGUF stores dimensions innermost first, which [`GgufWriter`] handles.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: GgmlDType,
}

impl TensorEntry {
    pub fn bytes(&self) -> usize {
        encoded_len(self.dtype, self.shape.iter().product())
    }
}

/// Writes tensors in table order after the header.
pub struct GgufWriter<W: Write> {
    out: W,
    tensors: Vec<TensorEntry>,
    next: usize,
    written: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Writes the header, metadata and tensor table.
    pub fn new(
        mut out: W,
        metadata: &[(String, Value)],
        tensors: Vec<TensorEntry>,
    ) -> std::io::Result<Self> {
        let mut head = Vec::new();
        head.extend_from_slice(b"GGUF");
        head.extend_from_slice(&3u32.to_le_bytes());
        head.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        head.extend_from_slice(&(metadata.len() as u64).to_le_bytes());
        for (key, value) in metadata {
            put_string(&mut head, key);
            head.extend_from_slice(&type_id(value).to_le_bytes());
            put_value(&mut head, value).map_err(std::io::Error::other)?;
        }
        let mut offset = 0u64;
        for t in &tensors {
            put_string(&mut head, &t.name);
            head.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
            for &d in t.shape.iter().rev() {
                head.extend_from_slice(&(d as u64).to_le_bytes());
            }
            head.extend_from_slice(&ggml_type_id(t.dtype).to_le_bytes());
            head.extend_from_slice(&offset.to_le_bytes());
            offset = align(offset + t.bytes() as u64);
        }
        head.resize(align(head.len() as u64) as usize, 0);
        out.write_all(&head)?;
        Ok(Self {
            out,
            tensors,
            next: 0,
            written: 0,
        })
    }

    /// The next tensor's data, exactly its table size.
    pub fn write_tensor(&mut self, data: &[u8]) -> std::io::Result<()> {
        let Some(t) = self.tensors.get(self.next) else {
            return Err(std::io::Error::other("more tensors written than declared"));
        };
        if data.len() != t.bytes() {
            return Err(std::io::Error::other(format!(
                "tensor `{}`: {} bytes written, {} declared",
                t.name,
                data.len(),
                t.bytes()
            )));
        }
        self.out.write_all(data)?;
        let end = self.written + data.len() as u64;
        let padded = align(end);
        self.out.write_all(&vec![0u8; (padded - end) as usize])?;
        self.written = padded;
        self.next += 1;
        Ok(())
    }

    /// Checks that every declared tensor was written and returns the sink.
    pub fn finish(mut self) -> std::io::Result<W> {
        if self.next != self.tensors.len() {
            return Err(std::io::Error::other(format!(
                "{} of {} tensors written",
                self.next,
                self.tensors.len()
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

fn align(n: u64) -> u64 {
    n.div_ceil(ALIGNMENT) * ALIGNMENT
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// GGUF's value type ids.
fn type_id(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

fn put_value(out: &mut Vec<u8>, v: &Value) -> Result<(), String> {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.push(*x as u8),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_string(out, s),
        Value::Array(items) => {
            let element = items.first().map_or(4, type_id);
            if items.iter().any(|i| type_id(i) != element) {
                return Err("a GGUF array mixes value types".into());
            }
            out.extend_from_slice(&element.to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item)?;
            }
        }
    }
    Ok(())
}

/// ggml's type ids as stored in GGUF tensor tables.
pub fn ggml_type_id(t: GgmlDType) -> u32 {
    match t {
        GgmlDType::F32 => 0,
        GgmlDType::F16 => 1,
        GgmlDType::Q4_0 => 2,
        GgmlDType::Q4_1 => 3,
        GgmlDType::Q5_0 => 6,
        GgmlDType::Q5_1 => 7,
        GgmlDType::Q8_0 => 8,
        GgmlDType::Q8_1 => 9,
        GgmlDType::Q2K => 10,
        GgmlDType::Q3K => 11,
        GgmlDType::Q4K => 12,
        GgmlDType::Q5K => 13,
        GgmlDType::Q6K => 14,
        GgmlDType::Q8K => 15,
        GgmlDType::BF16 => 30,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::gguf_file::Content;

    /// What we write, candle's reader reads back: metadata, shapes, types, data.
    #[test]
    fn round_trips_through_candles_reader() {
        let metadata = vec![
            (
                "general.architecture".to_owned(),
                Value::String("llama".into()),
            ),
            ("llama.block_count".to_owned(), Value::U32(2)),
            ("x.eps".to_owned(), Value::F32(1e-5)),
            ("x.flag".to_owned(), Value::Bool(true)),
            (
                "tokenizer.ggml.tokens".to_owned(),
                Value::Array(vec![Value::String("a".into()), Value::String("bb".into())]),
            ),
        ];
        let a: Vec<f32> = (0..64).map(|i| i as f32 / 7.0).collect();
        let tensors = vec![
            TensorEntry {
                name: "a".into(),
                shape: vec![2, 32],
                dtype: GgmlDType::Q8_0,
            },
            TensorEntry {
                name: "b".into(),
                shape: vec![3],
                dtype: GgmlDType::F32,
            },
        ];
        let mut w = GgufWriter::new(Vec::new(), &metadata, tensors).unwrap();
        w.write_tensor(&crate::encode::encode(GgmlDType::Q8_0, &a, 32).unwrap())
            .unwrap();
        w.write_tensor(&crate::encode::encode(GgmlDType::F32, &[1.0, 2.0, 3.0], 3).unwrap())
            .unwrap();
        let bytes = w.finish().unwrap();

        let mut r = std::io::Cursor::new(bytes);
        let c = Content::read(&mut r).unwrap();
        assert_eq!(c.metadata["llama.block_count"].to_u32().unwrap(), 2);
        assert!(c.metadata["x.flag"].to_bool().unwrap());
        assert_eq!(
            c.metadata["tokenizer.ggml.tokens"].to_vec().unwrap().len(),
            2
        );
        let dev = candle_core::Device::Cpu;
        let qa = c.tensor(&mut r, "a", &dev).unwrap();
        assert_eq!(qa.shape().dims(), &[2, 32]);
        assert_eq!(qa.dtype(), GgmlDType::Q8_0);
        let back = qa
            .dequantize(&dev)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert!(back.iter().zip(&a).all(|(x, y)| (x - y).abs() < 0.05));
        let b = c
            .tensor(&mut r, "b", &dev)
            .unwrap()
            .dequantize(&dev)
            .unwrap();
        assert_eq!(b.to_vec1::<f32>().unwrap(), [1.0, 2.0, 3.0]);
    }

    #[test]
    fn refuses_wrong_sizes_and_counts() {
        let t = vec![TensorEntry {
            name: "a".into(),
            shape: vec![32],
            dtype: GgmlDType::F32,
        }];
        let mut w = GgufWriter::new(Vec::new(), &[], t.clone()).unwrap();
        assert!(w.write_tensor(&[0u8; 12]).is_err());
        assert!(
            GgufWriter::new(Vec::new(), &[], t)
                .unwrap()
                .finish()
                .is_err()
        );
    }
}
