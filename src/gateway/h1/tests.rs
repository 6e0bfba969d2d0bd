//! The HTTP/1.1 loop's pure parts: what stays, what goes to hyper, heads and framing.

use super::*;

const LIMITS: Limits = Limits {
    header_timeout: Duration::from_secs(10),
    max_head: 8192,
    max_body: 1 << 20,
};

fn parsed(raw: &[u8]) -> Parsed {
    match parse(raw, LIMITS) {
        Parse::Simple(p) => p,
        _ => panic!("not simple: {:?}", String::from_utf8_lossy(raw)),
    }
}

fn simple(raw: &[u8]) -> Option<(usize, usize, bool)> {
    match parse(raw, LIMITS) {
        Parse::Simple(p) => Some((p.head_len, p.body_len, p.close)),
        _ => None,
    }
}

#[test]
fn plain_requests_stay_here_and_the_rest_goes_to_hyper() {
    let get = b"GET /a?uid=1 HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(simple(get), Some((get.len(), 0, false)));
    let post = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc";
    assert_eq!(simple(post), Some((post.len() - 3, 3, true)));
    assert!(matches!(
        parse(b"GET / HTTP/1.1\r\nHo", LIMITS),
        Parse::Partial
    ));
    assert!(matches!(parse(b"", LIMITS), Parse::Partial));
    for hyper in [
        &b"GET / HTTP/1.0\r\n\r\n"[..],
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET http://x/ HTTP/1.1\r\n\r\n",
        b"OPTIONS * HTTP/1.1\r\n\r\n",
        b"CONNECT x:443 HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        b"POST / HTTP/1.1\r\nContent-Length: 70000\r\n\r\n",
    ] {
        assert!(
            matches!(parse(hyper, LIMITS), Parse::Hyper),
            "{:?}",
            String::from_utf8_lossy(hyper)
        );
    }
    // A head longer than the limit, complete or not.
    let long = format!("GET / HTTP/1.1\r\nx: {}\r\n", "a".repeat(9000));
    assert!(matches!(parse(long.as_bytes(), LIMITS), Parse::Hyper));
    assert!(matches!(
        parse(format!("{long}\r\n").as_bytes(), LIMITS),
        Parse::Hyper
    ));
}

#[test]
fn requests_keep_their_head() {
    let head =
        Bytes::from_static(b"PUT /p?q=1 HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\nX-E:\r\n\r\n");
    let r = request(parsed(&head), &head, Bytes::from_static(b"xyz")).unwrap();
    assert_eq!(r.headers().get("x-e").unwrap(), "");
    assert_eq!(r.method(), Method::PUT);
    assert_eq!(r.uri().path(), "/p");
    assert_eq!(r.uri().query(), Some("q=1"));
    assert_eq!(r.headers().get_all("x-a").iter().count(), 2);
    assert_eq!(r.body().size_hint().exact(), Some(3));
}

#[tokio::test]
async fn answers_are_framed_by_length_or_chunks() {
    use http_body_util::Either;
    let mut out = Vec::new();
    let mut sink = Vec::new();
    let r = http::Response::new(Either::Right(Full::new(Bytes::from_static(b"hello"))));
    write_answer(&mut sink, &mut out, r, false, true)
        .await
        .unwrap();
    let text = String::from_utf8(sink).unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK\r\n"), "{text}");
    assert!(text.contains("content-length: 5\r\n"), "{text}");
    assert!(text.contains("connection: close\r\n"), "{text}");
    assert!(text.contains("date: "), "{text}");
    assert!(text.ends_with("\r\n\r\nhello"), "{text}");
    // HEAD and 204: no body, no framing added.
    let mut sink = Vec::new();
    let mut r = http::Response::new(Either::Right(Full::new(Bytes::new())));
    *r.status_mut() = StatusCode::NO_CONTENT;
    write_answer(&mut sink, &mut out, r, false, false)
        .await
        .unwrap();
    let text = String::from_utf8(sink).unwrap();
    assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"), "{text}");
    assert!(!text.contains("content-length"), "{text}");
    assert!(text.ends_with("\r\n\r\n"), "{text}");
}

#[tokio::test]
async fn prefixed_reads_the_prefix_first() {
    use tokio::io::AsyncReadExt;
    let mut p = Prefixed::new(BytesMut::from(&b"abc"[..]), &b"def"[..]);
    let mut s = String::new();
    p.read_to_string(&mut s).await.unwrap();
    assert_eq!(s, "abcdef");
}

#[test]
fn an_empty_buffer_is_rewound_only_when_nothing_points_into_it() {
    let mut buf = BytesMut::with_capacity(8 << 10);
    let full = buf.capacity();
    buf.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let head = buf.split_to(buf.len()).freeze();
    // The request's bytes are still in use: the buffer stays where it is.
    rewind(&mut buf);
    assert!(buf.capacity() < full);
    assert_eq!(&head[..], b"GET / HTTP/1.1\r\n\r\n");
    drop(head);
    rewind(&mut buf);
    assert_eq!(
        buf.capacity(),
        full,
        "the next read goes to the front again"
    );
    // Bytes not yet used are never dropped.
    buf.extend_from_slice(b"GET /next");
    let _ = buf.split_to(4);
    rewind(&mut buf);
    assert_eq!(&buf[..], b"/next");
}
