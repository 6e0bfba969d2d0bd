//! A control node whose disk fills up: the write that meets the full disk fails with an
//! error that says so, no acknowledged write is lost, the node reports why it is not
//! ready, and once the disk is freed a restart brings everything back.
//!
//! The disk is a small tmpfs mounted for the test (this needs root, as CI has; without
//! it the test says it was skipped).

use crate::harness::{control_profile, http, http_get, Node};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmpfs mounted at a path, unmounted (and the path removed) when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Option<Tmpfs> {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        if let Some(parent) = self.0.parent() {
            let _ = std::fs::remove_dir_all(parent);
        }
    }
}

/// Fills the file system holding `dir` (a file of 1 MiB writes until ENOSPC, bounded).
fn fill(dir: &Path) -> PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 1 << 20];
    for _ in 0..512 {
        if f.write_all(&chunk).and_then(|_| f.flush()).is_err() {
            break;
        }
    }
    // The last, partial megabyte too.
    for _ in 0..1024 {
        if f.write_all(&chunk[..1024]).is_err() {
            break;
        }
    }
    path
}

fn value(i: usize) -> String {
    format!("{i:06}-{}", "v".repeat(60_000))
}

/// Writes `full/<i>` (60 kB each) through `api` until one is refused (bounded: 3,000 x 60
/// kB is far beyond 96 MiB): the acknowledged `i`s, and the refusal (status, body).
fn write_until_refused(api: SocketAddr, token: &str) -> (Vec<usize>, Option<(u16, String)>) {
    let mut acknowledged = Vec::new();
    for i in 0..3000 {
        let (code, _, body) = http(
            api,
            "PUT",
            &format!("/api/v1/kv/full/{i}"),
            Some(token),
            &value(i),
        )
        .unwrap();
        if code != 200 {
            return (acknowledged, Some((code, body)));
        }
        acknowledged.push(i);
    }
    (acknowledged, None)
}

#[test]
fn a_full_disk_refuses_writes_clearly_and_loses_no_acknowledged_one() {
    let Some((mut n, api, disk)) = member(0, None) else {
        eprintln!("skipped: cannot mount a tmpfs here (the test needs root)");
        return;
    };
    let token = admin_token(&disk);

    let filler = fill(&disk.0);
    let (acknowledged, refusal) = write_until_refused(api, &token);
    // The write that met the full disk: refused (`unavailable`), or, when Raft stopped
    // while it was in flight, `outcome_unknown` (on a cluster the entry may already be on
    // other members); either way the answer names the cause.
    let (code, body) = refusal.expect("a write was refused on a full disk");
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("\"unavailable\"") || body.contains("\"outcome_unknown\""),
        "{body}"
    );
    assert!(body.contains("No space left on device"), "{body}");
    // The node says why it is not ready (Raft stopped on the storage error).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, _, body) = http_get(api, "/readyz").unwrap();
        if code == 503 && body.contains("storage error") {
            assert!(body.contains("No space left on device"), "{body}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "readyz: {code} {body}\n{}",
            n.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Further writes fail too, never 200 and never a 500.
    let (code, _, body) = http(api, "PUT", "/api/v1/kv/full/after", Some(&token), "x").unwrap();
    assert!(code == 503, "{code} {body}");

    // Killed without grace, the disk freed, started again: every acknowledged write is
    // there with its value, and new writes go through.
    n.kill();
    std::fs::remove_file(&filler).unwrap();
    n.start_again();
    let api = n.addr("control", "api");
    n.wait_ready(api);
    for i in &acknowledged {
        let (code, _, body) = http(
            api,
            "GET",
            &format!("/api/v1/kv/full/{i}"),
            Some(&token),
            "",
        )
        .unwrap();
        assert_eq!(code, 200, "acknowledged key full/{i} lost: {body}");
        assert!(
            body.contains(&format!("{i:06}-vvv")),
            "full/{i}: {}",
            &body[..body.len().min(200)]
        );
    }
    let (code, _, body) = http(api, "PUT", "/api/v1/kv/full/again", Some(&token), "x").unwrap();
    assert_eq!(code, 200, "{body}");
    eprintln!(
        "{} writes acknowledged before the disk was full, all present after a restart",
        acknowledged.len()
    );
    drop(n);
}

/// Control node `i` on 127.0.0.(60+i) (bootstrapping, or joining through `join`), its data
/// directory on a tmpfs of its own, ready: (node, API address, the tmpfs).
fn member(i: u8, join: Option<(SocketAddr, &str)>) -> Option<(Node, SocketAddr, Tmpfs)> {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    let disk = Tmpfs::mount(&data, "96m")?;
    let ip = format!("127.0.0.{}", 60 + i);
    let data_dir = data.display().to_string();
    let join = join.as_ref().map(|(url, token)| (url, *token));
    let (text, api) = control_profile(&format!("d{i}"), "z1", &ip, &data_dir, join, "");
    let profile = dir.path().join("profile.toml");
    std::fs::write(&profile, text).unwrap();
    let args = [
        "run".to_string(),
        "--profile".into(),
        profile.display().to_string(),
    ];
    let mut node = Node::start(dir, &args, &[]);
    node.wait_ready(api);
    Some((node, api, disk))
}

/// The admin token the bootstrap node wrote into its data directory.
fn admin_token(disk: &Tmpfs) -> String {
    std::fs::read_to_string(disk.0.join("admin.token"))
        .unwrap()
        .trim()
        .to_string()
}

fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn a_leader_whose_disk_fills_gives_way_and_no_acknowledged_write_is_lost() {
    let Some((n1, api1, disk1)) = member(1, None) else {
        eprintln!("skipped: cannot mount a tmpfs here (the test needs root)");
        return;
    };
    let admin = admin_token(&disk1);
    let token = |api: SocketAddr| {
        let (code, _, body) = http(
            api,
            "POST",
            "/api/v1/tokens",
            Some(&admin),
            r#"{"role":"control","ttl_secs":600}"#,
        )
        .unwrap();
        assert_eq!(code, 201, "{body}");
        json(&body)["token"].as_str().unwrap().to_string()
    };
    let t2 = token(api1);
    let (n2, api2, disk2) = member(2, Some((api1, &t2))).unwrap();
    let t3 = token(api1);
    let (n3, api3, disk3) = member(3, Some((api1, &t3))).unwrap();
    let mut nodes = [(n1, api1, disk1), (n2, api2, disk2), (n3, api3, disk3)];
    // Fill the leader's disk.
    let (code, _, body) = http(api1, "GET", "/api/v1/members", Some(&admin), "").unwrap();
    assert_eq!(code, 200, "{body}");
    let m = json(&body);
    let leader_api = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == m["leader"])
        .and_then(|x| x["api"].as_str())
        .map(|u| {
            u.trim_start_matches("http://")
                .parse::<SocketAddr>()
                .unwrap()
        })
        .unwrap();
    let l = nodes.iter().position(|n| n.1 == leader_api).unwrap();
    let filler = fill(&nodes[l].2 .0);
    let others: Vec<SocketAddr> = nodes
        .iter()
        .map(|n| n.1)
        .filter(|a| *a != leader_api)
        .collect();

    // Writes through the leader until one is refused; then through the others, which
    // elect a leader among themselves and take writes again.
    let (acknowledged, refusal) = write_until_refused(leader_api, &admin);
    let (code, body) = refusal.expect("a write was refused on the leader's full disk");
    assert_eq!(code, 503, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut after = None;
    'wait: while Instant::now() < deadline {
        for api in &others {
            if let Ok((200, _, _)) = http(*api, "PUT", "/api/v1/kv/full/after", Some(&admin), "x") {
                after = Some(*api);
                break 'wait;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let survivor = after.unwrap_or_else(|| {
        panic!(
            "the other members took no write within 20 s\n{}",
            nodes
                .iter()
                .map(|n| n.0.logs())
                .collect::<Vec<_>>()
                .join("\n=====\n")
        )
    });
    let check = |api: SocketAddr| {
        for i in &acknowledged {
            let (code, _, body) = http(
                api,
                "GET",
                &format!("/api/v1/kv/full/{i}"),
                Some(&admin),
                "",
            )
            .unwrap();
            assert_eq!(code, 200, "acknowledged key full/{i} lost on {api}: {body}");
            assert!(body.contains(&format!("{i:06}-vvv")), "full/{i} on {api}");
        }
    };
    check(survivor);
    // The old leader, its disk freed and restarted, catches up.
    nodes[l].0.kill();
    std::fs::remove_file(&filler).unwrap();
    nodes[l].0.start_again();
    nodes[l].0.wait_ready(leader_api);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, _, body) =
            http(leader_api, "GET", "/api/v1/kv/full/after", Some(&admin), "").unwrap();
        if code == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "{code} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    check(leader_api);
    eprintln!(
        "{} writes acknowledged before the leader's disk was full; a new leader took writes, and every one is on both",
        acknowledged.len()
    );
}
