//! Protocol switches through the gateway (`Connection: upgrade`, WebSocket above all):
//! the request is routed like any other (rule, unit, zone, endpoint), sent to one
//! endpoint with its `Upgrade` header, and when the endpoint answers `101 Switching
//! Protocols` the two connections are joined byte for byte until either side closes. The
//! tunnel counts as in flight on its endpoint while it lasts, so a draining endpoint is
//! not reported drained under an open WebSocket. No retries: a switch is not idempotent.

use super::{own, pick, strip_hop_by_hop, upstream_headers, upstream_uri, Gateway, InFlight};
use super::{RespBody, UpBody};
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Either, Empty, Full};
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// The protocol a request asks to switch to (HTTP/1.1 `Connection: upgrade` with an
/// `Upgrade` header).
pub(super) fn requested(parts: &http::request::Parts) -> Option<HeaderValue> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let asks = parts
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if asks {
        parts.headers.get(header::UPGRADE).cloned()
    } else {
        None
    }
}

impl Gateway {
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn tunnel(
        self: Arc<Self>,
        mut parts: http::request::Parts,
        protocol: HeaderValue,
        route: super::super::table::Route<'_>,
        host: String,
        client: SocketAddr,
        secure: bool,
        start: Instant,
    ) -> Response<RespBody> {
        let method = parts.method.clone();
        let path = parts.uri.path().to_string();
        let log = |g: &Gateway, upstream: Option<&SocketAddr>, status: u16, reason: &str| {
            g.finish(
                Some(&route),
                &method,
                &host,
                &path,
                &route.rule.name,
                &route.unit,
                &route.zone,
                upstream,
                status,
                reason,
                start,
                1,
                client,
            );
        };
        let Some(from_client) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
            log(&self, None, 400, "upgrade-unsupported");
            return own(
                400,
                "upgrade-unsupported",
                "this connection cannot switch protocols",
                &[],
            );
        };
        let Some(ep) = pick(&route.candidates, &[]) else {
            log(&self, None, 503, "no-endpoint");
            return own(
                503,
                "no-endpoint",
                &format!("unit {} has no endpoint", route.unit),
                &[],
            );
        };
        upstream_headers(&mut parts.headers, &parts.uri, client, secure, &route);
        parts
            .headers
            .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(header::UPGRADE, protocol);
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
        let empty: UpBody = Empty::<Bytes>::new()
            .map_err(|e: Infallible| -> super::BoxError { match e {} })
            .boxed_unsync();
        let mut up = Request::new(empty);
        *up.method_mut() = parts.method.clone();
        *up.uri_mut() = upstream_uri(&ep.authority, &pq);
        *up.version_mut() = Version::HTTP_11;
        *up.headers_mut() = std::mem::take(&mut parts.headers);
        let guard = InFlight::new(&ep.state);
        let answer = tokio::time::timeout(route.rule.timeout, self.client.request(up)).await;
        let mut resp = match answer {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                log(&self, Some(&ep.addr), 502, "upstream-error");
                return own(
                    502,
                    "upstream-error",
                    &format!("unit {}: {e}", route.unit),
                    &[],
                );
            }
            Err(_) => {
                log(&self, Some(&ep.addr), 504, "upstream-timeout");
                return own(
                    504,
                    "upstream-timeout",
                    &format!("unit {} did not answer", route.unit),
                    &[],
                );
            }
        };
        let status = resp.status();
        let unit = route.unit_hv.clone();
        let zone = route.zone_hv.clone();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            // The endpoint declined: its answer goes back as is.
            log(&self, Some(&ep.addr), status.as_u16(), "");
            let (mut rp, rb) = resp.into_parts();
            strip_hop_by_hop(&mut rp.headers);
            rp.headers.insert("x-tessera-unit", unit);
            rp.headers.insert("x-tessera-zone", zone);
            let body = rb.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return Response::from_parts(rp, Either::Right(Full::new(body)));
        }
        let to_upstream = hyper::upgrade::on(&mut resp);
        let (mut rp, _) = resp.into_parts();
        rp.headers.insert("x-tessera-unit", unit);
        rp.headers.insert("x-tessera-zone", zone);
        log(&self, Some(&ep.addr), 101, "");
        let tunnels = self.metrics.tunnels.clone();
        let endpoint = ep.addr;
        tokio::spawn(async move {
            let _in_flight = guard;
            match tokio::try_join!(from_client, to_upstream) {
                Ok((c, u)) => {
                    tunnels.inc();
                    let (mut c, mut u) = (TokioIo::new(c), TokioIo::new(u));
                    let copied = tokio::io::copy_bidirectional(&mut c, &mut u).await;
                    tunnels.dec();
                    tracing::debug!(%endpoint, ?copied, "A protocol-switch tunnel closed");
                }
                Err(e) => {
                    tracing::debug!(%endpoint, error = %e, "A protocol switch did not complete")
                }
            }
        });
        Response::from_parts(rp, Either::Right(Full::new(Bytes::new())))
    }
}
