//! Small helpers shared across modules.

use std::io::Read;

/// `N` bytes from the kernel's CSPRNG. An error, never zeros, when it cannot be read.
pub fn random_bytes<const N: usize>() -> std::io::Result<[u8; N]> {
    let mut buf = [0u8; N];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(buf)
}

/// Lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hex string (either case); `None` when it is not hex.
pub fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Writes `path` atomically with permissions `mode` from the first byte: a temp file
/// beside it, fsync, rename, fsync of the directory. A crash leaves the old file or the
/// new one, never a torn one.
pub fn write_atomic(path: &std::path::Path, body: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("the path names no file"))?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(body)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Why [`spool`] stopped.
#[derive(Debug)]
pub enum SpoolError {
    /// Reading the body failed.
    Body(String),
    /// More than the limit arrived.
    TooLarge,
    Io(std::io::Error),
}

/// Writes `body` to a new file `tmp` (0600) as it arrives, hashing it on the way, at most
/// `max` bytes, and syncs it: (SHA-256 in hex, size). Memory stays flat whatever the
/// size. The caller moves the file into place or removes it.
pub async fn spool<B>(
    mut body: B,
    tmp: &std::path::Path,
    max: u64,
) -> Result<(String, u64), SpoolError>
where
    B: hyper::body::Body<Data = bytes::Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    use http_body_util::BodyExt;
    use sha2::Digest;
    use tokio::io::AsyncWriteExt;
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(tmp)
        .await
        .map_err(SpoolError::Io)?;
    let mut hash = sha2::Sha256::new();
    let mut size = 0u64;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| SpoolError::Body(e.to_string()))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        size += data.len() as u64;
        if size > max {
            return Err(SpoolError::TooLarge);
        }
        hash.update(&data);
        file.write_all(&data).await.map_err(SpoolError::Io)?;
    }
    file.sync_all().await.map_err(SpoolError::Io)?;
    Ok((hex(&hash.finalize()), size))
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// `ms` since the epoch as RFC 3339 in UTC with milliseconds (`2026-11-30T08:00:00.123Z`).
pub fn rfc3339_ms(ms: u64) -> String {
    let Ok(t) = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) else {
        return ms.to_string();
    };
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        t.month() as u8,
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// Milliseconds since the epoch of an RFC 3339 time; None when it is not one (or before
/// the epoch).
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let t = time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(t.unix_timestamp_nanos() / 1_000_000).ok()
}

/// Whether `u` is `http://HOST:PORT` with nothing after it (a trailing `/` allowed): how
/// a gateway's admin URL is given and registered.
pub fn is_http_authority_url(u: &str) -> bool {
    let Some(rest) = u.strip_prefix("http://") else {
        return false;
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    !rest.is_empty()
        && rest.len() <= 255
        && !rest.contains(['/', '?', '#', '@', ' '])
        && rest
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0))
}
