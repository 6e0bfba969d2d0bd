//! The agent role: the control plane's hand on each machine. It enrols for its own
//! credential (`api::enroll`), registers its node and keeps its heartbeat, and runs the
//! VM-mode instances placed on it (`supervisor.rs`) within their resource limits
//! (`limits.rs`), and collects their logs (`logs/`, served as `GET /logs` on its
//! listener to control nodes with a grant). It is ready once the control plane answers.

mod artifacts;
mod limits;
mod logs;
mod pressure;
mod supervisor;
mod tls;

use crate::admin;
use crate::config::Role;
use crate::net::probe;
use crate::role::{bind_tcp, local_addr, Bound, RoleContext, RoleError};
use std::time::Duration;

pub async fn bind(ctx: &RoleContext) -> Result<Bound, RoleError> {
    let cfg = &ctx.config;
    let health = ctx.metrics.health(Role::Agent);
    health.set_not_ready("waiting for the control plane");
    let main = bind_tcp("agent.listen", cfg.agent.listen.0).await?;
    let mut listeners = vec![("api", local_addr(&main, cfg.agent.listen.0))];
    let extra = match cfg.agent.admin_listen.filter(|a| *a != cfg.agent.listen) {
        Some(a) => {
            let l = bind_tcp("agent.admin_listen", a.0).await?;
            listeners.push(("admin", local_addr(&l, a.0)));
            Some(l)
        }
        None => None,
    };
    let urls = ctx.control_urls(&cfg.agent.control);
    let url_strings: Vec<String> = urls
        .iter()
        .map(|u| u.to_string().trim_end_matches('/').to_string())
        .collect();
    let credential = crate::api::enroll::ServiceCredential::for_role(
        "agent",
        cfg,
        url_strings.clone(),
        cfg.agent.join_token.clone(),
    );
    let logs = logs::Logs::open(
        &cfg.node_name,
        cfg.data_dir.join("agent").join("logs"),
        cfg.agent.log_store_mb << 20,
    )
    .map_err(|e| RoleError::Failed {
        role: Role::Agent,
        message: format!(
            "cannot open the log store under {}: {e}",
            cfg.data_dir.display()
        ),
    })?;
    let mut supervisor = supervisor::Supervisor::new(
        cfg.node_name.clone(),
        cfg.zone.clone(),
        cfg.agent.instance_ip,
        cfg.agent.port_range().unwrap_or(20000..=29999),
        cfg.data_dir.join("agent"),
        cfg.agent.stop_workloads_on_exit,
    );
    // Where control nodes reach this agent (for logs): its listener, or the instance
    // address when it listens on every interface.
    let api = local_addr(&main, cfg.agent.listen.0);
    let api_ip = if api.ip().is_unspecified() {
        cfg.agent.instance_ip
    } else {
        api.ip()
    };
    let agent_tls = tls::AgentTls::new(
        cfg.data_dir.join("agent").join("tls"),
        &cfg.node_name,
        vec![api_ip],
    );
    supervisor.agent_api = Some((
        std::net::SocketAddr::new(api_ip, api.port()),
        agent_tls.clone(),
    ));
    supervisor.log_sources = logs.sources.clone();
    // The instances, apps, units and artifacts: listed once, then watched (no polling).
    // The feed reads the credential `work` enrols; it never enrols itself.
    let watched = std::sync::Arc::new(supervisor::Watched::default());
    supervisor.inputs = Some(watched.clone());
    let feed = crate::api::feed::Feed {
        urls: url_strings.clone(),
        credential: crate::api::enroll::ServiceCredential {
            role: "agent",
            node_name: cfg.node_name.clone(),
            urls: url_strings.clone(),
            join_token: None,
            admin_token: None,
            file: cfg.data_dir.join("agent").join("credential"),
            tls_ca: cfg.tls.ca.clone(),
        },
        dir: cfg.data_dir.join("agent"),
        cache_file: "inputs.json",
        kinds: &supervisor::Watched::KINDS,
        install: {
            let w = watched.clone();
            Box::new(move |inputs, source| w.install(inputs, source))
        },
        status: watched.status.clone(),
        // ok: constant, valid name
        reachable: prometheus::IntGauge::new("tessera_agent_feed_connected", "feed")
            .expect("static metric"),
    };
    supervisor.pressure_mb = (cfg.agent.disk_pressure_mb, cfg.agent.memory_pressure_mb);
    supervisor.keep_versions = cfg.agent.keep_versions;
    supervisor.instance_dir_grace = Duration::from_secs(cfg.agent.instance_dir_grace_secs);
    let gauge = ctx.metrics.control_reachable(Role::Agent);
    let admin_router = admin::router(health.clone(), ctx.metrics.clone());
    let router = admin_router.clone().merge(logs.router());
    let log_sinks = cfg.agent.log_sinks.clone();
    let registry = ctx.metrics.registry().clone();
    Ok(Bound::new(Role::Agent, listeners, move |shutdown| {
        Box::pin(async move {
            let probe = tokio::spawn(probe::watch_control(
                Role::Agent,
                urls,
                Duration::from_secs(2),
                gauge,
                Some(health.clone()),
                shutdown.clone(),
            ));
            let collect = tokio::spawn(logs.clone().collect(shutdown.clone()));
            let sinks = logs.forward(&log_sinks, &registry, &shutdown);
            let work = tokio::spawn(work(
                credential,
                url_strings,
                supervisor,
                logs,
                feed,
                agent_tls.clone(),
                shutdown.clone(),
            ));
            // Once the listener has its certificate, logs leave it over mutual TLS only.
            let gate: crate::net::dual::PlainGate = {
                let tls = agent_tls.clone();
                std::sync::Arc::new(move |_, path| {
                    (path == "/logs" && tls.ready()).then(|| {
                        crate::net::dual::https_required(
                            "this agent serves logs over mutual TLS only (https:// with a control member's certificate)",
                        )
                    })
                })
            };
            let serve_main = crate::net::dual::serve(
                "agent",
                main,
                router,
                agent_tls.source(),
                gate,
                shutdown.clone(),
            );
            let result = match extra {
                Some(l) => {
                    let (a, b) = tokio::join!(serve_main, admin::serve(l, admin_router, shutdown));
                    a.and(b)
                }
                None => serve_main.await,
            };
            let _ = probe.await;
            let _ = work.await;
            let _ = collect.await;
            for s in sinks {
                let _ = s.await;
            }
            health.set_not_ready("stopped");
            result.map_err(|source| RoleError::Serve {
                role: Role::Agent,
                what: "listener",
                source,
            })
        })
    }))
}

/// Enrols (retrying while the control plane is away), then supervises until shutdown;
/// a credential the control plane refuses is forgotten and enrolment starts again (the
/// instances keep running meanwhile).
async fn work(
    credential: crate::api::enroll::ServiceCredential,
    urls: Vec<String>,
    mut supervisor: supervisor::Supervisor,
    logs: logs::Logs,
    feed: crate::api::feed::Feed,
    agent_tls: tls::AgentTls,
    shutdown: tokio_util::sync::CancellationToken,
) {
    supervisor.start();
    let mut feed = Some(feed);
    let mut feeding = None;
    let mut backoff = Duration::from_millis(300);
    while !shutdown.is_cancelled() {
        let token = match credential.get(&shutdown).await {
            Ok(Some(t)) => t,
            Ok(None) => break,
            Err(e) => {
                if credential.waiting_for_local_control() {
                    tracing::debug!(error = %e, "Waiting for the local control role");
                } else {
                    tracing::warn!(error = %e, "Agent enrolment failed; retrying");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        logs.set_credential(&token);
        // The credential exists now: the feed can start (once).
        if let Some(f) = feed.take() {
            feeding = Some(tokio::spawn(f.run(shutdown.clone())));
        }
        let Some(url) = urls.first() else { break };
        let client = match crate::api::Client::new(url, Some(token)) {
            Ok(c) => c.with_timeout(Duration::from_secs(10)),
            Err(e) => {
                tracing::error!(error = %e, "Agent cannot use its control URL");
                break;
            }
        };
        // The listener's certificate: asked for before the node is first reported (so
        // `agentApi` is https:// from the start), then kept current alongside.
        if let Err(e) = agent_tls.ensure(&client).await {
            tracing::warn!(error = %e, "Cannot get this agent's listener certificate yet; logs are served over plain HTTP until it comes");
        }
        let keeping = shutdown.child_token();
        let keeper = tokio::spawn(agent_tls.clone().keep(client.clone(), keeping.clone()));
        let ran = supervisor.run(&client, &shutdown).await;
        keeping.cancel();
        let _ = keeper.await;
        match ran {
            Ok(()) => break,
            Err(e) => {
                tracing::error!(error = %e, "The control plane refused this agent's credential; enrolling again (needs a new agent.join_token unless co-located with control)");
                credential.forget();
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                }
            }
        }
    }
    supervisor.finish().await;
    if let Some(f) = feeding {
        let _ = f.await;
    }
}
