//! A small Docker Engine API client over its Unix socket: JSON requests,
//! one connection each (the controller makes a few a second), at the API
//! version both sides speak. The few endpoints modelship uses do not need
//! a full SDK, and owning the JSON keeps every field we send in view.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::Frame;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// The newest API version this client is written against; older daemons
/// are spoken to at theirs (Debian's Docker 20.10 is 1.41).
const API_VERSION: (u32, u32) = (1, 45);

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot reach the Docker engine at {socket} (is dockerd running?)")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Docker engine: {method} {path}")]
    Http {
        method: Method,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("Docker engine: {method} {path}: {status}: {message}")]
    Api {
        method: Method,
        path: String,
        status: StatusCode,
        message: String,
    },
    #[error("cannot read the image archive {path}")]
    Archive {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("Docker engine: {what}")]
    Unexpected { what: String },
}

impl EngineError {
    /// The HTTP status the engine answered, when it answered.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            EngineError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

type Body = BoxBody<Bytes, std::io::Error>;

#[derive(Debug, Clone)]
pub struct Engine {
    socket: PathBuf,
    /// `v1.41`: the path prefix of every request.
    version: String,
}

impl Engine {
    /// Connects to `DOCKER_HOST` (a `unix://` path) or the default socket,
    /// and settles the API version.
    pub async fn connect() -> Result<Engine, EngineError> {
        let socket = std::env::var("DOCKER_HOST")
            .ok()
            .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"));
        let mut engine = Engine {
            socket,
            version: String::new(),
        };
        let v = engine.get("/version").await?;
        let theirs = v["ApiVersion"]
            .as_str()
            .and_then(parse_version)
            .ok_or_else(|| EngineError::Unexpected {
                what: format!("/version has no ApiVersion: {v}"),
            })?;
        let (major, minor) = theirs.min(API_VERSION);
        engine.version = format!("v{major}.{minor}");
        Ok(engine)
    }

    /// The API version in use (`v1.41`).
    pub fn version(&self) -> &str {
        &self.version
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Body,
        content_type: &str,
    ) -> Result<(StatusCode, Bytes), EngineError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| EngineError::Connect {
                socket: self.socket.clone(),
                source,
            })?;
        let http = |source| EngineError::Http {
            method: method.clone(),
            path: path.to_owned(),
            source,
        };
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(http)?;
        tokio::spawn(conn);
        let uri = if self.version.is_empty() {
            path.to_owned()
        } else {
            format!("/{}{path}", self.version)
        };
        let req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header("host", "docker")
            .header("content-type", content_type)
            .body(body)
            .map_err(|e| EngineError::Unexpected {
                what: format!("bad request {path}: {e}"),
            })?;
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await.map_err(http)?.to_bytes();
        if status.is_client_error() || status.is_server_error() {
            let message = serde_json::from_slice::<Value>(&bytes)
                .ok()
                .and_then(|v| v["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(EngineError::Api {
                method,
                path: path.to_owned(),
                status,
                message,
            });
        }
        Ok((status, bytes))
    }

    /// A JSON request; the answer parsed (`null` when empty).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, EngineError> {
        let bytes = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
        let body = Full::new(bytes).map_err(|never| match never {}).boxed();
        let (_, out) = self.send(method, path, body, "application/json").await?;
        if out.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out).map_err(|e| EngineError::Unexpected {
            what: format!("{path} answered with invalid JSON: {e}"),
        })
    }

    /// A request without a body; the answer's bytes as they are.
    pub async fn raw(&self, method: Method, path: &str) -> Result<Bytes, EngineError> {
        let body = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        Ok(self.send(method, path, body, "application/json").await?.1)
    }

    pub async fn get(&self, path: &str) -> Result<Value, EngineError> {
        self.call(Method::GET, path, None).await
    }

    /// `GET`, with a 404 as `None`.
    pub async fn find(&self, path: &str) -> Result<Option<Value>, EngineError> {
        match self.get(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `DELETE` (with `?force=true` where the path asks); an object that is
    /// already gone is no error.
    pub async fn delete(&self, path: &str) -> Result<(), EngineError> {
        match self.call(Method::DELETE, path, None).await {
            Err(e) if e.status() != Some(StatusCode::NOT_FOUND) => Err(e),
            _ => Ok(()),
        }
    }

    /// Loads a `docker save`-format archive (`docker load`), streamed from disk.
    pub async fn load_image(&self, archive: &Path) -> Result<(), EngineError> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|source| EngineError::Archive {
                path: archive.to_owned(),
                source,
            })?;
        let chunks =
            tokio_util::io::ReaderStream::with_capacity(file, 1 << 20).map(|c| c.map(Frame::data));
        let body = BodyExt::boxed(StreamBody::new(chunks));
        let (_, out) = self
            .send(
                Method::POST,
                "/images/load?quiet=1",
                body,
                "application/x-tar",
            )
            .await?;
        // Errors during the load come back as a 200 with an `error` line.
        for line in out.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            if let Ok(v) = serde_json::from_slice::<Value>(line)
                && let Some(e) = v["error"].as_str()
            {
                return Err(EngineError::Unexpected {
                    what: format!("loading {}: {e}", archive.display()),
                });
            }
        }
        Ok(())
    }
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Percent-encodes a query value (filters are JSON).
pub fn query_value(v: &str) -> String {
    let mut out = String::with_capacity(v.len() * 3);
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
