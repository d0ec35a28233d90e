//! Evaluation text: a file, or the built-in corpus (the opening of the 1911
//! Britannica article on Shakespeare from the `shakespeare` package; see
//! scripts/make-corpus.py).

use std::path::Path;

const DEFAULT: &str = include_str!("../corpus/default.txt");

#[derive(Debug, Clone)]
pub struct Corpus {
    pub name: String,
    pub text: String,
}

impl Corpus {
    pub fn builtin() -> Self {
        Self {
            name: "built-in (Britannica 1911, Shakespeare)".into(),
            text: DEFAULT.to_owned(),
        }
    }

    pub fn from_file(path: &Path) -> std::io::Result<Self> {
        Ok(Self {
            name: path.display().to_string(),
            text: std::fs::read_to_string(path)?,
        })
    }

    /// Sentences of 20 to 400 characters, at most `max`: ends at `.`, `!`
    /// or `?` followed by a space or a line end.
    pub fn sentences(&self, max: usize) -> Vec<String> {
        let mut out = Vec::new();
        let mut start = 0;
        let bytes = self.text.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            let end = matches!(b, b'.' | b'!' | b'?')
                && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace());
            if end || b == b'\n' && bytes.get(i + 1) == Some(&b'\n') {
                let s = self.text[start..=i]
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ");
                if (20..=400).contains(&s.len()) {
                    out.push(s);
                }
                start = i + 1;
                if out.len() == max {
                    break;
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_split_at_ends() {
        let c = Corpus {
            name: "t".into(),
            text: "First sentence is here. Second one, longer than twenty?\n\nShort. Third sentence at the end".into(),
        };
        assert_eq!(
            c.sentences(10),
            ["First sentence is here.", "Second one, longer than twenty?"]
        );
        assert_eq!(c.sentences(1).len(), 1);
    }

    #[test]
    fn builtin_corpus_has_enough_text() {
        let c = Corpus::builtin();
        assert!(c.text.len() > 15_000);
        assert!(c.sentences(1000).len() >= 90, "{}", c.sentences(1000).len());
    }
}
