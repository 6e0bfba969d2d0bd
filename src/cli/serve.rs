//! `tessera up` and `tessera run`: resolve the configuration, start logging, run the roles.

use super::args::{RunArgs, UpArgs};
use super::{EXIT_BAD_INPUT, EXIT_FAILED};
use crate::app::{self, Outcome};
use crate::config::{self, LogFormat, Overrides, Role, RuntimeConfig, Source};
use std::process::ExitCode;

pub fn up(a: UpArgs, log_format: Option<LogFormat>) -> ExitCode {
    let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    let embedded = vec![
        ("roles".to_string(), format!("[{}]", roles.join(", "))),
        ("control.bootstrap".to_string(), "true".to_string()),
        (
            "data_dir".to_string(),
            format!(
                "\"{}\"",
                a.data_dir
                    .display()
                    .to_string()
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
            ),
        ),
    ];
    let cfg = match config::resolve(&Source::Embedded(embedded), &Overrides(a.set)) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    if a.demo {
        println!("note: the demo topology is not loaded yet: it needs the resource API (regions, units, apps), which this build does not have");
    }
    serve(cfg, log_format)
}

pub fn run(a: RunArgs, log_format: Option<LogFormat>) -> ExitCode {
    match config::resolve(&Source::Profile(a.profile), &Overrides(a.set)) {
        Ok(cfg) => serve(cfg, log_format),
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

fn serve(cfg: RuntimeConfig, log_format: Option<LogFormat>) -> ExitCode {
    crate::telemetry::init_logging(&cfg.log.level, log_format.unwrap_or(cfg.log.format));
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tessera")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let grace = cfg.shutdown_grace;
    let result = runtime.block_on(app::run(cfg));
    // Tasks still blocked after the drain (e.g. a stuck connection) must not hold the exit.
    runtime.shutdown_timeout(grace.min(std::time::Duration::from_secs(1)));
    match result {
        Ok(Outcome::Stopped) => {
            tracing::info!("Stopped");
            ExitCode::SUCCESS
        }
        Ok(Outcome::DrainTimedOut) => {
            eprintln!(
                "error: some roles did not stop within shutdown_grace_secs; stopped them anyway"
            );
            ExitCode::from(EXIT_FAILED)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_FAILED)
        }
    }
}
