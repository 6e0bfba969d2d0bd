//! The raw KV API of a single control node: revisions, ranges, transactions, auth, bad
//! input, and durability across a restart.

use crate::harness::{http, Node};
use serde_json::Value;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn ready_control() -> (Node, std::net::SocketAddr, String) {
    let mut n = Node::up(&[]);
    let api = n.addr("control", "api");
    n.wait_ready(api);
    let token = n.admin_token();
    (n, api, token)
}

#[test]
fn kv_round_trip_carries_revisions() {
    let (_n, api, t) = ready_control();
    let t = Some(t.as_str());
    let (code, _, b1) = http(api, "PUT", "/api/v1/kv/app/a", t, "1").unwrap();
    assert_eq!(code, 200, "{b1}");
    let r1 = json(&b1)["revision"].as_u64().unwrap();
    let (_, _, b2) = http(api, "PUT", "/api/v1/kv/app/a", t, "2").unwrap();
    let v2 = json(&b2);
    let r2 = v2["revision"].as_u64().unwrap();
    assert!(r2 > r1);
    assert_eq!(v2["prev"]["value"], "1");

    let (code, head, body) = http(api, "GET", "/api/v1/kv/app/a", t, "").unwrap();
    assert_eq!(code, 200);
    let v = json(&body);
    assert_eq!(v["kv"]["value"], "2");
    assert_eq!(v["kv"]["mod_revision"], r2);
    assert_eq!(v["kv"]["create_revision"], r1);
    assert_eq!(v["kv"]["version"], 2);
    assert!(v["revision"].as_u64().unwrap() >= r2);
    assert!(head.contains("x-tessera-revision:"), "{head}");

    http(api, "PUT", "/api/v1/kv/app/b", t, "x").unwrap();
    let (_, _, body) = http(api, "GET", "/api/v1/kv/app/?prefix=true", t, "").unwrap();
    let v = json(&body);
    assert_eq!(v["items"].as_array().unwrap().len(), 2, "{body}");
    let (_, _, body) = http(api, "GET", "/api/v1/kv/app/?prefix=true&limit=1", t, "").unwrap();
    assert_eq!(json(&body)["more"], true);

    let cas = format!(
        r#"{{"compare":[{{"key":"app/a","op":"equal","target":{{"mod_revision":{r2}}}}}],
            "success":[{{"op":"put","key":"app/a","value":"3"}}],
            "failure":[]}}"#
    );
    let (code, _, body) = http(api, "POST", "/api/v1/kv/txn", t, &cas).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["succeeded"], true);
    let (_, _, body) = http(api, "POST", "/api/v1/kv/txn", t, &cas).unwrap();
    assert_eq!(json(&body)["succeeded"], false, "a stale compare must fail");

    let (_, _, body) = http(api, "DELETE", "/api/v1/kv/app/?prefix=true", t, "").unwrap();
    assert_eq!(json(&body)["deleted"], 2);
    let (code, _, body) = http(api, "GET", "/api/v1/kv/app/a", t, "").unwrap();
    assert_eq!(code, 404);
    assert_eq!(json(&body)["code"], "not_found");

    let (code, _, body) = http(api, "GET", "/api/v1/members", t, "").unwrap();
    assert_eq!(code, 200);
    let m = json(&body);
    assert_eq!(m["members"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(m["members"][0]["role"], "voter");
    assert_eq!(m["members"][0]["leader"], true);
}

#[test]
fn tokens_are_required() {
    let (_n, api, _) = ready_control();
    for token in [None, Some("tsr_wrong")] {
        let (code, _, body) = http(api, "GET", "/api/v1/kv/x", token, "").unwrap();
        assert_eq!(code, 401, "{body}");
        assert_eq!(json(&body)["code"], "unauthorized");
    }
    // Health and the public index need none.
    assert_eq!(http(api, "GET", "/healthz", None, "").unwrap().0, 200);
    assert_eq!(http(api, "GET", "/", None, "").unwrap().0, 200);
}

#[test]
fn bad_input_gets_clear_4xx_errors() {
    let (_n, api, t) = ready_control();
    let t = Some(t.as_str());
    let cases: Vec<(&str, String, String, u16, &str)> = vec![
        ("PUT", "/api/v1/kv/a%01b".into(), "v".into(), 400, "key"),
        (
            "PUT",
            format!("/api/v1/kv/{}", "k".repeat(1025)),
            "v".into(),
            400,
            "key",
        ),
        (
            "PUT",
            "/api/v1/kv/big".into(),
            "x".repeat((1 << 20) + 1),
            413,
            "limit",
        ),
        (
            "POST",
            "/api/v1/kv/txn".into(),
            "{not json".into(),
            400,
            "body",
        ),
        (
            "POST",
            "/api/v1/kv/txn".into(),
            r#"{"compare":[],"success":[{"op":"frob","key":"a"}]}"#.into(),
            400,
            "body",
        ),
        (
            "GET",
            "/api/v1/kv/a?consistency=eventual".into(),
            String::new(),
            400,
            "consistency",
        ),
        (
            "GET",
            "/api/v1/kv/a?limit=0".into(),
            String::new(),
            400,
            "limit",
        ),
        (
            "GET",
            "/api/v1/kv/a?bogus=1".into(),
            String::new(),
            400,
            "query",
        ),
    ];
    for (method, path, body, want, needle) in cases {
        let (code, _, resp) = http(api, method, &path, t, &body).unwrap();
        assert_eq!(
            code,
            want,
            "{method} {}: {resp}",
            &path[..path.len().min(60)]
        );
        let v = json(&resp);
        assert!(v["code"].is_string() && v["message"].is_string(), "{resp}");
        assert!(resp.contains(needle), "{resp} lacks {needle}");
    }
    // Nothing was written by the refused requests.
    let (code, _, _) = http(api, "GET", "/api/v1/kv/big", t, "").unwrap();
    assert_eq!(code, 404);
}

#[test]
fn a_restart_keeps_every_acknowledged_write() {
    let (mut n, api, t) = ready_control();
    let mut last = 0;
    for i in 0..50 {
        let (code, _, body) = http(
            api,
            "PUT",
            &format!("/api/v1/kv/keep/{i:02}"),
            Some(&t),
            &i.to_string(),
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        last = json(&body)["revision"].as_u64().unwrap();
    }
    n.restart();
    let api = n.addr("control", "api");
    n.wait_ready(api);
    assert_eq!(n.admin_token(), t, "the admin token survives a restart");
    let (_, _, body) = http(api, "GET", "/api/v1/kv/keep/?prefix=true", Some(&t), "").unwrap();
    let v = json(&body);
    assert_eq!(v["items"].as_array().unwrap().len(), 50, "{body}");
    assert!(v["revision"].as_u64().unwrap() >= last);
    let (_, _, body) = http(api, "PUT", "/api/v1/kv/keep/after", Some(&t), "x").unwrap();
    assert!(
        json(&body)["revision"].as_u64().unwrap() > last,
        "revisions keep increasing"
    );
}

#[test]
fn secrets_are_out_of_reach_of_the_raw_kv_api() {
    let (_n, api, t) = ready_control();
    let t = Some(t.as_str());
    for (method, path) in [
        ("GET", "/api/v1/kv//tessera/pki/ca"),
        ("PUT", "/api/v1/kv//tessera/pki/ca"),
        ("DELETE", "/api/v1/kv//tessera/?prefix=true"),
        ("DELETE", "/api/v1/kv//?prefix=true"),
    ] {
        let (code, _, body) = http(api, method, path, t, "x").unwrap();
        assert_eq!(code, 403, "{method} {path}: {body}");
        assert_eq!(json(&body)["code"], "reserved");
    }
    let (code, _, body) = http(api, "GET", "/api/v1/kv//?prefix=true", t, "").unwrap();
    assert_eq!(code, 200);
    assert!(
        !body.contains("/tessera/pki/") && !body.contains("/tessera/tokens/"),
        "{body}"
    );
    let txn = r#"{"success":[{"op":"put","key":"/tessera/tokens/x","value":"{}"}]}"#;
    let (code, _, body) = http(api, "POST", "/api/v1/kv/txn", t, txn).unwrap();
    assert_eq!(code, 403, "{body}");
}

#[test]
fn the_peer_listener_speaks_only_mutual_tls() {
    use std::io::{Read, Write};
    let (mut n, _, _) = ready_control();
    let peer = n.addr("control", "peer");
    let mut s = std::net::TcpStream::connect(peer).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let _ = s.write_all(b"POST /raft/v1/vote HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}");
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        !String::from_utf8_lossy(&buf).starts_with("HTTP/"),
        "plaintext got an HTTP answer: {buf:?}"
    );
    assert!(n.data_dir.join("control/pki/node.key").exists());
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(n.data_dir.join("control/ca/ca.key"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o077, 0, "the CA key must be private");
}

/// Reads SSE events (id, event, data) from a raw stream until `n` arrived or time is up.
pub(crate) fn read_sse(s: &mut std::net::TcpStream, n: usize) -> Vec<(u64, String, Value)> {
    use std::io::Read;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    loop {
        let events: Vec<(u64, String, Value)> = text
            .split("\n\n")
            .filter_map(|block| {
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_string())
                };
                Some((
                    field("id:")?.parse().ok()?,
                    field("event:")?,
                    serde_json::from_str(&field("data:")?).ok()?,
                ))
            })
            .collect();
        if events.len() >= n || std::time::Instant::now() > deadline {
            return events;
        }
        match s.read(&mut buf) {
            Ok(0) => return events,
            Ok(k) => text.push_str(&String::from_utf8_lossy(&buf[..k])),
            Err(_) => {}
        }
    }
}

#[test]
fn watches_replay_from_a_revision_then_follow_live() {
    use std::io::Write;
    let (_n, api, t) = ready_control();
    let put = |k: &str, v: &str| {
        json(
            &http(api, "PUT", &format!("/api/v1/kv/{k}"), Some(&t), v)
                .unwrap()
                .2,
        )["revision"]
            .as_u64()
            .unwrap()
    };
    let r1 = put("w/a", "1");
    let r2 = put("w/b", "2");
    let (_, _, body) = http(api, "DELETE", "/api/v1/kv/w/a", Some(&t), "").unwrap();
    let r3 = json(&body)["revision"].as_u64().unwrap();
    put("other", "x");

    let mut s = std::net::TcpStream::connect(api).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    write!(s, "GET /api/v1/kv-watch?prefix=w/&since={r1} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n").unwrap();
    let replayed = read_sse(&mut s, 2);
    assert_eq!(
        replayed
            .iter()
            .map(|e| (e.0, e.1.as_str()))
            .collect::<Vec<_>>(),
        vec![(r2, "put"), (r3, "delete")]
    );
    assert_eq!(replayed[0].2["kv"]["value"], "2");
    let r4 = put("w/c", "3");
    let all = read_sse(&mut s, 3);
    assert_eq!(
        all.last().map(|e| (e.0, e.1.as_str())),
        Some((r4, "put")),
        "{all:?}"
    );

    let (code, _, body) =
        http(api, "GET", "/api/v1/kv-watch?since=999999999", Some(&t), "").unwrap();
    assert_eq!(code, 400, "{body}");
}

#[test]
fn raft_and_store_metrics_are_exported() {
    let (_n, api, t) = ready_control();
    for i in 0..5 {
        http(api, "PUT", &format!("/api/v1/kv/m/{i}"), Some(&t), "x").unwrap();
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (code, _, body) = crate::harness::http_get(api, "/metrics").unwrap();
        assert_eq!(code, 200);
        let has = |line: &str| body.lines().any(|l| l.starts_with(line));
        if has("tessera_raft_is_leader 1")
            && has("tessera_raft_members{role=\"voter\"} 1")
            && body.contains("tessera_raft_proposed_commands_total")
            && !has("tessera_store_revision 0")
            && has("tessera_store_revision")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "metrics missing:\n{body}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// curl (TLS, HTTP/2 by ALPN) against the peer listener, trusting the cluster CA.
fn curl_peer(
    ca: &std::path::Path,
    peer: std::net::SocketAddr,
    path: &str,
    body: &str,
    cert: Option<(&std::path::Path, &std::path::Path)>,
) -> (String, String) {
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "--max-time", "10", "--cacert"])
        .arg(ca)
        .args([
            "-w",
            "\n%{http_code} %{http_version}",
            "-X",
            "POST",
            "-d",
            body,
        ])
        .arg(format!("https://{peer}{path}"));
    if let Some((c, k)) = cert {
        cmd.arg("--cert").arg(c).arg("--key").arg(k);
    }
    let out = cmd
        .output()
        .expect("curl (scripts/deps.sh test installs it)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        body.to_string(),
        format!("{status} {}", String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn join_tokens_and_forwarded_requests_travel_only_over_tls() {
    let (mut n, api, _) = ready_control();
    let peer = n.addr("control", "peer");
    // The plain API only tells where to go: the CA and the leader's peer address.
    let (code, _, body) = http(api, "GET", "/api/v1/join/info", None, "").unwrap();
    assert_eq!(code, 200, "{body}");
    let info = json(&body);
    assert!(info["ca"].as_str().unwrap().contains("BEGIN CERTIFICATE"));
    assert_eq!(info["leader"]["peer"], peer.to_string());
    let (code, _, _) = http(api, "POST", "/api/v1/join", None, "{}").unwrap();
    assert_eq!(code, 404, "no join over plain HTTP");

    let ca = n.data_dir.join("control/ca/ca.pem");
    assert!(ca.exists());
    // Without a client certificate: the join endpoints answer, Raft does not.
    let forged = format!("tsr1.{}.{}", "a".repeat(64), "0".repeat(64));
    let (body, status) = curl_peer(
        &ca,
        peer,
        "/api/v1/join/cert",
        &format!(
            r#"{{"token":"{forged}","node_id":"7","name":"x","ips":["127.0.0.1"],"csr":"x"}}"#
        ),
        None,
    );
    assert!(
        status.starts_with("403 2") || status.starts_with("400 2"),
        "{status}: {body}"
    );
    // (No body: an HTTP/2 server that answers before reading one resets the stream,
    // which curl reports as an error.)
    let (body, status) = curl_peer(&ca, peer, "/raft/v1/vote", "", None);
    assert!(
        status.starts_with("404 2"),
        "Raft RPCs need a member certificate: {status} {body}"
    );
    // With the node's own certificate the Raft routes are there.
    let pki = n.data_dir.join("control/pki");
    let (body, status) = curl_peer(
        &ca,
        peer,
        "/raft/v1/vote",
        "{}",
        Some((&pki.join("node.pem"), &pki.join("node.key"))),
    );
    assert!(!status.starts_with("404"), "{status} {body}");
    // The API on the peer listener (where followers forward to the leader) is for
    // members only, and still wants the caller's bearer token.
    let (body, status) = curl_peer(&ca, peer, "/api/v1/tokens", "", None);
    assert!(status.starts_with("404 2"), "{status} {body}");
    let (body, status) = curl_peer(
        &ca,
        peer,
        "/api/v1/tokens",
        "",
        Some((&pki.join("node.pem"), &pki.join("node.key"))),
    );
    assert!(status.starts_with("401 2"), "{status} {body}");
}
