//! Semantic checks over the user config, all at once, producing the runtime config.

use super::error::{ConfigError, Problem};
use super::load::source_of;
use super::schema::*;
use super::ListenAddr;
use figment::Figment;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The validated configuration a process runs with. A client role whose `control` list
/// is empty uses the co-located control role (see `RoleContext::control_urls`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct RuntimeConfig {
    pub node_name: String,
    /// Enabled roles, in start order (control first).
    pub roles: Vec<Role>,
    pub data_dir: PathBuf,
    pub zone: Option<String>,
    #[serde(with = "secs")]
    pub shutdown_grace: Duration,
    /// 0: one per CPU.
    pub worker_threads: usize,
    pub log: LogConfig,
    pub tls: TlsConfig,
    pub control: ControlConfig,
    pub agent: AgentConfig,
    pub gateway: GatewayConfig,
    pub dbproxy: DbproxyConfig,
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_secs())
    }
}

impl RuntimeConfig {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }
}

struct Checker<'a> {
    figment: &'a Figment,
    problems: Vec<Problem>,
}

impl Checker<'_> {
    fn fail(&mut self, key: &str, message: impl Into<String>) {
        // An array item (`a.b[2].c`) is found by its array's key.
        let source = source_of(self.figment, key.split('[').next().unwrap_or(key));
        self.problems.push(Problem {
            source,
            key: key.to_string(),
            message: message.into(),
        });
    }
}

/// Validates `cfg`; `figment` is the chain it came from, used to name sources.
pub fn validate(cfg: UserConfig, figment: &Figment) -> Result<RuntimeConfig, ConfigError> {
    let mut c = Checker {
        figment,
        problems: Vec::new(),
    };

    let mut roles = cfg.roles.clone();
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        c.fail(
            "roles",
            "no roles named: list any of control, agent, gateway, dbproxy",
        );
    }

    let node_name = cfg.node_name.clone().unwrap_or_else(host_name);
    if let Err(m) = check_name(&node_name) {
        c.fail("node_name", m);
    }
    if let Some(zone) = &cfg.zone {
        if let Err(m) = check_name(zone) {
            c.fail("zone", m);
        }
    }
    if cfg.worker_threads > 1024 {
        c.fail(
            "worker_threads",
            format!(
                "{} is out of range 0-1024 (0: one per CPU)",
                cfg.worker_threads
            ),
        );
    }
    if !(1..=300).contains(&cfg.shutdown_grace_secs) {
        c.fail(
            "shutdown_grace_secs",
            format!(
                "{} is out of range: expected 1 to 300 seconds",
                cfg.shutdown_grace_secs
            ),
        );
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&cfg.log.level) {
        c.fail(
            "log.level",
            format!("`{}` is not a log filter: {e}", cfg.log.level),
        );
    }
    if let Err(m) = check_writable_dir(&cfg.data_dir) {
        c.fail(
            "data_dir",
            format!("{} is not usable: {m}", cfg.data_dir.display()),
        );
    }
    check_tls(&mut c, &cfg.tls);

    let has = |r: Role| roles.contains(&r);
    if has(Role::Control) {
        let ctl = &cfg.control;
        match (ctl.bootstrap, ctl.join.is_empty()) {
            (false, true) => c.fail(
                "control.bootstrap",
                "control needs either `bootstrap = true` (first node of a new cluster) or `join = [control URLs]` with `join_token`",
            ),
            (true, false) => c.fail("control.join", "`bootstrap = true` and `join` exclude each other: a node either starts a cluster or joins one"),
            (false, false) if ctl.join_token.as_deref().unwrap_or("").is_empty() => {
                c.fail("control.join_token", "joining a cluster needs `join_token` (from `tessera token create --role control`)")
            }
            _ => {}
        }
        check_urls(&mut c, "control.join", &ctl.join);
        if !(10..=5_000).contains(&ctl.heartbeat_ms) {
            c.fail(
                "control.heartbeat_ms",
                format!("{} is out of range 10-5000", ctl.heartbeat_ms),
            );
        }
        if ctl.election_timeout_min_ms < ctl.heartbeat_ms.saturating_mul(3) {
            c.fail(
                "control.election_timeout_min_ms",
                format!(
                    "{} must be at least 3 heartbeats ({} ms)",
                    ctl.election_timeout_min_ms,
                    ctl.heartbeat_ms * 3
                ),
            );
        }
        if ctl.election_timeout_max_ms <= ctl.election_timeout_min_ms {
            c.fail(
                "control.election_timeout_max_ms",
                format!(
                    "{} must be greater than election_timeout_min_ms ({})",
                    ctl.election_timeout_max_ms, ctl.election_timeout_min_ms
                ),
            );
        }
        if ctl.snapshot_logs < 100 {
            c.fail(
                "control.snapshot_logs",
                format!("{} is too small: at least 100", ctl.snapshot_logs),
            );
        }
        if ctl.event_retention_secs == 0 {
            c.fail(
                "control.event_retention_secs",
                "must be at least 1 (seconds node events are kept)",
            );
        }
        if ctl.event_retention_max < 1 {
            c.fail(
                "control.event_retention_max",
                "must be at least 1 (node events kept)",
            );
        }
        for (key, v, max) in [
            ("control.blob_grace_secs", ctl.blob_grace_secs, 30 * 86_400),
            (
                "control.blob_gc_interval_secs",
                ctl.blob_gc_interval_secs,
                86_400,
            ),
        ] {
            if !(1..=max).contains(&v) {
                c.fail(key, format!("{v} is out of range 1-{max}"));
            }
        }
        if ctl.blob_scrub_interval_secs > 30 * 86_400 {
            c.fail(
                "control.blob_scrub_interval_secs",
                format!(
                    "{} is out of range 0-2592000 (0: never)",
                    ctl.blob_scrub_interval_secs
                ),
            );
        }
        if !(1..=4096).contains(&ctl.blob_scrub_mb_per_sec) {
            c.fail(
                "control.blob_scrub_mb_per_sec",
                format!("{} is out of range 1-4096", ctl.blob_scrub_mb_per_sec),
            );
        }
        if !(1..=3650).contains(&ctl.cert_renew_days) {
            c.fail(
                "control.cert_renew_days",
                format!("{} is out of range 1-3650", ctl.cert_renew_days),
            );
        }
        if let Some(f) = &ctl.kek_file {
            if let Err(e) = crate::config::read_kek(f) {
                c.fail("control.kek_file", e);
            } else if f.starts_with(&cfg.data_dir) {
                c.fail(
                    "control.kek_file",
                    format!(
                        "{} is inside the data dir ({}): keep the key-encryption key apart from the data it protects",
                        f.display(),
                        cfg.data_dir.display()
                    ),
                );
            }
        }
        if let Some(dir) = &ctl.console_dir {
            if !dir.join("index.html").is_file() {
                c.fail(
                    "control.console_dir",
                    format!(
                        "{} has no index.html: point it at a built console (ui/dist, `npm run build` in ui/)",
                        dir.display()
                    ),
                );
            }
        }
        if ctl.history_revisions < 1000 {
            c.fail(
                "control.history_revisions",
                format!("{} is too small: at least 1000", ctl.history_revisions),
            );
        }
        match &ctl.peer_advertise {
            Some(a) if a.0.ip().is_unspecified() || a.0.port() == 0 => c.fail(
                "control.peer_advertise",
                format!("{a} is not an address other nodes can dial: name a specific IP and port"),
            ),
            None if ctl.peer_listen.0.ip().is_unspecified() => c.fail(
                "control.peer_advertise",
                format!("peer_listen {} is a wildcard: set peer_advertise to the IP:PORT other control nodes dial", ctl.peer_listen),
            ),
            _ => {}
        }
        match &ctl.api_advertise {
            Some(u) => {
                let ip_host = check_url(u).map(|uri| {
                    uri.authority()
                        .is_some_and(|a| a.as_str().parse::<std::net::SocketAddr>().is_ok())
                });
                match ip_host {
                    Err(m) => c.fail("control.api_advertise", format!("`{u}`: {m}")),
                    Ok(false) => c.fail(
                        "control.api_advertise",
                        format!("`{u}`: name the host as IP:PORT, e.g. http://10.0.0.5:7400"),
                    ),
                    Ok(true) => {}
                }
            }
            None if ctl.listen.0.ip().is_unspecified() => c.fail(
                "control.api_advertise",
                format!(
                    "listen {} is a wildcard: set api_advertise to the URL other control nodes use",
                    ctl.listen
                ),
            ),
            None => {}
        }
    }

    // Client roles with no `control` list use the co-located control role, at the
    // address it actually binds (known only at run time; see `RoleContext`).
    for (role, urls) in [
        (Role::Agent, &cfg.agent.control),
        (Role::Gateway, &cfg.gateway.control),
        (Role::Dbproxy, &cfg.dbproxy.control),
    ] {
        if !has(role) {
            continue;
        }
        let key = format!("{role}.control");
        check_urls(&mut c, &key, urls);
        if urls.is_empty() && !has(Role::Control) {
            c.fail(&key, format!("the {role} role needs the control plane: set `control = [\"http://CONTROL-HOST:7400\"]`"));
        }
    }

    if has(Role::Agent) && cfg.agent.port_range().is_none() {
        c.fail(
            "agent.ports",
            format!(
                "`{}` is not a port range: expected LOW-HIGH within 1024-65535",
                cfg.agent.ports
            ),
        );
    }
    for (key, v) in [
        ("agent.disk_pressure_mb", cfg.agent.disk_pressure_mb),
        ("agent.memory_pressure_mb", cfg.agent.memory_pressure_mb),
    ] {
        if has(Role::Agent) && v > 1 << 40 {
            c.fail(key, format!("{v} is out of range 0-{}", 1u64 << 40));
        }
    }
    if has(Role::Agent) {
        let mut names = std::collections::BTreeSet::new();
        for (i, sink) in cfg.agent.log_sinks.iter().enumerate() {
            for (field, message) in super::sink::check(sink) {
                c.fail(&format!("agent.log_sinks[{i}].{field}"), message);
            }
            if !names.insert(sink.name.as_str()) {
                c.fail(
                    &format!("agent.log_sinks[{i}].name"),
                    format!("`{}` names two sinks", sink.name),
                );
            }
        }
    }
    if has(Role::Agent) && !(1..=100).contains(&cfg.agent.keep_versions) {
        c.fail(
            "agent.keep_versions",
            format!("{} is out of range 1-100", cfg.agent.keep_versions),
        );
    }
    if has(Role::Agent) && !(8..=1_048_576).contains(&cfg.agent.log_store_mb) {
        c.fail(
            "agent.log_store_mb",
            format!("{} is out of range 8-1048576", cfg.agent.log_store_mb),
        );
    }
    if has(Role::Dbproxy) {
        let d = &cfg.dbproxy;
        for (key, v) in [
            ("dbproxy.max_connections", d.max_connections as u64),
            (
                "dbproxy.max_backend_connections",
                d.max_backend_connections as u64,
            ),
            ("dbproxy.backend_wait_ms", d.backend_wait_ms),
            (
                "dbproxy.backend_connect_timeout_ms",
                d.backend_connect_timeout_ms,
            ),
        ] {
            if v == 0 {
                c.fail(key, "must be at least 1");
            }
        }
        if d.tls_cert.is_some() != d.tls_key.is_some() {
            c.fail(
                if d.tls_cert.is_some() {
                    "dbproxy.tls_key"
                } else {
                    "dbproxy.tls_cert"
                },
                "tls_cert and tls_key go together",
            );
        }
        if d.require_tls && d.tls_cert.is_none() {
            c.fail(
                "dbproxy.require_tls",
                "needs dbproxy.tls_cert and dbproxy.tls_key",
            );
        }
        if d.max_packet_bytes < 1024 || d.max_packet_bytes > (1 << 30) {
            c.fail("dbproxy.max_packet_bytes", "must be 1024-1073741824");
        }
        if d.server_version.is_empty()
            || d.server_version.len() > 60
            || !d.server_version.bytes().all(|b| b.is_ascii_graphic())
        {
            c.fail(
                "dbproxy.server_version",
                "1-60 printable ASCII characters without spaces",
            );
        }
    }
    if has(Role::Gateway) {
        let g = &cfg.gateway;
        if g.max_connections == 0 {
            c.fail("gateway.max_connections", "must be at least 1");
        }
        if g.max_header_bytes < 4096 || g.max_header_bytes > (1 << 20) {
            c.fail("gateway.max_header_bytes", "must be 4096-1048576");
        }
        if g.header_read_timeout_secs == 0 {
            c.fail("gateway.header_read_timeout_secs", "must be at least 1");
        }
        if let Some(u) = &g.admin_advertise {
            let ok = crate::util::is_http_authority_url(u);
            if !ok {
                c.fail(
                    "gateway.admin_advertise",
                    format!("`{u}` is not a URL of the form http://HOST:PORT"),
                );
            }
        }
    }

    check_port_clashes(&mut c, &listeners(&roles, &cfg));

    if !c.problems.is_empty() {
        return Err(ConfigError {
            problems: c.problems,
        });
    }
    Ok(RuntimeConfig {
        node_name,
        roles,
        data_dir: absolute(&cfg.data_dir),
        zone: cfg.zone.clone(),
        shutdown_grace: Duration::from_secs(cfg.shutdown_grace_secs),
        worker_threads: cfg.worker_threads,
        log: cfg.log.clone(),
        tls: cfg.tls.clone(),
        control: cfg.control.clone(),
        agent: cfg.agent.clone(),
        gateway: cfg.gateway.clone(),
        dbproxy: cfg.dbproxy.clone(),
    })
}

/// Every listener the enabled roles bind, with its key.
fn listeners(roles: &[Role], cfg: &UserConfig) -> Vec<(String, ListenAddr)> {
    let mut out = Vec::new();
    let mut push = |key: &str, a: ListenAddr| out.push((key.to_string(), a));
    for role in roles {
        match role {
            Role::Control => {
                push("control.listen", cfg.control.listen);
                push("control.peer_listen", cfg.control.peer_listen);
                if let Some(a) = cfg
                    .control
                    .admin_listen
                    .filter(|a| *a != cfg.control.listen)
                {
                    push("control.admin_listen", a);
                }
            }
            Role::Agent => {
                push("agent.listen", cfg.agent.listen);
                if let Some(a) = cfg.agent.admin_listen.filter(|a| *a != cfg.agent.listen) {
                    push("agent.admin_listen", a);
                }
            }
            Role::Gateway => {
                push("gateway.listen", cfg.gateway.listen);
                push("gateway.admin_listen", cfg.gateway.admin_listen);
                if let Some(a) = cfg.gateway.tls_listen {
                    push("gateway.tls_listen", a);
                }
            }
            Role::Dbproxy => {
                push("dbproxy.listen", cfg.dbproxy.listen);
                push("dbproxy.admin_listen", cfg.dbproxy.admin_listen);
            }
        }
    }
    out
}

fn check_port_clashes(c: &mut Checker, listeners: &[(String, ListenAddr)]) {
    for (i, (key, a)) in listeners.iter().enumerate() {
        if a.0.port() == 0 {
            continue;
        }
        if let Some((other, _)) = listeners[..i]
            .iter()
            .find(|(_, b)| b.0.port() == a.0.port() && overlaps(a.0, b.0))
        {
            c.fail(
                key,
                format!(
                    "port {} is also used by `{other}` in this process",
                    a.0.port()
                ),
            );
        }
    }
}

fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified()
}

fn check_urls(c: &mut Checker, key: &str, urls: &[String]) {
    for u in urls {
        if let Err(m) = check_url(u) {
            c.fail(key, format!("`{u}` is not a control URL: {m}"));
        }
    }
}

/// A control URL: `http(s)://HOST:PORT` with no path beyond `/`.
pub fn check_url(u: &str) -> Result<http::Uri, String> {
    let uri: http::Uri = u.parse().map_err(|e| format!("{e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err("expected http://HOST:PORT or https://HOST:PORT".into()),
    }
    if uri.host().unwrap_or("").is_empty() {
        return Err("missing host".into());
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err("must not carry a path or query".into());
    }
    Ok(uri)
}

fn check_tls(c: &mut Checker, tls: &TlsConfig) {
    if tls.cert.is_some() != tls.key.is_some() {
        let key = if tls.cert.is_some() {
            "tls.key"
        } else {
            "tls.cert"
        };
        c.fail(
            key,
            "`tls.cert` and `tls.key` go together: set both or neither",
        );
    }
    for (key, path) in [
        ("tls.ca", &tls.ca),
        ("tls.cert", &tls.cert),
        ("tls.key", &tls.key),
    ] {
        if let Some(p) = path {
            if let Err(e) = std::fs::File::open(p) {
                c.fail(key, format!("cannot read {}: {e}", p.display()));
            }
        }
    }
}

/// Node and zone names: DNS-label-like, so they are safe in URLs, metrics and file names.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '.' || ch == '_')
        && name
            .chars()
            .next()
            .is_some_and(|ch| ch.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("`{name}` is not a valid name: use 1-63 letters, digits, `-`, `_` or `.`, starting with a letter or digit"))
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `p` made absolute against the current directory, without `.` components.
fn absolute(p: &Path) -> PathBuf {
    let joined = if p.is_absolute() {
        p.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(p))
            .unwrap_or_else(|_| p.to_path_buf())
    };
    joined
        .components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

/// The directory exists and takes a new file, or its nearest existing ancestor is a
/// directory that does (nothing is created here: `config check` has no side effects).
fn check_writable_dir(dir: &Path) -> Result<(), String> {
    let dir = absolute(dir);
    let mut probe_in = dir.as_path();
    loop {
        match std::fs::metadata(probe_in) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => {
                return Err(format!(
                    "{} exists and is not a directory",
                    probe_in.display()
                ))
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
                ) =>
            {
                probe_in = probe_in
                    .parent()
                    .ok_or_else(|| "no existing parent directory".to_string())?;
            }
            Err(e) => return Err(format!("{}: {e}", probe_in.display())),
        }
    }
    let probe = probe_in.join(format!(".tessera-write-probe-{}", std::process::id()));
    std::fs::write(&probe, b"probe")
        .map_err(|e| format!("cannot write in {}: {e}", probe_in.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_urls() {
        assert!(check_url("http://10.0.0.1:7400").is_ok());
        assert!(check_url("https://ctl.bank.local:7400/").is_ok());
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("http://x:7400/api").is_err());
        assert!(check_url("10.0.0.1:7400").is_err());
    }

    #[test]
    fn names() {
        assert!(check_name("node-1.hz-a").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name("-x").is_err());
        assert!(check_name("a b").is_err());
    }

    #[test]
    fn port_overlap_counts_wildcards() {
        let a: SocketAddr = "0.0.0.0:80".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:80".parse().unwrap();
        let d: SocketAddr = "127.0.0.2:80".parse().unwrap();
        assert!(overlaps(a, b));
        assert!(!overlaps(b, d));
    }
}
