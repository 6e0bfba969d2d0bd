//! Forwarding a request to the leader when this node is a follower, so clients may talk
//! to any control node. One hop only: a forwarded request that lands on a non-leader
//! answers 503 instead of bouncing.

use super::error::ApiError;
use crate::control::store::types::NodeInfo;
use axum::body::Body;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use std::time::Duration;

pub const FORWARDED: &str = "x-tessera-forwarded";
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

/// Sends the same request to `leader` and relays its answer.
pub async fn to_leader(
    state: &super::ApiState,
    leader: &NodeInfo,
    method: Method,
    path_and_query: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Response {
    match send(state.egress, leader, method, path_and_query, headers, body).await {
        Ok(r) => r,
        Err(e) => ApiError::new(
            StatusCode::BAD_GATEWAY,
            "leader_unreachable",
            format!("forwarding to the leader {} failed: {e}", leader.name),
        )
        .into_response(),
    }
}

async fn send(
    egress: Option<std::net::IpAddr>,
    leader: &NodeInfo,
    method: Method,
    pq: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, String> {
    let uri: http::Uri = leader
        .api
        .parse()
        .map_err(|e| format!("leader URL {}: {e}", leader.api))?;
    let authority = uri
        .authority()
        .ok_or("leader URL has no host")?
        .as_str()
        .to_string();
    let addr: std::net::SocketAddr = authority
        .parse()
        .map_err(|_| format!("leader address {authority} is not IP:PORT"))?;
    let exchange = async {
        let stream = crate::net::connect_from(addr, egress)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = http::Request::builder()
            .method(method)
            .uri(pq)
            .header(http::header::HOST, &authority)
            .header(FORWARDED, "1");
        for name in [
            http::header::AUTHORIZATION,
            http::header::CONTENT_TYPE,
            http::header::ACCEPT,
        ] {
            if let Some(v) = headers.get(&name) {
                req = req.header(name, v);
            }
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let (parts, body) = resp.into_parts();
        let bytes = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
        Ok::<_, String>(Response::from_parts(parts, Body::from(bytes)))
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| "timed out".to_string())?
}
