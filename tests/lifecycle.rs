//! Processes that start, serve their admin endpoints, and stop cleanly.

use crate::harness::{http_get, Node};
use std::io::Read;
use std::time::Duration;

const CONTROL_AND_GATEWAY: &str = r#"
node_name = "from-file"
roles = ["control", "gateway"]
data_dir = "DATA"
[control]
bootstrap = true
listen = "127.0.0.1:0"
peer_listen = "127.0.0.1:0"
[gateway]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
"#;

fn build_info_node(metrics: &str) -> String {
    let line = metrics
        .lines()
        .find(|l| l.starts_with("tessera_build_info{"))
        .expect("build info metric");
    let start = line.find("node=\"").expect("node label") + 6;
    line[start..].split('"').next().unwrap().to_string()
}

fn running_node_name(extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut n = Node::run_profile(CONTROL_AND_GATEWAY, extra, env);
    let admin = n.addr("gateway", "admin");
    n.wait_ready(admin);
    let (code, _, body) = http_get(admin, "/metrics").unwrap();
    assert_eq!(code, 200);
    assert_eq!(n.listeners()["node"], build_info_node(&body));
    build_info_node(&body)
}

#[test]
fn precedence_is_file_then_env_then_set() {
    assert_eq!(running_node_name(&[], &[]), "from-file");
    assert_eq!(
        running_node_name(&[], &[("TESSERA_NODE_NAME", "from-env")]),
        "from-env"
    );
    assert_eq!(
        running_node_name(
            &["--set", "node_name=from-set"],
            &[("TESSERA_NODE_NAME", "from-env")]
        ),
        "from-set"
    );
}

#[test]
fn two_roles_in_one_process_serve_and_stop_on_sigterm() {
    let mut n = Node::run_profile(CONTROL_AND_GATEWAY, &[], &[]);
    let api = n.addr("control", "api");
    let gw_admin = n.addr("gateway", "admin");
    let entrance = n.addr("gateway", "entrance");
    n.wait_ready(api);
    n.wait_ready(gw_admin);
    for addr in [api, gw_admin] {
        let (code, _, body) = http_get(addr, "/healthz").unwrap();
        assert_eq!(code, 200, "{body}");
        let (code, head, body) = http_get(addr, "/metrics").unwrap();
        assert_eq!(code, 200);
        assert!(
            head.contains("content-type: text/plain; version=0.0.4"),
            "{head}"
        );
        for metric in [
            "tessera_build_info{",
            "process_resident_memory_bytes",
            "tessera_role_ready{role=\"gateway\"} 1",
        ] {
            assert!(
                body.contains(metric),
                "{metric} missing from /metrics:\n{body}"
            );
        }
    }
    // Ready means it has a route table (from the co-located control plane, enrolled
    // with a gateway credential): no rule matches yet, and it says so.
    let (code, head, _) = http_get(entrance, "/anything").unwrap();
    assert_eq!(code, 404, "{head}");
    assert!(head.contains("x-tessera-reason: no-rule"), "{head}");
    // API errors are JSON.
    let (code, _, body) = http_get(api, "/api/v1/nope").unwrap();
    assert_eq!(code, 404);
    assert!(body.contains("\"code\":\"not_found\""), "{body}");

    n.signal("TERM");
    let (status, took) = n.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", n.logs());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        !n.data_dir.join("listeners.json").exists(),
        "listeners file left behind"
    );
}

#[test]
fn up_runs_every_role_and_ctrl_c_exits_0_quickly() {
    let mut n = Node::up(&["--demo"]);
    let v = n.listeners();
    for (role, listener) in [
        ("control", "api"),
        ("agent", "api"),
        ("gateway", "admin"),
        ("dbproxy", "admin"),
    ] {
        let addr: std::net::SocketAddr = v["roles"][role][listener]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        n.wait_ready(addr);
    }
    assert!(
        n.stdout().contains("console and API: http://127.0.0.1:"),
        "{}",
        n.logs()
    );
    // --demo loads the demo topology through the API.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !n.stdout().contains("demo topology loaded") {
        assert!(std::time::Instant::now() < deadline, "{}", n.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    let api: std::net::SocketAddr = v["roles"]["control"]["api"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let t = n.admin_token();
    let (code, _, body) =
        crate::harness::http(api, "GET", "/api/v1/units/rz00", Some(&t), "").unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"hz-a\""), "{body}");
    n.signal("INT");
    let (status, took) = n.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", n.logs());
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn dbproxy_greets_mysql_clients_and_refuses_unknown_users() {
    let mut n = Node::up(&[]);
    let mysql = n.addr("dbproxy", "mysql");
    let mut s = std::net::TcpStream::connect_timeout(&mysql, Duration::from_secs(2)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut greeting = [0u8; 256];
    let got = s.read(&mut greeting).unwrap();
    // Handshake v10 (protocol byte 10) with the proxy's version string.
    assert!(
        got > 40 && greeting[3] == 0 && greeting[4] == 10,
        "{:?}",
        &greeting[..got]
    );
    assert!(String::from_utf8_lossy(&greeting[5..got]).contains("tessera"));
    // HandshakeResponse41 for user `nobody` without a password: ER_ACCESS_DENIED (1045).
    let mut resp = Vec::new();
    resp.extend_from_slice(&(0x0200u32 | 0x8000 | 0x80000).to_le_bytes());
    resp.extend_from_slice(&(1u32 << 24).to_le_bytes());
    resp.push(45);
    resp.extend_from_slice(&[0; 23]);
    resp.extend_from_slice(b"nobody\0\0mysql_native_password\0");
    let mut packet = (resp.len() as u32).to_le_bytes()[..3].to_vec();
    packet.push(1);
    packet.extend(resp);
    std::io::Write::write_all(&mut s, &packet).unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(buf.len() > 7 && buf[3] == 2 && buf[4] == 0xFF, "{buf:?}");
    assert_eq!(u16::from_le_bytes([buf[5], buf[6]]), 1045);
    assert!(String::from_utf8_lossy(&buf[7..]).contains("Access denied for user 'nobody'"));
}

#[test]
fn an_agent_waits_for_a_control_plane_found_by_name() {
    // The agent's control URL uses a host name, resolved from /etc/hosts by the static
    // binary's own resolver (glibc's NSS cannot be used in a static binary).
    let mut control = Node::run_profile(CONTROL_AND_GATEWAY, &[], &[]);
    let api = control.addr("control", "api");
    let agent_profile = format!(
        "node_name = \"agent-1\"\nroles = [\"agent\"]\ndata_dir = \"DATA\"\n[agent]\nlisten = \"127.0.0.1:0\"\ncontrol = [\"http://localhost:{}\"]\n",
        api.port()
    );
    // Stop the control plane first: the agent must report not ready, and say why.
    control.signal("TERM");
    control.wait_exit(Duration::from_secs(10));
    let mut agent = Node::run_profile(&agent_profile, &[], &[]);
    let agent_addr = agent.addr("agent", "api");
    std::thread::sleep(Duration::from_millis(300));
    let (code, _, body) = http_get(agent_addr, "/readyz").unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("control plane unreachable"), "{body}");
    // Bring a control plane back on the same port; the agent becomes ready.
    let again = CONTROL_AND_GATEWAY.replace(
        "listen = \"127.0.0.1:0\"\npeer",
        &format!("listen = \"127.0.0.1:{}\"\npeer", api.port()),
    );
    let mut control = Node::run_profile(&again, &[], &[]);
    control.wait_ready(api);
    agent.wait_ready(agent_addr);
    let (_, _, metrics) = http_get(agent_addr, "/metrics").unwrap();
    assert!(
        metrics.contains("tessera_control_reachable{role=\"agent\"} 1"),
        "{metrics}"
    );
}

#[test]
fn a_role_that_cannot_start_stops_the_process_with_exit_1() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let set = format!("gateway.listen=127.0.0.1:{port}");
    let mut n = Node::run_profile(CONTROL_AND_GATEWAY, &["--set", &set], &[]);
    let (status, _) = n.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", n.logs());
    assert!(n.stderr().contains("gateway.listen"), "{}", n.logs());
}

#[test]
fn a_data_dir_is_never_shared_by_two_processes() {
    let mut first = Node::run_profile(CONTROL_AND_GATEWAY, &[], &[]);
    let api = first.addr("control", "api");
    first.wait_ready(api);
    let profile = first.dir.path().join("profile.toml");
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<String> = vec![
        "run".into(),
        "--profile".into(),
        profile.display().to_string(),
    ];
    let mut second = Node::start(dir, &args, &[]);
    let (status, _) = second.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(1), "{}", second.logs());
    assert!(
        second
            .stderr()
            .contains("in use by another tessera process"),
        "{}",
        second.logs()
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let mut n = Node::run_profile(CONTROL_AND_GATEWAY, &["--log-format", "json"], &[]);
    let api = n.addr("control", "api");
    n.wait_ready(api);
    n.signal("TERM");
    n.wait_exit(Duration::from_secs(10));
    let err = n.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(
            v.get("level").is_some() && v.get("message").is_some(),
            "{l}"
        );
    }
}
