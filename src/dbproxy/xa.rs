//! Writes to every-shard tables, atomically: MySQL XA (two-phase commit) across the
//! shards' primaries, with this proxy as the coordinator.
//!
//! A session runs the statement inside `XA START` on every primary, then `XA END` and
//! `XA PREPARE` on each; any failure before the decision rolls back everywhere. The
//! decision to commit is a file in `<data_dir>/dbproxy/xa/`, synced before the first
//! `XA COMMIT`, and removed once every shard has committed. A shard that did not answer
//! its `XA COMMIT` (or a proxy that died between the decision and the last commit)
//! leaves the transaction prepared there: the recovery pass, at start and every 30 s,
//! asks each primary `XA RECOVER` and finishes this proxy's prepared transactions, by
//! the decision files: committed if one exists, rolled back if none (presumed abort: no
//! decision was taken, so no client was told it committed).

use super::backend::{Backend, Pool};
use super::topology::Topology;
use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How often prepared transactions left behind are looked for.
pub const RECOVER_EVERY: Duration = Duration::from_secs(30);

/// This proxy's XA coordinator state.
pub struct Coordinator {
    /// `tessera.<node>.`: the prefix of every transaction id this proxy makes.
    prefix: String,
    /// Where commit decisions are kept (None: nowhere to keep them, so every-shard writes
    /// are refused rather than run without atomicity).
    dir: Option<PathBuf>,
    next: AtomicU64,
    /// Transactions a session is running now: recovery leaves them alone.
    in_flight: Mutex<HashSet<String>>,
}

/// What recovery did in one pass.
#[derive(Debug, Default, PartialEq)]
pub struct Recovered {
    pub committed: usize,
    pub rolled_back: usize,
    /// Prepared transactions of other proxies (theirs to finish).
    pub others: usize,
}

impl Coordinator {
    pub fn new(node: &str, dir: Option<PathBuf>) -> Coordinator {
        let node: String = node
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .take(32)
            .collect();
        Coordinator {
            prefix: format!("tessera.{node}."),
            dir,
            next: AtomicU64::new(0),
            in_flight: Mutex::new(HashSet::new()),
        }
    }

    /// A new transaction id (under 64 bytes, quote-free), marked in flight until
    /// [`Coordinator::done`].
    pub fn begin(&self) -> Result<String, String> {
        if self.dir.is_none() {
            return Err("this proxy has no data directory to keep XA decisions in".into());
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let ms = crate::util::now_ms();
        let xid = format!("{}{ms:x}.{n:x}", self.prefix);
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(xid.clone());
        Ok(xid)
    }

    /// The session is finished with `xid` (whatever became of it).
    pub fn done(&self, xid: &str) {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(xid);
    }

    fn decision(&self, xid: &str) -> Option<PathBuf> {
        self.dir.as_ref().map(|d| d.join(xid))
    }

    /// Records the decision to commit `xid`, durably (file and directory synced).
    pub fn decide(&self, xid: &str) -> std::io::Result<()> {
        let dir = self.dir.as_ref().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "no XA decision directory")
        })?;
        std::fs::create_dir_all(dir)?;
        let path = dir.join(xid);
        let f = std::fs::File::create(&path)?;
        f.sync_all()?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Every shard committed `xid`: its decision is no longer needed.
    pub fn forget(&self, xid: &str) {
        if let Some(p) = self.decision(xid) {
            if let Err(e) = std::fs::remove_file(&p) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    tracing::warn!(xid, error = %e, "Removing an XA decision failed");
                }
            }
        }
    }

    fn decided(&self, xid: &str) -> bool {
        self.decision(xid).is_some_and(|p| p.exists())
    }

    fn decisions(&self) -> BTreeSet<String> {
        let Some(dir) = &self.dir else {
            return BTreeSet::new();
        };
        std::fs::read_dir(dir)
            .map(|it| {
                it.filter_map(|e| e.ok())
                    .filter_map(|e| e.file_name().into_string().ok())
                    .filter(|n| n.starts_with(&self.prefix))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn in_flight(&self, xid: &str) -> bool {
        self.in_flight
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(xid)
    }

    /// One recovery pass over the primaries of `topo`: this proxy's prepared
    /// transactions that no session is running are committed (a decision exists) or
    /// rolled back (none). Decisions no primary holds any more are removed, when every
    /// primary answered.
    pub async fn recover(&self, topo: &Topology, connect_timeout: Duration) -> Recovered {
        let mut done = Recovered::default();
        let mut seen: Vec<Arc<Pool>> = Vec::new();
        let mut all_answered = true;
        let mut still_prepared = BTreeSet::new();
        let decisions = self.decisions();
        for db in topo.databases.values() {
            for shard in db.shards.values() {
                let pool = &shard.primary;
                if seen.iter().any(|p| p.target.addr == pool.target.addr) {
                    continue;
                }
                seen.push(pool.clone());
                let mut b = match Backend::connect(&pool.target, connect_timeout).await {
                    Ok(b) => b,
                    Err(e) => {
                        all_answered = false;
                        tracing::debug!(server = %pool.target.addr, error = %e, "XA recovery: server not reachable");
                        continue;
                    }
                };
                let rows = match b.query_named("XA RECOVER").await {
                    Ok((_, rows)) => rows,
                    Err(e) => {
                        all_answered = false;
                        tracing::warn!(server = %pool.target.addr, error = %e, "XA RECOVER failed");
                        continue;
                    }
                };
                for row in rows {
                    // formatID, gtrid_length, bqual_length, data
                    let (Some(Some(gl)), Some(Some(data))) = (row.get(1), row.get(3)) else {
                        continue;
                    };
                    let xid: String = data.chars().take(gl.parse().unwrap_or(0)).collect();
                    if !xid.starts_with("tessera.") {
                        continue;
                    }
                    if !xid.starts_with(&self.prefix) {
                        done.others += 1;
                        continue;
                    }
                    if self.in_flight(&xid) || xid.contains('\'') {
                        still_prepared.insert(xid);
                        continue;
                    }
                    let commit = self.decided(&xid);
                    let verb = if commit { "COMMIT" } else { "ROLLBACK" };
                    match b.query_named(&format!("XA {verb} '{xid}'")).await {
                        Ok(_) => {
                            if commit {
                                done.committed += 1;
                            } else {
                                done.rolled_back += 1;
                            }
                            tracing::warn!(xid, server = %pool.target.addr, action = verb, "Finished a prepared every-shard write left behind");
                        }
                        Err(e) => {
                            still_prepared.insert(xid.clone());
                            tracing::warn!(xid, server = %pool.target.addr, error = %e, action = verb, "Finishing a prepared every-shard write failed");
                        }
                    }
                }
            }
        }
        if all_answered {
            for xid in decisions {
                if !still_prepared.contains(&xid) && !self.in_flight(&xid) {
                    self.forget(&xid);
                }
            }
        }
        done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_unique_short_and_decisions_survive_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let c = Coordinator::new("dbp 1'; DROP", Some(dir.path().join("xa")));
        let a = c.begin().unwrap();
        let b = c.begin().unwrap();
        assert_ne!(a, b);
        assert!(
            a.len() <= 64 && !a.contains('\'') && !a.contains(' '),
            "{a}"
        );
        assert!(a.starts_with("tessera.dbp_1___DROP."), "{a}");
        assert!(c.in_flight(&a));
        c.decide(&a).unwrap();
        // Another coordinator for the same node (after a restart) sees the decision.
        let again = Coordinator::new("dbp 1'; DROP", Some(dir.path().join("xa")));
        assert!(again.decided(&a) && !again.decided(&b));
        assert!(again.decisions().contains(&a) && again.decisions().len() == 1);
        again.forget(&a);
        assert!(!c.decided(&a));
        c.done(&a);
        assert!(!c.in_flight(&a));
        // Without a directory nothing runs.
        assert!(Coordinator::new("n", None).begin().is_err());
    }
}
