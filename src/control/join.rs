//! The joining side: a control node started with `join = [URLs]` and a token asks the
//! cluster to admit it, retrying while the cluster is unreachable or busy, and giving up
//! at once when the cluster refuses the token. A node that already joined (its log holds
//! a membership) does not ask again on restart.

use super::store::RaftNode;
use crate::api::{Client, ClientError};
use http::Method;
use serde_json::json;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a node keeps trying to reach the cluster before the role fails.
const GIVE_UP: Duration = Duration::from_secs(180);

pub async fn join_cluster(
    node: &RaftNode,
    urls: &[String],
    token: &str,
    shutdown: &CancellationToken,
) -> Result<(), String> {
    if node.is_initialized().await {
        tracing::info!("Already a member; not joining again");
        return Ok(());
    }
    let body =
        json!({"token": token, "node_id": node.store().node_id().to_string(), "node": node.info()});
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    let mut backoff = Duration::from_millis(300);
    loop {
        for url in urls {
            let client = Client::new(url, None)
                .map_err(|e| e.to_string())?
                .with_timeout(Duration::from_secs(90));
            match client
                .call::<serde_json::Value>(Method::POST, "/api/v1/join", Some(&body))
                .await
            {
                Ok(v) => {
                    tracing::info!(via = %url, role = %v["role"], "Joined the cluster");
                    return Ok(());
                }
                Err(
                    e @ ClientError::Api {
                        status: 400 | 403 | 404,
                        ..
                    },
                ) => {
                    return Err(format!(
                        "the cluster at {url} refused to admit this node: {e}"
                    ));
                }
                Err(e) => tracing::warn!(via = %url, error = %e, "Join attempt failed; retrying"),
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "could not join through {} within {GIVE_UP:?}",
                urls.join(", ")
            ));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
