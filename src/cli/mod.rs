//! Command-line interface: clap definitions (`args`) and one function per command.
//! Exit codes: 0 ok, 1 operation failed, 2 bad usage or bad input.

mod args;
mod artifact_cmd;
mod client_cmd;
mod config_cmd;
mod demo_app;
mod doctor;
mod logs_cmd;
mod resource_cmd;
mod serve;
mod snapshot_cmd;

pub use args::Cli;

use args::Command;
use std::process::ExitCode;

pub const EXIT_FAILED: u8 = 1;
pub const EXIT_BAD_INPUT: u8 = 2;

/// Runs the parsed command line.
pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Up(a) => serve::up(a, cli.log_format),
        Command::Run(a) => serve::run(a, cli.log_format),
        Command::Config(c) => config_cmd::run(c),
        Command::Token(c) => client_cmd::token(c),
        Command::Members(a) => client_cmd::members(a),
        Command::Snapshot(c) => snapshot_cmd::run(c),
        Command::Apply(a) => resource_cmd::apply(a),
        Command::Get(a) => resource_cmd::get(a),
        Command::Delete(a) => resource_cmd::delete(a),
        Command::Failover(a) => resource_cmd::failover(a),
        Command::Logs(a) => logs_cmd::logs(a),
        Command::Artifact(c) => artifact_cmd::artifact(c),
        Command::Rollback(a) => artifact_cmd::rollback(a),
        Command::User(c) => resource_cmd::user(c),
        Command::Audit(c) => resource_cmd::audit(c),
        Command::DemoApp(a) => demo_app::run(a),
        Command::Doctor(a) => doctor::run(a),
    }
}
