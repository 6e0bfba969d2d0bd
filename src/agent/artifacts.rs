//! Artifacts on this node: downloaded from any control node (`GET /api/v1/blobs/<sha256>`),
//! checked against their digest (a damaged download is refused and not kept), cached by
//! digest (`<data_dir>/agent/artifacts/<sha256>`), and unpacked per instance: a gzipped
//! tar or a plain tar into a directory, anything else as one executable file `app`.

use crate::api::Client;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(300);
/// Written last in an unpacked directory: an interrupted unpack is done again.
const COMPLETE: &str = ".tessera-unpacked";

/// Why an artifact could not be made ready.
#[derive(Debug)]
pub enum ArtifactError {
    /// The content did not match its digest: refused.
    Corrupt(String),
    /// Anything else (not found, unreachable, disk).
    Failed(String),
}

impl std::fmt::Display for ArtifactError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ArtifactError::Corrupt(m) | ArtifactError::Failed(m) => f.write_str(m),
        }
    }
}

/// The cached content of `sha256`, downloaded and checked first if needed. The download
/// goes to a temporary file as it arrives, hashed on the way (memory stays flat whatever
/// the artifact's size), and becomes the cached file only once its digest matches.
pub async fn fetch(client: &Client, cache: &Path, sha256: &str) -> Result<PathBuf, ArtifactError> {
    let path = cache.join(sha256);
    if path.is_file() {
        return Ok(path);
    }
    let failed = |m: String| ArtifactError::Failed(format!("downloading {sha256}: {m}"));
    tokio::fs::create_dir_all(cache)
        .await
        .map_err(|e| ArtifactError::Failed(format!("caching {sha256}: {e}")))?;
    let tmp = cache.join(format!(".{sha256}.part"));
    let download = async {
        let body = client
            .stream(&format!("/api/v1/blobs/{sha256}"))
            .await
            .map_err(|e| failed(e.to_string()))?;
        let (actual, size) =
            crate::util::spool(body, &tmp, u64::MAX)
                .await
                .map_err(|e| match e {
                    crate::util::SpoolError::Body(m) => failed(m),
                    crate::util::SpoolError::TooLarge => failed("too large".into()),
                    crate::util::SpoolError::Io(e) => {
                        ArtifactError::Failed(format!("caching {sha256}: {e}"))
                    }
                })?;
        if actual != sha256 {
            return Err(ArtifactError::Corrupt(format!(
                "the download of {sha256} has SHA-256 {actual} ({size} bytes): damaged, refused"
            )));
        }
        tokio::fs::rename(&tmp, &path)
            .await
            .map_err(|e| ArtifactError::Failed(format!("caching {sha256}: {e}")))
    };
    let outcome = match tokio::time::timeout(DOWNLOAD_TIMEOUT, download).await {
        Ok(r) => r,
        Err(_) => Err(failed(format!("not complete within {DOWNLOAD_TIMEOUT:?}"))),
    };
    if outcome.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    outcome.map(|()| path)
}

/// What an unpacked artifact is.
#[derive(Debug, PartialEq)]
pub enum Unpacked {
    /// A tar: the directory holds its files.
    Tree,
    /// One file: `<dir>/app`, executable.
    File,
}

/// Unpacks `file` into `dest` (once; a complete unpack is reused).
pub fn unpack(file: &Path, dest: &Path) -> Result<Unpacked, String> {
    let single = dest.join("app");
    match std::fs::read_to_string(dest.join(COMPLETE)).as_deref() {
        Ok("file") => return Ok(Unpacked::File),
        Ok("tree") => return Ok(Unpacked::Tree),
        _ => {}
    }
    let _ = std::fs::remove_dir_all(dest);
    std::fs::create_dir_all(dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    let mut head = [0u8; 512];
    let n = {
        use std::io::Read;
        let mut f = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) => return Err(format!("{}: {e}", file.display())),
            }
        }
        n
    };
    let open = || std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()));
    let kind = if n >= 2 && head[..2] == [0x1f, 0x8b] {
        let gz = flate2::read::GzDecoder::new(open()?);
        tar::Archive::new(gz)
            .unpack(dest)
            .map_err(|e| format!("unpacking the gzipped tar: {e}"))?;
        Unpacked::Tree
    } else if n >= 262 && &head[257..262] == b"ustar" {
        tar::Archive::new(open()?)
            .unpack(dest)
            .map_err(|e| format!("unpacking the tar: {e}"))?;
        Unpacked::Tree
    } else {
        std::fs::copy(file, &single).map_err(|e| format!("copying the artifact: {e}"))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&single, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", single.display()))?;
        Unpacked::File
    };
    let marker = if kind == Unpacked::File {
        "file"
    } else {
        "tree"
    };
    std::fs::write(dest.join(COMPLETE), marker).map_err(|e| format!("{}: {e}", dest.display()))?;
    Ok(kind)
}

/// The command line to run in `dest`: the app's `command` (a relative program is looked
/// up in the unpacked directory), or the single file itself.
pub fn command(
    app_command: &[String],
    dest: &Path,
    kind: &Unpacked,
) -> Result<Vec<String>, String> {
    if let Some(program) = app_command.first() {
        let mut argv = app_command.to_vec();
        let local = dest.join(program.trim_start_matches("./"));
        if !program.starts_with('/') && local.is_file() {
            argv[0] = local.display().to_string();
        }
        return Ok(argv);
    }
    match kind {
        Unpacked::File => Ok(vec![dest.join("app").display().to_string()]),
        Unpacked::Tree => Err(
            "the artifact is an archive: give the app a `command` to run in the unpacked directory"
                .into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_gz(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut b = tar::Builder::new(gz);
        for (name, data, mode) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn archives_and_single_files_unpack_once() {
        let dir = tempfile::tempdir().unwrap();
        let art = dir.path().join("a");
        std::fs::write(
            &art,
            tar_gz(&[
                ("run.sh", b"#!/bin/sh\necho hi\n", 0o755),
                ("conf/app.toml", b"x=1\n", 0o644),
            ]),
        )
        .unwrap();
        let dest = dir.path().join("u");
        assert_eq!(unpack(&art, &dest).unwrap(), Unpacked::Tree);
        assert_eq!(std::fs::read(dest.join("conf/app.toml")).unwrap(), b"x=1\n");
        assert_eq!(unpack(&art, &dest).unwrap(), Unpacked::Tree, "reused");
        let argv = command(
            &["./run.sh".into(), "--flag".into()],
            &dest,
            &Unpacked::Tree,
        )
        .unwrap();
        assert_eq!(
            argv,
            vec![dest.join("run.sh").display().to_string(), "--flag".into()]
        );
        assert!(command(&[], &dest, &Unpacked::Tree)
            .unwrap_err()
            .contains("command"));
        assert_eq!(
            command(&["/bin/true".into()], &dest, &Unpacked::Tree).unwrap(),
            vec!["/bin/true"]
        );

        let bin = dir.path().join("b");
        std::fs::write(&bin, b"#!/bin/sh\necho single\n").unwrap();
        let dest2 = dir.path().join("v");
        assert_eq!(unpack(&bin, &dest2).unwrap(), Unpacked::File);
        assert_eq!(unpack(&bin, &dest2).unwrap(), Unpacked::File);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(dest2.join("app"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o755
        );
        assert_eq!(
            command(&[], &dest2, &Unpacked::File).unwrap(),
            vec![dest2.join("app").display().to_string()]
        );
    }

    #[test]
    fn archives_cannot_write_outside_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        // A hand-made entry named ../escape (the builder refuses such names).
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.as_gnu_mut().unwrap().name[..9].copy_from_slice(b"../escape");
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.extend_from_slice(&[b'x'; 512]);
        raw.extend_from_slice(&[0u8; 1024]);
        let art = dir.path().join("evil.tar");
        std::fs::write(&art, raw).unwrap();
        let dest = dir.path().join("in");
        let _ = unpack(&art, &dest);
        assert!(
            !dir.path().join("escape").exists(),
            "wrote outside its directory"
        );
    }
}
