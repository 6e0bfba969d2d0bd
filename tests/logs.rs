//! Log collection: two agents in two zones follow their instances' output and the app's
//! log directory; `tessera logs` and `GET /api/v1/logs` read them from both nodes
//! through the control plane, filtered and followed; agents refuse readers without a
//! grant; a restarted agent does not collect a line twice.

use crate::harness::{http, stderr, stdout, tessera, Node, BIN};
use serde_json::Value;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

fn estate(log_dir: &Path) -> String {
    let app = format!(
        r#"apiVersion: tessera.io/v1
kind: App
metadata: {{name: echo}}
spec: {{mode: vm, artifact: "builtin:echo", port: 9000, units: [rz00, rz01], logDir: "{}"}}
"#,
        log_dir.display()
    );
    format!("{}---\n{app}", crate::harness::TOPOLOGY)
}

fn append(p: &Path, text: &str) {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
}

/// `tessera logs ARGS` against `api`; stdout, or the error while a node is away.
fn try_logs(api: SocketAddr, token: &str, args: &[&str]) -> Result<String, String> {
    let server = format!("http://{api}");
    let mut all = vec!["logs"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--server", &server, "--token", token]);
    let o = tessera(&all, &[]);
    if o.status.success() {
        Ok(stdout(&o))
    } else {
        Err(stderr(&o))
    }
}

fn logs(api: SocketAddr, token: &str, args: &[&str]) -> String {
    try_logs(api, token, args).unwrap_or_else(|e| panic!("tessera logs {args:?}: {e}"))
}

fn stdout_of(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

fn until(what: &str, limit: Duration, mut f: impl FnMut() -> Option<String>) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn logs_are_collected_on_every_node_and_read_through_the_control_plane() {
    let (mut control, api, token, _) = crate::harness::control(crate::harness::CONTROL_ONLY);
    // Each agent's log directory: what the app writes besides its output.
    let dirs = tempfile::tempdir().unwrap();
    let shared = dirs.path().join("echo-logs");
    std::fs::create_dir(&shared).unwrap();
    let (code, _, body) =
        http(api, "POST", "/api/v1/apply", Some(&token), &estate(&shared)).unwrap();
    assert_eq!(code, 200, "{body}");
    let agent = |name: &str, zone: &str, ip: &str| -> Node {
        crate::harness::agent(api, &token, name, zone, ip, crate::harness::STOP_WORKLOADS)
    };
    let mut a = agent("host-a", "hz-a", "127.0.0.21");
    let b = agent("host-b", "hz-b", "127.0.0.22");

    // Each instance's output ("listening on ...") is collected on its own node.
    let out = until("both instances' output", Duration::from_secs(40), || {
        let out = logs(api, &token, &["echo"]);
        (out.contains("echo-rz00-0 stdout | listening on 127.0.0.21:")
            && out.contains("echo-rz01-0 stdout | listening on 127.0.0.22:"))
        .then_some(out)
    });
    assert!(
        out.contains(" host-a ") && out.contains(" host-b "),
        "{out}"
    );

    // The app's log directory (both agents follow it; each instance is alone on its node).
    append(
        &shared.join("app.log"),
        "marker-1 GET /pay 200\nmarker-2 GET /refund 500\n",
    );
    let out = until("the log directory's lines", Duration::from_secs(20), || {
        let out = logs(
            api,
            &token,
            &["echo", "--unit", "rz00", "--grep", "marker-[0-9] GET"],
        );
        out.contains("marker-2").then_some(out)
    });
    assert!(
        out.lines().all(|l| l.contains(" host-a ")),
        "only rz00's node: {out}"
    );
    assert!(
        out.contains("echo-rz00-0 ") && out.contains("app.log | marker-1 GET /pay 200"),
        "{out}"
    );
    assert!(!out.contains("listening"), "grep filters: {out}");
    let out = logs(
        api,
        &token,
        &["echo", "--grep", "refund", "-o", "json", "--limit", "1"],
    );
    let rec: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(rec["line"], "marker-2 GET /refund 500", "{out}");
    assert_eq!(out.lines().count(), 1, "limit: {out}");

    // Follow: a new line arrives on the open stream.
    let mut follow = std::process::Command::new(BIN)
        .args([
            "logs", "echo", "--unit", "rz01", "--grep", "marker-3", "--follow",
        ])
        .args(["--server", &format!("http://{api}"), "--token", &token])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdout_pipe = follow.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read;
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout_pipe.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    std::thread::sleep(Duration::from_secs(1));
    append(&shared.join("app.log"), "marker-3 followed\n");
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !seen.contains("marker-3 followed") && Instant::now() < deadline {
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(200)) {
            seen.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.contains("host-b echo-rz01-0"),
        "followed from host-b: {seen}"
    );

    // Rotation: the rest of the old file and the new file are both collected.
    append(&shared.join("app.log"), "marker-4 before rotation\n");
    std::fs::rename(shared.join("app.log"), dirs.path().join("app.log.1")).unwrap();
    append(&shared.join("app.log"), "marker-5 after rotation\n");
    until("lines across a rotation", Duration::from_secs(20), || {
        let out = logs(
            api,
            &token,
            &["echo", "--unit", "rz00", "--grep", "marker-[45]"],
        );
        (out.contains("marker-4") && out.contains("marker-5")).then_some(out)
    });

    // A restarted agent goes on from where it stopped: no line twice.
    a.stop();
    append(
        &shared.join("app.log"),
        "marker-6 while the agent was away\n",
    );
    a.start_again();
    let out = until(
        "the line written while away",
        Duration::from_secs(40),
        || {
            // While the agent starts again, its node cannot be read (exit 1, named).
            let out = try_logs(
                api,
                &token,
                &["echo", "--unit", "rz00", "--grep", "marker-"],
            )
            .ok()?;
            out.contains("marker-6").then_some(out)
        },
    );
    for m in ["marker-1", "marker-2", "marker-5", "marker-6"] {
        assert_eq!(out.matches(m).count(), 1, "{m} once: {out}");
    }

    // Bad input is named; services may not read logs; agents want a grant.
    let (code, _, body) =
        http(api, "GET", "/api/v1/logs?app=echo&grep=(", Some(&token), "").unwrap();
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("\"field\":\"grep\""), "{body}");
    let (code, _, body) = http(api, "GET", "/api/v1/logs?app=nope", Some(&token), "").unwrap();
    assert_eq!(code, 404, "{body}");
    let (code, _, _) = http(api, "GET", "/api/v1/logs?app=echo", None, "").unwrap();
    assert_eq!(code, 401);
    let cred = std::fs::read_to_string(b.data_dir.join("agent/credential")).unwrap();
    let (code, _, body) = http(api, "GET", "/api/v1/logs?app=echo", Some(cred.trim()), "").unwrap();
    assert_eq!(code, 403, "{body}");
    let (_, _, body) = http(api, "GET", "/api/v1/nodes/host-b", Some(&token), "").unwrap();
    let node: Value = serde_json::from_str(&body).unwrap();
    // The agent has its certificate: control nodes read its logs over mutual TLS, and
    // plain HTTP serves its health but no logs.
    let agent_url = node["status"]["agentApi"].as_str().unwrap().to_string();
    let agent_api: SocketAddr = agent_url
        .strip_prefix("https://")
        .unwrap_or_else(|| panic!("agentApi is https://: {agent_url}"))
        .parse()
        .unwrap();
    let (code, _, body) = http(agent_api, "GET", "/logs?app=echo", Some(cred.trim()), "").unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("https_required"), "{body}");
    let (code, _, _) = http(agent_api, "GET", "/healthz", None, "").unwrap();
    assert_eq!(code, 200);
    let pki = control.data_dir.join("control/pki");
    let agent_tls = b.data_dir.join("agent/tls");
    let curl = |url: &str, cert: Option<&Path>, key: Option<&Path>, extra: &[&str]| {
        let mut args: Vec<String> = vec!["-sS".into(), "--max-time".into(), "10".into()];
        args.extend(["--cacert".into(), pki.join("ca.pem").display().to_string()]);
        if let (Some(c), Some(k)) = (cert, key) {
            args.extend(["--cert".into(), c.display().to_string()]);
            args.extend(["--key".into(), k.display().to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(url.to_string());
        std::process::Command::new("curl")
            .args(&args)
            .output()
            .expect("curl")
    };
    let member = (pki.join("node.pem"), pki.join("node.key"));
    for grant in [None, Some("tlg1.99999999999999.61.00"), Some(cred.trim())] {
        let mut extra = vec![
            "-w".to_string(),
            "%{http_code}".to_string(),
            "-o".into(),
            "/dev/null".into(),
        ];
        if let Some(g) = grant {
            extra.extend(["-H".into(), format!("Authorization: Bearer {g}")]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let o = curl(
            &format!("{agent_url}/logs?app=echo"),
            Some(&member.0),
            Some(&member.1),
            &extra,
        );
        assert_eq!(
            stdout_of(&o),
            "401",
            "{grant:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // Only a node's own agent gets a certificate for it; what it asks is checked; each
    // issue is audited.
    let ask = |node: &str, who: &str, body: &str| {
        http(
            api,
            "POST",
            &format!("/api/v1/nodes/{node}/certificate"),
            Some(who),
            body,
        )
        .unwrap()
    };
    let csr_body = r#"{"csr": "not a CSR", "ips": ["127.0.0.22"]}"#;
    for (node, who) in [("host-a", cred.trim()), ("host-b", token.as_str())] {
        let (code, _, body) = ask(node, who, csr_body);
        assert_eq!(code, 403, "{node}: {body}");
    }
    for (body, field) in [
        (csr_body, "csr"),
        (r#"{"csr": "x", "ips": []}"#, "ips"),
        (r#"{"csr": "x", "ips": ["0.0.0.0"]}"#, "ips"),
        (r#"{"csr": "x"}"#, "body"),
    ] {
        let (code, _, answer) = ask("host-b", cred.trim(), body);
        assert_eq!(code, 400, "{body}: {answer}");
        assert!(
            answer.contains(&format!("\"field\":\"{field}\"")),
            "{body}: {answer}"
        );
    }
    let (_, _, audit) = http(
        api,
        "GET",
        "/api/v1/auditevents?kind=Node",
        Some(&token),
        "",
    )
    .unwrap();
    let issued = audit.matches("\"certificate.issue\"").count();
    assert!(issued >= 2 + 4, "issues and refusals audited: {audit}");
    // Without a member's certificate there is no TLS connection to the agent.
    let o = curl(&format!("{agent_url}/healthz"), None, None, &[]);
    assert!(
        !o.status.success(),
        "TLS without a client certificate got in"
    );
    // The agent's certificate only serves: the peer listener does not take it as a
    // member's, though a client without any certificate may reach the join endpoints.
    let peer = format!(
        "https://{}/api/v1/join/info",
        control.addr("control", "peer")
    );
    let o = curl(&peer, None, None, &["--http2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = curl(
        &peer,
        Some(&agent_tls.join("node.pem")),
        Some(&agent_tls.join("node.key")),
        &["--http2"],
    );
    assert!(
        !o.status.success(),
        "an agent's certificate passed for a member's"
    );
    drop(b);
}
