//! Forwarding a request to the leader when this node is a follower, so clients may talk
//! to any control node. One hop only: a forwarded request that lands on a non-leader
//! answers 503 instead of bouncing.

use super::error::ApiError;
use crate::control::store::types::NodeInfo;
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::Full;
use std::time::Duration;

pub const FORWARDED: &str = "x-tessera-forwarded";

/// Marks a response that is the leader's answer to a forwarded request (the leader
/// has already audited the change).
#[derive(Clone, Copy, Debug)]
pub struct Forwarded;
const TIMEOUT: Duration = Duration::from_secs(10);

/// The path and query of `uri`, as forwarded.
pub fn path_and_query(uri: &http::Uri) -> String {
    uri.path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| uri.path().to_string())
}

/// Why this node cannot answer and who can.
pub fn not_leader(leader: Option<NodeInfo>, headers: &HeaderMap) -> Result<NodeInfo, ApiError> {
    if headers.contains_key(FORWARDED) {
        return Err(ApiError::unavailable("leadership is changing; retry"));
    }
    leader.ok_or_else(|| {
        ApiError::unavailable("no leader is known yet (election in progress or no quorum); retry")
    })
}

/// Sends the same request to `leader` over the peer channel (mutual TLS between
/// members, so the caller's token never crosses the network in the clear) and relays
/// its answer. The leader serves the forwarded request from its peer listener, which
/// offers the API to member certificates only.
pub async fn to_leader(
    state: &super::ApiState,
    leader: &NodeInfo,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    let mut req = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(FORWARDED, "1");
    // The context middleware has set who the client is and the request id.
    for name in [
        http::header::AUTHORIZATION,
        http::header::CONTENT_TYPE,
        http::header::ACCEPT,
        http::HeaderName::from_static(super::context::FORWARDED_FOR),
        http::HeaderName::from_static(super::context::REQUEST_ID),
    ] {
        if let Some(v) = headers.get(&name) {
            req = req.header(name, v);
        }
    }
    let sent = match req.body(Full::new(body)) {
        Ok(req) => state.node.forward(leader, req, TIMEOUT).await,
        Err(e) => Err(e.to_string()),
    };
    match sent {
        Ok(r) => {
            let (parts, bytes) = r.into_parts();
            let mut resp = Response::from_parts(parts, Body::from(bytes));
            resp.extensions_mut().insert(Forwarded);
            resp
        }
        Err(e) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "leader_unreachable",
            format!("forwarding to the leader {} failed: {e}", leader.name),
        )
        .into_response(),
    }
}
