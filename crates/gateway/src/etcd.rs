//! Service discovery through etcd (`--discovery etcd://HOST:PORT`): the
//! control plane publishes each ready replica and each revision's traffic
//! share under `/modelship/` with a lease it keeps alive; any number of
//! gateways follow that prefix. When the control plane goes away its lease
//! expires and the entries with it, so no gateway routes on stale news.
//! Talks to etcd's v3 JSON API over HTTP (keys and values base64).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::{Abort, Gateway, Route, Share};

/// Seconds a published entry outlives the last keep-alive.
pub const LEASE_TTL_S: u64 = 10;
const PREFIX: &str = "/modelship/";

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("`{0}` is not an etcd address like etcd://127.0.0.1:2379")]
    Address(String),
    #[error("etcd at {url} did not answer")]
    Unreachable {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("etcd at {url} answered {status}: {body}")]
    Refused {
        url: String,
        status: u16,
        body: String,
    },
}

/// An etcd endpoint.
#[derive(Clone)]
pub struct Etcd {
    base: String,
    client: reqwest::Client,
}

impl Etcd {
    /// `etcd://host:port`.
    pub fn parse(url: &str) -> Result<Etcd, EtcdError> {
        let hostport = url
            .strip_prefix("etcd://")
            .filter(|h| !h.is_empty() && h.contains(':') && !h.contains('/'))
            .ok_or_else(|| EtcdError::Address(url.to_owned()))?;
        Ok(Etcd {
            base: format!("http://{hostport}"),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .map_err(|source| EtcdError::Unreachable {
                    url: url.to_owned(),
                    source,
                })?,
        })
    }

    async fn call(&self, path: &str, body: Value) -> Result<Value, EtcdError> {
        let url = format!("{}{path}", self.base);
        let unreachable = |source| EtcdError::Unreachable {
            url: url.clone(),
            source,
        };
        let r = self
            .client
            .post(&url)
            .json(&body)
            .send()
            .await
            .map_err(unreachable)?;
        let status = r.status().as_u16();
        let text = r.text().await.map_err(unreachable)?;
        if status != 200 {
            return Err(EtcdError::Refused {
                url,
                status,
                body: text,
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn grant(&self, ttl_s: u64) -> Result<String, EtcdError> {
        let v = self.call("/v3/lease/grant", json!({"TTL": ttl_s})).await?;
        Ok(v["ID"].as_str().unwrap_or_default().to_owned())
    }

    /// Renews a lease; false when it has already expired.
    pub async fn keep_alive(&self, lease: &str) -> Result<bool, EtcdError> {
        let v = self
            .call("/v3/lease/keepalive", json!({"ID": lease}))
            .await?;
        Ok(v["result"]["TTL"]
            .as_str()
            .and_then(|t| t.parse::<i64>().ok())
            .unwrap_or(0)
            > 0)
    }

    pub async fn put(&self, key: &str, value: &str, lease: &str) -> Result<(), EtcdError> {
        self.call(
            "/v3/kv/put",
            json!({"key": B64.encode(key), "value": B64.encode(value), "lease": lease}),
        )
        .await
        .map(drop)
    }

    pub async fn delete(&self, key: &str) -> Result<(), EtcdError> {
        self.call("/v3/kv/deleterange", json!({"key": B64.encode(key)}))
            .await
            .map(drop)
    }

    /// Every key under `prefix` with its value and lease, and the store's
    /// revision.
    pub async fn list(
        &self,
        prefix: &str,
    ) -> Result<(u64, Vec<(String, String, String)>), EtcdError> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let v = self
            .call(
                "/v3/kv/range",
                json!({"key": B64.encode(prefix), "range_end": B64.encode(&end)}),
            )
            .await?;
        let revision = v["header"]["revision"]
            .as_str()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        let decode = |x: &Value| {
            x.as_str()
                .and_then(|s| B64.decode(s).ok())
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default()
        };
        let kvs = v["kvs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|kv| {
                (
                    decode(&kv["key"]),
                    decode(&kv["value"]),
                    kv["lease"].as_str().unwrap_or("0").to_owned(),
                )
            })
            .collect();
        Ok((revision, kvs))
    }
}

/// A revision's share as published.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SharedShare {
    weight: u32,
    abort_percent: Option<f64>,
    abort_status: Option<u16>,
}

/// The control plane's side: keeps etcd's entries equal to what is
/// routable, under one lease.
pub struct Publisher {
    etcd: Etcd,
    lease: Option<String>,
    renewed: Instant,
    published: HashMap<String, String>,
}

impl Publisher {
    pub fn new(etcd: Etcd) -> Publisher {
        Publisher {
            etcd,
            lease: None,
            renewed: Instant::now(),
            published: HashMap::new(),
        }
    }

    /// Publishes `routes` and `shares`, writing only what changed, and
    /// renews the lease every few seconds.
    pub async fn publish(
        &mut self,
        routes: &[Route],
        shares: &HashMap<(String, u32), Share>,
    ) -> Result<(), EtcdError> {
        let lease = match &self.lease {
            Some(l) if self.renewed.elapsed() < Duration::from_secs(LEASE_TTL_S / 3) => l.clone(),
            Some(l) if self.etcd.keep_alive(l).await? => {
                self.renewed = Instant::now();
                l.clone()
            }
            _ => {
                // No lease yet, or it expired (etcd was away): everything
                // published under it is gone; publish again. What is there
                // now under another lease (a control plane before this one,
                // killed: its entries live until its lease expires) is taken
                // as this one's, to be replaced or deleted below.
                let l = self.etcd.grant(LEASE_TTL_S).await?;
                self.lease = Some(l.clone());
                self.renewed = Instant::now();
                let (_, there) = self.etcd.list(PREFIX).await?;
                self.published = there
                    .into_iter()
                    .filter(|(_, _, lease)| *lease != l)
                    // Never equal to a wanted value: re-put under this lease.
                    .map(|(key, _, _)| (key, String::new()))
                    .collect();
                l
            }
        };
        let mut wanted = HashMap::new();
        for r in routes {
            let value = json!({"deployment": r.deployment, "revision": r.revision, "replica": r.replica, "endpoint": r.endpoint});
            wanted.insert(format!("{PREFIX}replicas/{}", r.replica), value.to_string());
        }
        for ((deployment, revision), share) in shares {
            let value = SharedShare {
                weight: share.weight,
                abort_percent: share.abort.map(|a| a.percent),
                abort_status: share.abort.map(|a| a.status),
            };
            wanted.insert(
                format!("{PREFIX}shares/{deployment}/{revision}"),
                serde_json::to_string(&value).unwrap_or_default(),
            );
        }
        for (key, value) in &wanted {
            if self.published.get(key) != Some(value) {
                self.etcd.put(key, value, &lease).await?;
                self.published.insert(key.clone(), value.clone());
            }
        }
        let gone: Vec<String> = self
            .published
            .keys()
            .filter(|k| !wanted.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.etcd.delete(&key).await?;
            self.published.remove(&key);
        }
        Ok(())
    }
}

/// The routes and shares published under the prefix.
pub async fn read(
    etcd: &Etcd,
) -> Result<(u64, Vec<Route>, HashMap<(String, u32), Share>), EtcdError> {
    let (revision, kvs) = etcd.list(PREFIX).await?;
    let (mut routes, mut shares) = (Vec::new(), HashMap::new());
    for (key, value, _) in kvs {
        if key.starts_with(&format!("{PREFIX}replicas/")) {
            let Ok(v) = serde_json::from_str::<Value>(&value) else {
                continue;
            };
            let (Some(d), Some(rev), Some(id), Some(ep)) = (
                v["deployment"].as_str(),
                v["revision"].as_u64(),
                v["replica"].as_str(),
                v["endpoint"].as_str(),
            ) else {
                continue;
            };
            routes.push(Route {
                deployment: d.into(),
                revision: rev as u32,
                replica: id.into(),
                endpoint: ep.into(),
            });
        } else if let Some(rest) = key.strip_prefix(&format!("{PREFIX}shares/")) {
            let Some((d, rev)) = rest.rsplit_once('/') else {
                continue;
            };
            let (Ok(rev), Ok(s)) = (
                rev.parse::<u32>(),
                serde_json::from_str::<SharedShare>(&value),
            ) else {
                continue;
            };
            let abort = s
                .abort_percent
                .zip(s.abort_status)
                .map(|(percent, status)| Abort { percent, status });
            shares.insert(
                (d.to_owned(), rev),
                Share {
                    weight: s.weight,
                    abort,
                },
            );
        }
    }
    routes.sort_by(|a, b| a.replica.cmp(&b.replica));
    Ok((revision, routes, shares))
}

/// A gateway's side: follows the published routes (polling twice a
/// second) until `stop`.
pub async fn follow(etcd: Etcd, gateway: Gateway, mut stop: watch::Receiver<bool>) {
    let mut seen = 0;
    loop {
        match read(&etcd).await {
            Ok((revision, routes, shares)) if revision != seen => {
                gateway.set_routes(&routes, &shares);
                seen = revision;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!("discovery: {e}"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}
