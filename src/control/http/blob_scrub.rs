//! Blob scrubbing, on every control node: each blob in `<data_dir>/control/blobs/` is
//! read back and hashed, at most `control.blob_scrub_mb_per_sec`, every
//! `control.blob_scrub_interval_secs`. A copy whose SHA-256 is not its name (bit rot, a
//! bad sector, a hand edit) is moved to `blobs/corrupt/` and logged as an error: it is
//! no longer served, and the next request for it fetches a good copy from a member (and
//! checks its digest on the way), as for a blob this node never had. Checked and
//! corrupt blobs are counted (`tessera_control_blob_scrub_checked_total`,
//! `tessera_control_blob_scrub_corrupt_total`).

use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What one pass found.
#[derive(Debug, Default, PartialEq)]
pub struct Scrubbed {
    pub checked: u64,
    pub bytes: u64,
    /// The blobs moved aside, by name (their expected SHA-256).
    pub corrupt: Vec<String>,
}

/// Reads every blob in `dir` back, at most `rate` bytes a second, and moves a copy
/// whose digest is not its name to `dir/corrupt/`. Stops early when `stop` is cancelled.
pub fn pass(dir: &Path, rate: u64, stop: &CancellationToken) -> std::io::Result<Scrubbed> {
    let mut out = Scrubbed::default();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    let mut names: Vec<(String, PathBuf)> = entries
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(n, p)| n.len() == 64 && n.bytes().all(|b| b.is_ascii_hexdigit()) && p.is_file())
        .collect();
    names.sort();
    let started = Instant::now();
    let mut buf = vec![0u8; 1 << 20];
    for (name, path) in names {
        if stop.is_cancelled() {
            break;
        }
        let mut f = match std::fs::File::open(&path) {
            Ok(f) => f,
            // Collected meanwhile.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                tracing::warn!(sha256 = %name, error = %e, "Cannot read a blob to scrub it");
                continue;
            }
        };
        let mut h = Sha256::new();
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) => {
                    // A read error is what scrubbing looks for too.
                    tracing::error!(sha256 = %name, error = %e, "Reading a blob failed");
                    h.update(b"\0unreadable");
                    break;
                }
            };
            h.update(&buf[..n]);
            out.bytes += n as u64;
            // Stay under the rate: sleep off any lead over it.
            let due = Duration::from_secs_f64(out.bytes as f64 / rate.max(1) as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead.min(Duration::from_secs(1)));
            }
        }
        out.checked += 1;
        let got = crate::util::hex(&h.finalize());
        if got.eq_ignore_ascii_case(&name) {
            continue;
        }
        let aside = dir.join("corrupt");
        let to = aside.join(format!("{name}.{}", crate::util::now_ms()));
        let moved = std::fs::create_dir_all(&aside).and_then(|_| std::fs::rename(&path, &to));
        match moved {
            Ok(()) => {
                tracing::error!(sha256 = %name, actual = %got, moved_to = %to.display(), "A stored blob does not match its digest: moved aside; the next request fetches a good copy from a member")
            }
            Err(e) => {
                tracing::error!(sha256 = %name, actual = %got, error = %e, "A stored blob does not match its digest and cannot be moved aside")
            }
        }
        out.corrupt.push(name);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_that_does_not_match_its_name_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let good = b"good bytes".to_vec();
        let good_sha = crate::util::hex(&Sha256::digest(&good));
        let bad_sha = crate::util::hex(&Sha256::digest(b"what was pushed"));
        std::fs::write(dir.path().join(&good_sha), &good).unwrap();
        std::fs::write(dir.path().join(&bad_sha), b"what was pushed, rotted").unwrap();
        std::fs::write(dir.path().join(".partial.part"), b"x").unwrap();
        let r = pass(dir.path(), 1 << 30, &CancellationToken::new()).unwrap();
        assert_eq!(r.checked, 2);
        assert_eq!(r.corrupt, vec![bad_sha.clone()]);
        assert!(dir.path().join(&good_sha).exists());
        assert!(!dir.path().join(&bad_sha).exists());
        let aside: Vec<String> = std::fs::read_dir(dir.path().join("corrupt"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            aside.len() == 1 && aside[0].starts_with(&bad_sha),
            "{aside:?}"
        );
        // A second pass finds everything in order; a stopped one reads nothing.
        let r = pass(dir.path(), 1 << 30, &CancellationToken::new()).unwrap();
        assert_eq!((r.checked, r.corrupt.len()), (1, 0));
        let stop = CancellationToken::new();
        stop.cancel();
        assert_eq!(pass(dir.path(), 1 << 30, &stop).unwrap().checked, 0);
    }

    #[test]
    fn reading_is_held_to_the_rate() {
        let dir = tempfile::tempdir().unwrap();
        let body = vec![7u8; 3 << 20];
        let sha = crate::util::hex(&Sha256::digest(&body));
        std::fs::write(dir.path().join(&sha), &body).unwrap();
        let t0 = Instant::now();
        // 3 MiB at 8 MiB/s: at least ~0.3 s (a bound, not a benchmark).
        let r = pass(dir.path(), 8 << 20, &CancellationToken::new()).unwrap();
        assert_eq!(r.checked, 1);
        assert!(
            t0.elapsed() >= Duration::from_millis(250),
            "{:?}",
            t0.elapsed()
        );
    }
}
