//! Headers between the client, the gateway and an endpoint: what is never forwarded
//! (hop-by-hop), what the gateway adds on the way up (`x-forwarded-*`, the unit, zone and
//! slot), and the answers the gateway gives itself.

use super::RespBody;
use crate::gateway::table::{header_value, Route};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::{Either, Full};
use serde_json::json;
use std::net::SocketAddr;

const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    header::PROXY_AUTHORIZATION,
];

/// A header that concerns one connection only, never forwarded.
pub(super) fn is_hop_by_hop(n: &HeaderName) -> bool {
    HOP_BY_HOP.contains(n) || matches!(n.as_str(), "keep-alive" | "proxy-connection")
}

pub(super) fn strip_hop_by_hop(h: &mut HeaderMap) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in HOP_BY_HOP.iter().chain(named.iter()) {
        h.remove(n);
    }
    h.remove("keep-alive");
    h.remove("proxy-connection");
}

/// The request's headers as the upstream gets them: hop-by-hop headers removed, `Host`
/// kept, `x-forwarded-for`/`-proto` and the unit, zone and slot added.
pub(super) fn upstream_headers(
    headers: &mut HeaderMap,
    uri: &http::Uri,
    client: SocketAddr,
    secure: bool,
    route: &Route<'_>,
) {
    strip_hop_by_hop(headers);
    if !headers.contains_key(header::HOST) {
        if let Some(a) = uri.authority() {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                headers.insert(header::HOST, v);
            }
        }
    }
    let xff = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {}", client.ip()),
        None => client.ip().to_string(),
    };
    headers.insert("x-forwarded-for", header_value(&xff));
    headers.insert(
        "x-forwarded-proto",
        HeaderValue::from_static(if secure { "https" } else { "http" }),
    );
    headers.insert(X_UNIT, route.unit_hv.clone());
    headers.insert(X_ZONE, route.zone_hv.clone());
    if let Some(s) = route.slot {
        headers.insert("x-tessera-slot", header_value(&format!("{s:02}")));
    }
}

pub(super) fn upstream_uri(
    authority: &http::uri::Authority,
    pq: &http::uri::PathAndQuery,
) -> http::Uri {
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority.clone());
    parts.path_and_query = Some(pq.clone());
    // ok: scheme, authority and path are all set, which is all from_parts checks
    http::Uri::from_parts(parts).unwrap_or_default()
}

/// Parsed once: inserting by `&'static str` validates the name on every request.
pub(super) const X_UNIT: HeaderName = HeaderName::from_static("x-tessera-unit");
pub(super) const X_ZONE: HeaderName = HeaderName::from_static("x-tessera-zone");

/// An answer the gateway gives itself, JSON with a reason header.
pub(super) fn own(
    status: u16,
    reason: &'static str,
    message: &str,
    extra: &[(&'static str, &str)],
) -> Response<RespBody> {
    let body = json!({"code": reason, "message": message}).to_string();
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert("x-tessera-reason", HeaderValue::from_static(reason));
    for (k, v) in extra {
        h.insert(*k, header_value(v));
    }
    r
}
