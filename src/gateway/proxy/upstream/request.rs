//! The request as an endpoint gets it: its head serialized from the client's, and its
//! body written whole or as it streams in.

use super::{Exchange, OutBody, COALESCE_MAX};
use http::header::{self, HeaderMap, HeaderName};
use http::Method;
use hyper::body::Body;
use std::io;
use std::pin::Pin;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub(super) async fn write_request(
    stream: &mut TcpStream,
    head: &[u8],
    body: OutBody,
) -> Result<(), Exchange> {
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
        // Boxed: a streamed body is rare next to a small one read in full, and this state
        // would otherwise make every request's future larger.
        OutBody::Stream(body, declared) => {
            Box::pin(write_streamed(stream, head, body, declared)).await
        }
    }
}

/// The head, then a body as it arrives: chunked unless its length was declared.
async fn write_streamed(
    stream: &mut TcpStream,
    head: &[u8],
    mut body: super::UpBody,
    declared: Option<u64>,
) -> Result<(), Exchange> {
    let silent = |e: io::Error| Exchange::Silent(format!("writing the request: {e}"));
    stream.write_all(head).await.map_err(silent)?;
    let failed = |m: String| Exchange::Failed(format!("sending the request body: {m}"));
    let chunked = declared.is_none();
    let mut sent = 0u64;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
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
            } else if super::super::is_hop_by_hop(name)
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
        let mut x = xff.unwrap_or_default();
        if !x.is_empty() {
            x.extend_from_slice(b", ");
        }
        write_ip(&mut x, self.client);
        line(&mut out, b"x-forwarded-for", &x);
        let proto: &[u8] = if self.secure { b"https" } else { b"http" };
        line(&mut out, b"x-forwarded-proto", proto);
        line(&mut out, b"x-tessera-unit", field(self.unit));
        line(&mut out, b"x-tessera-zone", field(self.zone));
        if let Some(s) = self.slot {
            line(
                &mut out,
                b"x-tessera-slot",
                &[b'0' + s / 10 % 10, b'0' + s % 10],
            );
        }
        match framed {
            Framed::Length(0)
                if !matches!(*self.method, Method::POST | Method::PUT | Method::PATCH) => {}
            Framed::Length(n) => line(
                &mut out,
                b"content-length",
                itoa::Buffer::new().format(n).as_bytes(),
            ),
            Framed::Chunked => line(&mut out, b"transfer-encoding", b"chunked"),
        }
        out.extend_from_slice(b"\r\n");
        out
    }
}

/// An address as text; IPv4 without `fmt` (this runs for every request).
fn write_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut b = itoa::Buffer::new();
            for (i, o) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(b.format(o).as_bytes());
            }
        }
        std::net::IpAddr::V6(_) => out.extend_from_slice(ip.to_string().as_bytes()),
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
