//! The dashboard: its page, script and styles built into the binary (no
//! CDN: it works offline), the stream its pages update from, and the last
//! hour's figures its charts start with. The shell is public and holds no
//! data; every figure and action goes through the API with its key.

use std::convert::Infallible;
use std::sync::{Arc, OnceLock};

use axum::Json;
use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::Stream;
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};

use crate::Ctx;
use crate::api::{Api, ApiError, detail, overview};

/// One file of the dashboard, as built in.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        bytes: include_bytes!("../ui/index.html"),
    },
    Asset {
        path: "/ui/app.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../ui/app.js"),
    },
    Asset {
        path: "/ui/app.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../ui/app.css"),
    },
    Asset {
        path: "/ui/icon.svg",
        content_type: "image/svg+xml",
        bytes: include_bytes!("../ui/icon.svg"),
    },
    Asset {
        path: "/ui/uPlot.iife.min.js",
        content_type: "text/javascript; charset=utf-8",
        bytes: include_bytes!("../ui/vendor/uPlot.iife.min.js"),
    },
    Asset {
        path: "/ui/uPlot.min.css",
        content_type: "text/css; charset=utf-8",
        bytes: include_bytes!("../ui/vendor/uPlot.min.css"),
    },
];

/// Only this origin's own files run; nothing is framed.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
                   img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'";

/// The dashboard's files, outside the API key's guard.
pub(crate) fn assets() -> Router {
    ASSETS
        .iter()
        .enumerate()
        .fold(Router::new(), |router, (i, a)| {
            router.route(a.path, get(move |headers: HeaderMap| serve(i, headers)))
        })
}

async fn serve(i: usize, headers: HeaderMap) -> Response {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    let etags = ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| format!("\"{:x}\"", Sha256::digest(a.bytes)))
            .collect()
    });
    let asset = &ASSETS[i];
    let etag = &etags[i];
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .is_some_and(|v| v.as_bytes() == etag.as_bytes());
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, asset.content_type)], asset.bytes).into_response()
    };
    let h = response.headers_mut();
    // Revalidated on each load (a new binary brings new files), cheap by
    // the ETag.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if let Ok(v) = HeaderValue::from_str(etag) {
        h.insert(header::ETAG, v);
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct WatchQuery {
    deployment: Option<String>,
}

/// `GET /v1/watch[?deployment=NAME]`: server-sent events, one `overview`
/// (or one deployment's `detail`) now and on every tick of the sampler.
/// A deployment that goes away ends its stream with a `gone` event; every
/// stream ends when the control plane stops.
pub(crate) async fn watch(
    State(ctx): State<Arc<Ctx>>,
    Api(Query(q)): Api<Query<WatchQuery>>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Refused now, as a 404, rather than as a stream that ends at once.
    let first = view(&ctx, q.deployment.as_deref())?;
    let ticks = ctx.ticks.subscribe();
    let stopping = ctx.stopping.clone();
    let stream = futures::stream::unfold(
        (ctx, ticks, stopping, q.deployment, Some(first), false),
        |(ctx, mut ticks, mut stopping, name, first, ended)| async move {
            if ended {
                return None;
            }
            let (event, ended) = match first {
                Some(v) => (v, false),
                None => {
                    tokio::select! {
                        tick = ticks.changed() => tick.ok()?,
                        // (A control plane whose stop signal is gone runs on.)
                        Ok(_) = stopping.wait_for(|s| *s) => return None,
                    }
                    match view(&ctx, name.as_deref()) {
                        Ok(v) => (v, false),
                        Err(ApiError::NotFound(why)) => {
                            (Event::default().event("gone").data(why), true)
                        }
                        Err(e) => {
                            tracing::warn!("watch: {e}");
                            return None;
                        }
                    }
                }
            };
            Some((Ok(event), (ctx, ticks, stopping, name, None, ended)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// What a stream sends now.
fn view(ctx: &Ctx, deployment: Option<&str>) -> Result<Event, ApiError> {
    let (kind, value) = match deployment {
        Some(name) => ("detail", detail(ctx, name)?),
        None => ("overview", overview(ctx)?),
    };
    Ok(Event::default().event(kind).data(value.to_string()))
}

/// `GET /v1/deployments/{name}/metrics`: its points of the last hour, as
/// columns (what a chart plots), with the tick they were taken at.
pub(crate) async fn series(
    State(ctx): State<Arc<Ctx>>,
    Api(Path(name)): Api<Path<String>>,
) -> Result<Json<serde_json::Value>, ApiError> {
    crate::api::existing(&ctx, &name)?;
    let points = ctx
        .telemetry
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .series(&name);
    Ok(Json(json!({
        "deployment": name,
        "tick_ms": crate::telemetry::TICK.as_millis() as u64,
        "points": points,
    })))
}
