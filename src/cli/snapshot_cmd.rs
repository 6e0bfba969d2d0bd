//! `tessera snapshot save FILE` and `tessera snapshot restore FILE --data-dir DIR`.

use super::args::{SnapshotCommand, SnapshotRestoreArgs, SnapshotSaveArgs};
use super::client_cmd::block_on;
use super::{EXIT_BAD_INPUT, EXIT_FAILED};
use crate::api::ClientError;
use crate::control::store::backup;
use crate::control::STAGED_RESTORE;
use http_body_util::BodyExt;
use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant};

pub fn run(cmd: SnapshotCommand) -> ExitCode {
    match cmd {
        SnapshotCommand::Save(a) => save(a),
        SnapshotCommand::Restore(a) => restore(a),
    }
}

fn save(a: SnapshotSaveArgs) -> ExitCode {
    let file = a.file.clone();
    let timeout = Duration::from_secs(a.timeout);
    block_on(
        |c| async move {
            let c = c.with_timeout(timeout);
            eprintln!("requesting a snapshot from {} ...", c.url());
            let started = Instant::now();
            // Streamed into `<file>.part` (never whole in memory), checked, then renamed.
            let part = file.with_extension("part");
            let local =
                |e: std::io::Error| ClientError::Local(format!("writing {}: {e}", part.display()));
            let received = tokio::time::timeout(timeout, async {
                let mut body = c.stream("/api/v1/snapshot").await?;
                let mut out = open_private(&part).map_err(local)?;
                let mut bytes = 0u64;
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| ClientError::Unreachable {
                        url: c.url().to_string(),
                        reason: format!("the snapshot transfer broke: {e}"),
                    })?;
                    if let Some(data) = frame.data_ref() {
                        out.write_all(data).map_err(local)?;
                        bytes += data.len() as u64;
                    }
                }
                out.sync_all().map_err(local)?;
                Ok::<u64, ClientError>(bytes)
            })
            .await
            .unwrap_or_else(|_| {
                Err(ClientError::Unreachable {
                    url: c.url().to_string(),
                    reason: format!("the snapshot did not arrive within {timeout:?}"),
                })
            });
            let bytes = match received {
                Ok(b) => b,
                Err(e) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(e);
                }
            };
            let info = match backup::check_file(&part) {
                Ok(i) => i,
                Err(reason) => {
                    let _ = std::fs::remove_file(&part);
                    return Err(ClientError::BadResponse {
                        url: c.url().to_string(),
                        reason: format!("the snapshot received fails its check: {reason}"),
                    });
                }
            };
            std::fs::rename(&part, &file)
                .map_err(|e| ClientError::Local(format!("writing {}: {e}", file.display())))?;
            println!(
                "saved {} (revision {}, {} keys, {} bytes, sha256 {}) in {:.1}s",
                file.display(),
                info.revision,
                info.keys,
                bytes,
                info.sha256,
                started.elapsed().as_secs_f64()
            );
            eprintln!(
                "the file holds the cluster CA key and token hashes: keep it as secret as the CA"
            );
            Ok(())
        },
        &a.client,
    )
}

/// A new file readable by its owner only.
fn open_private(path: &std::path::Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
}

fn restore(a: SnapshotRestoreArgs) -> ExitCode {
    let info = match backup::check_file(&a.file) {
        Ok(info) => info,
        Err(e) => {
            eprintln!("error: {}: {e}", a.file.display());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let control = a.data_dir.join("control");
    let store = control.join("store");
    if std::fs::read_dir(&store).is_ok_and(|mut d| d.next().is_some()) {
        eprintln!(
            "error: {} already holds a store; restore only into a fresh data dir (nothing was changed)",
            store.display()
        );
        return ExitCode::from(EXIT_BAD_INPUT);
    }
    let staged = control.join(STAGED_RESTORE);
    // Copied in pieces to a temp file, synced, then renamed into place.
    let tmp = staged.with_extension("part");
    let write = std::fs::create_dir_all(&control)
        .and_then(|_| {
            let mut from = std::fs::File::open(&a.file)?;
            let mut to = open_private(&tmp)?;
            std::io::copy(&mut from, &mut to)?;
            to.sync_all()
        })
        .and_then(|_| std::fs::rename(&tmp, &staged));
    if let Err(e) = write {
        eprintln!("error: staging {}: {e}", staged.display());
        return ExitCode::from(EXIT_FAILED);
    }
    println!(
        "staged {} (revision {}, {} keys, from cluster {}) in {}",
        a.file.display(),
        info.revision,
        info.keys,
        info.cluster_id,
        staged.display()
    );
    println!(
        "start a control node with `bootstrap = true` and data_dir = {} to create a new cluster from it",
        a.data_dir.display()
    );
    ExitCode::SUCCESS
}
