//! The DB proxy against real MariaDB servers: two shards (rz00 with a real replica,
//! rz01 without), data sources from the control plane, the `mariadb` command-line client
//! through the proxy.

use crate::harness::{http, Node};
use crate::mariadb::MariaDb;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BACKEND_USER: &str = "tessera";
const BACKEND_PASSWORD: &str = "backend-pw";
const APP: &str = "app";
const APP_PASSWORD: &str = "app-pw";

fn ip(last: u8) -> IpAddr {
    format!("127.0.0.{last}").parse().unwrap()
}

struct Estate {
    _control: Node,
    proxy: Node,
    api: SocketAddr,
    token: String,
    mysql: SocketAddr,
    admin: SocketAddr,
    a: MariaDb,
    a_replica: MariaDb,
    b: MariaDb,
    /// The DataSource as applied (YAML, plain-text passwords).
    datasource: String,
}

/// `ips`: three free 127.0.0.x addresses for rz00's primary, its replica and rz01's primary.
fn estate(ips: [u8; 3]) -> Estate {
    estate_with(ips, true)
}

/// With `two_shards` false, `accountdb` is one unsharded database: rz00's primary and
/// its replica (rz01's server runs but is not used).
fn estate_with(ips: [u8; 3], two_shards: bool) -> Estate {
    estate_full(ips, two_shards, "", "")
}

/// [`estate_with`] with `proxy_toml` appended to the proxy's `[dbproxy]` settings and
/// `spec_yaml` (indented lines) to the DataSource's spec.
fn estate_full(ips: [u8; 3], two_shards: bool, proxy_toml: &str, spec_yaml: &str) -> Estate {
    estate_servers(ips, two_shards, proxy_toml, spec_yaml, &[])
}

/// [`estate_full`] with `server_args` given to every MariaDB server.
fn estate_servers(
    ips: [u8; 3],
    two_shards: bool,
    proxy_toml: &str,
    spec_yaml: &str,
    server_args: &[String],
) -> Estate {
    let a = MariaDb::start_with(ip(ips[0]), 1, server_args);
    let b = MariaDb::start_with(ip(ips[2]), 3, server_args);
    for (db, name) in [(&a, "acct_00"), (&b, "acct_01")] {
        db.create_user(BACKEND_USER, BACKEND_PASSWORD);
        db.sql(&format!("CREATE DATABASE {name}"));
    }
    let a_replica = MariaDb::start_replica_with(ip(ips[1]), 2, &a, server_args);
    let (control, api, token) = crate::harness::control_with(crate::harness::TOPOLOGY);
    let datasource = format!(
        r#"
---
apiVersion: tessera.io/v1
kind: DataSource
metadata: {{name: accountdb}}
spec:
  database: accountdb
  shardKey: uid
  user: {BACKEND_USER}
  password: {BACKEND_PASSWORD}
  proxyUsers: [{{name: {APP}, password: {APP_PASSWORD}}}]
  tables: [{{name: t_dict, type: everyShard}}]
{spec_yaml}  shards:
    - {{unit: rz00, primary: "{}", replicas: ["{}"], database: acct_00}}
"#,
        a.addr, a_replica.addr
    ) + &if two_shards {
        format!(
            "    - {{unit: rz01, primary: \"{}\", database: acct_01}}\n",
            b.addr
        )
    } else {
        String::new()
    };
    let (code, _, out) = http(api, "POST", "/api/v1/apply", Some(&token), &datasource).unwrap();
    assert_eq!(code, 200, "{out}");
    let join = crate::harness::join_token(api, &token, "dbproxy");
    let profile = format!(
        "node_name = \"dbp-1\"\nroles = [\"dbproxy\"]\ndata_dir = \"DATA\"\n[dbproxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ncontrol = [\"http://{api}\"]\njoin_token = \"{join}\"\nbackend_connect_timeout_ms = 1000\n{proxy_toml}"
    );
    let mut proxy = Node::run_profile(&profile, &[], &[]);
    let mysql = proxy.addr("dbproxy", "mysql");
    let admin = proxy.addr("dbproxy", "admin");
    proxy.wait_ready(admin);
    Estate {
        _control: control,
        proxy,
        api,
        token,
        mysql,
        admin,
        a,
        a_replica,
        b,
        datasource,
    }
}

/// Runs statements with the `mariadb` CLI through the proxy: (exit ok, stdout, stderr).
fn client(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: Option<&str>,
    sql: &str,
) -> (bool, String, String) {
    client_with(addr, user, password, db, sql, &["--skip-ssl".to_string()])
}

/// [`client`] with TLS settings of its own (`tls`: `--skip-ssl` or `--ssl...` flags).
fn client_with(
    addr: SocketAddr,
    user: &str,
    password: &str,
    db: Option<&str>,
    sql: &str,
    tls: &[String],
) -> (bool, String, String) {
    let mut cmd = Command::new("mariadb");
    cmd.arg("--no-defaults")
        .arg("--protocol=tcp")
        .arg(format!("--host={}", addr.ip()))
        .arg(format!("--port={}", addr.port()))
        .arg(format!("--user={user}"))
        .arg(format!("--password={password}"))
        .arg("--connect-timeout=5")
        .args(tls)
        .arg("--comments")
        .args(["-N", "-B", "--force"]);
    if let Some(db) = db {
        cmd.arg(db);
    }
    // Statements on stdin (not -e): with --force the CLI goes on after an error.
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mariadb CLI");
    {
        use std::io::Write;
        // A CLI refused at login exits without reading its statements: a broken pipe
        // here is that, and its stderr says why.
        let mut stdin = child.stdin.take().unwrap();
        let _ = stdin
            .write_all(sql.as_bytes())
            .and_then(|_| stdin.write_all(b";\n"));
    }
    let out = wait_bounded(child, Duration::from_secs(30));
    // With --force the exit code is 0 even after errors: an ERROR line is the failure.
    (
        out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("ERROR "),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_bounded(mut child: std::process::Child, limit: Duration) -> std::process::Output {
    let t0 = Instant::now();
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if t0.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "client hung for {limit:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits (bounded) until `tessera get datasources` shows `want` in the SHARDS column.
fn wait_for_health(e: &Estate, want: &str) {
    let server = format!("http://{}", e.api);
    let t0 = Instant::now();
    loop {
        let out = crate::harness::tessera(
            &["get", "datasources"],
            &[("TESSERA_SERVER", &server), ("TESSERA_TOKEN", &e.token)],
        );
        let text = crate::harness::stdout(&out);
        if text.contains(want) {
            return;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "`tessera get datasources` never showed {want}:\n{text}{}",
            crate::harness::stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn app(e: &Estate, sql: &str) -> (bool, String, String) {
    client(e.mysql, APP, APP_PASSWORD, Some("accountdb"), sql)
}

fn app_ok(e: &Estate, sql: &str) -> String {
    let (ok, out, err) = app(e, sql);
    assert!(
        ok,
        "`{sql}` failed through the proxy: {err}\n{}",
        e.proxy.logs()
    );
    out
}

const SCHEMA: &str = "CREATE TABLE t_user (uid BIGINT PRIMARY KEY, name VARCHAR(32) NOT NULL, balance INT NOT NULL DEFAULT 0); \
                      CREATE TABLE t_dict (code VARCHAR(8) PRIMARY KEY, label VARCHAR(32))";

/// A client speaking the protocol by hand, for what client libraries do not send:
/// malformed packets, cursors.
struct Raw {
    s: std::net::TcpStream,
}

impl Raw {
    /// Logged in as the app user to `db` through the proxy at `addr`.
    fn login(addr: SocketAddr, db: &str) -> Raw {
        use tessera::dbproxy::wire;
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut r = Raw { s };
        let (_, greeting) = r.read().unwrap();
        let hello = wire::parse_handshake_v10(&greeting).unwrap();
        let auth = wire::scramble_native(APP_PASSWORD.as_bytes(), &hello.nonce);
        let resp = wire::handshake_response(wire::cap::PROXY, APP, &auth, Some(db), wire::NATIVE);
        r.send(1, &resp);
        let (_, ok) = r.read().unwrap();
        assert_eq!(ok[0], 0, "login: {ok:?}");
        r
    }

    fn read(&mut self) -> Option<(u8, Vec<u8>)> {
        use std::io::Read;
        let mut h = [0u8; 4];
        self.s.read_exact(&mut h).ok()?;
        let n = u32::from_le_bytes([h[0], h[1], h[2], 0]) as usize;
        let mut p = vec![0; n];
        self.s.read_exact(&mut p).ok()?;
        Some((h[3], p))
    }

    fn payload(&mut self) -> Vec<u8> {
        self.read().expect("a packet").1
    }

    fn send(&mut self, seq: u8, p: &[u8]) {
        use std::io::Write;
        let mut out = Vec::new();
        tessera::dbproxy::wire::frame(&mut out, seq, p);
        self.s.write_all(&out).unwrap();
    }

    /// The code of the ERR packet that answers `p`, if it is one.
    fn error_code(&mut self, p: &[u8]) -> Option<u16> {
        self.send(0, p);
        let answer = self.payload();
        tessera::dbproxy::wire::parse_err(&answer).map(|(c, _)| c)
    }
}

#[test]
fn rows_land_in_their_units_shard_reads_split_and_scatter_merges() {
    let e = estate([100, 101, 102]);
    // DDL through the proxy reaches every shard (and the replica, by replication).
    app_ok(&e, SCHEMA);
    assert_eq!(e.a.sql("SHOW TABLES FROM acct_00").trim(), "t_dict\nt_user");
    assert_eq!(e.b.sql("SHOW TABLES FROM acct_01").trim(), "t_dict\nt_user");

    // Rows land in the shard of their key's unit: slot 07 → rz00, slot 57 → rz01.
    let mut all = Vec::new();
    for i in 0..20u64 {
        let uid = 2088000000000000 + i * 7;
        all.push(uid);
        app_ok(
            &e,
            &format!(
                "INSERT INTO t_user (uid, name, balance) VALUES ({uid}, 'u{i}', {})",
                i * 10
            ),
        );
    }
    let on = |db: &MariaDb, name: &str| -> Vec<u64> {
        db.sql(&format!("SELECT uid FROM {name}.t_user ORDER BY uid"))
            .lines()
            .map(|l| l.trim().parse().unwrap())
            .collect()
    };
    let (in_a, in_b) = (on(&e.a, "acct_00"), on(&e.b, "acct_01"));
    assert!(in_a.iter().all(|u| u % 100 < 50), "{in_a:?}");
    assert!(in_b.iter().all(|u| u % 100 >= 50), "{in_b:?}");
    assert_eq!(in_a.len() + in_b.len(), all.len());

    // Reads outside a transaction go to the replica: a row only the replica has is seen,
    // unless the statement asks for the primary.
    e.a_replica.wait_caught_up(&e.a);
    e.a_replica
        .sql("INSERT INTO acct_00.t_user (uid, name) VALUES (3000000000000001, 'replica-only')");
    assert_eq!(
        app_ok(&e, "SELECT name FROM t_user WHERE uid = 3000000000000001").trim(),
        "replica-only"
    );
    assert_eq!(
        app_ok(
            &e,
            "SELECT /* tessera: primary */ name FROM t_user WHERE uid = 3000000000000001"
        )
        .trim(),
        ""
    );
    e.a_replica
        .sql("DELETE FROM acct_00.t_user WHERE uid = 3000000000000001");

    // A SELECT without the key is scattered and merged as one database would answer.
    let mut sorted = all.clone();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    let want: Vec<String> = sorted
        .iter()
        .skip(2)
        .take(5)
        .map(|u| u.to_string())
        .collect();
    let got = app_ok(
        &e,
        "SELECT uid FROM t_user ORDER BY uid DESC LIMIT 5 OFFSET 2",
    );
    assert_eq!(got.lines().collect::<Vec<_>>(), want);
    let got = app_ok(
        &e,
        "SELECT uid, name FROM t_user WHERE balance >= 150 ORDER BY balance",
    );
    assert_eq!(got.lines().count(), 5, "{got}");
    let (ok, _, err) = app(&e, "SELECT COUNT(*) FROM t_user");
    assert!(
        !ok && err.contains("cannot be merged across shards"),
        "{err}"
    );

    // Writes that span shards are refused, naming the shards.
    let (ok, _, err) = app(&e, "UPDATE t_user SET balance = 0");
    assert!(!ok && err.contains("spans shards rz00, rz01"), "{err}");
    // An IN list within one shard is fine.
    app_ok(
        &e,
        "UPDATE t_user SET balance = balance + 1 WHERE uid IN (2088000000000007, 2088000000000014)",
    );

    // Every-shard tables: a write reaches all shards; a read is answered by one.
    app_ok(&e, "INSERT INTO t_dict VALUES ('CNY', 'yuan')");
    assert_eq!(e.b.sql("SELECT label FROM acct_01.t_dict").trim(), "yuan");
    assert_eq!(
        app_ok(&e, "SELECT label FROM t_dict WHERE code = 'CNY'").trim(),
        "yuan"
    );

    // Transactions are pinned to one shard: a statement for another is refused and the
    // transaction goes on untouched.
    let (ok, _, err) = app(
        &e,
        // One statement per line: after an error, the CLI's --force goes on with the
        // next line.
        "BEGIN;\n\
         INSERT INTO t_user (uid, name) VALUES (4000000000000001, 'tx-a');\n\
         INSERT INTO t_user (uid, name) VALUES (4000000000000051, 'tx-b');\n\
         UPDATE t_user SET name = 'tx-a2' WHERE uid = 4000000000000001;\n\
         COMMIT",
    );
    assert!(!ok && err.contains("pinned to shard rz00"), "{err}");
    assert_eq!(
        e.a.sql("SELECT name FROM acct_00.t_user WHERE uid = 4000000000000001")
            .trim(),
        "tx-a2"
    );
    assert_eq!(
        e.b.sql("SELECT COUNT(*) FROM acct_01.t_user WHERE uid = 4000000000000051")
            .trim(),
        "0"
    );
    // A rolled-back transaction leaves nothing.
    app_ok(&e, "START TRANSACTION; INSERT INTO t_user (uid, name) VALUES (4000000000000002, 'gone'); ROLLBACK");
    assert_eq!(
        e.a.sql("SELECT COUNT(*) FROM acct_00.t_user WHERE uid = 4000000000000002")
            .trim(),
        "0"
    );

    // The proxy answers with the logical database, not a shard's.
    assert_eq!(app_ok(&e, "SELECT DATABASE()").trim(), "accountdb");
    assert_eq!(app_ok(&e, "SHOW DATABASES").trim(), "accountdb");
    // A client's character set reaches the backend connections it uses.
    let (ok, out, err) = client_with(
        e.mysql,
        APP,
        APP_PASSWORD,
        Some("accountdb"),
        "SELECT @@character_set_client",
        &[
            "--skip-ssl".to_string(),
            "--default-character-set=latin1".to_string(),
        ],
    );
    assert!(ok && out.trim() == "latin1", "{out}{err}");

    // Passwords are sealed: no API answer, export or audit record carries them, and
    // reapplying the same plain-text file changes nothing.
    let server = format!("http://{}", e.api);
    let env = [
        ("TESSERA_SERVER", server.as_str()),
        ("TESSERA_TOKEN", e.token.as_str()),
    ];
    let shown = crate::harness::stdout(&crate::harness::tessera(
        &["get", "datasource", "accountdb", "-o", "yaml"],
        &env,
    ));
    assert!(shown.contains("enc:v1:"), "{shown}");
    let (_, _, audit) = http(e.api, "GET", "/api/v1/auditevents", Some(&e.token), "").unwrap();
    for secret in [BACKEND_PASSWORD, APP_PASSWORD] {
        assert!(!shown.contains(secret), "{shown}");
        assert!(!audit.contains(secret), "the audit trail holds a password");
    }
    let (code, _, out) = http(
        e.api,
        "POST",
        "/api/v1/apply",
        Some(&e.token),
        &e.datasource,
    )
    .unwrap();
    assert_eq!(code, 200, "{out}");
    assert!(
        !out.contains("\"configured\""),
        "reapplying changed something: {out}"
    );
    // What `get` shows applies back unchanged too.
    let (code, _, out) = http(e.api, "POST", "/api/v1/apply", Some(&e.token), &shown).unwrap();
    assert_eq!(code, 200, "{out}");
    assert!(!out.contains("\"configured\""), "{out}");

    // The admin listener shows the shards and their health.
    let (code, _, body) = http(e.admin, "GET", "/datasources", None, "").unwrap();
    assert_eq!(code, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    let shards = &v["databases"][0]["shards"];
    assert_eq!(shards[0]["unit"], "rz00");
    assert_eq!(shards[0]["primary"]["up"], true);
    assert_eq!(
        shards[0]["replicas"][0]["address"],
        e.a_replica.addr.to_string()
    );
    let (_, _, metrics) = http(e.admin, "GET", "/metrics", None, "").unwrap();
    assert!(metrics.contains("tessera_dbproxy_statements_total{class=\"write\",database=\"accountdb\",unit=\"rz01\"}"), "{metrics}");
}

#[test]
fn bad_logins_bad_sql_and_a_dead_primary_get_clear_errors() {
    let mut e = estate([104, 105, 106]);
    app_ok(&e, SCHEMA);
    // Wrong password, unknown user, unknown database.
    let (ok, _, err) = client(e.mysql, APP, "wrong", Some("accountdb"), "SELECT 1");
    assert!(
        !ok && err.contains("1045") && err.contains("Access denied"),
        "{err}"
    );
    let (ok, _, err) = client(e.mysql, "nobody", "x", None, "SELECT 1");
    assert!(!ok && err.contains("1045"), "{err}");
    let (ok, _, err) = client(e.mysql, APP, APP_PASSWORD, Some("nodb"), "SELECT 1");
    assert!(
        !ok && err.contains("1049") && err.contains("Unknown database"),
        "{err}"
    );
    // SQL the parser rejects: 1064, and the session goes on.
    let (ok, out, err) = app(&e, "SELEC uid FROM t_user;\nSELECT 42");
    assert!(!ok && err.contains("1064"), "{err}");
    assert_eq!(out.trim(), "42");
    // Table-less statements work (the client's own probes).
    assert_eq!(app_ok(&e, "SELECT 1 + 1").trim(), "2");

    // Malformed protocol bytes get an ERR packet or a closed connection, never a hang.
    for junk in [
        &b"\x01\x00\x00\x01\xff"[..],
        b"\xff\xff\xff\x01garbage",
        b"\x05\x00\x00\x01\x85\xa6\x3f\x20\x00",
    ] {
        let mut s = std::net::TcpStream::connect(e.mysql).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        use std::io::{Read, Write};
        let mut greeting = [0u8; 512];
        let n = s.read(&mut greeting).unwrap();
        assert!(n > 10 && greeting[4] == 10, "handshake v10 expected");
        s.write_all(junk).unwrap();
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        if answer.len() > 4 {
            assert_eq!(answer[4], 0xFF, "an ERR packet: {answer:?}");
        }
    }

    // rz01's primary dies: its statements fail fast with a clear error, rz00's go on.
    app_ok(
        &e,
        "INSERT INTO t_user (uid, name) VALUES (51, 'b'), (151, 'b2')",
    );
    e.b.kill();
    let t0 = Instant::now();
    let (ok, _, err) = app(&e, "SELECT name FROM t_user WHERE uid = 51");
    assert!(!ok && err.contains("Shard rz01 is unavailable"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    // The proxy reports it; `tessera get datasources` shows the shard down.
    wait_for_health(&e, "rz00=ok,rz01=down");
    assert_eq!(app_ok(&e, "INSERT INTO t_user (uid, name) VALUES (2088000000000001, 'a'); SELECT /* tessera: primary */ name FROM t_user WHERE uid = 2088000000000001").trim(), "a");
    // It comes back: statements work again without restarting anything.
    e.b.restart();
    let t0 = Instant::now();
    loop {
        let (ok, out, err) = app(&e, "SELECT name FROM t_user WHERE uid = 51");
        if ok {
            assert_eq!(out.trim(), "b");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "rz01 did not come back: {err}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    wait_for_health(&e, "rz00=ok,rz01=ok");
}

/// sysbench (libmariadb, server-side prepared statements) through the proxy: its schema
/// and data are loaded through it, oltp_read_write runs without an error, the replica
/// serves the reads outside transactions.
#[test]
fn sysbench_runs_through_the_proxy_with_prepared_statements() {
    let e = estate_with([108, 109, 110], false);
    let args = |test: &str| -> Vec<String> {
        vec![
            test.to_string(),
            "--db-driver=mysql".into(),
            format!("--mysql-host={}", e.mysql.ip()),
            format!("--mysql-port={}", e.mysql.port()),
            format!("--mysql-user={APP}"),
            format!("--mysql-password={APP_PASSWORD}"),
            "--mysql-db=accountdb".into(),
            "--mysql-ssl=off".into(),
            "--tables=2".into(),
            "--table-size=500".into(),
            "--threads=2".into(),
            "--time=4".into(),
            "--db-ps-mode=auto".into(),
        ]
    };
    let run = |test: &str, cmd: &str| {
        let mut a = args(test);
        a.push(cmd.into());
        let child = Command::new("sysbench")
            .args(&a)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sysbench");
        let out = wait_bounded(child, Duration::from_secs(60));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "sysbench {test} {cmd} failed:\n{text}\n{}",
            e.proxy.logs()
        );
        text
    };
    run("oltp_read_write", "prepare");
    assert_eq!(
        e.a.sql("SELECT COUNT(*) FROM acct_00.sbtest2").trim(),
        "500"
    );
    e.a_replica.wait_caught_up(&e.a);
    let out = run("oltp_read_write", "run");
    // sysbench stops at any error but deadlocks and lock waits (1213, 1205), which
    // two threads on 500 rows meet now and then, directly against MariaDB as well.
    let queries: u64 = out
        .lines()
        .find(|l| l.trim_start().starts_with("total:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(queries > 100, "{out}");
    // Point selects outside transactions ran on the replica: its pool has connections.
    let (_, _, body) = http(e.admin, "GET", "/datasources", None, "").unwrap();
    let v: Value = serde_json::from_str(&body).unwrap();
    let replica = &v["databases"][0]["shards"][0]["replicas"][0];
    let out = run("oltp_point_select", "run");
    assert!(out.contains("ignored errors:"), "{out}");
    let (_, _, body2) = http(e.admin, "GET", "/datasources", None, "").unwrap();
    let v2: Value = serde_json::from_str(&body2).unwrap();
    let replica2 = &v2["databases"][0]["shards"][0]["replicas"][0];
    assert!(
        replica2["connections"].as_u64().unwrap_or(0) >= 1,
        "point selects should use the replica: {replica} then {replica2}"
    );
    run("oltp_read_write", "cleanup");
}

/// A Rust client (mysql_async: binary protocol, server-side prepared statements) through
/// the proxy: a shard key bound as a parameter picks the shard at each EXECUTE.
#[test]
fn a_rust_client_with_prepared_statements_is_routed_by_its_parameters() {
    use mysql_async::prelude::*;
    let e = estate([112, 113, 114]);
    app_ok(&e, SCHEMA);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let url = format!(
        "mysql://{APP}:{APP_PASSWORD}@{}:{}/accountdb",
        e.mysql.ip(),
        e.mysql.port()
    );
    rt.block_on(async {
        let opts = mysql_async::Opts::from_url(&url).unwrap();
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .expect("connect through the proxy");
        let insert = conn
            .prep("INSERT INTO t_user (uid, name, balance) VALUES (?, ?, ?)")
            .await
            .unwrap();
        for (uid, name) in [
            (2088000000000003u64, "three"),
            (2088000000000053, "fifty-three"),
        ] {
            conn.exec_drop(&insert, (uid, name, 5)).await.unwrap();
        }
        // Each row is in its unit's shard.
        assert_eq!(e.a.sql("SELECT name FROM acct_00.t_user").trim(), "three");
        assert_eq!(
            e.b.sql("SELECT name FROM acct_01.t_user").trim(),
            "fifty-three"
        );
        // The same prepared SELECT reads from both shards, picked per EXECUTE.
        let select = conn
            .prep("SELECT name FROM t_user WHERE uid = ?")
            .await
            .unwrap();
        e.a_replica.wait_caught_up(&e.a);
        for (uid, want) in [
            (2088000000000053u64, "fifty-three"),
            (2088000000000003, "three"),
        ] {
            let got: Option<String> = conn.exec_first(&select, (uid,)).await.unwrap();
            assert_eq!(got.as_deref(), Some(want));
        }
        // A transaction through the binary protocol is pinned to its shard.
        let mut tx = conn
            .start_transaction(mysql_async::TxOpts::default())
            .await
            .unwrap();
        tx.exec_drop(
            "UPDATE t_user SET balance = balance + ? WHERE uid = ?",
            (10, 2088000000000003u64),
        )
        .await
        .unwrap();
        let other = tx
            .exec_drop(
                "UPDATE t_user SET balance = 0 WHERE uid = ?",
                (2088000000000053u64,),
            )
            .await
            .unwrap_err();
        assert!(
            other.to_string().contains("pinned to shard rz00"),
            "{other}"
        );
        tx.commit().await.unwrap();
        assert_eq!(e.a.sql("SELECT balance FROM acct_00.t_user").trim(), "15");
        assert_eq!(e.b.sql("SELECT balance FROM acct_01.t_user").trim(), "5");
        // A SELECT whose parameters reach two shards is scattered and merged (binary
        // rows, sorted by their types), as one database would answer it.
        e.a_replica.wait_caught_up(&e.a);
        let both: Vec<(u64, String)> = conn
            .exec(
                "SELECT uid, name FROM t_user WHERE uid IN (?, ?) ORDER BY uid DESC",
                (2088000000000003u64, 2088000000000053u64),
            )
            .await
            .unwrap();
        assert_eq!(
            both,
            [
                (2088000000000053, "fifty-three".to_string()),
                (2088000000000003, "three".to_string())
            ]
        );
        // No shard key: every shard; ORDER BY a column not selected, LIMIT and OFFSET.
        let second: Vec<(String,)> = conn
            .exec(
                "SELECT name FROM t_user WHERE balance >= ? ORDER BY balance DESC LIMIT 1 OFFSET 1",
                (0,),
            )
            .await
            .unwrap();
        assert_eq!(second, [("fifty-three".to_string(),)]);
        // LIMIT and OFFSET as parameters (what paging code binds), in both spellings.
        for sql in [
            "SELECT name FROM t_user WHERE balance >= ? ORDER BY balance DESC LIMIT ? OFFSET ?",
            "SELECT name FROM t_user WHERE balance >= ? ORDER BY balance DESC LIMIT ?, ?",
        ] {
            // (balance floor, then LIMIT 1 OFFSET 1 or OFFSET 1, LIMIT 1: the same values)
            let args = (0, 1, 1);
            let page: Vec<(String,)> = conn.exec(sql, args).await.unwrap();
            assert_eq!(page, [("fifty-three".to_string(),)], "{sql}");
        }
        let first: Vec<(String,)> = conn
            .exec(
                "SELECT name FROM t_user WHERE balance >= ? ORDER BY balance DESC LIMIT ?",
                (0, 1),
            )
            .await
            .unwrap();
        assert_eq!(first, [("three".to_string(),)]);
        let err = conn
            .exec_drop(
                "SELECT name FROM t_user WHERE balance >= ? LIMIT ?",
                (0, -1),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("Incorrect arguments to LIMIT"),
            "{err}"
        );
        // A prepared write that reaches two shards is refused with a clear error.
        let err = conn
            .exec_drop(
                "UPDATE t_user SET balance = 0 WHERE uid IN (?, ?)",
                (2088000000000003u64, 2088000000000053u64),
            )
            .await
            .unwrap_err();
        assert!(err.to_string().contains("reach shards rz00, rz01"), "{err}");
        // A NULL shard key is named.
        let err = conn
            .exec_drop("SELECT name FROM t_user WHERE uid = ?", (None::<u64>,))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("NULL"), "{err}");
        // Text queries and the session go on.
        let n: Option<u64> = conn.query_first("SELECT 40 + 2").await.unwrap();
        assert_eq!(n, Some(42));
        // COM_CHANGE_USER (what pools do): the session starts afresh as that user.
        conn.query_drop("SET @mark = 7").await.unwrap();
        let again = mysql_async::ChangeUserOpts::default()
            .with_user(Some(APP.into()))
            .with_pass(Some(APP_PASSWORD.into()))
            .with_db_name(Some("accountdb".into()));
        conn.change_user(again).await.expect("change user");
        let mark: Option<Option<u64>> = conn.query_first("SELECT @mark").await.unwrap();
        assert_eq!(mark, Some(None), "session variables are reset");
        // Prepared statements went with the old session, as on a server: prepare again.
        let err = conn
            .exec_first::<String, _, _>(&select, (2088000000000003u64,))
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("Unknown prepared statement"),
            "{err}"
        );
        let again = conn
            .prep("SELECT name FROM t_user WHERE uid = ? AND 1 = 1")
            .await
            .unwrap();
        let got: Option<String> = conn
            .exec_first(&again, (2088000000000003u64,))
            .await
            .unwrap();
        assert_eq!(got.as_deref(), Some("three"));
        // Cursors (what JDBC's useCursorFetch asks for): the EXECUTE opens one on the
        // shard, FETCH takes its rows from there in pieces.
        for uid in [2088000000000013u64, 2088000000000023] {
            conn.exec_drop(
                "INSERT INTO t_user (uid, name, balance) VALUES (?, 'more', 1)",
                (uid,),
            )
            .await
            .unwrap();
        }
        e.a_replica.wait_caught_up(&e.a);
        conn.disconnect().await.unwrap();
        cursors_fetch_rows_in_pieces(e.mysql);
        types_bound_once_reach_every_shard(e.mysql);
        // A wrong password is refused with 1045.
        let mut conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
            .await
            .unwrap();
        let wrong = mysql_async::ChangeUserOpts::default()
            .with_user(Some(APP.into()))
            .with_pass(Some("not-the-password".into()));
        let err = conn.change_user(wrong).await.unwrap_err();
        assert!(err.to_string().contains("Access denied"), "{err}");
    });
}

/// A cursor through the proxy, by hand (client libraries here do not open cursors).
fn cursors_fetch_rows_in_pieces(proxy: SocketAddr) {
    use tessera::dbproxy::wire;
    let mut r = Raw::login(proxy, "accountdb");
    let mut prepare = vec![wire::com::STMT_PREPARE];
    prepare.extend_from_slice(b"SELECT uid, name FROM t_user WHERE uid IN (?, ?, ?) ORDER BY uid");
    r.send(0, &prepare);
    let ok = r.payload();
    assert_eq!(ok[0], 0, "PREPARE: {ok:?}");
    let id = u32::from_le_bytes([ok[1], ok[2], ok[3], ok[4]]);
    let (cols, params) = (
        u16::from_le_bytes([ok[5], ok[6]]),
        u16::from_le_bytes([ok[7], ok[8]]),
    );
    assert_eq!((cols, params), (2, 3));
    for _ in 0..(params + 1 + cols + 1) {
        r.payload();
    }
    let execute = |flags: u8| {
        let mut p = vec![wire::com::STMT_EXECUTE];
        p.extend_from_slice(&id.to_le_bytes());
        p.push(flags);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&[0, 1]); // no NULLs; types follow
        for _ in 0..3 {
            p.extend_from_slice(&[0x08, 0x80]); // unsigned LONGLONG
        }
        for uid in [2088000000000023u64, 2088000000000003, 2088000000000013] {
            p.extend_from_slice(&uid.to_le_bytes());
        }
        p
    };
    let fetch = |stmt: u32, rows: u32| {
        let mut p = vec![wire::com::STMT_FETCH];
        p.extend_from_slice(&stmt.to_le_bytes());
        p.extend_from_slice(&rows.to_le_bytes());
        p
    };
    // CURSOR_TYPE_READ_ONLY: column definitions, then an EOF saying a cursor is open.
    r.send(0, &execute(1));
    assert_eq!(r.payload(), vec![2], "column count");
    r.payload();
    r.payload();
    let status = wire::eof_status(&r.payload()).expect("EOF after the columns");
    assert_ne!(status & wire::SERVER_STATUS_CURSOR_EXISTS, 0, "{status:#x}");
    // Two FETCHes of two rows: three rows in order, uid first (binary rows).
    let mut uids = Vec::new();
    for want in [2, 1] {
        r.send(0, &fetch(id, 2));
        let mut got = 0;
        loop {
            let p = r.payload();
            if wire::eof_status(&p).is_some() {
                break;
            }
            assert_eq!(p[0], 0, "a binary row: {p:?}");
            uids.push(u64::from_le_bytes(p[2..10].try_into().unwrap()));
            got += 1;
        }
        assert_eq!(got, want);
    }
    assert_eq!(uids, [2088000000000003, 2088000000000013, 2088000000000023]);
    // Reset closes the cursor; FETCH without one, or of no statement, is refused.
    let mut reset = vec![wire::com::STMT_RESET];
    reset.extend_from_slice(&id.to_le_bytes());
    r.send(0, &reset);
    assert_eq!(r.payload()[0], 0, "RESET answers OK");
    assert_eq!(r.error_code(&fetch(id, 1)), Some(1421));
    assert_eq!(r.error_code(&fetch(id + 100, 1)), Some(1243));
    assert_eq!(r.error_code(&[wire::com::STMT_FETCH, 1, 0]), Some(1043));
    // Without the cursor flag the rows come at once, as before.
    r.send(0, &execute(0));
    let mut packets = 0;
    loop {
        let p = r.payload();
        packets += 1;
        if packets > 4 && wire::eof_status(&p).is_some() {
            break;
        }
    }
    assert_eq!(packets, 1 + 2 + 1 + 3 + 1);
    let mut close = vec![wire::com::STMT_CLOSE];
    close.extend_from_slice(&id.to_le_bytes());
    r.send(0, &close);
    r.send(0, &[wire::com::PING]);
    assert_eq!(r.payload()[0], 0);
}

/// What libmysqlclient does (sysbench, PHP, C clients): the parameter types go with
/// the first EXECUTE after binding only. A later EXECUTE that lands on another shard,
/// whose connection prepared the statement since, still runs with the right types; a
/// scattered EXECUTE that asks for a cursor gets its merged rows at once.
fn types_bound_once_reach_every_shard(proxy: SocketAddr) {
    use tessera::dbproxy::wire;
    let mut r = Raw::login(proxy, "accountdb");
    let mut prepare = vec![wire::com::STMT_PREPARE];
    prepare.extend_from_slice(b"SELECT name FROM t_user WHERE uid IN (?, ?) ORDER BY name");
    r.send(0, &prepare);
    let ok = r.payload();
    assert_eq!(ok[0], 0, "PREPARE: {ok:?}");
    let id = u32::from_le_bytes([ok[1], ok[2], ok[3], ok[4]]);
    for _ in 0..(2 + 1 + 1 + 1) {
        r.payload();
    }
    let execute = |flags: u8, types: bool, uids: [u64; 2]| {
        let mut p = vec![wire::com::STMT_EXECUTE];
        p.extend_from_slice(&id.to_le_bytes());
        p.push(flags);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.push(0); // no NULLs
        p.push(u8::from(types));
        if types {
            p.extend_from_slice(&[0x08, 0x80, 0x08, 0x80]); // unsigned LONGLONG
        }
        for uid in uids {
            p.extend_from_slice(&uid.to_le_bytes());
        }
        p
    };
    // The result's rows (binary: header, NULL bitmap, then the name).
    let mut names = |p: Vec<u8>| -> (u16, Vec<String>) {
        r.send(0, &p);
        let first = r.payload();
        assert_ne!(first[0], 0xFF, "{}", String::from_utf8_lossy(&first));
        r.payload(); // the column
        let status = wire::eof_status(&r.payload()).expect("EOF after the column");
        let mut out = Vec::new();
        loop {
            let p = r.payload();
            if wire::eof_status(&p).is_some() {
                break;
            }
            assert_eq!(p[0], 0, "a binary row: {p:?}");
            out.push(String::from_utf8_lossy(&p[3..]).into_owned());
        }
        (status, out)
    };
    let (_, got) = names(execute(0, true, [2088000000000003, 2088000000000013]));
    assert_eq!(got, ["more", "three"]);
    // No types this time, and the other shard (slot 53) for the first time.
    let (_, got) = names(execute(0, false, [2088000000000053, 2088000000000053]));
    assert_eq!(got, ["fifty-three"]);
    // Both shards, with a cursor asked for: merged, sent whole, no cursor left open.
    let (status, got) = names(execute(1, false, [2088000000000053, 2088000000000003]));
    assert_eq!(got, ["fifty-three", "three"]);
    assert_eq!(status & wire::SERVER_STATUS_CURSOR_EXISTS, 0, "{status:#x}");
    r.send(0, &[wire::com::PING]);
    assert_eq!(r.payload()[0], 0);
}

/// TLS to the shards' servers: with `verifyIdentity` the proxy's connections are
/// encrypted and the servers' certificates checked against the DataSource's CA; a
/// certificate from another CA is refused, named; `disabled` is plain TCP.
#[test]
fn backend_connections_use_tls_and_check_the_servers_certificates() {
    let ips = [127u8, 128, 129];
    let certs = tempfile::tempdir().unwrap();
    let ca = tessera::pki::Ca::generate("db-test").unwrap();
    let server = ca.issue("db", &ips.map(ip)).unwrap();
    let file = |name: &str, body: &str| {
        let p = certs.path().join(name);
        std::fs::write(&p, body).unwrap();
        p.display().to_string()
    };
    let args = vec![
        format!("--ssl-ca={}", file("ca.pem", &ca.cert_pem)),
        format!("--ssl-cert={}", file("server.pem", &server.cert_pem)),
        format!("--ssl-key={}", file("server.key", &server.key_pem)),
    ];
    let tls = |mode: &str, pem: &str| {
        let pem: String = pem.lines().map(|l| format!("      {l}\n")).collect();
        format!("  tls:\n    mode: {mode}\n    ca: |\n{pem}")
    };
    let e = estate_servers(ips, true, "", &tls("verifyIdentity", &ca.cert_pem), &args);
    let ssl_version = |e: &Estate| -> (bool, String, String) {
        app(
            e,
            "/* tessera: shard=rz00 */ SHOW SESSION STATUS LIKE 'Ssl_version'",
        )
    };
    let (ok, out, err) = ssl_version(&e);
    assert!(
        ok && out.contains("TLSv1."),
        "{out}{err}\n{}",
        e.proxy.logs()
    );
    // A CA that did not sign the servers' certificates: no connection, and why.
    let other = tessera::pki::Ca::generate("other").unwrap();
    let apply = |e: &Estate, yaml: &str| {
        let (code, _, out) = http(e.api, "POST", "/api/v1/apply", Some(&e.token), yaml).unwrap();
        assert_eq!(code, 200, "{out}");
    };
    let swap = |from: &str, to: &str| e.datasource.replace(from, to);
    apply(
        &e,
        &swap(
            &tls("verifyIdentity", &ca.cert_pem),
            &tls("verifyCa", &other.cert_pem),
        ),
    );
    let t0 = Instant::now();
    loop {
        let (ok, _, err) = ssl_version(&e);
        if !ok && err.contains("UnknownIssuer") {
            assert!(err.contains("TLS with the server failed"), "{err}");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "never refused: {err}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // verifyCa takes the right CA whatever names the certificate carries; disabled is
    // plain TCP.
    for (mode, want_tls) in [("verifyCa", true), ("disabled", false)] {
        apply(
            &e,
            &swap(
                &tls("verifyIdentity", &ca.cert_pem),
                &tls(mode, &ca.cert_pem),
            ),
        );
        let t0 = Instant::now();
        loop {
            let (ok, out, err) = ssl_version(&e);
            if ok && out.contains("TLSv1.") == want_tls {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "{mode}: {out}{err}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

/// TLS to clients: with `require_tls`, a client must switch to TLS (verified against the
/// proxy's certificate) and one that does not is refused with error 3159.
#[test]
fn clients_speak_tls_and_plain_text_is_refused_when_tls_is_required() {
    let ca = crate::harness::TestCa::new();
    let ca_pem = ca.ca_pem();
    let (cert_pem, key_pem) = ca.issue("dbproxy", &["127.0.0.1"]);
    let e = estate_full(
        [116, 117, 118],
        true,
        &format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\nrequire_tls = true\n",
            cert_pem.display(),
            key_pem.display()
        ),
        "",
    );
    let tls = [
        "--ssl".to_string(),
        format!("--ssl-ca={}", ca_pem.display()),
        "--ssl-verify-server-cert".to_string(),
    ];
    let (ok, out, err) = client_with(
        e.mysql,
        APP,
        APP_PASSWORD,
        Some("accountdb"),
        "status",
        &tls,
    );
    assert!(ok, "{err}\n{}", e.proxy.logs());
    assert!(out.contains("Cipher in use"), "{out}");
    let (ok, out, err) = client_with(
        e.mysql,
        APP,
        APP_PASSWORD,
        Some("accountdb"),
        "SELECT 6 * 7",
        &tls,
    );
    assert!(ok && out.trim() == "42", "{out}{err}");
    // Without TLS: refused, saying why.
    let (ok, _, err) = client(e.mysql, APP, APP_PASSWORD, Some("accountdb"), "SELECT 1");
    assert!(
        !ok && err.contains("3159") && err.contains("requires TLS"),
        "{err}"
    );
    // A wrong password over TLS is still 1045.
    let (ok, _, err) = client_with(e.mysql, APP, "wrong", Some("accountdb"), "SELECT 1", &tls);
    assert!(!ok && err.contains("1045"), "{err}");
}

/// `failover: auto`: rz00's primary dies; the proxy has the control plane make its
/// replica the primary (spec and audit trail), promotes the server, and writes resume.
#[test]
fn with_automatic_failover_the_replica_is_promoted_and_writes_resume() {
    let mut e = estate_full(
        [120, 121, 122],
        true,
        "",
        "  failover: auto\n  failoverAfterMs: 1500\n",
    );
    app_ok(&e, SCHEMA);
    app_ok(
        &e,
        "INSERT INTO t_user (uid, name) VALUES (2088000000000011, 'before')",
    );
    e.a_replica.wait_caught_up(&e.a);
    e.a.kill();
    let t0 = Instant::now();
    loop {
        let (ok, _, err) = app(
            &e,
            "INSERT INTO t_user (uid, name) VALUES (2088000000000012, 'after')",
        );
        if ok {
            break;
        }
        if t0.elapsed() >= Duration::from_secs(30) {
            let (_, _, view) = http(e.admin, "GET", "/datasources", None, "").unwrap();
            let (_, _, m) = http(e.admin, "GET", "/metrics", None, "").unwrap();
            let m: Vec<&str> = m
                .lines()
                .filter(|l| l.contains("failover") || l.contains("backend_up"))
                .collect();
            panic!(
                "writes to rz00 did not resume: {err}\n{view}\n{m:?}\n{}",
                e.proxy.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    eprintln!(
        "writes resumed {:?} after the primary was killed",
        t0.elapsed()
    );
    assert_eq!(
        e.a_replica
            .sql("SELECT name FROM acct_00.t_user ORDER BY uid")
            .trim(),
        "before\nafter"
    );
    assert!(
        e.a_replica.slave_status().is_none(),
        "the promoted server still replicates"
    );
    // Recorded in the control plane: the spec names the new primary; the audit trail
    // has the failover by the proxy.
    let ds = datasource(&e);
    assert_eq!(
        ds["spec"]["shards"][0]["primary"],
        e.a_replica.addr.to_string(),
        "{ds}"
    );
    assert_eq!(ds["spec"]["shards"][0]["replicas"], serde_json::json!([]));
    let (_, _, audit) = http(e.api, "GET", "/api/v1/auditevents", Some(&e.token), "").unwrap();
    let audit: Value = serde_json::from_str(&audit).unwrap();
    let by_proxy = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|ev| {
            ev["kind"] == "DataSource"
                && ev["user"] == "dbproxy-dbp-1"
                && ev["outcome"] == "accepted"
        })
        .unwrap_or_else(|| panic!("no audited failover: {audit}"));
    let diff = by_proxy["diff"].to_string();
    assert!(
        diff.contains("spec.shards") && !diff.contains("maxReplicaLagMs"),
        "{diff}"
    );
    // The other shard never noticed.
    app_ok(
        &e,
        "INSERT INTO t_user (uid, name) VALUES (2088000000000057, 'b')",
    );
    let (_, _, metrics) = http(e.admin, "GET", "/metrics", None, "").unwrap();
    assert!(metrics.contains("tessera_dbproxy_failovers_total{database=\"accountdb\",outcome=\"promoted\",unit=\"rz00\"} 1"), "{metrics}");
    // The old primary comes back: the proxy that failed it over fences it read-only,
    // even after a restart of its own (the fence list is on disk).
    e.proxy.restart();
    e.admin = e.proxy.addr("dbproxy", "admin");
    e.proxy.wait_ready(e.admin);
    e.a.restart();
    wait_fenced(&e, Duration::from_secs(20));
}

/// A raw protocol session: after a good login, unknown commands, unknown statement ids,
/// truncated and non-UTF-8 packets get ERR packets with the server's codes and the
/// session goes on; a packet over max_packet_bytes gets 1153 and the connection closes.
#[test]
fn bad_protocol_bytes_get_err_packets_with_the_right_codes() {
    use tessera::dbproxy::wire;
    let e = estate_full(
        [124, 125, 126],
        true,
        "max_packet_bytes = 4096\nstatement_timeout_ms = 1000\n",
        "",
    );
    // A statement past statement_timeout_ms: 3024, killed on the server, and the
    // session goes on.
    let t0 = Instant::now();
    let (ok, out, err) = app(&e, "SELECT SLEEP(5);\nSELECT 'next'");
    assert!(!ok && err.contains("3024"), "{err}");
    assert_eq!(out.trim(), "next");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
    let mut s = Raw::login(e.mysql, "accountdb");
    let code = |p: &[u8]| wire::parse_err(p).map(|(c, _)| c);
    let read = |s: &mut Raw| s.read();
    let send = |s: &mut Raw, seq: u8, p: &[u8]| s.send(seq, p);
    // Unknown command: 1047, and the session goes on.
    send(&mut s, 0, &[0x99, 1, 2]);
    assert_eq!(code(&read(&mut s).unwrap().1), Some(1047));
    send(&mut s, 0, &[wire::com::PING]);
    assert_eq!(read(&mut s).unwrap().1[0], 0);
    // EXECUTE of a statement never prepared: 1243; a truncated one too.
    send(
        &mut s,
        0,
        &[wire::com::STMT_EXECUTE, 9, 0, 0, 0, 0, 1, 0, 0, 0],
    );
    assert_eq!(code(&read(&mut s).unwrap().1), Some(1243));
    send(&mut s, 0, &[wire::com::STMT_EXECUTE, 1]);
    assert_eq!(code(&read(&mut s).unwrap().1), Some(1243));
    // A statement that is not UTF-8, an empty one.
    send(&mut s, 0, &[wire::com::QUERY, 0xff, 0xfe, b'x']);
    assert!(code(&read(&mut s).unwrap().1).is_some());
    send(&mut s, 0, &[wire::com::QUERY]);
    assert_eq!(code(&read(&mut s).unwrap().1), Some(1065));
    // An empty command packet.
    send(&mut s, 0, &[]);
    assert_eq!(code(&read(&mut s).unwrap().1), Some(1047));
    send(&mut s, 0, &[wire::com::PING]);
    assert_eq!(read(&mut s).unwrap().1[0], 0);
    // Over max_packet_bytes: 1153, then the connection is closed.
    let mut big = vec![wire::com::QUERY];
    big.extend(std::iter::repeat_n(b'x', 5000));
    send(&mut s, 0, &big);
    assert_eq!(code(&read(&mut s).unwrap().1), Some(1153));
    assert!(read(&mut s).is_none(), "the connection should be closed");
}

/// Writes to a table that exists in every shard run as one XA transaction over the
/// shards' primaries: on all of them or on none. Prepared transactions a failure left
/// behind are finished by the proxy's recovery: committed when its decision was
/// recorded, rolled back when not; other proxies' are left to them.
#[test]
fn every_shard_writes_commit_everywhere_or_nowhere() {
    let mut e = estate([130, 131, 132]);
    app_ok(&e, SCHEMA);
    let dict = |db: &MariaDb, name: &str| -> String {
        db.sql(&format!(
            "SELECT code, label FROM {name}.t_dict ORDER BY code"
        ))
        .trim()
        .to_string()
    };
    app_ok(
        &e,
        "INSERT INTO t_dict VALUES ('EUR', 'euro'), ('CNY', 'yuan')",
    );
    assert_eq!(dict(&e.a, "acct_00"), "CNY\tyuan\nEUR\teuro");
    assert_eq!(dict(&e.b, "acct_01"), "CNY\tyuan\nEUR\teuro");
    // One shard refuses (a duplicate only it has): nothing changes anywhere, and the
    // error names the shard.
    e.b.sql("INSERT INTO acct_01.t_dict VALUES ('USD', 'dollar-b')");
    let (ok, _, err) = app(
        &e,
        "INSERT INTO t_dict VALUES ('USD', 'dollar'), ('JPY', 'yen')",
    );
    assert!(
        !ok && err.contains("shard rz01") && err.contains("Duplicate"),
        "{err}"
    );
    assert!(err.contains("rolled back on every shard"), "{err}");
    assert_eq!(dict(&e.a, "acct_00"), "CNY\tyuan\nEUR\teuro");
    assert_eq!(dict(&e.b, "acct_01"), "CNY\tyuan\nEUR\teuro\nUSD\tdollar-b");
    // Affected rows add up over the shards; no transaction is left prepared.
    let mut raw = Raw::login(e.mysql, "accountdb");
    let mut update = vec![tessera::dbproxy::wire::com::QUERY];
    update.extend_from_slice(b"UPDATE t_dict SET label = UPPER(label) WHERE code = 'EUR'");
    raw.send(0, &update);
    let ok = raw.payload();
    assert_eq!(
        tessera::dbproxy::wire::ok_counts(&ok).map(|c| c.0),
        Some(2),
        "{ok:?}"
    );
    assert_eq!(
        e.a.sql("SELECT label FROM acct_00.t_dict WHERE code = 'EUR'")
            .trim(),
        "EURO"
    );
    assert_eq!(
        e.b.sql("SELECT label FROM acct_01.t_dict WHERE code = 'EUR'")
            .trim(),
        "EURO"
    );
    assert_eq!(e.a.sql("XA RECOVER").trim(), "");
    assert_eq!(e.b.sql("XA RECOVER").trim(), "");
    // Inside a transaction it is refused, the transaction untouched.
    let (ok, _, err) = app(&e, "BEGIN; INSERT INTO t_dict VALUES ('KRW', 'won')");
    assert!(!ok && err.contains("transaction"), "{err}");
    // A shard that is down: a clear error naming it, nothing written on the other,
    // nothing left prepared there.
    e.b.stop();
    let (ok, _, err) = app(&e, "INSERT INTO t_dict VALUES ('SEK', 'krona')");
    assert!(!ok && err.contains("rz01"), "{err}");
    assert_eq!(
        e.a.sql("SELECT COUNT(*) FROM acct_00.t_dict WHERE code = 'SEK'")
            .trim(),
        "0"
    );
    assert_eq!(e.a.sql("XA RECOVER").trim(), "");
    e.b.restart();
    // Back once the proxy's checker sees the server again (every 2 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (ok, _, err) = app(&e, "INSERT INTO t_dict VALUES ('SEK', 'krona')");
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "writes did not resume: {err}");
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(
        e.b.sql("SELECT label FROM acct_01.t_dict WHERE code = 'SEK'")
            .trim(),
        "krona"
    );
    app_ok(&e, "DELETE FROM t_dict WHERE code = 'SEK'");

    // What a proxy that died mid-commit leaves: prepared transactions on shard rz00.
    // This proxy (dbp-1) decided to commit the first; it never decided the second; the
    // third is another proxy's.
    let prepare = |xid: &str, code: &str| {
        e.a.sql(&format!(
            "XA START '{xid}'; INSERT INTO acct_00.t_dict VALUES ('{code}', 'left'); XA END '{xid}'; XA PREPARE '{xid}'"
        ));
    };
    prepare("tessera.dbp-1.dead.1", "GBP");
    prepare("tessera.dbp-1.dead.2", "CHF");
    prepare("tessera.dbp-2.dead.3", "AUD");
    let decisions = e.proxy.data_dir.join("dbproxy").join("xa");
    std::fs::create_dir_all(&decisions).unwrap();
    std::fs::write(decisions.join("tessera.dbp-1.dead.1"), "").unwrap();
    e.proxy.restart();
    e.admin = e.proxy.addr("dbproxy", "admin");
    e.proxy.wait_ready(e.admin);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let left = e.a.sql("XA RECOVER");
        if !left.contains("dbp-1") {
            assert!(left.contains("tessera.dbp-2.dead.3"), "{left}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recovery did not finish: {left}\n{}",
            e.proxy.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        dict(&e.a, "acct_00"),
        "CNY\tyuan\nEUR\tEURO\nGBP\tleft",
        "the decided one committed, the undecided one rolled back"
    );
    assert!(!decisions.join("tessera.dbp-1.dead.1").exists());
    let (_, _, metrics) = http(e.admin, "GET", "/metrics", None, "").unwrap();
    for want in [
        "tessera_dbproxy_xa_recovered_total{action=\"committed\"} 1",
        "tessera_dbproxy_xa_recovered_total{action=\"rolled_back\"} 1",
        "tessera_dbproxy_xa_foreign_prepared 1",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
    e.a.sql("XA ROLLBACK 'tessera.dbp-2.dead.3'");
}

/// Puts a relay (on the primary's IP, another port) between the proxies and shard
/// rz00's primary: the data source is applied again naming the relay as the primary.
fn primary_through_relay(e: &Estate) -> crate::relay::Relay {
    let relay = crate::relay::Relay::start(SocketAddr::new(e.a.addr.ip(), 0), e.a.addr);
    let spec = e
        .datasource
        .replace(&e.a.addr.to_string(), &relay.addr().to_string());
    let (code, _, out) = http(e.api, "POST", "/api/v1/apply", Some(&e.token), &spec).unwrap();
    assert_eq!(code, 200, "{out}");
    relay
}

/// Waits (at most `limit`) until the proxy has set shard rz00's old primary read-only.
fn wait_fenced(e: &Estate, limit: Duration) {
    let t0 = Instant::now();
    loop {
        let ro = e.a.sql("SELECT @@GLOBAL.read_only");
        if ro.trim() == "1" {
            return;
        }
        assert!(
            t0.elapsed() < limit,
            "the old primary was never fenced: read_only = {ro}\n{}",
            e.proxy.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The data source as the control plane has it.
fn datasource(e: &Estate) -> Value {
    let (_, _, body) = http(
        e.api,
        "GET",
        "/api/v1/datasources/accountdb",
        Some(&e.token),
        "",
    )
    .unwrap();
    serde_json::from_str(&body).unwrap()
}

/// Runs `sql` through the proxy until it succeeds (every 300 ms, at most `limit`);
/// returns how long that took.
fn until_ok(e: &Estate, sql: &str, limit: Duration) -> Duration {
    let t0 = Instant::now();
    loop {
        let (ok, _, err) = app(e, sql);
        if ok {
            return t0.elapsed();
        }
        if t0.elapsed() >= limit {
            let (_, _, view) = http(e.admin, "GET", "/datasources", None, "").unwrap();
            panic!(
                "`{sql}` did not succeed within {limit:?}: {err}\n{view}\n{}",
                e.proxy.logs()
            );
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// A one-sided partition: the proxy loses its primary (a relay between them blackholes
/// the link) while the primary lives on and its replica still replicates. With
/// failover on, the proxy promotes the replica and writes resume there; nothing is
/// written to the old primary after the cut; the old primary cannot be fenced while
/// unreachable, and is fenced read-only as soon as the link heals.
#[test]
fn a_primary_cut_off_from_the_proxy_is_failed_over_and_fenced_once_reachable() {
    let e = estate_full(
        [134, 135, 136],
        false,
        "",
        "  failover: auto\n  failoverAfterMs: 1500\n",
    );
    // The proxy reaches the primary only through the relay.
    let relay = primary_through_relay(&e);
    app_ok(&e, SCHEMA);
    let t0 = Instant::now();
    while relay.stats().accepted == 0 {
        app_ok(&e, "SELECT 1 FROM t_user LIMIT 1");
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the proxy never went through the relay\n{}",
            e.proxy.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    app_ok(
        &e,
        "INSERT INTO t_user (uid, name) VALUES (2088000000000011, 'before')",
    );
    e.a_replica.wait_caught_up(&e.a);
    relay.block_all();
    let took = until_ok(
        &e,
        "INSERT INTO t_user (uid, name) VALUES (2088000000000012, 'after')",
        Duration::from_secs(40),
    );
    eprintln!("writes resumed {took:?} after the cut");
    assert_eq!(
        e.a_replica
            .sql("SELECT name FROM acct_00.t_user ORDER BY uid")
            .trim(),
        "before\nafter"
    );
    assert!(e.a_replica.slave_status().is_none());
    // The old primary got nothing after the cut, and is still writable: the proxy
    // cannot reach it to fence it.
    assert_eq!(
        e.a.sql("SELECT name FROM acct_00.t_user ORDER BY uid")
            .trim(),
        "before"
    );
    assert_eq!(e.a.sql("SELECT @@GLOBAL.read_only").trim(), "0");
    // The link heals: the proxy fences it.
    relay.heal();
    wait_fenced(&e, Duration::from_secs(30));
    // Writes keep going to the new primary.
    app_ok(
        &e,
        "INSERT INTO t_user (uid, name) VALUES (2088000000000013, 'healed')",
    );
    assert_eq!(e.a.sql("SELECT COUNT(*) FROM acct_00.t_user").trim(), "1");
}

/// The real one-sided partition: two proxies, and only the first loses the primary (a
/// relay in front of it blackholes connections from that proxy's source address). The
/// control plane refuses the first proxy's failover while the second still reaches the
/// primary: no promotion, the first proxy's clients get clear errors within their
/// timeout, the second proxy's clients keep writing, and the first recovers when the
/// link heals.
#[test]
fn a_primary_cut_off_from_one_proxy_of_two_is_not_failed_over() {
    let (src1, src2) = (ip(143), ip(144));
    let e = estate_full(
        [140, 141, 142],
        false,
        &format!("backend_source_ip = \"{src1}\"\n"),
        "  failover: auto\n  failoverAfterMs: 1500\n",
    );
    let relay = primary_through_relay(&e);
    // The second proxy, leaving from its own address.
    let join = crate::harness::join_token(e.api, &e.token, "dbproxy");
    let profile = format!(
        "node_name = \"dbp-2\"\nroles = [\"dbproxy\"]\ndata_dir = \"DATA\"\n[dbproxy]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ncontrol = [\"http://{}\"]\njoin_token = \"{join}\"\nbackend_connect_timeout_ms = 1000\nbackend_source_ip = \"{src2}\"\n",
        e.api
    );
    let mut proxy2 = Node::run_profile(&profile, &[], &[]);
    let mysql2 = proxy2.addr("dbproxy", "mysql");
    let admin2 = proxy2.addr("dbproxy", "admin");
    proxy2.wait_ready(admin2);
    let via = |addr: SocketAddr, sql: &str| client(addr, APP, APP_PASSWORD, Some("accountdb"), sql);
    app_ok(&e, SCHEMA);
    let insert = |uid: u64| format!("INSERT INTO t_user (uid, name) VALUES ({uid}, 'x')");
    // Both proxies write through the relay, each from its own address.
    let t0 = Instant::now();
    let mut uid = 2088000000000100u64;
    loop {
        uid += 100;
        let (ok1, _, _) = via(e.mysql, &insert(uid));
        let (ok2, _, _) = via(mysql2, &insert(uid + 1));
        if ok1 && ok2 && relay.stats().forwarded >= 2 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "both proxies should write through the relay: {:?}\n{}",
            relay.stats(),
            proxy2.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    e.a_replica.wait_caught_up(&e.a);
    relay.block(src1);
    // For longer than failoverAfterMs plus a retry: proxy 1 fails clearly and in time,
    // proxy 2 keeps writing.
    let t0 = Instant::now();
    let mut failed = 0;
    let mut last_err = String::new();
    while t0.elapsed() < Duration::from_secs(9) {
        uid += 100;
        let t = Instant::now();
        let (ok1, _, err1) = via(e.mysql, &insert(uid));
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "a client hung {:?}",
            t.elapsed()
        );
        if !ok1 {
            failed += 1;
            last_err = err1;
        }
        let (ok2, _, err2) = via(mysql2, &insert(uid + 1));
        assert!(ok2, "proxy 2 lost its writes: {err2}\n{}", proxy2.logs());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert!(failed > 0, "proxy 1 never noticed the cut");
    assert!(
        last_err.contains("rz00") || last_err.to_lowercase().contains("unreachable"),
        "unclear error: {last_err}"
    );
    // No failover: the replica still replicates, the spec names the same primary, and
    // proxy 1 counted its failover as blocked.
    assert!(
        e.a_replica.slave_status().is_some(),
        "the replica was promoted"
    );
    let ds = datasource(&e);
    assert_eq!(
        ds["spec"]["shards"][0]["primary"],
        relay.addr().to_string(),
        "{ds}"
    );
    let (_, _, metrics) = http(e.admin, "GET", "/metrics", None, "").unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tessera_dbproxy_failovers_total")
                && l.contains("outcome=\"blocked\"")),
        "{metrics}"
    );
    // The link heals: proxy 1 writes again.
    relay.heal();
    let t0 = Instant::now();
    loop {
        uid += 100;
        if via(e.mysql, &insert(uid)).0 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "proxy 1 did not recover\n{}",
            e.proxy.logs()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
