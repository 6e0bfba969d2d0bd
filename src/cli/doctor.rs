//! `tessera doctor`: preflight checks of a machine for the roles a profile (or `up`)
//! would run here. Nothing is changed: listeners are bound and released at once, the
//! disk test writes and removes one file in the data directory (or the nearest existing
//! parent), and cgroup hierarchies are only looked at.
//!
//! Each check is `ok`, `warn` (works, but not as a production machine should) or
//! `fail` (a role would not start or would lose its guarantees). Exit 0 without
//! failures, 1 with any, 2 for a bad profile or flag.

use super::args::{DoctorArgs, DoctorOutput};
use super::{EXIT_BAD_INPUT, EXIT_FAILED};
use crate::config::{self, Overrides, Role, RuntimeConfig, Source};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, serde::Serialize)]
pub struct Check {
    pub name: String,
    pub status: Status,
    pub detail: String,
}

fn check(name: impl Into<String>, status: Status, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
    }
}

pub fn run(a: DoctorArgs) -> ExitCode {
    let source = match &a.profile {
        Some(p) => Source::Profile(p.clone()),
        None => Source::Embedded(super::serve::up_values(
            a.data_dir.as_deref().unwrap_or(Path::new("./tessera-data")),
        )),
    };
    let mut set = a.set.clone();
    if let (Some(_), Some(d)) = (&a.profile, &a.data_dir) {
        set.push(format!(
            "data_dir={}",
            toml_string(&d.display().to_string())
        ));
    }
    let cfg = match config::resolve(&source, &Overrides(set)) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let checks = checks(&cfg);
    match a.output {
        DoctorOutput::Json => match serde_json::to_string_pretty(&checks) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("cannot print the checks: {e}"),
        },
        DoctorOutput::Table => print_table(&cfg, &checks),
    }
    if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::from(EXIT_FAILED)
    } else {
        ExitCode::SUCCESS
    }
}

fn toml_string(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn print_table(cfg: &RuntimeConfig, checks: &[Check]) {
    let roles: Vec<&str> = cfg.roles.iter().map(|r| r.as_str()).collect();
    println!(
        "Preflight of this machine for node {} (roles: {}; data dir {})",
        cfg.node_name,
        roles.join(", "),
        cfg.data_dir.display()
    );
    let width = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!("{:width$}  STATUS  DETAIL", "CHECK");
    for c in checks {
        let s = match c.status {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        };
        println!("{:width$}  {s:6}  {}", c.name, c.detail);
    }
    let count = |s| checks.iter().filter(|c| c.status == s).count();
    println!(
        "{} ok, {} warnings, {} failures",
        count(Status::Ok),
        count(Status::Warn),
        count(Status::Fail)
    );
}

/// Every check for `cfg`'s roles on this machine.
pub fn checks(cfg: &RuntimeConfig) -> Vec<Check> {
    let mut out = vec![kernel(), cpus(), memory()];
    out.extend(data_dir(cfg));
    for (name, addr) in listeners(cfg) {
        out.push(listener(&name, addr));
    }
    out.push(open_files(cfg));
    if cfg.has(Role::Agent) {
        out.push(cgroups(Path::new("/sys/fs/cgroup")));
    }
    if cfg.has(Role::Gateway) || cfg.has(Role::Dbproxy) {
        out.extend(network_sysctls());
    }
    out
}

fn kernel() -> Check {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let arch = std::env::consts::ARCH;
    let version: Vec<u32> = release
        .split(|c: char| !c.is_ascii_digit())
        .take(2)
        .filter_map(|n| n.parse().ok())
        .collect();
    match version.as_slice() {
        [major, minor] if (*major, *minor) >= (3, 10) => {
            check("kernel", Status::Ok, format!("Linux {release} {arch}"))
        }
        [_, _] => check(
            "kernel",
            Status::Fail,
            format!("Linux {release} is older than 3.10 (RHEL/CentOS 7), the oldest supported"),
        ),
        _ => check(
            "kernel",
            Status::Warn,
            format!("cannot read the kernel release ({release:?}) on {arch}"),
        ),
    }
}

fn cpus() -> Check {
    let n = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    if n >= 2 {
        check("cpus", Status::Ok, format!("{n} usable"))
    } else {
        check(
            "cpus",
            Status::Warn,
            format!("{n} usable: control nodes and gateways want at least 2"),
        )
    }
}

fn meminfo(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib / 1024)
}

fn memory() -> Check {
    let text = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let (Some(total), Some(avail)) = (meminfo(&text, "MemTotal"), meminfo(&text, "MemAvailable"))
    else {
        return check("memory", Status::Warn, "cannot read /proc/meminfo");
    };
    let detail = format!("{avail} MiB available of {total} MiB");
    match avail {
        a if a < 256 => check("memory", Status::Fail, format!("{detail}: under 256 MiB")),
        a if a < 1024 => check("memory", Status::Warn, format!("{detail}: under 1 GiB")),
        _ => check("memory", Status::Ok, detail),
    }
}

/// The data directory, or the nearest parent that exists (where it would be made).
fn existing(dir: &Path) -> Option<PathBuf> {
    let mut at = if dir.is_absolute() {
        dir.to_path_buf()
    } else {
        std::env::current_dir().ok()?.join(dir)
    };
    loop {
        if at.is_dir() {
            return Some(at);
        }
        if !at.pop() {
            return None;
        }
    }
}

fn data_dir(cfg: &RuntimeConfig) -> Vec<Check> {
    let dir = &cfg.data_dir;
    let Some(at) = existing(dir) else {
        return vec![check(
            "data dir",
            Status::Fail,
            format!("{}: no parent directory exists", dir.display()),
        )];
    };
    let made = if dir.is_dir() {
        String::new()
    } else {
        format!(" (will be made under {})", at.display())
    };
    let mut out = Vec::new();
    // Writable, and how fast a synced write is (what every Raft append waits for).
    let probe = at.join(format!(".tessera-doctor-{}", std::process::id()));
    let timings = sync_timings(&probe, 30);
    let _ = std::fs::remove_file(&probe);
    match timings {
        Err(e) => out.push(check(
            "data dir",
            Status::Fail,
            format!("{}: cannot write there: {e}", at.display()),
        )),
        Ok(mut t) => {
            out.push(check(
                "data dir",
                Status::Ok,
                format!("{} is writable{made}", dir.display()),
            ));
            t.sort();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            let (p50, p99) = (t[t.len() / 2], t[(t.len() * 99 / 100).min(t.len() - 1)]);
            let detail = format!(
                "fdatasync of 16 KiB: p50 {:.2} ms, p99 {:.2} ms over {} writes",
                ms(p50),
                ms(p99),
                t.len()
            );
            let status = if !cfg.has(Role::Control) || p99 <= Duration::from_millis(10) {
                Status::Ok
            } else if p99 <= Duration::from_millis(50) {
                Status::Warn
            } else {
                Status::Fail
            };
            let why = match status {
                Status::Ok => String::new(),
                _ => "; the control role acknowledges a write only after it is synced on a majority: above 10 ms every change waits (etcd asks the same)".into(),
            };
            out.push(check("disk sync", status, format!("{detail}{why}")));
        }
    }
    match rustix::fs::statvfs(&at) {
        Ok(s) => {
            let free_mb = s.f_bavail.saturating_mul(s.f_frsize) >> 20;
            let detail = format!("{free_mb} MiB free under {}", at.display());
            out.push(match free_mb {
                f if f < 512 => check(
                    "disk space",
                    Status::Fail,
                    format!("{detail}: under 512 MiB"),
                ),
                f if f < 5 * 1024 => check(
                    "disk space",
                    Status::Warn,
                    format!("{detail}: under 5 GiB (artifacts, logs and snapshots live here)"),
                ),
                _ => check("disk space", Status::Ok, detail),
            });
        }
        Err(e) => out.push(check(
            "disk space",
            Status::Warn,
            format!("cannot read the free space of {}: {e}", at.display()),
        )),
    }
    out
}

/// `n` writes of 16 KiB to `path`, each followed by fdatasync: their durations.
fn sync_timings(path: &Path, n: usize) -> std::io::Result<Vec<Duration>> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    let block = vec![0x5a; 16 * 1024];
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        f.write_all(&block)?;
        f.sync_data()?;
        out.push(t0.elapsed());
    }
    Ok(out)
}

/// Every listener the roles would open, by setting name.
fn listeners(cfg: &RuntimeConfig) -> Vec<(String, std::net::SocketAddr)> {
    let mut out = Vec::new();
    let mut add = |name: &str, a: Option<&config::ListenAddr>| {
        if let Some(a) = a {
            out.push((name.to_string(), a.0));
        }
    };
    if cfg.has(Role::Control) {
        add("control.listen", Some(&cfg.control.listen));
        add("control.peer_listen", Some(&cfg.control.peer_listen));
        add("control.admin_listen", cfg.control.admin_listen.as_ref());
    }
    if cfg.has(Role::Agent) {
        add("agent.listen", Some(&cfg.agent.listen));
        add("agent.admin_listen", cfg.agent.admin_listen.as_ref());
    }
    if cfg.has(Role::Gateway) {
        add("gateway.listen", Some(&cfg.gateway.listen));
        add("gateway.admin_listen", Some(&cfg.gateway.admin_listen));
    }
    if cfg.has(Role::Dbproxy) {
        add("dbproxy.listen", Some(&cfg.dbproxy.listen));
        add("dbproxy.admin_listen", Some(&cfg.dbproxy.admin_listen));
    }
    out
}

fn listener(name: &str, addr: std::net::SocketAddr) -> Check {
    let label = format!("listen {name}");
    if addr.port() == 0 {
        return check(label, Status::Ok, format!("{addr}: any free port"));
    }
    match std::net::TcpListener::bind(addr) {
        Ok(l) => {
            drop(l);
            check(label, Status::Ok, format!("{addr} is free"))
        }
        Err(e) => {
            let why = match e.kind() {
                std::io::ErrorKind::AddrInUse => "in use by another process".to_string(),
                std::io::ErrorKind::AddrNotAvailable => {
                    "not an address of this machine".to_string()
                }
                std::io::ErrorKind::PermissionDenied => {
                    "not allowed (a port under 1024 needs root or CAP_NET_BIND_SERVICE)".to_string()
                }
                _ => e.to_string(),
            };
            check(label, Status::Fail, format!("{addr}: {why}"))
        }
    }
}

fn open_files(cfg: &RuntimeConfig) -> Check {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let soft = limit.current.unwrap_or(u64::MAX);
    let hard = limit
        .maximum
        .map(|m| m.to_string())
        .unwrap_or_else(|| "unlimited".into());
    let detail = format!("soft limit {soft}, hard {hard}");
    let busy = cfg.has(Role::Gateway) || cfg.has(Role::Dbproxy);
    if soft >= 65_536 || (!busy && soft >= 4096) {
        check("open files", Status::Ok, detail)
    } else {
        check(
            "open files",
            Status::Warn,
            format!(
                "{detail}: every client and upstream connection takes one; raise it (LimitNOFILE=65536 in the unit, or ulimit -n)"
            ),
        )
    }
}

/// How the agent would limit instances here (looked at, nothing made).
pub fn cgroups(root: &Path) -> Check {
    let writable = |p: &Path| rustix::fs::access(p, rustix::fs::Access::WRITE_OK).is_ok();
    if let Ok(c) = std::fs::read_to_string(root.join("cgroup.controllers")) {
        let have: Vec<&str> = c.split_whitespace().collect();
        let missing: Vec<&str> = ["memory", "cpu", "pids"]
            .into_iter()
            .filter(|c| !have.contains(c))
            .collect();
        if missing.is_empty() && writable(root) {
            return check(
                "cgroups",
                Status::Ok,
                "cgroup v2: memory, cpu and pids limits",
            );
        }
    }
    let memory = root.join("memory");
    if memory.join("memory.limit_in_bytes").exists() && writable(&memory) {
        let (mut have, mut lack) = (vec!["memory"], Vec::new());
        for name in ["cpu", "pids"] {
            let h = root.join(name);
            if h.join("cgroup.procs").exists() && writable(&h) {
                have.push(name);
            } else {
                lack.push(name);
            }
        }
        let mut detail = format!("cgroup v1: {} limits", have.join(", "));
        if !lack.is_empty() {
            detail.push_str(&format!(" (no {} hierarchy)", lack.join(" or ")));
        }
        return check("cgroups", Status::Ok, detail);
    }
    check(
        "cgroups",
        Status::Warn,
        format!(
            "no cgroup hierarchy the agent may manage under {}: instances get rlimits only (an address-space cap, no CPU or pids limits)",
            root.display()
        ),
    )
}

fn network_sysctls() -> Vec<Check> {
    let read = |p: &str| std::fs::read_to_string(p).ok();
    let mut out = Vec::new();
    if let Some(v) = read("/proc/sys/net/core/somaxconn").and_then(|s| s.trim().parse::<u64>().ok())
    {
        out.push(if v >= 1024 {
            check("somaxconn", Status::Ok, format!("net.core.somaxconn = {v}"))
        } else {
            check(
                "somaxconn",
                Status::Warn,
                format!("net.core.somaxconn = {v}: bursts of new connections may be dropped; 1024 or more"),
            )
        });
    }
    if let Some(r) = read("/proc/sys/net/ipv4/ip_local_port_range") {
        let v: Vec<u64> = r
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        if let [lo, hi] = v.as_slice() {
            let span = hi.saturating_sub(*lo) + 1;
            out.push(if span >= 16_384 {
                check("local ports", Status::Ok, format!("{lo}-{hi} ({span} ports for upstream connections)"))
            } else {
                check(
                    "local ports",
                    Status::Warn,
                    format!("{lo}-{hi}: only {span} ports for connections to upstreams and databases; widen net.ipv4.ip_local_port_range"),
                )
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_mib() {
        let text = "MemTotal:       16318508 kB\nMemFree:  1 kB\nMemAvailable:    8000000 kB\n";
        assert_eq!(meminfo(text, "MemTotal"), Some(15936));
        assert_eq!(meminfo(text, "MemAvailable"), Some(7812));
        assert_eq!(meminfo(text, "Swap"), None);
    }

    #[test]
    fn a_port_in_use_fails_and_a_free_one_passes() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let c = listener("gateway.listen", addr);
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail.contains("in use by another process"),
            "{}",
            c.detail
        );
        drop(taken);
        assert_eq!(listener("gateway.listen", addr).status, Status::Ok);
        let c = listener("x", "192.0.2.1:7400".parse().unwrap());
        assert_eq!(c.status, Status::Fail);
        assert!(
            c.detail.contains("not an address of this machine"),
            "{}",
            c.detail
        );
    }

    #[test]
    fn cgroup_hierarchies_are_recognised() {
        let none = tempfile::tempdir().unwrap();
        assert_eq!(cgroups(none.path()).status, Status::Warn);
        let v2 = tempfile::tempdir().unwrap();
        std::fs::write(v2.path().join("cgroup.controllers"), "cpu io memory pids\n").unwrap();
        let c = cgroups(v2.path());
        assert!(
            c.status == Status::Ok && c.detail.starts_with("cgroup v2"),
            "{c:?}"
        );
        let v1 = tempfile::tempdir().unwrap();
        std::fs::create_dir(v1.path().join("memory")).unwrap();
        std::fs::write(v1.path().join("memory/memory.limit_in_bytes"), "max").unwrap();
        let c = cgroups(v1.path());
        assert_eq!(
            c.detail,
            "cgroup v1: memory limits (no cpu or pids hierarchy)"
        );
        std::fs::create_dir(v1.path().join("pids")).unwrap();
        std::fs::write(v1.path().join("pids/cgroup.procs"), "").unwrap();
        let c = cgroups(v1.path());
        assert_eq!(
            c.detail,
            "cgroup v1: memory, pids limits (no cpu hierarchy)"
        );
    }
}
