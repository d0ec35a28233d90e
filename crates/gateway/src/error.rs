//! Every answer the gateway gives of its own, one enum made HTTP in one
//! place ([`GatewayError::answer`]): the body in the shared vocabulary
//! (`modelship_types::errors`), the `type` from the status and a `code`
//! naming what happened here, `Retry-After` on a 503.

use std::time::Duration;

use serde_json::json;

use crate::proxy::Local;

#[derive(Debug, thiserror::Error)]
pub(crate) enum GatewayError {
    /// The request itself could not be read (a bad head, too large, too
    /// slow): `status` says which.
    #[error("{why}")]
    Malformed { status: u16, why: String },
    #[error("missing or unknown API key: send `Authorization: Bearer KEY`")]
    Unauthorized,
    #[error("{method} is not allowed on {path}: only GET and HEAD")]
    MethodNotAllowed { method: String, path: String },
    #[error("no route {path}")]
    NoRoute { path: String },
    #[error("{why}")]
    BadBody { why: String },
    #[error("model `{model}` is not deployed (GET /v1/models lists the deployments)")]
    UnknownModel { model: String },
    #[error("`{deployment}` has no ready replica")]
    NoReplica { deployment: String },
    #[error("`{deployment}` is waking and {max} requests already wait for it")]
    WakeQueueFull { deployment: String, max: usize },
    #[error("`{deployment}` did not wake within {after:?}")]
    WakeTimeout { deployment: String, after: Duration },
    #[error("fault injected by `spec.fault` of {deployment} revision {revision}")]
    Fault {
        deployment: String,
        revision: u32,
        status: u16,
    },
    #[error("`{deployment}` did not answer within {after:?}")]
    UpstreamTimeout { deployment: String, after: Duration },
    #[error("no replica of `{deployment}` answered ({tried} tried)")]
    UpstreamUnavailable { deployment: String, tried: usize },
}

impl GatewayError {
    fn status(&self) -> u16 {
        match self {
            GatewayError::Malformed { status, .. } => *status,
            GatewayError::Unauthorized => 401,
            GatewayError::MethodNotAllowed { .. } => 405,
            GatewayError::NoRoute { .. } | GatewayError::UnknownModel { .. } => 404,
            GatewayError::BadBody { .. } => 400,
            GatewayError::NoReplica { .. }
            | GatewayError::WakeQueueFull { .. }
            | GatewayError::WakeTimeout { .. } => 503,
            GatewayError::Fault { status, .. } if (400..600).contains(status) => *status,
            GatewayError::Fault { .. } => 500,
            GatewayError::UpstreamTimeout { .. } => 504,
            GatewayError::UpstreamUnavailable { .. } => 502,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            GatewayError::Malformed { .. } => "malformed_request",
            GatewayError::Unauthorized => "invalid_api_key",
            GatewayError::MethodNotAllowed { .. } => "method_not_allowed",
            GatewayError::NoRoute { .. } => "no_route",
            GatewayError::BadBody { .. } => "invalid_body",
            GatewayError::UnknownModel { .. } => "model_not_found",
            GatewayError::NoReplica { .. } => "no_ready_replica",
            GatewayError::WakeQueueFull { .. } => "waking_queue_full",
            GatewayError::WakeTimeout { .. } => "waking_timeout",
            GatewayError::Fault { .. } => "fault_injected",
            GatewayError::UpstreamTimeout { .. } => "upstream_timeout",
            GatewayError::UpstreamUnavailable { .. } => "upstream_unavailable",
        }
    }

    fn param(&self) -> Option<&'static str> {
        match self {
            GatewayError::BadBody { .. } | GatewayError::UnknownModel { .. } => Some("model"),
            _ => None,
        }
    }

    /// The answer a client gets.
    pub(crate) fn answer(&self) -> Local {
        let status = self.status();
        let mut body = json!({"error": {
            "message": self.to_string(),
            "type": modelship_types::errors::error_type(status),
            "code": self.code(),
        }});
        if let Some(p) = self.param() {
            body["error"]["param"] = json!(p);
        }
        let mut local = Local::new(status, "application/json", body.to_string());
        local.retry_after = status == 503;
        local
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_carry_the_shared_type_and_a_code_of_their_own() {
        let cases = [
            (
                GatewayError::Unauthorized,
                401,
                "authentication_error",
                "invalid_api_key",
            ),
            (
                GatewayError::UnknownModel { model: "m".into() },
                404,
                "invalid_request_error",
                "model_not_found",
            ),
            (
                GatewayError::WakeTimeout {
                    deployment: "m".into(),
                    after: Duration::from_secs(1),
                },
                503,
                "server_error",
                "waking_timeout",
            ),
            (
                GatewayError::Fault {
                    deployment: "m".into(),
                    revision: 2,
                    status: 429,
                },
                429,
                "rate_limit_error",
                "fault_injected",
            ),
        ];
        for (e, status, kind, code) in cases {
            let local = e.answer();
            let body: serde_json::Value = serde_json::from_slice(&local.body).unwrap();
            assert_eq!(local.status, status, "{e:?}");
            assert_eq!(body["error"]["type"], kind, "{e:?}");
            assert_eq!(body["error"]["code"], code, "{e:?}");
            assert_eq!(local.retry_after, status == 503);
        }
    }
}
