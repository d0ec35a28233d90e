//! Tokenizers: `tokenizer.json` of an HF directory, or a byte-level BPE rebuilt
//! from GGUF metadata (`tokenizer.ggml.*`) the way llama.cpp reads it.

use std::path::Path;

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

use crate::{GgufFile, ModelError};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// The llama-3 pre-tokenizer regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF key of a whole Hugging Face `tokenizer.json` (GGUF specification).
pub const HF_JSON_KEY: &str = "tokenizer.huggingface.json";

/// modelship's GGUF keys for sentence-transformers' pooling (a [`Pooling`]
/// name) and normalization, which llama.cpp ignores.
///
/// [`Pooling`]: crate::Pooling
pub const POOLING_KEY: &str = "modelship.pooling";
pub const NORMALIZE_KEY: &str = "modelship.normalize";

/// A tokenizer with the special tokens a server needs to know about.
#[derive(Clone)]
pub struct TextTokenizer {
    inner: Tokenizer,
    /// Prepended by us (GGUF `add_bos_token`); HF tokenizers add their own.
    bos: Option<u32>,
    /// Tokens that end generation.
    eos: Vec<u32>,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("vocab", &self.inner.get_vocab_size(true))
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .finish()
    }
}

impl TextTokenizer {
    /// `tokenizer.json` as written, without its truncation and padding: the
    /// server decides what is too long and pads batches itself.
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let json = std::fs::read(path).map_err(ModelError::io(path))?;
        Self::from_hf_json(&json, path)
    }

    /// A Hugging Face `tokenizer.json` held in memory (from a file or from a
    /// GGUF's `tokenizer.huggingface.json`); `path` names it in errors.
    fn from_hf_json(json: &[u8], path: &Path) -> Result<Self, ModelError> {
        let fail = |e: tokenizers::Error| ModelError::Tokenizer {
            path: path.to_owned(),
            reason: e.to_string(),
        };
        let mut inner = Tokenizer::from_bytes(json).map_err(fail)?;
        inner.with_padding(None);
        inner.with_truncation(None).map_err(fail)?;
        let eos = ["</s>", "<|endoftext|>", "[SEP]"]
            .iter()
            .filter_map(|t| inner.token_to_id(t))
            .take(1)
            .collect();
        Ok(Self {
            inner,
            bos: None,
            eos,
        })
    }

    /// Rebuilds the tokenizer from GGUF metadata: the whole Hugging Face
    /// tokenizer when the file carries one (`tokenizer.huggingface.json`, as
    /// modelship writes for BERT models), else llama.cpp's `gpt2` (byte-level
    /// BPE) model with the `gpt2`/`default`, `smollm` and `llama-bpe`
    /// pre-tokenizers.
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        if g.has(HF_JSON_KEY) {
            return Self::from_hf_json(g.string(HF_JSON_KEY)?.as_bytes(), &g.path);
        }
        let fail = |reason: String| ModelError::Tokenizer {
            path: g.path.clone(),
            reason,
        };
        let model = g.string("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(fail(format!(
                "tokenizer.ggml.model `{model}` is not supported (only `gpt2`, byte-level BPE)"
            )));
        }
        let tokens = g.strings("tokenizer.ggml.tokens")?;
        let merges = g.strings("tokenizer.ggml.merges")?;
        let types = if g.has("tokenizer.ggml.token_type") {
            g.ints("tokenizer.ggml.token_type")?
        } else {
            vec![1; tokens.len()]
        };
        if types.len() != tokens.len() {
            return Err(fail(format!(
                "{} token types for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges = merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| fail(format!("merge {i} `{m}` has no space")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| fail(e.to_string()))?;

        let pre = if g.has("tokenizer.ggml.pre") {
            g.string("tokenizer.ggml.pre")?
        } else {
            "default"
        };
        let byte_level = ByteLevel::new(false, true, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre {
            "default" | "gpt2" => byte_level.into(),
            // llama.cpp isolates every digit before the GPT-2 regex.
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "llama-bpe" | "llama3" => {
                let split = Split::new(
                    SplitPattern::Regex(LLAMA3_PATTERN.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| fail(e.to_string()))?;
                Sequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, true, false).into(),
                ])
                .into()
            }
            other => {
                return Err(fail(format!(
                    "tokenizer.ggml.pre `{other}` is not supported (gpt2, smollm, llama-bpe)"
                )));
            }
        };

        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> = tokens
            .iter()
            .zip(&types)
            .filter(|(_, ty)| matches!(**ty, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED))
            .map(|(t, _)| AddedToken::from(t.to_string(), true))
            .collect();
        inner
            .add_special_tokens(specials)
            .map_err(|e| fail(e.to_string()))?;

        let id = |key: &str| -> Result<Option<u32>, ModelError> {
            if !g.has(key) {
                return Ok(None);
            }
            let v = g.uint(key)?;
            if v as usize >= tokens.len() {
                return Err(fail(format!("{key} = {v} is outside the vocabulary")));
            }
            Ok(Some(v as u32))
        };
        let add_bos =
            g.has("tokenizer.ggml.add_bos_token") && g.bool("tokenizer.ggml.add_bos_token")?;
        let bos = if add_bos {
            id("tokenizer.ggml.bos_token_id")?
        } else {
            None
        };
        let mut eos: Vec<u32> = id("tokenizer.ggml.eos_token_id")?.into_iter().collect();
        // Chat models end a turn with their own token (`<|im_end|>`, `<|eot_id|>`).
        for end in ["<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>"] {
            if let Some(i) = inner.token_to_id(end)
                && !eos.contains(&i)
            {
                eos.push(i);
            }
        }
        Ok(Self { inner, bos, eos })
    }

    /// Token ids of `text`. `add_special` adds what the model expects around a
    /// sequence (BOS for GGUF models that want it, `[CLS] … [SEP]` for BERT).
    /// Special tokens written in the text (`<|im_start|>`) are always parsed.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, String> {
        let enc = self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| e.to_string())?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        if add_special && let Some(bos) = self.bos {
            ids.push(bos);
        }
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.inner.decode(ids, true).map_err(|e| e.to_string())
    }

    /// The token `encode` prepends when asked for special tokens, if any.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos(&self) -> &[u32] {
        &self.eos
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// A detokenizer for a stream of generated ids.
    pub fn stream(&self) -> Detokenizer<'_> {
        Detokenizer {
            tokenizer: self,
            ids: Vec::new(),
            prefix: String::new(),
            prefix_index: 0,
        }
    }
}

/// Turns generated ids into text pieces as soon as they form whole characters
/// (a multi-byte character may span several byte-level tokens).
pub struct Detokenizer<'a> {
    tokenizer: &'a TextTokenizer,
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl Detokenizer<'_> {
    /// Text completed by `id`, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, String> {
        tokenizers::tokenizer::step_decode_stream(
            &self.tokenizer.inner,
            vec![id],
            true,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| e.to_string())
    }
}
