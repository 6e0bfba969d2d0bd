//! The composition root: bind every enabled role, announce what listens where, run them
//! on one runtime, and on SIGINT/SIGTERM drain them in reverse order (gateway and dbproxy
//! first, then the agent, control last) within `shutdown_grace`.

use crate::config::{Role, RuntimeConfig};
use crate::role::{Bound, RoleContext, RoleError};
use crate::telemetry::Metrics;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Why the process stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A signal asked for it and every role drained in time.
    Stopped,
    /// A signal asked for it, but some role did not drain within the grace period.
    DrainTimedOut,
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot prepare data_dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Role(#[from] RoleError),
    #[error("{role} stopped unexpectedly")]
    Exited { role: Role },
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

/// Binds, announces, runs and drains the enabled roles.
pub async fn run(config: RuntimeConfig) -> Result<Outcome, AppError> {
    prepare_data_dir(&config.data_dir)?;
    let metrics = Metrics::new(&config.node_name);
    let mut ctx = RoleContext {
        config: config.clone(),
        metrics,
        local_control: None,
    };

    // `roles` is in start order: control binds first, so co-located roles learn its address.
    let mut bound: Vec<Bound> = Vec::new();
    for role in &config.roles {
        let b = bind_role(*role, &ctx).await?;
        if b.role == Role::Control {
            ctx.local_control = b.listeners.first().map(|(_, a)| *a);
        }
        bound.push(b);
    }
    announce(&config, &bound);
    let listeners_file = config.data_dir.join("listeners.json");
    write_listeners(&listeners_file, &config, &bound);

    let mut sigterm = signal(SignalKind::terminate()).map_err(AppError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(AppError::Signals)?;

    let mut tokens: BTreeMap<Role, CancellationToken> = BTreeMap::new();
    let mut tasks = JoinSet::new();
    for b in bound {
        let token = CancellationToken::new();
        tokens.insert(b.role, token.clone());
        let role = b.role;
        tasks.spawn(async move { (role, b.run(token).await) });
    }

    let failure = tokio::select! {
        _ = sigterm.recv() => { tracing::info!(signal = "SIGTERM", "Shutting down"); None }
        _ = sigint.recv() => { tracing::info!(signal = "SIGINT", "Shutting down"); None }
        Some(done) = tasks.join_next() => Some(match done {
            Ok((role, Ok(()))) => AppError::Exited { role },
            Ok((_, Err(e))) => AppError::Role(e),
            Err(e) => AppError::Role(RoleError::Failed { role: Role::Control, message: format!("role task panicked: {e}") }),
        }),
    };
    if let Some(e) = &failure {
        tracing::error!(error = %e, "A role failed; stopping the others");
    }

    let drained = tokio::select! {
        d = drain(&mut tasks, &tokens, config.shutdown_grace) => d,
        _ = sigint.recv() => { tracing::warn!("Second signal: stopping without draining"); false }
        _ = sigterm.recv() => { tracing::warn!("Second signal: stopping without draining"); false }
    };
    tasks.abort_all();
    let _ = std::fs::remove_file(&listeners_file);
    match failure {
        Some(e) => Err(e),
        None if drained => Ok(Outcome::Stopped),
        None => Ok(Outcome::DrainTimedOut),
    }
}

async fn bind_role(role: Role, ctx: &RoleContext) -> Result<Bound, RoleError> {
    match role {
        Role::Control => crate::control::bind(ctx).await,
        Role::Agent => crate::agent::bind(ctx).await,
        Role::Gateway => crate::gateway::bind(ctx).await,
        Role::Dbproxy => crate::dbproxy::bind(ctx).await,
    }
}

/// Cancels roles tier by tier (edge first, control last) and waits for each tier, all
/// within `grace`. Returns false when the grace period ran out.
async fn drain(
    tasks: &mut JoinSet<(Role, Result<(), RoleError>)>,
    tokens: &BTreeMap<Role, CancellationToken>,
    grace: Duration,
) -> bool {
    let deadline = tokio::time::Instant::now() + grace;
    let tiers: [&[Role]; 3] = [
        &[Role::Gateway, Role::Dbproxy],
        &[Role::Agent],
        &[Role::Control],
    ];
    let mut running: Vec<Role> = tokens.keys().copied().collect();
    for tier in tiers {
        let mut waiting: Vec<Role> = running
            .iter()
            .copied()
            .filter(|r| tier.contains(r))
            .collect();
        for r in &waiting {
            tokens[r].cancel();
        }
        while !waiting.is_empty() {
            match tokio::time::timeout_at(deadline, tasks.join_next()).await {
                Ok(Some(Ok((role, result)))) => {
                    if let Err(e) = result {
                        tracing::warn!(%role, error = %e, "Role reported an error while stopping");
                    }
                    tracing::info!(%role, "Role stopped");
                    waiting.retain(|r| *r != role);
                    running.retain(|r| *r != role);
                }
                Ok(Some(Err(e))) => {
                    tracing::warn!(error = %e, "Role task ended abnormally");
                }
                Ok(None) => return true,
                Err(_) => {
                    tracing::error!(still_running = ?running, grace_secs = grace.as_secs(), "Drain timed out");
                    return false;
                }
            }
        }
    }
    true
}

fn prepare_data_dir(dir: &std::path::Path) -> Result<(), AppError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |source| AppError::DataDir {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(err)
}

/// One line per listener on stdout (for people), one log event each (for machines).
fn announce(config: &RuntimeConfig, bound: &[Bound]) {
    println!(
        "tessera {} on node {} (data dir {})",
        crate::telemetry::VERSION,
        config.node_name,
        config.data_dir.display()
    );
    for b in bound {
        for (what, addr) in &b.listeners {
            tracing::info!(role = %b.role, listener = what, %addr, "Listening");
            let shown = match *what {
                "mysql" => format!("mysql://{addr}"),
                "peer" => format!("{addr} (Raft peers over mutual TLS; joining nodes over TLS)"),
                _ => format!("http://{addr}/"),
            };
            println!("  {:<8} {:<9} {}", b.role.as_str(), what, shown);
        }
    }
    if let Some(c) = bound.iter().find(|b| b.role == Role::Control) {
        if let Some((_, addr)) = c.listeners.first() {
            println!("console and API: http://{addr}/");
            println!(
                "admin token: {}",
                config.data_dir.join("admin.token").display()
            );
        }
    }
    println!("Ctrl-C stops every role.");
}

/// `<data_dir>/listeners.json`: the bound addresses, written once every role is bound,
/// so scripts and tests that used port 0 can find the real ports.
fn write_listeners(path: &std::path::Path, config: &RuntimeConfig, bound: &[Bound]) {
    let roles: serde_json::Map<String, serde_json::Value> = bound
        .iter()
        .map(|b| {
            let l: serde_json::Map<String, serde_json::Value> = b
                .listeners
                .iter()
                .map(|(w, a)| (w.to_string(), json!(a.to_string())))
                .collect();
            (b.role.as_str().to_string(), serde_json::Value::Object(l))
        })
        .collect();
    let doc = json!({"pid": std::process::id(), "node": config.node_name, "roles": roles});
    let tmp = path.with_extension("json.tmp");
    let result = std::fs::write(&tmp, doc.to_string()).and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "Cannot write listeners file");
    }
}
