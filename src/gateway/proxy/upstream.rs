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

mod answer;
mod request;

pub use answer::UpstreamBody;
pub use request::{Framed, RequestHead};

use super::UpBody;
use answer::{parse_head, Head};
use bytes::{Bytes, BytesMut};
use http::{Method, Response, StatusCode};
use request::write_request;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;
use tokio::time::{Instant as TokioInstant, Sleep};

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
    /// The connection's deadline timer, kept across requests (see [`by_deadline`]).
    timer: Pin<Box<Sleep>>,
}

/// How an upstream exchange failed.
#[derive(Debug)]
pub enum UpError {
    /// No connection could be made: nothing was sent.
    Connect(String),
    /// Sent, or partly sent, and then failed: a reset, a close, a malformed answer.
    Failed(String),
    /// No answer's head before the deadline.
    Timeout,
}

impl std::fmt::Display for UpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpError::Connect(m) | UpError::Failed(m) => f.write_str(m),
            UpError::Timeout => f.write_str("no answer before the deadline"),
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

    fn checkout(&self, addr: SocketAddr, now: Instant) -> Option<Conn> {
        let mut idle = self.lock();
        let conns = idle.get_mut(&addr)?;
        while let Some(c) = conns.pop() {
            if now.saturating_duration_since(c.last_used) < self.idle_timeout && c.alive() {
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
        let mut idle = self.lock();
        let conns = idle.entry(addr).or_default();
        if conns.len() < self.max_idle_per_host {
            conns.push(conn);
        }
    }

    /// A new connection, by the deadline. Boxed: connecting is rare next to reusing a
    /// pooled connection, and its state would otherwise make every request's future larger
    /// (which is copied as it is built and awaited).
    fn connect_by(
        &self,
        addr: SocketAddr,
        deadline: TokioInstant,
    ) -> Pin<Box<dyn Future<Output = Result<Conn, UpError>> + Send + '_>> {
        Box::pin(async move {
            tokio::time::timeout_at(deadline, self.connect(addr))
                .await
                .unwrap_or(Err(UpError::Timeout))
        })
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
            timer: Box::pin(tokio::time::sleep_until(TokioInstant::now())),
        })
    }

    /// Sends one request (its head already serialized, framing headers included) and
    /// reads the answer's head. The answer's body reads on from the same connection.
    #[cfg(test)]
    pub async fn send(
        self: &Arc<Self>,
        addr: SocketAddr,
        method: &Method,
        head: &[u8],
        body: OutBody,
    ) -> Result<Response<UpstreamBody>, UpError> {
        let deadline = TokioInstant::now() + Duration::from_secs(30);
        self.send_at(addr, method, head, body, Instant::now(), deadline)
            .await
    }

    /// [`send`](Self::send) for a request that started at `now` (one clock read per
    /// request, the caller's), whose answer's head must arrive by `deadline`. A
    /// connection's idle time counts from the start of the last request it carried, which
    /// closes it a little early after a long one, never late.
    pub async fn send_at(
        self: &Arc<Self>,
        addr: SocketAddr,
        method: &Method,
        head: &[u8],
        body: OutBody,
        now: Instant,
        deadline: TokioInstant,
    ) -> Result<Response<UpstreamBody>, UpError> {
        let idempotent = super::idempotent(method);
        let pooled = self.checkout(addr, now);
        let reused = pooled.is_some();
        let mut conn = match pooled {
            Some(c) => c,
            None => self.connect_by(addr, deadline).await?,
        };
        conn.last_used = now;
        if !(reused && idempotent && body.replayable()) {
            return self
                .exchange(addr, conn, method, head, body, deadline)
                .await
                .map_err(Exchange::into_error);
        }
        let OutBody::Full(b) = &body else {
            unreachable!("checked replayable") // ok: replayable() is exactly Full
        };
        let replay = b.clone();
        match self
            .exchange(addr, conn, method, head, body, deadline)
            .await
        {
            Err(Exchange::Silent(e)) => {
                tracing::debug!(endpoint = %addr, error = %e, "A pooled connection was closed; retrying on a new one");
                // Boxed, as connecting: rare, and it would double this future's size.
                Box::pin(async move {
                    let conn = self.connect_by(addr, deadline).await?;
                    self.exchange(addr, conn, method, head, OutBody::Full(replay), deadline)
                        .await
                        .map_err(Exchange::into_error)
                })
                .await
            }
            r => r.map_err(Exchange::into_error),
        }
    }

    async fn exchange(
        self: &Arc<Self>,
        addr: SocketAddr,
        mut conn: Conn,
        method: &Method,
        head: &[u8],
        body: OutBody,
        deadline: TokioInstant,
    ) -> Result<Response<UpstreamBody>, Exchange> {
        let max_head = self.max_head;
        let Conn {
            stream, buf, timer, ..
        } = &mut conn;
        let (resp, framing, keep_alive) = by_deadline(timer, deadline, async {
            write_request(stream, head, body).await?;
            loop {
                let parsed = read_head(stream, buf, max_head).await?;
                // An interim answer (100, 103) was consumed: the real one follows.
                if parsed.status.is_informational()
                    && parsed.status != StatusCode::SWITCHING_PROTOCOLS
                {
                    continue;
                }
                break parsed.into_response(method);
            }
        })
        .await?;
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

/// `inner`, or [`Exchange::Timeout`] at `deadline` if it has not ended by then.
///
/// The timer is the connection's and outlives the request: it is not registered in
/// tokio's timer wheel and removed again per request (which `tokio::time::timeout_at`
/// costs) but only moved when it fires. A timer still set for an earlier request's
/// deadline is moved on to this one's when it fires before it; one set later is moved
/// back at once. So a busy connection costs one timer event per timeout, not two per
/// request, and every request still times out on time.
async fn by_deadline<T>(
    timer: &mut Pin<Box<Sleep>>,
    deadline: TokioInstant,
    inner: impl Future<Output = Result<T, Exchange>>,
) -> Result<T, Exchange> {
    let mut inner = std::pin::pin!(inner);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = inner.as_mut().poll(cx) {
            return Poll::Ready(r);
        }
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
        }
        while timer.as_mut().poll(cx).is_ready() {
            if timer.deadline() >= deadline {
                return Poll::Ready(Err(Exchange::Timeout));
            }
            timer.as_mut().reset(deadline);
        }
        Poll::Pending
    })
    .await
}

/// An exchange's failure, and whether the endpoint had said anything at all.
enum Exchange {
    /// Nothing came back (a closed or reset connection): safe to replay an idempotent
    /// request on a fresh connection.
    Silent(String),
    Failed(String),
    Timeout,
}

impl Exchange {
    fn into_error(self) -> UpError {
        match self {
            Exchange::Silent(m) | Exchange::Failed(m) => UpError::Failed(m),
            Exchange::Timeout => UpError::Timeout,
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

async fn read_head(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    max_head: usize,
) -> Result<Head, Exchange> {
    super::rewind(buf);
    let mut got_any = !buf.is_empty();
    loop {
        if !buf.is_empty() {
            if let Some(h) = parse_head(buf, max_head).map_err(Exchange::Failed)? {
                return Ok(h);
            }
        }
        let n = read_some(stream, buf).await;
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

#[cfg(test)]
mod tests;
