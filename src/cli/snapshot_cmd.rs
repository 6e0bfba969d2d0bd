//! `tessera snapshot save FILE` and `tessera snapshot restore FILE --data-dir DIR`.

use super::args::{SnapshotCommand, SnapshotRestoreArgs, SnapshotSaveArgs};
use super::client_cmd::block_on;
use super::{EXIT_BAD_INPUT, EXIT_FAILED};
use crate::api::{api_error, ClientError};
use crate::control::store::backup;
use crate::control::STAGED_RESTORE;
use http::Method;
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
            let (status, bytes) = c.send(Method::GET, "/api/v1/snapshot", None).await?;
            if !status.is_success() {
                return Err(api_error(status, &bytes));
            }
            let (_, info) = backup::open(&bytes).map_err(|reason| ClientError::BadResponse {
                url: c.url().to_string(),
                reason: format!("the snapshot received fails its check: {reason}"),
            })?;
            crate::util::write_atomic(&file, &bytes, 0o600)
                .map_err(|e| ClientError::Local(format!("writing {}: {e}", file.display())))?;
            println!(
                "saved {} (revision {}, {} keys, {} bytes, sha256 {}) in {:.1}s",
                file.display(),
                info.revision,
                info.keys,
                bytes.len(),
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

fn restore(a: SnapshotRestoreArgs) -> ExitCode {
    let file = match std::fs::read(&a.file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("error: {}: {e}", a.file.display());
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let info = match backup::open(&file) {
        Ok((_, info)) => info,
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
    let write = std::fs::create_dir_all(&control)
        .and_then(|_| crate::util::write_atomic(&staged, &file, 0o600));
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
