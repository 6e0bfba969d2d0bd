//! The answer from an endpoint: its head parsed (framing per RFC 9112 §6.3), and its
//! body read from the connection as the client takes it, chunks decoded.

use super::super::BoxError;
use super::{poll_read_buf, Conn, Exchange, Upstreams, MAX_CHUNK_LINE, MAX_HEADERS};
use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, Response, StatusCode};
use hyper::body::{Body, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

/// A parsed answer head: owned, so the buffer can be advanced past it.
pub(super) struct Head {
    pub(super) status: StatusCode,
    minor: u8,
    headers: HeaderMap,
    /// The first `Content-Length` value seen, and how many were seen (in all fields).
    length: Option<u64>,
    lengths: u32,
    /// A value that is not a number, or two that differ.
    bad_length: bool,
    /// `Transfer-Encoding` with `chunked` last, and whether it was present at all.
    chunked: bool,
    transfer_encoding: bool,
    close: bool,
    keep_alive: bool,
}

/// Parses an answer head at the start of `buf` and advances past it; `None` if more
/// bytes are needed.
pub(super) fn parse_head(buf: &mut BytesMut, max_head: usize) -> Result<Option<Head>, String> {
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
        length: None,
        lengths: 0,
        bad_length: false,
        chunked: false,
        transfer_encoding: false,
        close: false,
        keep_alive: false,
    };
    let mut named_hop: Vec<HeaderName> = Vec::new();
    // Values are kept as offsets and then cut from the head without copying.
    let base = buf.as_ptr() as usize;
    let mut kept: Vec<(HeaderName, usize, usize)> = Vec::with_capacity(r.headers.len());
    for raw in r.headers.iter() {
        let name = HeaderName::from_bytes(raw.name.as_bytes())
            .map_err(|_| format!("the answer has an invalid header name {:?}", raw.name))?;
        if name == header::CONTENT_LENGTH {
            for part in raw.value.split(|b| *b == b',') {
                match std::str::from_utf8(part).ok().map(str::trim).and_then(|s| {
                    (!s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .then(|| s.parse::<u64>().ok())
                        .flatten()
                }) {
                    Some(v) => {
                        h.lengths += 1;
                        match h.length {
                            None => h.length = Some(v),
                            Some(first) if first != v => h.bad_length = true,
                            Some(_) => {}
                        }
                    }
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
        } else if super::super::is_hop_by_hop(&name) {
            continue;
        }
        let start = if raw.value.is_empty() {
            0
        } else {
            (raw.value.as_ptr() as usize).wrapping_sub(base)
        };
        let end = start.saturating_add(raw.value.len());
        if end > n {
            return Err(format!("the answer's header {name} is outside its head"));
        }
        kept.push((name, start, end));
    }
    let head = buf.split_to(n).freeze();
    for (name, start, end) in kept {
        if named_hop.contains(&name) {
            continue;
        }
        let value = HeaderValue::from_maybe_shared(head.slice(start..end))
            .map_err(|_| format!("the answer's header {name} has an invalid value"))?;
        h.headers.append(name, value);
    }
    Ok(Some(h))
}

impl Head {
    /// The answer for the client, its body's framing, and whether the connection may be
    /// reused afterwards.
    pub(super) fn into_response(
        self,
        method: &Method,
    ) -> Result<(Response<()>, Framing, bool), Exchange> {
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
            if let Some(v) = self.length.filter(|_| !self.bad_length) {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(v));
            }
            (Framing::Length(0), persistent)
        } else if self.transfer_encoding {
            // Transfer-Encoding overrides Content-Length; the pair is a smuggling
            // attempt or a broken endpoint, so the connection is not reused.
            let reusable = persistent && self.lengths == 0 && !self.bad_length;
            if self.chunked {
                (Framing::Chunked(Chunk::Size), reusable)
            } else {
                (Framing::Close, false)
            }
        } else if self.bad_length {
            return Err(Exchange::Failed(
                "the answer's Content-Length is invalid or ambiguous".into(),
            ));
        } else if let Some(n) = self.length {
            // One plain value goes through as sent; repeated ones (equal) become one.
            if self.lengths > 1 {
                headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
            }
            (Framing::Length(n), persistent)
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
pub(super) enum Framing {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Chunk {
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
    pub(super) conn: Option<Conn>,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
    pub(super) pool: Arc<Upstreams>,
    pub(super) addr: SocketAddr,
}

impl UpstreamBody {
    /// Once the body is complete, the connection goes back to the pool (or is closed).
    pub(super) fn finish_if_done(&mut self) {
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
