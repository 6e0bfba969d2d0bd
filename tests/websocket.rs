//! WebSocket (any HTTP/1.1 protocol switch) through the gateway: routed by uid like any
//! request, joined byte for byte with the unit's endpoint after its `101`, counted as an
//! open tunnel; an endpoint that declines answers for itself; a unit without endpoints
//! gets the gateway's 503.

use crate::gateway::{estate, rule};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

/// A WebSocket-ish backend: switches protocols (or, under `/ws/deny`, refuses with
/// 403), then answers every chunk it reads with `echo:` + the chunk. Returns its address
/// and the request heads it saw.
fn backend() -> (SocketAddr, std::sync::mpsc::Receiver<String>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming().take(8) {
            let Ok(mut c) = conn else { continue };
            let tx = tx.clone();
            std::thread::spawn(move || {
                c.set_read_timeout(Some(Duration::from_secs(20))).ok();
                let mut head = Vec::new();
                let mut b = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if c.read(&mut b).unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(b[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let _ = tx.send(head.clone());
                if head.starts_with("get /ws/deny") || !head.contains("upgrade: websocket") {
                    let _ =
                        c.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 6\r\n\r\ndenied");
                    return;
                }
                let _ = c.write_all(b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n");
                let mut buf = [0u8; 1024];
                loop {
                    match c.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            let mut out = b"echo:".to_vec();
                            out.extend_from_slice(&buf[..n]);
                            if c.write_all(&out).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    (addr, rx)
}

/// Sends an upgrade request for `path` as user `uid`; returns the stream and the
/// answer's head (lowercased).
fn upgrade(gw: SocketAddr, path: &str, uid: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect_timeout(&gw, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: chat.bank.local\r\nx-tessera-uid: {uid}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "the gateway closed: {head:?}");
        head.push(b[0]);
    }
    (s, String::from_utf8_lossy(&head).to_lowercase())
}

fn exchange(s: &mut TcpStream, msg: &str) -> String {
    s.write_all(msg.as_bytes()).unwrap();
    let want = format!("echo:{msg}");
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    while got.len() < want.len() {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "the tunnel closed");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

fn tunnels(metrics: &str) -> Option<u64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tessera_gateway_tunnels "))
        .and_then(|v| v.trim().parse().ok())
}

#[test]
fn websockets_are_tunnelled_to_the_users_unit() {
    let e = estate(&[]);
    let (ws, heads) = backend();
    e.apply(&[
        format!("---\napiVersion: tessera.io/v1\nkind: App\nmetadata: {{name: chat}}\nspec: {{mode: external, endpoints: [{{address: '{ws}', unit: rz00}}]}}\n"),
        rule("chat", "{app: chat, pathPrefix: /ws}"),
    ]
    .concat());

    let (mut s, head) = upgrade(e.gw, "/ws/room-7", "2088000000000007");
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains("upgrade: websocket") && head.contains("x-tessera-unit: rz00"),
        "{head}"
    );
    let seen = heads.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(
        seen.contains("x-tessera-unit: rz00") && seen.contains("sec-websocket-key:"),
        "{seen}"
    );
    assert_eq!(exchange(&mut s, "hello"), "echo:hello");
    assert_eq!(exchange(&mut s, "second frame"), "echo:second frame");
    assert_eq!(tunnels(&e.metrics()), Some(1), "one open tunnel");
    drop(s);
    let deadline = Instant::now() + Duration::from_secs(5);
    while tunnels(&e.metrics()) != Some(0) {
        assert!(Instant::now() < deadline, "the tunnel was not closed");
        std::thread::sleep(Duration::from_millis(50));
    }

    // The endpoint declines: its own answer comes back.
    let (_, head) = upgrade(e.gw, "/ws/deny", "2088000000000007");
    assert!(head.starts_with("http/1.1 403"), "{head}");
    assert!(head.contains("x-tessera-unit: rz00"), "{head}");
    // A user of a unit with no endpoint: the gateway says so.
    let (_, head) = upgrade(e.gw, "/ws/room-7", "2088000000000057");
    assert!(head.starts_with("http/1.1 503"), "{head}");
    assert!(e.gateway.logs().len() < 1_000_000);
}
