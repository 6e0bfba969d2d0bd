//! The Raft channel on the peer listener (ALPN `tessera-raft/1`): length-prefixed frames
//! for appends and votes between members. Bad frames and callers without a member
//! certificate are turned away; the node goes on serving.

use crate::harness::{self, CONTROL_ONLY};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALPN: &[u8] = b"tessera-raft/1";

/// A TLS connection to `peer` offering the Raft channel, presenting this node's own
/// certificate when `member` (as another member would), none otherwise.
async fn connect(
    peer: std::net::SocketAddr,
    pki: &std::path::Path,
    member: bool,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tls = tessera::pki::NodeTls::load(pki).unwrap().expect("node TLS");
    let mut cfg = if member {
        tls.client_config().unwrap()
    } else {
        tessera::pki::anonymous_client_config(&std::fs::read_to_string(pki.join("ca.pem")).unwrap())
            .unwrap()
    };
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    let tcp = tokio::net::TcpStream::connect(peer).await.unwrap();
    let name = rustls::pki_types::ServerName::IpAddress(peer.ip().into());
    let s = tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap();
    assert_eq!(
        s.get_ref().1.alpn_protocol(),
        Some(ALPN),
        "the server chose the channel"
    );
    s
}

fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    out.push(kind);
    out.extend_from_slice(body);
    out
}

/// Reads one answer frame: (status byte, body); `None` when the server closed instead.
async fn answer<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<(u8, String)> {
    let mut head = [0u8; 4];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), s.read_exact(&mut head))
        .await
        .expect("an answer or a close within 10 s");
    read.ok()?;
    let mut body = vec![0u8; u32::from_be_bytes(head) as usize];
    s.read_exact(&mut body).await.ok()?;
    let status = body.remove(0);
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

#[test]
fn the_raft_channel_refuses_bad_frames_and_strangers_and_the_node_serves_on() {
    let (mut control, api, token, _) = harness::control(CONTROL_ONLY);
    let peer = control.addr("control", "peer");
    let pki = control.data_dir.join("control").join("pki");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut s = connect(peer, &pki, true).await;
        // An unknown call and a body that is not a request: refused with the reason, and
        // the connection stays usable.
        s.write_all(&frame(9, b"{}")).await.unwrap();
        let (status, why) = answer(&mut s).await.expect("an answer");
        assert_eq!((status, why.as_str()), (1, "unknown call 9"));
        s.write_all(&frame(1, b"{not json")).await.unwrap();
        let (status, why) = answer(&mut s).await.expect("an answer");
        assert_eq!(status, 1);
        assert!(why.starts_with("bad append request"), "{why}");
        // A vote from a stranger with a stale term: answered (not granted), nothing changes.
        let vote = br#"{"vote":{"leader_id":{"term":0,"node_id":7},"committed":false},"last_log_id":null}"#;
        s.write_all(&frame(2, vote)).await.unwrap();
        let (status, body) = answer(&mut s).await.expect("an answer");
        assert_eq!(status, 0, "{body}");
        assert!(body.contains("\"vote_granted\":false"), "{body}");
        // A length of zero, then one over the limit: the server hangs up.
        s.write_all(&0u32.to_be_bytes()).await.unwrap();
        assert_eq!(answer(&mut s).await, None);
        let mut s = connect(peer, &pki, true).await;
        s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert_eq!(answer(&mut s).await, None);
        // Without a member certificate the channel is closed before any call.
        let mut s = connect(peer, &pki, false).await;
        let _ = s.write_all(&frame(2, vote)).await;
        assert_eq!(answer(&mut s).await, None);
    });
    // The node is unharmed: a write commits.
    let (code, _, body) =
        harness::http(api, "PUT", "/api/v1/kv/after-bad-frames", Some(&token), "v").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(
        control.logs().contains("Raft call refused"),
        "refusals are logged"
    );
}
