//! Pushing an image through the OCI distribution API: each blob the
//! registry lacks is uploaded (`POST` then one monolithic `PUT`), blobs it
//! has are skipped after a `HEAD`, then the manifest is put under the tag.
//! Authenticates with HTTP Basic or a bearer token from the registry's
//! token service, as its `WWW-Authenticate` challenge asks.

use reqwest::{Method, StatusCode, header};

use crate::image::BuiltImage;
use crate::layout::{Blob, Layout};
use crate::reference::Reference;
use crate::{PackageError, media};

/// A registry login. `Debug` never shows the password.
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    /// `MODELSHIP_REGISTRY_USERNAME` and `MODELSHIP_REGISTRY_PASSWORD`, when
    /// both are set.
    pub fn from_env() -> Option<Credentials> {
        Some(Credentials {
            username: std::env::var("MODELSHIP_REGISTRY_USERNAME").ok()?,
            password: std::env::var("MODELSHIP_REGISTRY_PASSWORD").ok()?,
        })
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// What a push did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Pushed {
    /// The manifest's digest: `repository@digest` pulls exactly this image.
    pub digest: String,
    pub uploaded: Vec<String>,
    /// Blobs the registry already had (a layer shared with an earlier push).
    pub skipped: Vec<String>,
    pub uploaded_bytes: u64,
}

struct Client {
    http: reqwest::Client,
    base: String,
    registry: String,
    credentials: Option<Credentials>,
    /// `Authorization` once a challenge was answered.
    auth: Option<String>,
}

/// Pushes `image` from `layout` to `reference` (which must name a registry).
pub async fn push(
    layout: &Layout,
    image: &BuiltImage,
    reference: &Reference,
    credentials: Option<Credentials>,
) -> Result<Pushed, PackageError> {
    let Some(registry) = reference.registry.clone() else {
        return Err(PackageError::Reference {
            reference: reference.to_string(),
            reason: "a push needs a registry: host[:port]/repository[:tag]".into(),
        });
    };
    let mut client = Client {
        http: reqwest::Client::new(),
        base: format!(
            "{}://{registry}/v2/{}",
            reference.scheme(),
            reference.repository
        ),
        registry,
        credentials,
        auth: None,
    };
    let mut pushed = Pushed::default();
    let mut blobs: Vec<&Blob> = image.layers.iter().map(|(_, l)| &l.blob).collect();
    blobs.push(&image.config);
    for blob in blobs {
        if client.has_blob(&blob.digest).await? {
            pushed.skipped.push(blob.digest.clone());
        } else {
            client.upload(layout, blob).await?;
            pushed.uploaded.push(blob.digest.clone());
            pushed.uploaded_bytes += blob.size;
        }
    }
    let manifest = layout.read(&image.manifest.digest)?;
    let url = format!("{}/manifests/{}", client.base, reference.tag);
    let resp = client
        .send(Method::PUT, &url, |r| {
            r.header(header::CONTENT_TYPE, media::MANIFEST)
                .body(manifest.clone())
        })
        .await?;
    client
        .expect(resp, StatusCode::CREATED, "putting the manifest")
        .await?;
    pushed.digest = image.manifest.digest.clone();
    Ok(pushed)
}

impl Client {
    fn error(&self, what: String, source: Option<reqwest::Error>) -> PackageError {
        PackageError::Registry {
            registry: self.registry.clone(),
            what,
            source,
        }
    }

    /// Sends a request, answering one authentication challenge if needed.
    async fn send(
        &mut self,
        method: Method,
        url: &str,
        build: impl Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, PackageError> {
        for attempt in 0..2 {
            let mut req = build(self.http.request(method.clone(), url));
            if let Some(auth) = &self.auth {
                req = req.header(header::AUTHORIZATION, auth);
            }
            let resp = req
                .send()
                .await
                .map_err(|e| self.error(format!("{method} {url}"), Some(e)))?;
            if resp.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(resp);
            }
            let challenge = resp
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            self.auth = Some(self.answer(&challenge).await?);
        }
        unreachable!("the second attempt returns")
    }

    /// The `Authorization` value that answers `challenge`.
    async fn answer(&self, challenge: &str) -> Result<String, PackageError> {
        use base64::Engine;
        let basic = self.credentials.as_ref().map(|c| {
            let raw = format!("{}:{}", c.username, c.password);
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(raw)
            )
        });
        let (scheme, params) = challenge.split_once(' ').unwrap_or((challenge, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return basic.ok_or_else(|| {
                self.error(
                    "asks for a login: set MODELSHIP_REGISTRY_USERNAME and MODELSHIP_REGISTRY_PASSWORD".into(),
                    None,
                )
            });
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(self.error(
                format!("unsupported authentication challenge {challenge:?}"),
                None,
            ));
        }
        let param = |key: &str| {
            params.split(',').find_map(|kv| {
                let (k, v) = kv.trim().split_once('=')?;
                (k == key).then(|| v.trim_matches('"').to_owned())
            })
        };
        let realm = param("realm")
            .ok_or_else(|| self.error("bearer challenge without a realm".into(), None))?;
        let mut query = Vec::new();
        for key in ["service", "scope"] {
            if let Some(v) = param(key) {
                query.push((key, v));
            }
        }
        let mut req = self.http.get(&realm).query(&query);
        if let Some(b) = &basic {
            req = req.header(header::AUTHORIZATION, b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.error(format!("token request to {realm}"), Some(e)))?;
        if !resp.status().is_success() {
            return Err(self.error(
                format!("token service {realm} answered {}", resp.status()),
                None,
            ));
        }
        let body: serde_json::Value = resp
            .json()
            .await
            .map_err(|e| self.error(format!("token from {realm}"), Some(e)))?;
        let token = body["token"]
            .as_str()
            .or_else(|| body["access_token"].as_str())
            .ok_or_else(|| self.error(format!("token service {realm} sent no token"), None))?;
        Ok(format!("Bearer {token}"))
    }

    async fn expect(
        &self,
        resp: reqwest::Response,
        status: StatusCode,
        what: &str,
    ) -> Result<reqwest::Response, PackageError> {
        if resp.status() == status {
            return Ok(resp);
        }
        let got = resp.status();
        let body = resp.text().await.unwrap_or_default();
        let body: String = body.chars().take(300).collect();
        Err(self.error(
            format!("{what}: expected {status}, got {got}: {body}"),
            None,
        ))
    }

    async fn has_blob(&mut self, digest: &str) -> Result<bool, PackageError> {
        let url = format!("{}/blobs/{digest}", self.base);
        let resp = self.send(Method::HEAD, &url, |r| r).await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            s => Err(self.error(format!("HEAD {url}: {s}"), None)),
        }
    }

    async fn upload(&mut self, layout: &Layout, blob: &Blob) -> Result<(), PackageError> {
        let url = format!("{}/blobs/uploads/", self.base);
        let resp = self.send(Method::POST, &url, |r| r).await?;
        let resp = self
            .expect(resp, StatusCode::ACCEPTED, "starting an upload")
            .await?;
        let location = resp
            .headers()
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| self.error("upload started without a Location".into(), None))?;
        let location = resp
            .url()
            .join(location)
            .map_err(|_| self.error(format!("bad upload Location {location:?}"), None))?;
        let mut put = location.clone();
        put.query_pairs_mut().append_pair("digest", &blob.digest);
        let path = layout.blob_path(&blob.digest)?;
        let size = blob.size;
        // The body is read again if a challenge makes us resend.
        let resp = self
            .send(Method::PUT, put.as_str(), |r| {
                let path = path.clone();
                let body = reqwest::Body::wrap_stream(futures_stream(path));
                r.header(header::CONTENT_TYPE, "application/octet-stream")
                    .header(header::CONTENT_LENGTH, size)
                    .body(body)
            })
            .await?;
        self.expect(
            resp,
            StatusCode::CREATED,
            &format!("uploading {}", blob.digest),
        )
        .await?;
        Ok(())
    }
}

/// A file as a stream of chunks, opened when first polled.
fn futures_stream(
    path: std::path::PathBuf,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + 'static {
    use tokio::io::AsyncReadExt;
    futures::stream::unfold(None, move |file: Option<tokio::fs::File>| {
        let path = path.clone();
        async move {
            let mut file = match file {
                Some(f) => f,
                None => match tokio::fs::File::open(&path).await {
                    Ok(f) => f,
                    Err(e) => return Some((Err(e), None)),
                },
            };
            let mut buf = vec![0u8; 1 << 20];
            match file.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((Ok(bytes::Bytes::from(buf)), Some(file)))
                }
                Err(e) => Some((Err(e), None)),
            }
        }
    })
}
