//! One vocabulary for error bodies, `{"error": {"message", "type", "code"?,
//! "param"?}}`, shared by every server modelship runs (a replica, the
//! gateway, the control API), so that a client tells errors apart the same
//! way wherever it meets them. The `type` follows the HTTP status, in
//! OpenAI's names; each layer's `code` says what happened in its own terms.

/// The `type` of an error answered with `status`.
pub fn error_type(status: u16) -> &'static str {
    match status {
        401 | 403 => "authentication_error",
        429 => "rate_limit_error",
        500..=599 => "server_error",
        _ => "invalid_request_error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_follow_the_status() {
        for (status, kind) in [
            (400, "invalid_request_error"),
            (404, "invalid_request_error"),
            (409, "invalid_request_error"),
            (413, "invalid_request_error"),
            (401, "authentication_error"),
            (429, "rate_limit_error"),
            (500, "server_error"),
            (503, "server_error"),
        ] {
            assert_eq!(error_type(status), kind, "{status}");
        }
    }
}
