//! Certificate renewal: every member holds the cluster CA in its replicated store, so a
//! node re-issues its own certificate (new key, same names) from it when fewer than
//! `control.cert_renew_days` are left, and swaps it in without a restart. New connections
//! use it at once; pooled ones on their next dial. Certificates given as `[tls]` files
//! are the operator's to renew and are left alone.

use super::http::join::{StoredCa, CA_KEY};
use super::join::node_ips;
use super::store::RaftNode;
use crate::pki::{Ca, NodeTls};
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const CHECK_EVERY: Duration = Duration::from_secs(3600);

/// Checks at once (after a short settling delay) and then hourly until `shutdown`.
pub async fn run(node: RaftNode, pki_dir: PathBuf, renew_days: u64, shutdown: CancellationToken) {
    let mut wait = Duration::from_secs(2);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        wait = CHECK_EVERY;
        match renew_if_due(&node, &pki_dir, renew_days) {
            Ok(Some(until)) => {
                tracing::info!(valid_until = %until, dir = %pki_dir.display(), "Renewed this node's certificate")
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "Cannot renew this node's certificate yet; retrying in a minute");
                wait = Duration::from_secs(60);
            }
        }
    }
}

/// Renews when due; returns the new expiry when it did.
fn renew_if_due(
    node: &RaftNode,
    pki_dir: &std::path::Path,
    renew_days: u64,
) -> Result<Option<time::OffsetDateTime>, String> {
    let Some(current) = NodeTls::load(pki_dir).map_err(|e| e.to_string())? else {
        return Ok(None);
    };
    let left = current.not_after().map_err(|e| e.to_string())? - time::OffsetDateTime::now_utc();
    if left > time::Duration::days(renew_days as i64) {
        return Ok(None);
    }
    let (kv, _) = node.store().get(CA_KEY)?;
    let Some(kv) = kv else {
        return Err("the cluster CA is not in the store yet".into());
    };
    let stored: StoredCa =
        serde_json::from_str(&kv.value).map_err(|e| format!("the CA record: {e}"))?;
    let ca = Ca {
        cert_pem: stored.cert,
        key_pem: stored.key,
    };
    let fresh = ca
        .issue(&node.info().name, &node_ips(node))
        .map_err(|e| e.to_string())?;
    let until = fresh.not_after().map_err(|e| e.to_string())?;
    fresh.save(pki_dir).map_err(|e| e.to_string())?;
    node.tls().set(&fresh).map_err(|e| e.to_string())?;
    Ok(Some(until))
}
