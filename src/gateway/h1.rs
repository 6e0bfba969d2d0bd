//! The entrance's own HTTP/1.1 connection loop, for the requests that make up nearly all
//! traffic: origin-form HTTP/1.1 with no body or a small one of declared length.
//!
//! hyper's server dispatcher costs about as much CPU per request as everything else the
//! gateway does in user space (bench/README.md, "gateway CPU"). This loop reads a head
//! with `httparse`, reads the body (at most [`BUFFER_MAX`] bytes, declared by
//! `Content-Length`), calls the same `Gateway::handle` as hyper would, and writes the
//! answer with its first body bytes in one system call.
//!
//! Anything else is handed to hyper, with the bytes read so far, for the rest of the
//! connection: HTTP/1.0, `Transfer-Encoding`, `Expect`, `Upgrade` (WebSocket),
//! absolute-form or `*` targets, CONNECT, bodies over [`BUFFER_MAX`], heads `httparse`
//! rejects or that are too long (hyper answers 400 or 431), and the HTTP/2 preface (h2c).
//! So every unusual case keeps hyper's behaviour, and one request never mixes the two.
//!
//! Timeouts as hyper's `header_read_timeout`, coarser: a head (and here also a small
//! body) must arrive within one to two `header_timeout`s of starting to wait for it, idle
//! keep-alive included (the first request of a connection: one).
//! On shutdown a connection finishes the request it is on and closes
//! (`connection: close`).

use super::proxy::{rewind, Gateway, RespBody, BUFFER_MAX};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Request, StatusCode, Uri, Version};
use http_body_util::Full;
use hyper::body::Body;
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;

/// Most headers a request may have on this path (hyper's default limit too).
const MAX_HEADERS: usize = 100;
/// Answer bytes gathered before a write; larger bodies are written as they come.
const COALESCE: usize = 64 << 10;

/// Limits of the loop (from `[gateway]`).
#[derive(Clone, Copy)]
pub(super) struct Limits {
    pub header_timeout: Duration,
    pub max_head: usize,
    pub max_body: u64,
}

/// How a connection left the loop.
pub(super) enum End<IO> {
    /// Closed (by either side, on an error, or on shutdown).
    Closed,
    /// The rest of the connection is hyper's: the stream and the bytes already read.
    Hyper(Prefixed<IO>),
}

/// Serves HTTP/1.1 requests on `io` until the connection closes or a request needs hyper.
pub(super) async fn serve<IO>(
    mut io: IO,
    gateway: &Arc<Gateway>,
    client: SocketAddr,
    secure: bool,
    limits: Limits,
    stop: &CancellationToken,
) -> End<IO>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(8 << 10);
    let mut out: Vec<u8> = Vec::with_capacity(4 << 10);
    let mut wait = Wait {
        timer: Box::pin(tokio::time::sleep(limits.header_timeout)),
        timeout: limits.header_timeout,
        served: 0,
        served_when_armed: 0,
        stopped: Box::pin(stop.clone().cancelled_owned()),
    };
    loop {
        rewind(&mut buf);
        // A head.
        let parsed = loop {
            match parse(&buf, limits) {
                Parse::Simple(p) => break p,
                Parse::Hyper => return End::Hyper(Prefixed::new(buf, io)),
                Parse::Partial => {}
            }
            match read_more(&mut io, &mut buf, &mut wait).await {
                Ok(true) => {}
                // EOF, error, timeout or shutdown while waiting for a head: close.
                Ok(false) | Err(_) => return End::Closed,
            }
        };
        // Its body, which is small.
        let total = parsed.head_len + parsed.body_len;
        while buf.len() < total {
            if !matches!(read_more(&mut io, &mut buf, &mut wait).await, Ok(true)) {
                return End::Closed;
            }
        }
        let (close, head_len, body_len) = (parsed.close, parsed.head_len, parsed.body_len);
        let head = buf.split_to(head_len).freeze();
        let body = buf.split_to(body_len).freeze();
        let req = match request(parsed, &head, body) {
            Ok(r) => r,
            Err(body) => {
                // Bytes httparse took but `http` does not: hyper decides (it answers 400).
                let mut rest = BytesMut::with_capacity(head.len() + body.len() + buf.len());
                rest.extend_from_slice(&head);
                rest.extend_from_slice(&body);
                rest.extend_from_slice(&buf);
                return End::Hyper(Prefixed::new(rest, io));
            }
        };
        let head_only = req.method() == Method::HEAD;
        let resp = match gateway.clone().handle(req, client, secure).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        wait.served += 1;
        let close = close || stop.is_cancelled();
        if write_answer(&mut io, &mut out, resp, head_only, close)
            .await
            .is_err()
            || close
        {
            let _ = io.shutdown().await;
            return End::Closed;
        }
    }
}

/// A request head this loop serves.
struct Parsed {
    head_len: usize,
    body_len: usize,
    /// The client asked to close after this request.
    close: bool,
    method: Method,
    /// Where the target and each header's value are in the head.
    target: (usize, usize),
    fields: Vec<(HeaderName, usize, usize)>,
}

enum Parse {
    Simple(Parsed),
    Partial,
    Hyper,
}

fn parse(buf: &[u8], limits: Limits) -> Parse {
    if buf.is_empty() {
        return Parse::Partial;
    }
    // Left uninitialized (httparse writes the ones it fills): no 3 KiB of stores per parse.
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header>::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let head_len = match req.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(n)) if n <= limits.max_head => n,
        Ok(httparse::Status::Partial) if buf.len() <= limits.max_head => return Parse::Partial,
        // Too long, too many headers, malformed, or the HTTP/2 preface: hyper's to answer.
        _ => return Parse::Hyper,
    };
    if req.version != Some(1)
        || req.method == Some("CONNECT")
        || !req.path.is_some_and(|p| p.starts_with('/'))
    {
        return Parse::Hyper;
    }
    let base = buf.as_ptr() as usize;
    let at = |part: &[u8]| -> Option<(usize, usize)> {
        let start = if part.is_empty() {
            0
        } else {
            (part.as_ptr() as usize).wrapping_sub(base)
        };
        let end = start.checked_add(part.len())?;
        (end <= head_len).then_some((start, end))
    };
    let (Some(method), Some(target)) = (
        req.method
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok()),
        req.path.and_then(|p| at(p.as_bytes())),
    ) else {
        return Parse::Hyper;
    };
    let mut fields = Vec::with_capacity(req.headers.len());
    let mut body_len: Option<u64> = None;
    let mut close = false;
    for h in req.headers.iter() {
        match (HeaderName::from_bytes(h.name.as_bytes()), at(h.value)) {
            (Ok(n), Some((start, end))) => fields.push((n, start, end)),
            _ => return Parse::Hyper,
        }
        let name = h.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            let v = h.value.trim_ascii();
            if body_len.is_some() || v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
                return Parse::Hyper;
            }
            match std::str::from_utf8(v).ok().and_then(|s| s.parse().ok()) {
                Some(n) if n <= BUFFER_MAX && n <= limits.max_body => body_len = Some(n),
                _ => return Parse::Hyper,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding")
            || name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
        {
            return Parse::Hyper;
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in h.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if token.eq_ignore_ascii_case(b"upgrade") {
                    return Parse::Hyper;
                }
            }
        }
    }
    Parse::Simple(Parsed {
        head_len,
        body_len: body_len.unwrap_or(0) as usize,
        close,
        method,
        target,
        fields,
    })
}

/// The `http` request for a head `parse` accepted, its parts cut from `head` without
/// copying; the body back if `http` refuses a part of the head.
fn request(parsed: Parsed, head: &Bytes, body: Bytes) -> Result<Request<Full<Bytes>>, Bytes> {
    let Ok(uri) = Uri::from_maybe_shared(head.slice(parsed.target.0..parsed.target.1)) else {
        return Err(body);
    };
    let mut headers = HeaderMap::with_capacity(parsed.fields.len());
    for (name, start, end) in parsed.fields {
        match HeaderValue::from_maybe_shared(head.slice(start..end)) {
            Ok(v) => headers.append(name, v),
            Err(_) => return Err(body),
        };
    }
    let mut r = Request::new(Full::new(body));
    *r.method_mut() = parsed.method;
    *r.uri_mut() = uri;
    *r.version_mut() = Version::HTTP_11;
    *r.headers_mut() = headers;
    Ok(r)
}

/// The waits of one connection. Its timer is not re-armed per request (a timer-wheel
/// insert and a clock read each time): when it fires, the connection times out unless a
/// request was served since it was armed, in which case it is armed again. So a head
/// (or small body) gets between one and two `timeout`s.
struct Wait {
    timer: Pin<Box<tokio::time::Sleep>>,
    timeout: Duration,
    served: u64,
    served_when_armed: u64,
    stopped: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
}

/// Reads more bytes into `buf`: `Ok(false)` at EOF, or on shutdown while nothing of a
/// request has arrived; an error on timeout.
async fn read_more<IO: AsyncRead + Unpin>(
    io: &mut IO,
    buf: &mut BytesMut,
    wait: &mut Wait,
) -> io::Result<bool> {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(8 << 10);
    }
    let idle = buf.is_empty();
    poll_fn(|cx| {
        match tokio_util::io::poll_read_buf(Pin::new(&mut *io), cx, &mut *buf) {
            Poll::Ready(Ok(0)) => return Poll::Ready(Ok(false)),
            Poll::Ready(Ok(_)) => return Poll::Ready(Ok(true)),
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => {}
        }
        while wait.timer.as_mut().poll(cx).is_ready() {
            if wait.served == wait.served_when_armed {
                return Poll::Ready(Err(io::ErrorKind::TimedOut.into()));
            }
            wait.served_when_armed = wait.served;
            let at = tokio::time::Instant::now() + wait.timeout;
            wait.timer.as_mut().reset(at);
        }
        if idle && wait.stopped.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Ok(false));
        }
        Poll::Pending
    })
    .await
}

/// Writes an answer: the head and the body's first bytes in one write, chunked when its
/// length is unknown. An error means the connection cannot continue.
async fn write_answer<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    out: &mut Vec<u8>,
    resp: http::Response<RespBody>,
    head_only: bool,
    close: bool,
) -> io::Result<()> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let no_body = head_only
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    let mut has_length = false;
    let mut has_date = false;
    for (name, value) in parts.headers.iter() {
        if *name == header::CONNECTION || *name == header::TRANSFER_ENCODING {
            continue; // this connection's framing is written here
        }
        has_length |= *name == header::CONTENT_LENGTH;
        has_date |= *name == header::DATE;
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !has_date {
        out.extend_from_slice(b"date: ");
        http_date(out);
        out.extend_from_slice(b"\r\n");
    }
    let mut chunked = false;
    if !no_body && !has_length {
        match body.size_hint().exact() {
            Some(n) => {
                out.extend_from_slice(b"content-length: ");
                out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            None => {
                chunked = true;
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
        }
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if no_body {
        drop(body);
        return write_flush(io, out).await;
    }
    let mut body = Pin::new(&mut body);
    loop {
        if body.is_end_stream() {
            break;
        }
        // Take what is ready now; before waiting for more, send what is gathered.
        let frame = match poll_fn(|cx| Poll::Ready(body.as_mut().poll_frame(cx))).await {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    write_flush(io, out).await?;
                }
                poll_fn(|cx| body.as_mut().poll_frame(cx)).await
            }
        };
        let data = match frame {
            None => break,
            Some(Ok(f)) => match f.into_data() {
                Ok(d) => d,
                Err(_) => continue, // trailers: not forwarded on HTTP/1.1
            },
            // The answer broke off: the client cannot be told but by closing.
            Some(Err(e)) => return Err(io::Error::other(e)),
        };
        if data.is_empty() {
            continue;
        }
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        if out.len() + data.len() <= COALESCE {
            out.extend_from_slice(&data);
        } else {
            write_flush(io, out).await?;
            io.write_all(&data).await?;
        }
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    write_flush(io, out).await
}

async fn write_flush<IO: AsyncWrite + Unpin>(io: &mut IO, out: &mut Vec<u8>) -> io::Result<()> {
    io.write_all(out).await?;
    out.clear();
    io.flush().await
}

/// The current time as an HTTP date (RFC 9110 §5.6.7), formatted once per second.
fn http_date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHE: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHE.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(c.1.as_bytes());
    });
}

/// A stream with bytes already read from it in front, for hyper to take over.
pub(super) struct Prefixed<IO> {
    pre: Bytes,
    io: IO,
}

impl<IO> Prefixed<IO> {
    /// Nothing read yet.
    pub(super) fn plain(io: IO) -> Prefixed<IO> {
        Prefixed {
            pre: Bytes::new(),
            io,
        }
    }

    fn new(pre: BytesMut, io: IO) -> Prefixed<IO> {
        Prefixed {
            pre: pre.freeze(),
            io,
        }
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Prefixed<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        dst: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.pre.is_empty() {
            let n = self.pre.len().min(dst.remaining());
            dst.put_slice(&self.pre[..n]);
            self.pre.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, dst)
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Prefixed<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        src: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, src)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
