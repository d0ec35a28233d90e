//! Hugging Face BERT directories as llama.cpp names them in GGUF: tensor
//! names, `bert.*` hyper-parameters and the WordPiece vocabulary in
//! llama.cpp's form (what its `convert_hf_to_gguf.py` writes), plus the
//! whole `tokenizer.json` so modelship tokenizes exactly as the original.

use candle_core::quantized::gguf_file::Value;
use modelship_model::{HF_JSON_KEY, NORMALIZE_KEY, POOLING_KEY, Pooling};
use serde_json::Value as Json;

/// The GGUF name of an HF BERT tensor; `None` for tensors llama.cpp drops
/// (the pooler, position ids), an error for names it does not know.
pub fn tensor_name(hf: &str) -> Result<Option<String>, String> {
    let name = hf.strip_prefix("bert.").unwrap_or(hf);
    if name.starts_with("pooler.") || name == "embeddings.position_ids" {
        return Ok(None);
    }
    let (stem, suffix) = name
        .rsplit_once('.')
        .ok_or_else(|| format!("unexpected tensor `{hf}`"))?;
    let suffix = match suffix {
        "weight" | "gamma" => "weight",
        "bias" | "beta" => "bias",
        _ => return Err(format!("unexpected tensor `{hf}`")),
    };
    let fixed = match stem {
        "embeddings.word_embeddings" => Some("token_embd"),
        "embeddings.position_embeddings" => Some("position_embd"),
        "embeddings.token_type_embeddings" => Some("token_types"),
        "embeddings.LayerNorm" => Some("token_embd_norm"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Ok(Some(format!("{f}.{suffix}")));
    }
    let rest = stem
        .strip_prefix("encoder.layer.")
        .ok_or_else(|| format!("unexpected tensor `{hf}`"))?;
    let (layer, part) = rest
        .split_once('.')
        .ok_or_else(|| format!("unexpected tensor `{hf}`"))?;
    let layer: usize = layer
        .parse()
        .map_err(|_| format!("unexpected layer in `{hf}`"))?;
    let gguf = match part {
        "attention.self.query" => "attn_q",
        "attention.self.key" => "attn_k",
        "attention.self.value" => "attn_v",
        "attention.output.dense" => "attn_output",
        "attention.output.LayerNorm" => "attn_output_norm",
        "intermediate.dense" => "ffn_up",
        "output.dense" => "ffn_down",
        "output.LayerNorm" => "layer_output_norm",
        _ => return Err(format!("unexpected tensor `{hf}`")),
    };
    Ok(Some(format!("blk.{layer}.{gguf}.{suffix}")))
}

/// llama.cpp's `bert.pooling_type` values.
fn pooling_type(p: Pooling) -> Option<u32> {
    match p {
        Pooling::Mean => Some(1),
        Pooling::Cls => Some(2),
        Pooling::LastToken => Some(3),
        Pooling::Max | Pooling::MeanSqrtLen => None,
    }
}

/// Everything about the model in GGUF metadata, except the file type.
pub fn metadata(
    name: &str,
    config: &Json,
    tokenizer_json: &str,
    pooling: Pooling,
    normalize: bool,
) -> Result<Vec<(String, Value)>, String> {
    let num = |key: &str| -> Result<u32, String> {
        config[key]
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| format!("config.json: `{key}` is missing or not a count"))
    };
    let eps = config["layer_norm_eps"].as_f64().unwrap_or(1e-12) as f32;
    let pooling_name = serde_json::to_value(pooling)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default();
    let mut md: Vec<(String, Value)> = vec![
        ("general.architecture".into(), Value::String("bert".into())),
        ("general.name".into(), Value::String(name.into())),
        (
            "bert.context_length".into(),
            Value::U32(num("max_position_embeddings")?),
        ),
        (
            "bert.embedding_length".into(),
            Value::U32(num("hidden_size")?),
        ),
        (
            "bert.feed_forward_length".into(),
            Value::U32(num("intermediate_size")?),
        ),
        (
            "bert.block_count".into(),
            Value::U32(num("num_hidden_layers")?),
        ),
        (
            "bert.attention.head_count".into(),
            Value::U32(num("num_attention_heads")?),
        ),
        ("bert.attention.layer_norm_epsilon".into(), Value::F32(eps)),
        ("bert.attention.causal".into(), Value::Bool(false)),
        (
            "tokenizer.ggml.token_type_count".into(),
            Value::U32(config["type_vocab_size"].as_u64().unwrap_or(2) as u32),
        ),
        (POOLING_KEY.into(), Value::String(pooling_name)),
        (NORMALIZE_KEY.into(), Value::Bool(normalize)),
    ];
    if let Some(p) = pooling_type(pooling) {
        md.push(("bert.pooling_type".into(), Value::U32(p)));
    }
    md.extend(vocabulary(tokenizer_json)?);
    md.push((HF_JSON_KEY.into(), Value::String(tokenizer_json.into())));
    Ok(md)
}

/// The WordPiece vocabulary as llama.cpp's WPM tokenizer wants it: word
/// starts carry a `▁` (its phantom space), continuations lose their `##`,
/// bracketed specials stay as they are.
fn vocabulary(tokenizer_json: &str) -> Result<Vec<(String, Value)>, String> {
    let tok: Json =
        serde_json::from_str(tokenizer_json).map_err(|e| format!("tokenizer.json: {e}"))?;
    if tok["model"]["type"].as_str() != Some("WordPiece") {
        return Err("tokenizer.json: only WordPiece BERT tokenizers are supported".into());
    }
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
    fn names_follow_llama_cpp() {
        for (hf, gguf) in [
            (
                "embeddings.word_embeddings.weight",
                Some("token_embd.weight"),
            ),
            (
                "bert.embeddings.LayerNorm.gamma",
                Some("token_embd_norm.weight"),
            ),
            (
                "encoder.layer.3.attention.self.key.bias",
                Some("blk.3.attn_k.bias"),
            ),
            (
                "encoder.layer.0.output.LayerNorm.weight",
                Some("blk.0.layer_output_norm.weight"),
            ),
            (
                "encoder.layer.5.intermediate.dense.weight",
                Some("blk.5.ffn_up.weight"),
            ),
            ("pooler.dense.weight", None),
        ] {
            assert_eq!(tensor_name(hf).unwrap().as_deref(), gguf, "{hf}");
        }
        assert!(tensor_name("encoder.layer.x.output.dense.weight").is_err());
        assert!(tensor_name("classifier.weight").is_err());
    }

    #[test]
    fn vocabulary_uses_phantom_spaces() {
        let json = r###"{"model":{"type":"WordPiece","vocab":{"[PAD]":0,"[CLS]":1,"the":2,"##s":3}},
                       "added_tokens":[{"id":0,"special":true},{"id":1,"special":true}]}"###;
        let md = vocabulary(json).unwrap();
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
        assert!(vocabulary(json).unwrap_err().contains("out of range"));
    }
}
