//! Multi-process control clusters on 127.0.0.x: forming with join tokens, forwarding,
//! leader loss, full restarts, member removal, and refused tokens.

use crate::harness::{control_profile, http, Node};
use serde_json::Value;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

struct Member {
    node: Node,
    api: SocketAddr,
}

/// Starts control node `i` on 127.0.0.(10+i) with fixed ports (so restarts keep them).
fn control(i: u8, join: Option<(&SocketAddr, &str)>) -> Member {
    control_with(i, join, "")
}

/// [`control`] with extra `[control]` settings.
fn control_with(i: u8, join: Option<(&SocketAddr, &str)>, extra: &str) -> Member {
    let ip = format!("127.0.0.{}", 10 + i);
    let (profile, api) =
        control_profile(&format!("c{i}"), &format!("z{i}"), &ip, "DATA", join, extra);
    Member {
        node: Node::run_profile(&profile, &[], &[]),
        api,
    }
}

fn new_token(api: SocketAddr, admin: &str, ttl: u64) -> String {
    let (code, _, body) = http(
        api,
        "POST",
        "/api/v1/tokens",
        Some(admin),
        &format!(r#"{{"role":"control","ttl_secs":{ttl}}}"#),
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    json(&body)["token"].as_str().unwrap().to_string()
}

fn members(api: SocketAddr, admin: &str) -> Value {
    let (code, _, body) = http(api, "GET", "/api/v1/members", Some(admin), "").unwrap();
    assert_eq!(code, 200, "{body}");
    json(&body)
}

/// Retries a write for up to `limit` (through elections); returns its revision.
fn put_eventually(
    apis: &[SocketAddr],
    admin: &str,
    key: &str,
    value: &str,
    limit: Duration,
) -> u64 {
    let start = Instant::now();
    loop {
        for api in apis {
            if let Ok((200, _, body)) = http(
                *api,
                "PUT",
                &format!("/api/v1/kv/{key}"),
                Some(admin),
                value,
            ) {
                return json(&body)["revision"].as_u64().unwrap();
            }
        }
        assert!(
            start.elapsed() < limit,
            "no write succeeded within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read(api: SocketAddr, admin: &str, key: &str) -> Option<String> {
    let (code, _, body) = http(api, "GET", &format!("/api/v1/kv/{key}"), Some(admin), "").unwrap();
    match code {
        200 => Some(json(&body)["kv"]["value"].as_str().unwrap().to_string()),
        404 => None,
        _ => panic!("read {key} on {api}: {code} {body}"),
    }
}

/// Waits until every node answers `/readyz` 200; on timeout shows every node's log.
fn wait_all_ready(nodes: &mut [Member]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in nodes.iter() {
        while !matches!(crate::harness::http_get(n.api, "/readyz"), Ok((200, _, _))) {
            if Instant::now() > deadline {
                let logs: Vec<String> = nodes
                    .iter()
                    .map(|n| format!("===== {} =====\n{}", n.api, n.node.logs()))
                    .collect();
                panic!("not all ready within 30s\n{}", logs.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn refused_join(first: SocketAddr, token: &str, needle: &str) {
    let mut m = control(9, Some((&first, token)));
    let (status, _) = m.node.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", m.node.logs());
    assert!(
        m.node.stderr().contains(needle),
        "expected `{needle}`:\n{}",
        m.node.logs()
    );
}

#[test]
fn three_nodes_form_replicate_survive_leader_loss_and_restart() {
    let mut c1 = control(1, None);
    c1.node.wait_ready(c1.api);
    let admin = c1.node.admin_token();
    let t2 = new_token(c1.api, &admin, 600);
    let mut c2 = control(2, Some((&c1.api, &t2)));
    let t3 = new_token(c1.api, &admin, 600);
    let mut c3 = control(3, Some((&c1.api, &t3)));
    c2.node.wait_ready(c2.api);
    c3.node.wait_ready(c3.api);

    let m = members(c1.api, &admin);
    let voters: Vec<&Value> = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|x| x["role"] == "voter")
        .collect();
    assert_eq!(voters.len(), 3, "{m}");

    // Any node takes writes (followers forward) and linearizable reads see them.
    let apis = [c1.api, c2.api, c3.api];
    for (i, api) in apis.iter().enumerate() {
        let (code, _, body) = http(
            *api,
            "PUT",
            &format!("/api/v1/kv/k{i}"),
            Some(&admin),
            &format!("v{i}"),
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
    }
    for api in &apis {
        for i in 0..3 {
            assert_eq!(
                read(*api, &admin, &format!("k{i}")).as_deref(),
                Some(format!("v{i}").as_str())
            );
        }
    }

    // A token works once; forged and expired ones are refused with a clear reason.
    refused_join(c1.api, &t2, "already used");
    let fp = t2.split('.').nth(1).unwrap();
    refused_join(
        c1.api,
        &format!("tsr1.{fp}.{}", "0".repeat(64)),
        "not known",
    );
    refused_join(c1.api, "tsr1.0000forged", "not a tessera join token");
    let short = new_token(c1.api, &admin, 1);
    std::thread::sleep(Duration::from_millis(2100));
    refused_join(c1.api, &short, "expired");

    // SIGKILL the leader: the others elect a new one and keep every acknowledged write.
    let leader_id = members(c1.api, &admin)["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let m = members(c1.api, &admin);
    let leader_name = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == leader_id.as_str())
        .unwrap()["name"]
        .as_str()
        .unwrap()
        .to_string();
    let mut nodes = vec![c1, c2, c3];
    let li = nodes
        .iter_mut()
        .position(|n| n.node.listeners()["node"] == leader_name.as_str())
        .unwrap();
    nodes[li].node.kill();
    let survivors: Vec<SocketAddr> = nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, n)| n.api)
        .collect();
    let rev = put_eventually(
        &survivors,
        &admin,
        "after-failover",
        "yes",
        Duration::from_secs(15),
    );
    assert!(rev > 0);
    for api in &survivors {
        for i in 0..3 {
            assert_eq!(
                read(*api, &admin, &format!("k{i}")).as_deref(),
                Some(format!("v{i}").as_str())
            );
        }
    }
    // The killed node comes back and catches up.
    nodes[li].node.start_again();
    let api = nodes[li].api;
    nodes[li].node.wait_ready(api);
    let deadline = Instant::now() + Duration::from_secs(15);
    while read(api, &admin, "after-failover").is_none() {
        assert!(Instant::now() < deadline, "restarted node did not catch up");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Stop every node, start them all again: everything committed is still there.
    for n in nodes.iter_mut() {
        n.node.stop();
    }
    for n in nodes.iter_mut() {
        n.node.start_again();
    }
    wait_all_ready(&mut nodes);
    let apis: Vec<SocketAddr> = nodes.iter().map(|n| n.api).collect();
    put_eventually(
        &apis,
        &admin,
        "after-restart",
        "yes",
        Duration::from_secs(15),
    );
    for api in &apis {
        assert_eq!(read(*api, &admin, "after-failover").as_deref(), Some("yes"));
        assert_eq!(read(*api, &admin, "k2").as_deref(), Some("v2"));
    }

    // Remove one member safely.
    let (code, _, body) = http(apis[0], "DELETE", "/api/v1/members/c3", Some(&admin), "").unwrap();
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = members(apis[0], &admin);
        if m["members"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "member not removed: {m}");
        std::thread::sleep(Duration::from_millis(100));
    }
    put_eventually(
        &apis[..2],
        &admin,
        "after-remove",
        "yes",
        Duration::from_secs(15),
    );
}

fn stale_read(api: SocketAddr, admin: &str, key: &str) -> Option<String> {
    let (code, _, body) = http(
        api,
        "GET",
        &format!("/api/v1/kv/{key}?consistency=stale"),
        Some(admin),
        "",
    )
    .unwrap();
    match code {
        200 => Some(json(&body)["kv"]["value"].as_str().unwrap().to_string()),
        404 => None,
        _ => panic!("stale read {key} on {api}: {code} {body}"),
    }
}

fn roles(api: SocketAddr, admin: &str) -> Vec<(String, String)> {
    let m = members(api, admin);
    let mut out: Vec<(String, String)> = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            (
                x["name"].as_str().unwrap().to_string(),
                x["role"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

#[test]
fn five_voters_a_learner_and_a_wiped_member_rejoins_through_a_snapshot() {
    // Frequent snapshots, so the log a new member needs is long purged.
    let small = "snapshot_logs = 100";
    let mut c1 = control_with(1, None, small);
    c1.node.wait_ready(c1.api);
    let admin = c1.node.admin_token();
    let first = c1.api;
    let mut nodes = vec![c1];
    for i in 2..=3 {
        let t = new_token(first, &admin, 600);
        nodes.push(control_with(i, Some((&first, &t)), small));
    }
    wait_all_ready(&mut nodes);
    for i in 0..400 {
        let (code, _, body) = http(
            nodes[i % 3].api,
            "PUT",
            &format!("/api/v1/kv/data/{i:04}"),
            Some(&admin),
            &format!("v{i}"),
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
    }
    // A 4th and 5th become voters; a 6th stays a learner.
    for i in 4..=6 {
        let t = new_token(first, &admin, 600);
        nodes.push(control_with(i, Some((&first, &t)), small));
    }
    wait_all_ready(&mut nodes);
    let r = roles(first, &admin);
    let voters = r.iter().filter(|(_, role)| role == "voter").count();
    assert_eq!((r.len(), voters), (6, 5), "{r:?}");
    // The joins ran concurrently: whichever caught up last stays a learner.
    assert!(r[..3].iter().all(|(_, role)| role == "voter"), "{r:?}");

    // c3 loses its disk. Coming back under its old name is refused until the old member
    // is removed; then it joins as a new member and is sent a snapshot.
    let mut old = nodes.remove(2);
    old.node.kill();
    std::fs::remove_dir_all(&old.node.data_dir).unwrap();
    let t = new_token(first, &admin, 600);
    let mut early = control_with(3, Some((&first, &t)), small);
    let (status, _) = early.node.wait_exit(Duration::from_secs(30));
    assert_eq!(status.code(), Some(1), "{}", early.node.logs());
    assert!(
        early.node.stderr().contains("already exists"),
        "{}",
        early.node.logs()
    );
    let (code, _, body) = http(first, "DELETE", "/api/v1/members/c3", Some(&admin), "").unwrap();
    assert_eq!(code, 200, "{body}");
    let t = new_token(first, &admin, 600);
    let mut back = control_with(3, Some((&first, &t)), small);
    back.node.wait_ready(back.api);
    let deadline = Instant::now() + Duration::from_secs(20);
    while stale_read(back.api, &admin, "data/0399").is_none() {
        assert!(
            Instant::now() < deadline,
            "the rejoined member did not catch up\n{}",
            back.node.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for i in (0..400).step_by(37) {
        assert_eq!(
            stale_read(back.api, &admin, &format!("data/{i:04}")).as_deref(),
            Some(format!("v{i}").as_str())
        );
    }
    assert!(
        back.node.stderr().contains("Installed snapshot"),
        "the rejoined member should have caught up through a snapshot\n{}",
        back.node.logs()
    );
    nodes.push(back);
    let r = roles(first, &admin);
    assert_eq!(r.len(), 6, "{r:?}");

    // Restart everyone: all data intact, and the cluster takes writes again.
    for n in nodes.iter_mut() {
        n.node.stop();
    }
    for n in nodes.iter_mut() {
        n.node.start_again();
    }
    wait_all_ready(&mut nodes);
    let apis: Vec<SocketAddr> = nodes.iter().map(|n| n.api).collect();
    put_eventually(&apis, &admin, "after", "yes", Duration::from_secs(15));
    for n in &nodes {
        for i in (0..400).step_by(53) {
            assert_eq!(
                read(n.api, &admin, &format!("data/{i:04}")).as_deref(),
                Some(format!("v{i}").as_str())
            );
        }
    }
}

#[test]
fn certificates_renew_from_the_replicated_ca_without_a_restart() {
    // Renewing when fewer than 400 days are left renews the 365-day certificates at once.
    let renew = "cert_renew_days = 400";
    let mut c1 = control_with(1, None, renew);
    c1.node.wait_ready(c1.api);
    let admin = c1.node.admin_token();
    let t = new_token(c1.api, &admin, 600);
    let mut c2 = control_with(2, Some((&c1.api, &t)), renew);
    c2.node.wait_ready(c2.api);
    let first = std::fs::read_to_string(c2.node.data_dir.join("control/pki/node.pem")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    for n in [&c1, &c2] {
        while !n.node.stderr().contains("Renewed this node's certificate") {
            assert!(Instant::now() < deadline, "no renewal\n{}", n.node.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let renewed = std::fs::read_to_string(c2.node.data_dir.join("control/pki/node.pem")).unwrap();
    assert_ne!(first, renewed, "a new certificate is on disk");
    // Peers keep talking with the new certificates, live and after a restart.
    put_eventually(
        &[c2.api],
        &admin,
        "after-renewal",
        "1",
        Duration::from_secs(10),
    );
    assert_eq!(read(c1.api, &admin, "after-renewal").as_deref(), Some("1"));
    c1.node.restart();
    c2.node.restart();
    let mut nodes = vec![c1, c2];
    wait_all_ready(&mut nodes);
    put_eventually(
        &[nodes[1].api],
        &admin,
        "after-restart",
        "1",
        Duration::from_secs(15),
    );
    assert_eq!(
        read(nodes[0].api, &admin, "after-restart").as_deref(),
        Some("1")
    );
}

/// Resources on a 3-node cluster: writes through any node (forwarded to the leader),
/// concurrent conflicting changes of which exactly one wins, and the estate and its
/// audit chain intact after the leader is killed.
#[test]
fn resources_across_a_cluster_serialize_conflicts_and_survive_leader_loss() {
    let mut c1 = control(4, None);
    c1.node.wait_ready(c1.api);
    let admin = c1.node.admin_token();
    let t2 = new_token(c1.api, &admin, 600);
    let mut c2 = control(5, Some((&c1.api, &t2)));
    let t3 = new_token(c1.api, &admin, 600);
    let mut c3 = control(6, Some((&c1.api, &t3)));
    c2.node.wait_ready(c2.api);
    c3.node.wait_ready(c3.api);
    let apis = [c1.api, c2.api, c3.api];
    // Slot 99 stays free: no shard map yet.
    let estate = crate::resources::BASE
        .split("---")
        .filter(|d| !d.contains("kind: ShardMap"))
        .collect::<Vec<_>>()
        .join("---")
        .replace("slots: [\"50-99\"]", "slots: [\"50-98\"]");
    let (code, _, body) = http(c3.api, "POST", "/api/v1/apply", Some(&admin), &estate).unwrap();
    assert_eq!(code, 200, "{body}");
    for api in &apis {
        let (code, _, body) = http(*api, "GET", "/api/v1/units", Some(&admin), "").unwrap();
        assert_eq!(code, 200);
        assert_eq!(json(&body)["items"].as_array().unwrap().len(), 3, "{body}");
    }
    // Eight clients, spread over the nodes, each create an RZone owning slot 99 at once.
    let winners: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (api, admin) = (apis[i % 3], admin.clone());
                s.spawn(move || {
                    let unit = format!(r#"{{"apiVersion":"tessera.io/v1","kind":"Unit","metadata":{{"name":"rz9{i}"}},"spec":{{"type":"RZone","zone":"hz-a","slots":["99"]}}}}"#);
                    http(api, "PUT", &format!("/api/v1/units/rz9{i}"), Some(&admin), &unit)
                        .unwrap()
                        .0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        winners.iter().filter(|c| **c == 201).count(),
        1,
        "exactly one may own slot 99: {winners:?}"
    );
    assert!(
        winners.iter().all(|c| *c == 201 || *c == 409),
        "{winners:?}"
    );

    // Kill the leader; the survivors keep the estate and take changes.
    let m = members(c1.api, &admin);
    let leader = m["leader"].as_str().unwrap().to_string();
    let leader_api = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == leader.as_str())
        .and_then(|x| x["api"].as_str())
        .map(|u| {
            u.trim_start_matches("http://")
                .parse::<SocketAddr>()
                .unwrap()
        })
        .unwrap();
    let mut nodes = [c1, c2, c3];
    for n in nodes.iter_mut() {
        if n.api == leader_api {
            n.node.kill();
        }
    }
    let survivors: Vec<SocketAddr> = apis.iter().copied().filter(|a| *a != leader_api).collect();
    let zone =
        "apiVersion: tessera.io/v1\nkind: Zone\nmetadata: {name: sh-b}\nspec: {region: shanghai}\n";
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ok = survivors.iter().any(|api| {
            matches!(
                http(*api, "POST", "/api/v1/apply", Some(&admin), zone),
                Ok((200, _, _))
            )
        });
        if ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no apply succeeded after the leader was killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _, body) =
        http(survivors[0], "GET", "/api/v1/zones/sh-b", Some(&admin), "").unwrap();
    assert_eq!(code, 200, "{body}");
    let (code, _, body) = http(survivors[1], "GET", "/api/v1/units", Some(&admin), "").unwrap();
    assert_eq!(code, 200);
    assert_eq!(json(&body)["items"].as_array().unwrap().len(), 4, "{body}");
    let verify = crate::harness::tessera(
        &[
            "audit",
            "verify",
            "--server",
            &format!("http://{}", survivors[0]),
            "--token",
            &admin,
        ],
        &[],
    );
    assert!(
        verify.status.success(),
        "{}",
        crate::harness::stderr(&verify)
    );
}

/// A follower that fell behind by more large entries than one Raft RPC may carry still
/// catches up: replication sends them in bounded batches.
#[test]
fn a_follower_behind_by_many_large_entries_catches_up() {
    let mut c1 = control(7, None);
    c1.node.wait_ready(c1.api);
    let admin = c1.node.admin_token();
    let t2 = new_token(c1.api, &admin, 600);
    let mut c2 = control(8, Some((&c1.api, &t2)));
    let t3 = new_token(c1.api, &admin, 600);
    let mut c3 = control(9, Some((&c1.api, &t3)));
    c2.node.wait_ready(c2.api);
    c3.node.wait_ready(c3.api);
    // Stop a follower (not the leader), then write 100 values of 1 MiB (a bit over 100 MiB
    // of entries, more than one RPC body may hold) through the leader.
    let leader = members(c1.api, &admin)["leader"]
        .as_str()
        .unwrap()
        .to_string();
    let m = members(c1.api, &admin);
    let leader_name = m["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["id"] == leader.as_str())
        .and_then(|x| x["name"].as_str())
        .unwrap()
        .to_string();
    let (lagging, writer) = if leader_name == "c8" {
        (&mut c3, c1.api)
    } else {
        (&mut c2, c1.api)
    };
    lagging.node.signal("STOP");
    let big = "x".repeat(1 << 20);
    for i in 0..100 {
        let (code, _, body) = http(
            writer,
            "PUT",
            &format!("/api/v1/kv/big/{i:03}"),
            Some(&admin),
            &big,
        )
        .unwrap();
        assert_eq!(code, 200, "{body}");
    }
    lagging.node.signal("CONT");
    let resumed = Instant::now();
    let deadline = resumed + Duration::from_secs(60);
    while stale_read(lagging.api, &admin, "big/099").is_none() {
        assert!(
            Instant::now() < deadline,
            "the follower did not catch up within 60 s\n{}",
            lagging.node.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "the follower caught up on 100 MiB in {:?}",
        resumed.elapsed()
    );
}

#[test]
fn artifact_contents_are_copied_to_every_member_and_fetched_back_when_missing() {
    let mut c1 = control(20, None);
    c1.node.wait_ready(c1.api);
    let admin = c1.node.admin_token();
    let t2 = new_token(c1.api, &admin, 600);
    let mut c2 = control(21, Some((&c1.api, &t2)));
    let t3 = new_token(c1.api, &admin, 600);
    // The third member scrubs its copies every second.
    let mut c3 = control_with(22, Some((&c1.api, &t3)), "blob_scrub_interval_secs = 1\n");
    c2.node.wait_ready(c2.api);
    c3.node.wait_ready(c3.api);
    // 5 MB pushed to a follower-or-leader alike: written as it arrives, then copied.
    let content: String = (0..5_000_000u32)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let sha = {
        use sha2::Digest;
        sha2::Sha256::digest(content.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let path = format!("/api/v1/blobs/{sha}");
    let (code, _, body) = http(c2.api, "PUT", &path, Some(&admin), &content).unwrap();
    assert_eq!(code, 200, "{body}");
    let v = json(&body);
    assert_eq!(
        (v["copies"].as_u64(), v["members"].as_u64()),
        (Some(3), Some(3)),
        "{body}"
    );
    for m in [&c1, &c2, &c3] {
        assert!(m.node.data_dir.join("control/blobs").join(&sha).is_file());
        let (code, _, got) = http(m.api, "GET", &path, Some(&admin), "").unwrap();
        assert_eq!(code, 200);
        assert!(got == content, "member {} served other bytes", m.api);
    }
    // A member that lost its copy fetches it from another and keeps it.
    std::fs::remove_file(c3.node.data_dir.join("control/blobs").join(&sha)).unwrap();
    let (code, _, got) = http(c3.api, "GET", &path, Some(&admin), "").unwrap();
    assert_eq!(code, 200);
    assert!(got == content);
    assert!(c3.node.data_dir.join("control/blobs").join(&sha).is_file());
    // A copy that rots on disk is found by the scrub and moved aside; the next request
    // fetches a good copy from another member.
    let copy = c3.node.data_dir.join("control/blobs").join(&sha);
    let mut rotten = content.clone().into_bytes();
    rotten[4_000_000] ^= 0x20;
    std::fs::write(&copy, &rotten).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while copy.exists() {
        assert!(
            Instant::now() < deadline,
            "the rotten copy was not found\n{}",
            c3.node.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let aside = std::fs::read_dir(c3.node.data_dir.join("control/blobs/corrupt"))
        .unwrap()
        .count();
    assert_eq!(aside, 1);
    let (code, _, got) = http(c3.api, "GET", &path, Some(&admin), "").unwrap();
    assert_eq!(code, 200);
    assert!(got == content, "a good copy is served again");
    let (_, _, metrics) = http(c3.api, "GET", "/metrics", Some(&admin), "").unwrap();
    assert!(
        metrics.contains("tessera_control_blob_scrub_corrupt_total 1"),
        "{metrics}"
    );
    // Copies stream: 64 MiB pushed, copied and fetched back raise no member's peak
    // memory by anything near their size.
    let big: String = (0..64u32 << 20)
        .map(|i| char::from(b'a' + (i % 23) as u8))
        .collect();
    let big_sha = {
        use sha2::Digest;
        sha2::Sha256::digest(big.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let peak = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    };
    let before: Vec<u64> = [&c1, &c2, &c3].iter().map(|m| peak(m.node.pid())).collect();
    let big_path = format!("/api/v1/blobs/{big_sha}");
    let (code, _, body) = http(c2.api, "PUT", &big_path, Some(&admin), &big).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(json(&body)["copies"].as_u64(), Some(3), "{body}");
    std::fs::remove_file(c3.node.data_dir.join("control/blobs").join(&big_sha)).unwrap();
    let (code, _, got) = http(c3.api, "GET", &big_path, Some(&admin), "").unwrap();
    assert_eq!(code, 200);
    assert!(
        got.len() == big.len() && got == big,
        "the fetched copy differs"
    );
    drop(got);
    for (i, m) in [&c1, &c2, &c3].iter().enumerate() {
        let grew = peak(m.node.pid()).saturating_sub(before[i]);
        assert!(grew < 32 << 10, "member {} peaked {grew} KiB higher", m.api);
    }
    // A damaged upload is refused and leaves nothing behind.
    let (code, _, body) = http(
        c1.api,
        "PUT",
        &format!("/api/v1/blobs/{}", "ab".repeat(32)),
        Some(&admin),
        "not it",
    )
    .unwrap();
    assert_eq!(code, 422, "{body}");
    let leftovers: Vec<_> = std::fs::read_dir(c1.node.data_dir.join("control/blobs"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        2,
        "the two artifacts, no partial file: {leftovers:?}"
    );
}
