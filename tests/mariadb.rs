//! Real MariaDB servers for integration tests (Debian's `mariadb-server` and
//! `mariadb-client`: `mariadbd`, `mariadb-install-db`, `mariadb`).
//!
//! [`MariaDb::start`] gives a fresh server with its own data dir in a temp dir, listening on
//! one 127.0.0.x address and a port from [`crate::harness::free_port`], with the binlog on
//! (ROW format, GTIDs, `log_slave_updates`) so any server can be a primary.
//! [`MariaDb::start_replica_of`] gives a second one replicating from it with GTIDs. SQL is
//! run through the `mariadb` CLI as `root` over the server's unix socket (no password);
//! tests make their own password users for TCP with [`MariaDb::create_user`].
//!
//! Start-up (measured with MariaDB 10.11 on a 2-core VM busy with a cargo build): 0.15-0.25 s
//! for `start`, of which ~0.08 s is `mariadbd` itself and ~0.04 s copying the 25 MiB template
//! data dir; 0.2-0.4 s for `start_replica_of` including catching up. The first server for a
//! given MariaDB version and uid takes ~0.7 s: it runs `mariadb-install-db` (~0.5 s) into
//! the template under `CARGO_TARGET_TMPDIR` that every later server, in any test process,
//! copies.
//!
//! Servers are tuned to be small and quick rather than durable against power loss: a 32 MiB
//! buffer pool, an 8 MiB redo log, no doublewrite buffer, no fsync at commit
//! (`innodb_flush_log_at_trx_commit=2`, `sync_binlog=0`), no performance schema. Committed
//! data does survive [`MariaDb::kill`] (a process crash: the OS still has the writes).
//!
//! Every wait is bounded by time and by count; a server that fails to start panics with its
//! error log; dropping a [`MariaDb`] kills the server and reaps it, so nothing outlives the
//! test. When the tests run as root, the server runs with `--user=root` (mariadbd refuses to
//! run as root otherwise; `--bootstrap` in `mariadb-install-db` does not need it).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to accept connections after it is spawned.
const START_LIMIT: Duration = Duration::from_secs(60);
/// How long one `mariadb` CLI run or `mariadb-install-db` may take.
const CLI_LIMIT: Duration = Duration::from_secs(60);
/// How long a replica may take to connect, or to catch up with its primary.
const REPLICA_LIMIT: Duration = Duration::from_secs(30);
/// How long `stop` waits after SIGTERM before SIGKILL.
const STOP_LIMIT: Duration = Duration::from_secs(30);

/// The replication account `start_replica_of` creates on the primary.
pub const REPL_USER: &str = "repl";
pub const REPL_PASSWORD: &str = "repl-password";

/// A running (or stopped) `mariadbd` with its own data dir; killed and reaped on drop.
pub struct MariaDb {
    pub addr: SocketAddr,
    pub server_id: u32,
    dir: tempfile::TempDir,
    child: Child,
    args: Vec<String>,
}

impl MariaDb {
    /// Starts a fresh server on `ip` (127.0.0.x only) with `server_id`; returns once it
    /// answers `SELECT 1` over its socket and accepts TCP connections on `self.addr`.
    pub fn start(ip: IpAddr, server_id: u32) -> MariaDb {
        MariaDb::start_with(ip, server_id, &[])
    }

    /// [`MariaDb::start`] with `extra` server options (e.g. `--ssl-cert=...`).
    pub fn start_with(ip: IpAddr, server_id: u32, extra: &[String]) -> MariaDb {
        assert!(
            matches!(ip, IpAddr::V4(v4) if v4.octets()[..3] == [127, 0, 0]),
            "MariaDB test servers bind 127.0.0.x only, not {ip}"
        );
        let dir = tempfile::Builder::new()
            .prefix("mariadb")
            .tempdir()
            .expect("temp dir for mariadb");
        let sock = dir.path().join("sock");
        assert!(
            sock.as_os_str().len() < 100,
            "unix socket path too long: {}",
            sock.display()
        );
        let data = dir.path().join("data");
        install_data_dir(&data);
        let port = crate::harness::free_port(ip);
        let addr = SocketAddr::new(ip, port);
        let p = |name: &str| dir.path().join(name).display().to_string();
        let mut args = vec![
            // Must come first: ignore /etc/mysql and ~/.my.cnf.
            "--no-defaults".to_string(),
            format!("--datadir={}", data.display()),
            format!("--socket={}", p("sock")),
            format!("--pid-file={}", p("mariadbd.pid")),
            format!("--log-error={}", p("error.log")),
            format!("--tmpdir={}", dir.path().display()),
            format!("--port={port}"),
            format!("--bind-address={ip}"),
            format!("--report-host={ip}"),
            format!("--report-port={port}"),
            format!("--server-id={server_id}"),
            "--log-bin=mariadb-bin".to_string(),
            "--relay-log=mariadb-relay-bin".to_string(),
            "--log-slave-updates".to_string(),
            "--binlog-format=ROW".to_string(),
            "--slave-net-timeout=10".to_string(),
            "--skip-name-resolve".to_string(),
            "--character-set-server=utf8mb4".to_string(),
            "--collation-server=utf8mb4_general_ci".to_string(),
        ];
        args.extend(SMALL_AND_FAST.iter().map(|s| s.to_string()));
        args.extend(extra.iter().cloned());
        if is_root(dir.path()) {
            args.push("--user=root".to_string());
        }
        let child = spawn_mariadbd(dir.path(), &args);
        let mut db = MariaDb {
            addr,
            server_id,
            dir,
            child,
            args,
        };
        // `db` owns the child from here: a panic while waiting kills it on drop.
        db.wait_ready();
        db
    }

    /// Starts a fresh server on `ip` with `server_id` and makes it a GTID replica of
    /// `primary` (see [`MariaDb::change_master`]); returns once it has caught up.
    /// `read_only` is left off: the test decides.
    pub fn start_replica_of(ip: IpAddr, server_id: u32, primary: &MariaDb) -> MariaDb {
        MariaDb::start_replica_with(ip, server_id, primary, &[])
    }

    /// [`MariaDb::start_replica_of`] with `extra` server options.
    pub fn start_replica_with(
        ip: IpAddr,
        server_id: u32,
        primary: &MariaDb,
        extra: &[String],
    ) -> MariaDb {
        let replica = MariaDb::start_with(ip, server_id, extra);
        replica.change_master(primary, primary.addr);
        replica.wait_caught_up(primary);
        replica
    }

    /// Points this server at `primary` (reached at `via`: its `addr`, or a relay in front
    /// of it) and starts replication from `gtid_slave_pos` (empty on a fresh server: the
    /// whole of the primary's binlog, so it gets everything the primary ever had). Creates
    /// the replication user on the primary first. Returns once both replication threads run;
    /// panics with `SHOW SLAVE STATUS` if they do not within 30 s.
    pub fn change_master(&self, primary: &MariaDb, via: SocketAddr) {
        primary.sql(&format!(
            "CREATE USER IF NOT EXISTS {u}@'%' IDENTIFIED BY {p}; \
             GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO {u}@'%';",
            u = quote(REPL_USER),
            p = quote(REPL_PASSWORD),
        ));
        self.sql(&format!(
            "STOP SLAVE; CHANGE MASTER TO MASTER_HOST={host}, MASTER_PORT={port}, \
             MASTER_USER={u}, MASTER_PASSWORD={p}, MASTER_USE_GTID=slave_pos, \
             MASTER_CONNECT_RETRY=1; START SLAVE;",
            host = quote(&via.ip().to_string()),
            port = via.port(),
            u = quote(REPL_USER),
            p = quote(REPL_PASSWORD),
        ));
        let deadline = Instant::now() + REPLICA_LIMIT;
        for _ in 0..3000 {
            let status = self.slave_status().unwrap_or_default();
            let running = |k: &str| status.get(k).map(String::as_str) == Some("Yes");
            if running("Slave_IO_Running") && running("Slave_SQL_Running") {
                return;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "replica {} did not start replicating from {via} within {REPLICA_LIMIT:?}:\n{}",
            self.addr,
            self.slave_status_text()
        );
    }

    /// Waits (30 s at most) until this replica has applied everything in `primary`'s
    /// binlog now (`MASTER_GTID_WAIT` on the primary's `gtid_binlog_pos`); panics with
    /// `SHOW SLAVE STATUS` otherwise.
    pub fn wait_caught_up(&self, primary: &MariaDb) {
        let pos = primary.sql("SELECT @@GLOBAL.gtid_binlog_pos");
        let pos = pos.trim();
        if pos.is_empty() {
            return;
        }
        let deadline = Instant::now() + REPLICA_LIMIT;
        // One-second waits, so a dead replica is noticed and every wait stays bounded.
        for _ in 0..60 {
            let r = self.sql(&format!("SELECT MASTER_GTID_WAIT({}, 1)", quote(pos)));
            if r.trim() == "0" {
                return;
            }
            if Instant::now() > deadline {
                break;
            }
        }
        panic!(
            "replica {} did not reach the primary's {pos} within {REPLICA_LIMIT:?} \
             (gtid_slave_pos {}):\n{}",
            self.addr,
            self.try_sql("SELECT @@GLOBAL.gtid_slave_pos")
                .unwrap_or_else(|e| e)
                .trim(),
            self.slave_status_text()
        );
    }

    /// `Seconds_Behind_Master` from `SHOW SLAVE STATUS`: `None` when it is NULL (the SQL
    /// thread or the IO thread is not running) or this server is not a replica.
    pub fn replica_lag(&self) -> Option<u64> {
        self.slave_status()?
            .get("Seconds_Behind_Master")?
            .parse()
            .ok()
    }

    /// `SHOW SLAVE STATUS` as column → value (`NULL` for NULL); `None` if not a replica.
    pub fn slave_status(&self) -> Option<HashMap<String, String>> {
        let out = self
            .try_cli(&["--batch"], "SHOW SLAVE STATUS")
            .unwrap_or_default();
        let mut lines = out.lines();
        let (names, values) = (lines.next()?, lines.next()?);
        Some(
            names
                .split('\t')
                .zip(values.split('\t'))
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
        )
    }

    fn slave_status_text(&self) -> String {
        self.try_cli(&["--batch", "--vertical"], "SHOW SLAVE STATUS")
            .unwrap_or_else(|e| e)
    }

    /// Runs `sql` (one or more `;`-separated statements) as root over the socket;
    /// returns stdout (tab-separated rows, no column names). Panics with stderr on failure.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|e| panic!("SQL on {} failed: {sql}\n{e}", self.addr))
    }

    /// [`MariaDb::sql`] returning the CLI's stderr as the error.
    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        self.try_cli(&["--batch", "--skip-column-names"], sql)
    }

    /// Runs `sql` as `user` with `password` over TCP to `self.addr`, like a client would.
    pub fn try_sql_as(&self, user: &str, password: &str, sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(program("mariadb"));
        cmd.arg("--no-defaults")
            .arg("--protocol=TCP")
            .arg(format!("--host={}", self.addr.ip()))
            .arg(format!("--port={}", self.addr.port()))
            .arg(format!("--user={user}"))
            .arg(format!("--password={password}"))
            .args(["--connect-timeout=10", "--batch", "--skip-column-names"])
            .arg("--execute")
            .arg(sql);
        run_cli(cmd)
    }

    fn try_cli(&self, flags: &[&str], sql: &str) -> Result<String, String> {
        let mut cmd = Command::new(program("mariadb"));
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["--user=root", "--connect-timeout=10"])
            .args(flags)
            .arg("--execute")
            .arg(sql);
        run_cli(cmd)
    }

    /// Creates (or replaces) `user`@'%' with `password` (mysql_native_password) and grants
    /// it ALL on *.* (which includes REPLICATION SLAVE, REPLICATION CLIENT / BINLOG
    /// MONITOR, SUPER, ...). `CREATE OR REPLACE` so that running it on a primary and on its
    /// replica does not break replication when the primary's statement reaches the replica.
    pub fn create_user(&self, user: &str, password: &str) {
        self.sql(&format!(
            "CREATE OR REPLACE USER {u}@'%' IDENTIFIED VIA mysql_native_password \
             USING PASSWORD({p}); GRANT ALL PRIVILEGES ON *.* TO {u}@'%';",
            u = quote(user),
            p = quote(password),
        ));
    }

    /// SIGTERM, then SIGKILL if the server has not exited within 30 s. Idempotent.
    pub fn stop(&mut self) {
        if self.child.try_wait().expect("try_wait mariadbd").is_some() {
            return;
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if wait_exit(&mut self.child, STOP_LIMIT).is_none() {
            self.kill();
        }
    }

    /// SIGKILL (a crash) and reap. Idempotent.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on its data dir, address and flags after [`MariaDb::stop`]
    /// or [`MariaDb::kill`] (crash recovery runs then); a replica resumes replicating.
    pub fn restart(&mut self) {
        assert!(
            self.child.try_wait().expect("try_wait mariadbd").is_some(),
            "restart of a running server {}",
            self.addr
        );
        self.child = spawn_mariadbd(self.dir.path(), &self.args);
        self.wait_ready();
    }

    /// Whether the server process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait mariadbd").is_none()
    }

    /// The error log and the console output of the server (all its starts).
    pub fn log(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.path().join(name));
        format!(
            "--- error.log ---\n{}\n--- console ---\n{}",
            read("error.log").unwrap_or_default(),
            read("console.log").unwrap_or_default()
        )
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_LIMIT;
        for _ in 0..6000 {
            if let Some(status) = self.child.try_wait().expect("try_wait mariadbd") {
                panic!(
                    "mariadbd on {} exited during start-up ({status}):\n{}",
                    self.addr,
                    self.log()
                );
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(500)).is_ok()
                && self.try_sql("SELECT 1").is_ok_and(|out| out.trim() == "1")
            {
                return;
            }
            if Instant::now() > deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "mariadbd on {} not ready within {START_LIMIT:?}:\n{}",
            self.addr,
            self.log()
        );
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Flags for a small server that starts and stops quickly (see the module docs).
const SMALL_AND_FAST: &[&str] = &[
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--innodb-log-buffer-size=2M",
    // The default 12 MiB temporary tablespace is written in full at every start.
    "--innodb-temp-data-file-path=ibtmp1:1M:autoextend",
    "--innodb-flush-log-at-trx-commit=2",
    "--sync-binlog=0",
    "--innodb-doublewrite=0",
    "--innodb-buffer-pool-dump-at-shutdown=OFF",
    "--innodb-buffer-pool-load-at-startup=OFF",
    "--performance-schema=OFF",
    "--key-buffer-size=1M",
    "--aria-pagecache-buffer-size=8M",
    "--query-cache-size=0",
];

/// Flags for `mariadb-install-db` (the template's cache key includes them): root@localhost
/// without a password over the socket ("normal"), no `test` database, no DNS look-up and
/// no root@<hostname> account (`--cross-bootstrap`), the same InnoDB sizes as the server.
const INSTALL_FLAGS: &[&str] = &[
    "--auth-root-authentication-method=normal",
    "--skip-test-db",
    "--cross-bootstrap",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
];

fn spawn_mariadbd(dir: &Path, args: &[String]) -> Child {
    let console = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("console.log"))
        .expect("console.log");
    Command::new(program("mariadbd"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(console.try_clone().expect("console.log"))
        .stderr(console)
        .spawn()
        .expect("spawn mariadbd (is mariadb-server installed?)")
}

/// Fills `data` with a fresh data dir: a copy of a template made once per MariaDB version
/// and uid under `CARGO_TARGET_TMPDIR` (0.5 s of `mariadb-install-db` saved per server),
/// or `mariadb-install-db` itself if the template cannot be had.
fn install_data_dir(data: &Path) {
    if let Some(template) = template() {
        if copy_dir(&template, data).is_ok() {
            return;
        }
        let _ = std::fs::remove_dir_all(data);
    }
    install_db(data).unwrap_or_else(|e| panic!("{e}"));
}

fn install_db(data: &Path) -> Result<(), String> {
    let mut cmd = Command::new(program("mariadb-install-db"));
    cmd.arg("--no-defaults")
        .args(INSTALL_FLAGS)
        .arg(format!("--datadir={}", data.display()));
    run_cli(cmd)
        .map(drop)
        .map_err(|e| format!("mariadb-install-db into {} failed:\n{e}", data.display()))
}

fn template() -> Option<PathBuf> {
    static TEMPLATE: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut known = TEMPLATE.lock().unwrap_or_else(|e| e.into_inner());
    if known.is_none() {
        *known = make_template();
    }
    known.clone()
}

fn make_template() -> Option<PathBuf> {
    use std::hash::{Hash, Hasher};
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).ok()?;
    let version = Command::new(program("mariadbd"))
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (&version.stdout, INSTALL_FLAGS, current_uid(&root)?).hash(&mut h);
    let template = root.join(format!("mariadb-template-{:016x}", h.finish()));
    if template.is_dir() {
        return Some(template);
    }
    // Build it beside, then rename into place: atomic, so concurrent test processes either
    // see no template or a whole one (the loser of a race throws its copy away).
    let building = tempfile::Builder::new()
        .prefix("mariadb-template-building")
        .tempdir_in(&root)
        .ok()?;
    install_db(&building.path().join("data")).ok()?;
    let _ = std::fs::rename(building.path().join("data"), &template);
    template.is_dir().then_some(template)
}

/// The effective uid, as the owner of a file this process creates.
fn current_uid(dir: &Path) -> Option<u32> {
    let f = tempfile::NamedTempFile::new_in(dir).ok()?;
    Some(f.as_file().metadata().ok()?.uid())
}

fn is_root(dir: &Path) -> bool {
    std::fs::metadata(dir)
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

/// `/usr/sbin` is not on a normal user's PATH; look there first.
fn program(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// A single-quoted SQL string literal.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Runs `cmd` (stdin closed) to completion within `CLI_LIMIT`; stdout on success, else the
/// exit status and stderr. Output is drained by threads so a full pipe cannot stall it.
fn run_cli(mut cmd: Command) -> Result<String, String> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("spawn {cmd:?}: {e}"))?;
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("stdout")));
    let err = drain(Box::new(child.stderr.take().expect("stderr")));
    let status = wait_exit(&mut child, CLI_LIMIT);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let (out, err) = (
        out.join().unwrap_or_default(),
        err.join().unwrap_or_default(),
    );
    match status {
        Some(s) if s.success() => Ok(out),
        Some(s) => Err(format!("{s}: {err}")),
        None => Err(format!("timed out after {CLI_LIMIT:?}: {err}")),
    }
}

/// Polls `child` until it exits (its status) or `limit` passes (`None`).
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    for _ in 0..100_000 {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    None
}

#[test]
fn a_primary_and_its_replica_start_and_replicate() {
    let t = Instant::now();
    let primary = MariaDb::start("127.0.0.90".parse().unwrap(), 1);
    eprintln!("primary started in {:?}", t.elapsed());
    primary.sql(
        "CREATE DATABASE shop; \
         CREATE TABLE shop.items (id INT PRIMARY KEY, name VARCHAR(50)) ENGINE=InnoDB;",
    );
    let t = Instant::now();
    let mut replica = MariaDb::start_replica_of("127.0.0.91".parse().unwrap(), 2, &primary);
    eprintln!("replica started and caught up in {:?}", t.elapsed());
    primary.sql("INSERT INTO shop.items VALUES (1, 'tessera')");
    replica.wait_caught_up(&primary);
    assert_eq!(
        replica.sql("SELECT id, name FROM shop.items"),
        "1\ttessera\n"
    );
    assert_eq!(replica.replica_lag(), Some(0));
    assert_eq!(replica.sql("SELECT @@server_id, @@read_only"), "2\t0\n");

    // A password user made on the primary reaches the replica and logs in over TCP there.
    primary.create_user("app", "it's a secret");
    replica.wait_caught_up(&primary);
    assert_eq!(
        replica.try_sql_as("app", "it's a secret", "SELECT COUNT(*) FROM shop.items"),
        Ok("1\n".to_string())
    );
    assert!(replica.try_sql_as("app", "wrong", "SELECT 1").is_err());

    // A crashed replica recovers and resumes replicating.
    replica.kill();
    assert!(!replica.is_running());
    primary.sql("INSERT INTO shop.items VALUES (2, 'after the crash')");
    replica.restart();
    replica.wait_caught_up(&primary);
    assert_eq!(replica.sql("SELECT COUNT(*) FROM shop.items"), "2\n");
    replica.stop();
    assert!(!replica.is_running());
}
