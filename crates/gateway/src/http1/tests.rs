use super::*;
use proptest::prelude::*;

fn request(raw: &str) -> Head {
    parse_request(raw.as_bytes()).unwrap().unwrap().0
}

fn response(raw: &str) -> Head {
    parse_response(raw.as_bytes()).unwrap().unwrap().0
}

#[test]
fn request_heads_parse_in_place() {
    let raw =
        "POST /v1/embeddings?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello";
    let (head, len) = parse_request(raw.as_bytes()).unwrap().unwrap();
    assert_eq!(len, raw.len() - 5);
    assert_eq!(head.method(), "POST");
    assert_eq!(head.target(), "/v1/embeddings?x=1");
    assert_eq!(head.path(), "/v1/embeddings");
    assert_eq!(head.get("content-length"), Some(&b"5"[..]));
    assert_eq!(head.get("x-a"), Some(&b"1"[..]));
    assert_eq!(head.body_length(None), Ok(Length::Fixed(5)));
    assert!(head.keep_alive() && !head.expects_continue());
    // Incomplete: wait for more.
    assert!(parse_request(&raw.as_bytes()[..20]).unwrap().is_none());
}

#[test]
fn keep_alive_follows_the_version_and_connection() {
    assert!(!request("GET / HTTP/1.1\r\nConnection: keep-alive, close\r\n\r\n").keep_alive());
    assert!(!request("GET / HTTP/1.0\r\n\r\n").keep_alive());
    assert!(request("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").keep_alive());
    assert!(request("POST / HTTP/1.1\r\nExpect: 100-continue\r\n\r\n").expects_continue());
}

#[test]
fn body_lengths_follow_rfc_9112() {
    let chunked =
        "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 3\r\n\r\n";
    assert_eq!(request(chunked).body_length(None), Ok(Length::Chunked));
    assert_eq!(
        request("GET / HTTP/1.1\r\n\r\n").body_length(None),
        Ok(Length::Fixed(0))
    );
    for bad in [
        "POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: -3\r\n\r\n",
        "POST / HTTP/1.1\r\nContent-Length: 3x\r\n\r\n",
    ] {
        assert_eq!(request(bad).body_length(None).unwrap_err().0, 400, "{bad}");
    }
    let gzip = "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n";
    assert_eq!(request(gzip).body_length(None).unwrap_err().0, 501);

    let ok = response("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n");
    assert_eq!(ok.status, 200);
    assert_eq!(ok.reason(), b"OK");
    assert_eq!(ok.body_length(Some("GET")), Ok(Length::Fixed(2)));
    assert_eq!(ok.body_length(Some("HEAD")), Ok(Length::Fixed(0)));
    let none = response("HTTP/1.1 204 No Content\r\n\r\n");
    assert_eq!(none.body_length(Some("GET")), Ok(Length::Fixed(0)));
    let open = response("HTTP/1.1 200 OK\r\n\r\n");
    assert_eq!(open.body_length(Some("GET")), Ok(Length::UntilClose));
    let sse = response("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n");
    assert_eq!(sse.body_length(Some("POST")), Ok(Length::Chunked));
}

#[test]
fn malformed_and_oversized_heads_are_refused() {
    assert_eq!(
        parse_request(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
            .unwrap_err()
            .0,
        400
    );
    let long = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_HEAD));
    assert_eq!(parse_request(long.as_bytes()).unwrap_err().0, 431);
    let many: String = (0..=MAX_HEADERS).map(|i| format!("X-{i}: 1\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(parse_request(many.as_bytes()).unwrap_err().0, 431);
    assert_eq!(
        parse_response(b"HTTP/1.1 2000 OK\r\n\r\n").unwrap_err().0,
        502
    );
}

#[test]
fn hop_by_hop_fields_are_recognised_in_any_case() {
    for name in ["Connection", "KEEP-ALIVE", "te", "Upgrade", "Host"] {
        assert!(is_hop_by_hop(name.as_bytes()), "{name}");
    }
    for name in [
        "content-type",
        "content-length",
        "authorization",
        "x-request-id",
    ] {
        assert!(!is_hop_by_hop(name.as_bytes()), "{name}");
    }
}

#[test]
fn chunked_bodies_decode_with_extensions_and_trailers() {
    let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
    let mut c = Chunked::default();
    let mut out = Vec::new();
    let used = c.feed(body, Some(&mut out)).unwrap();
    assert!(c.done());
    assert_eq!(out, b"hello world");
    assert_eq!(&body[used..], b"NEXT");
    for bad in [
        &b"x\r\n"[..],
        b"\r\n",
        b"5\r\nhelloXX",
        b"1234567890abcdef0\r\n",
    ] {
        let err = Chunked::default().feed(bad, None);
        assert!(err.is_err(), "{:?}", String::from_utf8_lossy(bad));
    }
}

/// A chunked encoding of `parts` (empty parts skipped: a zero-size chunk
/// ends the body).
fn encode(parts: &[Vec<u8>], trailer: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts.iter().filter(|p| !p.is_empty()) {
        out.extend(format!("{:x}\r\n", p.len()).bytes());
        out.extend(p);
        out.extend(b"\r\n");
    }
    out.extend(b"0\r\n");
    if trailer {
        out.extend(b"Trailer-Field: 1\r\n");
    }
    out.extend(b"\r\n");
    out
}

proptest! {
    /// However the bytes arrive, the decoder yields the same data and stops
    /// exactly at the end of the body.
    #[test]
    fn chunked_decoding_does_not_depend_on_how_bytes_arrive(
        parts in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..6),
        trailer in any::<bool>(),
        cuts in prop::collection::vec(0usize..400, 0..8),
    ) {
        let mut wire = encode(&parts, trailer);
        let end = wire.len();
        wire.extend(b"GET / HTTP/1.1\r\n");
        let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (wire.len() + 1)).collect();
        cuts.push(wire.len());
        cuts.sort_unstable();
        let (mut c, mut out, mut at) = (Chunked::default(), Vec::new(), 0);
        for cut in cuts {
            if cut <= at || c.done() {
                continue;
            }
            at += c.feed(&wire[at..cut], Some(&mut out)).unwrap();
        }
        prop_assert!(c.done());
        prop_assert_eq!(at, end);
        prop_assert_eq!(out, parts.concat());
    }
}
