//! Per-request context: a request id (the client's `x-request-id`, or a new one) echoed
//! in the answer, and the client's address for audit events. On the API listener the
//! address is the TCP peer; on the peer listener (requests a follower forwarded, from a
//! member certificate only) it is the `x-tessera-forwarded-for` the follower set.

use axum::extract::{ConnectInfo, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use std::net::SocketAddr;

pub const REQUEST_ID: &str = "x-request-id";
pub const FORWARDED_FOR: &str = "x-tessera-forwarded-for";

#[derive(Clone, Debug)]
pub struct RequestContext {
    pub request_id: String,
    /// The client's IP address (`unknown` if the listener does not say).
    pub source: String,
}

fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        // Unique enough to correlate log lines and audit entries, and not a secret: no
        // need for the kernel's CSPRNG (and an open, read, close) per request.
        .unwrap_or_else(|| format!("{:016x}{:08x}", fastrand::u64(..), fastrand::u32(..)))
}

async fn finish(mut req: Request, next: Next, source: String) -> Response {
    let ctx = RequestContext {
        request_id: request_id(&req),
        source,
    };
    let id = HeaderValue::from_str(&ctx.request_id).ok();
    // As headers too, so a request forwarded to the leader carries both.
    if let Some(id) = &id {
        req.headers_mut().insert(REQUEST_ID, id.clone());
    }
    if let Ok(v) = HeaderValue::from_str(&ctx.source) {
        req.headers_mut().insert(FORWARDED_FOR, v);
    }
    req.extensions_mut().insert(ctx);
    let mut resp = next.run(req).await;
    if let Some(id) = id {
        resp.headers_mut().insert(REQUEST_ID, id);
    }
    resp
}

/// For the API listener: the TCP peer is the client. A client's own
/// `x-tessera-forwarded-for` is replaced.
pub async fn direct(req: Request, next: Next) -> Response {
    let source = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
        .unwrap_or_else(|| "unknown".into());
    finish(req, next, source).await
}

/// For the peer listener's API (member certificates only): the forwarding member says
/// who the client was.
pub async fn forwarded(req: Request, next: Next) -> Response {
    let source = req
        .headers()
        .get(FORWARDED_FOR)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| ip.to_string())
        .unwrap_or_else(|| "unknown".into());
    finish(req, next, source).await
}
