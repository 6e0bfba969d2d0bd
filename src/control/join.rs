//! The joining side: a control node started with `join = [URLs]` and a token gets its
//! certificate (sending a CSR; the CA it receives must match the fingerprint pinned in
//! the token), then asks to be admitted. The token only ever travels over TLS to the
//! leader's peer listener, after the server proved it holds a certificate from the
//! pinned CA; the join URLs only tell where that is. It retries while the cluster is unreachable or
//! busy and gives up at once when the cluster refuses the token or the name. A node that already
//! joined does not ask again on restart.

use super::store::RaftNode;
use crate::api::enroll::{call_cluster, token_fingerprint};
use crate::pki::{self, NodeTls};
use serde_json::json;
use std::net::IpAddr;
use std::path::Path;
use tokio_util::sync::CancellationToken;

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
