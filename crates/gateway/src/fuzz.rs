//! Entry points of the fuzz targets in `fuzz/` (not an API): the gateway's
//! HTTP/1 framing on arbitrary bytes, with the properties it promises.

use crate::http1::{self, Chunked, Length};

/// A request head: parsed in place, never claiming more bytes than it was
/// given, and its framing decided without panicking.
pub fn request_head(bytes: &[u8]) {
    let Ok(Some((head, used))) = http1::parse_request(bytes) else {
        return;
    };
    assert!(used <= bytes.len());
    let _ = (
        head.method(),
        head.path(),
        head.keep_alive(),
        head.expects_continue(),
    );
    if let Ok(Length::Fixed(n)) = head.body_length(None) {
        let _ = n;
    }
    // What is forwarded to a replica is itself a well-formed head.
    let mut forwarded = b"GET / HTTP/1.1\r\n".to_vec();
    head.forward_fields(&mut forwarded, |_| false);
    forwarded.extend_from_slice(b"\r\n");
    assert!(
        matches!(http1::parse_request(&forwarded), Ok(Some(_))),
        "forwarded fields do not parse: {:?}",
        String::from_utf8_lossy(&forwarded)
    );
}

/// A chunked body: the first byte says how to cut the rest into pieces, and
/// decoding piece by piece gives what decoding it whole gives.
pub fn chunked(bytes: &[u8]) {
    let Some((&stride, body)) = bytes.split_first() else {
        return;
    };
    let whole = decode(body, body.len().max(1));
    let pieces = decode(body, usize::from(stride).max(1));
    assert_eq!(whole, pieces, "the result depends on how the bytes arrive");
}

/// (decoded body, bytes used, done) or the error, feeding `piece` bytes at
/// a time.
fn decode(input: &[u8], piece: usize) -> Result<(Vec<u8>, usize, bool), String> {
    let (mut state, mut out, mut used) = (Chunked::default(), Vec::new(), 0);
    for part in input.chunks(piece) {
        let n = state.feed(part, Some(&mut out))?;
        assert!(n <= part.len());
        used += n;
        if state.done() {
            break;
        }
    }
    Ok((out, used, state.done()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_entry_points_run_on_small_inputs() {
        request_head(b"POST /v1/embeddings HTTP/1.1\r\nHost: g\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive, x\r\nX: y\r\n\r\n");
        chunked(b"\x03a\r\nhello\r\n0\r\nTrailer: t\r\n\r\nnext");
        chunked(b"\x01ff;ext\r\nab");
    }
}
