//! The joining side: a control node started with `join = [URLs]` and a token gets its
//! certificate (sending a CSR; the CA it receives must match the fingerprint pinned in
//! the token), then asks to be admitted. The token only ever travels over TLS to the
//! leader's peer listener, after the server proved it holds a certificate from the
//! pinned CA; the join URLs only tell where that is. It retries while the cluster is unreachable or
//! busy and gives up at once when the cluster refuses the token or the name. A node that already
//! joined does not ask again on restart.

use super::store::RaftNode;
use crate::api::{api_error, Client, ClientError};
use crate::pki::{self, NodeTls};
use http::Method;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a node keeps trying to reach the cluster before the role fails.
const GIVE_UP: Duration = Duration::from_secs(180);

/// The CA fingerprint a join token pins.
pub fn token_fingerprint(token: &str) -> Result<&str, String> {
    match token.split('.').collect::<Vec<_>>().as_slice() {
        ["tsr1", fp, secret] if fp.len() == 64 && !secret.is_empty() => Ok(fp),
        _ => Err("join_token is not a tessera join token (expected tsr1.<ca-fingerprint>.<secret> from `tessera token create`)".into()),
    }
}

fn is_name_taken(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { code, .. } if code == "name_taken")
}

/// How one attempt at a join step ended, when it did not succeed.
enum Step {
    /// The cluster said no (bad, used or expired token, name taken, wrong CA): stop.
    Refused(String),
    /// Unreachable, no leader yet, leadership moving: try again.
    Retry(String),
}

/// Calls `path` with `body` on the cluster's leader over TLS, retrying transient failures
/// until [`GIVE_UP`]; a refusal ends it at once. Each attempt asks a join URL (plain
/// HTTP, no secret) for the CA and the leader's peer address, checks the CA against the
/// fingerprint `pinned` by the token, and only then sends the token, over TLS to the
/// leader's peer listener, trusting that CA alone.
async fn call_cluster(
    urls: &[String],
    pinned: &str,
    path: &str,
    body: &Value,
    shutdown: &CancellationToken,
) -> Result<Option<Value>, String> {
    let clients = urls
        .iter()
        .map(|u| Client::new(u, None).map(|c| c.with_timeout(Duration::from_secs(10))))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    let mut backoff = Duration::from_millis(300);
    loop {
        for client in &clients {
            let url = client.url();
            match attempt(client, pinned, path, body).await {
                Ok(v) => return Ok(Some(v)),
                Err(Step::Refused(e)) => {
                    return Err(format!(
                        "the cluster at {url} refused to admit this node: {e}"
                    ));
                }
                Err(Step::Retry(e)) => {
                    tracing::warn!(via = %url, path, error = %e, "Join step failed; retrying")
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "could not reach the cluster through {} within {GIVE_UP:?}",
                urls.join(", ")
            ));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn attempt(client: &Client, pinned: &str, path: &str, body: &Value) -> Result<Value, Step> {
    let info: Value = client
        .call(Method::GET, "/api/v1/join/info", None::<&()>)
        .await
        .map_err(|e| Step::Retry(e.to_string()))?;
    let ca = info["ca"]
        .as_str()
        .ok_or_else(|| Step::Retry("the join info names no CA".into()))?;
    let presented = pki::fingerprint(ca).map_err(|e| Step::Retry(e.to_string()))?;
    if presented != pinned {
        return Err(Step::Refused(format!(
            "the cluster presented CA {presented}, but the join token pins {pinned}: refusing to send the token"
        )));
    }
    let peer: std::net::SocketAddr = info["leader"]["peer"]
        .as_str()
        .ok_or_else(|| Step::Retry("no leader is known yet".into()))?
        .parse()
        .map_err(|_| Step::Retry("the leader's peer address is not IP:PORT".into()))?;
    let tls = pki::anonymous_client_config(ca).map_err(|e| Step::Retry(e.to_string()))?;
    let payload = serde_json::to_vec(body).map_err(|e| Step::Retry(e.to_string()))?;
    let exchange = tls_post(peer, tls, path, payload);
    let (status, bytes) = tokio::time::timeout(Duration::from_secs(90), exchange)
        .await
        .map_err(|_| Step::Retry(format!("{peer}{path} gave no answer within 90s")))?
        .map_err(Step::Retry)?;
    if status.is_success() {
        return serde_json::from_slice(&bytes)
            .map_err(|e| Step::Retry(format!("bad answer from {peer}: {e}")));
    }
    let e = api_error(status, &bytes);
    match &e {
        ClientError::Api { status, .. }
            if matches!(status, 400 | 403 | 404) || is_name_taken(&e) =>
        {
            Err(Step::Refused(e.to_string()))
        }
        _ => Err(Step::Retry(e.to_string())),
    }
}

/// One HTTP/2 POST over TLS to `peer`, whose certificate must name its IP.
async fn tls_post(
    peer: std::net::SocketAddr,
    tls: rustls::ClientConfig,
    path: &str,
    body: Vec<u8>,
) -> Result<(http::StatusCode, bytes::Bytes), String> {
    use http_body_util::{BodyExt, Full};
    let tcp = crate::net::connect_from(peer, None)
        .await
        .map_err(|e| format!("connect to {peer}: {e}"))?;
    let name = rustls::pki_types::ServerName::IpAddress(peer.ip().into());
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {peer}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("HTTP/2 with {peer}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::post(format!("https://{peer}{path}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{peer}{path}: {e}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{peer}{path}: {e}"))?
        .to_bytes();
    Ok((status, bytes))
}

pub async fn join_cluster(
    node: &RaftNode,
    urls: &[String],
    token: &str,
    pki_dir: &Path,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    if node.is_initialized().await {
        tracing::info!("Already a member; not joining again");
        return Ok(());
    }
    let node_id = node.store().node_id().to_string();
    if node.tls().client().is_none() {
        let pinned = token_fingerprint(token)?;
        let (key_pem, csr) = pki::new_key_and_csr(&node.info().name).map_err(|e| e.to_string())?;
        let ips: Vec<IpAddr> = node_ips(node);
        let body = json!({"token": token, "node_id": node_id, "name": node.info().name, "ips": ips, "csr": csr});
        let Some(v) = call_cluster(urls, pinned, "/api/v1/join/cert", &body, shutdown).await?
        else {
            return Ok(());
        };
        let (Some(cert), Some(ca)) = (v["cert"].as_str(), v["ca"].as_str()) else {
            return Err("the cluster's certificate answer lacks `cert` or `ca`".into());
        };
        let presented = pki::fingerprint(ca).map_err(|e| e.to_string())?;
        if presented != pinned {
            return Err(format!("the cluster presented CA {presented}, but the join token pins {pinned}: refusing to join"));
        }
        let tls = NodeTls {
            ca_pem: ca.to_string(),
            cert_pem: cert.to_string(),
            key_pem,
        };
        tls.save(pki_dir).map_err(|e| e.to_string())?;
        node.tls().set(&tls).map_err(|e| e.to_string())?;
        tracing::info!(dir = %pki_dir.display(), "Received this node's certificate");
    }
    let pinned = token_fingerprint(token)?;
    let body = json!({"token": token, "node_id": node_id, "node": node.info()});
    if let Some(v) = call_cluster(urls, pinned, "/api/v1/join", &body, shutdown).await? {
        tracing::info!(role = %v["role"], "Joined the cluster");
    }
    Ok(())
}

/// The IPs other nodes reach this one at (its API and peer addresses).
pub fn node_ips(node: &RaftNode) -> Vec<IpAddr> {
    let mut ips: Vec<IpAddr> = Vec::new();
    let api = node.info().api.trim_start_matches("http://").to_string();
    for addr in [api.as_str(), node.info().peer.as_str()] {
        if let Ok(sa) = addr.parse::<std::net::SocketAddr>() {
            if !ips.contains(&sa.ip()) {
                ips.push(sa.ip());
            }
        }
    }
    ips
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_pin_a_fingerprint() {
        let fp = "a".repeat(64);
        assert_eq!(
            super::token_fingerprint(&format!("tsr1.{fp}.secret")).unwrap(),
            fp
        );
        assert!(super::token_fingerprint("tsr1.short.secret").is_err());
        assert!(super::token_fingerprint("admin-token").is_err());
    }
}
