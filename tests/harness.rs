//! Starting, probing and stopping `tessera` processes. Every wait has a deadline; every
//! process started is killed on drop; a failing test prints the child's output.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_tessera");

/// A port on `ip` that nothing holds now, for a listener whose address must be known before
/// the process starts (cluster members keep theirs across restarts). It is drawn at random
/// from 10000-19999: outside the kernel's ephemeral range (so no `bind(:0)` or outgoing
/// connection of another test can take it before the process binds it), and outside the
/// agent's default instance ports. Ports handed out in this process are never handed out
/// again, so two listeners of one test cannot collide either.
pub fn free_port(ip: std::net::IpAddr) -> u16 {
    use std::collections::HashSet;
    use std::sync::Mutex;
    static GIVEN: Mutex<Option<HashSet<(std::net::IpAddr, u16)>>> = Mutex::new(None);
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let given = given.get_or_insert_with(HashSet::new);
    for _ in 0..10_000 {
        let port = fastrand::u16(10_000..20_000);
        if given.contains(&(ip, port)) {
            continue;
        }
        if std::net::TcpListener::bind((ip, port)).is_ok() {
            given.insert((ip, port));
            return port;
        }
    }
    panic!("no free port on {ip} in 10000-19999");
}

/// A control node's profile for the multi-node tests: `name` in `zone`, listening on `ip`
/// (API and peer ports free), bootstrapping (no `join`) or joining through `join` with its
/// token, with Raft timeouts for loopback; `extra` adds `[control]` settings. Returns the
/// profile's text and the API address.
pub fn control_profile(
    name: &str,
    zone: &str,
    ip: &str,
    data_dir: &str,
    join: Option<(&std::net::SocketAddr, &str)>,
    extra: &str,
) -> (String, std::net::SocketAddr) {
    let addr: std::net::IpAddr = ip.parse().unwrap();
    let api = std::net::SocketAddr::new(addr, free_port(addr));
    let peer = std::net::SocketAddr::new(addr, free_port(addr));
    let membership = match join {
        None => "bootstrap = true".to_string(),
        Some((url, token)) => format!("join = [\"http://{url}\"]\njoin_token = \"{token}\""),
    };
    let profile = format!(
        "node_name = \"{name}\"\nroles = [\"control\"]\ndata_dir = \"{data_dir}\"\nzone = \"{zone}\"\n[control]\nlisten = \"{api}\"\npeer_listen = \"{peer}\"\n{membership}\nheartbeat_ms = 50\nelection_timeout_min_ms = 300\nelection_timeout_max_ms = 600\n{extra}\n"
    );
    (profile, api)
}

/// Runs `tessera ARGS` to completion (bounded) with extra environment.
pub fn tessera(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env_remove("RUST_LOG").stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tessera");
    wait_output(child, Duration::from_secs(30))
}

fn wait_output(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "tessera did not finish within {limit:?}: stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Settings that put every listener of every role on an ephemeral loopback port.
pub fn ephemeral_ports() -> Vec<String> {
    [
        "control.listen",
        "control.peer_listen",
        "agent.listen",
        "gateway.listen",
        "gateway.admin_listen",
        "dbproxy.listen",
        "dbproxy.admin_listen",
    ]
    .iter()
    .map(|k| format!("--set={k}=\"127.0.0.1:0\""))
    .collect()
}

/// A running `tessera` process with its own data dir.
pub struct Node {
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub dir: tempfile::TempDir,
    pub data_dir: PathBuf,
    out: PathBuf,
    err: PathBuf,
}

impl Node {
    /// Starts `tessera ARGS` (the data dir is `self.data_dir`; pass it yourself) with env.
    pub fn start(dir: tempfile::TempDir, args: &[String], env: &[(&str, &str)]) -> Node {
        let data_dir = dir.path().join("data");
        let out = dir.path().join("stdout.log");
        let err = dir.path().join("stderr.log");
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let mut n = Node {
            child: None,
            args: args.to_vec(),
            env,
            dir,
            data_dir,
            out,
            err,
        };
        n.spawn();
        n
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new(BIN);
        cmd.args(&self.args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        // Append, so a restarted process keeps the earlier output for diagnosis.
        let open = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .unwrap()
        };
        cmd.stdout(open(&self.out)).stderr(open(&self.err));
        self.child = Some(cmd.spawn().expect("spawn tessera"));
    }

    /// Stops the process (SIGTERM, bounded wait) and starts it again with the same
    /// arguments and data dir.
    pub fn restart(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(self.data_dir.join("listeners.json"));
        self.spawn();
    }

    /// Starts the process again after it was stopped or killed.
    pub fn start_again(&mut self) {
        let _ = std::fs::remove_file(self.data_dir.join("listeners.json"));
        self.spawn();
    }

    /// SIGTERM and a bounded wait for a clean exit.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let (status, _) = self.wait_exit(Duration::from_secs(15));
        assert!(status.success(), "unclean exit {status}\n{}", self.logs());
    }

    /// SIGKILL, no grace.
    pub fn kill(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The admin token `up` or the bootstrap node wrote.
    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("admin.token"))
            .expect("admin.token")
            .trim()
            .to_string()
    }

    /// `tessera up` with every listener on an ephemeral port.
    pub fn up(extra: &[&str]) -> Node {
        Node::up_with_env(extra, &[])
    }

    /// [`Node::up`] with extra environment.
    pub fn up_with_env(extra: &[&str], env: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut args = vec![
            "up".to_string(),
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
        ];
        args.extend(ephemeral_ports());
        args.extend(extra.iter().map(|s| s.to_string()));
        Node::start(dir, &args, env)
    }

    /// `tessera run --profile` with a profile written from `toml` (`DATA` = the data dir).
    pub fn run_profile(toml: &str, extra: &[&str], env: &[(&str, &str)]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let profile = dir.path().join("profile.toml");
        std::fs::write(&profile, toml.replace("DATA", &data.display().to_string())).unwrap();
        let mut args = vec![
            "run".to_string(),
            "--profile".into(),
            profile.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Node::start(dir, &args, env)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn logs(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            std::fs::read_to_string(&self.out).unwrap_or_default(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Waits for `listeners.json`; returns role -> listener -> address.
    pub fn listeners(&mut self) -> serde_json::Value {
        let path = self.data_dir.join("listeners.json");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(text) = std::fs::read_to_string(&path) {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) {
                    return v;
                }
            }
            if let Some(status) = self.try_exit() {
                panic!(
                    "tessera exited ({status}) before listening\n{}",
                    self.logs()
                );
            }
            assert!(
                Instant::now() < deadline,
                "no listeners file within 60s\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn addr(&mut self, role: &str, listener: &str) -> SocketAddr {
        let v = self.listeners();
        let s = v["roles"][role][listener]
            .as_str()
            .unwrap_or_else(|| panic!("no {role}.{listener} in {v}"));
        s.parse().unwrap()
    }

    /// Waits until `GET addr/readyz` answers 200.
    pub fn wait_ready(&mut self, addr: SocketAddr) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, _, _)) = http_get(addr, "/readyz") {
                return;
            }
            if let Some(status) = self.try_exit() {
                panic!("tessera exited ({status}) before ready\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "{addr} not ready within 30s\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    pub fn try_exit(&mut self) -> Option<ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits (bounded) for the process to exit; returns its status and how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration) {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_exit() {
                return (s, start.elapsed());
            }
            assert!(
                start.elapsed() < limit,
                "tessera did not exit within {limit:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Node {
    /// SIGTERM first, so the process stops what it started (`up`'s instances), then
    /// SIGKILL after a bounded wait.
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if c.try_wait().ok().flatten().is_none() {
                let _ = Command::new("kill")
                    .args(["-TERM", &c.id().to_string()])
                    .status();
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline && c.try_wait().ok().flatten().is_none() {
                    std::thread::sleep(Duration::from_millis(20));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// A bounded HTTP/1.1 GET; returns (status, headers lowercased, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String, String)> {
    http(addr, "GET", path, None, "")
}

/// A bounded HTTP/1.1 request with an optional bearer token and a body.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    match http_within(addr, method, path, token, body, Duration::from_secs(17)) {
        Ok(answer) => Ok(answer),
        Err(HttpFailure::Connect(e) | HttpFailure::Exchange(e)) => Err(e),
    }
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Why a bounded request ([`http_within`]) produced no answer.
#[derive(Debug)]
pub enum HttpFailure {
    /// No connection was made: the request was certainly not sent.
    Connect(std::io::Error),
    /// Connected, but no complete answer within the limit (or the connection broke):
    /// the request may or may not have been acted on.
    Exchange(std::io::Error),
}

impl std::fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpFailure::Connect(e) => write!(f, "connect: {e}"),
            HttpFailure::Exchange(e) => write!(f, "exchange: {e}"),
        }
    }
}

/// [`http`] bounded by `limit` in total (connect, send and the whole answer), telling a
/// request that was never sent apart from one whose outcome is unknown.
pub fn http_within(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
    limit: Duration,
) -> Result<(u16, String, String), HttpFailure> {
    let deadline = Instant::now() + limit;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::TimedOut, "deadline passed"))
    };
    let connect_limit = limit.min(Duration::from_secs(2));
    let mut s = TcpStream::connect_timeout(&addr, connect_limit).map_err(HttpFailure::Connect)?;
    let exchange = |s: &mut TcpStream| -> std::io::Result<Vec<u8>> {
        s.set_nodelay(true)?;
        s.set_write_timeout(Some(left()?))?;
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        req.extend_from_slice(body.as_bytes());
        s.write_all(&req)?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            s.set_read_timeout(Some(left()?))?;
            match s.read(&mut chunk) {
                Ok(0) => return Ok(buf),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    };
    let buf = exchange(&mut s).map_err(HttpFailure::Exchange)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    if status == 0 {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidData, "no HTTP status line");
        return Err(HttpFailure::Exchange(e));
    }
    Ok((status, head.to_lowercase(), body.to_string()))
}

/// Two regions, three zones, RZones rz00 (slots 00-49, hz-a, standby hz-b) and rz01
/// (50-99, hz-b, standby sh-a), GZone gz00 (hz-a), and the shard map: the estate the
/// gateway and agent tests build on.
/// A throwaway certificate authority in a temp dir (`ca.pem`), issuing PEM files.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tessera test CA");
        let ca = params.self_signed(&key).unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        TestCa {
            dir,
            issuer: Issuer::new(params, key),
        }
    }

    pub fn ca_pem(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `<name>.pem` and `<name>.key` for `names` (DNS names or IP addresses).
    pub fn issue(&self, name: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        use rcgen::{CertificateParams, DnType, KeyPair};
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let (c, k) = (
            self.dir.path().join(format!("{name}.pem")),
            self.dir.path().join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }
}

/// A one-node control plane on 127.0.0.1 (ports fixed up front, so a restart keeps
/// them) with `estate` applied: (node, API address, admin token).
pub fn control_with(estate: &str) -> (Node, SocketAddr, String) {
    let local: std::net::IpAddr = std::net::Ipv4Addr::LOCALHOST.into();
    let profile = format!(
        "node_name = \"ctl-1\"\nroles = [\"control\"]\ndata_dir = \"DATA\"\n[control]\nbootstrap = true\nlisten = \"127.0.0.1:{}\"\npeer_listen = \"127.0.0.1:{}\"\n",
        free_port(local),
        free_port(local)
    );
    let mut control = Node::run_profile(&profile, &[], &[]);
    let api = control.addr("control", "api");
    control.wait_ready(api);
    let token = control.admin_token();
    let (code, _, body) = http(api, "POST", "/api/v1/apply", Some(&token), estate).unwrap();
    assert_eq!(code, 200, "{body}");
    (control, api, token)
}

/// A join token for `role` from the control plane at `api`.
pub fn join_token(api: SocketAddr, admin: &str, role: &str) -> String {
    let (code, _, body) = http(
        api,
        "POST",
        "/api/v1/tokens",
        Some(admin),
        &format!("{{\"role\": \"{role}\"}}"),
    )
    .unwrap();
    assert_eq!(code, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["token"].as_str().unwrap().to_string()
}

/// A profile for a lone control node on ephemeral ports.
pub const CONTROL_ONLY: &str = "node_name = \"ctl-1\"\nroles = [\"control\"]\ndata_dir = \"DATA\"\n[control]\nbootstrap = true\nlisten = \"127.0.0.1:0\"\npeer_listen = \"127.0.0.1:0\"\n";

/// A control node from `profile`, ready: (node, API address, admin token, API URL).
pub fn control(profile: &str) -> (Node, SocketAddr, String, String) {
    let mut c = Node::run_profile(profile, &[], &[]);
    let api = c.addr("control", "api");
    c.wait_ready(api);
    let token = c.admin_token();
    (c, api, token, format!("http://{api}"))
}

/// `[agent]` lines for an agent whose instances stop with it (and die with it when it is
/// killed), so a test leaves no process behind.
pub const STOP_WORKLOADS: &str = "stop_workloads_on_exit = true\n";

/// An agent in its own process: node `name` in `zone`, listening and running its
/// instances on `ip` (its listener on a free port there), enrolled with a fresh join
/// token from the control plane at `api`. `extra` is appended to its `[agent]` table.
pub fn agent(api: SocketAddr, admin: &str, name: &str, zone: &str, ip: &str, extra: &str) -> Node {
    let join = join_token(api, admin, "agent");
    let port = free_port(ip.parse().expect("an IP address"));
    let profile = format!(
        "node_name = \"{name}\"\nroles = [\"agent\"]\ndata_dir = \"DATA\"\nzone = \"{zone}\"\n[agent]\nlisten = \"{ip}:{port}\"\ninstance_ip = \"{ip}\"\ncontrol = [\"http://{api}\"]\njoin_token = \"{join}\"\n{extra}"
    );
    Node::run_profile(&profile, &[], &[])
}

pub const TOPOLOGY: &str = r#"
apiVersion: tessera.io/v1
kind: Region
metadata: {name: hangzhou}
---
apiVersion: tessera.io/v1
kind: Region
metadata: {name: shanghai}
---
apiVersion: tessera.io/v1
kind: Zone
metadata: {name: hz-a}
spec: {region: hangzhou}
---
apiVersion: tessera.io/v1
kind: Zone
metadata: {name: hz-b}
spec: {region: hangzhou}
---
apiVersion: tessera.io/v1
kind: Zone
metadata: {name: sh-a}
spec: {region: shanghai}
---
apiVersion: tessera.io/v1
kind: Unit
metadata: {name: rz00}
spec: {type: RZone, zone: hz-a, standbyZone: hz-b, slots: ["00-49"]}
---
apiVersion: tessera.io/v1
kind: Unit
metadata: {name: rz01}
spec: {type: RZone, zone: hz-b, standbyZone: sh-a, slots: ["50-99"]}
---
apiVersion: tessera.io/v1
kind: Unit
metadata: {name: gz00}
spec: {type: GZone, zone: hz-a}
---
apiVersion: tessera.io/v1
kind: ShardMap
metadata: {name: default}
spec:
  slots: {"00-49": rz00, "50-99": rz01}
"#;
