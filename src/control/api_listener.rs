//! The API listener: HTTP and HTTPS on one port (`net::dual`). HTTPS uses this node's
//! certificate from the cluster CA (it names the node's advertised API IP), renewed in
//! place; until a node has its certificate (a joining node), TLS connections are closed.
//! Plain HTTP stays for `http://127.0.0.1:7400` (CONTRACT.md's default) and for callers
//! on a trusted network; with `control.api_plain_http = "loopback"` a plain request from
//! another machine gets 403 `https_required` (health probes excepted).

use crate::config::PlainHttp;
use crate::net::dual;
use crate::pki::TlsHandle;
use axum::Router;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `router` on `listener` until `shutdown` fires, then lets in-flight requests
/// finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: TlsHandle,
    plain: PlainHttp,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let gate: dual::PlainGate = Arc::new(move |peer, path| {
        (refuses_plain(plain, peer.ip()) && !matches!(path, "/healthz" | "/readyz")).then(|| {
            dual::https_required("this API accepts plain HTTP from its own machine only (control.api_plain_http = \"loopback\"); use https:// with the cluster CA")
        })
    });
    let source: dual::TlsSource = Arc::new(move || tls.api_server());
    dual::serve("api", listener, router, source, gate, shutdown).await
}

/// Whether a plain HTTP client at `ip` gets 403 (see `control.api_plain_http`).
fn refuses_plain(plain: PlainHttp, ip: std::net::IpAddr) -> bool {
    plain == PlainHttp::Loopback && !dual::is_loopback(ip)
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
