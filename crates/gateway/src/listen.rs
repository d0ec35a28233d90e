//! The gateway's listeners and client connections: one thread per core, each
//! with its own single-threaded runtime, its own `SO_REUSEPORT` listener on
//! the shared port and its own upstream connection pool (the nginx/Envoy
//! worker model). A request and its upstream call then run on one thread:
//! no cross-thread wake-ups on the hot path, which on a shared tokio runtime
//! cost more than the proxying itself (perf: ~30% of the time in the
//! scheduler).
//!
//! Each connection is a plain loop over HTTP/1.1 messages (keep-alive,
//! pipelining, `Expect: 100-continue`, chunked request bodies): no header
//! maps, tasks or channels between reading a request and writing it to a
//! replica. A general HTTP stack cost about a third of the gateway's CPU
//! per proxied request (perf), more than HAProxy's whole user-space share.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{mpsc, oneshot, watch};

use crate::http1::{self, Chunked, Length, Malformed};
use crate::proxy::{self, Reply, Shared};
use crate::upstream::{After, Pool};
use crate::{Gateway, Tls};

/// How long a TLS client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` on `threads` listeners and serves until `shutdown` turns
/// true. Returns the bound address and a future that resolves when every
/// thread has drained.
pub fn serve(
    gateway: Gateway,
    addr: SocketAddr,
    threads: usize,
    tls: Option<Tls>,
    shutdown: watch::Receiver<bool>,
) -> io::Result<(SocketAddr, impl Future<Output = io::Result<()>>)> {
    let socket = |at: SocketAddr| -> io::Result<TcpSocket> {
        let s = if at.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        s.set_reuseaddr(true)?;
        s.set_reuseport(true)?;
        s.set_nodelay(true)?;
        s.bind(at)?;
        Ok(s)
    };
    gateway.start_shadow()?;
    let first = socket(addr)?;
    let bound = first.local_addr()?;
    let mut sockets = vec![first];
    for _ in 1..threads.max(1) {
        sockets.push(socket(bound)?);
    }
    let mut done = Vec::new();
    for (i, s) in sockets.into_iter().enumerate() {
        let (tx, rx) = oneshot::channel();
        let (gateway, stop, tls) = (gateway.clone(), shutdown.clone(), tls.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        // Listening before this returns: the caller may connect at once.
        let listener = {
            let _runtime = rt.enter();
            s.listen(1024)?
        };
        std::thread::Builder::new()
            .name(format!("gateway-{i}"))
            .spawn(move || {
                let result = rt.block_on(accept_loop(gateway, listener, tls, stop));
                let _ = tx.send(result);
            })?;
        done.push(rx);
    }
    Ok((bound, async move {
        for rx in done {
            rx.await
                .map_err(|_| io::Error::other("a gateway thread panicked"))??;
        }
        Ok(())
    }))
}

/// One thread's listener: accepts until `stop`, then waits for its
/// connections to finish what they are answering.
async fn accept_loop(
    gateway: Gateway,
    listener: TcpListener,
    tls: Option<Tls>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    // Each request arms its upstream timeout; when that timer is the
    // earliest one, arming it wakes the thread's driver through an eventfd
    // write to re-arm epoll: a system call and a spurious wake-up per
    // request (perf). A timer that always fires within a second keeps the
    // driver's next wake earlier than any request timeout, so arming one
    // costs nothing.
    tokio::spawn(async {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let shared = Arc::new(Shared {
        gateway,
        pool: Pool::default(),
    });
    // Every connection holds a sender; the receiver sees the channel close
    // when the last one ends.
    let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!("gateway accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let _ = tcp.set_nodelay(true);
        let (shared, stop, open) = (Arc::clone(&shared), stop.clone(), open_tx.clone());
        match &tls {
            None => {
                tokio::spawn(async move {
                    connection(&shared, tcp, stop).await;
                    drop(open);
                });
            }
            Some(tls) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.accept(tcp)).await {
                        Ok(Ok(stream)) => connection(&shared, stream, stop).await,
                        Ok(Err(e)) => tracing::debug!("TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!("TLS handshake timed out"),
                    }
                    drop(open);
                });
            }
        }
    }
    drop(listener);
    drop(open_tx);
    let _ = open_rx.recv().await;
    Ok(())
}

/// Why a connection stops.
enum Stop {
    /// The client closed it, it failed, or the gateway is shutting down.
    Quietly,
    /// A request it cannot read further: answered, then closed.
    Answer(Malformed),
}

/// Serves one client connection: request after request until either side
/// closes it, or `stop` while it is idle.
async fn connection<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    mut io: S,
    mut stop: watch::Receiver<bool>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(8 << 10);
    let refused = loop {
        match exchange(shared, &mut io, &mut buf, &mut stop).await {
            Ok(After::KeepAlive) => {}
            Ok(After::Close) | Err(Stop::Quietly) => break None,
            Err(Stop::Answer(malformed)) => break Some(malformed),
        }
    };
    if let Some(Malformed(status, why)) = refused {
        let reply = crate::error::GatewayError::Malformed { status, why }.answer();
        let _ = io.write_all(&reply.render(false, false)).await;
    }
    let _ = io.shutdown().await;
}

/// How long a read of the client may wait.
#[derive(Clone, Copy)]
enum Wait {
    /// Between requests: up to the idle timeout, or until shutdown.
    Idle(Duration),
    /// Within a request: until its deadline.
    Until(tokio::time::Instant),
}

/// Reads more of the request into `buf`, waiting as `wait` allows. A client
/// idle too long is closed quietly; one that stalls within a request gets
/// 408.
async fn read_more<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Vec<u8>,
    stop: &mut watch::Receiver<bool>,
    wait: Wait,
    request_timeout: Duration,
) -> Result<(), Stop> {
    make_room(buf);
    let stalled = || {
        Stop::Answer(Malformed(
            408,
            format!("the request did not arrive within {request_timeout:?}"),
        ))
    };
    let read = match wait {
        Wait::Idle(idle) => tokio::select! {
            r = io.read_buf(buf) => r,
            _ = stop.wait_for(|s| *s) => return Err(Stop::Quietly),
            _ = tokio::time::sleep(idle) => return Err(Stop::Quietly),
        },
        Wait::Until(deadline) => tokio::time::timeout_at(deadline, io.read_buf(buf))
            .await
            .map_err(|_| stalled())?,
    };
    match read {
        Ok(0) | Err(_) => Err(Stop::Quietly),
        Ok(_) => Ok(()),
    }
}

/// Room for the next read: a full buffer doubles (4 KiB at least).
fn make_room(buf: &mut Vec<u8>) {
    if buf.len() == buf.capacity() {
        buf.reserve(buf.len().max(4096));
    }
}

/// Awaits `work` (the replica's answer) while watching the client: one
/// that closes its connection first has abandoned its request, and
/// dropping `work` closes the replica's connection, which stops what the
/// replica computes for it (a generation runs to `max_tokens` otherwise).
/// What a pipelining client sends meanwhile stays in `buf` for its next
/// request; past `limit` bytes the client is no longer read.
async fn unless_abandoned<S: AsyncRead + Unpin, T>(
    io: &mut S,
    buf: &mut Vec<u8>,
    limit: usize,
    work: impl Future<Output = T>,
) -> Result<T, Stop> {
    tokio::pin!(work);
    loop {
        if buf.len() >= limit {
            return Ok(work.await);
        }
        make_room(buf);
        tokio::select! {
            biased;
            out = &mut work => return Ok(out),
            read = io.read_buf(buf) => match read {
                Ok(0) | Err(_) => {
                    metrics::counter!("modelship_gateway_abandoned_total").increment(1);
                    return Err(Stop::Quietly);
                }
                Ok(_) => {}
            },
        }
    }
}

/// One request and its response.
async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    shared: &Shared,
    io: &mut S,
    buf: &mut Vec<u8>,
    stop: &mut watch::Receiver<bool>,
) -> Result<After, Stop> {
    let config = &shared.gateway.inner.config;
    let timeout = config.request_timeout;
    // The head must be whole within `request_timeout` of its first byte,
    // and the body within as long again: a client trickling a byte a
    // minute cannot hold a connection and its buffer.
    let mut deadline = None;
    let head = loop {
        if let Some((head, len)) = http1::parse_request(buf).map_err(Stop::Answer)? {
            buf.drain(..len);
            break head;
        }
        if deadline.is_none() && !buf.is_empty() {
            deadline = Some(tokio::time::Instant::now() + timeout);
        }
        let wait = match deadline {
            None => Wait::Idle(config.idle_timeout),
            Some(d) => Wait::Until(d),
        };
        read_more(io, buf, stop, wait, timeout).await?;
    };
    let body_deadline = tokio::time::Instant::now() + timeout;
    let length = head.body_length(None).map_err(Stop::Answer)?;
    let max = config.max_body_bytes;
    let too_large = || {
        Stop::Answer(Malformed(
            413,
            format!("the body is larger than {max} bytes"),
        ))
    };
    if matches!(length, Length::Fixed(n) if n > max as u64) {
        return Err(too_large());
    }
    if head.expects_continue() && length != Length::Fixed(0) && buf.is_empty() {
        io.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .map_err(|_| Stop::Quietly)?;
    }
    let body = match length {
        Length::Fixed(0) => Vec::new(),
        Length::Fixed(n) => {
            let n = n as usize;
            while buf.len() < n {
                read_more(io, buf, stop, Wait::Until(body_deadline), timeout).await?;
            }
            buf.drain(..n).collect()
        }
        Length::Chunked => {
            let (mut chunked, mut body) = (Chunked::default(), Vec::new());
            loop {
                let used = chunked
                    .feed(buf, Some(&mut body))
                    .map_err(|e| Stop::Answer(Malformed(400, e)))?;
                buf.drain(..used);
                if body.len() > max {
                    return Err(too_large());
                }
                if chunked.done() {
                    break body;
                }
                read_more(io, buf, stop, Wait::Until(body_deadline), timeout).await?;
            }
        }
        // `body_length` gives requests no close-delimited bodies.
        Length::UntilClose => {
            return Err(Stop::Answer(Malformed(
                411,
                "a request body needs a length".into(),
            )));
        }
    };
    let http10 = head.minor == 0;
    let keep = head.keep_alive() && !*stop.borrow();
    match unless_abandoned(io, buf, max, proxy::handle(shared, &head, &body)).await? {
        Reply::Local(local) => {
            let bytes = local.render(keep, head.method() == "HEAD");
            io.write_all(&bytes).await.map_err(|_| Stop::Quietly)?;
            Ok(if keep { After::KeepAlive } else { After::Close })
        }
        Reply::Upstream(answer, endpoint, sample) => {
            let (after, kept) = answer
                .forward(
                    &shared.pool,
                    &endpoint.addr,
                    io,
                    http10,
                    keep,
                    sample.is_some(),
                )
                .await
                .map_err(|e| {
                    tracing::debug!(replica = %endpoint.replica, "response cut short: {e}");
                    Stop::Quietly
                })?;
            // Compared after the client has its answer, off its path.
            if let Some(mut sample) = sample {
                sample.answer = kept;
                shared.gateway.offer(*sample);
            }
            Ok(after)
        }
    }
}
