//! HTTP/1.1 message framing, as the proxy needs it (RFC 9112): request and
//! response heads parsed in place by `httparse` (names and values stay byte
//! ranges of the received head, nothing is copied until forwarded), how long
//! a body is, and a chunked-coding decoder that either decodes a body or
//! tracks where a passed-through one ends. No I/O here.

use std::ops::Range;

/// Largest request or response head accepted.
pub(crate) const MAX_HEAD: usize = 64 << 10;
/// Most header fields in one head.
const MAX_HEADERS: usize = 100;

/// A malformed message: the status to answer (a request's) and why.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Malformed(pub u16, pub String);

/// A parsed head: the bytes it arrived in and where each part lies in them.
#[derive(Debug)]
pub(crate) struct Head {
    raw: Vec<u8>,
    /// Request: the method; response: empty.
    method: Range<usize>,
    /// Request: the target (path and query); response: the reason phrase.
    target: Range<usize>,
    /// Response status; 0 for a request.
    pub status: u16,
    /// `HTTP/1.x`'s x.
    pub minor: u8,
    fields: Vec<(Range<usize>, Range<usize>)>,
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Length {
    /// Exactly this many bytes (0: none).
    Fixed(u64),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// Where the ranges of `httparse`'s borrowed slices lie in `buf`.
fn range_in(buf: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - buf.as_ptr() as usize;
    start..start + part.len()
}

fn fields_of(buf: &[u8], headers: &[httparse::Header<'_>]) -> Vec<(Range<usize>, Range<usize>)> {
    headers
        .iter()
        .map(|h| (range_in(buf, h.name.as_bytes()), range_in(buf, h.value)))
        .collect()
}

/// The length of a complete head from `httparse`'s verdict on `received`
/// bytes, `None` while more is to come, or why it is refused: a request
/// with 4xx, a replica's response with 502.
fn head_length(
    verdict: httparse::Result<usize>,
    received: usize,
    request: bool,
) -> Result<Option<usize>, Malformed> {
    let (what, too_large, malformed) = if request {
        ("request", 431, 400)
    } else {
        ("response", 502, 502)
    };
    match verdict {
        Ok(httparse::Status::Complete(n)) if n <= MAX_HEAD => Ok(Some(n)),
        Ok(httparse::Status::Partial) if received < MAX_HEAD => Ok(None),
        Ok(_) => Err(Malformed(
            too_large,
            format!("the {what} head is larger than {MAX_HEAD} bytes"),
        )),
        Err(httparse::Error::TooManyHeaders) => Err(Malformed(
            too_large,
            format!("more than {MAX_HEADERS} header fields in the {what} head"),
        )),
        Err(e) => Err(Malformed(malformed, format!("malformed {what} head: {e}"))),
    }
}

/// A request head at the start of `buf`: `Ok(None)` while it is incomplete,
/// else the head and how many bytes of `buf` it took.
pub(crate) fn parse_request(buf: &[u8]) -> Result<Option<(Head, usize)>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let Some(len) = head_length(req.parse(buf), buf.len(), true)? else {
        return Ok(None);
    };
    let head = Head {
        method: range_in(buf, req.method.unwrap_or_default().as_bytes()),
        target: range_in(buf, req.path.unwrap_or_default().as_bytes()),
        status: 0,
        minor: req.version.unwrap_or(1),
        fields: fields_of(buf, req.headers),
        raw: buf[..len].to_vec(),
    };
    Ok(Some((head, len)))
}

/// A response head at the start of `buf`, as [`parse_request`].
pub(crate) fn parse_response(buf: &[u8]) -> Result<Option<(Head, usize)>, Malformed> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut headers);
    let Some(len) = head_length(res.parse(buf), buf.len(), false)? else {
        return Ok(None);
    };
    let head = Head {
        method: 0..0,
        target: range_in(buf, res.reason.unwrap_or_default().as_bytes()),
        status: res.code.unwrap_or_default(),
        minor: res.version.unwrap_or(1),
        fields: fields_of(buf, res.headers),
        raw: buf[..len].to_vec(),
    };
    Ok(Some((head, len)))
}

impl Head {
    pub(crate) fn method(&self) -> &str {
        // httparse checked that the method is a token (ASCII).
        std::str::from_utf8(&self.raw[self.method.clone()]).unwrap_or_default()
    }

    /// The request target: path and query.
    pub(crate) fn target(&self) -> &str {
        std::str::from_utf8(&self.raw[self.target.clone()]).unwrap_or_default()
    }

    /// The path, without the query.
    pub(crate) fn path(&self) -> &str {
        let t = self.target();
        t.split_once('?').map_or(t, |(p, _)| p)
    }

    /// The response's reason phrase.
    pub(crate) fn reason(&self) -> &[u8] {
        &self.raw[self.target.clone()]
    }

    /// Every field as (name, value).
    pub(crate) fn fields(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        self.fields
            .iter()
            .map(|(n, v)| (&self.raw[n.clone()], &self.raw[v.clone()]))
    }

    /// The first value of field `name` (ASCII case-insensitive).
    pub(crate) fn get<'a>(&'a self, name: &'a str) -> Option<&'a [u8]> {
        self.values(name).next()
    }

    fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.fields()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v)
    }

    /// The options the `Connection` fields list, trimmed.
    fn connection_options(&self) -> impl Iterator<Item = &[u8]> {
        self.values("connection")
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .filter(|t| !t.is_empty())
    }

    /// Whether any `Connection` field lists `token`.
    fn connection_has(&self, token: &str) -> bool {
        self.connection_options()
            .any(|t| t.eq_ignore_ascii_case(token.as_bytes()))
    }

    /// Appends the fields the next hop gets, as `name: value` lines: all
    /// but the hop-by-hop ones, those this message's `Connection` field
    /// names (RFC 9110 §7.6.1), and those `also_drop` picks.
    pub(crate) fn forward_fields(&self, out: &mut Vec<u8>, also_drop: impl Fn(&[u8]) -> bool) {
        let listed: Vec<&[u8]> = self.connection_options().collect();
        for (name, value) in self.fields() {
            let hop_only =
                is_hop_by_hop(name) || listed.iter().any(|t| name.eq_ignore_ascii_case(t));
            if !hop_only && !also_drop(name) {
                out.extend_from_slice(name);
                out.extend_from_slice(b": ");
                out.extend_from_slice(value);
                out.extend_from_slice(b"\r\n");
            }
        }
    }

    /// Whether the sender keeps the connection open after this message:
    /// HTTP/1.1 unless `Connection: close`, HTTP/1.0 only with `keep-alive`.
    pub(crate) fn keep_alive(&self) -> bool {
        if self.minor == 0 {
            self.connection_has("keep-alive")
        } else {
            !self.connection_has("close")
        }
    }

    /// `Expect: 100-continue`: the client waits for a go-ahead before the body.
    pub(crate) fn expects_continue(&self) -> bool {
        self.minor >= 1
            && self
                .get("expect")
                .is_some_and(|v| v.trim_ascii().eq_ignore_ascii_case(b"100-continue"))
    }

    /// How this message's body is delimited (RFC 9112 §6.3). `request_method`
    /// is the method the response answers; `None` for a request.
    pub(crate) fn body_length(&self, request_method: Option<&str>) -> Result<Length, Malformed> {
        let is_response = request_method.is_some();
        if let Some(method) = request_method
            && (method == "HEAD" || matches!(self.status, 100..=199 | 204 | 304))
        {
            return Ok(Length::Fixed(0));
        }
        let bad = |why: String| Malformed(if is_response { 502 } else { 400 }, why);
        if let Some(te) = self.values("transfer-encoding").last() {
            let last = te.rsplit(|&b| b == b',').next().unwrap_or_default();
            return if last.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                Ok(Length::Chunked)
            } else if is_response {
                Ok(Length::UntilClose)
            } else {
                Err(Malformed(
                    501,
                    "only the chunked transfer coding is supported".into(),
                ))
            };
        }
        let mut length = None;
        for v in self.values("content-length") {
            let n = std::str::from_utf8(v)
                .ok()
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|s| s.parse::<u64>().ok())
                .ok_or_else(|| {
                    bad(format!(
                        "bad Content-Length {:?}",
                        String::from_utf8_lossy(v)
                    ))
                })?;
            if length.is_some_and(|l| l != n) {
                return Err(bad("conflicting Content-Length fields".into()));
            }
            length = Some(n);
        }
        Ok(match length {
            Some(n) => Length::Fixed(n),
            None if is_response => Length::UntilClose,
            None => Length::Fixed(0),
        })
    }
}

/// Fields a proxy does not forward: they describe one connection, or are
/// rewritten for the next hop (RFC 9110 §7.6.1).
pub(crate) fn is_hop_by_hop(name: &[u8]) -> bool {
    // By length first: this runs for every field of every message.
    let candidates: &[&str] = match name.len() {
        2 => &["te"],
        4 => &["host"],
        7 => &["trailer", "upgrade"],
        10 => &["connection", "keep-alive"],
        16 => &["proxy-connection"],
        19 => &["proxy-authorization"],
        _ => return false,
    };
    candidates
        .iter()
        .any(|h| name.eq_ignore_ascii_case(h.as_bytes()))
}

/// The chunked transfer coding, one byte-range at a time: decodes a body
/// (`out` given) or only follows it to find where it ends. Line ends may be
/// a bare LF, as most servers accept.
#[derive(Debug, Clone, Default)]
pub(crate) struct Chunked {
    state: State,
    size: u64,
    digits: u8,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    EndLf,
    Done,
}

impl Chunked {
    pub(crate) fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Consumes `input` up to the end of the body; returns how many bytes
    /// belong to it (less than `input.len()` only once done). Decoded data
    /// is appended to `out` when given.
    pub(crate) fn feed(
        &mut self,
        input: &[u8],
        mut out: Option<&mut Vec<u8>>,
    ) -> Result<usize, String> {
        let mut i = 0;
        while i < input.len() && self.state != State::Done {
            if self.state == State::Data {
                let take = (self.size.min((input.len() - i) as u64)) as usize;
                if let Some(out) = out.as_deref_mut() {
                    out.extend_from_slice(&input[i..i + take]);
                }
                i += take;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                continue;
            }
            let b = input[i];
            i += 1;
            self.state = match (self.state, b) {
                (State::Size, _) if b.is_ascii_hexdigit() => {
                    if self.digits == 15 {
                        return Err("chunk size too large".into());
                    }
                    self.digits += 1;
                    self.size = self.size * 16 + (b as char).to_digit(16).unwrap_or(0) as u64;
                    State::Size
                }
                (State::Size, b';' | b' ' | b'\t') if self.digits > 0 => State::Extension,
                (State::Size, b'\r') if self.digits > 0 => State::SizeLf,
                (State::Size | State::Extension | State::SizeLf, b'\n') if self.digits > 0 => {
                    self.digits = 0;
                    if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data
                    }
                }
                (State::Extension, _) => State::Extension,
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataCr | State::DataLf, b'\n') => State::Size,
                (State::TrailerStart, b'\r') => State::EndLf,
                (State::TrailerStart | State::EndLf, b'\n') => State::Done,
                (State::TrailerLine, b'\n') => State::TrailerStart,
                (State::TrailerStart | State::TrailerLine, _) => State::TrailerLine,
                (state, b) => {
                    return Err(format!(
                        "malformed chunked body: byte {b:#04x} in state {state:?}"
                    ));
                }
            };
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests;
