//! The gateway role against a real control node, real `tessera demo-app` backends in two
//! zones, and real clients: routing by uid from every key source, GZone and parallel
//! rules, canary, blue/green and mirror, failover to the standby zone, an endpoint killed
//! under load, changes under load, draining, restart with the control plane down, and
//! bad clients.

use crate::harness::{http, tessera, Node, BIN};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `tessera demo-app` process.
struct Backend {
    child: Child,
    addr: SocketAddr,
}

impl Backend {
    fn start(ip: &str, app: &str, unit: &str, zone: &str, version: &str) -> Backend {
        let mut child = Command::new(BIN)
            .args([
                "demo-app",
                "--listen",
                &format!("{ip}:0"),
                "--app",
                app,
                "--unit",
                unit,
                "--zone",
                zone,
                "--app-version",
                version,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn demo-app");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("demo-app said {line:?}"))
            .parse()
            .unwrap();
        Backend { child, addr }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One HTTP/1.1 request with headers; (status, head lowercased, body).
fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: api.bank.example\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, head.to_ascii_lowercase(), body.to_string()))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
}

fn uid(gw: SocketAddr, path: &str, uid: &str) -> (u16, String, Value) {
    let (code, head, body) = send(gw, "GET", path, &[("x-tessera-uid", uid)], "").unwrap();
    (
        code,
        head,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}

/// Two clients sending GETs to `path` until stopped (at most `limit` each), cycling the
/// uid's slot by `stride`; `check(slot, head, body)` judges every 200 answer, anything
/// else counts as a failed request.
struct Load {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    workers: Vec<std::thread::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(
        gw: SocketAddr,
        path: &'static str,
        stride: u64,
        limit: u64,
        check: fn(u64, &str, &str),
    ) -> Load {
        let (stop, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicU64::new(0)),
        );
        let workers = (0..2)
            .map(|w| {
                let (stop, done) = (stop.clone(), done.clone());
                std::thread::spawn(move || {
                    let mut errors = Vec::new();
                    let mut i = 0u64;
                    while !stop.load(Ordering::Relaxed) && i < limit {
                        let slot = (i * stride + w) % 100;
                        match send(
                            gw,
                            "GET",
                            path,
                            &[("x-tessera-uid", &format!("20880000{slot:02}"))],
                            "",
                        ) {
                            Ok((200, head, body)) => check(slot, &head, &body),
                            other => errors.push(format!("{other:?}")),
                        }
                        done.fetch_add(1, Ordering::Relaxed);
                        i += 1;
                    }
                    errors
                })
            })
            .collect();
        Load {
            stop,
            done,
            workers,
        }
    }

    /// Stops the clients: (requests sent, failures).
    fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let errors = self
            .workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect();
        (self.done.load(Ordering::Relaxed), errors)
    }
}

use crate::harness::TOPOLOGY as ESTATE;

/// Control (bootstrap) + a gateway in zone hz-a enrolled with a join token.
pub(crate) struct Estate {
    control: Node,
    pub(crate) gateway: Node,
    api: SocketAddr,
    token: String,
    pub(crate) gw: SocketAddr,
    admin: SocketAddr,
}

/// The revision a CLI answer ends with (`... (revision N)`).
fn revision_in(said: &str) -> u64 {
    said.rsplit("revision ")
        .next()
        .and_then(|r| r.trim().trim_end_matches(')').parse().ok())
        .unwrap_or_else(|| panic!("no revision in {said:?}"))
}

pub(crate) fn estate(extra_gateway: &[&str]) -> Estate {
    estate_with("", extra_gateway)
}

/// [`estate`] with `gateway_toml` appended to the gateway's profile (after `[gateway]`).
fn estate_with(gateway_toml: &str, extra_gateway: &[&str]) -> Estate {
    let (control, api, token) = crate::harness::control_with(ESTATE);
    let join = crate::harness::join_token(api, &token, "gateway");
    // One thread, tokio's current-thread scheduler: what the bench runs (other tests run
    // the default, one thread per CPU).
    let profile = format!(
        "node_name = \"gw-1\"\nroles = [\"gateway\"]\ndata_dir = \"DATA\"\nzone = \"hz-a\"\nworker_threads = 1\n[gateway]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ncontrol = [\"http://{api}\"]\njoin_token = \"{join}\"\n"
    ) + gateway_toml;
    let mut gateway = Node::run_profile(&profile, extra_gateway, &[]);
    let gw = gateway.addr("gateway", "entrance");
    let admin = gateway.addr("gateway", "admin");
    gateway.wait_ready(admin);
    Estate {
        control,
        gateway,
        api,
        token,
        gw,
        admin,
    }
}

impl Estate {
    /// Applies `yaml` and waits until the gateway runs a table at least that new.
    pub(crate) fn apply(&self, yaml: &str) -> u64 {
        let (code, _, body) =
            http(self.api, "POST", "/api/v1/apply", Some(&self.token), yaml).unwrap();
        assert_eq!(code, 200, "{body}");
        let rev = serde_json::from_str::<Value>(&body).unwrap()["revision"]
            .as_u64()
            .unwrap();
        self.wait_revision(rev);
        rev
    }

    fn wait_revision(&self, rev: u64) -> Duration {
        let start = Instant::now();
        loop {
            let (_, _, body) = http(self.admin, "GET", "/routes", None, "").unwrap();
            let v: Value = serde_json::from_str(&body).unwrap();
            if v["revision"].as_u64().unwrap_or(0) >= rev {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "gateway stuck before revision {rev}: {body}\n{}",
                self.gateway.logs()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub(crate) fn metrics(&self) -> String {
        http(self.admin, "GET", "/metrics", None, "").unwrap().2
    }
}

fn app(name: &str, endpoints: &[(&Backend, &str, Option<&str>, &str)], health: bool) -> String {
    let eps: Vec<Value> = endpoints
        .iter()
        .map(|(b, unit, zone, version)| {
            let mut e = json!({"address": b.addr.to_string(), "unit": unit, "version": version});
            if let Some(z) = zone {
                e["zone"] = json!(z);
            }
            e
        })
        .collect();
    let mut spec = json!({"mode": "external", "endpoints": eps});
    if health {
        spec["healthCheck"] = json!({"path": "/healthz", "intervalSecs": 1, "timeoutSecs": 1});
    }
    format!("---\napiVersion: tessera.io/v1\nkind: App\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

pub(crate) fn rule(name: &str, spec: &str) -> String {
    format!("---\napiVersion: tessera.io/v1\nkind: TrafficRule\nmetadata: {{name: {name}}}\nspec: {spec}\n")
}

#[test]
fn routes_every_user_to_the_unit_owning_their_slot() {
    let e = estate(&[]);
    let a0 = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v1");
    let a0v2 = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v2");
    let b1 = Backend::start("127.0.0.2", "echo", "rz01", "hz-b", "v1");
    let g = Backend::start("127.0.0.1", "echo", "gz00", "hz-a", "v1");
    let wa = Backend::start("127.0.0.1", "web", "-", "hz-a", "v1");
    let wb = Backend::start("127.0.0.2", "web", "-", "hz-b", "v1");
    let yaml = [
        app("echo", &[(&a0, "rz00", None, "v1"), (&a0v2, "rz00", None, "v2"), (&b1, "rz01", None, "v1"), (&g, "gz00", None, "v1")], false),
        format!("---\napiVersion: tessera.io/v1\nkind: App\nmetadata: {{name: web}}\nspec: {{mode: external, endpoints: [{{address: '{}', zone: hz-a}}, {{address: '{}', zone: hz-b}}]}}\n", wa.addr, wb.addr),
        rule("by-header", "{app: echo, pathPrefix: /h, activeVersion: v1}"),
        rule("by-cookie", "{app: echo, pathPrefix: /c, activeVersion: v1, routingKey: {source: cookie, name: uid}}"),
        rule("by-query", "{app: echo, pathPrefix: /q, activeVersion: v1, routingKey: {source: query, name: uid}}"),
        rule("by-path", "{app: echo, pathPrefix: /p, activeVersion: v1, routingKey: {source: pathSegment, segment: 1}}"),
        rule("global", "{app: echo, pathPrefix: /g, routeBy: global}"),
        rule("parallel", "{app: web, pathPrefix: /w, routeBy: parallel}"),
        rule("canary", "{app: echo, pathPrefix: /canary, canary: {version: v2, weight: 20, header: x-beta}}"),
        rule("bluegreen", "{app: echo, pathPrefix: /bg, activeVersion: v2}"),
        rule("mirror", "{app: echo, pathPrefix: /m, activeVersion: v1, mirror: {percent: 100, version: v2}}"),
    ]
    .concat();
    e.apply(&yaml);

    // Every key source: the slot is the uid's last two digits.
    for (uid_value, unit, zone) in [
        ("2088000000000007", "rz00", "hz-a"),
        ("2088000000000057", "rz01", "hz-b"),
    ] {
        let checks: Vec<(u16, String, String)> = vec![
            send(e.gw, "GET", "/h/x", &[("x-tessera-uid", uid_value)], "").unwrap(),
            send(
                e.gw,
                "GET",
                "/c",
                &[("cookie", &format!("a=1; uid={uid_value}"))],
                "",
            )
            .unwrap(),
            send(e.gw, "GET", &format!("/q?x=1&uid={uid_value}"), &[], "").unwrap(),
            send(e.gw, "GET", &format!("/p/{uid_value}/orders"), &[], "").unwrap(),
        ];
        for (code, head, body) in checks {
            assert_eq!(code, 200, "{head}\n{body}");
            assert_eq!(header(&head, "x-tessera-unit"), Some(unit), "{head}");
            assert_eq!(header(&head, "x-tessera-zone"), Some(zone), "{head}");
            let v: Value = serde_json::from_str(&body).unwrap();
            assert_eq!(v["unit"], unit, "{body}");
            assert_eq!(v["version"], "v1", "{body}");
            // The backend saw the unit too.
            assert_eq!(v["headers"]["x-tessera-unit"], unit, "{body}");
        }
    }
    // A unitized rule without a routing key: 400 naming why.
    let (code, head, _) = send(e.gw, "GET", "/h", &[], "").unwrap();
    assert_eq!(code, 400);
    assert_eq!(header(&head, "x-tessera-reason"), Some("no-routing-key"));
    // GZone: every user to gz00.
    for u in ["1", "99", "abc"] {
        let (code, head, v) = uid(e.gw, "/g", u);
        assert_eq!(
            (code, header(&head, "x-tessera-unit")),
            (200, Some("gz00")),
            "{v}"
        );
    }
    // Parallel (not unitized): the gateway's own zone first.
    let (code, head, v) = uid(e.gw, "/w", "5");
    assert_eq!(
        (code, header(&head, "x-tessera-zone")),
        (200, Some("hz-a")),
        "{v}"
    );
    assert_eq!(v["app"], "web");
    // Canary by slot (slots 00-19) and by header; blue/green pins v2.
    assert_eq!(uid(e.gw, "/canary", "2088000000000019").2["version"], "v2");
    assert_eq!(uid(e.gw, "/canary", "2088000000000020").2["version"], "v1");
    let (_, _, body) = send(
        e.gw,
        "GET",
        "/canary",
        &[("x-tessera-uid", "2088000000000030"), ("x-beta", "1")],
        "",
    )
    .unwrap();
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["version"],
        "v2"
    );
    assert_eq!(uid(e.gw, "/bg", "2088000000000030").2["version"], "v2");
    // Canary users stay in their unit: rz01 has no v2 endpoint, so a forced canary
    // user of slot 57 gets v1 there rather than v2 in another unit.
    let (code, head, body) = send(
        e.gw,
        "GET",
        "/canary",
        &[("x-tessera-uid", "2088000000000057"), ("x-beta", "1")],
        "",
    )
    .unwrap();
    assert_eq!(
        (code, header(&head, "x-tessera-unit")),
        (200, Some("rz01")),
        "{body}"
    );
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["version"],
        "v1"
    );
    // Mirror: the real request answers from v1, a copy goes to v2.
    for _ in 0..5 {
        assert_eq!(uid(e.gw, "/m", "2088000000000011").2["version"], "v1");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !e
        .metrics()
        .contains("tessera_gateway_mirrored_total{outcome=\"sent\"} 5")
    {
        assert!(Instant::now() < deadline, "{}", e.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
    // No rule: 404 with a reason.
    let (code, head, _) = send(e.gw, "GET", "/nothing-here", &[], "").unwrap();
    assert_eq!(
        (code, header(&head, "x-tessera-reason")),
        (404, Some("no-rule"))
    );
    // HTTP/2 without TLS (h2c), with curl.
    let out = Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-H",
            "x-tessera-uid: 2088000000000057",
            "-D",
            "-",
            &format!("http://{}/h/x", e.gw),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
    assert!(text.starts_with("http/2 200"), "{text}");
    assert!(text.contains("x-tessera-unit: rz01"), "{text}");
    // Access log lines are JSON with rule, unit, zone, upstream, status and timing.
    // Metrics per rule, unit and status.
    let m = e.metrics();
    assert!(
        m.lines()
            .any(|l| l.starts_with("tessera_gateway_requests_total{")
                && l.contains("rule=\"by-header\"")
                && l.contains("unit=\"rz00\"")
                && l.contains("code=\"200\"")),
        "{m}"
    );
    assert!(m.contains("tessera_gateway_table_revision"), "{m}");
}

#[test]
fn standby_failover_and_an_endpoint_killed_under_load() {
    let e = estate(&[]);
    let mut a1 = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v1");
    let mut a2 = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v1");
    let standby = Backend::start("127.0.0.2", "echo", "rz00", "hz-b", "v1");
    let b1 = Backend::start("127.0.0.2", "echo", "rz01", "hz-b", "v1");
    e.apply(
        &[
            app(
                "echo",
                &[
                    (&a1, "rz00", None, "v1"),
                    (&a2, "rz00", None, "v1"),
                    (&standby, "rz00", Some("hz-b"), "v1"),
                    (&b1, "rz01", None, "v1"),
                ],
                true,
            ),
            rule("strict", "{app: echo, pathPrefix: /strict}"),
            rule("failover", "{app: echo, pathPrefix: /, failover: standby}"),
        ]
        .concat(),
    );
    // Load from two clients while one rz00 endpoint dies: GETs are retried on the other,
    // no request fails, and none reaches a unit that does not own its slot.
    let load = Load::start(e.gw, "/", 7, 20_000, |slot, head, body| {
        let want = if slot < 50 { "rz00" } else { "rz01" };
        assert_eq!(header(head, "x-tessera-unit"), Some(want), "{head}");
        let v: Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["unit"], want, "slot {slot} served by {body}");
    });
    std::thread::sleep(Duration::from_millis(500));
    a1.kill();
    std::thread::sleep(Duration::from_millis(1500));
    let (done, errors) = load.stop();
    assert!(done > 100, "too few requests");
    assert_eq!(errors.len(), 0, "{errors:?}\n{}", e.gateway.logs());
    // The dead endpoint is out: ejected (passive) and failing its checks (active).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, body) = http(e.admin, "GET", "/endpoints", None, "").unwrap();
        let v: Value = serde_json::from_str(&body).unwrap();
        let dead = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["address"] == a1.addr.to_string())
            .cloned()
            .unwrap();
        if dead["healthy"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "{body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The unit's last endpoint in its zone dies: the strict rule answers 503 with a
    // reason, the failover rule serves from the standby zone, still unit rz00.
    a2.kill();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (code, head, v) = uid(e.gw, "/", "2088000000000003");
        if code == 200 && header(&head, "x-tessera-zone") == Some("hz-b") {
            assert_eq!(header(&head, "x-tessera-unit"), Some("rz00"));
            assert_eq!(v["zone"], "hz-b");
            break;
        }
        assert!(Instant::now() < deadline, "no failover: {code} {head}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, head, _) = uid(e.gw, "/strict", "2088000000000003");
    assert_eq!(code, 503, "{head}");
    assert_eq!(
        header(&head, "x-tessera-reason"),
        Some("no-healthy-endpoint")
    );
    // rz01 is unaffected.
    let (code, head, _) = uid(e.gw, "/strict", "2088000000000077");
    assert_eq!((code, header(&head, "x-tessera-unit")), (200, Some("rz01")));
}

#[test]
fn a_hundred_changes_under_load_fail_no_request() {
    let e = estate(&["--set", "gateway.access_log=false"]);
    let a = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v1");
    let b = Backend::start("127.0.0.2", "echo", "rz01", "hz-b", "v1");
    let endpoints = app(
        "echo",
        &[(&a, "rz00", None, "v1"), (&b, "rz01", None, "v1")],
        false,
    );
    e.apply(&[endpoints.clone(), rule("root", "{app: echo}")].concat());
    let load = Load::start(e.gw, "/any", 13, 100_000, |_, _, _| {});
    // 50 rule changes and 50 shard-map changes (slot 49 moves between the units).
    let mut lags = Vec::new();
    for i in 0..100u32 {
        let yaml = if i % 2 == 0 {
            rule(
                "root",
                &format!("{{app: echo, timeoutMs: {}, priority: {i}}}", 10_000 + i),
            )
        } else {
            let (u0, u1, map) = if i % 4 == 1 {
                ("00-48", "49-99", "{\"00-48\": rz00, \"49-99\": rz01}")
            } else {
                ("00-49", "50-99", "{\"00-49\": rz00, \"50-99\": rz01}")
            };
            format!(
                "---\napiVersion: tessera.io/v1\nkind: Unit\nmetadata: {{name: rz00}}\nspec: {{type: RZone, zone: hz-a, standbyZone: hz-b, slots: [\"{u0}\"]}}\n---\napiVersion: tessera.io/v1\nkind: Unit\nmetadata: {{name: rz01}}\nspec: {{type: RZone, zone: hz-b, standbyZone: sh-a, slots: [\"{u1}\"]}}\n---\napiVersion: tessera.io/v1\nkind: ShardMap\nmetadata: {{name: default}}\nspec: {{slots: {map}}}\n"
            )
        };
        let (code, _, body) = http(e.api, "POST", "/api/v1/apply", Some(&e.token), &yaml).unwrap();
        assert_eq!(code, 200, "{body}");
        let rev = serde_json::from_str::<Value>(&body).unwrap()["revision"]
            .as_u64()
            .unwrap();
        lags.push(e.wait_revision(rev));
        std::thread::sleep(Duration::from_millis(10));
    }
    let (done, errors) = load.stop();
    assert_eq!(errors.len(), 0, "{errors:?}");
    assert!(done > 100);
    lags.sort();
    // Reported, not asserted: commit-to-applied as the API client sees it (the apply
    // answer, then polling the gateway's admin listener every 2 ms).
    eprintln!(
        "gateway apply lag over {} changes under load: p50 {:?} p99 {:?} max {:?} ({} requests served meanwhile)",
        lags.len(),
        lags[lags.len() / 2],
        lags[lags.len() * 99 / 100],
        lags[lags.len() - 1],
        done
    );
}

#[test]
fn draining_endpoints_get_no_new_requests_and_report_drained() {
    let e = estate(&[]);
    let a = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v1");
    let a2 = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v2");
    e.apply(&[
        "---\napiVersion: tessera.io/v1\nkind: App\nmetadata: {name: echo}\nspec: {mode: vm, artifact: 'builtin:echo', port: 9000, units: [rz00]}\n".to_string(),
        "---\napiVersion: tessera.io/v1\nkind: Instance\nmetadata: {name: echo-rz00-0}\nspec: {app: echo, unit: rz00, version: v1}\n".into(),
        "---\napiVersion: tessera.io/v1\nkind: Instance\nmetadata: {name: echo-rz00-1}\nspec: {app: echo, unit: rz00, version: v2}\n".into(),
        rule("root", "{app: echo}"),
    ]
    .concat());
    // Instances become endpoints once their status says ready (what agents report).
    let status = |name: &str, addr: SocketAddr, draining: bool| {
        let body =
            json!({"status": {"endpoint": addr.to_string(), "ready": true, "draining": draining}})
                .to_string();
        let (code, _, b) = http(
            e.api,
            "PUT",
            &format!("/api/v1/instances/{name}/status"),
            Some(&e.token),
            &body,
        )
        .unwrap();
        assert_eq!(code, 200, "{b}");
        serde_json::from_str::<Value>(&b).unwrap()["metadata"]["revision"]
            .as_u64()
            .unwrap()
    };
    let (code, head, _) = uid(e.gw, "/", "2088000000000001");
    assert_eq!(
        (code, header(&head, "x-tessera-reason")),
        (503, Some("no-healthy-endpoint"))
    );
    let rev = status("echo-rz00-0", a.addr, false);
    e.wait_revision(rev);
    assert_eq!(uid(e.gw, "/", "2088000000000001").2["version"], "v1");
    let drained = |q: &str| -> Value {
        serde_json::from_str(
            &http(e.admin, "GET", &format!("/drained?{q}"), None, "")
                .unwrap()
                .2,
        )
        .unwrap()
    };
    assert_eq!(drained("instance=echo-rz00-0")["drained"], false);
    // A slow request is in flight on v1 when v2 comes up and v1 is marked draining.
    let gw = e.gw;
    let slow = std::thread::spawn(move || {
        send(
            gw,
            "GET",
            "/?delay_ms=2000",
            &[("x-tessera-uid", "2088000000000001")],
            "",
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let d = drained("instance=echo-rz00-0");
    assert_eq!(
        (d["drained"].clone(), d["inflight"].clone()),
        (json!(false), json!(1)),
        "{d}"
    );
    status("echo-rz00-1", a2.addr, false);
    let rev = status("echo-rz00-0", a.addr, true);
    e.wait_revision(rev);
    for _ in 0..20 {
        assert_eq!(
            uid(e.gw, "/", "2088000000000001").2["version"],
            "v2",
            "a draining endpoint got a new request"
        );
    }
    let d = drained(&format!("endpoint={}", a.addr));
    assert_eq!(
        (d["routable"].clone(), d["drained"].clone()),
        (json!(false), json!(false)),
        "{d}"
    );
    let (code, _, body) = slow.join().unwrap();
    assert_eq!(code, 200, "the in-flight request finished: {body}");
    assert!(body.contains("\"v1\""), "{body}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while drained("instance=echo-rz00-0")["drained"] != true {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(drained("instance=nope")["drained"], true);
    assert_eq!(http(e.admin, "GET", "/drained", None, "").unwrap().0, 400);
}

#[test]
fn a_gateway_restarted_while_control_is_down_serves_its_cached_table() {
    let mut e = estate(&[]);
    let a = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v1");
    let b = Backend::start("127.0.0.2", "echo", "rz01", "hz-b", "v1");
    e.apply(
        &[
            app(
                "echo",
                &[(&a, "rz00", None, "v1"), (&b, "rz01", None, "v1")],
                false,
            ),
            rule("root", "{app: echo}"),
        ]
        .concat(),
    );
    assert_eq!(uid(e.gw, "/", "2088000000000088").0, 200);
    // The gateway holds its own credential, not a join token's second use.
    let cred = std::fs::read_to_string(e.gateway.data_dir.join("gateway/credential")).unwrap();
    assert!(cred.starts_with("tsr_"));
    e.control.kill();
    e.gateway.restart();
    let admin = e.gateway.addr("gateway", "admin");
    let gw = e.gateway.addr("gateway", "entrance");
    e.gateway.wait_ready(admin);
    let (_, _, body) = http(admin, "GET", "/routes", None, "").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["source"], "cache", "{body}");
    assert_eq!(v["connected"], false, "{body}");
    for (u, unit) in [("2088000000000088", "rz01"), ("2088000000000011", "rz00")] {
        let (code, head, _) = uid(gw, "/", u);
        assert_eq!(
            (code, header(&head, "x-tessera-unit")),
            (200, Some(unit)),
            "{}",
            e.gateway.logs()
        );
    }
    // Control comes back: the gateway reconnects with its credential.
    e.control.start_again();
    let api = e.control.addr("control", "api");
    e.control.wait_ready(api);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (_, _, body) = http(admin, "GET", "/routes", None, "").unwrap();
        if serde_json::from_str::<Value>(&body).unwrap()["source"] == "control" {
            break;
        }
        assert!(Instant::now() < deadline, "{body}\n{}", e.gateway.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn bad_clients_get_clear_answers_and_no_credential_without_a_token() {
    let e = estate(&[
        "--set",
        "gateway.header_read_timeout_secs=1",
        "--set",
        "gateway.max_body_bytes=1000",
    ]);
    let a = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v1");
    e.apply(
        &[
            app("echo", &[(&a, "rz00", None, "v1")], false),
            rule("root", "{app: echo}"),
        ]
        .concat(),
    );
    // Malformed request line.
    let mut s = TcpStream::connect(e.gw).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 400"),
        "{:?}",
        String::from_utf8_lossy(&buf)
    );
    // Oversized headers.
    let big = "x".repeat(100_000);
    let r = send(
        e.gw,
        "GET",
        "/",
        &[("x-tessera-uid", "1"), ("x-big", &big)],
        "",
    );
    assert!(matches!(r, Ok((431, _, _)) | Err(_)), "{r:?}");
    // A body over the limit.
    let (code, head, _) = send(
        e.gw,
        "POST",
        "/",
        &[("x-tessera-uid", "2088000000000001")],
        &"b".repeat(2_000),
    )
    .unwrap();
    assert_eq!(
        (code, header(&head, "x-tessera-reason")),
        (413, Some("body-too-large"))
    );
    // A client that never finishes its head is cut off.
    let mut s = TcpStream::connect(e.gw).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "slow client kept for {:?}",
        start.elapsed()
    );
    // Still serving.
    assert_eq!(uid(e.gw, "/", "2088000000000001").0, 200);
    // A gateway with a forged join token (the right CA, a made-up secret) is refused
    // with a clear message and never becomes ready.
    let (_, _, body) = http(
        e.api,
        "POST",
        "/api/v1/tokens",
        Some(&e.token),
        r#"{"role": "gateway"}"#,
    )
    .unwrap();
    let real: Value = serde_json::from_str(&body).unwrap();
    let fp = real["token"]
        .as_str()
        .unwrap()
        .split('.')
        .nth(1)
        .unwrap()
        .to_string();
    let profile = format!(
        "node_name = \"gw-forged\"\nroles = [\"gateway\"]\ndata_dir = \"DATA\"\n[gateway]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ncontrol = [\"http://{}\"]\njoin_token = \"tsr1.{fp}.forged\"\n",
        e.api
    );
    let mut forged = Node::run_profile(&profile, &[], &[]);
    let admin = forged.addr("gateway", "admin");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !forged.logs().contains("not known to this cluster") {
        assert!(Instant::now() < deadline, "{}", forged.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(http(admin, "GET", "/readyz", None, "").unwrap().0, 503);
    // A control-role join token is no gateway credential either.
    let (_, _, body) = http(
        e.api,
        "POST",
        "/api/v1/tokens",
        Some(&e.token),
        r#"{"role": "control"}"#,
    )
    .unwrap();
    let control_token: Value = serde_json::from_str(&body).unwrap();
    let out = tessera(
        &[
            "get",
            "apps",
            "--server",
            &format!("http://{}", e.api),
            "--token",
            control_token["token"].as_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success());
}

#[test]
fn https_entrance_picks_certificates_by_sni_and_speaks_h2_and_http1() {
    let ca = crate::harness::TestCa::new();
    let dir = &ca.dir;
    let mut toml = String::from("tls_listen = \"127.0.0.1:0\"\n");
    for (file, names) in [("bank", ["api.bank.example"]), ("shop", ["*.shop.example"])] {
        let (c, k) = ca.issue(file, &names);
        toml.push_str(&format!(
            "[[gateway.certificates]]\ncert = \"{}\"\nkey = \"{}\"\n",
            c.display(),
            k.display()
        ));
    }
    let mut e = estate_with(&toml, &[]);
    let https = e.gateway.addr("gateway", "https");
    let a = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v1");
    e.apply(
        &[
            app("echo", &[(&a, "rz00", None, "v1")], false),
            rule("root", "{app: echo}"),
        ]
        .concat(),
    );
    let curl = |host: &str, extra: &[&str]| -> (bool, String) {
        let mut args = vec![
            "-sS".to_string(),
            "-D".into(),
            "-".into(),
            "--max-time".into(),
            "10".into(),
            "--cacert".into(),
            dir.path().join("ca.pem").display().to_string(),
            "--resolve".into(),
            format!("{host}:{}:127.0.0.1", https.port()),
            "-H".into(),
            "x-tessera-uid: 2088000000000007".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(format!("https://{host}:{}/", https.port()));
        let out = Command::new("curl").args(&args).output().expect("curl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    // ALPN: HTTP/2 by default, HTTP/1.1 when the client asks for it.
    let (ok, text) = curl("api.bank.example", &[]);
    assert!(
        ok && text.starts_with("http/2 200"),
        "{text}\n{}",
        e.gateway.logs()
    );
    assert!(text.contains("x-tessera-unit: rz00"), "{text}");
    assert!(text.contains("\"x-forwarded-proto\":\"https\""), "{text}");
    let (ok, text) = curl("api.bank.example", &["--http1.1"]);
    assert!(ok && text.starts_with("http/1.1 200"), "{text}");
    // SNI picks the wildcard certificate for a shop host (curl verifies the name).
    let (ok, text) = curl("m.shop.example", &[]);
    assert!(ok && text.starts_with("http/2 200"), "{text}");
    // An unknown name gets the default (first) certificate, which does not name it.
    let (ok, _) = curl("other.example", &[]);
    assert!(!ok, "a certificate for other.example was presented");
    // The plain entrance still serves.
    assert_eq!(uid(e.gw, "/", "2088000000000007").0, 200);
}

#[test]
fn failover_moves_a_unit_to_its_standby_zone_and_back() {
    let e = estate(&[]);
    let a = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v1");
    let sb = Backend::start("127.0.0.2", "echo", "rz00", "hz-b", "v1");
    e.apply(
        &[
            // Zones given: an endpoint without one follows its unit wherever it moves.
            app(
                "echo",
                &[
                    (&a, "rz00", Some("hz-a"), "v1"),
                    (&sb, "rz00", Some("hz-b"), "v1"),
                ],
                false,
            ),
            rule("root", "{app: echo}"),
        ]
        .concat(),
    );
    let zone_of = || {
        let (code, head, v) = uid(e.gw, "/", "2088000000000007");
        assert_eq!(
            (code, header(&head, "x-tessera-unit")),
            (200, Some("rz00")),
            "{v}"
        );
        assert_eq!(header(&head, "x-tessera-zone"), v["zone"].as_str());
        v["zone"].as_str().unwrap().to_string()
    };
    assert_eq!(zone_of(), "hz-a");
    let server = format!("http://{}", e.api);
    let failover = |to: &str| {
        tessera(
            &[
                "failover", "rz00", "--to", to, "--server", &server, "--token", &e.token,
            ],
            &[],
        )
    };
    let out = failover("hz-b");
    assert!(out.status.success(), "{}", crate::harness::stderr(&out));
    let said = crate::harness::stdout(&out);
    assert!(said.contains("zone hz-a -> hz-b, standby hz-a"), "{said}");
    e.wait_revision(revision_in(&said));
    assert_eq!(zone_of(), "hz-b");
    // Audited as a change to the unit, by the admin.
    let (_, _, body) = http(
        e.api,
        "GET",
        "/api/v1/auditevents?kind=Unit&name=rz00",
        Some(&e.token),
        "",
    )
    .unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let last = v["items"].as_array().unwrap().last().cloned().unwrap();
    assert_eq!(
        (last["user"].as_str(), last["outcome"].as_str()),
        (Some("admin"), Some("accepted")),
        "{last}"
    );
    // A zone that does not exist is refused, the unit stays; failback is the same command.
    let out = failover("nowhere");
    assert_eq!(
        out.status.code(),
        Some(2),
        "{}",
        crate::harness::stderr(&out)
    );
    assert!(crate::harness::stderr(&out).contains("nowhere"));
    let out = failover("hz-a");
    assert!(out.status.success());
    let said = crate::harness::stdout(&out);
    e.wait_revision(revision_in(&said));
    assert_eq!(zone_of(), "hz-a");
    assert!(crate::harness::stdout(&failover("hz-a")).contains("already in zone hz-a"));
}

/// curl through the gateway; (exit ok, stdout).
fn curl(args: &[&str]) -> (bool, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    if !out.status.success() {
        eprintln!("curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    (out.status.success(), out.stdout)
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

/// An estate with app `echo` (one `demo-app` per unit, rz00 in hz-a and rz01 in hz-b)
/// routed by the query parameter `uid`; the backends live as long as the tuple.
fn echo_by_query() -> (Estate, [Backend; 2]) {
    let e = estate(&[]);
    let a0 = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v1");
    let b1 = Backend::start("127.0.0.2", "echo", "rz01", "hz-b", "v1");
    e.apply(
        &[
            app(
                "echo",
                &[(&a0, "rz00", None, "v1"), (&b1, "rz01", None, "v1")],
                false,
            ),
            rule(
                "echo",
                "{app: echo, routingKey: {source: query, name: uid}}",
            ),
        ]
        .concat(),
    );
    (e, [a0, b1])
}

#[test]
fn bodies_of_every_size_and_framing_pass_through_both_ways() {
    let (e, _backends) = echo_by_query();
    let dir = tempfile::tempdir().unwrap();
    let small: Vec<u8> = (0..100u32).map(|i| (i % 251) as u8).collect();
    // Over the 64 KiB the gateway buffers: streamed upstream.
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 253) as u8).collect();
    let (small_f, big_f) = (dir.path().join("small"), dir.path().join("big"));
    std::fs::write(&small_f, &small).unwrap();
    std::fs::write(&big_f, &big).unwrap();
    let url = |q: &str| format!("http://{}/upload?uid=2088000000000057{q}", e.gw);
    let up = |file: &std::path::Path, extra: &[&str]| -> Value {
        let data = format!("@{}", file.display());
        let u = url("");
        let mut args = vec!["-X", "POST", "--data-binary", data.as_str(), u.as_str()];
        args.extend_from_slice(extra);
        let (ok, out) = curl(&args);
        assert!(ok);
        serde_json::from_slice(&out).unwrap_or_else(|_| panic!("{}", String::from_utf8_lossy(&out)))
    };
    for (name, file, data, extra) in [
        ("small", &small_f, &small, &[][..]),
        ("big with a length", &big_f, &big, &[][..]),
        (
            "big chunked",
            &big_f,
            &big,
            &["-H", "Transfer-Encoding: chunked"][..],
        ),
        (
            "big with Expect",
            &big_f,
            &big,
            &["-H", "Expect: 100-continue"][..],
        ),
    ] {
        let v = up(file, extra);
        assert_eq!(v["unit"], "rz01", "{name}: {v}");
        assert_eq!(v["bodyBytes"], data.len(), "{name}: {v}");
        assert_eq!(v["bodySha256"], sha256_hex(data), "{name}: {v}");
        assert_eq!(v["headers"]["x-tessera-unit"], "rz01", "{name}: {v}");
    }
    // Answers: by length, and streamed in chunks of unknown length.
    for (q, n) in [
        ("&bytes=1000000", 1_000_000),
        ("&bytes=100000&chunked=1", 100_000),
    ] {
        let (ok, out) = curl(&["-D", "-", &url(q)]);
        assert!(ok, "{q}");
        let text = String::from_utf8_lossy(&out).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(body.len(), n, "{q}: {head}");
        assert!(body.bytes().all(|b| b == b'x'), "{q}");
        assert!(
            head.to_ascii_lowercase().contains("x-tessera-unit: rz01"),
            "{head}"
        );
    }
    // HEAD: the length of what GET would answer, and no body.
    let (ok, out) = curl(&["-I", &url("&bytes=5000")]);
    assert!(ok);
    let head = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("content-length: 5000"), "{head}");
    // Many requests on one client connection, alternating units: all answered in step.
    let urls: Vec<String> = (0..20)
        .map(|i| {
            let slot = if i % 2 == 0 { "07" } else { "57" };
            format!(
                "http://{}/ka?uid=20880000000000{slot}&bytes={}",
                e.gw,
                1000 + i
            )
        })
        .collect();
    let mut args = Vec::new();
    for (i, u) in urls.iter().enumerate() {
        if i > 0 {
            args.push("--next");
        }
        args.extend_from_slice(&[
            "-w",
            "|%{size_download}|%{num_connects}\n",
            "-o",
            "/dev/null",
        ]);
        args.push(u.as_str());
    }
    let (ok, out) = curl(&args);
    assert!(ok);
    let lines: Vec<String> = String::from_utf8_lossy(&out)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 20, "{lines:?}");
    let mut connects = 0;
    for (i, l) in lines.iter().enumerate() {
        let f: Vec<&str> = l.split('|').collect();
        assert_eq!(f[1], (1000 + i).to_string(), "{lines:?}");
        connects += f[2].parse::<u32>().unwrap();
    }
    assert_eq!(connects, 1, "one client connection: {lines:?}");
}

#[test]
fn gateways_register_their_admin_url_and_only_their_own() {
    let e = estate(&[]);
    // The gateway registers itself within a few seconds of enrolling.
    let deadline = Instant::now() + Duration::from_secs(20);
    let me = loop {
        let (code, _, body) = http(e.api, "GET", "/api/v1/gateways", Some(&e.token), "").unwrap();
        assert_eq!(code, 200, "{body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        if let Some(g) = v["items"]
            .as_array()
            .and_then(|a| a.iter().find(|g| g["name"] == "gw-1"))
        {
            break g.clone();
        }
        assert!(
            Instant::now() < deadline,
            "never registered: {body}\n{}",
            e.gateway.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(me["admin"], format!("http://{}", e.admin), "{me}");
    assert_eq!(me["zone"], "hz-a", "{me}");
    assert_eq!(me["live"], true, "{me}");
    // Bad registrations: clear 400s naming what is wrong, nothing stored.
    for (body, expect) in [
        ("not json", "not a gateway registration"),
        (r#"{"admin": "127.0.0.1:7403"}"#, "admin"),
        (r#"{"admin": "http://x:1/path"}"#, "admin"),
        (r#"{"admin": "http://x:1", "extra": 1}"#, "unknown field"),
        (r#"{"admin": "http://x:1", "zone": "Not A Zone"}"#, "zone"),
    ] {
        let (code, _, resp) =
            http(e.api, "PUT", "/api/v1/gateways/gw-2", Some(&e.token), body).unwrap();
        assert_eq!(code, 400, "{body}: {resp}");
        assert!(resp.contains(expect), "{body}: {resp}");
    }
    // Another user may not register a gateway; a gateway's credential only itself.
    let user = json!({"name": "viewer-1", "role": "viewer"}).to_string();
    let (code, _, resp) = http(e.api, "POST", "/api/v1/users", Some(&e.token), &user).unwrap();
    assert_eq!(code, 201, "{resp}");
    let viewer = serde_json::from_str::<Value>(&resp).unwrap()["token"]
        .as_str()
        .unwrap()
        .to_string();
    let ok = r#"{"admin": "http://127.0.0.9:7403"}"#;
    let (code, _, resp) = http(e.api, "PUT", "/api/v1/gateways/gw-1", Some(&viewer), ok).unwrap();
    assert_eq!(code, 403, "{resp}");
    let (code, _, _) = http(e.api, "GET", "/api/v1/gateways", Some(&viewer), "").unwrap();
    assert_eq!(code, 200);
    let cred = std::fs::read_to_string(e.gateway.data_dir.join("gateway/credential")).unwrap();
    let (code, _, resp) =
        http(e.api, "PUT", "/api/v1/gateways/gw-9", Some(cred.trim()), ok).unwrap();
    assert_eq!(code, 403, "{resp}");
    let (code, _, body) = http(e.api, "GET", "/api/v1/gateways", Some(&e.token), "").unwrap();
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{body}");
}

/// A `Certificate` resource as YAML (block scalars keep the PEM as is).
fn certificate(name: &str, hosts: &[&str], cert: &str, key: &str) -> String {
    let indent = |pem: &str| {
        pem.lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    };
    format!(
        "---\napiVersion: tessera.io/v1\nkind: Certificate\nmetadata: {{name: {name}}}\nspec:\n  hosts: {hosts:?}\n  cert: |\n{}  key: |\n{}",
        indent(cert),
        indent(key)
    )
}

#[test]
fn https_certificates_come_from_the_control_plane_with_their_keys_sealed() {
    let ca = crate::harness::TestCa::new();
    let mut e = estate_with("tls_listen = \"127.0.0.1:0\"\n", &[]);
    let https = e.gateway.addr("gateway", "https");
    let a = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v1");
    let (c, k) = ca.issue("pay", &["pay.bank.example"]);
    let (cert, key) = (
        std::fs::read_to_string(c).unwrap(),
        std::fs::read_to_string(k).unwrap(),
    );
    e.apply(
        &[
            app("echo", &[(&a, "rz00", None, "v1")], false),
            rule("root", "{app: echo}"),
            certificate("pay", &[], &cert, &key),
        ]
        .concat(),
    );
    let curl = |host: &str| -> (bool, String) {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-D",
                "-",
                "--max-time",
                "10",
                "--cacert",
                &ca.dir.path().join("ca.pem").display().to_string(),
                "--resolve",
                &format!("{host}:{}:127.0.0.1", https.port()),
                "-H",
                "x-tessera-uid: 2088000000000007",
                &format!("https://{host}:{}/", https.port()),
            ])
            .output()
            .expect("curl");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_ascii_lowercase()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, text) = curl("pay.bank.example");
    assert!(
        ok && text.starts_with("http/2 200"),
        "{text}\n{}",
        e.gateway.logs()
    );
    assert!(text.contains("x-tessera-unit: rz00"), "{text}");
    // The key is stored sealed: an admin reads enc:v1:..., never the PEM.
    let (code, _, body) =
        http(e.api, "GET", "/api/v1/certificates/pay", Some(&e.token), "").unwrap();
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert!(
        v["spec"]["key"].as_str().unwrap().starts_with("enc:v1:"),
        "{body}"
    );
    assert!(!body.contains("PRIVATE KEY"), "{body}");
    // A second certificate applied later is served without a restart (wildcard).
    let (c2, k2) = ca.issue("shop", &["*.shop.example"]);
    e.apply(&certificate(
        "shop",
        &[],
        &std::fs::read_to_string(c2).unwrap(),
        &std::fs::read_to_string(&k2).unwrap(),
    ));
    let (ok, text) = curl("m.shop.example");
    assert!(ok && text.starts_with("http/2 200"), "{text}");
    // Bad certificates are refused with the field named; nothing is stored.
    let (c3, _) = ca.issue("other", &["other.example"]);
    let cert3 = std::fs::read_to_string(c3).unwrap();
    let key2 = std::fs::read_to_string(k2).unwrap();
    for (yaml, field) in [
        (certificate("bad", &[], "not a pem", &key), "spec.cert"),
        (certificate("bad", &[], &cert3, &key2), "spec.key"),
        (
            certificate("bad", &["not a host!"], &cert, &key),
            "spec.hosts",
        ),
    ] {
        let (code, _, resp) = http(e.api, "POST", "/api/v1/apply", Some(&e.token), &yaml).unwrap();
        assert!(code == 422 || code == 400, "{code} {resp}");
        assert!(resp.contains(field), "{field}: {resp}");
    }
    let (code, _, _) = http(e.api, "GET", "/api/v1/certificates/bad", Some(&e.token), "").unwrap();
    assert_eq!(code, 404);
    // Deleted: no longer served.
    let (code, _, resp) = http(
        e.api,
        "DELETE",
        "/api/v1/certificates/shop",
        Some(&e.token),
        "",
    )
    .unwrap();
    assert_eq!(code, 200, "{resp}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, _) = curl("m.shop.example");
        if !ok {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the deleted certificate is still served"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A connection to `gw`: its writing half and a buffered reader (reads time out in 10 s).
fn connection(gw: SocketAddr) -> (TcpStream, BufReader<TcpStream>) {
    let s = TcpStream::connect(gw).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (s.try_clone().unwrap(), BufReader::new(s))
}

/// Reads one answer from `r`: (status line, head lowercased, body). The body is read by
/// its `content-length` (none for `head_only`).
fn read_answer(r: &mut BufReader<TcpStream>, head_only: bool) -> (String, String, String) {
    let mut status = String::new();
    r.read_line(&mut status).unwrap();
    let mut head = String::new();
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let len: usize = header(&head, "content-length")
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0);
    let mut body = vec![0; if head_only { 0 } else { len }];
    r.read_exact(&mut body).unwrap();
    (
        status.trim().to_string(),
        head,
        String::from_utf8(body).unwrap(),
    )
}

#[test]
fn one_connection_carries_pipelined_head_and_http10_requests_in_order() {
    // The gateway serves plain HTTP/1.1 in its own loop and hands a connection to hyper
    // at the first request that needs it (here HTTP/1.0): answers stay in order and
    // routed, whoever serves them.
    let (e, _backends) = echo_by_query();
    let (mut w, mut r) = connection(e.gw);
    // Three requests in one write: two GETs to different units and a HEAD.
    w.write_all(
        b"GET /a?uid=2088000000000007 HTTP/1.1\r\nHost: x\r\n\r\n\
          GET /b?uid=2088000000000057 HTTP/1.1\r\nHost: x\r\n\r\n\
          HEAD /c?uid=2088000000000057 HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .unwrap();
    let (st, head, body) = read_answer(&mut r, false);
    assert_eq!(
        (st.as_str(), header(&head, "x-tessera-unit")),
        ("HTTP/1.1 200 OK", Some("rz00")),
        "{head}"
    );
    assert!(body.contains("\"unit\":\"rz00\""), "{body}");
    assert!(head.contains("date: "), "{head}");
    let (st, head, body) = read_answer(&mut r, false);
    assert_eq!(
        (st.as_str(), header(&head, "x-tessera-unit")),
        ("HTTP/1.1 200 OK", Some("rz01"))
    );
    assert!(body.contains("\"unit\":\"rz01\""), "{body}");
    let (st, head, _) = read_answer(&mut r, true);
    assert_eq!(
        (st.as_str(), header(&head, "x-tessera-unit")),
        ("HTTP/1.1 200 OK", Some("rz01"))
    );
    // A POST with a small body on the same connection.
    w.write_all(
        b"POST /p?uid=2088000000000007 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
    )
    .unwrap();
    let (st, head, _) = read_answer(&mut r, false);
    assert_eq!(
        (st.as_str(), header(&head, "x-tessera-unit")),
        ("HTTP/1.1 200 OK", Some("rz00")),
        "{head}"
    );
    // HTTP/1.0 with keep-alive: hyper takes the connection over and keeps serving it.
    w.write_all(
        b"GET /d?uid=2088000000000057 HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
    )
    .unwrap();
    let (st, head, _) = read_answer(&mut r, false);
    assert!(st.starts_with("HTTP/1.") && st.contains(" 200"), "{st}");
    assert_eq!(header(&head, "x-tessera-unit"), Some("rz01"), "{head}");
    w.write_all(b"GET /e?uid=2088000000000007 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (st, head, _) = read_answer(&mut r, false);
    assert_eq!(
        (st.as_str(), header(&head, "x-tessera-unit")),
        ("HTTP/1.1 200 OK", Some("rz00"))
    );
    // Then the gateway closes.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    // A fresh connection asking to close is closed after its answer, by the own loop.
    let (mut w, mut r) = connection(e.gw);
    w.write_all(b"GET /f?uid=2088000000000007 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let (st, head, _) = read_answer(&mut r, false);
    assert_eq!(st, "HTTP/1.1 200 OK");
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
}

#[test]
fn on_shutdown_a_request_in_flight_finishes_and_idle_connections_close() {
    let mut e = estate(&[]);
    let a0 = Backend::start("127.0.0.1", "echo", "rz00", "hz-a", "v1");
    e.apply(
        &[
            app("echo", &[(&a0, "rz00", None, "v1")], false),
            rule(
                "echo",
                "{app: echo, routingKey: {source: query, name: uid}}",
            ),
        ]
        .concat(),
    );
    let open = |path: &str| {
        let (mut w, r) = connection(e.gw);
        w.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        (w, r)
    };
    // One idle keep-alive connection (answered once), one request taking 1.5 s.
    let (_idle_w, mut idle) = open("/a?uid=2088000000000007");
    assert_eq!(read_answer(&mut idle, false).0, "HTTP/1.1 200 OK");
    let (_slow_w, mut slow) = open("/b?uid=2088000000000007&delay_ms=1500");
    std::thread::sleep(Duration::from_millis(300));
    e.gateway.signal("TERM");
    // The slow request is answered, told the connection closes, and then it does.
    let (st, head, _) = read_answer(&mut slow, false);
    assert_eq!(st, "HTTP/1.1 200 OK", "{}", e.gateway.logs());
    assert_eq!(header(&head, "connection"), Some("close"), "{head}");
    let mut rest = Vec::new();
    assert_eq!(slow.read_to_end(&mut rest).unwrap(), 0);
    // The idle one was closed without an answer.
    let mut rest = Vec::new();
    assert_eq!(idle.read_to_end(&mut rest).unwrap(), 0);
    let (status, took) = e.gateway.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "{status:?} after {took:?}");
}
