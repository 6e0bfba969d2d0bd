//! The upstream client against scripted endpoints on 127.0.0.1: real sockets, answers
//! written in pieces, closes at chosen moments.

use super::*;
use crate::gateway::proxy::BoxError;
use bytes::Bytes;
use http::header::{HeaderMap, HeaderValue};
use http_body_util::BodyExt;
use hyper::body::Frame;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

/// One canned answer: written in these pieces (a short pause between them), then the
/// connection stays open unless `close`.
struct Answer {
    pieces: Vec<Vec<u8>>,
    close: bool,
}

fn answer(s: &str) -> Answer {
    Answer {
        pieces: vec![s.as_bytes().to_vec()],
        close: false,
    }
}

fn trickled(s: &str) -> Answer {
    Answer {
        pieces: s.as_bytes().chunks(3).map(<[u8]>::to_vec).collect(),
        close: false,
    }
}

struct Endpoint {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    accepts: Arc<AtomicUsize>,
}

/// Serves `answers` in order, one per request, on however many connections come.
async fn endpoint(answers: Vec<Answer>) -> Endpoint {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let accepts = Arc::new(AtomicUsize::new(0));
    let queue = Arc::new(Mutex::new(std::collections::VecDeque::from(answers)));
    let (r, a) = (requests.clone(), accepts.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let (r, queue) = (r.clone(), queue.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let Some(req) = read_request(&mut s, &mut buf).await else {
                        return;
                    };
                    r.lock().expect("lock").push(req);
                    let Some(ans) = queue.lock().expect("lock").pop_front() else {
                        return;
                    };
                    for p in &ans.pieces {
                        if s.write_all(p).await.is_err() {
                            return;
                        }
                        if ans.pieces.len() > 1 {
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                    }
                    if ans.close {
                        return;
                    }
                }
            });
        }
    });
    Endpoint {
        addr,
        requests,
        accepts,
    }
}

/// Reads one request (head, then a body framed by length or chunks) as text.
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let body_end = if let Some(l) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
    {
        head_end + l.trim().parse::<usize>().ok()?
    } else if head.contains("transfer-encoding: chunked") {
        loop {
            if let Some(i) = buf[head_end..].windows(5).position(|w| w == b"0\r\n\r\n") {
                break head_end + i + 5;
            }
            let mut b = [0u8; 4096];
            let n = s.read(&mut b).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&b[..n]);
        }
    } else {
        head_end
    };
    while buf.len() < body_end {
        let mut b = [0u8; 4096];
        let n = s.read(&mut b).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
    }
    let req = String::from_utf8_lossy(&buf[..body_end]).into_owned();
    buf.drain(..body_end);
    Some(req)
}

fn get_head(path: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nhost: app\r\n\r\n").into_bytes()
}

async fn send(
    pool: &Arc<Upstreams>,
    addr: SocketAddr,
    method: Method,
) -> Result<(Response<()>, Result<(Bytes, Option<HeaderMap>), String>), UpError> {
    let head = if method == Method::HEAD {
        b"HEAD / HTTP/1.1\r\nhost: app\r\n\r\n".to_vec()
    } else {
        get_head("/")
    };
    let resp = pool
        .send(addr, &method, &head, OutBody::Full(Bytes::new()))
        .await?;
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.map_err(|e| e.to_string());
    let out = collected.map(|c| {
        let trailers = c.trailers().cloned();
        (c.to_bytes(), trailers)
    });
    Ok((Response::from_parts(parts, ()), out))
}

#[tokio::test]
async fn a_length_framed_answer_is_read_and_its_connection_reused() {
    let ep = endpoint(vec![
        answer("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello"),
        trickled("HTTP/1.1 201 Created\r\ncontent-length: 7\r\n\r\nthere!!"),
    ])
    .await;
    let pool = Arc::new(Upstreams::new(8192));
    let (r, body) = send(&pool, ep.addr, Method::GET).await.expect("first");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-a"], "1");
    assert_eq!(r.headers()["content-length"], "5");
    assert_eq!(body.expect("body").0, "hello");
    assert_eq!(pool.idle_count(), 1);
    let (r, body) = send(&pool, ep.addr, Method::GET).await.expect("second");
    assert_eq!(r.status(), 201);
    assert_eq!(body.expect("body").0, "there!!");
    assert_eq!(
        ep.accepts.load(Ordering::SeqCst),
        1,
        "one connection for both"
    );
}

#[tokio::test]
async fn repeated_equal_lengths_become_one_and_a_single_one_goes_through_as_sent() {
    let ep = endpoint(vec![
        answer("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"),
        answer("HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\nxy"),
        answer("HTTP/1.1 200 OK\r\nContent-Length: 004\r\n\r\nwxyz"),
    ])
    .await;
    let pool = Arc::new(Upstreams::new(8192));
    for (want_len, want_body) in [("3", "abc"), ("2", "xy"), ("004", "wxyz")] {
        let (r, body) = send(&pool, ep.addr, Method::GET).await.expect("send");
        let lengths: Vec<_> = r.headers().get_all("content-length").iter().collect();
        assert_eq!(lengths, [want_len], "one content-length for {want_body}");
        assert_eq!(body.expect("body").0, want_body);
    }
    assert_eq!(
        ep.accepts.load(Ordering::SeqCst),
        1,
        "all on one connection"
    );
}

#[tokio::test]
async fn a_chunked_answer_is_decoded_with_extensions_and_trailers_across_reads() {
    let ep = endpoint(vec![
        trickled(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n\
             5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Sum: 42\r\n\r\n",
        ),
        answer("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    ])
    .await;
    let pool = Arc::new(Upstreams::new(8192));
    let (r, body) = send(&pool, ep.addr, Method::GET).await.expect("send");
    assert!(r.headers().get("transfer-encoding").is_none());
    let (b, trailers) = body.expect("body");
    assert_eq!(b, "helloabcdefghijklmnopqrstuvwxyz");
    assert_eq!(trailers.expect("trailers")["x-sum"], "42");
    assert_eq!(pool.idle_count(), 1);
    let (_, body) = send(&pool, ep.addr, Method::GET).await.expect("send");
    assert_eq!(body.expect("body").0, "abc");
    assert_eq!(ep.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn an_answer_without_length_runs_to_the_close_and_is_not_pooled() {
    let ep = endpoint(vec![Answer {
        pieces: vec![
            b"HTTP/1.1 200 OK\r\n\r\nuntil ".to_vec(),
            b"the end".to_vec(),
        ],
        close: true,
    }])
    .await;
    let pool = Arc::new(Upstreams::new(8192));
    let (_, body) = send(&pool, ep.addr, Method::GET).await.expect("send");
    assert_eq!(body.expect("body").0, "until the end");
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn head_204_and_304_answers_have_no_body() {
    let ep = endpoint(vec![
        answer("HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
        answer("HTTP/1.1 204 No Content\r\n\r\n"),
        answer("HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n"),
        answer("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    ])
    .await;
    let pool = Arc::new(Upstreams::new(8192));
    let (r, body) = send(&pool, ep.addr, Method::HEAD).await.expect("head");
    assert_eq!(r.headers()["content-length"], "1234", "kept for HEAD");
    assert_eq!(body.expect("body").0, "");
    let (r, body) = send(&pool, ep.addr, Method::GET).await.expect("204");
    assert_eq!(r.status(), 204);
    assert_eq!(body.expect("body").0, "");
    let (r, body) = send(&pool, ep.addr, Method::GET).await.expect("304");
    assert_eq!(r.status(), 304);
    assert_eq!(body.expect("body").0, "");
    let (_, body) = send(&pool, ep.addr, Method::GET).await.expect("last");
    assert_eq!(body.expect("body").0, "ok", "framing stayed in step");
    assert_eq!(ep.accepts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn interim_answers_are_skipped() {
    let ep = endpoint(vec![answer(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n\
         HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal",
    )])
    .await;
    let pool = Arc::new(Upstreams::new(8192));
    let (r, body) = send(&pool, ep.addr, Method::GET).await.expect("send");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("link").is_none());
    assert_eq!(body.expect("body").0, "real");
}

#[tokio::test]
async fn chunked_with_a_length_is_decoded_as_chunked_and_the_connection_dropped() {
    let ep = endpoint(vec![answer(
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
         4\r\nsmug\r\n0\r\n\r\n",
    )])
    .await;
    let pool = Arc::new(Upstreams::new(8192));
    let (r, body) = send(&pool, ep.addr, Method::GET).await.expect("send");
    assert!(r.headers().get("content-length").is_none());
    assert_eq!(body.expect("body").0, "smug");
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test]
async fn bad_framing_and_bad_heads_are_errors() {
    let cases = [
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 12abc\r\n\r\n",
            "Content-Length",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
            "Content-Length",
        ),
        (
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "Content-Length",
        ),
        ("HTTP/1.1 2x0 OK\r\n\r\n", "not valid HTTP"),
        (
            "HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "switched protocols",
        ),
        ("SSH-2.0-OpenSSH_9.2\r\n\r\n", "not valid HTTP"),
    ];
    for (raw, expect) in cases {
        let ep = endpoint(vec![answer(raw)]).await;
        let pool = Arc::new(Upstreams::new(8192));
        match send(&pool, ep.addr, Method::GET).await {
            Err(UpError::Failed(m)) => assert!(m.contains(expect), "{raw:?}: {m}"),
            Err(e) => panic!("{raw:?}: wrong error kind: {e}"),
            Ok((r, _)) => panic!("{raw:?}: accepted as {}", r.status()),
        }
    }
    // A head longer than the limit.
    let long = format!("HTTP/1.1 200 OK\r\nX-Big: {}\r\n\r\n", "a".repeat(20_000));
    let ep = endpoint(vec![answer(&long)]).await;
    let pool = Arc::new(Upstreams::new(8192));
    let Err(UpError::Failed(m)) = send(&pool, ep.addr, Method::GET).await else {
        panic!("a 20 KB head was accepted")
    };
    assert!(m.contains("longer than 8192"), "{m}");
}

#[tokio::test]
async fn malformed_or_cut_bodies_fail_the_body_and_drop_the_connection() {
    let cases = [
        Answer {
            pieces: vec![b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n".to_vec()],
            close: false,
        },
        Answer {
            pieces: vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXY".to_vec(),
            ],
            close: false,
        },
        Answer {
            pieces: vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort".to_vec()],
            close: true,
        },
    ];
    for a in cases {
        let raw = String::from_utf8_lossy(&a.pieces[0]).into_owned();
        let ep = endpoint(vec![a]).await;
        let pool = Arc::new(Upstreams::new(8192));
        let (_, body) = send(&pool, ep.addr, Method::GET)
            .await
            .expect("head is fine");
        assert!(body.is_err(), "{raw:?} gave a body");
        assert_eq!(pool.idle_count(), 0, "{raw:?}");
    }
}

#[tokio::test]
async fn closed_and_refused_connections() {
    // `Connection: close` keeps the connection out of the pool.
    let ep = endpoint(vec![
        answer("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\na"),
        answer("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
    ])
    .await;
    let pool = Arc::new(Upstreams::new(8192));
    let _ = send(&pool, ep.addr, Method::GET).await.expect("first");
    assert_eq!(pool.idle_count(), 0);
    // Bytes after the answer: not HTTP/1.1 as agreed, not pooled.
    let ep = endpoint(vec![answer(
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\naEXTRA",
    )])
    .await;
    let _ = send(&pool, ep.addr, Method::GET).await.expect("extra");
    assert_eq!(pool.idle_count(), 0);
    // Nothing listening: a connect error (retryable for any method).
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let gone = l.local_addr().expect("addr");
    drop(l);
    match send(&pool, gone, Method::POST).await {
        Err(UpError::Connect(m)) => assert!(m.contains("connecting to"), "{m}"),
        other => panic!(
            "expected a connect error, got {:?}",
            other.map(|r| r.0.status())
        ),
    }
}

#[tokio::test]
async fn a_pooled_connection_the_endpoint_closed_is_not_used() {
    // The endpoint answers once, then closes the idle connection.
    let ep = endpoint(vec![
        Answer {
            pieces: vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na".to_vec()],
            close: true,
        },
        answer("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb"),
    ])
    .await;
    let pool = Arc::new(Upstreams::new(8192));
    let _ = send(&pool, ep.addr, Method::GET).await.expect("first");
    assert_eq!(pool.idle_count(), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Even a POST, which is never replayed, gets through: the closed connection is
    // noticed at checkout.
    let head = b"POST / HTTP/1.1\r\nhost: app\r\ncontent-length: 2\r\n\r\n";
    let resp = pool
        .send(
            ep.addr,
            &Method::POST,
            head,
            OutBody::Full(Bytes::from_static(b"hi")),
        )
        .await
        .expect("second, on a new connection");
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    assert_eq!(body, "b");
    assert_eq!(ep.accepts.load(Ordering::SeqCst), 2);
    assert!(ep.requests.lock().expect("lock")[1].ends_with("\r\n\r\nhi"));
}

#[tokio::test]
async fn a_silent_pooled_connection_is_retried_for_an_idempotent_request() {
    // The endpoint takes the second request and closes without a word (as when its
    // keep-alive timer fires just as the request arrives).
    let ep = endpoint(vec![
        answer("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na"),
        Answer {
            pieces: vec![],
            close: true,
        },
        answer("HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nc"),
    ])
    .await;
    let pool = Arc::new(Upstreams::new(8192));
    let _ = send(&pool, ep.addr, Method::GET).await.expect("first");
    let (_, body) = send(&pool, ep.addr, Method::GET).await.expect("retried");
    assert_eq!(body.expect("body").0, "c");
    assert_eq!(ep.accepts.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_streamed_body_is_sent_chunked_or_by_its_declared_length() {
    let ep = endpoint(vec![
        answer("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
        answer("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ])
    .await;
    let pool = Arc::new(Upstreams::new(8192));
    let stream = |parts: Vec<&'static str>| -> UpBody {
        let frames = parts
            .into_iter()
            .map(|p| Ok::<_, BoxError>(Frame::data(Bytes::from_static(p.as_bytes()))));
        http_body_util::StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync()
    };
    let head = b"POST /up HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n";
    pool.send(
        ep.addr,
        &Method::POST,
        head,
        OutBody::Stream(stream(vec!["abc", "", "defgh"]), None),
    )
    .await
    .expect("chunked");
    let head = b"POST /up HTTP/1.1\r\nhost: app\r\ncontent-length: 8\r\n\r\n";
    pool.send(
        ep.addr,
        &Method::POST,
        head,
        OutBody::Stream(stream(vec!["abc", "defgh"]), Some(8)),
    )
    .await
    .expect("declared");
    let reqs = ep.requests.lock().expect("lock").clone();
    assert!(
        reqs[0].ends_with("\r\n\r\n3\r\nabc\r\n5\r\ndefgh\r\n0\r\n\r\n"),
        "{:?}",
        reqs[0]
    );
    assert!(reqs[1].ends_with("\r\n\r\nabcdefgh"), "{:?}", reqs[1]);
    // A body shorter than declared fails the exchange.
    let ep = endpoint(vec![]).await;
    let r = pool
        .send(
            ep.addr,
            &Method::POST,
            head,
            OutBody::Stream(stream(vec!["abc"]), Some(8)),
        )
        .await;
    assert!(
        matches!(r, Err(UpError::Failed(ref m)) if m.contains("3 of 8")),
        "{:?}",
        r.err()
    );
}

#[test]
fn the_request_head_drops_hop_by_hop_headers_and_adds_the_route() {
    let mut h = HeaderMap::new();
    h.insert("host", HeaderValue::from_static("shop.example"));
    h.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-secret"),
    );
    h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
    h.insert("x-secret", HeaderValue::from_static("s"));
    h.insert("te", HeaderValue::from_static("trailers"));
    h.insert("expect", HeaderValue::from_static("100-continue"));
    h.insert("content-length", HeaderValue::from_static("999"));
    h.insert("x-tessera-unit", HeaderValue::from_static("forged"));
    h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
    h.append("x-forwarded-for", HeaderValue::from_static("10.0.0.2"));
    h.insert("x-uid", HeaderValue::from_static("2088000000000007"));
    let get = Method::GET;
    let head = RequestHead {
        method: &get,
        target: "/a?b=c",
        headers: &h,
        authority: None,
        client: "127.0.0.9".parse().expect("ip"),
        secure: true,
        unit: "rz00",
        zone: "hz-a",
        slot: Some(7),
    };
    let text = String::from_utf8(head.encode(Framed::Length(0))).expect("utf8");
    assert!(text.starts_with("GET /a?b=c HTTP/1.1\r\n"), "{text}");
    assert!(text.ends_with("\r\n\r\n"));
    for gone in [
        "connection",
        "keep-alive",
        "x-secret",
        "te:",
        "expect",
        "content-length",
        "forged",
    ] {
        assert!(!text.contains(gone), "{gone} forwarded: {text}");
    }
    for kept in [
        "host: shop.example\r\n",
        "x-uid: 2088000000000007\r\n",
        "x-forwarded-for: 10.0.0.1, 10.0.0.2, 127.0.0.9\r\n",
        "x-forwarded-proto: https\r\n",
        "x-tessera-unit: rz00\r\n",
        "x-tessera-zone: hz-a\r\n",
        "x-tessera-slot: 07\r\n",
    ] {
        assert!(text.contains(kept), "{kept:?} missing: {text}");
    }
    // HTTP/2 requests carry the authority instead of Host; a POST states its length.
    let mut h2 = HeaderMap::new();
    h2.insert("x-uid", HeaderValue::from_static("1"));
    let post = Method::POST;
    let head = RequestHead {
        method: &post,
        target: "/",
        headers: &h2,
        authority: Some("api.example:8443"),
        client: "::1".parse().expect("ip"),
        secure: false,
        unit: "bad\r\nunit",
        zone: "z",
        slot: None,
    };
    let text = String::from_utf8(head.encode(Framed::Length(0))).expect("utf8");
    assert!(text.contains("host: api.example:8443\r\n"), "{text}");
    assert!(text.contains("content-length: 0\r\n"), "{text}");
    assert!(
        text.contains("x-tessera-unit: -\r\n"),
        "no header injection: {text}"
    );
    assert!(!text.contains("x-tessera-slot"));
    let text = String::from_utf8(head.encode(Framed::Chunked)).expect("utf8");
    assert!(text.contains("transfer-encoding: chunked\r\n"), "{text}");
}

/// An endpoint that answers each request `ok` after the next of `delays`, on one
/// connection after another.
async fn slow_endpoint(delays: Vec<Duration>) -> (SocketAddr, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    let accepts = Arc::new(AtomicUsize::new(0));
    let delays = Arc::new(Mutex::new(std::collections::VecDeque::from(delays)));
    let a = accepts.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            a.fetch_add(1, Ordering::SeqCst);
            let delays = delays.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_request(&mut s, &mut buf).await.is_some() {
                    let Some(d) = delays.lock().expect("lock").pop_front() else {
                        return;
                    };
                    tokio::time::sleep(d).await;
                    let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                    if s.write_all(ok).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepts)
}

async fn send_by(
    pool: &Arc<Upstreams>,
    addr: SocketAddr,
    within: Duration,
) -> Result<Bytes, UpError> {
    let deadline = TokioInstant::now() + within;
    let resp = pool
        .send_at(
            addr,
            &Method::GET,
            &get_head("/"),
            OutBody::Full(Bytes::new()),
            Instant::now(),
            deadline,
        )
        .await?;
    let body = resp.into_body().collect().await.expect("body");
    Ok(body.to_bytes())
}

#[tokio::test]
async fn each_request_times_out_at_its_own_deadline_on_a_reused_connection() {
    let ms = Duration::from_millis;
    let (addr, accepts) = slow_endpoint(vec![ms(0), ms(400), ms(0), ms(2000)]).await;
    let pool = Arc::new(Upstreams::new(8192));
    // A short deadline, met: the connection's timer is left set for it.
    assert_eq!(send_by(&pool, addr, ms(200)).await.expect("first"), "ok");
    // A longer one on the same connection: the timer fires at the first request's
    // deadline, which is not this one's, so the answer after 400 ms is taken.
    assert_eq!(send_by(&pool, addr, ms(3000)).await.expect("second"), "ok");
    assert_eq!(send_by(&pool, addr, ms(3000)).await.expect("third"), "ok");
    assert_eq!(accepts.load(Ordering::SeqCst), 1, "one connection, reused");
    // A shorter one than the timer is set for: moved back, it ends the wait on time.
    let t = Instant::now();
    let r = send_by(&pool, addr, ms(150)).await;
    assert!(matches!(r, Err(UpError::Timeout)), "{r:?}");
    assert!(t.elapsed() < ms(1500), "timed out after {:?}", t.elapsed());
    assert!(
        t.elapsed() >= ms(150),
        "timed out early, after {:?}",
        t.elapsed()
    );
}
