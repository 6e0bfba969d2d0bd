//! The backup file of `tessera snapshot save`: the body of a Raft snapshot (a JSON header
//! line, then one key per line) followed by one JSON trailer line that names its length,
//! SHA-256, revision and key count. A file that was cut short, edited or corrupted fails
//! the check before anything reads its contents.

use sha2::{Digest, Sha256};

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BackupInfo {
    /// Always 1 for this format.
    pub tessera_snapshot: u32,
    /// Bytes of the body (everything before the trailer line).
    pub bytes: u64,
    /// Lower-case hex SHA-256 of the body.
    pub sha256: String,
    /// The revision the backup is consistent at.
    pub revision: u64,
    pub keys: u64,
    /// The cluster it was taken from.
    pub cluster_id: String,
}

/// Appends the trailer to a snapshot body (the whole file in memory: what the format's
/// tests build; the server writes through [`Hashing`] and [`trailer`]).
#[cfg(test)]
pub fn seal(mut body: Vec<u8>, revision: u64, keys: usize, cluster_id: &str) -> Vec<u8> {
    let sha = crate::util::hex(&Sha256::digest(&body));
    let t = trailer(body.len() as u64, sha, revision, keys, cluster_id);
    body.extend_from_slice(&t);
    body
}

/// The trailer line of a body of `bytes` bytes whose SHA-256 is `sha256`.
pub fn trailer(
    bytes: u64,
    sha256: String,
    revision: u64,
    keys: usize,
    cluster_id: &str,
) -> Vec<u8> {
    let info = BackupInfo {
        tessera_snapshot: 1,
        bytes,
        sha256,
        revision,
        keys: keys as u64,
        cluster_id: cluster_id.to_string(),
    };
    // Serializing a plain struct cannot fail.
    let mut out = serde_json::to_vec(&info).unwrap_or_default();
    out.push(b'\n');
    out
}

/// A writer that hashes and counts what passes through it (a body being written).
pub struct Hashing<W> {
    pub inner: W,
    sha: Sha256,
    pub bytes: u64,
}

impl<W: std::io::Write> Hashing<W> {
    pub fn new(inner: W) -> Self {
        Hashing {
            inner,
            sha: Sha256::new(),
            bytes: 0,
        }
    }

    /// The lower-case hex SHA-256 of everything written.
    pub fn sha256(&self) -> String {
        crate::util::hex(&self.sha.clone().finalize())
    }
}

impl<W: std::io::Write> std::io::Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.sha.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Checks a backup file on disk as [`open`] checks one in memory, reading it in pieces:
/// the trailer (its last line), the body's length and SHA-256, and that the body parses.
pub fn check_file(path: &std::path::Path) -> Result<BackupInfo, String> {
    use std::io::{Read, Seek, SeekFrom};
    let at = |e: std::io::Error| format!("{}: {e}", path.display());
    let mut f = std::fs::File::open(path).map_err(at)?;
    let len = f.metadata().map_err(at)?.len();
    // The trailer is one short JSON line at the end.
    let tail_len = len.min(64 << 10);
    f.seek(SeekFrom::Start(len - tail_len)).map_err(at)?;
    let mut tail = vec![0u8; tail_len as usize];
    f.read_exact(&mut tail).map_err(at)?;
    let without_newline = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let start_in_tail = match without_newline.iter().rposition(|b| *b == b'\n') {
        Some(p) => p + 1,
        None if tail_len == len => 0,
        None => return Err("not a tessera snapshot: no trailer line at its end".into()),
    };
    let body_len = len - tail_len + start_in_tail as u64;
    let info = read_trailer(&without_newline[start_in_tail..], body_len)?;
    f.rewind().map_err(at)?;
    let mut h = Sha256::new();
    let mut body = (&mut f).take(body_len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = body.read(&mut buf).map_err(at)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    let sum = crate::util::hex(&h.finalize());
    if sum != info.sha256 {
        return Err(format!(
            "checksum mismatch: the body hashes to {sum}, the trailer says {}; the file is damaged",
            info.sha256
        ));
    }
    f.rewind().map_err(at)?;
    super::sm::check_snapshot(std::io::BufReader::new(f.take(body_len)))
        .map_err(|e| format!("the snapshot body: {e}"))?;
    Ok(info)
}

/// The trailer line `line` of a file whose body is `body_len` bytes, checked.
fn read_trailer(line: &[u8], body_len: u64) -> Result<BackupInfo, String> {
    let info: BackupInfo = serde_json::from_slice(line).map_err(|_| {
        "not a tessera snapshot, or cut short: the last line is not its trailer".to_string()
    })?;
    if info.tessera_snapshot != 1 {
        return Err(format!(
            "snapshot format {} is not supported by this binary",
            info.tessera_snapshot
        ));
    }
    if body_len != info.bytes {
        return Err(format!(
            "the snapshot body is {body_len} bytes but its trailer says {}: the file is damaged",
            info.bytes
        ));
    }
    Ok(info)
}

/// Checks a backup file held in memory and returns its body and trailer (the format's
/// tests; files on disk go through [`check_file`]).
#[cfg(test)]
pub fn open(file: &[u8]) -> Result<(&[u8], BackupInfo), String> {
    let without_newline = file.strip_suffix(b"\n").unwrap_or(file);
    let start = without_newline
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let body = &file[..start];
    let info = read_trailer(&without_newline[start..], body.len() as u64)?;
    let sum = crate::util::hex(&Sha256::digest(body));
    if sum != info.sha256 {
        return Err(format!(
            "checksum mismatch: the body hashes to {sum}, the trailer says {}; the file is damaged",
            info.sha256
        ));
    }
    // The body must also parse: a sealed but foreign body is refused here, not at start.
    super::sm::check_snapshot(body).map_err(|e| format!("the snapshot body: {e}"))?;
    Ok((body, info))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body() -> Vec<u8> {
        let header = serde_json::to_string(&super::super::sm::SnapshotHeader {
            format: 1,
            last_applied: Some(openraft::LogId::new(
                openraft::CommittedLeaderId::new(2, 7),
                42,
            )),
            revision: 42,
            membership: Default::default(),
            leases: vec![],
        })
        .unwrap();
        let kv = r#"{"key":"/a","value":"1","create_revision":3,"mod_revision":3,"version":1}"#;
        format!("{header}\n{kv}\n").into_bytes()
    }

    #[test]
    fn a_sealed_file_opens_and_every_damage_is_named() {
        let file = seal(body(), 42, 1, "c1");
        let (b, info) = open(&file).unwrap();
        assert_eq!(b, body().as_slice());
        assert_eq!((info.revision, info.keys), (42, 1));

        let mut flipped = file.clone();
        flipped[60] ^= 1;
        assert!(open(&flipped).unwrap_err().contains("checksum"));

        let cut = &file[..file.len() - 10];
        assert!(open(cut).unwrap_err().contains("trailer"));

        // A whole line dropped: the length no longer matches.
        let full = body();
        let first_line = full.iter().position(|b| *b == b'\n').unwrap() + 1;
        let mut forged = full[..first_line].to_vec();
        forged.extend_from_slice(&file[body().len()..]);
        assert!(open(&forged).unwrap_err().contains("bytes"));

        assert!(open(b"").is_err());
        assert!(open(b"hello\n").is_err());
        let junk = seal(b"not json\n".to_vec(), 1, 0, "c");
        assert!(open(&junk).unwrap_err().contains("body"));
    }

    /// The file check agrees with the in-memory one on every case above.
    #[test]
    fn a_file_on_disk_is_checked_the_same_way() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.snap");
        let check = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            check_file(&path)
        };
        let file = seal(body(), 42, 1, "c1");
        let info = check(&file).unwrap();
        assert_eq!(
            (info.revision, info.keys, info.cluster_id.as_str()),
            (42, 1, "c1")
        );
        let mut flipped = file.clone();
        flipped[60] ^= 1;
        assert!(check(&flipped).unwrap_err().contains("checksum"));
        assert!(check(&file[..file.len() - 10])
            .unwrap_err()
            .contains("trailer"));
        assert!(check(b"").is_err());
        assert!(check(b"hello\n").is_err());
        let junk = seal(b"not json\n".to_vec(), 1, 0, "c");
        assert!(check(&junk).unwrap_err().contains("body"));
        // Written through the hashing writer, then sealed with its trailer: the same file.
        let mut w = Hashing::new(Vec::new());
        std::io::Write::write_all(&mut w, &body()).unwrap();
        let (sha, n) = (w.sha256(), w.bytes);
        let mut streamed = w.inner;
        streamed.extend_from_slice(&trailer(n, sha, 42, 1, "c1"));
        assert_eq!(streamed, file);
    }
}
