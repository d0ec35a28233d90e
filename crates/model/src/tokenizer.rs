//! Tokenizers: `tokenizer.json` of an HF directory, or one rebuilt from GGUF
//! metadata (`tokenizer.ggml.*`) the way llama.cpp reads it: a byte-level BPE
//! (`gpt2`: GPT-2, Llama 3, Qwen2, SmolLM) or a SentencePiece BPE (`llama`:
//! Gemma, Llama 2, Mistral) whose merges follow the pieces' scores.

use std::collections::HashMap;

use std::path::Path;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::normalizers::{Prepend, Replace};
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
const TOKEN_TYPE_BYTE: i64 = 6;

/// The llama-3 pre-tokenizer regex (llama.cpp `LLAMA_VOCAB_PRE_TYPE_LLAMA3`).
pub(crate) const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Qwen2's: Llama 3's with single digits (`LLAMA_VOCAB_PRE_TYPE_QWEN2`).
pub(crate) const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// SentencePiece's visible space.
const SPM_SPACE: &str = "\u{2581}";

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
    /// How a token's vocabulary entry spells its bytes.
    spelling: Spelling,
}

/// How vocabulary entries spell bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spelling {
    /// GPT-2's byte-to-character map (`Ġ` is a space).
    ByteLevel,
    /// SentencePiece: `▁` is a space, `<0xNN>` one byte.
    SentencePiece,
    /// Whatever the tokenizer decodes a lone token to (BERT's WordPiece).
    Decoded,
}

/// What one token id stands for, as generation emits it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TokenBytes {
    /// The raw bytes (a byte-level token may hold part of a character).
    pub bytes: Vec<u8>,
    /// A control token (`<|im_end|>`): not text, left out of completions.
    pub special: bool,
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
        let json = crate::files::read_small(path, crate::files::MAX_SMALL_FILE)?;
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
        let spelling = tokenizer_json_spelling(json);
        Ok(Self {
            inner,
            bos: None,
            eos,
            spelling,
        })
    }

    /// Rebuilds the tokenizer from GGUF metadata: the whole Hugging Face
    /// tokenizer when the file carries one (`tokenizer.huggingface.json`, as
    /// modelship writes for BERT models), else llama.cpp's `gpt2` (byte-level
    /// BPE: the `gpt2`/`default`, `smollm`, `llama-bpe` and `qwen2`
    /// pre-tokenizers) or `llama` (SentencePiece BPE) model.
    pub fn from_gguf(g: &GgufFile) -> Result<Self, ModelError> {
        if g.has(HF_JSON_KEY) {
            return Self::from_hf_json(g.string(HF_JSON_KEY)?.as_bytes(), &g.path);
        }
        let fail = tokenizer_error(g);
        let tokens = g.strings("tokenizer.ggml.tokens")?;
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
        let (mut inner, spelling) = match g.string("tokenizer.ggml.model")? {
            "gpt2" => (byte_level_bpe(g, &tokens)?, Spelling::ByteLevel),
            "llama" => (
                sentencepiece_bpe(g, &tokens, &types)?,
                Spelling::SentencePiece,
            ),
            other => {
                return Err(fail(format!(
                    "tokenizer.ggml.model `{other}` is not supported (`gpt2`, byte-level BPE; `llama`, SentencePiece BPE)"
                )));
            }
        };
        // Control tokens (`<|im_start|>`, `<start_of_turn>`) are special: parsed
        // in text, dropped when decoding. User-defined ones (Qwen's
        // `<tool_call>`, Gemma's runs of spaces and newlines) are matched in
        // the raw text as llama.cpp matches them, and decode to themselves.
        let added = |ty: i64| -> Vec<AddedToken> {
            tokens
                .iter()
                .zip(&types)
                .filter(|(_, t)| **t == ty)
                .map(|(t, _)| {
                    AddedToken::from(t.to_string(), ty == TOKEN_TYPE_CONTROL).normalized(false)
                })
                .collect()
        };
        inner
            .add_special_tokens(added(TOKEN_TYPE_CONTROL))
            .map_err(|e| fail(e.to_string()))?;
        inner
            .add_tokens(added(TOKEN_TYPE_USER_DEFINED))
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
        if let Some(eot) = id("tokenizer.ggml.eot_token_id")? {
            eos.push(eot);
        }
        // Chat models end a turn with their own token (`<|im_end|>`,
        // `<|eot_id|>`, `<end_of_turn>`, Phi-3's `<|end|>`), and llama.cpp
        // ends generation at `<|endoftext|>` and `<|eom_id|>` too.
        for end in [
            "<|im_end|>",
            "<|eot_id|>",
            "<|eom_id|>",
            "<|end|>",
            "<end_of_turn>",
            "<|endoftext|>",
        ] {
            if let Some(i) = inner.token_to_id(end)
                && !eos.contains(&i)
            {
                eos.push(i);
            }
        }
        Ok(Self {
            inner,
            bos,
            eos,
            spelling,
        })
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

    /// An encoder's input as the model reads it: one text, or a pair read
    /// together, with the special tokens around them and each token's
    /// segment. With `max`, an input longer than `max` tokens is cut to fit:
    /// a pair from its longer text first (tokenizers' `longest_first`),
    /// the special tokens kept.
    pub fn encode_sequence(
        &self,
        text: &str,
        pair: Option<&str>,
        max: Option<usize>,
    ) -> Result<(Vec<u32>, Vec<u32>), String> {
        use tokenizers::PostProcessor;
        use tokenizers::utils::truncation::{
            TruncationDirection, TruncationParams, TruncationStrategy, truncate_encodings,
        };
        let err = |e: tokenizers::Error| e.to_string();
        let first = self.inner.encode_fast(text, false).map_err(err)?;
        let second = pair
            .map(|p| self.inner.encode_fast(p, false))
            .transpose()
            .map_err(err)?;
        let (first, second) = match max {
            None => (first, second),
            Some(max) => {
                let added = self
                    .inner
                    .get_post_processor()
                    .map_or(0, |p| p.added_tokens(second.is_some()));
                let params = TruncationParams {
                    direction: TruncationDirection::Right,
                    max_length: max.saturating_sub(added).max(1),
                    strategy: TruncationStrategy::LongestFirst,
                    stride: 0,
                };
                truncate_encodings(first, second, &params).map_err(err)?
            }
        };
        let enc = self.inner.post_process(first, second, true).map_err(err)?;
        Ok((enc.get_ids().to_vec(), enc.get_type_ids().to_vec()))
    }

    /// The text of `ids`, special tokens left out (what a completion shows).
    pub fn decode(&self, ids: &[u32]) -> Result<String, String> {
        self.inner.decode(ids, true).map_err(|e| e.to_string())
    }

    /// The text of `ids`, special tokens included (`<|im_start|>`): what
    /// `/detokenize` answers, as vLLM and llama.cpp do.
    pub fn decode_all(&self, ids: &[u32]) -> Result<String, String> {
        self.inner.decode(ids, false).map_err(|e| e.to_string())
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

    /// Token ids `0..vocab_size()`, special tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The bytes of every token id, in id order (`vocab_size()` entries):
    /// what log-probabilities report and what a grammar matches against.
    /// An id with no entry gets no bytes.
    pub fn token_bytes(&self) -> Vec<TokenBytes> {
        let added = self.inner.get_added_tokens_decoder();
        (0..self.vocab_size() as u32)
            .map(|id| {
                if let Some(t) = added.get(&id) {
                    return TokenBytes {
                        bytes: t.content.as_bytes().to_vec(),
                        special: t.special,
                    };
                }
                let Some(piece) = self.inner.id_to_token(id) else {
                    return TokenBytes::default();
                };
                let bytes = match self.spelling {
                    Spelling::ByteLevel => byte_level_bytes(&piece),
                    Spelling::SentencePiece => sentencepiece_bytes(&piece),
                    Spelling::Decoded => self
                        .inner
                        .decode(&[id], false)
                        .map(String::into_bytes)
                        .unwrap_or_default(),
                };
                TokenBytes {
                    bytes,
                    special: false,
                }
            })
            .collect()
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

/// How a `tokenizer.json`'s vocabulary spells bytes, from its decoder:
/// `ByteLevel`, SentencePiece's (`Metaspace`, or a sequence that turns `▁`
/// into spaces or falls back to bytes, as Llama 2's, Mistral's and Gemma's
/// do), or neither (BERT's WordPiece: what a lone token decodes to).
fn tokenizer_json_spelling(json: &[u8]) -> Spelling {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(json) else {
        return Spelling::Decoded;
    };
    let decoder = &v["decoder"];
    let kind = |d: &serde_json::Value| d["type"].as_str().unwrap_or_default().to_owned();
    let parts: Vec<&serde_json::Value> = match decoder["decoders"].as_array() {
        Some(list) => list.iter().collect(),
        None => vec![decoder],
    };
    if parts.iter().any(|d| kind(d) == "ByteLevel") {
        Spelling::ByteLevel
    } else if parts.iter().any(|d| {
        matches!(kind(d).as_str(), "Metaspace" | "ByteFallback")
            || (kind(d) == "Replace" && d["pattern"]["String"] == SPM_SPACE)
    }) {
        Spelling::SentencePiece
    } else {
        Spelling::Decoded
    }
}

/// GPT-2's byte-level alphabet, by code point: printable Latin-1 characters
/// stand for themselves, the other 68 bytes for U+0100 on, in order.
fn byte_level_byte(c: char) -> Option<u8> {
    static TABLE: std::sync::LazyLock<HashMap<char, u8>> = std::sync::LazyLock::new(|| {
        let printable = |b: u8| matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        let mut next = 0x100u32;
        (0..=255u8)
            .map(|b| {
                let c = if printable(b) {
                    char::from(b)
                } else {
                    next += 1;
                    char::from_u32(next - 1).expect("below the surrogates")
                };
                (c, b)
            })
            .collect()
    });
    TABLE.get(&c).copied()
}

/// A byte-level piece's bytes; a character outside the alphabet (not
/// written by a byte-level trainer) stands for its own UTF-8.
fn byte_level_bytes(piece: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(piece.len());
    for c in piece.chars() {
        match byte_level_byte(c) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

/// A SentencePiece piece's bytes: `<0xNN>` is that byte, `▁` a space.
fn sentencepiece_bytes(piece: &str) -> Vec<u8> {
    if let Some(hex) = piece.strip_prefix("<0x").and_then(|p| p.strip_suffix('>'))
        && hex.len() == 2
        && let Ok(b) = u8::from_str_radix(hex, 16)
    {
        return vec![b];
    }
    piece.replace(SPM_SPACE, " ").into_bytes()
}

fn tokenizer_error(g: &GgufFile) -> impl Fn(String) -> ModelError + '_ {
    |reason| ModelError::Tokenizer {
        path: g.path.clone(),
        reason,
    }
}

/// llama.cpp's `gpt2` model: byte-level BPE from the vocabulary and merges,
/// behind the pre-tokenizer `tokenizer.ggml.pre` names.
fn byte_level_bpe(g: &GgufFile, tokens: &[&str]) -> Result<Tokenizer, ModelError> {
    let fail = tokenizer_error(g);
    let merges = g.strings("tokenizer.ggml.merges")?;
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
    let regex_then_bytes = |pattern: &str| -> Result<PreTokenizerWrapper, ModelError> {
        let split = Split::new(
            SplitPattern::Regex(pattern.into()),
            SplitDelimiterBehavior::Isolated,
            false,
        )
        .map_err(|e| fail(e.to_string()))?;
        Ok(Sequence::new(vec![
            split.into(),
            ByteLevel::new(false, true, false).into(),
        ])
        .into())
    };
    let pre_tokenizer: PreTokenizerWrapper = match pre {
        "default" | "gpt2" => byte_level.into(),
        // llama.cpp isolates every digit before the GPT-2 regex.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "llama-bpe" | "llama3" => regex_then_bytes(LLAMA3_PATTERN)?,
        "qwen2" => regex_then_bytes(QWEN2_PATTERN)?,
        other => {
            return Err(fail(format!(
                "tokenizer.ggml.pre `{other}` is not supported (gpt2, smollm, llama-bpe, qwen2)"
            )));
        }
    };
    let mut inner = Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    Ok(inner)
}

/// llama.cpp's `llama` model (SentencePiece BPE): spaces become `▁`, and
/// adjacent pieces merge while their concatenation is a piece, the
/// highest-scoring first; what no piece covers falls back to `<0xXX>` bytes.
/// As a BPE, that is one merge per way of splitting each piece in two,
/// ranked by the piece's score (ties: the lower id first).
fn sentencepiece_bpe(
    g: &GgufFile,
    tokens: &[&str],
    types: &[i64],
) -> Result<Tokenizer, ModelError> {
    let fail = tokenizer_error(g);
    let scores = g.floats("tokenizer.ggml.scores")?;
    if scores.len() != tokens.len() {
        return Err(fail(format!(
            "{} scores for {} tokens",
            scores.len(),
            tokens.len()
        )));
    }
    let ids: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (*t, i as u32))
        .collect();
    let mut ranked: Vec<(u32, usize)> = Vec::new(); // (piece, split point)
    for (i, piece) in tokens.iter().enumerate() {
        if types[i] == TOKEN_TYPE_BYTE {
            continue;
        }
        for (at, _) in piece.char_indices().skip(1) {
            if ids.contains_key(&piece[..at]) && ids.contains_key(&piece[at..]) {
                ranked.push((i as u32, at));
            }
        }
    }
    ranked.sort_by(|a, b| {
        scores[b.0 as usize]
            .total_cmp(&scores[a.0 as usize])
            .then(a.0.cmp(&b.0))
    });
    let merges = ranked
        .iter()
        .map(|&(i, at)| {
            let piece = tokens[i as usize];
            (piece[..at].to_owned(), piece[at..].to_owned())
        })
        .collect();
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .byte_fallback(true);
    if g.has("tokenizer.ggml.unknown_token_id") {
        let unk = g.uint("tokenizer.ggml.unknown_token_id")? as usize;
        let unk = tokens
            .get(unk)
            .ok_or_else(|| fail(format!("unknown_token_id {unk} is outside the vocabulary")))?;
        builder = builder.unk_token(unk.to_string());
    }
    let bpe = builder.build().map_err(|e| fail(e.to_string()))?;
    // llama.cpp prepends a space unless the file says not to (Gemma does).
    let space_prefix =
        !g.has("tokenizer.ggml.add_space_prefix") || g.bool("tokenizer.ggml.add_space_prefix")?;
    let mut normalizers = Vec::new();
    if space_prefix {
        normalizers.push(Prepend::new(SPM_SPACE.to_owned()).into());
    }
    normalizers.push(
        Replace::new(" ", SPM_SPACE)
            .map_err(|e| fail(e.to_string()))?
            .into(),
    );
    let mut decoders = vec![
        tokenizers::decoders::DecoderWrapper::Replace(
            Replace::new(SPM_SPACE, " ").map_err(|e| fail(e.to_string()))?,
        ),
        ByteFallback::default().into(),
        Fuse::default().into(),
    ];
    if space_prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut inner = Tokenizer::new(bpe);
    inner
        .with_normalizer(Some(NormalizerSequence::new(normalizers)))
        .map_err(|e| fail(e.to_string()))?;
    inner.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(inner)
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
