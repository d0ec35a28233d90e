//! Bearer-token check for the API routes (the rule in `modelship_types::auth`).

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

pub(crate) async fn require_key(
    State(state): State<AppState>,
    req: Request,
    next: Next,
) -> Response {
    if state.api_keys.is_empty() {
        return next.run(req).await;
    }
    let given = req.headers().get(AUTHORIZATION).map(|v| v.as_bytes());
    if modelship_types::auth::authorized(given, state.api_keys.iter().map(String::as_str)) {
        next.run(req).await
    } else {
        ApiError::unauthorized().into_response()
    }
}
