//! `tessera up` and `tessera run`: resolve the configuration, start logging, run the roles.

use super::args::{RunArgs, UpArgs};
use super::{EXIT_BAD_INPUT, EXIT_FAILED};
use crate::app::{self, Outcome};
use crate::config::{self, LogFormat, Overrides, Role, RuntimeConfig, Source};
use std::process::ExitCode;

pub fn up(a: UpArgs, log_format: Option<LogFormat>) -> ExitCode {
    let embedded = up_values(&a.data_dir);
    let cfg = match config::resolve(&Source::Embedded(embedded), &Overrides(a.set)) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    serve(cfg, log_format, a.demo)
}

/// What `up` sets over the built-in defaults: every role, a bootstrapping control
/// node, instances stopped with the process, and the data directory.
pub(super) fn up_values(data_dir: &std::path::Path) -> Vec<(String, String)> {
    let roles: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
    vec![
        ("roles".to_string(), format!("[{}]", roles.join(", "))),
        ("control.bootstrap".to_string(), "true".to_string()),
        // One machine, one process: Ctrl-C stops the demo's instances too.
        (
            "agent.stop_workloads_on_exit".to_string(),
            "true".to_string(),
        ),
        (
            "data_dir".to_string(),
            format!(
                "\"{}\"",
                data_dir
                    .display()
                    .to_string()
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
            ),
        ),
    ]
}

/// The demo topology (CONTRACT.md), applied by `up --demo`.
const DEMO: &str = include_str!("demo.yaml");

/// Loads the demo topology through the control API once it answers: the listener
/// file says where it listens, `admin.token` is the credential, and the objects go
/// through `POST /api/v1/apply` like any client's. Bounded; reports what happened.
async fn load_demo(data_dir: std::path::PathBuf) {
    let docs = match crate::model::parse_documents(DEMO) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(error = %e, "The embedded demo topology is invalid");
            return;
        }
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(60);
    let mut last = String::from("the control API did not start");
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        let api = std::fs::read_to_string(data_dir.join("listeners.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
            // Not a file left behind by an earlier run.
            .filter(|v| v["pid"].as_u64() == Some(u64::from(std::process::id())))
            .and_then(|v| v["roles"]["control"]["api"].as_str().map(str::to_string));
        let token = std::fs::read_to_string(data_dir.join("admin.token"))
            .ok()
            .map(|t| t.trim().to_string());
        let (Some(api), Some(token)) = (api, token) else {
            continue;
        };
        let client = match crate::api::Client::new(&format!("http://{api}"), Some(token)) {
            Ok(c) => c,
            Err(e) => {
                last = e.to_string();
                continue;
            }
        };
        match client.apply(&docs).await {
            Ok(r) => {
                tracing::info!(
                    changed = r.changed,
                    revision = r.revision,
                    "Demo topology loaded"
                );
                println!(
                    "demo topology loaded: {} objects ({} changed) at revision {}",
                    r.results.len(),
                    r.changed,
                    r.revision
                );
                return;
            }
            Err(e) if e.is_bad_input() => {
                tracing::error!(error = %e, "The control plane refused the demo topology");
                eprintln!("error: the demo topology was refused: {e}");
                return;
            }
            Err(e) => last = e.to_string(),
        }
    }
    tracing::error!(error = %last, "Could not load the demo topology");
    eprintln!("error: could not load the demo topology within 60 s: {last}");
}

pub fn run(a: RunArgs, log_format: Option<LogFormat>) -> ExitCode {
    match config::resolve(&Source::Profile(a.profile), &Overrides(a.set)) {
        Ok(cfg) => serve(cfg, log_format, false),
        Err(e) => {
            eprint!("{e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

fn serve(cfg: RuntimeConfig, log_format: Option<LogFormat>, demo: bool) -> ExitCode {
    crate::telemetry::init_logging(&cfg.log.level, log_format.unwrap_or(cfg.log.format));
    let mut builder = if cfg.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    builder.enable_all().thread_name("tessera");
    if cfg.worker_threads > 1 {
        builder.worker_threads(cfg.worker_threads);
    }
    let runtime = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let grace = cfg.shutdown_grace;
    if demo {
        runtime.spawn(load_demo(cfg.data_dir.clone()));
    }
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
