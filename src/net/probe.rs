//! Reachability of the control plane from the client roles: a periodic `GET /healthz`
//! against each control URL, exported as a gauge and, for roles that need the control
//! plane to work, as readiness.

use super::resolve::Resolver;
use crate::config::Role;
use crate::telemetry::Health;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::rt::TokioIo;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Answers whether `url`'s `/healthz` says 200, with the reason when it does not.
pub async fn healthz(resolver: &Resolver, url: &http::Uri) -> Result<(), String> {
    let host = url.host().ok_or("URL has no host")?;
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let addrs = resolver
        .resolve(host, port)
        .await
        .map_err(|e| e.to_string())?;
    let mut last = String::from("no address");
    for addr in addrs {
        match tokio::time::timeout(PROBE_TIMEOUT, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) if https => {
                // TLS to the control plane arrives with the roles' mTLS; until then an
                // https URL is checked for a listening socket only.
                drop(stream);
                return Ok(());
            }
            Ok(Ok(stream)) => return get_healthz(stream, url).await,
            Ok(Err(e)) => last = format!("{addr}: {e}"),
            Err(_) => last = format!("{addr}: connect timed out"),
        }
    }
    Err(last)
}

async fn get_healthz(stream: TcpStream, url: &http::Uri) -> Result<(), String> {
    let exchange = async {
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let authority = url.authority().map(|a| a.as_str()).unwrap_or("localhost");
        let req = http::Request::get("/healthz")
            .header(http::header::HOST, authority)
            .header(
                http::header::USER_AGENT,
                concat!("tessera/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        if resp.status() == http::StatusCode::OK {
            Ok(())
        } else {
            Err(format!("/healthz answered {}", resp.status()))
        }
    };
    tokio::time::timeout(PROBE_TIMEOUT, exchange)
        .await
        .map_err(|_| "request timed out".to_string())?
}

/// Probes `urls` every `every` until `shutdown`; sets `gauge` and, when `gate` is given,
/// the role's readiness, logging each change once.
pub async fn watch_control(
    role: Role,
    urls: Vec<http::Uri>,
    every: Duration,
    gauge: prometheus::IntGauge,
    gate: Option<Health>,
    shutdown: CancellationToken,
) {
    let resolver = Arc::new(Resolver::default());
    let mut reachable: Option<bool> = None;
    loop {
        let mut errors = Vec::new();
        let mut ok = false;
        for u in &urls {
            match healthz(&resolver, u).await {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(e) => errors.push(format!("{u}: {e}")),
            }
        }
        gauge.set(i64::from(ok));
        if reachable != Some(ok) {
            if ok {
                tracing::info!(%role, "Control plane reachable");
            } else {
                tracing::warn!(%role, errors = %errors.join("; "), "Control plane unreachable");
            }
            reachable = Some(ok);
        }
        if let Some(h) = &gate {
            if ok {
                h.set_ready();
            } else {
                h.set_not_ready(format!("control plane unreachable: {}", errors.join("; ")));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}
