//! Constrained decoding through llguidance (the library llama.cpp and vLLM
//! use): a JSON schema is compiled against the model's vocabulary once per
//! request, and each sequence keeps a matcher that says which tokens may
//! come next. The sampler only ever sees tokens the grammar allows, so every
//! output parses and validates, whatever the model would have said.

use std::sync::Arc;

use llguidance::api::TopLevelGrammar;
use llguidance::toktrie::{TokEnv, TokRxInfo, TokTrie, TokenId, TokenizerEnv};
use llguidance::{Matcher, ParserFactory};
use modelship_model::{TextTokenizer, TokenBytes};
use serde_json::Value;

/// The model's vocabulary as llguidance reads it, and the grammars' shared
/// state (one per engine, built the first time a request asks).
pub struct Grammars {
    factory: ParserFactory,
}

/// The tokenizer a grammar's literal text is tokenized with: the model's.
struct Vocabulary {
    trie: TokTrie,
    tokenizer: Arc<TextTokenizer>,
}

impl TokenizerEnv for Vocabulary {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        self.tokenizer
            .encode(&String::from_utf8_lossy(s), false)
            .unwrap_or_default()
    }
}

impl Grammars {
    /// The grammars of a model read by `tokenizer`, whose tokens spell
    /// `vocabulary`. The model's logits may be longer than its vocabulary:
    /// ids past it are never allowed.
    pub fn new(tokenizer: Arc<TextTokenizer>, vocabulary: &[TokenBytes]) -> Result<Self, String> {
        let eos = *tokenizer
            .eos()
            .first()
            .ok_or("the model has no end-of-sequence token to end a constrained output")?;
        let words: Vec<Vec<u8>> = vocabulary
            .iter()
            .map(|t| {
                if t.special {
                    // llguidance's mark for a token that is not text.
                    let mut w = Vec::with_capacity(t.bytes.len() + 1);
                    w.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    w.extend_from_slice(&t.bytes);
                    w
                } else {
                    t.bytes.clone()
                }
            })
            .collect();
        let info = TokRxInfo::new(words.len() as u32, eos);
        let trie = TokTrie::from(&info, &words);
        let env: TokEnv = Arc::new(Vocabulary { trie, tokenizer });
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        // Errors come back to the caller; nothing goes to stderr.
        factory.set_stderr_log_level(0);
        Ok(Self { factory })
    }

    /// A matcher for outputs that are JSON valid for `schema` (`{"type":
    /// "object"}` for any object). A keyword llguidance cannot enforce is an
    /// error naming it. Whitespace is kept to single spaces after `,` and
    /// `:`: a small model given free whitespace may spend its tokens on it.
    pub fn json_schema(&self, schema: &Value) -> Result<Constraint, String> {
        let mut schema = schema.clone();
        let Some(obj) = schema.as_object_mut() else {
            return Err("a JSON schema is an object".into());
        };
        obj.insert(
            "x-guidance".into(),
            serde_json::json!({
                "whitespace_flexible": false,
                "item_separator": ", ",
                "key_separator": ": ",
            }),
        );
        self.compile(TopLevelGrammar::from_json_schema(schema))
    }

    /// A matcher for a Lark grammar in llguidance's dialect (`%json {…}`
    /// for JSON by schema).
    pub fn lark(&self, grammar: &str) -> Result<Constraint, String> {
        self.compile(TopLevelGrammar::from_lark(grammar.to_owned()))
    }

    fn compile(&self, grammar: TopLevelGrammar) -> Result<Constraint, String> {
        let parser = self
            .factory
            .create_parser(grammar)
            .map_err(|e| e.to_string())?;
        let matcher = Matcher::new(Ok(parser));
        if let Some(e) = matcher.get_error() {
            return Err(e);
        }
        Ok(Constraint(matcher))
    }
}

/// One sequence's place in its grammar.
pub struct Constraint(Matcher);

impl Constraint {
    /// Sets every token the grammar does not allow next to −∞.
    pub fn mask(&mut self, logits: &mut [f32]) -> Result<(), String> {
        let allowed = self.0.compute_mask_or_eos().map_err(|e| e.to_string())?;
        let known = allowed.len();
        for (id, x) in logits.iter_mut().enumerate() {
            if id >= known || !allowed.is_allowed(id as TokenId) {
                *x = f32::NEG_INFINITY;
            }
        }
        Ok(())
    }

    /// Moves past a sampled token (one `mask` allowed).
    pub fn accept(&mut self, token: u32) -> Result<(), String> {
        self.0.consume_token(token).map_err(|e| e.to_string())
    }

    /// The grammar is complete: nothing but the end may follow.
    pub fn is_finished(&self) -> bool {
        self.0.is_stopped()
    }

    /// An independent copy at the same place (`n > 1`).
    pub fn fork(&self) -> Self {
        Self(self.0.deep_clone())
    }
}
