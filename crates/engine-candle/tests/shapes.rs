//! A tensor whose shape disagrees with the architecture's is refused when
//! the model loads, naming it: a kernel handed such a matrix asserts, which
//! killed the engine thread at the first request.

use modelship_engine_candle::{LoadOptions, load, parse_device};
use modelship_types::{QuantType, ServingLimits};

/// `model` with the two dims of `tensor` swapped in its header: the same
/// byte size, so only the shape check can tell.
fn transposed(model: &std::path::Path, tensor: &str, dir: &std::path::Path) -> std::path::PathBuf {
    let mut bytes = std::fs::read(model).unwrap();
    let name = tensor.as_bytes();
    let at = bytes
        .windows(name.len() + 4)
        .position(|w| &w[..name.len()] == name && w[name.len()..] == 2u32.to_le_bytes())
        .unwrap_or_else(|| panic!("{tensor} in the header"));
    let dims = at + name.len() + 4;
    let (a, b) = (dims..dims + 8, dims + 8..dims + 16);
    let first: Vec<u8> = bytes[a.clone()].to_vec();
    let second: Vec<u8> = bytes[b.clone()].to_vec();
    assert_ne!(
        first, second,
        "a square matrix cannot be transposed this way"
    );
    bytes[a].copy_from_slice(&second);
    bytes[b].copy_from_slice(&first);
    let out = dir.join("transposed.gguf");
    std::fs::write(&out, bytes).unwrap();
    out
}

fn load_error(path: &std::path::Path) -> String {
    let opts = LoadOptions {
        name: None,
        device: parse_device("cpu").unwrap(),
        limits: ServingLimits::default(),
    };
    match load(path, &opts) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => {
            let mut text = e.to_string();
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                text.push_str(&format!(": {c}"));
                cause = c.source();
            }
            text
        }
    }
}

#[test]
fn a_transposed_ffn_down_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let bert =
        modelship_testkit::quantized(&modelship_testkit::minilm(), QuantType::Q8_0, dir.path());
    let decoder = modelship_testkit::smollm();
    for model in [bert, decoder] {
        let bad = transposed(&model, "blk.0.ffn_down.weight", dir.path());
        let err = load_error(&bad);
        assert!(
            err.contains("blk.0.ffn_down.weight") && err.contains("shape"),
            "{}: {err}",
            model.display()
        );
    }
}
