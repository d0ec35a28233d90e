//! Request field shapes shared by the OpenAI and v2 APIs.

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

/// A string or a list of strings (`input` of /v1/embeddings, `prompt`, `stop`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Texts(pub Vec<String>);

impl<'de> Deserialize<'de> for Texts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Texts;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of strings")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Texts, E> {
                Ok(Texts(vec![s.to_owned()]))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Texts, A::Error> {
                let mut out = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    out.push(s);
                }
                Ok(Texts(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// Chat message content: a string, or an array of `{type: "text", text}` parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Content(pub String);

impl<'de> Deserialize<'de> for Content {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Part {
            #[serde(rename = "type")]
            kind: String,
            text: String,
        }
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a string or an array of text parts")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Content, E> {
                Ok(Content(s.to_owned()))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Content, A::Error> {
                let mut out = String::new();
                while let Some(p) = seq.next_element::<Part>()? {
                    if p.kind != "text" {
                        return Err(de::Error::custom(format!(
                            "content part type `{}` is not supported (only `text`)",
                            p.kind
                        )));
                    }
                    out.push_str(&p.text);
                }
                Ok(Content(out))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_take_a_string_or_a_list() {
        assert_eq!(
            serde_json::from_str::<Texts>(r#""a""#).unwrap().0,
            vec!["a"]
        );
        assert_eq!(
            serde_json::from_str::<Texts>(r#"["a","b"]"#).unwrap().0,
            vec!["a", "b"]
        );
        assert!(serde_json::from_str::<Texts>("[1,2]").is_err());
        assert!(serde_json::from_str::<Texts>("5").is_err());
    }

    #[test]
    fn content_joins_text_parts() {
        let c: Content =
            serde_json::from_str(r#"[{"type":"text","text":"a"},{"type":"text","text":"b"}]"#)
                .unwrap();
        assert_eq!(c.0, "ab");
        assert!(serde_json::from_str::<Content>(r#"[{"type":"image_url","text":"x"}]"#).is_err());
    }
}
