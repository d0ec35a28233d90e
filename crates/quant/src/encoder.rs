//! Hugging Face encoder directories (BERT, RoBERTa, XLM-RoBERTa, MPNet) as
//! GGUF: the encoder's metadata and tensor names ([`Encoder::gguf_metadata`],
//! [`gguf_tensor_name`], llama.cpp's BERT layout), the whole
//! `tokenizer.json` so modelship tokenizes exactly as the original, and for
//! WordPiece vocabularies also llama.cpp's form of it (what its
//! `convert_hf_to_gguf.py` writes for BERT).

use candle_core::quantized::gguf_file::Value;
use modelship_model::{Encoder, HF_JSON_KEY};
use serde_json::Value as Json;

/// Everything about the model in GGUF metadata, except the file type.
pub fn metadata(
    name: &str,
    encoder: &Encoder,
    tokenizer_json: &str,
) -> Result<Vec<(String, Value)>, String> {
    let mut md = encoder.gguf_metadata(name);
    let tok: Json =
        serde_json::from_str(tokenizer_json).map_err(|e| format!("tokenizer.json: {e}"))?;
    if tok["model"]["type"].as_str() == Some("WordPiece") {
        md.extend(vocabulary(&tok)?);
    }
    md.push((HF_JSON_KEY.into(), Value::String(tokenizer_json.into())));
    Ok(md)
}

/// The WordPiece vocabulary as llama.cpp's WPM tokenizer wants it: word
/// starts carry a `▁` (its phantom space), continuations lose their `##`,
/// bracketed specials stay as they are.
fn vocabulary(tok: &Json) -> Result<Vec<(String, Value)>, String> {
    let vocab = tok["model"]["vocab"]
        .as_object()
        .ok_or("tokenizer.json: `model.vocab` is not an object")?;
    let mut tokens = vec![None; vocab.len()];
    for (token, id) in vocab {
        let slot = id
            .as_u64()
            .and_then(|i| tokens.get_mut(i as usize))
            .ok_or_else(|| format!("tokenizer.json: id of `{token}` is out of range"))?;
        *slot = Some(token.as_str());
    }
    let tokens: Vec<&str> = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.ok_or_else(|| format!("tokenizer.json: no token has id {i}")))
        .collect::<Result<_, _>>()?;
    let special: std::collections::HashSet<u64> = tok["added_tokens"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["special"].as_bool() == Some(true))
        .filter_map(|t| t["id"].as_u64())
        .collect();
    let id_of = |t: &str| vocab.get(t).and_then(Json::as_u64).map(|i| i as u32);
    let phantom = |t: &str| -> String {
        if t.starts_with('[') && t.ends_with(']') {
            t.to_owned()
        } else if let Some(rest) = t.strip_prefix("##") {
            rest.to_owned()
        } else {
            format!("\u{2581}{t}")
        }
    };
    let mut md = vec![
        ("tokenizer.ggml.model".into(), Value::String("bert".into())),
        ("tokenizer.ggml.pre".into(), Value::String("default".into())),
        (
            "tokenizer.ggml.tokens".into(),
            Value::Array(tokens.iter().map(|t| Value::String(phantom(t))).collect()),
        ),
        (
            "tokenizer.ggml.token_type".into(),
            Value::Array(
                (0..tokens.len() as u64)
                    .map(|i| Value::I32(if special.contains(&i) { 3 } else { 1 }))
                    .collect(),
            ),
        ),
    ];
    for (key, token) in [
        ("tokenizer.ggml.bos_token_id", "[CLS]"),
        ("tokenizer.ggml.cls_token_id", "[CLS]"),
        ("tokenizer.ggml.seperator_token_id", "[SEP]"),
        ("tokenizer.ggml.unknown_token_id", "[UNK]"),
        ("tokenizer.ggml.padding_token_id", "[PAD]"),
        ("tokenizer.ggml.mask_token_id", "[MASK]"),
    ] {
        if let Some(id) = id_of(token) {
            md.push((key.into(), Value::U32(id)));
        }
    }
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocabulary_uses_phantom_spaces() {
        let json = r###"{"model":{"type":"WordPiece","vocab":{"[PAD]":0,"[CLS]":1,"the":2,"##s":3}},
                       "added_tokens":[{"id":0,"special":true},{"id":1,"special":true}]}"###;
        let md = vocabulary(&serde_json::from_str(json).unwrap()).unwrap();
        let get = |k: &str| {
            md.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
                .unwrap()
        };
        let tokens: Vec<String> = get("tokenizer.ggml.tokens")
            .to_vec()
            .unwrap()
            .iter()
            .map(|v| v.to_string().unwrap().clone())
            .collect();
        assert_eq!(tokens, ["[PAD]", "[CLS]", "\u{2581}the", "s"]);
        assert_eq!(get("tokenizer.ggml.cls_token_id").to_u32().unwrap(), 1);
        let types = get("tokenizer.ggml.token_type").to_vec().unwrap().len();
        assert_eq!(types, 4);
    }

    #[test]
    fn vocabulary_with_holes_is_an_error() {
        let json = r#"{"model":{"type":"WordPiece","vocab":{"a":0,"b":2}}}"#;
        let err = vocabulary(&serde_json::from_str(json).unwrap()).unwrap_err();
        assert!(err.contains("out of range"), "{err}");
    }
}
