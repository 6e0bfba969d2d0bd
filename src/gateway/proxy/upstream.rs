//! HTTP/1.1 to the endpoints, driven inline by the request's own task.
//!
//! The gateway used hyper-util's pooled client, which runs every upstream connection in a
//! task of its own and hands requests and answers to it over channels: several task
//! wake-ups per request, which on a 2-core machine cost a third of the gateway's
//! throughput (bench/README.md). Here the request's task writes the request on a pooled
//! connection, reads the answer's head with `httparse`, and the answer's body reads the
//! same socket as the client's connection polls it, then puts the connection back.
//!
//! - Framing of answers follows RFC 9112 §6.3: no body for HEAD, 1xx, 204 and 304;
//!   `Transfer-Encoding: chunked` decoded here (the client side re-frames); a valid
//!   `Content-Length`; otherwise until the endpoint closes. Conflicting or malformed
//!   framing is an upstream error, never guessed at.
//! - A connection goes back to the pool only after an answer framed by length or chunks
//!   was read to its end with nothing left over, and neither side asked to close.
//! - A pooled connection the endpoint has closed is noticed at checkout from the
//!   reactor's readiness (no system call unless it signalled); one that fails before a
//!   single byte of answer is retried once on a fresh connection when the request can be
//!   replayed and is idempotent.
//! - Interim answers (100, 103) are skipped; the gateway strips `Expect` and sends the
//!   body at once.

use super::{BoxError, UpBody};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Bodies up to this size are written with the head in one system call.
const COALESCE_MAX: usize = 16 << 10;
/// Most headers an answer (or its trailers) may carry.
const MAX_HEADERS: usize = 128;
/// Longest chunk-size line accepted (with extensions).
const MAX_CHUNK_LINE: usize = 4096;
const READ_CHUNK: usize = 16 << 10;

/// Connection pools per endpoint address.
pub struct Upstreams {
    idle: Mutex<HashMap<SocketAddr, Vec<Conn>>>,
    max_idle_per_host: usize,
    idle_timeout: Duration,
    connect_timeout: Duration,
    max_head: usize,
}

/// One connection to an endpoint and the bytes read from it but not yet used.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    last_used: Instant,
}

/// How an upstream exchange failed.
#[derive(Debug)]
pub enum UpError {
    /// No connection could be made: nothing was sent.
    Connect(String),
    /// Sent, or partly sent, and then failed: a reset, a close, a malformed answer.
    Failed(String),
}

impl std::fmt::Display for UpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpError::Connect(m) | UpError::Failed(m) => f.write_str(m),
        }
    }
}

/// The body of a request going upstream.
pub enum OutBody {
    /// Read in full (replayable).
    Full(Bytes),
    /// Streamed as it arrives; `Some(n)` when its length is declared.
    Stream(UpBody, Option<u64>),
}

impl OutBody {
    fn replayable(&self) -> bool {
        matches!(self, OutBody::Full(_))
    }
}

impl Upstreams {
    pub fn new(max_head: usize) -> Upstreams {
        Upstreams {
            idle: Mutex::new(HashMap::new()),
            max_idle_per_host: 512,
            idle_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(3),
            max_head: max_head.max(8192),
        }
    }

    /// Idle connections held, for the metrics.
    pub fn idle_count(&self) -> usize {
        self.lock().values().map(Vec::len).sum()
    }

    /// Closes idle connections past their idle timeout and those of endpoints not in `keep`.
    pub fn sweep(&self, keep: &dyn Fn(&SocketAddr) -> bool) {
        let timeout = self.idle_timeout;
        let mut idle = self.lock();
        idle.retain(|a, conns| {
            conns.retain(|c| c.last_used.elapsed() < timeout);
            keep(a) && !conns.is_empty()
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Vec<Conn>>> {
        // A panic while holding this lock leaves only a list of idle sockets behind.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn checkout(&self, addr: SocketAddr) -> Option<Conn> {
        let mut idle = self.lock();
        let conns = idle.get_mut(&addr)?;
        while let Some(c) = conns.pop() {
            if c.last_used.elapsed() < self.idle_timeout && c.alive() {
                return Some(c);
            }
        }
        None
    }

    fn checkin(&self, addr: SocketAddr, mut conn: Conn) {
        if !conn.buf.is_empty() {
            return; // bytes after the answer: the endpoint is not speaking HTTP/1.1 as agreed
        }
        if conn.buf.capacity() > 4 * READ_CHUNK {
            conn.buf = BytesMut::new();
        }
        conn.last_used = Instant::now();
        let mut idle = self.lock();
        let conns = idle.entry(addr).or_default();
        if conns.len() < self.max_idle_per_host {
            conns.push(conn);
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Conn, UpError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(UpError::Connect(format!("connecting to {addr}: {e}"))),
                Err(_) => {
                    return Err(UpError::Connect(format!(
                        "connecting to {addr}: no answer within {:?}",
                        self.connect_timeout
                    )))
                }
            };
        let _ = stream.set_nodelay(true);
        Ok(Conn {
            stream,
            buf: BytesMut::new(),
            last_used: Instant::now(),
        })
    }

    /// Sends one request (its head already serialized, framing headers included) and
    /// reads the answer's head. The answer's body reads on from the same connection.
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        method: &Method,
        head: &[u8],
        body: OutBody,
    ) -> Result<Response<UpstreamBody>, UpError> {
        let idempotent = super::idempotent(method);
        let pooled = self.checkout(addr);
        let reused = pooled.is_some();
        let conn = match pooled {
            Some(c) => c,
            None => self.connect(addr).await?,
        };
        if reused && idempotent && body.replayable() {
            let OutBody::Full(b) = &body else {
                unreachable!("checked replayable") // ok: replayable() is exactly Full
            };
            let replay = b.clone();
            match self.exchange(addr, conn, method, head, body).await {
                Err(Exchange::Silent(e)) => {
                    tracing::debug!(endpoint = %addr, error = %e, "A pooled connection was closed; retrying on a new one");
                    let conn = self.connect(addr).await?;
                    self.exchange(addr, conn, method, head, OutBody::Full(replay))
                        .await
                        .map_err(Exchange::into_error)
                }
                r => r.map_err(Exchange::into_error),
            }
        } else {
            self.exchange(addr, conn, method, head, body)
                .await
                .map_err(Exchange::into_error)
        }
    }

    async fn exchange(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut conn: Conn,
        method: &Method,
        head: &[u8],
        body: OutBody,
    ) -> Result<Response<UpstreamBody>, Exchange> {
        write_request(&mut conn.stream, head, body).await?;
        let (resp, framing, keep_alive) = loop {
            let parsed = read_head(&mut conn, self.max_head).await?;
            // An interim answer (100, 103) was consumed: the real one follows.
            if parsed.status.is_informational() && parsed.status != StatusCode::SWITCHING_PROTOCOLS
            {
                continue;
            }
            break parsed.into_response(method)?;
        };
        let mut body = UpstreamBody {
            conn: Some(conn),
            framing,
            keep_alive,
            pool: self.clone(),
            addr,
        };
        body.finish_if_done();
        Ok(resp.map(|()| body))
    }
}

/// An exchange's failure, and whether the endpoint had said anything at all.
enum Exchange {
    /// Nothing came back (a closed or reset connection): safe to replay an idempotent
    /// request on a fresh connection.
    Silent(String),
    Failed(String),
}

impl Exchange {
    fn into_error(self) -> UpError {
        match self {
            Exchange::Silent(m) | Exchange::Failed(m) => UpError::Failed(m),
        }
    }
}

impl Conn {
    /// True unless the reactor saw the connection become readable while idle (the
    /// endpoint closed it or sent bytes nobody asked for).
    fn alive(&self) -> bool {
        let mut cx = Context::from_waker(Waker::noop());
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readiness can be stale from the answer's last read: look.
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }
}

async fn write_request(stream: &mut TcpStream, head: &[u8], body: OutBody) -> Result<(), Exchange> {
    let silent = |e: io::Error| Exchange::Silent(format!("writing the request: {e}"));
    match body {
        OutBody::Full(b) if b.len() <= COALESCE_MAX => {
            if b.is_empty() {
                stream.write_all(head).await.map_err(silent)
            } else {
                let mut all = Vec::with_capacity(head.len() + b.len());
                all.extend_from_slice(head);
                all.extend_from_slice(&b);
                stream.write_all(&all).await.map_err(silent)
            }
        }
        OutBody::Full(b) => {
            stream.write_all(head).await.map_err(silent)?;
            stream.write_all(&b).await.map_err(silent)
        }
        OutBody::Stream(mut body, declared) => {
            stream.write_all(head).await.map_err(silent)?;
            let failed = |m: String| Exchange::Failed(format!("sending the request body: {m}"));
            let chunked = declared.is_none();
            let mut sent = 0u64;
            while let Some(frame) =
                std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await
            {
                let frame = frame.map_err(|e| failed(e.to_string()))?;
                let Ok(data) = frame.into_data() else {
                    continue; // trailers of a streamed request are not forwarded
                };
                if data.is_empty() {
                    continue;
                }
                sent += data.len() as u64;
                if chunked {
                    let size = format!("{:x}\r\n", data.len());
                    stream
                        .write_all(size.as_bytes())
                        .await
                        .map_err(|e| failed(e.to_string()))?;
                    stream
                        .write_all(&data)
                        .await
                        .map_err(|e| failed(e.to_string()))?;
                    stream
                        .write_all(b"\r\n")
                        .await
                        .map_err(|e| failed(e.to_string()))?;
                } else {
                    stream
                        .write_all(&data)
                        .await
                        .map_err(|e| failed(e.to_string()))?;
                }
            }
            match declared {
                None => stream
                    .write_all(b"0\r\n\r\n")
                    .await
                    .map_err(|e| failed(e.to_string())),
                Some(n) if n == sent => Ok(()),
                Some(n) => Err(failed(format!(
                    "the client sent {sent} of {n} declared bytes"
                ))),
            }
        }
    }
}

/// A parsed answer head: owned, so the buffer can be advanced past it.
struct Head {
    status: StatusCode,
    minor: u8,
    headers: HeaderMap,
    /// `Content-Length` values seen, all of them.
    lengths: Vec<u64>,
    bad_length: bool,
    /// `Transfer-Encoding` with `chunked` last, and whether it was present at all.
    chunked: bool,
    transfer_encoding: bool,
    close: bool,
    keep_alive: bool,
}

async fn read_head(conn: &mut Conn, max_head: usize) -> Result<Head, Exchange> {
    let mut got_any = !conn.buf.is_empty();
    loop {
        if !conn.buf.is_empty() {
            if let Some(h) = parse_head(&mut conn.buf, max_head).map_err(Exchange::Failed)? {
                return Ok(h);
            }
        }
        let n = read_some(&mut conn.stream, &mut conn.buf).await;
        match n {
            Ok(0) if !got_any => {
                return Err(Exchange::Silent(
                    "the endpoint closed the connection without answering".into(),
                ))
            }
            Ok(0) => {
                return Err(Exchange::Failed(
                    "the endpoint closed the connection in the middle of its answer's head".into(),
                ))
            }
            Ok(_) => got_any = true,
            Err(e) if !got_any => return Err(Exchange::Silent(format!("reading the answer: {e}"))),
            Err(e) => return Err(Exchange::Failed(format!("reading the answer: {e}"))),
        }
    }
}

async fn read_some(stream: &mut TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    std::future::poll_fn(|cx| poll_read_buf(stream, cx, buf)).await
}

/// Reads what is there into `buf` (tokio's `poll_read`, which also clears the socket's
/// readiness after a short read: no wasted `EAGAIN` read per answer).
fn poll_read_buf(
    stream: &mut TcpStream,
    cx: &mut Context<'_>,
    buf: &mut BytesMut,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(READ_CHUNK);
    }
    tokio_util::io::poll_read_buf(Pin::new(stream), cx, buf)
}

/// Parses an answer head at the start of `buf` and advances past it; `None` if more
/// bytes are needed.
fn parse_head(buf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, String> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Response::new(&mut slots);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max_head => {
            return Err(format!("the answer's head is longer than {max_head} bytes"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(format!("the answer has more than {MAX_HEADERS} headers"))
        }
        Err(e) => return Err(format!("the answer is not valid HTTP/1.1 ({e})")),
    };
    if n > max_head {
        return Err(format!("the answer's head is longer than {max_head} bytes"));
    }
    let code = r.code.unwrap_or(0);
    let status = StatusCode::from_u16(code)
        .map_err(|_| format!("the answer's status {code} is not valid"))?;
    let minor = r.version.unwrap_or(1);
    let mut h = Head {
        status,
        minor,
        headers: HeaderMap::with_capacity(r.headers.len() + 2),
        lengths: Vec::new(),
        bad_length: false,
        chunked: false,
        transfer_encoding: false,
        close: false,
        keep_alive: false,
    };
    let mut named_hop: Vec<HeaderName> = Vec::new();
    for raw in r.headers.iter() {
        let name = HeaderName::from_bytes(raw.name.as_bytes())
            .map_err(|_| format!("the answer has an invalid header name {:?}", raw.name))?;
        let value = HeaderValue::from_bytes(raw.value)
            .map_err(|_| format!("the answer's header {name} has an invalid value"))?;
        if name == header::CONTENT_LENGTH {
            for part in raw.value.split(|b| *b == b',') {
                match std::str::from_utf8(part).ok().map(str::trim).and_then(|s| {
                    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| s.parse::<u64>().ok())
                        .flatten()
                }) {
                    Some(v) => h.lengths.push(v),
                    None => h.bad_length = true,
                }
            }
        } else if name == header::TRANSFER_ENCODING {
            h.transfer_encoding = true;
            // The last coding decides: chunked must be last to be chunked.
            h.chunked = raw
                .value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
            continue;
        } else if name == header::CONNECTION {
            for token in raw.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    h.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    h.keep_alive = true;
                } else if let Ok(n) = HeaderName::from_bytes(token) {
                    named_hop.push(n);
                }
            }
            continue;
        } else if super::is_hop_by_hop(&name) {
            continue;
        }
        h.headers.append(name, value);
    }
    for n in &named_hop {
        h.headers.remove(n);
    }
    buf.advance(n);
    Ok(Some(h))
}

impl Head {
    /// The answer for the client, its body's framing, and whether the connection may be
    /// reused afterwards.
    fn into_response(self, method: &Method) -> Result<(Response<()>, Framing, bool), Exchange> {
        if self.status == StatusCode::SWITCHING_PROTOCOLS {
            return Err(Exchange::Failed(
                "the endpoint switched protocols without being asked to".into(),
            ));
        }
        let persistent = if self.minor == 0 {
            self.keep_alive && !self.close
        } else {
            !self.close
        };
        let no_body = *method == Method::HEAD
            || self.status == StatusCode::NO_CONTENT
            || self.status == StatusCode::NOT_MODIFIED;
        let mut headers = self.headers;
        let (framing, reusable) = if no_body {
            // A HEAD answer's length describes the GET answer: it goes through as is.
            if let Some(v) = self.lengths.first().filter(|_| !self.bad_length) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(*v));
            }
            (Framing::Length(0), persistent)
        } else if self.transfer_encoding {
            // Transfer-Encoding overrides Content-Length; the pair is a smuggling
            // attempt or a broken endpoint, so the connection is not reused.
            let reusable = persistent && self.lengths.is_empty() && !self.bad_length;
            if self.chunked {
                (Framing::Chunked(Chunk::Size), reusable)
            } else {
                (Framing::Close, false)
            }
        } else if self.bad_length || self.lengths.windows(2).any(|w| w[0] != w[1]) {
            return Err(Exchange::Failed(
                "the answer's Content-Length is invalid or ambiguous".into(),
            ));
        } else if let Some(n) = self.lengths.first() {
            headers.insert(header::CONTENT_LENGTH, HeaderValue::from(*n));
            (Framing::Length(*n), persistent)
        } else {
            (Framing::Close, false)
        };
        if matches!(framing, Framing::Chunked(_) | Framing::Close) {
            headers.remove(header::CONTENT_LENGTH);
        }
        let mut resp = Response::new(());
        *resp.status_mut() = self.status;
        *resp.headers_mut() = headers;
        Ok((resp, framing, reusable))
    }
}

/// How the answer's body is delimited, and how much of it is left.
#[derive(Debug)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// This many bytes of chunk data left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailers up to an empty line.
    Trailers,
}

/// The answer's body, read from the upstream connection as the client takes it.
pub struct UpstreamBody {
    conn: Option<Conn>,
    framing: Framing,
    keep_alive: bool,
    pool: Arc<Upstreams>,
    addr: SocketAddr,
}

impl UpstreamBody {
    /// Once the body is complete, the connection goes back to the pool (or is closed).
    fn finish_if_done(&mut self) {
        if matches!(self.framing, Framing::Length(0)) {
            self.framing = Framing::Done;
        }
        if matches!(self.framing, Framing::Done) {
            if let Some(conn) = self.conn.take() {
                if self.keep_alive {
                    self.pool.checkin(self.addr, conn);
                }
            }
        }
    }

    fn fail(&mut self, m: String) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.framing = Framing::Done;
        Poll::Ready(Some(Err(m.into())))
    }

    /// One step of chunked decoding over the buffered bytes: a frame, `None` when the
    /// body ended, or `Err(())` when more bytes are needed.
    fn step_chunked(
        &mut self,
        max_head: usize,
    ) -> Result<Option<Frame<Bytes>>, Result<(), String>> {
        let Framing::Chunked(state) = self.framing else {
            return Ok(None);
        };
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let buf = &mut conn.buf;
        match state {
            Chunk::Size => {
                let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
                    if buf.len() > MAX_CHUNK_LINE {
                        return Err(Err("a chunk-size line is too long".into()));
                    }
                    return Err(Ok(()));
                };
                let line = &buf[..end];
                let digits = line
                    .split(|b| *b == b';')
                    .next()
                    .unwrap_or(&[])
                    .trim_ascii();
                if digits.is_empty()
                    || digits.len() > 15
                    || !digits.iter().all(u8::is_ascii_hexdigit)
                {
                    return Err(Err("the answer's chunked encoding is malformed".into()));
                }
                let size = digits.iter().fold(0u64, |n, d| {
                    n * 16 + u64::from((*d as char).to_digit(16).unwrap_or(0))
                });
                buf.advance(end + 2);
                self.framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                self.step_chunked(max_head)
            }
            Chunk::Data(left) => {
                if buf.is_empty() {
                    return Err(Ok(()));
                }
                let take = (buf.len() as u64).min(left) as usize;
                let data = buf.split_to(take).freeze();
                let left = left - take as u64;
                self.framing = Framing::Chunked(if left == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(left)
                });
                Ok(Some(Frame::data(data)))
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Err(Ok(()));
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Err("the answer's chunked encoding is malformed".into()));
                }
                buf.advance(2);
                self.framing = Framing::Chunked(Chunk::Size);
                self.step_chunked(max_head)
            }
            Chunk::Trailers => {
                let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
                match httparse::parse_headers(buf, &mut slots) {
                    Ok(httparse::Status::Complete((n, fields))) => {
                        let mut trailers = HeaderMap::new();
                        for f in fields {
                            if let (Ok(k), Ok(v)) = (
                                HeaderName::from_bytes(f.name.as_bytes()),
                                HeaderValue::from_bytes(f.value),
                            ) {
                                trailers.append(k, v);
                            }
                        }
                        buf.advance(n);
                        self.framing = Framing::Done;
                        Ok((!trailers.is_empty()).then(|| Frame::trailers(trailers)))
                    }
                    Ok(httparse::Status::Partial) if buf.len() > max_head => {
                        Err(Err("the answer's trailers are too long".into()))
                    }
                    Ok(httparse::Status::Partial) => Err(Ok(())),
                    Err(e) => Err(Err(format!("the answer's trailers are malformed ({e})"))),
                }
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            this.finish_if_done();
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            // Use what is buffered first.
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(left) if !conn.buf.is_empty() => {
                    let take = (conn.buf.len() as u64).min(left) as usize;
                    let data = conn.buf.split_to(take).freeze();
                    this.framing = Framing::Length(left - take as u64);
                    this.finish_if_done();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Close if !conn.buf.is_empty() => {
                    let data = conn.buf.split().freeze();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Framing::Chunked(_) => match this.step_chunked(this.pool.max_head) {
                    Ok(Some(frame)) => {
                        this.finish_if_done();
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    Ok(None) => continue,
                    Err(Err(m)) => return this.fail(m),
                    Err(Ok(())) => {}
                },
                _ => {}
            }
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            match poll_read_buf(&mut conn.stream, cx, &mut conn.buf) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return this.fail(format!("reading the answer's body: {e}")),
                Poll::Ready(Ok(0)) => {
                    if matches!(this.framing, Framing::Close) {
                        this.conn = None;
                        this.framing = Framing::Done;
                        return Poll::Ready(None);
                    }
                    return this
                        .fail("the endpoint closed the connection before the answer's end".into());
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.framing, Framing::Done | Framing::Length(0))
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            Framing::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}

/// Serializes a request head for an endpoint: the client's headers without hop-by-hop
/// ones, `Expect` and its framing; then `x-forwarded-for` (appended to), the proto, the
/// unit, zone and slot; then this request's framing.
pub struct RequestHead<'a> {
    pub method: &'a Method,
    pub target: &'a str,
    pub headers: &'a HeaderMap,
    /// Written as `Host` when the client sent none (HTTP/2 requests carry the authority).
    pub authority: Option<&'a str>,
    pub client: std::net::IpAddr,
    pub secure: bool,
    pub unit: &'a str,
    pub zone: &'a str,
    pub slot: Option<u8>,
}

/// What the request's body looks like on the wire.
pub enum Framed {
    Length(u64),
    Chunked,
}

impl RequestHead<'_> {
    pub fn encode(&self, framed: Framed) -> Vec<u8> {
        let mut out = Vec::with_capacity(256 + self.target.len() + 32 * self.headers.len());
        out.extend_from_slice(self.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(self.target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let named = connection_named(self.headers);
        let mut xff: Option<Vec<u8>> = None;
        let mut has_host = false;
        for (name, value) in self.headers {
            if name == header::HOST {
                has_host = true;
            } else if name.as_str() == "x-forwarded-for" {
                let x = xff.get_or_insert_with(Vec::new);
                if !x.is_empty() {
                    x.extend_from_slice(b", ");
                }
                x.extend_from_slice(value.as_bytes());
                continue;
            } else if super::is_hop_by_hop(name)
                || name == header::CONTENT_LENGTH
                || name == header::EXPECT
                || matches!(
                    name.as_str(),
                    "x-forwarded-proto" | "x-tessera-unit" | "x-tessera-zone" | "x-tessera-slot"
                )
                || named.iter().any(|n| n == name)
            {
                continue;
            }
            line(&mut out, name.as_str().as_bytes(), value.as_bytes());
        }
        if !has_host {
            if let Some(a) = self.authority {
                line(&mut out, b"host", a.as_bytes());
            }
        }
        let ip = self.client.to_string();
        match xff {
            Some(mut x) => {
                x.extend_from_slice(b", ");
                x.extend_from_slice(ip.as_bytes());
                line(&mut out, b"x-forwarded-for", &x);
            }
            None => line(&mut out, b"x-forwarded-for", ip.as_bytes()),
        }
        let proto: &[u8] = if self.secure { b"https" } else { b"http" };
        line(&mut out, b"x-forwarded-proto", proto);
        line(&mut out, b"x-tessera-unit", field(self.unit));
        line(&mut out, b"x-tessera-zone", field(self.zone));
        if let Some(s) = self.slot {
            line(&mut out, b"x-tessera-slot", format!("{s:02}").as_bytes());
        }
        match framed {
            Framed::Length(0)
                if !matches!(*self.method, Method::POST | Method::PUT | Method::PATCH) => {}
            Framed::Length(n) => line(&mut out, b"content-length", n.to_string().as_bytes()),
            Framed::Chunked => line(&mut out, b"transfer-encoding", b"chunked"),
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A name from the route table as a header value: `-` unless it is plain visible ASCII.
fn field(s: &str) -> &[u8] {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()) {
        s.as_bytes()
    } else {
        b"-"
    }
}

/// Header names the client listed in `Connection` (hop-by-hop by declaration).
fn connection_named(h: &HeaderMap) -> Vec<HeaderName> {
    let mut out = Vec::new();
    for v in h.get_all(header::CONNECTION) {
        for token in v.as_bytes().split(|b| *b == b',') {
            if let Ok(n) = HeaderName::from_bytes(token.trim_ascii()) {
                out.push(n);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
