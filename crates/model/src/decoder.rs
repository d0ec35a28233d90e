//! Decoder hyper-parameters from GGUF metadata: one description of every
//! decoder family modelship runs, read once and used by the engine (to build
//! the forward pass), `inspect` (to report it) and the planner (to size the KV
//! cache). What makes a family different is decided here and nowhere else.

use serde::Serialize;

use crate::{GgufFile, ModelError};

/// The decoder families the engine runs, by GGUF `general.architecture`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// Llama 1–3 and Mistral (llama.cpp converts Mistral to `llama`).
    Llama,
    Qwen2,
    Qwen3,
    Gemma2,
    Gemma3,
    Phi3,
}

/// How rotary embeddings pair a head's dimensions (llama.cpp's rope types).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RopeStyle {
    /// Adjacent pairs (2i, 2i+1): `LLAMA_ROPE_TYPE_NORM`, llama's GGUF layout
    /// (its converter permutes Q and K for it).
    Interleaved,
    /// Halves (i, i + d/2): `LLAMA_ROPE_TYPE_NEOX`, everyone else.
    Halves,
}

/// The gate's activation in the gated MLP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Activation {
    Silu,
    /// GELU with the tanh approximation (Gemma).
    GeluTanh,
}

/// Rotary embeddings of one kind of layer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rope {
    pub base: f32,
    /// Linear position scaling: positions are multiplied by this (1 / the
    /// `rope.scaling.factor` of a `linear` model).
    pub position_scale: f32,
}

/// Everything the forward pass of a decoder needs besides its tensors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DecoderHparams {
    pub family: Family,
    pub layers: usize,
    /// Width of the residual stream.
    pub width: usize,
    pub feed_forward: usize,
    pub heads: usize,
    pub kv_heads: usize,
    /// Size of one query/key head (Gemma's differs from width / heads).
    pub head_dim: usize,
    /// Size of one value head.
    pub value_dim: usize,
    pub rms_eps: f32,
    /// The context the model was trained for.
    pub context: usize,
    pub rope_style: RopeStyle,
    /// Rotary embeddings of the global (full-attention) layers.
    pub rope: Rope,
    /// Rotary embeddings of the sliding-window layers (Gemma 3's own base).
    pub rope_local: Rope,
    /// Sliding-window size, where some layers attend only to the last
    /// `window` positions.
    pub sliding_window: Option<usize>,
    /// Per layer: true when it attends through the sliding window.
    pub local_layers: Vec<bool>,
    /// Scale of the query·key products.
    pub attention_scale: f32,
    /// `tanh(x / c) · c` on attention scores (Gemma 2).
    pub attention_softcap: Option<f32>,
    /// `tanh(x / c) · c` on the logits (Gemma 2).
    pub final_softcap: Option<f32>,
    /// Embeddings multiplied by √width (Gemma).
    pub embedding_scale: Option<f32>,
    /// RMS norms after attention and after the MLP too (Gemma 2 and 3).
    pub post_norms: bool,
    pub activation: Activation,
}

impl Family {
    /// The `general.architecture` names the engine runs, for error messages.
    pub const SUPPORTED: &'static str = "llama, mistral, qwen2, qwen3, gemma2, gemma3, phi3";

    pub fn from_architecture(name: &str) -> Option<Self> {
        Some(match name {
            "llama" | "mistral" => Self::Llama,
            "qwen2" => Self::Qwen2,
            "qwen3" => Self::Qwen3,
            "gemma2" => Self::Gemma2,
            "gemma3" => Self::Gemma3,
            "phi3" => Self::Phi3,
            _ => return None,
        })
    }

    /// The family's GGUF architecture name (Mistral's files say `llama`).
    pub fn name(self) -> &'static str {
        match self {
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Qwen3 => "qwen3",
            Self::Gemma2 => "gemma2",
            Self::Gemma3 => "gemma3",
            Self::Phi3 => "phi3",
        }
    }

    pub(crate) fn is_gemma(self) -> bool {
        matches!(self, Self::Gemma2 | Self::Gemma3)
    }

    fn rope_style(self) -> RopeStyle {
        match self {
            Self::Llama => RopeStyle::Interleaved,
            _ => RopeStyle::Halves,
        }
    }

    /// Which layers slide, as llama.cpp's `set_swa_pattern(n)` decides: in
    /// each run of `n` layers all but the last use the window.
    fn swa_pattern(self) -> Option<usize> {
        match self {
            Self::Gemma2 => Some(2),
            Self::Gemma3 => Some(6),
            _ => None,
        }
    }
}

// Far above any model (Llama 3 405B: 126 layers, width 16384, 128 heads),
// and low enough that products of them cannot overflow.
pub(crate) const MAX_LAYERS: usize = 1 << 12;
pub(crate) const MAX_WIDTH: usize = 1 << 20;
pub(crate) const MAX_HEADS: usize = 1 << 12;
pub(crate) const MAX_HEAD_DIM: usize = 1 << 14;
pub(crate) const MAX_FEED_FORWARD: usize = 1 << 22;

impl DecoderHparams {
    /// Reads `{arch}.*` metadata. Fails naming the key that is missing or of
    /// the wrong type, and on head counts that do not fit together.
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        let arch = g.architecture()?.to_owned();
        let family = Family::from_architecture(&arch).ok_or_else(|| {
            ModelError::UnsupportedArchitecture {
                path: g.path.clone(),
                architecture: arch.clone(),
                supported: Family::SUPPORTED,
            }
        })?;
        let key = |k: &str| format!("{arch}.{k}");
        let uint = |k: &str| g.uint(&key(k)).map(|v| v as usize);
        let opt_uint = |k: &str| -> Result<Option<usize>, ModelError> {
            if g.has(&key(k)) {
                uint(k).map(Some)
            } else {
                Ok(None)
            }
        };
        let opt_float = |k: &str| -> Result<Option<f32>, ModelError> {
            if g.has(&key(k)) {
                g.float(&key(k)).map(Some)
            } else {
                Ok(None)
            }
        };
        let bad = |k: &str, problem: &'static str| ModelError::Metadata {
            path: g.path.clone(),
            key: key(k),
            problem,
        };

        let layers = uint("block_count")?;
        let width = uint("embedding_length")?;
        let heads = uint("attention.head_count")?;
        let kv_heads = opt_uint("attention.head_count_kv")?.unwrap_or(heads);
        if heads == 0 || layers == 0 || width == 0 {
            return Err(bad(
                "attention.head_count",
                "zero (or the width or layer count is)",
            ));
        }
        // Far above any model (Llama 3 405B: 126 layers, width 16384, 128
        // heads), and low enough that products of them cannot overflow and
        // per-layer tables are small; the tensors' shapes are checked
        // against them at load.
        for (k, v, max) in [
            ("block_count", layers, MAX_LAYERS),
            ("embedding_length", width, MAX_WIDTH),
            ("attention.head_count", heads, MAX_HEADS),
            ("attention.head_count_kv", kv_heads, MAX_HEADS),
        ] {
            if v > max {
                return Err(bad(k, "larger than any model modelship runs"));
            }
        }
        if kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(bad(
                "attention.head_count_kv",
                "not a divisor of the head count",
            ));
        }
        let head_dim = match opt_uint("attention.key_length")? {
            Some(d) => d,
            None if width.is_multiple_of(heads) => width / heads,
            None => return Err(bad("embedding_length", "not a multiple of the head count")),
        };
        let value_dim = opt_uint("attention.value_length")?.unwrap_or(head_dim);
        if head_dim == 0 || !head_dim.is_multiple_of(2) || value_dim != head_dim {
            return Err(bad(
                "attention.key_length",
                "not an even size equal to the value length",
            ));
        }
        if head_dim > MAX_HEAD_DIM {
            return Err(bad(
                "attention.key_length",
                "larger than any model modelship runs",
            ));
        }
        if opt_uint("feed_forward_length")?.is_some_and(|f| f > MAX_FEED_FORWARD) {
            return Err(bad(
                "feed_forward_length",
                "larger than any model modelship runs",
            ));
        }
        if let Some(rope_dims) = opt_uint("rope.dimension_count")?
            && rope_dims != head_dim
        {
            return Err(bad(
                "rope.dimension_count",
                "smaller than the head (partial rotary embeddings are not supported)",
            ));
        }
        let position_scale = match g.has(&key("rope.scaling.type")) {
            false => 1.0,
            true => match g.string(&key("rope.scaling.type"))? {
                "none" => 1.0,
                "linear" => match opt_float("rope.scaling.factor")? {
                    Some(f) if f > 0.0 => 1.0 / f,
                    _ => return Err(bad("rope.scaling.factor", "missing or not positive")),
                },
                _ => {
                    return Err(bad(
                        "rope.scaling.type",
                        "not supported (none and linear are; Llama 3's factors come as rope_freqs)",
                    ));
                }
            },
        };
        let rope = Rope {
            base: opt_float("rope.freq_base")?.unwrap_or(10_000.0),
            position_scale,
        };
        // Gemma 3's sliding layers keep the original 10k base, unscaled
        // (llama.cpp: rope_freq_base_train_swa).
        let rope_local = match family {
            Family::Gemma3 => Rope {
                base: 10_000.0,
                position_scale: 1.0,
            },
            _ => rope,
        };
        let sliding_window = match family.swa_pattern() {
            Some(_) => opt_uint("attention.sliding_window")?.filter(|&w| w > 0),
            None => None,
        };
        let local_layers = (0..layers)
            .map(|i| match (family.swa_pattern(), sliding_window) {
                (Some(n), Some(_)) => i % n < n - 1,
                _ => false,
            })
            .collect();
        let head_scale = 1.0 / (head_dim as f32).sqrt();
        // Gemma 2 and 3 27B scale queries by the width per head rather than
        // the head size (query_pre_attn_scalar; llama.cpp decides it by size).
        let attention_scale = match (family, layers) {
            (Family::Gemma2, 46) | (Family::Gemma3, 62) => 1.0 / ((width / heads) as f32).sqrt(),
            _ => head_scale,
        };
        let softcap =
            |k: &str| -> Result<Option<f32>, ModelError> { Ok(opt_float(k)?.filter(|&c| c > 0.0)) };
        let (attention_softcap, final_softcap) = match family {
            Family::Gemma2 => (
                softcap("attn_logit_softcapping")?,
                softcap("final_logit_softcapping")?,
            ),
            _ => (None, softcap("final_logit_softcapping")?),
        };
        Ok(Self {
            family,
            layers,
            width,
            feed_forward: uint("feed_forward_length")?,
            heads,
            kv_heads,
            head_dim,
            value_dim,
            rms_eps: opt_float("attention.layer_norm_rms_epsilon")?.unwrap_or(1e-5),
            context: opt_uint("context_length")?.unwrap_or(2048),
            rope_style: family.rope_style(),
            rope,
            rope_local,
            sliding_window,
            local_layers,
            attention_scale,
            attention_softcap,
            final_softcap,
            embedding_scale: family.is_gemma().then(|| (width as f32).sqrt()),
            post_norms: family.is_gemma(),
            activation: if family.is_gemma() {
                Activation::GeluTanh
            } else {
                Activation::Silu
            },
        })
    }

    /// Positions of KV cache a layer holds at `context`: its window, or all.
    pub fn cached_positions(&self, layer: usize, context: usize) -> usize {
        match (self.local_layers.get(layer), self.sliding_window) {
            (Some(true), Some(w)) => w.min(context),
            _ => context,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every supported name parses, and parses back to itself.
    #[test]
    fn supported_names_round_trip() {
        for name in Family::SUPPORTED.split(", ") {
            let family = Family::from_architecture(name).unwrap_or_else(|| panic!("{name}"));
            let expected = if name == "mistral" { "llama" } else { name };
            assert_eq!(family.name(), expected);
        }
        assert_eq!(Family::from_architecture("falcon"), None);
    }

    /// Gemma 3 slides five layers of every six, Gemma 2 every other one.
    #[test]
    fn swa_patterns_follow_llama_cpp() {
        let local = |f: Family, layers: usize| -> Vec<bool> {
            let n = f.swa_pattern().unwrap();
            (0..layers).map(|i| i % n < n - 1).collect()
        };
        assert_eq!(
            local(Family::Gemma3, 12),
            [true, true, true, true, true, false].repeat(2)
        );
        assert_eq!(local(Family::Gemma2, 4), [true, false, true, false]);
        assert_eq!(Family::Llama.swa_pattern(), None);
    }

    /// Counts far past any model are refused by name before anything is
    /// sized from them (a block count of 2^32 − 1 aborted on allocation).
    #[test]
    fn absurd_hyper_parameters_are_named() {
        use std::collections::HashMap;

        use candle_core::quantized::gguf_file::{Content, Value, VersionedMagic};
        let gguf = |key: &str, v: u32| {
            let mut metadata: HashMap<String, Value> = [
                ("general.architecture", Value::String("llama".into())),
                ("llama.block_count", Value::U32(2)),
                ("llama.embedding_length", Value::U32(64)),
                ("llama.attention.head_count", Value::U32(4)),
                ("llama.feed_forward_length", Value::U32(128)),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
            metadata.insert(key.to_owned(), Value::U32(v));
            GgufFile {
                path: "m.gguf".into(),
                content: Content {
                    magic: VersionedMagic::GgufV3,
                    metadata,
                    tensor_infos: HashMap::new(),
                    tensor_data_offset: 0,
                },
                skipped: Vec::new(),
            }
        };
        assert!(DecoderHparams::from_gguf(&gguf("llama.block_count", 2)).is_ok());
        for key in [
            "llama.block_count",
            "llama.embedding_length",
            "llama.attention.head_count",
            "llama.feed_forward_length",
        ] {
            let err = DecoderHparams::from_gguf(&gguf(key, u32::MAX))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
    }
}
