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

/// SmolLM2 has three query heads per KV head (its metadata): under q8_0 its
/// `attn_v` stays f16, and nothing else does; MiniLM's heads are not grouped.
#[test]
fn q8_0_keeps_grouped_query_values_in_f16() {
    use candle_core::quantized::GgmlDType;
    use modelship_quant::{Rule, planned_tensors};
    let smollm = Source::open(&modelship_testkit::smollm()).unwrap();
    assert_eq!(smollm.query_heads_per_kv(), 3);
    let mut values = 0;
    for (t, d) in planned_tensors(&smollm, QuantType::Q8_0) {
        if t.name.ends_with("attn_v.weight") {
            values += 1;
            assert_eq!((d.dtype, d.rule), (GgmlDType::F16, Rule::SharedValues));
        } else {
            assert_ne!(d.rule, Rule::SharedValues, "{}", t.name);
        }
    }
    assert_eq!(values, smollm.layers());
    let minilm = Source::open(&modelship_testkit::minilm()).unwrap();
    assert_eq!(minilm.query_heads_per_kv(), 1);
    assert!(
        planned_tensors(&minilm, QuantType::Q8_0)
            .iter()
            .all(|(_, d)| d.rule != Rule::SharedValues)
    );
}
