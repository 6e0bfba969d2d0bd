//! The user config: exactly what a profile may say. Unknown keys are refused
//! (`deny_unknown_fields`), so a typo never silently falls back to a default.
//! Each field's `///` doc is the reference; README.md's profile section mirrors it.

use super::ListenAddr;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

fn local(port: u16) -> ListenAddr {
    ListenAddr(SocketAddr::from((Ipv4Addr::LOCALHOST, port)))
}

/// A role a process can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Control,
    Agent,
    Gateway,
    Dbproxy,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Control, Role::Agent, Role::Gateway, Role::Dbproxy];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Control => "control",
            Role::Agent => "agent",
            Role::Gateway => "gateway",
            Role::Dbproxy => "dbproxy",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Top level of a profile.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UserConfig {
    /// This machine's name in the cluster; defaults to the host name.
    pub node_name: Option<String>,
    /// Roles this process runs: any of control, agent, gateway, dbproxy.
    pub roles: Vec<Role>,
    /// Where every role keeps its state; created if missing.
    pub data_dir: PathBuf,
    /// The zone (data center) this machine is in.
    pub zone: Option<String>,
    /// Seconds a graceful shutdown may take before remaining work is abandoned.
    pub shutdown_grace_secs: u64,
    /// Threads of the async runtime that runs every role (0: one per CPU). Fewer than
    /// the CPUs when several tessera processes share a machine (e.g. three control
    /// nodes on one host for a lab) saves cross-thread wake-ups. 1 selects tokio's
    /// current-thread scheduler: everything on one thread, no work stealing.
    pub worker_threads: usize,
    pub log: LogConfig,
    pub tls: TlsConfig,
    pub control: ControlConfig,
    pub agent: AgentConfig,
    pub gateway: GatewayConfig,
    pub dbproxy: DbproxyConfig,
}

impl Default for UserConfig {
    fn default() -> Self {
        UserConfig {
            node_name: None,
            roles: Vec::new(),
            data_dir: PathBuf::from("./tessera-data"),
            zone: None,
            shutdown_grace_secs: 4,
            worker_threads: 0,
            log: LogConfig::default(),
            tls: TlsConfig::default(),
            control: ControlConfig::default(),
            agent: AgentConfig::default(),
            gateway: GatewayConfig::default(),
            dbproxy: DbproxyConfig::default(),
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `[log]`
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter (`info`, `debug`, `tessera=debug,hyper=warn`); `RUST_LOG` wins.
    pub level: String,
    /// `text` or `json`; `--log-format` wins.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            // openraft's info level dumps whole Raft states on every change, and it warns
            // about every client that went away before its answer: keep its warnings and
            // errors only (set `log.level = "info"` to see everything).
            level: "info,openraft=warn,openraft::raft::responder=error".into(),
            format: LogFormat::Text,
        }
    }
}

/// `[tls]`: certificate paths. Used by the roles' mTLS once the control plane issues
/// certificates; validated now so a profile can carry them.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM CA bundle that peers' certificates must chain to.
    pub ca: Option<PathBuf>,
    /// PEM certificate of this node.
    pub cert: Option<PathBuf>,
    /// PEM private key of this node.
    pub key: Option<PathBuf>,
}

/// `[control]`: the replicated control plane and its REST API.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// REST API, web console, /healthz, /readyz, /metrics.
    pub listen: ListenAddr,
    /// Optional extra listener for /healthz, /readyz, /metrics only.
    pub admin_listen: Option<ListenAddr>,
    /// Raft traffic between control nodes.
    pub peer_listen: ListenAddr,
    /// Create a new cluster with this node as its first member.
    pub bootstrap: bool,
    /// Control URLs of an existing cluster to join (needs `join_token`).
    pub join: Vec<String>,
    /// Token from `tessera token create --role control`.
    pub join_token: Option<String>,
    /// Leader heartbeat interval. The defaults hold across data centers 20-50 ms apart.
    pub heartbeat_ms: u64,
    /// A follower starts an election after a random timeout in [min, max] without a heartbeat.
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and purge the log behind it) after this many new entries.
    pub snapshot_logs: u64,
    /// Revisions of change history kept for watches to replay; the leader compacts
    /// older history automatically.
    pub history_revisions: u64,
    /// `IP:PORT` other control nodes dial for Raft traffic, when it differs from
    /// `peer_listen` (a wildcard listen address, NAT, a relay). Outgoing peer
    /// connections leave from `peer_listen`'s IP when it is a specific address.
    pub peer_advertise: Option<ListenAddr>,
    /// `http://IP:PORT` other control nodes use to reach this node's API (forwarded
    /// writes), when it differs from `listen`.
    pub api_advertise: Option<String>,
    /// Renew this node's certificate (signed by the cluster CA, valid 365 days) when fewer
    /// than this many days are left. Checked at start and hourly.
    pub cert_renew_days: u64,
    /// Serve the web console from this directory (a built `ui/dist`) instead of the copy
    /// embedded in the binary: for console development.
    pub console_dir: Option<PathBuf>,
    /// Node events older than this are deleted (by the leader).
    pub event_retention_secs: u64,
    /// At most this many node events are kept; the oldest go first.
    pub event_retention_max: usize,
    /// An artifact blob no `artifacts` resource names (or an unfinished upload) is
    /// deleted from this node's disk once its file is this old.
    pub blob_grace_secs: u64,
    /// Seconds between this node's blob collection passes.
    pub blob_gc_interval_secs: u64,
    /// Seconds between passes that read every stored blob back and check its digest
    /// (0: never).
    pub blob_scrub_interval_secs: u64,
    /// How fast a scrub pass reads, in MiB a second.
    pub blob_scrub_mb_per_sec: u64,
    /// Who may use plain HTTP on the API port (HTTPS is always served there): `any`, or
    /// `loopback` (this machine only; other clients get 403 `https_required`, except on
    /// `/healthz` and `/readyz`).
    pub api_plain_http: PlainHttp,
    /// A file outside the data dir holding the key-encryption key (64 hex characters,
    /// e.g. from `openssl rand -hex 32`), the same on every control node: the cluster's
    /// data key, which seals secrets in resources, is stored wrapped with it.
    pub kek_file: Option<PathBuf>,
}

/// `control.api_plain_http`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlainHttp {
    #[default]
    Any,
    Loopback,
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            listen: local(7400),
            admin_listen: None,
            peer_listen: local(7401),
            bootstrap: false,
            join: Vec::new(),
            join_token: None,
            heartbeat_ms: 100,
            election_timeout_min_ms: 400,
            election_timeout_max_ms: 800,
            snapshot_logs: 10_000,
            history_revisions: 50_000,
            peer_advertise: None,
            api_advertise: None,
            cert_renew_days: 30,
            console_dir: None,
            event_retention_secs: 7 * 24 * 3600,
            event_retention_max: 10_000,
            blob_grace_secs: 3600,
            blob_gc_interval_secs: 600,
            blob_scrub_interval_secs: 86_400,
            blob_scrub_mb_per_sec: 32,
            api_plain_http: PlainHttp::Any,
            kek_file: None,
        }
    }
}

/// `[agent]`: runs VM-mode workloads on this machine.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// Agent API and admin endpoints.
    pub listen: ListenAddr,
    /// Optional extra listener for /healthz, /readyz, /metrics only.
    pub admin_listen: Option<ListenAddr>,
    /// Control plane URLs; defaults to the local control role when it runs in this process.
    pub control: Vec<String>,
    /// Token from `tessera token create --role agent`, exchanged once for the agent's
    /// own credential (kept in `<data_dir>/agent/credential`).
    pub join_token: Option<String>,
    /// The address instances listen on and are registered at.
    pub instance_ip: std::net::IpAddr,
    /// Ports handed to instances (`PORT`), `LOW-HIGH`.
    pub ports: String,
    /// Stop the instances when the agent stops (`tessera up` does); by default they keep
    /// running and a restarted agent adopts them again.
    pub stop_workloads_on_exit: bool,
    /// Collected log lines kept on this node (`<data_dir>/agent/logs`), in MiB; the
    /// oldest go first.
    pub log_store_mb: u64,
    /// A `DiskPressure` node event when less than this many MiB are free under the data
    /// dir (0: not checked).
    pub disk_pressure_mb: u64,
    /// A `MemoryPressure` node event when less than this many MiB of memory are
    /// available (0: not checked).
    pub memory_pressure_mb: u64,
    /// Unpacked versions each instance keeps on disk: the current one and the most
    /// recent earlier ones (a rollback to those needs no download). Older ones, and
    /// cached downloads no kept version needs, are removed.
    pub keep_versions: usize,
    /// How long the directory of an instance no longer placed on this node stays (its
    /// unpacked versions, its working files) before it is removed.
    pub instance_dir_grace_secs: u64,
    /// Where collected lines are also sent (`[[agent.log_sinks]]`), besides the local
    /// store; none by default.
    pub log_sinks: Vec<LogSink>,
}

/// `[[agent.log_sinks]]`: one destination the agent forwards collected log lines to,
/// from the local store, in order, resuming after restarts and outages (lines the store
/// dropped before they could be sent are counted, not silently skipped).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSink {
    /// Names the sink in metrics, logs and its cursor file: `[a-z0-9-]`, 1-63.
    pub name: String,
    /// `syslog+udp://HOST:PORT`, `syslog+tcp://HOST:PORT` or `syslog+tls://HOST:PORT`
    /// (RFC 5424 messages; octet-counted on TCP and TLS, RFC 6587/5425), or
    /// `http://...` / `https://...` (NDJSON batches POSTed, each line a record as
    /// `GET /api/v1/logs` gives it; any 2xx answer acknowledges the batch).
    pub url: String,
    /// Only lines of these apps (empty: every app's).
    #[serde(default)]
    pub apps: Vec<String>,
    /// PEM CA certificates trusted for `syslog+tls` and `https` (required for them:
    /// no public CA is trusted by default).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// `https`/`http` only: a file whose content (trimmed) is sent as
    /// `Authorization: Bearer ...`, read for every batch (a rotated token applies at once).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Syslog facility: `user`, `daemon`, `local0` ... `local7`.
    #[serde(default = "default_facility")]
    pub facility: String,
    /// Syslog structured-data ID carrying unit, file and sequence number
    /// (`NAME@ENTERPRISE-NUMBER`; the default uses the documentation number 32473).
    #[serde(default = "default_sd_id")]
    pub sd_id: String,
    /// Lines per batch (per POST, or per burst of syslog messages), 1-10000.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_facility() -> String {
    "local0".into()
}

fn default_sd_id() -> String {
    "tessera@32473".into()
}

fn default_batch() -> usize {
    500
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: local(7402),
            admin_listen: None,
            control: Vec::new(),
            join_token: None,
            instance_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            ports: "20000-29999".into(),
            log_store_mb: 256,
            disk_pressure_mb: 1024,
            memory_pressure_mb: 256,
            stop_workloads_on_exit: false,
            log_sinks: Vec::new(),
            keep_versions: 2,
            instance_dir_grace_secs: 86_400,
        }
    }
}

impl AgentConfig {
    /// `ports` as a range (validated at load).
    pub fn port_range(&self) -> Option<std::ops::RangeInclusive<u16>> {
        let (a, b) = self.ports.split_once('-')?;
        let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
        (a >= 1024 && a <= b).then_some(a..=b)
    }
}

/// `[gateway]`: the L7 entrance.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// HTTP entrance.
    pub listen: ListenAddr,
    /// /healthz, /readyz, /metrics, /routes, /endpoints, /drained.
    pub admin_listen: ListenAddr,
    /// The URL agents reach `admin_listen` at (`http://HOST:PORT`), registered with the
    /// control plane so that agents ask this gateway whether an endpoint has drained
    /// before stopping it. Default: `http://<admin_listen>`; when that is a wildcard
    /// address the gateway does not register (agents then wait a fixed grace).
    pub admin_advertise: Option<String>,
    /// Control plane URLs; defaults to the local control role when it runs in this process.
    pub control: Vec<String>,
    /// Token from `tessera token create --role gateway`, exchanged once for the
    /// gateway's own API credential (kept in `<data_dir>/gateway/credential`).
    pub join_token: Option<String>,
    /// One JSON line per request (target `tessera::access`).
    pub access_log: bool,
    /// Open client connections at most; further ones wait to be accepted.
    pub max_connections: usize,
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: u64,
    /// Largest request head (HTTP/1 buffer, HTTP/2 header list); beyond: 431/400.
    pub max_header_bytes: usize,
    /// A client must send a request's head within this time (slow clients are cut off).
    pub header_read_timeout_secs: u64,
    /// HTTPS entrance (TLS with SNI and ALPN h2/http1.1); off unless set. Serves
    /// `certificates` and the control plane's `certificates` resources.
    pub tls_listen: Option<ListenAddr>,
    /// Certificate files served on `tls_listen`, chosen by SNI; the first is the default
    /// (and a host in both is served from these).
    pub certificates: Vec<GatewayCertificate>,
}

/// One certificate of the gateway's HTTPS entrance.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayCertificate {
    /// PEM certificate chain (leaf first).
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// Host names it serves (`*.domain` allowed); default: the DNS names in the certificate.
    #[serde(default)]
    pub hosts: Vec<String>,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            listen: local(8080),
            admin_listen: local(7403),
            admin_advertise: None,
            control: Vec::new(),
            join_token: None,
            access_log: true,
            max_connections: 10_000,
            max_body_bytes: 16 << 20,
            max_header_bytes: 64 << 10,
            header_read_timeout_secs: 10,
            tls_listen: None,
            certificates: Vec::new(),
        }
    }
}

/// `[dbproxy]`: the MySQL-protocol proxy.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DbproxyConfig {
    /// MySQL protocol listener.
    pub listen: ListenAddr,
    /// /healthz, /readyz, /metrics.
    pub admin_listen: ListenAddr,
    /// Control plane URLs; defaults to the local control role when it runs in this process.
    pub control: Vec<String>,
    /// Token from `tessera token create --role dbproxy`, exchanged once for the proxy's
    /// own API credential (kept in `<data_dir>/dbproxy/credential`).
    pub join_token: Option<String>,
    /// Client connections at most; further ones are refused with ER_CON_COUNT_ERROR.
    pub max_connections: usize,
    /// Connections to one backend server at most (all sessions together).
    pub max_backend_connections: usize,
    /// How long a statement waits for a backend connection when all are busy.
    pub backend_wait_ms: u64,
    /// How long connecting and logging in to a backend may take.
    pub backend_connect_timeout_ms: u64,
    /// The local IP backend connections leave from, for MySQL accounts restricted by
    /// host and for firewalls; default: the kernel's choice (the route's address).
    pub backend_source_ip: Option<std::net::IpAddr>,
    /// Statements slower than this are logged (target `tessera::slowquery`); 0 = off.
    pub slow_query_ms: u64,
    /// The largest packet a client may send (MySQL's max_allowed_packet).
    pub max_packet_bytes: usize,
    /// A statement unanswered after this is killed on its server and the client gets
    /// error 3024; 0 = no limit (the default, as MySQL's max_execution_time).
    pub statement_timeout_ms: u64,
    /// The server version string clients see.
    pub server_version: String,
    /// PEM certificate chain offered to MySQL clients that ask for TLS.
    pub tls_cert: Option<PathBuf>,
    /// Its PEM private key.
    pub tls_key: Option<PathBuf>,
    /// Refuse clients that do not switch to TLS (needs `tls_cert`).
    pub require_tls: bool,
}

impl Default for DbproxyConfig {
    fn default() -> Self {
        DbproxyConfig {
            listen: local(3307),
            admin_listen: local(7404),
            control: Vec::new(),
            join_token: None,
            max_connections: 4096,
            max_backend_connections: 256,
            backend_wait_ms: 2_000,
            backend_connect_timeout_ms: 2_000,
            backend_source_ip: None,
            slow_query_ms: 1_000,
            max_packet_bytes: 64 << 20,
            statement_timeout_ms: 0,
            server_version: "8.0.36-tessera".into(),
            tls_cert: None,
            tls_key: None,
            require_tls: false,
        }
    }
}
