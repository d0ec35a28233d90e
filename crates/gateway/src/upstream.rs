//! The replica side of a proxied request: kept-alive HTTP/1 connections, one
//! pool per gateway thread; a request written in one `write`; the response
//! head read and parsed in place; the body passed through as it arrives
//! (SSE events reach the client as the replica writes them), after which the
//! connection goes back to the pool.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::Endpoint;
use crate::http1::{self, Chunked, Head, Length};

/// Bytes read from a replica at a time.
const READ_CHUNK: usize = 16 << 10;

/// Idle connections by replica address.
#[derive(Default)]
pub(crate) struct Pool {
    idle: Mutex<HashMap<String, Vec<TcpStream>>>,
}

/// Why a request never got a response: it is safe to send elsewhere.
#[derive(Debug)]
pub(crate) struct Unanswered(pub String);

/// How an attempt on one connection failed.
enum Failure {
    /// Not one byte of a response: on a reused connection, the replica
    /// closed it while it was idle.
    Silent(String),
    /// Part of a head, or a malformed one.
    Broken(String),
}

impl Pool {
    fn take(&self, addr: &str) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.get_mut(addr)?.pop()
    }

    fn give_back(&self, addr: &str, stream: TcpStream) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        match idle.get_mut(addr) {
            Some(list) => list.push(stream),
            None => {
                idle.insert(addr.to_owned(), vec![stream]);
            }
        }
    }

    /// Sends `request`, a whole HTTP/1.1 message, to `endpoint` and reads
    /// the response head. Idle connections go first; one the replica closed
    /// while idle fails without a byte, and the request goes out again on
    /// the next connection without counting against the replica.
    pub(crate) async fn exchange(
        &self,
        endpoint: &Arc<Endpoint>,
        request: &[u8],
        method: &str,
    ) -> Result<Answer, Unanswered> {
        let addr = endpoint.addr.as_str();
        let outstanding = Outstanding::new(endpoint);
        loop {
            let (stream, reused) = match self.take(addr) {
                Some(s) => (s, true),
                None => (connect(addr).await?, false),
            };
            match attempt(stream, request, method).await {
                Ok((head, length, stream, buffered)) => {
                    return Ok(Answer {
                        head,
                        length,
                        stream,
                        buffered,
                        _outstanding: outstanding,
                    });
                }
                Err(Failure::Silent(_)) if reused => continue,
                Err(Failure::Silent(e) | Failure::Broken(e)) => {
                    return Err(Unanswered(format!("{addr}: {e}")));
                }
            }
        }
    }
}

async fn connect(addr: &str) -> Result<TcpStream, Unanswered> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| Unanswered(format!("connect {addr}: {e}")))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// One request on one connection, up to the end of the response head.
async fn attempt(
    mut stream: TcpStream,
    request: &[u8],
    method: &str,
) -> Result<(Head, Length, TcpStream, Vec<u8>), Failure> {
    stream
        .write_all(request)
        .await
        .map_err(|e| Failure::Silent(format!("sending the request: {e}")))?;
    let mut buf = Vec::with_capacity(READ_CHUNK);
    loop {
        if buf.len() == buf.capacity() {
            buf.reserve(buf.len());
        }
        match stream.read_buf(&mut buf).await {
            Ok(0) if buf.is_empty() => {
                return Err(Failure::Silent("closed before answering".into()));
            }
            Ok(0) => return Err(Failure::Broken("closed within the response head".into())),
            Ok(_) => {}
            Err(e) if buf.is_empty() => return Err(Failure::Silent(e.to_string())),
            Err(e) => return Err(Failure::Broken(e.to_string())),
        }
        let (head, len) = match http1::parse_response(&buf) {
            Ok(Some(parsed)) => parsed,
            Ok(None) => continue,
            Err(e) => return Err(Failure::Broken(e.1)),
        };
        buf.drain(..len);
        // An interim answer (we never send `Expect`, but a replica may send
        // 100 Continue anyway): the real head follows.
        if (100..200).contains(&head.status) && head.status != 101 {
            continue;
        }
        let length = head
            .body_length(Some(method))
            .map_err(|e| Failure::Broken(e.1))?;
        return Ok((head, length, stream, buf));
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

/// A replica's response: its head, and the connection its body is still
/// coming on.
pub(crate) struct Answer {
    pub(crate) head: Head,
    length: Length,
    stream: TcpStream,
    /// Body bytes read along with the head.
    buffered: Vec<u8>,
    _outstanding: Outstanding,
}

/// What the client connection can do after a response.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum After {
    KeepAlive,
    Close,
}

/// How the body goes to the client.
enum Pass {
    /// Bytes as they come, for this many more.
    Fixed(u64),
    /// Chunked bytes as they come; the decoder finds the end.
    Chunked(Chunked),
    /// Chunked decoded for an HTTP/1.0 client, which has no chunked coding.
    Dechunk(Chunked),
    UntilClose,
}

impl Pass {
    /// Appends what of `input` belongs to the body to `out`: whether the
    /// body is complete, and whether `input` held bytes past its end (the
    /// connection is then out of step and not reused).
    fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(bool, bool), String> {
        let (done, used) = match self {
            Pass::Fixed(left) => {
                let take = (*left).min(input.len() as u64) as usize;
                out.extend_from_slice(&input[..take]);
                *left -= take as u64;
                (*left == 0, take)
            }
            Pass::Chunked(c) => {
                let used = c.feed(input, None)?;
                out.extend_from_slice(&input[..used]);
                (c.done(), used)
            }
            Pass::Dechunk(c) => {
                let used = c.feed(input, Some(out))?;
                (c.done(), used)
            }
            Pass::UntilClose => {
                out.extend_from_slice(input);
                (false, input.len())
            }
        };
        Ok((done, used < input.len()))
    }
}

impl Answer {
    /// Writes the response to `client`: the head with this hop's fields
    /// rewritten, then the body as it arrives. `http10` for an HTTP/1.0
    /// client; `keep` whether the client connection may stay open. The
    /// replica's connection returns to `pool` when the body ended cleanly.
    /// With `keep_body`, a body of a known length up to
    /// [`crate::shadow::MAX_CAPTURE`] is kept as it passes and returned.
    pub(crate) async fn forward<W: AsyncWrite + Unpin>(
        mut self,
        pool: &Pool,
        addr: &str,
        client: &mut W,
        http10: bool,
        keep: bool,
        keep_body: bool,
    ) -> std::io::Result<(After, Option<Vec<u8>>)> {
        let mut pass = match self.length {
            Length::Fixed(n) => Pass::Fixed(n),
            Length::Chunked if http10 => Pass::Dechunk(Chunked::default()),
            Length::Chunked => Pass::Chunked(Chunked::default()),
            Length::UntilClose => Pass::UntilClose,
        };
        let keep = keep && matches!(pass, Pass::Fixed(_) | Pass::Chunked(_));
        let mut kept = match self.length {
            Length::Fixed(n) if keep_body && n <= crate::shadow::MAX_CAPTURE => {
                Some(Vec::with_capacity(n as usize))
            }
            _ => None,
        };
        let mut out = Vec::with_capacity(512 + self.buffered.len());
        self.write_head(&mut out, http10, keep);
        let head_len = out.len();
        let (mut done, mut surplus) = pass
            .feed(&self.buffered, &mut out)
            .map_err(std::io::Error::other)?;
        if let Some(k) = &mut kept {
            k.extend_from_slice(&out[head_len..]);
        }
        client.write_all(&out).await?;
        let mut buf = self.buffered;
        while !done {
            buf.clear();
            let n = self.stream.read_buf(&mut buf).await?;
            if n == 0 {
                if matches!(pass, Pass::UntilClose) {
                    break;
                }
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the replica closed within the body",
                ));
            }
            out.clear();
            let fed = pass.feed(&buf, &mut out).map_err(std::io::Error::other)?;
            (done, surplus) = (fed.0, surplus || fed.1);
            if let Some(k) = &mut kept {
                k.extend_from_slice(&out);
            }
            client.write_all(&out).await?;
        }
        if done && !surplus && self.head.keep_alive() {
            pool.give_back(addr, self.stream);
        }
        let after = if keep { After::KeepAlive } else { After::Close };
        Ok((after, kept.filter(|_| done)))
    }

    fn write_head(&self, out: &mut Vec<u8>, http10: bool, keep: bool) {
        use std::io::Write as _;
        // Writing into a Vec cannot fail.
        let _ = write!(out, "HTTP/1.1 {} ", self.head.status);
        out.extend_from_slice(self.head.reason());
        out.extend_from_slice(b"\r\n");
        // An HTTP/1.0 client gets the chunks decoded.
        self.head.forward_fields(out, |name| {
            http10 && name.eq_ignore_ascii_case(b"transfer-encoding")
        });
        match (keep, http10) {
            (false, _) => out.extend_from_slice(b"connection: close\r\n"),
            (true, true) => out.extend_from_slice(b"connection: keep-alive\r\n"),
            (true, false) => {}
        }
        out.extend_from_slice(b"\r\n");
    }
}
