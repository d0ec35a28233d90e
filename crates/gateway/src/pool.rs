//! Kept-alive HTTP/1 connections to the replicas, one pool per gateway
//! thread. A connection is lent for one request and comes back when its
//! response body has been read to the end; a connection the replica closed,
//! or whose response was abandoned half-read, is dropped.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::Frame;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper_util::rt::TokioIo;

use crate::Endpoint;

/// Idle connections by replica address.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<String, Vec<SendRequest<Full<Bytes>>>>>,
}

/// Why a request never got a response: it is safe to send elsewhere.
#[derive(Debug)]
pub(crate) struct Unanswered(pub String);

impl Pool {
    fn take(&self, addr: &str) -> Option<SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(addr)?;
        while let Some(sender) = list.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    fn give_back(&self, addr: String, sender: SendRequest<Full<Bytes>>) {
        if !sender.is_closed() {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.entry(addr).or_default().push(sender);
        }
    }

    async fn connect(addr: &str) -> Result<SendRequest<Full<Bytes>>, Unanswered> {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| Unanswered(format!("connect {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let (sender, conn) = handshake(TokioIo::new(stream))
            .await
            .map_err(|e| Unanswered(format!("handshake {addr}: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }

    /// Sends `request` to `endpoint` on an idle connection (or a new one).
    /// The request counts as outstanding on the endpoint until its response
    /// body is done or dropped.
    pub(crate) async fn send(
        self: &Arc<Self>,
        endpoint: &Arc<Endpoint>,
        request: hyper::Request<Full<Bytes>>,
    ) -> Result<hyper::Response<Lent>, Unanswered> {
        let outstanding = Outstanding::new(endpoint);
        let addr = endpoint.addr.as_str();
        let mut sender = match self.take(addr) {
            Some(s) => s,
            None => Self::connect(addr).await?,
        };
        if sender.ready().await.is_err() {
            // Closed between the check and now: one fresh connection.
            sender = Self::connect(addr).await?;
        }
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| Unanswered(format!("{addr}: {e}")))?;
        let pool = Arc::clone(self);
        let addr = addr.to_owned();
        Ok(response.map(|incoming| Lent {
            incoming,
            back: Some((pool, addr, sender)),
            _outstanding: outstanding,
        }))
    }
}

/// Counts a request as outstanding on its replica while it lives (the
/// balancer's load signal, and the autoscaler's).
struct Outstanding(Arc<Endpoint>);

impl Outstanding {
    fn new(endpoint: &Arc<Endpoint>) -> Outstanding {
        endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
        Outstanding(Arc::clone(endpoint))
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A replica's response body, passed through frame by frame (SSE events
/// reach the client as the replica writes them); its connection returns to
/// the pool once it has been read to the end.
pub(crate) struct Lent {
    incoming: Incoming,
    back: Option<(Arc<Pool>, String, SendRequest<Full<Bytes>>)>,
    _outstanding: Outstanding,
}

impl Lent {
    fn finish(&mut self) {
        if let Some((pool, addr, sender)) = self.back.take() {
            pool.give_back(addr, sender);
        }
    }
}

impl http_body::Body for Lent {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.incoming).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => self.finish(),
            Poll::Ready(Some(Err(_))) => self.back = None,
            _ if self.incoming.is_end_stream() => self.finish(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.incoming.size_hint()
    }
}
