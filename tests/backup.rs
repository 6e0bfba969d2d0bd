//! `tessera snapshot save` / `restore`: a consistent, checksummed backup, and a new
//! cluster started from it that keeps the data, the revisions and the cluster CA.

use crate::harness::{ephemeral_ports, http, stderr, stdout, tessera, Node};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn ca_fingerprint(token: &str) -> String {
    token
        .trim()
        .split('.')
        .nth(1)
        .unwrap_or_default()
        .to_string()
}

#[test]
fn a_backup_restores_into_a_new_cluster_with_the_same_data_and_ca() {
    let mut a = Node::up(&[]);
    let api = a.addr("control", "api");
    a.wait_ready(api);
    let ta = a.admin_token();
    let t = Some(ta.as_str());
    let mut revs = Vec::new();
    for i in 0..50 {
        let (code, _, body) = http(
            api,
            "PUT",
            &format!("/api/v1/kv/app/{i:02}"),
            t,
            &format!("v{i}"),
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
        revs.push(json(&body)["revision"].as_u64().unwrap());
    }
    let (_, _, body) = http(api, "POST", "/api/v1/leases", t, r#"{"ttl_secs":600}"#).unwrap();
    let lease = json(&body)["id"].as_u64().unwrap();
    http(
        api,
        "PUT",
        &format!("/api/v1/kv/live/a?lease={lease}"),
        t,
        "up",
    )
    .unwrap();
    let server = format!("http://{api}");
    let token_a = tessera(
        &[
            "token", "create", "--role", "control", "--server", &server, "--token", &ta,
        ],
        &[],
    );
    assert!(token_a.status.success(), "{}", stderr(&token_a));

    let work = tempfile::tempdir().unwrap();
    let file = work.path().join("backup.snap");
    let file_s = file.display().to_string();
    let out = tessera(
        &[
            "snapshot", "save", &file_s, "--server", &server, "--token", &ta,
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("revision"), "{}", stdout(&out));
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the backup holds the CA key");
    a.stop();

    // Damage is named and nothing is staged.
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x20;
    let bad = work.path().join("bad.snap");
    std::fs::write(&bad, &bytes).unwrap();
    let fresh = work.path().join("never");
    let out = tessera(
        &[
            "snapshot",
            "restore",
            &bad.display().to_string(),
            "--data-dir",
            &fresh.display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("checksum"), "{}", stderr(&out));
    assert!(!fresh.join("control").exists());
    std::fs::write(&bad, &bytes[..bytes.len() - 40]).unwrap();
    let out = tessera(
        &[
            "snapshot",
            "restore",
            &bad.display().to_string(),
            "--data-dir",
            &fresh.display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    // A data dir that already holds a store is refused.
    let out = tessera(
        &[
            "snapshot",
            "restore",
            &file_s,
            "--data-dir",
            &a.data_dir.display().to_string(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("fresh"), "{}", stderr(&out));

    // Restore into a fresh data dir and start a single node on it.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = tessera(
        &[
            "snapshot",
            "restore",
            &file_s,
            "--data-dir",
            &data.display().to_string(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let mut args = vec![
        "up".to_string(),
        "--data-dir".into(),
        data.display().to_string(),
    ];
    args.extend(ephemeral_ports());
    let mut b = Node::start(dir, &args, &[]);
    let api_b = b.addr("control", "api");
    b.wait_ready(api_b);
    let tb = b.admin_token();
    assert_ne!(tb, ta, "the new node writes its own admin token");
    for token in [&ta, &tb] {
        let t = Some(token.as_str());
        for (i, rev) in revs.iter().enumerate() {
            let (code, _, body) =
                http(api_b, "GET", &format!("/api/v1/kv/app/{i:02}"), t, "").unwrap();
            assert_eq!(code, 200, "{body}\n{}", b.logs());
            let v = json(&body);
            assert_eq!(v["kv"]["value"], format!("v{i}"));
            assert_eq!(v["kv"]["mod_revision"], *rev);
        }
    }
    let t = Some(tb.as_str());
    let (_, _, body) = http(api_b, "GET", &format!("/api/v1/leases/{lease}"), t, "").unwrap();
    assert_eq!(json(&body)["keys"], serde_json::json!(["live/a"]), "{body}");
    // Revisions keep growing from where the backup stood.
    let (code, _, body) = http(api_b, "PUT", "/api/v1/kv/after", t, "x").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(json(&body)["revision"].as_u64().unwrap() > *revs.last().unwrap());
    let (_, _, body) = http(api_b, "GET", "/api/v1/members", t, "").unwrap();
    let m = json(&body);
    assert_eq!(m["members"].as_array().unwrap().len(), 1, "{body}");
    assert_ne!(m["cluster_id"], Value::Null);
    // The cluster CA came along: join tokens name the same CA.
    let server_b = format!("http://{api_b}");
    let token_b = tessera(
        &[
            "token", "create", "--role", "control", "--server", &server_b, "--token", &tb,
        ],
        &[],
    );
    assert!(token_b.status.success(), "{}", stderr(&token_b));
    assert_eq!(
        ca_fingerprint(&stdout(&token_b)),
        ca_fingerprint(&stdout(&token_a))
    );
    b.restart();
    let api_b = b.addr("control", "api");
    b.wait_ready(api_b);
    let (code, _, _) = http(api_b, "GET", "/api/v1/kv/after", t, "").unwrap();
    assert_eq!(code, 200, "{}", b.logs());
}
