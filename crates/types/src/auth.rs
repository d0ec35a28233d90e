//! API keys, as every modelship HTTP surface checks them (a replica, the
//! gateway, the control API): `Authorization: Bearer KEY`, the scheme
//! matched case-insensitively (RFC 9110 §11.1), the key compared in full
//! whatever it holds, so timing does not tell how much of a key matched.

/// The token of an `Authorization` value in the Bearer scheme.
pub fn bearer_token(value: &[u8]) -> Option<&[u8]> {
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Whether the `Authorization` value `header` carries one of `keys`.
pub fn authorized<'a>(header: Option<&[u8]>, keys: impl IntoIterator<Item = &'a str>) -> bool {
    let Some(given) = header.and_then(bearer_token) else {
        return false;
    };
    // Every key is compared, not just up to the first match.
    keys.into_iter().fold(false, |found, key| {
        found | same_bytes(given, key.as_bytes())
    })
}

/// Compares without returning early.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A key read from a file or flag: trimmed, and refused when empty (a key of
/// nothing would guard nothing) or when it holds bytes a header cannot
/// carry.
pub fn parse_key(text: &str) -> Result<String, &'static str> {
    let key = text.trim();
    if key.is_empty() {
        return Err("an API key cannot be empty");
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("an API key holds only visible ASCII characters");
    }
    Ok(key.to_owned())
}

/// A key handed to a process (a replica's): printed as `<redacted>`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(key: String) -> Self {
        Self(key)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_is_case_insensitive_and_the_key_exact() {
        let keys = ["secret", "other"];
        for header in [
            "Bearer secret",
            "bearer secret",
            "BEARER  secret ",
            "Bearer other",
        ] {
            assert!(authorized(Some(header.as_bytes()), keys), "{header}");
        }
        for header in [
            "Bearer secreT",
            "Bearer secret2",
            "Basic secret",
            "Bearer ",
            "Bearersecret",
            "secret",
        ] {
            assert!(!authorized(Some(header.as_bytes()), keys), "{header}");
        }
        assert!(!authorized(None, keys));
        assert!(!authorized(Some(b"Bearer secret"), []));
    }

    #[test]
    fn keys_are_trimmed_and_never_empty() {
        assert_eq!(parse_key("  k1\n"), Ok("k1".into()));
        assert!(parse_key("").is_err());
        assert!(parse_key(" \n").is_err());
        assert!(parse_key("a b").is_err());
    }
}
