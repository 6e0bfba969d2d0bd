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
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where every role keeps its state
    #[arg(long, default_value = "./tessera-data")]
    pub data_dir: PathBuf,
    /// Also load the demo topology (needs the resource API; until then it is reported as not loaded)
    #[arg(long, hide = true)]
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
