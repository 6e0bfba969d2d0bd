//! The Raft channel: appends and votes between control nodes as length-prefixed frames on
//! a mutual-TLS connection of their own, chosen by ALPN (`tessera-raft/1`) on the peer
//! listener. HTTP/2 stays for everything else on that listener (snapshots, joins,
//! forwarded API calls, artifact copies).
//!
//! Why not HTTP/2 for these too: a commit costs two appends per follower (the entry, then
//! the new commit index), each of which was a stream with its own task, header block,
//! routing and two socket writes. Here a call is one write and one read on a connection
//! that one caller owns at a time, and the follower answers in the connection's task.
//!
//! Frames, both ways: a 4-byte big-endian length of what follows, one byte, then the
//! body. A request's byte names the call ([`APPEND`], [`VOTE`]) and its body is the
//! request in JSON; an answer's byte is [`OK`] (the body is openraft's result in JSON)
//! or [`REFUSED`] (the body says why, in UTF-8: an unknown call, a body that does not
//! parse). Nothing larger than [`MAX_FRAME`] is read or written.

use super::types::*;
use openraft::raft::{AppendEntriesRequest, VoteRequest};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The ALPN protocol name of the Raft channel.
pub const ALPN: &[u8] = crate::pki::RAFT_ALPN;

pub const APPEND: u8 = 1;
pub const VOTE: u8 = 2;
pub const OK: u8 = 0;
pub const REFUSED: u8 = 1;

/// Largest frame (the byte and body) either side accepts: as much as an HTTP/2 RPC body
/// (`rpc::MAX_RPC_BODY`); the client sends at most a quarter of it (`MAX_APPEND_PAYLOAD`).
pub const MAX_FRAME: usize = 64 << 20;

/// Writes one frame in a single write (one TLS record for small frames) and flushes it.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    kind: u8,
    body: &[u8],
) -> std::io::Result<()> {
    let len = body.len() + 1;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a frame of {len} bytes is over the {MAX_FRAME}-byte limit"
        )));
    }
    let mut out = Vec::with_capacity(len + 4);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out.push(kind);
    out.extend_from_slice(body);
    w.write_all(&out).await?;
    w.flush().await
}

/// Reads one frame: `Ok(None)` at a clean end of the stream (before a frame starts).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Option<(u8, Vec<u8>)>> {
    let mut head = [0u8; 4];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(head) as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("frame length {len} is outside 1..={MAX_FRAME}"),
        ));
    }
    let kind = r.read_u8().await?;
    let mut body = vec![0u8; len - 1];
    r.read_exact(&mut body).await?;
    Ok(Some((kind, body)))
}

/// Answers one request frame: the result of the call in JSON, or why it was refused.
async fn answer(raft: &Raft, kind: u8, body: &[u8]) -> (u8, Vec<u8>) {
    fn json<T: serde::Serialize>(v: &T) -> (u8, Vec<u8>) {
        match serde_json::to_vec(v) {
            Ok(b) => (OK, b),
            Err(e) => (
                REFUSED,
                format!("cannot encode the answer: {e}").into_bytes(),
            ),
        }
    }
    match kind {
        APPEND => match serde_json::from_slice::<AppendEntriesRequest<TypeConfig>>(body) {
            Ok(req) => json(&raft.append_entries(req).await),
            Err(e) => (REFUSED, format!("bad append request: {e}").into_bytes()),
        },
        VOTE => match serde_json::from_slice::<VoteRequest<NodeId>>(body) {
            Ok(req) => json(&raft.vote(req).await),
            Err(e) => (REFUSED, format!("bad vote request: {e}").into_bytes()),
        },
        other => (REFUSED, format!("unknown call {other}").into_bytes()),
    }
}

/// A connection with no call for this long is closed by the server.
const IDLE: std::time::Duration = std::time::Duration::from_secs(120);

/// Serves Raft calls on one authenticated connection, one at a time, until the peer
/// closes it, sends a malformed frame, or `shutdown`.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    raft: Raft,
    remote: std::net::SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) {
    loop {
        let frame = tokio::select! {
            _ = shutdown.cancelled() => return,
            f = tokio::time::timeout(IDLE, read_frame(&mut stream)) => f,
        };
        let (kind, body) = match frame {
            Ok(Ok(Some(f))) => f,
            // Closed, or idle too long (a caller that vanished): a live client dials
            // again.
            Ok(Ok(None)) | Err(_) => return,
            Ok(Err(e)) => {
                tracing::warn!(%remote, error = %e, "Raft channel closed: bad frame");
                return;
            }
        };
        let (status, out) = answer(&raft, kind, &body).await;
        if status == REFUSED {
            tracing::warn!(%remote, reason = %String::from_utf8_lossy(&out), "Raft call refused");
        }
        if write_frame(&mut stream, status, &out).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_a_clean_end_is_not_an_error() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        write_frame(&mut a, APPEND, b"{\"x\":1}").await.unwrap();
        write_frame(&mut a, VOTE, b"").await.unwrap();
        drop(a);
        assert_eq!(
            read_frame(&mut b).await.unwrap(),
            Some((APPEND, b"{\"x\":1}".to_vec()))
        );
        assert_eq!(read_frame(&mut b).await.unwrap(), Some((VOTE, vec![])));
        assert_eq!(read_frame(&mut b).await.unwrap(), None);
    }

    #[tokio::test]
    async fn bad_lengths_and_cut_frames_are_errors() {
        for head in [0u32, (MAX_FRAME + 1) as u32, u32::MAX] {
            let (mut a, mut b) = tokio::io::duplex(64);
            a.write_all(&head.to_be_bytes()).await.unwrap();
            let e = read_frame(&mut b).await.unwrap_err();
            assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{head}");
        }
        // A frame cut short: the length promises more than arrives.
        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(&[APPEND, b'{']).await.unwrap();
        drop(a);
        assert!(read_frame(&mut b).await.is_err());
        // Too large to send.
        let (mut a, _b) = tokio::io::duplex(64);
        let big = vec![0u8; MAX_FRAME];
        assert!(write_frame(&mut a, APPEND, &big).await.is_err());
    }
}
