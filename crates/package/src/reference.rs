//! Image references: `[registry/]repository[:tag][@digest]`, as Docker
//! reads them (a first component with a `.` or `:`, or `localhost`, is a
//! registry).

use crate::PackageError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]`; `None` for a name without one.
    pub registry: Option<String>,
    pub repository: String,
    pub tag: String,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, PackageError> {
        let bad = |reason: &str| PackageError::Reference {
            reference: s.to_owned(),
            reason: reason.to_owned(),
        };
        if s.contains('@') {
            return Err(bad("a digest cannot be built or pushed to; give a tag"));
        }
        let (registry, rest) = match s.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (Some(first.to_owned()), rest)
            }
            _ => (None, s),
        };
        // The tag is after the last ':' that follows the last '/'.
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (rest, "latest"),
        };
        if repository.is_empty()
            || !repository.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            })
        {
            return Err(bad(
                "the repository must be lowercase letters, digits, '.', '_', '-' and '/'",
            ));
        }
        if tag.is_empty()
            || tag.len() > 128
            || !tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(bad(
                "the tag must be 1-128 letters, digits, '.', '_' and '-'",
            ));
        }
        Ok(Reference {
            registry,
            repository: repository.to_owned(),
            tag: tag.to_owned(),
        })
    }

    /// `http` for a registry on loopback (as Docker allows), else `https`.
    pub fn scheme(&self) -> &'static str {
        let host = self.registry.as_deref().unwrap_or_default();
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        if host == "localhost" || host.starts_with("127.") || host == "[::1]" {
            "http"
        } else {
            "https"
        }
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(r) = &self.registry {
            write!(f, "{r}/")?;
        }
        write!(f, "{}:{}", self.repository, self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_docker() {
        let cases = [
            ("minilm", None, "minilm", "latest"),
            ("minilm:r3", None, "minilm", "r3"),
            ("team/minilm:r3", None, "team/minilm", "r3"),
            (
                "localhost:5000/minilm",
                Some("localhost:5000"),
                "minilm",
                "latest",
            ),
            (
                "127.0.0.1:5000/a/b:v1.2",
                Some("127.0.0.1:5000"),
                "a/b",
                "v1.2",
            ),
            ("registry.example/x:y", Some("registry.example"), "x", "y"),
        ];
        for (s, registry, repository, tag) in cases {
            let r = Reference::parse(s).unwrap();
            assert_eq!(
                (r.registry.as_deref(), r.repository.as_str(), r.tag.as_str()),
                (registry, repository, tag),
                "{s}"
            );
            assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        }
    }

    #[test]
    fn rejects_what_a_registry_would() {
        for s in ["", "MiniLM", "a//b", "a:", "a@sha256:00", "a:b c"] {
            assert!(Reference::parse(s).is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn loopback_registries_are_plain_http() {
        assert_eq!(
            Reference::parse("localhost:5000/a").unwrap().scheme(),
            "http"
        );
        assert_eq!(
            Reference::parse("127.0.0.1:5000/a").unwrap().scheme(),
            "http"
        );
        assert_eq!(Reference::parse("r.example/a").unwrap().scheme(), "https");
    }
}
