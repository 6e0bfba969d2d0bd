//! The agent: `tessera up --demo` end to end (the demo's echo instances started by the
//! local agent, routed by uid through the gateway), instance restarts, and an agent in
//! its own process that enrols with a join token, runs the instances placed on it,
//! keeps them running while it is stopped and adopts them when it comes back.

use crate::harness::{http, Node};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

pub(crate) fn get_uid(gw: SocketAddr, uid: &str) -> Option<(String, Value)> {
    let mut s = TcpStream::connect_timeout(&gw, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET / HTTP/1.1\r\nHost: x\r\nx-tessera-uid: {uid}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    Some((head.to_ascii_lowercase(), serde_json::from_str(body).ok()?))
}

/// Waits until `uid` is answered with 200; returns the answer.
pub(crate) fn wait_served(
    gw: SocketAddr,
    uid: &str,
    within: Duration,
    logs: &dyn Fn() -> String,
) -> (String, Value) {
    let deadline = Instant::now() + within;
    loop {
        if let Some(a) = get_uid(gw, uid) {
            return a;
        }
        assert!(
            Instant::now() < deadline,
            "uid {uid} not served within {within:?}\n{}",
            logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Kills the instance processes a test's agents left running (they outlive their agent
/// on purpose), even when the test fails half way.
struct Reaper(Vec<u64>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid.to_string()])
                .status();
        }
    }
}

/// An object of the API as JSON.
fn read(api: SocketAddr, token: &str, path: &str) -> Value {
    let (_, _, body) = http(api, "GET", path, Some(token), "").unwrap();
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

fn pid_alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| !s.contains(") Z"))
}

#[test]
fn up_demo_serves_users_from_their_unit_and_restarts_a_killed_instance() {
    let mut n = Node::up(&["--demo"]);
    let gw = n.addr("gateway", "entrance");
    let api = n.addr("control", "api");
    n.wait_ready(api);
    let logs = || String::new();
    let (head, v) = wait_served(gw, "2088000000000007", Duration::from_secs(30), &logs);
    assert!(
        head.contains("x-tessera-unit: rz00") && head.contains("x-tessera-zone: hz-a"),
        "{head}"
    );
    assert_eq!(
        (v["unit"].as_str(), v["zone"].as_str(), v["app"].as_str()),
        (Some("rz00"), Some("hz-a"), Some("echo"))
    );
    let (head, v) = wait_served(gw, "2088000000000057", Duration::from_secs(30), &logs);
    assert!(
        head.contains("x-tessera-unit: rz01") && head.contains("x-tessera-zone: hz-b"),
        "{head}"
    );
    assert_eq!(v["instance"], "echo-rz01-0");
    // The instance's status names its process; kill it: the agent starts it again.
    let token = n.admin_token();
    let inst = read(api, &token, "/api/v1/instances/echo-rz00-0");
    let pid = inst["status"]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("{inst}"));
    assert!(pid_alive(pid));
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let inst = read(api, &token, "/api/v1/instances/echo-rz00-0");
        let new_pid = inst["status"]["pid"].as_u64();
        if new_pid.is_some_and(|p| p != pid) && inst["status"]["ready"] == true {
            assert!(
                inst["status"]["restarts"].as_u64().unwrap_or(0) >= 1,
                "{inst}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not restarted: {inst}\n{}",
            n.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_served(gw, "2088000000000007", Duration::from_secs(10), &logs);
    // The crash and the agent's start are node events (`tessera get events`).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = http(api, "GET", "/api/v1/events", Some(&token), "").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        let reasons: Vec<(String, String)> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["spec"]["reason"].as_str().unwrap_or("").to_string(),
                    e["spec"]["instance"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();
        if reasons.contains(&("InstanceExited".into(), "echo-rz00-0".into()))
            && reasons.iter().any(|(r, _)| r == "AgentStarted")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{reasons:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Ctrl-C stops the instances `up` started.
    let inst = read(api, &token, "/api/v1/instances/echo-rz00-0");
    let new_pid = inst["status"]["pid"].as_u64().unwrap_or(pid);
    n.signal("INT");
    let (status, _) = n.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "{}", n.logs());
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(new_pid) {
        assert!(
            Instant::now() < deadline,
            "instance {new_pid} outlived `up`"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

const CONTROL: &str = r#"
node_name = "ctl-1"
roles = ["control", "gateway"]
data_dir = "DATA"
zone = "hz-a"
[control]
bootstrap = true
listen = "127.0.0.1:0"
peer_listen = "127.0.0.1:0"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
"#;

/// The shared topology plus a VM-mode echo app in both RZones and a rule to it.
fn estate() -> String {
    format!(
        "{}---\n{}",
        crate::harness::TOPOLOGY,
        r#"apiVersion: tessera.io/v1
kind: App
metadata: {name: echo}
spec: {mode: vm, artifact: "builtin:echo", port: 9000, units: [rz00, rz01], healthCheck: {path: /healthz, intervalSecs: 1, timeoutSecs: 1}, resources: {openFiles: 1000}}
---
apiVersion: tessera.io/v1
kind: TrafficRule
metadata: {name: echo}
spec: {app: echo}
"#
    )
}

#[test]
fn agents_in_two_zones_run_their_units_and_adopt_instances_after_a_restart() {
    let mut c = Node::run_profile(CONTROL, &[], &[]);
    let api = c.addr("control", "api");
    let gw = c.addr("gateway", "entrance");
    c.wait_ready(api);
    let token = c.admin_token();
    let (code, _, body) = http(api, "POST", "/api/v1/apply", Some(&token), &estate()).unwrap();
    assert_eq!(code, 200, "{body}");
    let agent = |name: &str, zone: &str, ip: &str| -> Node {
        crate::harness::agent(api, &token, name, zone, ip, "")
    };
    let mut a = agent("host-a", "hz-a", "127.0.0.11");
    let b = agent("host-b", "hz-b", "127.0.0.12");
    let logs = || String::new();
    // Placement puts rz00's instance on host-a (hz-a) and rz01's on host-b (hz-b).
    let (_, v) = wait_served(gw, "2088000000000007", Duration::from_secs(30), &logs);
    assert_eq!(
        (v["unit"].as_str(), v["zone"].as_str()),
        (Some("rz00"), Some("hz-a"))
    );
    let (_, v) = wait_served(gw, "2088000000000057", Duration::from_secs(30), &logs);
    assert_eq!(
        (v["unit"].as_str(), v["zone"].as_str()),
        (Some("rz01"), Some("hz-b"))
    );
    let inst = read(api, &token, "/api/v1/instances/echo-rz00-0");
    assert_eq!(inst["spec"]["node"], "host-a", "{body}");
    assert!(
        inst["status"]["endpoint"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.11:"),
        "{body}"
    );
    let pid = inst["status"]["pid"].as_u64().unwrap();
    // Its resource limits were applied (`openFiles` is an rlimit under any mechanism).
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    assert!(
        limits.lines().any(|l| l.starts_with("Max open files")
            && l.split_whitespace().filter(|w| *w == "1000").count() == 2),
        "{limits}"
    );
    assert!(
        inst["status"]["limits"]
            .as_str()
            .unwrap_or("")
            .contains("open files 1000"),
        "{inst}"
    );
    let other = read(api, &token, "/api/v1/instances/echo-rz01-0");
    let _reaper = Reaper(vec![pid, other["status"]["pid"].as_u64().unwrap_or(0)]);
    // The nodes registered themselves, with heartbeats.
    let (_, _, body) = http(api, "GET", "/api/v1/nodes/host-b", Some(&token), "").unwrap();
    let node: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(node["spec"]["zone"], "hz-b", "{body}");
    assert!(node["status"]["heartbeatMs"].as_u64().is_some(), "{body}");
    // An agent may not report on another node's instances.
    let cred = std::fs::read_to_string(a.data_dir.join("agent/credential")).unwrap();
    let (code, _, _) = http(
        api,
        "PUT",
        "/api/v1/instances/echo-rz01-0/status",
        Some(cred.trim()),
        r#"{"status": {"ready": false}}"#,
    )
    .unwrap();
    assert_eq!(code, 403);
    // Stop host-a's agent: its instance keeps serving; started again, it adopts it.
    a.stop();
    assert!(pid_alive(pid), "the instance died with its agent");
    assert!(get_uid(gw, "2088000000000007").is_some());
    a.start_again();
    std::thread::sleep(Duration::from_secs(3));
    let inst = read(api, &token, "/api/v1/instances/echo-rz00-0");
    assert_eq!(
        inst["status"]["pid"].as_u64(),
        Some(pid),
        "not adopted: {body}\n{}",
        a.logs()
    );
    assert!(
        a.logs().contains("Adopted a running instance"),
        "{}",
        a.logs()
    );
    wait_served(gw, "2088000000000007", Duration::from_secs(10), &logs);
    // An admin revokes the agent's credential (deletes its user): the agent notices,
    // enrols again with its join token (the same node may), and carries on.
    let first = std::fs::read_to_string(a.data_dir.join("agent/credential")).unwrap();
    let (code, _, body) = http(
        api,
        "DELETE",
        "/api/v1/users/agent-host-a",
        Some(&token),
        "",
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let now = std::fs::read_to_string(a.data_dir.join("agent/credential")).unwrap_or_default();
        if !now.trim().is_empty() && now != first {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not enrolled again\n{}",
            a.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        pid_alive(pid),
        "the instance died while its agent enrolled again"
    );
    // Stop the agent for good and kill its instance: placement moves nothing (no other
    // node in hz-a), and rz01 on host-b is untouched.
    a.stop();
    std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(get_uid(gw, "2088000000000057").is_some());
    drop(b);
}

#[test]
fn an_instance_upgraded_under_load_fails_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    let mut n = Node::up(&["--demo", "--set", "gateway.access_log=false"]);
    let gw = n.addr("gateway", "entrance");
    let api = n.addr("control", "api");
    n.wait_ready(api);
    let logs = || String::new();
    wait_served(gw, "2088000000000007", Duration::from_secs(30), &logs);
    let token = n.admin_token();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let versions = Arc::new(Mutex::new(std::collections::BTreeSet::new()));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failed, versions) =
                (stop.clone(), ok.clone(), failed.clone(), versions.clone());
            std::thread::spawn(move || {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match get_uid(gw, "2088000000000007") {
                        Some((_, v)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            versions
                                .lock()
                                .unwrap()
                                .insert(v["version"].as_str().unwrap_or("?").to_string());
                        }
                        None => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(Instant::now());
                        }
                    }
                }
                errors.len()
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // The upgrade: the instance's version changes; the agent starts v2 beside v1,
    // reports it once ready, then drains and stops v1.
    let mut inst = read(api, &token, "/api/v1/instances/echo-rz00-0");
    let started = Instant::now();
    let before = ok.load(Ordering::Relaxed);
    inst["spec"]["version"] = "v2".into();
    let (code, _, body) = http(
        api,
        "PUT",
        "/api/v1/instances/echo-rz00-0",
        Some(&token),
        &inst.to_string(),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !versions.lock().unwrap().contains("v2") {
        assert!(Instant::now() < deadline, "v2 never served\n{}", n.logs());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Past the old process's drain and stop.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let served = ok.load(Ordering::Relaxed) - before;
    let rate = served as f64 / started.elapsed().as_secs_f64();
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed requests during the upgrade\n{}",
        n.logs()
    );
    assert!(rate >= 200.0, "only {rate:.0} requests/s");
    eprintln!("upgrade v1 -> v2 under {rate:.0} requests/s: {served} served, 0 failed");
    // v2 only from now on.
    assert_eq!(get_uid(gw, "2088000000000007").unwrap().1["version"], "v2");
    // The old process was stopped once the gateway (registered with the control plane)
    // reported its endpoint drained, not after a fixed grace.
    let v = read(api, &token, "/api/v1/gateways");
    assert_eq!(v["items"][0]["live"], true, "{v}");
    let logs = n.logs();
    assert!(
        logs.contains("Every gateway reports the endpoint drained"),
        "no drain handshake:\n{logs}"
    );
}

#[test]
fn node_events_past_their_retention_are_pruned() {
    let mut n = Node::up(&["--demo", "--set", "control.event_retention_secs=4"]);
    let gw = n.addr("gateway", "entrance");
    let api = n.addr("control", "api");
    n.wait_ready(api);
    let logs = || String::new();
    wait_served(gw, "2088000000000007", Duration::from_secs(30), &logs);
    let token = n.admin_token();
    // A command that exits at once: an InstanceExited event at every restart.
    let crasher = "apiVersion: tessera.io/v1\nkind: App\nmetadata: {name: crasher}\nspec: {mode: vm, command: [/bin/sh, -c, \"exit 7\"], port: 9000, units: [rz00]}\n";
    let (code, _, body) = http(api, "POST", "/api/v1/apply", Some(&token), crasher).unwrap();
    assert_eq!(code, 200, "{body}");
    let names = || -> Vec<String> {
        read(api, &token, "/api/v1/events")["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let first = loop {
        if let Some(f) = names().into_iter().next() {
            break f;
        }
        assert!(Instant::now() < deadline, "no event\n{}", n.logs());
        std::thread::sleep(Duration::from_millis(200));
    };
    // Four seconds later (and a retention pass), it is gone while newer ones remain.
    let deadline = Instant::now() + Duration::from_secs(20);
    while names().contains(&first) {
        assert!(
            Instant::now() < deadline,
            "{first} never pruned\n{}",
            n.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let logs = n.logs();
    assert!(
        logs.contains("Pruned node events past their retention"),
        "{logs}"
    );
    let m = http(api, "GET", "/metrics", None, "").unwrap().2;
    assert!(
        m.lines()
            .any(|l| l.starts_with("tessera_control_events_pruned_total ") && !l.ends_with(" 0")),
        "{m}"
    );
    // API answers are counted by route template.
    assert!(
        m.contains(
            r#"tessera_control_api_requests_total{code="200",method="GET",route="/api/v1/events"}"#
        ),
        "{m}"
    );
    assert!(
        m.contains("tessera_control_api_request_seconds_bucket{"),
        "{m}"
    );
}
