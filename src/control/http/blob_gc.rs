//! Blob collection, on every control node (each keeps its own copies): a blob in
//! `<data_dir>/control/blobs/` that no `artifacts` resource names any more is deleted
//! once its file is older than `control.blob_grace_secs`, and so is an upload that never
//! finished (`.<sha>.<random>.part`). The grace covers the window between pushing the
//! bytes and applying the artifact that names them (`tessera artifact push` does both).
//!
//! A pass first waits until this node has applied everything committed (a read index
//! through the leader), so that an artifact just created elsewhere is seen; without a
//! quorum it deletes nothing. Deletions are logged and counted
//! (`tessera_control_blobs_deleted_total`), and the bytes kept are a gauge
//! (`tessera_control_blobs_bytes`). Deleting a blob is housekeeping, not a change to the
//! estate: it is not in the audit trail (deleting the artifact was).

use super::resources::read_world;
use super::ApiState;
use crate::model::specs::ArtifactSpec;
use crate::model::Kind;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

#[derive(Clone, Copy, Debug)]
pub struct BlobGc {
    /// Time between passes.
    pub every: Duration,
    /// How old an unnamed blob or an unfinished upload must be before it goes.
    pub grace: Duration,
    /// Time between scrub passes (see [`super::blob_scrub`]); None: never.
    pub scrub_every: Option<Duration>,
    /// Bytes a second a scrub pass reads at most.
    pub scrub_rate: u64,
}

#[derive(Clone)]
pub struct BlobMetrics {
    pub deleted: prometheus::IntCounter,
    pub bytes: prometheus::IntGauge,
    pub scrub_checked: prometheus::IntCounter,
    pub scrub_corrupt: prometheus::IntCounter,
}

pub async fn run(s: ApiState, gc: BlobGc, m: BlobMetrics, shutdown: CancellationToken) {
    tokio::join!(
        collect(s.clone(), gc, m.clone(), shutdown.clone()),
        scrub(s, gc, m, shutdown)
    );
}

/// Scrub passes, the first one interval after the start.
async fn scrub(s: ApiState, gc: BlobGc, m: BlobMetrics, shutdown: CancellationToken) {
    let Some(every) = gc.scrub_every else {
        return;
    };
    let dir = s.node.store().control_dir().join("blobs");
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let (dir, stop, rate) = (dir.clone(), shutdown.clone(), gc.scrub_rate);
        match tokio::task::spawn_blocking(move || super::blob_scrub::pass(&dir, rate, &stop)).await
        {
            Ok(Ok(r)) => {
                m.scrub_checked.inc_by(r.checked);
                m.scrub_corrupt.inc_by(r.corrupt.len() as u64);
                tracing::info!(
                    checked = r.checked,
                    bytes = r.bytes,
                    corrupt = r.corrupt.len(),
                    "Blob scrub pass done"
                );
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "Blob scrub pass failed"),
            Err(e) => tracing::warn!(error = %e, "Blob scrub pass failed"),
        }
    }
}

async fn collect(s: ApiState, gc: BlobGc, m: BlobMetrics, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(gc.every) => {}
        }
        match pass(&s, &gc).await {
            Ok((deleted, kept)) => {
                m.deleted.inc_by(deleted);
                m.bytes.set(i64::try_from(kept).unwrap_or(i64::MAX));
            }
            Err(e) => tracing::warn!(error = %e, "Blob collection pass skipped; retrying"),
        }
    }
}

/// One pass: (files deleted, bytes of blobs kept).
async fn pass(s: &ApiState, gc: &BlobGc) -> Result<(u64, u64), String> {
    s.node
        .linearize()
        .await
        .map_err(|e| format!("not caught up with the cluster: {e}"))?;
    let world = read_world(s, &[Kind::Artifact])?;
    let named: BTreeSet<String> = world
        .of_kind(Kind::Artifact)
        .filter_map(|r| serde_json::from_value::<ArtifactSpec>(r.spec.clone()).ok())
        .filter_map(|a| a.sha256)
        .map(|sha| sha.to_ascii_lowercase())
        .collect();
    let dir = s.node.store().control_dir().join("blobs");
    let (gc, dir2) = (*gc, dir.clone());
    tokio::task::spawn_blocking(move || sweep(&dir2, &named, gc.grace, SystemTime::now()))
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("{}: {e}", dir.display()))
}

/// Deletes what [`BlobGc`] says may go from `dir`; (files deleted, bytes of blobs kept).
fn sweep(
    dir: &Path,
    named: &BTreeSet<String>,
    grace: Duration,
    now: SystemTime,
) -> std::io::Result<(u64, u64)> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(e) => return Err(e),
    };
    let (mut deleted, mut kept) = (0u64, 0u64);
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let old = meta
            .modified()
            .ok()
            .and_then(|m| now.duration_since(m).ok())
            .is_some_and(|age| age >= grace);
        let blob = name.len() == 64 && name.bytes().all(|b| b.is_ascii_hexdigit());
        let upload = name.starts_with('.') && name.ends_with(".part");
        let doomed = old && ((blob && !named.contains(&name)) || upload);
        if !doomed {
            if blob {
                kept += meta.len();
            }
            continue;
        }
        match std::fs::remove_file(entry.path()) {
            Ok(()) => {
                deleted += 1;
                if blob {
                    tracing::info!(sha256 = %name, bytes = meta.len(), "Deleted a blob no artifact names");
                } else {
                    tracing::info!(file = %name, bytes = meta.len(), "Deleted an unfinished upload");
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(file = %name, error = %e, "Cannot delete an unused blob");
                if blob {
                    kept += meta.len();
                }
            }
        }
    }
    Ok((deleted, kept))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_unnamed_blobs_and_old_unfinished_uploads_go() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, c) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
        for (name, body) in [
            (a.as_str(), "named"),
            (b.as_str(), "unnamed"),
            (c.as_str(), "unnamed, new"),
            (".dddd.1234.part", "upload"),
            ("notes.txt", "not a blob"),
        ] {
            std::fs::write(dir.path().join(name), body).unwrap();
        }
        let named: BTreeSet<String> = [a.clone()].into();
        let grace = Duration::from_secs(3600);
        // Nothing is old yet: nothing goes.
        let now = SystemTime::now();
        assert_eq!(
            sweep(dir.path(), &named, grace, now).unwrap(),
            (0, 5 + 7 + 12)
        );
        // Two hours later, c is still fresh only if it was written later: rewrite it then.
        let later = now + Duration::from_secs(7200);
        std::fs::File::options()
            .write(true)
            .open(dir.path().join(&c))
            .unwrap()
            .set_modified(later)
            .unwrap();
        let (deleted, kept) = sweep(dir.path(), &named, grace, later).unwrap();
        assert_eq!((deleted, kept), (2, 5 + 12));
        let left: BTreeSet<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left, [a, c, "notes.txt".to_string()].into());
        // A missing directory is an empty one.
        assert_eq!(
            sweep(&dir.path().join("none"), &named, grace, later).unwrap(),
            (0, 0)
        );
    }
}
