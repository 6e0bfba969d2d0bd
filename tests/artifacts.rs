//! Artifacts: `tessera artifact push` stores a package on the control nodes; an app
//! naming it runs from it on an agent (downloaded, checked, unpacked, run in its
//! directory with the artifact's version); a damaged download is refused and the
//! running version keeps serving.

use crate::harness::{control, free_port, http, stderr, stdout, tessera, Node, BIN, CONTROL_ONLY};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const IP: &str = "127.0.0.31";

/// A gzipped tar holding `run.sh`, which runs the demo echo server on the instance's
/// address and port, and a file it does not need.
fn package(dir: &Path, name: &str) -> std::path::PathBuf {
    let src = dir.join(format!("{name}-src"));
    std::fs::create_dir_all(src.join("conf")).unwrap();
    let script = src.join("run.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ntest -f conf/app.conf || exit 3\nexec \"$TESSERA_BIN\" demo-app --listen \"$TESSERA_IP:$PORT\"\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(src.join("conf/app.conf"), name).unwrap();
    let out = dir.join(format!("{name}.tar.gz"));
    let ok = std::process::Command::new("tar")
        .args([
            "czf",
            &out.display().to_string(),
            "-C",
            &src.display().to_string(),
            ".",
        ])
        .status()
        .unwrap();
    assert!(ok.success());
    out
}

/// `tessera artifact push FILE --app APP --version VERSION` (no token when `token` is empty).
fn push(server: &str, token: &str, file: &Path, app: &str, version: &str) -> std::process::Output {
    let file = file.display().to_string();
    let mut args = vec![
        "artifact",
        "push",
        &file,
        "--app",
        app,
        "--version",
        version,
        "--server",
        server,
    ];
    if !token.is_empty() {
        args.extend_from_slice(&["--token", token]);
    }
    tessera(&args, &[])
}

fn read(api: SocketAddr, token: &str, path: &str) -> Value {
    let (code, _, body) = http(api, "GET", path, Some(token), "").unwrap();
    assert_eq!(code, 200, "{path}: {body}");
    serde_json::from_str(&body).unwrap()
}

fn app(artifact: &str) -> String {
    format!(
        "apiVersion: tessera.io/v1\nkind: App\nmetadata: {{name: shop}}\nspec: {{mode: vm, artifact: {artifact}, command: [./run.sh], port: 9000, units: [rz00], env: {{TESSERA_BIN: \"{BIN}\"}}}}\n"
    )
}

/// GET / on the instance's endpoint: the demo server's JSON.
fn ask(endpoint: &str) -> Option<Value> {
    let addr: SocketAddr = endpoint.parse().ok()?;
    let (code, _, body) = http(addr, "GET", "/", None, "").ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

#[test]
fn apps_run_from_pushed_artifacts_and_damaged_downloads_are_refused() {
    let (c, api, token, server) = control(CONTROL_ONLY);
    let work = tempfile::tempdir().unwrap();

    // Push: stored on the (one) control node, recorded as artifact shop-2-0-1.
    let v1 = package(work.path(), "v1");
    let o = push(&server, &token, &v1, "shop", "2.0.1");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("artifact/shop-2-0-1"), "{}", stdout(&o));
    assert!(
        stderr(&o).contains("stored on 1/1 control nodes"),
        "{}",
        stderr(&o)
    );
    let art = read(api, &token, "/api/v1/artifacts/shop-2-0-1");
    let sha1 = art["spec"]["sha256"].as_str().unwrap().to_string();
    assert_eq!(art["spec"]["version"], "2.0.1");
    assert!(c.data_dir.join("control/blobs").join(&sha1).is_file());

    let estate = format!("{}---\n{}", crate::harness::TOPOLOGY, app("shop-2-0-1"));
    let (code, _, body) = http(api, "POST", "/api/v1/apply", Some(&token), &estate).unwrap();
    assert_eq!(code, 200, "{body}");
    let stop = crate::harness::STOP_WORKLOADS;
    let agent = crate::harness::agent(api, &token, "host-a", "hz-a", IP, stop);

    // The instance runs from the unpacked artifact, with the artifact's version.
    let deadline = Instant::now() + Duration::from_secs(40);
    let answer = loop {
        // Placement names the instance within a second or so.
        let (_, _, body) = http(
            api,
            "GET",
            "/api/v1/instances/shop-rz00-0",
            Some(&token),
            "",
        )
        .unwrap();
        let inst: Value = serde_json::from_str(&body).unwrap_or_default();
        if inst["status"]["ready"] == true {
            if let Some(v) = ask(inst["status"]["endpoint"].as_str().unwrap_or("")) {
                break v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not running: {inst}\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(answer["version"], "2.0.1", "{answer}");
    assert_eq!(answer["app"], "shop", "{answer}");
    assert!(
        agent.data_dir.join("agent/artifacts").join(&sha1).is_file(),
        "cached by digest"
    );

    // A second version whose stored copy is damaged on the control node: the agent
    // refuses the download, and the running version keeps serving.
    let v2 = package(work.path(), "v2");
    let o = push(&server, &token, &v2, "shop", "2.0.2");
    assert!(o.status.success(), "{}", stderr(&o));
    let sha2 = read(api, &token, "/api/v1/artifacts/shop-2-0-2")["spec"]["sha256"]
        .as_str()
        .unwrap()
        .to_string();
    let stored = c.data_dir.join("control/blobs").join(&sha2);
    let mut bytes = std::fs::read(&stored).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&stored, bytes).unwrap();
    let (code, _, body) = http(
        api,
        "POST",
        "/api/v1/apply",
        Some(&token),
        &app("shop-2-0-2"),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let events = read(api, &token, "/api/v1/events");
        let refused = events["items"].as_array().unwrap().iter().find(|e| {
            e["spec"]["reason"] == "ArtifactCorrupt"
                && e["spec"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("damaged, refused")
        });
        if refused.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no ArtifactCorrupt event: {events}\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(
        !agent.data_dir.join("agent/artifacts").join(&sha2).exists(),
        "a damaged download is not kept"
    );
    let inst = read(api, &token, "/api/v1/instances/shop-rz00-0");
    let still =
        ask(inst["status"]["endpoint"].as_str().unwrap()).expect("the old version still serves");
    assert_eq!(still["version"], "2.0.1", "{still}");

    // Roll back to the artifact pushed before: the agent starts it from its kept copy
    // (no download), the instance is healthy again, and there is nothing older to go to.
    let o = tessera(
        &["rollback", "shop", "--server", &server, "--token", &token],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("artifact/shop-2-0-2 -> artifact/shop-2-0-1"),
        "{}",
        stdout(&o)
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let inst = read(api, &token, "/api/v1/instances/shop-rz00-0");
        let healthy = inst["status"]["phase"] == "running" && inst["status"]["message"].is_null();
        if healthy {
            let v = ask(inst["status"]["endpoint"].as_str().unwrap()).unwrap();
            assert_eq!(v["version"], "2.0.1");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not rolled back: {inst}\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let o = tessera(
        &["rollback", "shop", "--server", &server, "--token", &token],
        &[],
    );
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("no artifact older than `shop-2-0-1`"),
        "{}",
        stderr(&o)
    );

    // Bad input: content that does not match its digest, unknown content, a viewer.
    let (code, _, body) = http(
        api,
        "PUT",
        &format!("/api/v1/blobs/{sha1}"),
        Some(&token),
        "not the package",
    )
    .unwrap();
    assert_eq!(code, 422, "{body}");
    assert!(body.contains("damaged"), "{body}");
    let (code, _, body) = http(
        api,
        "GET",
        &format!("/api/v1/blobs/{}", "0".repeat(64)),
        Some(&token),
        "",
    )
    .unwrap();
    assert_eq!(code, 404, "{body}");
    let (code, _, body) = http(api, "GET", "/api/v1/blobs/xyz", Some(&token), "").unwrap();
    assert_eq!(code, 400, "{body}");
    let o = tessera(
        &[
            "user", "create", "vera", "--role", "viewer", "--server", &server, "--token", &token,
        ],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let vera = stdout(&o).split_whitespace().last().unwrap().to_string();
    let o = push(&server, &vera, &v1, "shop", "9");
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stderr(&o).contains("may not push artifacts"),
        "{}",
        stderr(&o)
    );
    let o = push(
        &server,
        "",
        std::path::Path::new("/nonexistent"),
        "shop",
        "1",
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    drop(agent);
}

/// The agent issue's main scenario: control + gateway, agents in two zones (two in
/// hz-a), the echo app deployed from a pushed artifact; users land in their unit; when a
/// node dies its instance is placed on another node of the zone and users are served
/// again.
#[test]
fn an_app_from_an_artifact_serves_both_zones_and_moves_off_a_dead_node() {
    use crate::agent::{get_uid, wait_served};
    let profile = "node_name = \"ctl-1\"\nroles = [\"control\", \"gateway\"]\ndata_dir = \"DATA\"\n[control]\nbootstrap = true\nlisten = \"127.0.0.1:0\"\npeer_listen = \"127.0.0.1:0\"\n[gateway]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n";
    let (mut c, api, token, server) = control(profile);
    let gw = c.addr("gateway", "entrance");
    let work = tempfile::tempdir().unwrap();
    let pkg = package(work.path(), "echo");
    let o = push(&server, &token, &pkg, "echo", "1.0");
    assert!(o.status.success(), "{}", stderr(&o));
    let estate = format!(
        "{}---\napiVersion: tessera.io/v1\nkind: App\nmetadata: {{name: echo}}\nspec: {{mode: vm, artifact: echo-1-0, command: [./run.sh], port: 9000, units: [rz00, rz01], env: {{TESSERA_BIN: \"{BIN}\"}}}}\n---\napiVersion: tessera.io/v1\nkind: TrafficRule\nmetadata: {{name: echo}}\nspec: {{app: echo}}\n",
        crate::harness::TOPOLOGY
    );
    let (code, _, body) = http(api, "POST", "/api/v1/apply", Some(&token), &estate).unwrap();
    assert_eq!(code, 200, "{body}");
    let agent = |name: &str, zone: &str, ip: &str| -> Node {
        crate::harness::agent(api, &token, name, zone, ip, crate::harness::STOP_WORKLOADS)
    };
    let mut nodes = [
        (
            "host-a",
            "127.0.0.32",
            agent("host-a", "hz-a", "127.0.0.32"),
        ),
        (
            "host-b",
            "127.0.0.33",
            agent("host-b", "hz-b", "127.0.0.33"),
        ),
        (
            "host-c",
            "127.0.0.34",
            agent("host-c", "hz-a", "127.0.0.34"),
        ),
    ];
    let logs = || String::new();
    let (head, v) = wait_served(gw, "2088000000000007", Duration::from_secs(40), &logs);
    assert!(
        head.contains("x-tessera-unit: rz00") && head.contains("x-tessera-zone: hz-a"),
        "{head}"
    );
    assert_eq!(
        (v["version"].as_str(), v["unit"].as_str()),
        (Some("1.0"), Some("rz00")),
        "{v}"
    );
    let (head, v) = wait_served(gw, "2088000000000057", Duration::from_secs(40), &logs);
    assert!(
        head.contains("x-tessera-unit: rz01") && head.contains("x-tessera-zone: hz-b"),
        "{head}"
    );
    assert_eq!(v["instance"], "echo-rz01-0");
    let inst = read(api, &token, "/api/v1/instances/echo-rz00-0");
    let first = inst["spec"]["node"].as_str().unwrap().to_string();
    assert!(
        first == "host-a" || first == "host-c",
        "placed in hz-a: {inst}"
    );
    let inst_b = read(api, &token, "/api/v1/instances/echo-rz01-0");
    assert_eq!(inst_b["spec"]["node"], "host-b", "{inst_b}");

    // The node running rz00's instance dies (its agent killed outright; the instance,
    // started to die with its agent, goes too). Once its heartbeat lapses the instance
    // is placed on the other hz-a node, and rz00's users are served from there.
    let i = nodes.iter().position(|(n, _, _)| *n == first).unwrap();
    nodes[i].2.kill();
    let other = if first == "host-a" {
        ("host-c", "127.0.0.34")
    } else {
        ("host-a", "127.0.0.32")
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let inst = read(api, &token, "/api/v1/instances/echo-rz00-0");
        let moved = inst["spec"]["node"] == other.0
            && inst["status"]["ready"] == true
            && inst["status"]["endpoint"]
                .as_str()
                .is_some_and(|e| e.starts_with(other.1));
        if moved {
            if let Some((head, v)) = get_uid(gw, "2088000000000007") {
                assert!(head.contains("x-tessera-zone: hz-a"), "{head}");
                assert_eq!(v["version"], "1.0");
                break;
            }
        }
        assert!(Instant::now() < deadline, "not re-placed: {inst}");
        std::thread::sleep(Duration::from_millis(300));
    }
    // rz01 was never disturbed.
    assert_eq!(
        read(api, &token, "/api/v1/instances/echo-rz01-0")["status"]["pid"],
        inst_b["status"]["pid"]
    );
    assert!(get_uid(gw, "2088000000000057").is_some());
}

/// Bad input on a node: a forged join token, a command that exits at once, a port taken
/// by someone else. Each gets a clear error or event, and nothing else is disturbed.
#[test]
fn bad_commands_ports_and_tokens_get_clear_errors_and_events() {
    let (_control, api, token, server) = control(CONTROL_ONLY);
    let ip: std::net::IpAddr = "127.0.0.35".parse().unwrap();
    // Someone else holds the first port of the agent's range.
    let low = free_port(ip);
    let _squatter = std::net::TcpListener::bind((ip, low)).unwrap();
    let estate = format!(
        "{}---\n{}---\n{}",
        crate::harness::TOPOLOGY,
        "apiVersion: tessera.io/v1\nkind: App\nmetadata: {name: echo}\nspec: {mode: vm, artifact: \"builtin:echo\", port: 9000, units: [rz00]}\n",
        "apiVersion: tessera.io/v1\nkind: App\nmetadata: {name: crasher}\nspec: {mode: vm, command: [/bin/sh, -c, \"echo boom: missing config >&2; exit 7\"], port: 9000, units: [rz00]}\n"
    ) + "---\napiVersion: tessera.io/v1\nkind: App\nmetadata: {name: hog}\nspec: {mode: vm, command: [/bin/sh, -c, \"exec tail /dev/zero\"], port: 9000, units: [rz00], resources: {memoryMb: 32}}\n";
    let (code, _, body) = http(api, "POST", "/api/v1/apply", Some(&token), &estate).unwrap();
    assert_eq!(code, 200, "{body}");
    let join = crate::harness::join_token(api, &token, "agent");
    let ip_s = ip.to_string();
    // A disk-pressure threshold no machine meets: the node reports the condition.
    let extra = format!(
        "ports = \"{low}-{}\"\nstop_workloads_on_exit = true\ndisk_pressure_mb = 1099511627776\n",
        low + 50
    );
    // A forged token (the right CA fingerprint, a made-up secret): refused, said why.
    let fp = join.split('.').nth(1).unwrap().to_string();
    let forged = Node::run_profile(
        &format!(
            "node_name = \"host-x\"\nroles = [\"agent\"]\ndata_dir = \"DATA\"\n[agent]\nlisten = \"{ip}:{}\"\ncontrol = [\"{server}\"]\njoin_token = \"tsr1.{fp}.forged\"\n",
            free_port(ip)
        ),
        &[],
        &[],
    );
    let agent = crate::harness::agent(api, &token, "host-a", "hz-a", &ip_s, &extra);

    // The echo instance runs on a port that was free (not the squatter's).
    let deadline = Instant::now() + Duration::from_secs(30);
    let echo = loop {
        let (_, _, body) = http(
            api,
            "GET",
            "/api/v1/instances/echo-rz00-0",
            Some(&token),
            "",
        )
        .unwrap();
        let inst: Value = serde_json::from_str(&body).unwrap_or_default();
        if inst["status"]["ready"] == true {
            break inst;
        }
        assert!(
            Instant::now() < deadline,
            "echo not ready: {inst}\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let endpoint = echo["status"]["endpoint"].as_str().unwrap();
    assert_ne!(
        endpoint,
        format!("{ip}:{low}"),
        "the agent skipped the port in use"
    );

    // The crasher exits at once: restarted with backoff, its exit status in the status
    // and in InstanceExited events, its complaint in its collected logs.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let inst = read(api, &token, "/api/v1/instances/crasher-rz00-0");
        let events = read(api, &token, "/api/v1/events");
        let exited = events["items"].as_array().unwrap().iter().filter(|e| {
            e["spec"]["reason"] == "InstanceExited"
                && e["spec"]["instance"] == "crasher-rz00-0"
                && e["spec"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("exit status: 7")
        });
        if exited.count() >= 2
            && inst["status"]["restarts"].as_u64() >= Some(2)
            && inst["status"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("exit status: 7")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no clear exits: {inst}\n{events}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let o = tessera(
        &[
            "logs", "crasher", "--grep", "boom", "--server", &server, "--token", &token,
        ],
        &[],
    );
    assert!(
        stdout(&o).contains("stderr | boom: missing config"),
        "{}{}",
        stdout(&o),
        stderr(&o)
    );

    // The hog allocates without bound. Under a cgroup (v1 on this machine) the kernel
    // kills it at its 32 MiB and the agent says so; under an address-space rlimit its
    // allocations fail and it exits.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let inst = read(api, &token, "/api/v1/instances/hog-rz00-0");
        let limits = inst["status"]["limits"].as_str().unwrap_or("").to_string();
        let events = read(api, &token, "/api/v1/events");
        let (reason, says) = if limits.contains("cgroup") {
            (
                "OOMKilled",
                "killed by the OOM killer at its memory limit of 32 MiB",
            )
        } else {
            ("InstanceExited", "exit status")
        };
        let seen = events["items"].as_array().unwrap().iter().any(|e| {
            e["spec"]["reason"] == reason
                && e["spec"]["instance"] == "hog-rz00-0"
                && e["spec"]["message"].as_str().unwrap_or("").contains(says)
        });
        if seen && limits.contains("memory 32 MiB") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no {reason} event: {inst}\n{events}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // Nothing else was disturbed: echo kept its process.
    let now = read(api, &token, "/api/v1/instances/echo-rz00-0");
    assert_eq!(now["status"]["pid"], echo["status"]["pid"]);
    assert_eq!(now["status"]["restarts"], 0);
    // The node's status says so with its next heartbeat (every 5 s).
    let deadline = Instant::now() + Duration::from_secs(15);
    let node = loop {
        let node = read(api, &token, "/api/v1/nodes/host-a");
        if node["status"]["conditions"] == serde_json::json!(["DiskPressure"]) {
            break node;
        }
        assert!(
            Instant::now() < deadline,
            "no DiskPressure condition: {node}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(node["status"]["diskFreeMb"].as_u64().is_some(), "{node}");
    let events = read(api, &token, "/api/v1/events");
    assert!(
        events["items"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["spec"]["reason"] == "DiskPressure"
                && e["spec"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .contains("below agent.disk_pressure_mb")),
        "{events}"
    );
    let logs = forged.logs();
    assert!(logs.contains("not known to this cluster"), "{logs}");
    let (code, _, _) = http(api, "GET", "/api/v1/nodes/host-x", Some(&token), "").unwrap();
    assert_eq!(code, 404, "a refused agent registers nothing");
}

/// Blob collection: the bytes of a deleted artifact leave the control node's disk once
/// past the grace, as does an upload that never finished; the bytes of an artifact that
/// still exists, and a fresh unnamed blob, stay.
#[test]
fn blobs_no_artifact_names_are_collected_after_the_grace() {
    let profile = format!("{CONTROL_ONLY}blob_grace_secs = 3\nblob_gc_interval_secs = 1\n");
    let (c, api, token, server) = control(&profile);
    let work = tempfile::tempdir().unwrap();
    let mut shas = Vec::new();
    for v in ["1.0.0", "1.0.1"] {
        let file = package(work.path(), v);
        let o = push(&server, &token, &file, "shop", v);
        assert!(o.status.success(), "{}", stderr(&o));
        let name = format!("shop-{}", v.replace('.', "-"));
        let art = read(api, &token, &format!("/api/v1/artifacts/{name}"));
        shas.push(art["spec"]["sha256"].as_str().unwrap().to_string());
    }
    let blobs = c.data_dir.join("control/blobs");
    // An upload cut off long ago, and one still arriving.
    let stale = blobs.join(format!(".{}.0123.part", "e".repeat(64)));
    std::fs::write(&stale, "half").unwrap();
    let old = std::time::SystemTime::now() - Duration::from_secs(600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let (code, _, body) = http(
        api,
        "DELETE",
        "/api/v1/artifacts/shop-1-0-0",
        Some(&token),
        "",
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while blobs.join(&shas[0]).exists() || stale.exists() {
        assert!(Instant::now() < deadline, "not collected:\n{}", c.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    let fresh = blobs.join("f".repeat(64));
    std::fs::write(&fresh, "just pushed, not yet named").unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(blobs.join(&shas[1]).is_file(), "a named blob stays");
    assert!(fresh.is_file(), "an unnamed blob within the grace stays");
    let (_, _, metrics) = crate::harness::http_get(api, "/metrics").unwrap();
    assert!(
        metrics.contains("tessera_control_blobs_deleted_total 2"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("blobs"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(c.logs().contains("Deleted a blob no artifact names"));
}

/// The instance's answer once it serves `version` (panics after 40 s).
fn serving(api: SocketAddr, token: &str, version: &str, agent: &Node) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (_, _, body) =
            http(api, "GET", "/api/v1/instances/shop-rz00-0", Some(token), "").unwrap();
        let inst: Value = serde_json::from_str(&body).unwrap_or_default();
        if let Some(v) = ask(inst["status"]["endpoint"].as_str().unwrap_or("")) {
            if v["version"] == version {
                return v;
            }
        }
        assert!(
            Instant::now() < deadline,
            "not serving {version}: {inst}\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Upgrades leave no pile of old versions: an instance keeps the version it runs and
/// the one before (`agent.keep_versions = 2`), unpacked and cached, and a rollback to
/// that one starts without a download.
#[test]
fn an_instance_keeps_its_current_and_previous_versions_on_disk() {
    let (c, api, token, server) = control(CONTROL_ONLY);
    let work = tempfile::tempdir().unwrap();
    let mut shas = Vec::new();
    for v in ["3.0.1", "3.0.2", "3.0.3"] {
        let o = push(&server, &token, &package(work.path(), v), "shop", v);
        assert!(o.status.success(), "{}", stderr(&o));
        let art = read(
            api,
            &token,
            &format!("/api/v1/artifacts/shop-{}", v.replace('.', "-")),
        );
        shas.push(art["spec"]["sha256"].as_str().unwrap().to_string());
    }
    let estate = format!("{}---\n{}", crate::harness::TOPOLOGY, app("shop-3-0-1"));
    let (code, _, body) = http(api, "POST", "/api/v1/apply", Some(&token), &estate).unwrap();
    assert_eq!(code, 200, "{body}");
    let stop = crate::harness::STOP_WORKLOADS;
    let agent = crate::harness::agent(api, &token, "host-p", "hz-a", "127.0.0.213", stop);
    serving(api, &token, "3.0.1", &agent);
    for (artifact, version) in [("shop-3-0-2", "3.0.2"), ("shop-3-0-3", "3.0.3")] {
        let (code, _, body) =
            http(api, "POST", "/api/v1/apply", Some(&token), &app(artifact)).unwrap();
        assert_eq!(code, 200, "{body}");
        serving(api, &token, version, &agent);
    }
    let dir = agent.data_dir.join("agent");
    let unpacked = |sha: &str| {
        dir.join("instances/shop-rz00-0")
            .join(format!("app-{}", &sha[..12]))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while unpacked(&shas[0]).exists() || dir.join("artifacts").join(&shas[0]).exists() {
        assert!(
            Instant::now() < deadline,
            "3.0.1 still on disk\n{}",
            agent.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for sha in &shas[1..] {
        assert!(unpacked(sha).is_dir(), "kept unpacked: {sha}");
        assert!(
            dir.join("artifacts").join(sha).is_file(),
            "kept cached: {sha}"
        );
    }
    // The control plane loses 3.0.2's bytes; the rollback still starts it from the node.
    std::fs::remove_file(c.data_dir.join("control/blobs").join(&shas[1])).unwrap();
    let o = tessera(
        &["rollback", "shop", "--server", &server, "--token", &token],
        &[],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stdout(&o).contains("artifact/shop-3-0-3 -> artifact/shop-3-0-2"),
        "{}",
        stdout(&o)
    );
    serving(api, &token, "3.0.2", &agent);
}
