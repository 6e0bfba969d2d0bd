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

/// Appends the trailer to a snapshot body.
pub fn seal(mut body: Vec<u8>, revision: u64, keys: usize, cluster_id: &str) -> Vec<u8> {
    let info = BackupInfo {
        tessera_snapshot: 1,
        bytes: body.len() as u64,
        sha256: crate::util::hex(&Sha256::digest(&body)),
        revision,
        keys: keys as u64,
        cluster_id: cluster_id.to_string(),
    };
    // Serializing a plain struct cannot fail.
    let _ = serde_json::to_writer(&mut body, &info);
    body.push(b'\n');
    body
}

/// Checks a backup file and returns its body and trailer.
pub fn open(file: &[u8]) -> Result<(&[u8], BackupInfo), String> {
    let without_newline = file.strip_suffix(b"\n").unwrap_or(file);
    let start = without_newline
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |p| p + 1);
    let trailer = &without_newline[start..];
    let info: BackupInfo = serde_json::from_slice(trailer).map_err(|_| {
        "not a tessera snapshot, or cut short: the last line is not its trailer".to_string()
    })?;
    if info.tessera_snapshot != 1 {
        return Err(format!(
            "snapshot format {} is not supported by this binary",
            info.tessera_snapshot
        ));
    }
    let body = &file[..start];
    if body.len() as u64 != info.bytes {
        return Err(format!(
            "the snapshot body is {} bytes but its trailer says {}: the file is damaged",
            body.len(),
            info.bytes
        ));
    }
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
}
