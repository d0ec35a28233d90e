//! The pieces of a SentencePiece model file (`tokenizer.model`, the
//! protobuf `ModelProto` the `sentencepiece` library writes): each piece's
//! text, score and type, in id order. Only what llama.cpp's converter reads
//! of it; every length and offset is checked against the bytes.

use std::path::Path;

use crate::ModelError;

/// Largest `tokenizer.model` read (Gemma 3's, 262,144 pieces, is 4.5 MiB).
const MAX_FILE_BYTES: u64 = 64 << 20;

/// One piece, as the model stores it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Piece {
    pub text: String,
    pub score: f32,
    /// SentencePiece's type numbers, which llama.cpp's token types share:
    /// 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub kind: i32,
}

/// The pieces of the SentencePiece model at `path`.
pub(crate) fn read_pieces(path: &Path) -> Result<Vec<Piece>, ModelError> {
    let bytes = crate::files::read_small(path, MAX_FILE_BYTES)?;
    parse_pieces(&bytes).map_err(|reason| ModelError::invalid(path, reason))
}

/// `ModelProto.pieces` (field 1) of a serialized model; other fields are
/// skipped.
fn parse_pieces(bytes: &[u8]) -> Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut r = Reader { bytes, at: 0 };
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Bytes(piece)) => {
                pieces.push(parse_piece(piece).map_err(|e| format!("piece {}: {e}", pieces.len()))?)
            }
            (1, _) => return Err("field 1 (pieces) has the wrong wire type".into()),
            _ => {}
        }
    }
    if pieces.is_empty() {
        return Err("no pieces: not a SentencePiece model".into());
    }
    Ok(pieces)
}

/// A `SentencePiece` message: `piece` (1), `score` (2), `type` (3, normal
/// when absent).
fn parse_piece(bytes: &[u8]) -> Result<Piece, String> {
    let mut piece = Piece {
        text: String::new(),
        score: 0.0,
        kind: 1,
    };
    let mut r = Reader { bytes, at: 0 };
    while let Some((field, value)) = r.field()? {
        match (field, value) {
            (1, Value::Bytes(text)) => {
                piece.text = String::from_utf8(text.to_vec())
                    .map_err(|_| "its text is not UTF-8".to_owned())?;
            }
            (2, Value::Fixed32(bits)) => piece.score = f32::from_bits(bits),
            (3, Value::Varint(kind)) => {
                piece.kind = match kind {
                    1..=6 => kind as i32,
                    other => return Err(format!("type {other} is none SentencePiece defines")),
                };
            }
            (1..=3, _) => return Err(format!("field {field} has the wrong wire type")),
            _ => {}
        }
    }
    Ok(piece)
}

enum Value<'a> {
    Varint(u64),
    Fixed64,
    Bytes(&'a [u8]),
    Fixed32(u32),
}

/// Protobuf's wire format, one field at a time.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// The next field's number and value; `None` at the end.
    fn field(&mut self) -> Result<Option<(u64, Value<'a>)>, String> {
        if self.at == self.bytes.len() {
            return Ok(None);
        }
        let start = self.at;
        let key = self.varint()?;
        let value = match key & 7 {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?).map_err(|_| "a length overflows")?;
                Value::Bytes(self.take(len)?)
            }
            5 => {
                let b = self.take(4)?;
                Value::Fixed32(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            }
            other => return Err(format!("wire type {other} at byte {start}")),
        };
        Ok(Some((key >> 3, value)))
    }

    fn varint(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *self
                .bytes
                .get(self.at)
                .ok_or_else(|| format!("cut short at byte {}", self.at))?;
            self.at += 1;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("a varint longer than 10 bytes at byte {}", self.at))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("{n} bytes at byte {} run past the end", self.at))?;
        let b = &self.bytes[self.at..end];
        self.at = end;
        Ok(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn piece(text: &str, score: f32, kind: Option<u64>) -> Vec<u8> {
        let mut p = vec![0x0a];
        varint(text.len() as u64, &mut p);
        p.extend(text.as_bytes());
        p.push(0x15);
        p.extend(score.to_le_bytes());
        if let Some(k) = kind {
            p.push(0x18);
            varint(k, &mut p);
        }
        let mut out = vec![0x0a];
        varint(p.len() as u64, &mut out);
        out.extend(p);
        out
    }

    #[test]
    fn reads_pieces_and_skips_other_fields() {
        let mut model = piece("<unk>", 0.0, Some(2));
        model.extend(piece("▁the", -3.5, None));
        model.extend(piece("<0x0A>", 0.0, Some(6)));
        // A trainer spec (field 2) and a normalizer spec (field 3) follow.
        model.extend([0x12, 0x02, 0x08, 0x01, 0x1a, 0x03, 0x18, 0x81, 0x01]);
        let pieces = parse_pieces(&model).unwrap();
        assert_eq!(
            pieces,
            vec![
                Piece {
                    text: "<unk>".into(),
                    score: 0.0,
                    kind: 2
                },
                Piece {
                    text: "▁the".into(),
                    score: -3.5,
                    kind: 1
                },
                Piece {
                    text: "<0x0A>".into(),
                    score: 0.0,
                    kind: 6
                },
            ]
        );
    }

    #[test]
    fn malformed_models_are_named_errors() {
        let good = piece("a", 1.0, None);
        let cut = &good[..good.len() - 2];
        assert!(parse_pieces(cut).unwrap_err().contains("past the end"));
        assert!(parse_pieces(&[]).unwrap_err().contains("no pieces"));
        assert!(
            parse_pieces(&[
                0x0a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01
            ])
            .is_err()
        );
        let bad_type = piece("a", 1.0, Some(9));
        assert!(parse_pieces(&bad_type).unwrap_err().contains("type 9"));
        assert!(parse_pieces(&[0x0f]).unwrap_err().contains("wire type 7"));
        assert!(parse_pieces(&[0x08, 0x01]).unwrap_err().contains("pieces"));
    }
}
