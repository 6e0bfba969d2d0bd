//! HTTP and HTTPS on one port. The first byte of a connection says which: a TLS
//! handshake starts with 0x16 (a handshake record), which no HTTP request does. The TLS
//! configuration is read for each new connection, so a certificate that arrives or is
//! renewed while the listener runs applies at once; until there is one, TLS connections
//! are closed. A gate may refuse requests that came over plain HTTP (what the control
//! API and the agent's listener do with it is theirs to say).

use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tower::Service;

/// How long a new connection may take to send its first byte, and its TLS handshake.
const FIRST_BYTES: Duration = Duration::from_secs(10);
/// The first byte of a TLS record carrying a handshake.
const TLS_HANDSHAKE: u8 = 0x16;

/// The current TLS configuration, if any.
pub type TlsSource = Arc<dyn Fn() -> Option<Arc<rustls::ServerConfig>> + Send + Sync>;
/// Given a plain-HTTP request's client and path, the answer that refuses it, if it is
/// refused.
pub type PlainGate = Arc<dyn Fn(SocketAddr, &str) -> Option<Response> + Send + Sync>;

/// How a request reached the listener, in its extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Plain,
    Tls,
}

/// Serves `router` on `listener` until `shutdown` fires, then lets in-flight requests
/// finish (as `axum::serve` with graceful shutdown does). `what` names the listener in
/// logs.
pub async fn serve(
    what: &'static str,
    listener: TcpListener,
    router: Router,
    tls: TlsSource,
    gate: PlainGate,
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
                    tracing::warn!(listener = what, error = %e, "Accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let (router, builder, tls, gate, watcher) = (
            router.clone(),
            builder.clone(),
            tls.clone(),
            gate.clone(),
            graceful.watcher(),
        );
        tokio::spawn(async move {
            let Some(first) = first_byte(&stream).await else {
                return;
            };
            let transport = if first == TLS_HANDSHAKE {
                Transport::Tls
            } else {
                Transport::Plain
            };
            let service = hyper::service::service_fn(move |mut req: http::Request<Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req.extensions_mut().insert(transport);
                let refused = match transport {
                    Transport::Plain => gate(peer, req.uri().path()),
                    Transport::Tls => None,
                };
                let mut router = router.clone();
                async move {
                    match refused {
                        Some(answer) => Ok(answer),
                        None => router.call(req).await,
                    }
                }
            });
            if transport == Transport::Plain {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                return ended(what, watcher.watch(conn.into_owned()).await, peer);
            }
            let Some(config) = tls() else {
                tracing::debug!(listener = what, client = %peer, "TLS before this node has its certificate; closed");
                return;
            };
            let accept = tokio_rustls::TlsAcceptor::from(config).accept(stream);
            let stream = match tokio::time::timeout(FIRST_BYTES, accept).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(listener = what, client = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(listener = what, client = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            ended(what, watcher.watch(conn.into_owned()).await, peer);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

fn ended<E: std::fmt::Display>(what: &'static str, result: Result<(), E>, peer: SocketAddr) {
    if let Err(e) = result {
        tracing::debug!(listener = what, client = %peer, error = %e, "Connection ended with an error");
    }
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

/// A JSON 403 `https_required` with `message`.
pub fn https_required(message: &str) -> Response {
    use axum::response::IntoResponse;
    let body = serde_json::json!({"code": "https_required", "message": message});
    (http::StatusCode::FORBIDDEN, axum::Json(body)).into_response()
}

/// Whether `ip` is this machine's (a loopback address, also IPv4-mapped).
pub fn is_loopback(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}
