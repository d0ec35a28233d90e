//! `planned_bytes` predicts exactly what `quantize` writes.

use modelship_quant::{QuantizeOptions, Source, planned_bytes, quantize};
use modelship_types::QuantType;

#[test]
fn planned_bytes_equal_the_written_tensors() {
    let dir = tempfile::tempdir().unwrap();
    for model in [modelship_testkit::minilm(), modelship_testkit::smollm()] {
        let src = Source::open(&model).unwrap();
        for to in [QuantType::F16, QuantType::Q8_0, QuantType::Q4K] {
            let out = dir.path().join("m.gguf");
            let s = quantize(
                &src,
                &out,
                QuantizeOptions { to, prune: None },
                &mut |_, _, _| {},
            )
            .unwrap();
            assert_eq!(
                planned_bytes(&src, to),
                s.weight_bytes_out,
                "{} {to}",
                model.display()
            );
        }
    }
}
