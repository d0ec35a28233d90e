use super::*;

#[test]
fn relative_buckets_follow_mpnet() {
    // Values of the reference formula (T5's, in f32) for 32 buckets and a
    // maximum distance of 128: exact below 8, logarithmic to 15, then
    // capped; keys after the query take the upper half.
    let r = RelativeBuckets {
        buckets: 32,
        max_distance: 128,
    };
    for (relative, bucket) in [
        (0, 0),
        (1, 17),
        (-1, 1),
        (7, 23),
        (-7, 7),
        (8, 24),
        (-8, 8),
        (11, 24),
        (-12, 9),
        (-16, 10),
        (-32, 12),
        (-64, 14),
        (-127, 15),
        (-128, 15),
        (-200, 15),
        (200, 31),
        (500, 31),
    ] {
        assert_eq!(r.bucket(relative), bucket, "distance {relative}");
    }
}

#[test]
fn activation_follows_problem_type_then_label_count() {
    use ScoreActivation::*;
    for (problem, labels, want) in [
        (None, 1, Sigmoid),
        (None, 3, Softmax),
        (Some("multi_label_classification"), 3, Sigmoid),
        (Some("single_label_classification"), 2, Softmax),
        (Some("regression"), 1, Identity),
    ] {
        assert_eq!(ScoreActivation::for_head(problem, labels).unwrap(), want);
    }
    let err = ScoreActivation::for_head(Some("ranking"), 1).unwrap_err();
    assert!(err.contains("`ranking`"), "{err}");
}

#[test]
fn activations_compute_scores() {
    let s = ScoreActivation::Softmax.apply(&[1.0, 2.0, 3.0]);
    assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
    assert!(s[2] > s[1] && s[1] > s[0]);
    // Large logits do not overflow.
    let s = ScoreActivation::Softmax.apply(&[1000.0, 0.0]);
    assert!((s[0] - 1.0).abs() < 1e-6, "{s:?}");
    assert_eq!(ScoreActivation::Sigmoid.apply(&[0.0]), vec![0.5]);
    assert_eq!(ScoreActivation::Identity.apply(&[-2.5]), vec![-2.5]);
}

#[test]
fn tensor_names_per_family() {
    use EncoderFamily::*;
    for (family, hf, classifier, gguf) in [
        (
            Bert,
            "bert.encoder.layer.3.attention.self.key.bias",
            true,
            Some("blk.3.attn_k.bias"),
        ),
        (Bert, "bert.pooler.dense.weight", true, Some("cls.weight")),
        (Bert, "pooler.dense.weight", false, None),
        (Bert, "classifier.weight", true, Some("cls.output.weight")),
        (
            Roberta,
            "roberta.embeddings.word_embeddings.weight",
            true,
            Some("token_embd.weight"),
        ),
        (Roberta, "roberta.pooler.dense.weight", true, None),
        (Roberta, "classifier.dense.bias", true, Some("cls.bias")),
        (
            XlmRoberta,
            "classifier.out_proj.weight",
            true,
            Some("cls.output.weight"),
        ),
        (
            XlmRoberta,
            "encoder.layer.0.output.LayerNorm.weight",
            false,
            Some("blk.0.layer_output_norm.weight"),
        ),
        (
            MpNet,
            "encoder.layer.11.attention.attn.o.weight",
            false,
            Some("blk.11.attn_output.weight"),
        ),
        (
            MpNet,
            "encoder.layer.2.attention.LayerNorm.bias",
            false,
            Some("blk.2.attn_output_norm.bias"),
        ),
        (
            MpNet,
            "encoder.relative_attention_bias.weight",
            false,
            Some("rel_attn_bias.weight"),
        ),
        (
            MpNet,
            "mpnet.encoder.layer.0.intermediate.dense.weight",
            true,
            Some("blk.0.ffn_up.weight"),
        ),
        (MpNet, "embeddings.position_ids", false, None),
        (Roberta, "lm_head.dense.weight", false, None),
    ] {
        assert_eq!(
            gguf_tensor_name(family, hf, classifier).unwrap().as_deref(),
            gguf,
            "{hf}"
        );
    }
    for (family, hf) in [
        (MpNet, "encoder.layer.0.attention.self.query.weight"),
        (Bert, "encoder.layer.x.output.dense.weight"),
        (Bert, "encoder.relative_attention_bias.weight"),
        (Roberta, "something.else"),
    ] {
        let err = gguf_tensor_name(family, hf, false).unwrap_err();
        assert!(err.contains(hf), "{err}");
    }
}

#[test]
fn labels_in_id_order() {
    let c = serde_json::json!({"id2label": {"1": "positive", "0": "negative", "2": "neutral"}});
    assert_eq!(labels(&c).unwrap(), ["negative", "positive", "neutral"]);
    let c = serde_json::json!({"num_labels": 2});
    assert_eq!(labels(&c).unwrap(), ["LABEL_0", "LABEL_1"]);
    let c = serde_json::json!({"id2label": {"0": "a", "5": "b"}});
    assert!(labels(&c).unwrap_err().contains("`5`"));
    // "01" parses as 1: two ids for one slot are an error, not a panic.
    let c = serde_json::json!({"id2label": {"01": "a", "1": "b"}});
    assert!(labels(&c).unwrap_err().contains("given already"));
    assert!(labels(&serde_json::json!({})).is_err());
}

#[test]
fn saved_cross_encoder_activations_are_read() {
    for (path, want) in [
        (
            "torch.nn.modules.activation.Sigmoid",
            Some(ScoreActivation::Sigmoid),
        ),
        (
            "torch.nn.modules.linear.Identity",
            Some(ScoreActivation::Identity),
        ),
        ("Softmax", Some(ScoreActivation::Softmax)),
        ("torch.nn.modules.activation.Tanh", None),
    ] {
        assert_eq!(ScoreActivation::from_torch(path), want, "{path}");
    }
}

/// Counts that would break the bucket formula or the position table are
/// refused by the one check both loaders run.
#[test]
fn inconsistent_shapes_are_refused_naming_the_field() {
    let base = Encoder {
        family: EncoderFamily::MpNet,
        hidden: 64,
        heads: 4,
        head_dim: 16,
        layers: 1,
        feed_forward: 128,
        eps: 1e-5,
        positions: 66,
        position_offset: 2,
        token_types: 0,
        relative: Some(RelativeBuckets {
            buckets: 32,
            max_distance: 128,
        }),
        output: EncoderOutput::Pooled {
            pooling: Pooling::Mean,
            normalize: true,
        },
        prompts: Prompts::default(),
    };
    assert!(base.check().is_ok());
    let field = |e: Encoder| e.check().unwrap_err().0;
    let mut e = base.clone();
    e.relative = Some(RelativeBuckets {
        buckets: 32,
        max_distance: 8,
    });
    assert_eq!(field(e), "relative_attention_num_buckets");
    let mut e = base.clone();
    e.position_offset = 66;
    assert_eq!(field(e), "pad_token_id");
    let mut e = base.clone();
    e.heads = 5;
    assert_eq!(field(e), "hidden_size");
    let mut e = base;
    e.prompts.default = Some("query".into());
    assert_eq!(field(e), "default_prompt_name");
    // The smallest distance the check lets through still buckets every
    // distance without overflow.
    let r = RelativeBuckets {
        buckets: 32,
        max_distance: 9,
    };
    for d in -1000..1000 {
        assert!(r.bucket(d) < 32);
    }
}
