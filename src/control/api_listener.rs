//! The API listener: HTTP and HTTPS on one port. The first byte of a connection says
//! which: a TLS handshake starts with 0x16 (a handshake record), which no HTTP request
//! does. HTTPS uses this node's certificate from the cluster CA (it names the node's
//! advertised API IP), renewed in place; until a node has its certificate (a joining
//! node), TLS connections are closed. Plain HTTP stays for `http://127.0.0.1:7400`
//! (CONTRACT.md's default) and for callers on a trusted network; with
//! `control.api_plain_http = "loopback"` a plain request from another machine gets 403
//! `https_required` (health probes excepted).

use crate::config::PlainHttp;
use crate::pki::TlsHandle;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::Service;

/// How long a new connection may take to send its first byte, and its TLS handshake.
const FIRST_BYTES: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// Serves `router` on `listener` until `shutdown` fires, then lets in-flight requests
/// finish (as `axum::serve` with graceful shutdown does).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: TlsHandle,
    plain: PlainHttp,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "Accepting an API connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (router, builder, tls, watcher) = (
            router.clone(),
            builder.clone(),
            tls.clone(),
            graceful.watcher(),
        );
        tokio::spawn(async move {
            let first = first_byte(&stream).await;
            // Plain HTTP from another machine, where only this one may use it.
            let refuse = first != Some(TLS_HANDSHAKE) && refuses_plain(plain, peer.ip());
            let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                let mut router = router.clone();
                async move {
                    if refuse && !matches!(req.uri().path(), "/healthz" | "/readyz") {
                        return Ok(https_required());
                    }
                    router.call(req).await
                }
            });
            match first {
                Some(TLS_HANDSHAKE) => {
                    let Some(config) = tls.api_server() else {
                        tracing::debug!(client = %peer, "HTTPS before this node has its certificate; closed");
                        return;
                    };
                    let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
                    let stream = match tokio::time::timeout(FIRST_BYTES, accept).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(client = %peer, error = %e, "API TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(client = %peer, "API TLS handshake timed out");
                            return;
                        }
                    };
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    ended(watcher.watch(conn.into_owned()).await, peer);
                }
                Some(_) => {
                    let conn =
                        builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    ended(watcher.watch(conn.into_owned()).await, peer);
                }
                None => {}
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn ended<E: std::fmt::Display>(result: Result<(), E>, peer: std::net::SocketAddr) {
    if let Err(e) = result {
        tracing::debug!(client = %peer, error = %e, "API connection ended with an error");
    }
}

/// Whether a plain HTTP client at `ip` gets 403 (see `control.api_plain_http`).
fn refuses_plain(plain: PlainHttp, ip: std::net::IpAddr) -> bool {
    let loopback = match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    };
    plain == PlainHttp::Loopback && !loopback
}

fn https_required() -> axum::response::Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({
        "code": "https_required",
        "message": "this API accepts plain HTTP from its own machine only (control.api_plain_http = \"loopback\"); use https:// with the cluster CA",
    });
    (http::StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// The connection's first byte, without taking it; None if the client sent nothing in
/// time or closed.
async fn first_byte(stream: &TcpStream) -> Option<u8> {
    let mut b = [0u8; 1];
    match tokio::time::timeout(FIRST_BYTES, stream.peek(&mut b)).await {
        Ok(Ok(1)) => Some(b[0]),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_from_another_machine_is_refused_only_when_asked() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        for local in ["127.0.0.1", "127.0.0.77", "::1", "::ffff:127.0.0.1"] {
            assert!(!refuses_plain(PlainHttp::Loopback, ip(local)), "{local}");
        }
        for remote in ["10.0.1.11", "192.168.0.2", "::ffff:10.0.0.1", "fe80::1"] {
            assert!(refuses_plain(PlainHttp::Loopback, ip(remote)), "{remote}");
            assert!(!refuses_plain(PlainHttp::Any, ip(remote)), "{remote}");
        }
    }
}
