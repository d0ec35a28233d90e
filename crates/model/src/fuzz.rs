//! Entry points of the fuzz targets in `fuzz/` (not an API). Each runs one
//! reader of untrusted model files on arbitrary bytes and asserts what the
//! reader promises beyond not panicking, so a fuzzer finds a broken check
//! as well as a crash. Unit tests run them on the seeds, so they stay
//! compiled and true without a fuzzer.

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, VersionedMagic};
use serde_json::Value as Json;

use crate::{ChatMessage, ChatTemplate, DecoderHparams, GgufFile};

/// The GGUF header reader: what it accepts has every tensor inside the
/// file, none overlapping, each offset aligned.
pub fn gguf_header(bytes: &[u8]) {
    let Ok(header) = crate::gguf_header::read(bytes) else {
        return;
    };
    let content = &header.content;
    // (With no tensors the aligned data offset may lie past a file that
    // ends with its header: nothing is read there.)
    let data = content.tensor_data_offset;
    let mut ranges: Vec<(u64, u64)> = content
        .tensor_infos
        .values()
        .map(|t| {
            let elements: u64 = t.shape.dims().iter().map(|&d| d as u64).product();
            let bytes =
                elements / t.ggml_dtype.block_size() as u64 * t.ggml_dtype.type_size() as u64;
            (data + t.offset, data + t.offset + bytes)
        })
        .collect();
    ranges.sort_unstable();
    for (start, end) in &ranges {
        assert!(*end <= bytes.len() as u64, "a tensor ends past the file");
        assert!(start <= end);
    }
    for pair in ranges.windows(2) {
        assert!(pair[0].1 <= pair[1].0, "two tensors overlap");
    }
    // What the engine reads next: the hyper-parameters, bounded.
    let gguf = GgufFile {
        path: "fuzz.gguf".into(),
        content: header.content,
        skipped: header.skipped,
    };
    if let Ok(hp) = DecoderHparams::from_gguf(&gguf) {
        within_limits(&hp);
    }
}

/// A safetensors file (the whole of it): the tensors its header lists lie
/// inside the file, each as long as its dtype and shape make it.
pub fn safetensors(bytes: &[u8]) {
    let Some(len) = bytes.get(..8) else {
        return;
    };
    let file_len = bytes.len() as u64;
    let declared = u64::from_le_bytes(len.try_into().expect("8 bytes"));
    let Ok(header_len) = crate::hf::header_length(declared, file_len) else {
        return;
    };
    let header = &bytes[8..8 + header_len as usize];
    let Ok(tensors) = crate::hf::parse_safetensors_header(header, file_len, 0) else {
        return;
    };
    for t in tensors {
        assert!(
            t.offset
                .checked_add(t.bytes)
                .is_some_and(|end| end <= file_len)
        );
    }
}

/// A decoder checkpoint's `config.json`: converted to GGUF metadata and read
/// back as hyper-parameters, every count within the engine's limits.
pub fn checkpoint_config(bytes: &[u8]) {
    let Ok(Json::Object(root)) = serde_json::from_slice::<Json>(bytes) else {
        return;
    };
    let Some(Ok(metadata)) = crate::checkpoint::config_metadata(Path::new("config.json"), &root)
    else {
        return;
    };
    let gguf = GgufFile {
        path: "config.json".into(),
        content: Content {
            magic: VersionedMagic::GgufV3,
            metadata,
            tensor_infos: Default::default(),
            tensor_data_offset: 0,
        },
        skipped: Vec::new(),
    };
    if let Ok(hp) = DecoderHparams::from_gguf(&gguf) {
        within_limits(&hp);
    }
}

/// A chat template and a conversation: the bytes up to the first NUL are
/// the template, the rest the messages' text. Rendering ends (fuel) and
/// stays within its size limit.
pub fn chat_template(bytes: &[u8]) {
    let (source, rest) = match bytes.iter().position(|&b| b == 0) {
        Some(at) => (&bytes[..at], &bytes[at + 1..]),
        None => (bytes, &b""[..]),
    };
    let (Ok(source), text) = (std::str::from_utf8(source), String::from_utf8_lossy(rest)) else {
        return;
    };
    let Ok(template) = ChatTemplate::new(source, "<s>", "</s>") else {
        return;
    };
    let roles = ["system", "user", "assistant", "user"];
    let messages: Vec<ChatMessage> = text
        .split('\u{1}')
        .zip(roles.iter().cycle())
        .map(|(content, role)| ChatMessage::new(role, content))
        .collect();
    if let Ok(prompt) = template.render(&messages, &[]) {
        assert!(prompt.len() <= crate::chat::MAX_RENDERED);
    }
}

/// What `DecoderHparams::from_gguf` promises of what it accepts.
fn within_limits(hp: &DecoderHparams) {
    use crate::decoder::{MAX_FEED_FORWARD, MAX_HEAD_DIM, MAX_HEADS, MAX_LAYERS, MAX_WIDTH};
    assert!(hp.layers <= MAX_LAYERS && hp.width <= MAX_WIDTH);
    assert!(hp.heads <= MAX_HEADS && hp.kv_heads <= MAX_HEADS && hp.head_dim <= MAX_HEAD_DIM);
    assert!(hp.feed_forward <= MAX_FEED_FORWARD);
    assert!(hp.heads.is_multiple_of(hp.kv_heads));
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes that reach past the first check of each reader.
    #[test]
    fn the_entry_points_run_on_small_inputs() {
        gguf_header(b"GGUF\x03\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0");
        let header = br#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let mut st = (header.len() as u64).to_le_bytes().to_vec();
        st.extend_from_slice(header);
        st.extend_from_slice(&[0; 8]);
        safetensors(&st);
        checkpoint_config(
            br#"{"model_type":"llama","hidden_size":64,"num_hidden_layers":2,
                 "num_attention_heads":4,"intermediate_size":128,"vocab_size":100,
                 "max_position_embeddings":256,"rms_norm_eps":1e-5}"#,
        );
        chat_template(
            b"{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}\0hi\x01there",
        );
    }
}
