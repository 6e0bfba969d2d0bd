//! Reports how this proxy sees each data source's servers to the control plane, as
//! `status.proxies.<node>` of the DataSource (`tessera get datasources` shows it): on
//! every change of a server's health, and every 30 s regardless (so a stale report shows
//! its age in `updatedAt`).

use super::session::Shared;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(2);
const REFRESH: Duration = Duration::from_secs(30);

pub async fn run(
    shared: Arc<Shared>,
    urls: Vec<String>,
    credential: PathBuf,
    shutdown: CancellationToken,
) {
    let mut sent: HashMap<String, (Value, Instant)> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let topo = shared.topology.load_full();
        for db in topo.databases.values() {
            let server = |p: &super::backend::Pool| {
                let lag = p.health.lag_ms.load(Ordering::Relaxed);
                json!({
                    "address": p.target.addr,
                    "up": p.is_up(),
                    "lagMs": (lag != u64::MAX).then_some(lag),
                    "lagging": lag > db.max_replica_lag_ms,
                    "error": p.last_error(),
                })
            };
            let shards: serde_json::Map<String, Value> = db
                .shards
                .values()
                .map(|s| {
                    (
                        s.unit.clone(),
                        json!({
                            "primary": server(&s.primary),
                            "replicas": s.replicas.iter().map(|r| server(r)).collect::<Vec<_>>(),
                        }),
                    )
                })
                .collect();
            let shards = Value::Object(shards);
            if sent
                .get(&db.datasource)
                .is_some_and(|(v, at)| *v == shards && at.elapsed() < REFRESH)
            {
                continue;
            }
            let body =
                json!({"status": {"updatedAt": crate::model::now_rfc3339(), "shards": shards}});
            let path = format!("/api/v1/datasources/{}/status", db.datasource);
            match super::call_control(
                &urls,
                &credential,
                http::Method::PUT,
                &path,
                &body,
                Duration::from_secs(5),
            )
            .await
            {
                Ok(_) => {
                    sent.insert(db.datasource.clone(), (shards, Instant::now()));
                }
                Err((_, e)) => {
                    tracing::debug!(error = %e, datasource = %db.datasource, "Reporting data source health failed")
                }
            }
        }
    }
}
