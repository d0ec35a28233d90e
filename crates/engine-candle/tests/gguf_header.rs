//! modelship's bounded GGUF header reader (`modelship_model::GgufFile`)
//! reads every real test model exactly as candle's own reader does: the
//! same metadata values, tensor table and data offset.

use candle_core::quantized::gguf_file::{Content, Value};
use modelship_model::GgufFile;

/// A value as comparable text (candle's `Value` has no `PartialEq`).
fn show(v: &Value) -> String {
    format!("{v:?}")
}

#[test]
fn real_files_read_as_candle_reads_them() {
    for path in [
        modelship_testkit::smollm(),
        modelship_testkit::qwen2(),
        modelship_testkit::gemma3(),
    ] {
        let ours = GgufFile::open(&path).unwrap();
        let theirs = Content::read(&mut std::fs::File::open(&path).unwrap()).unwrap();
        let (a, b) = (&ours.content, &theirs);
        assert!(
            ours.skipped.is_empty(),
            "{}: {:?}",
            path.display(),
            ours.skipped
        );
        assert_eq!(
            a.tensor_data_offset,
            b.tensor_data_offset,
            "{}",
            path.display()
        );
        assert_eq!(a.metadata.len(), b.metadata.len(), "{}", path.display());
        for (k, v) in &b.metadata {
            assert_eq!(
                a.metadata.get(k).map(show),
                Some(show(v)),
                "{}: {k}",
                path.display()
            );
        }
        assert_eq!(a.tensor_infos.len(), b.tensor_infos.len());
        for (name, t) in &b.tensor_infos {
            let o = &a.tensor_infos[name];
            assert_eq!(
                (o.ggml_dtype, o.shape.dims(), o.offset),
                (t.ggml_dtype, t.shape.dims(), t.offset),
                "{}: {name}",
                path.display()
            );
        }
    }
}
