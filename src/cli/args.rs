//! clap definitions. Only commands that work are listed; later capabilities add theirs.

use crate::config::LogFormat;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "tessera",
    version = crate::telemetry::VERSION,
    about = "On-prem multi-active PaaS in one binary: control plane, unit gateway, node agent, MySQL proxy",
    propagate_version = true
)]
pub struct Cli {
    /// Log format on stderr (overrides the profile's `log.format`).
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run every role in one process on embedded defaults (127.0.0.1, CONTRACT ports)
    Up(UpArgs),
    /// Run the roles a profile names
    Run(RunArgs),
    /// Work with profiles
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Join tokens for new machines
    #[command(subcommand)]
    Token(TokenCommand),
    /// Control plane members: list (default) or remove
    Members(MembersArgs),
    /// Metadata backup and restore
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Create or update resources from a YAML (or JSON) file, all or nothing
    Apply(ApplyArgs),
    /// List resources of a kind, or show one
    Get(GetArgs),
    /// Delete a resource
    Delete(DeleteArgs),
    /// Move a unit to another zone (its standby zone, usually): gateways then send the
    /// unit's users to its instances there (audited)
    Failover(FailoverArgs),
    /// Users and their API tokens
    #[command(subcommand)]
    User(UserCommand),
    /// The audit trail
    #[command(subcommand)]
    Audit(AuditCommand),
    /// An app's log lines, collected by the agents, from every node it runs on
    Logs(LogsArgs),
    /// Artifacts: the packages VM-mode apps run from
    #[command(subcommand)]
    Artifact(ArtifactCommand),
    /// Run an app's previous artifact again (the one pushed before its current one, or
    /// `--to`); agents keep earlier versions unpacked, so it starts without a download
    Rollback(RollbackArgs),
    /// A small HTTP echo server (the demo's app, and a backend for tests): answers with
    /// its app, unit, zone, version and instance
    DemoApp(DemoAppArgs),
    /// Preflight checks of this machine for the roles a profile (or `up`) would run:
    /// kernel, CPUs, memory, data dir (writable, sync latency, space), listeners free,
    /// open-file limit, cgroups, network settings. Changes nothing; exit 1 on a failure
    Doctor(DoctorArgs),
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// The profile the machine will run (default: what `tessera up` runs)
    #[arg(long, value_name = "FILE")]
    pub profile: Option<PathBuf>,
    /// The data directory to check (default: the profile's, or `up`'s ./tessera-data)
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Override a setting: KEY=VALUE with a dotted key, as `run` takes it
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Output format
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: DoctorOutput,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum DoctorOutput {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The app
    pub app: String,
    /// The artifact to go back to (default: the app's artifact pushed before the current)
    #[arg(long)]
    pub to: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum ArtifactCommand {
    /// Store a package on the control nodes (by its SHA-256) and record it as an
    /// artifact; apps run it by naming the artifact in `spec.artifact`
    Push {
        /// A gzipped tar, a tar, or a single executable
        file: std::path::PathBuf,
        /// The app it is a version of
        #[arg(long)]
        app: String,
        /// Its version (TESSERA_VERSION of the instances that run it)
        #[arg(long = "version", value_name = "VERSION")]
        version: String,
        /// The artifact's name (default: APP-VERSION, dots made dashes)
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The app
    pub app: String,
    /// Only this unit's instances
    #[arg(long)]
    pub unit: Option<String>,
    /// Only this instance
    #[arg(long)]
    pub instance: Option<String>,
    /// Lines read since: a duration back from now (90s, 15m, 2h, 1d) or an RFC 3339 time
    #[arg(long)]
    pub since: Option<String>,
    /// Only lines matching this regular expression
    #[arg(long)]
    pub grep: Option<String>,
    /// The most recent lines, at most (1-10000; default 500)
    #[arg(long)]
    pub limit: Option<usize>,
    /// Keep streaming new lines
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// `text` or `json` (one record per line)
    #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DemoAppArgs {
    /// IP:PORT to listen on (default 127.0.0.1:$PORT, PORT defaulting to 9000)
    #[arg(long)]
    pub listen: Option<String>,
    #[arg(long, env = "TESSERA_APP", default_value = "echo")]
    pub app: String,
    #[arg(long, env = "TESSERA_UNIT", default_value = "-")]
    pub unit: String,
    #[arg(long, env = "TESSERA_ZONE", default_value = "-")]
    pub zone: String,
    #[arg(long = "app-version", env = "TESSERA_VERSION", default_value = "v1")]
    pub version: String,
    /// Instance id (default: the process id)
    #[arg(long, env = "TESSERA_INSTANCE")]
    pub instance: Option<String>,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Multi-document YAML or JSON; `-` reads stdin
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: PathBuf,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// regions, zones, units, shardmaps, clusters, nodes, apps, instances, artifacts,
    /// releases, trafficrules, datasources, users, events, auditevents (singular works too)
    pub kind: String,
    /// One object (default: all of the kind)
    pub name: Option<String>,
    /// Output format
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json", "yaml"])]
    pub output: String,
    /// Label selector, e.g. tier=core,env!=test
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    pub kind: String,
    pub name: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct FailoverArgs {
    /// The unit
    pub unit: String,
    /// The zone it moves to
    #[arg(long = "to", value_name = "ZONE")]
    pub to: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user and print its API token (shown once)
    Create {
        name: String,
        /// admin, operator, approver or viewer
        #[arg(long)]
        role: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Issue another API token for a user
    Token {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List users
    List {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Delete a user and every token of it
    Delete {
        name: String,
        #[command(flatten)]
        client: ClientArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Fetch the whole audit trail and check its hash chain; exit 1 naming the first
    /// broken event
    Verify {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List audit events, oldest first, filtered
    List(AuditListArgs),
}

#[derive(Debug, Args)]
pub struct AuditListArgs {
    /// Only this kind (e.g. units)
    #[arg(long)]
    pub kind: Option<String>,
    /// Only this object name
    #[arg(long)]
    pub name: Option<String>,
    /// Only this user
    #[arg(long)]
    pub user: Option<String>,
    /// From this time (RFC 3339, e.g. 2026-11-22T08:00:00Z)
    #[arg(long)]
    pub since: Option<String>,
    /// Until this time (RFC 3339)
    #[arg(long)]
    pub until: Option<String>,
    /// Output format
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json", "yaml"])]
    pub output: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Save a consistent, checksummed backup of the control plane's store to FILE
    Save(SnapshotSaveArgs),
    /// Check FILE and stage it in a fresh data dir; the next start of a node with
    /// `bootstrap = true` on that data dir creates a new cluster from it
    Restore(SnapshotRestoreArgs),
}

#[derive(Debug, Args)]
pub struct SnapshotSaveArgs {
    /// Where to write the backup (it holds the cluster CA key: it is written 0600)
    pub file: PathBuf,
    /// Give up after this long: 30s, 10m
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub timeout: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct SnapshotRestoreArgs {
    /// A file written by `tessera snapshot save`
    pub file: PathBuf,
    /// The data dir of the node that will start the new cluster (must hold no store yet)
    #[arg(long, default_value = "./tessera-data")]
    pub data_dir: PathBuf,
}

/// How client commands find the control plane and their credential.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Control plane URL
    #[arg(long, env = "TESSERA_SERVER", default_value = "http://127.0.0.1:7400")]
    pub server: String,
    /// API token (default: TESSERA_TOKEN, then <data-dir>/admin.token)
    #[arg(long, env = "TESSERA_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Where `up` or the first control node wrote admin.token
    #[arg(long, default_value = "./tessera-data")]
    pub data_dir: PathBuf,
    /// PEM CA that an https:// server's certificate must chain to (default:
    /// <data-dir>/control/pki/ca.pem, the cluster CA on a control node)
    #[arg(long, env = "TESSERA_CA")]
    pub ca: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create a single-use join token for a new machine of ROLE
    Create(TokenCreateArgs),
}

#[derive(Debug, Args)]
pub struct TokenCreateArgs {
    /// control, agent, gateway or dbproxy
    #[arg(long)]
    pub role: String,
    /// How long the token is valid: 90s, 30m, 1h, 2d (at most 7d)
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Args)]
pub struct MembersArgs {
    #[command(subcommand)]
    pub command: Option<MembersCommand>,
    /// Output format
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

#[derive(Debug, Subcommand)]
pub enum MembersCommand {
    /// Remove a member (by name or id) from the cluster
    Remove { name: String },
}

/// `90s`, `30m`, `1h`, `2d` or plain seconds, to seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a duration like 90s, 30m, 1h or 2d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("`{unit}` is not a unit: use s, m, h or d")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("`{s}` is out of range"))
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where every role keeps its state
    #[arg(long, default_value = "./tessera-data")]
    pub data_dir: PathBuf,
    /// Also load the demo topology (regions hangzhou/shanghai, units rz00/rz01/gz00, app echo)
    #[arg(long)]
    pub demo: bool,
    /// Override a setting: KEY=VALUE with a dotted key, e.g. gateway.listen=127.0.0.1:18080
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The profile (TOML) naming this process's roles and settings
    #[arg(long, value_name = "FILE")]
    pub profile: PathBuf,
    /// Override a setting: KEY=VALUE with a dotted key, e.g. control.listen=10.0.0.5:7400
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate a profile: exit 0 when valid, 2 naming file, key and problem otherwise
    Check(CheckArgs),
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// The profile to check
    #[arg(long, value_name = "FILE")]
    pub profile: PathBuf,
    /// Check with these overrides applied, as `run --set` would
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Print the effective configuration (TOML) after the check
    #[arg(long)]
    pub print: bool,
}
