//! Automatic failover (`failover: auto` on a DataSource): when a shard's primary has been
//! unreachable for `failoverAfterMs` and a replica answers, this proxy asks the control
//! plane to make that replica the primary (`POST /api/v1/datasources/{name}/failover`;
//! the control plane lets exactly one proxy win), and the winner promotes the server:
//! it lets the replica apply what it already received (bounded), stops replication and
//! turns `read_only` off. Every proxy then follows the new spec through its watch.
//!
//! The judgement starts from this proxy's own view, and the control plane checks it
//! against the other proxies' reports: while another proxy reported recently that it
//! reaches the primary, the failover is refused (409 `primary_reachable`), so a primary
//! cut off from one proxy alone is not failed over. With a single proxy, its view is
//! the only one. Replication is asynchronous unless the servers run semi-sync: writes
//! the old primary acknowledged but never shipped are not on the new one.
//!
//! The winner then fences the old primary: whenever it answers again within
//! [`FENCE_FOR`] (a restarted server, a healed partition), the proxy sets its
//! `read_only` on, so clients that reach it directly cannot write next to the new
//! primary. The fence list is kept in `<data_dir>/dbproxy/fences.json` (data source,
//! address, until when; no credentials: they come from the data source's spec), so a
//! proxy restarted meanwhile goes on fencing.

use super::backend::{Backend, BackendError, Pool, Target};
use super::session::Shared;
use super::topology::Topology;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const EVERY: Duration = Duration::from_secs(1);
/// A failover of the same primary is not asked for again sooner than this.
const RETRY: Duration = Duration::from_secs(5);
/// How long the replica may take to apply the relay log it already has.
const CATCH_UP: Duration = Duration::from_secs(10);
/// How long a failed-over primary is watched and kept read-only.
const FENCE_FOR: Duration = Duration::from_secs(3600);
/// How often a fenced server is looked at.
const FENCE_EVERY: Duration = Duration::from_secs(2);

/// An old primary this proxy failed over, kept read-only until `until_ms`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Fence {
    datasource: String,
    /// The shard it was the primary of (its database name is the shard's).
    unit: String,
    address: String,
    until_ms: u64,
    #[serde(skip)]
    looked: Option<Instant>,
}

/// The fences kept in `path` that have not run out (none when it is missing or
/// unreadable, which is logged).
fn load_fences(path: &std::path::Path) -> Vec<Fence> {
    let body = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "Reading the fence list failed");
            return Vec::new();
        }
    };
    match serde_json::from_slice::<Vec<Fence>>(&body) {
        Ok(mut v) => {
            let now = crate::util::now_ms();
            v.retain(|f| f.until_ms > now);
            v
        }
        Err(e) => {
            tracing::error!(file = %path.display(), error = %e, "The fence list is not valid JSON; ignored");
            Vec::new()
        }
    }
}

fn save_fences(path: &std::path::Path, fences: &[Fence]) {
    let body = serde_json::to_vec_pretty(fences).unwrap_or_default();
    if let Err(e) = crate::util::write_atomic(path, &body, 0o600) {
        tracing::error!(file = %path.display(), error = %e, "Saving the fence list failed; a restart would forget it");
    }
}

pub async fn run(
    shared: Arc<Shared>,
    urls: Vec<String>,
    credential: PathBuf,
    fences: PathBuf,
    shutdown: CancellationToken,
) {
    let mut asked: HashMap<(String, String), Instant> = HashMap::new();
    // Old primaries this proxy failed over.
    let mut fenced = load_fences(&fences);
    if !fenced.is_empty() {
        tracing::info!(
            count = fenced.len(),
            "Fencing old primaries failed over before the restart"
        );
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let before = fenced.len();
        fence(&mut fenced, &shared.topology.load()).await;
        if fenced.len() != before {
            save_fences(&fences, &fenced);
        }
        let topo = shared.topology.load_full();
        for db in topo.databases.values() {
            let Some(after) = db.failover_after else {
                continue;
            };
            for shard in db.shards.values() {
                if shard.primary.down_for().is_none_or(|d| d < after) {
                    continue;
                }
                let from = shard.primary.target.addr.clone();
                let key = (db.datasource.clone(), from.clone());
                if asked.get(&key).is_some_and(|t| t.elapsed() < RETRY) {
                    continue;
                }
                let Some(to) = best_replica(&shard.replicas) else {
                    continue;
                };
                asked.insert(key, Instant::now());
                let body = json!({"unit": shard.unit, "from": from, "to": to.target.addr});
                let path = format!("/api/v1/datasources/{}/failover", db.datasource);
                let outcome = match super::call_control(
                    &urls,
                    &credential,
                    http::Method::POST,
                    &path,
                    &body,
                    Duration::from_secs(10),
                )
                .await
                {
                    Ok(_) => Ok(true),
                    // Other proxies still reach the primary: this proxy's view is its own.
                    Err((Some(409), e)) if e.contains("still reaches") => {
                        tracing::warn!(datasource = %db.datasource, unit = %shard.unit, %from, reason = %e, "Primary unreachable from here only: no failover");
                        shared
                            .metrics
                            .failovers
                            .with_label_values(&[&db.name, &shard.unit, "blocked"])
                            .inc();
                        continue;
                    }
                    // Another failover (or an edit) came first.
                    Err((Some(409), _)) => Ok(false),
                    Err((_, e)) => Err(e),
                };
                let label = match outcome {
                    Ok(true) => {
                        tracing::warn!(datasource = %db.datasource, unit = %shard.unit, %from, to = %to.target.addr, "Primary unreachable: promoting its replica");
                        fenced.retain(|f| f.address != from);
                        fenced.push(Fence {
                            datasource: db.datasource.clone(),
                            unit: shard.unit.clone(),
                            address: from.clone(),
                            until_ms: crate::util::now_ms() + FENCE_FOR.as_millis() as u64,
                            looked: None,
                        });
                        save_fences(&fences, &fenced);
                        match promote(&to.target, to.connect_timeout).await {
                            Ok(()) => {
                                tracing::warn!(datasource = %db.datasource, unit = %shard.unit, primary = %to.target.addr, "Replica promoted");
                                "promoted"
                            }
                            Err(e) => {
                                tracing::error!(datasource = %db.datasource, unit = %shard.unit, server = %to.target.addr, error = %e, "Promoting the replica failed; it is the primary in the spec, check the server");
                                "promote_failed"
                            }
                        }
                    }
                    Ok(false) => {
                        tracing::info!(datasource = %db.datasource, unit = %shard.unit, %from, "Another failover of this primary came first");
                        "lost"
                    }
                    Err(e) => {
                        tracing::warn!(datasource = %db.datasource, unit = %shard.unit, error = %e, "Asking the control plane for a failover failed");
                        "refused"
                    }
                };
                shared
                    .metrics
                    .failovers
                    .with_label_values(&[&db.name, &shard.unit, label])
                    .inc();
            }
        }
    }
}

/// Looks at each fenced server that is due: one that answers gets `read_only` on (when
/// it is off); a server watched for [`FENCE_FOR`] is let go. The credentials are its
/// data source's (every server of a data source shares them), the database the shard's.
async fn fence(fenced: &mut Vec<Fence>, topo: &Topology) {
    let now = crate::util::now_ms();
    fenced.retain(|f| f.until_ms > now);
    for f in fenced.iter_mut() {
        if f.looked.is_some_and(|t| t.elapsed() < FENCE_EVERY) {
            continue;
        }
        let Some(mut target) = topo
            .databases
            .values()
            .find(|d| d.datasource == f.datasource)
            .and_then(|d| d.shards.get(&f.unit))
            .map(|s| s.primary.target.clone())
        else {
            continue;
        };
        target.addr = f.address.clone();
        let target = &target;
        f.looked = Some(Instant::now());
        let Ok(mut b) = Backend::connect(target, Duration::from_secs(1)).await else {
            continue;
        };
        let on = match b.query_named("SELECT @@GLOBAL.read_only").await {
            Ok((_, rows)) => rows
                .first()
                .and_then(|r| r.first().cloned().flatten())
                .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("on")),
            Err(_) => continue,
        };
        if on {
            continue;
        }
        match b.query_named("SET GLOBAL read_only = ON").await {
            Ok(_) => {
                tracing::warn!(server = %target.addr, "The failed-over primary answers again: set it read-only (fenced)")
            }
            Err(e) => {
                tracing::error!(server = %target.addr, error = %e, "The failed-over primary answers again but cannot be set read-only; keep clients off it")
            }
        }
    }
}

/// The replica to promote: one that answers, least behind, then by address (so proxies
/// with the same view pick the same one).
fn best_replica(replicas: &[Arc<Pool>]) -> Option<&Arc<Pool>> {
    replicas.iter().filter(|r| r.is_up()).min_by_key(|r| {
        (
            r.health.lag_ms.load(Ordering::Relaxed),
            r.target.addr.clone(),
        )
    })
}

/// Makes a replica a primary: apply what it has, stop replicating, accept writes.
async fn promote(target: &Target, timeout: Duration) -> Result<(), BackendError> {
    let mut b = Backend::connect(target, timeout).await?;
    let _ = b.query_named("STOP SLAVE IO_THREAD").await;
    let t0 = Instant::now();
    while t0.elapsed() < CATCH_UP {
        let (names, rows) = b.query_named("SHOW SLAVE STATUS").await?;
        let Some(row) = rows.first() else { break };
        let cell = |n: &str| {
            names
                .iter()
                .position(|c| c.eq_ignore_ascii_case(n))
                .and_then(|i| row.get(i).cloned().flatten())
                .unwrap_or_default()
        };
        let applied = cell("Master_Log_File") == cell("Relay_Master_Log_File")
            && cell("Read_Master_Log_Pos") == cell("Exec_Master_Log_Pos");
        if applied || cell("Slave_SQL_Running") != "Yes" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.query_named("STOP SLAVE").await?;
    b.query_named("RESET SLAVE ALL").await?;
    b.query_named("SET GLOBAL read_only = OFF").await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_survive_a_restart_until_they_run_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fences.json");
        assert!(load_fences(&path).is_empty());
        let now = crate::util::now_ms();
        let live = Fence {
            datasource: "accountdb".into(),
            unit: "rz00".into(),
            address: "127.0.0.9:3306".into(),
            until_ms: now + 60_000,
            looked: Some(Instant::now()),
        };
        let gone = Fence {
            address: "127.0.0.8:3306".into(),
            until_ms: now - 1,
            ..live.clone()
        };
        save_fences(&path, &[live.clone(), gone]);
        let back = load_fences(&path);
        assert_eq!(back.len(), 1);
        assert_eq!(back[0].address, live.address);
        assert!(
            back[0].looked.is_none(),
            "looked again at once after a restart"
        );
        std::fs::write(&path, b"{not json").unwrap();
        assert!(load_fences(&path).is_empty());
    }
}
