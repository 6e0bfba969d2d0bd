//! The control role: the Raft-replicated store (`store`, the only importer of rocksdb and
//! openraft) and the REST API (`http`). The API listener serves the admin endpoints too;
//! the peer listener carries Raft RPCs between control nodes.

mod api_listener;
mod certs;
mod console;
pub mod housekeeping;
mod http;
mod join;
mod metrics;
pub mod store;

use crate::admin;
use crate::config::Role;
use crate::pki::{Ca, NodeTls, TlsHandle};
use crate::role::{bind_tcp, local_addr, local_url, Bound, RoleContext, RoleError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use store::types::NodeInfo;
use store::{RaftNode, RaftSettings, Store};

fn failed(message: impl std::fmt::Display) -> RoleError {
    RoleError::Failed {
        role: Role::Control,
        message: message.to_string(),
    }
}

/// Opens the store, binds the API and peer listeners, and starts Raft.
pub async fn bind(ctx: &RoleContext) -> Result<Bound, RoleError> {
    let cfg = &ctx.config;
    let health = ctx.metrics.health(Role::Control);
    let store_dir = cfg.data_dir.join("control").join("store");
    let store = {
        let dir = store_dir.clone();
        let node = cfg.node_name.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir, &node))
            .await
            .map_err(|e| failed(format!("store open task: {e}")))?
            .map_err(failed)?
    };
    tracing::info!(path = %store_dir.display(), node_id = store.node_id(), "Store opened");

    let api = bind_tcp("control.listen", cfg.control.listen.0).await?;
    let api_addr = local_addr(&api, cfg.control.listen.0);
    let peer = bind_tcp("control.peer_listen", cfg.control.peer_listen.0).await?;
    let peer_addr = local_addr(&peer, cfg.control.peer_listen.0);
    let mut listeners = vec![("api", api_addr), ("peer", peer_addr)];
    let extra_admin = match cfg
        .control
        .admin_listen
        .filter(|a| *a != cfg.control.listen)
    {
        Some(a) => {
            let l = bind_tcp("control.admin_listen", a.0).await?;
            listeners.push(("admin", local_addr(&l, a.0)));
            Some(l)
        }
        None => None,
    };

    let info = NodeInfo {
        name: cfg.node_name.clone(),
        api: cfg
            .control
            .api_advertise
            .clone()
            .map(|u| u.trim_end_matches('/').to_string())
            .unwrap_or_else(|| local_url(api_addr)),
        peer: match cfg.control.peer_advertise {
            Some(a) => a.to_string(),
            None => local_url(peer_addr)
                .trim_start_matches("http://")
                .to_string(),
        },
        zone: cfg.zone.clone(),
    };
    // Outgoing connections leave from the listeners' own IPs when they are specific.
    let specific = |ip: std::net::IpAddr| (!ip.is_unspecified()).then_some(ip);
    let settings = RaftSettings {
        heartbeat: Duration::from_millis(cfg.control.heartbeat_ms),
        election_min: Duration::from_millis(cfg.control.election_timeout_min_ms),
        election_max: Duration::from_millis(cfg.control.election_timeout_max_ms),
        snapshot_logs: cfg.control.snapshot_logs,
        source: specific(peer_addr.ip()),
    };
    let control_dir = cfg.data_dir.join("control");
    let pki_dir = control_dir.join("pki");
    restore_staged(cfg, &store, &info, &control_dir).await?;
    let tls = TlsHandle::default();
    let ca =
        setup_pki(cfg, &store, &info, &pki_dir, &control_dir.join("ca"), &tls).map_err(failed)?;
    let api_tls = tls.clone();
    let plain_http = cfg.control.api_plain_http;
    let kek = match &cfg.control.kek_file {
        Some(f) => {
            Some(crate::config::read_kek(f).map_err(|e| failed(format!("control.kek_file: {e}")))?)
        }
        None => None,
    };
    let node = RaftNode::start(store, info, &settings, cfg.control.bootstrap, tls)
        .await
        .map_err(failed)?;
    health.set_not_ready("waiting for a Raft leader");

    let clock = housekeeping::LeaseClock::default();
    let http::Routers {
        api: router,
        join: join_router,
        forwarded,
    } = http::routers(
        node.clone(),
        clock.clone(),
        console::Console::new(cfg.control.console_dir.clone()),
        kek,
    );
    let router = router.merge(admin::router(health.clone(), ctx.metrics.clone()));
    let history_revisions = cfg.control.history_revisions;
    let registry = ctx.metrics.registry().clone();
    let router = http::with_metrics(router, &registry);
    let retention = http::Retention {
        max_age: std::time::Duration::from_secs(cfg.control.event_retention_secs),
        max_count: cfg.control.event_retention_max,
    };
    let pruned = prometheus::IntCounter::new(
        "tessera_control_events_pruned_total",
        "Node events deleted by retention (age or count).",
    )
    .expect("static metric"); // ok: constant, valid name
    let _ = registry.register(Box::new(pruned.clone()));
    let blob_gc = http::BlobGc {
        every: std::time::Duration::from_secs(cfg.control.blob_gc_interval_secs),
        grace: std::time::Duration::from_secs(cfg.control.blob_grace_secs),
        scrub_every: (cfg.control.blob_scrub_interval_secs > 0)
            .then(|| std::time::Duration::from_secs(cfg.control.blob_scrub_interval_secs)),
        scrub_rate: cfg.control.blob_scrub_mb_per_sec << 20,
    };
    let blob_metrics = http::BlobMetrics {
        // ok: constant, valid names
        deleted: prometheus::IntCounter::new(
            "tessera_control_blobs_deleted_total",
            "Artifact blobs (and unfinished uploads) no artifact names, deleted from this node's disk.",
        )
        .expect("static metric"),
        bytes: prometheus::IntGauge::new(
            "tessera_control_blobs_bytes",
            "Bytes of artifact blobs on this node's disk (as of the last collection pass).",
        )
        .expect("static metric"),
        scrub_checked: prometheus::IntCounter::new(
            "tessera_control_blob_scrub_checked_total",
            "Artifact blobs read back and checked against their digest by scrub passes on this node.",
        )
        .expect("static metric"),
        scrub_corrupt: prometheus::IntCounter::new(
            "tessera_control_blob_scrub_corrupt_total",
            "Stored blobs on this node found not to match their digest (moved to blobs/corrupt/).",
        )
        .expect("static metric"),
    };
    let _ = registry.register(Box::new(blob_metrics.deleted.clone()));
    let _ = registry.register(Box::new(blob_metrics.bytes.clone()));
    let _ = registry.register(Box::new(blob_metrics.scrub_checked.clone()));
    let _ = registry.register(Box::new(blob_metrics.scrub_corrupt.clone()));
    // Certificates from `[tls]` files are the operator's; generated ones renew here.
    let renew = (cfg.tls.cert.is_none()).then(|| (pki_dir.clone(), cfg.control.cert_renew_days));
    let admin_router = admin::router(health.clone(), ctx.metrics.clone());
    let bootstrap = cfg.control.bootstrap;
    let data_dir = cfg.data_dir.clone();
    let join = (!cfg.control.join.is_empty()).then(|| {
        (
            cfg.control.join.clone(),
            cfg.control.join_token.clone().unwrap_or_default(),
        )
    });
    Ok(Bound::new(Role::Control, listeners, move |shutdown| {
        Box::pin(async move {
            let serve_peer = {
                let (node, shutdown) = (node.clone(), shutdown.clone());
                tokio::spawn(async move {
                    node.serve_peers(peer, join_router, forwarded, shutdown)
                        .await
                })
            };
            let chores = tokio::spawn(housekeeping::run(
                node.clone(),
                clock.clone(),
                history_revisions,
                shutdown.clone(),
            ));
            let gauges = tokio::spawn(metrics::run(node.clone(), registry, shutdown.clone()));
            let reconcilers = tokio::spawn(http::reconcile(
                node.clone(),
                clock.clone(),
                retention,
                pruned,
                (blob_gc, blob_metrics),
                shutdown.clone(),
            ));
            let renewals = renew.map(|(dir, days)| {
                tokio::spawn(certs::run(node.clone(), dir, days, shutdown.clone()))
            });
            let joined = Arc::new(AtomicBool::new(join.is_none()));
            let readiness = tokio::spawn(track_readiness(
                node.clone(),
                health.clone(),
                bootstrap,
                ca,
                joined.clone(),
                data_dir,
                shutdown.clone(),
            ));
            let serve_api = async {
                match extra_admin {
                    Some(l) => {
                        let (a, b) = tokio::join!(
                            api_listener::serve(api, router, api_tls, plain_http, shutdown.clone()),
                            admin::serve(l, admin_router, shutdown.clone())
                        );
                        a.and(b)
                    }
                    None => {
                        api_listener::serve(api, router, api_tls, plain_http, shutdown.clone())
                            .await
                    }
                }
                .map_err(|source| RoleError::Serve {
                    role: Role::Control,
                    what: "API listener",
                    source,
                })
            };
            // A joining node serves its peer listener (the leader replicates to it while
            // admitting it) and fails the role if the cluster refuses it.
            let joining = async {
                match join {
                    Some((urls, token)) => {
                        join::join_cluster(&node, &urls, &token, &pki_dir, &shutdown)
                            .await
                            .map_err(failed)?;
                        joined.store(true, Ordering::SeqCst);
                        std::future::pending::<Result<(), RoleError>>().await
                    }
                    None => std::future::pending().await,
                }
            };
            let result = tokio::select! {
                r = serve_api => r,
                Err(e) = joining => Err(e),
            };
            health.set_not_ready("stopped");
            readiness.abort();
            chores.abort();
            gauges.abort();
            reconcilers.abort();
            if let Some(r) = renewals {
                r.abort();
            }
            // Raft stops after the API so in-flight requests could finish; peers see us leave.
            node.shutdown().await;
            shutdown.cancel();
            let _ = serve_peer.await;
            result
        })
    }))
}

/// Where `tessera snapshot restore` stages a backup for the node's first start.
pub const STAGED_RESTORE: &str = "restore.snap";

/// Applies a staged backup to a fresh store: the node starts as the only member of a new
/// cluster holding the backup's data at its revision, with the backed-up cluster CA (so
/// join tokens and certificates keep working as before).
async fn restore_staged(
    cfg: &crate::config::RuntimeConfig,
    store: &Store,
    info: &NodeInfo,
    control_dir: &std::path::Path,
) -> Result<(), RoleError> {
    let staged = control_dir.join(STAGED_RESTORE);
    if !staged.exists() {
        return Ok(());
    }
    if !cfg.control.bootstrap {
        return Err(failed(format!(
            "{} holds a staged restore: start this node with `bootstrap = true` to create the new cluster from it",
            staged.display()
        )));
    }
    let (store, info, path, ca_dir) = (
        store.clone(),
        info.clone(),
        staged.clone(),
        control_dir.join("ca"),
    );
    let done = tokio::task::spawn_blocking(move || -> Result<(u64, usize), String> {
        // Checked whole first, then read line by line (never whole in memory).
        let checked = store::backup::check_file(&path)?;
        let file = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let body = std::io::BufReader::new(std::io::Read::take(file, checked.bytes));
        let restored = store.restore(body, info)?;
        // The backup carries the cluster CA; this node keeps using it.
        if let (Some(kv), None) = (
            store.get(http::join::CA_KEY)?.0,
            Ca::load(&ca_dir).map_err(|e| e.to_string())?,
        ) {
            let ca: http::join::StoredCa = serde_json::from_str(&kv.value)
                .map_err(|e| format!("the backed-up CA record: {e}"))?;
            Ca {
                cert_pem: ca.cert,
                key_pem: ca.key,
            }
            .save(&ca_dir)
            .map_err(|e| e.to_string())?;
        }
        let applied = path.with_extension("snap.applied");
        std::fs::rename(&path, &applied).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(restored)
    })
    .await
    .map_err(|e| failed(format!("restore task: {e}")))?
    .map_err(|e| failed(format!("restoring {}: {e}", staged.display())))?;
    tracing::info!(
        revision = done.0,
        keys = done.1,
        "Restored the store from a backup; this node is the only member of a new cluster"
    );
    Ok(())
}

/// Ready while a leader is known, once a joining node has been admitted. The bootstrap
/// node registers the admin token once it can write.
async fn track_readiness(
    node: RaftNode,
    health: crate::telemetry::Health,
    bootstrap: bool,
    ca: Option<Ca>,
    joined: Arc<AtomicBool>,
    data_dir: std::path::PathBuf,
    shutdown: tokio_util::sync::CancellationToken,
) {
    // admin.token is written only after its hash is committed, so its presence means the
    // registration is done (a restarted bootstrap node need not be the leader to be ready).
    let mut token_done = !bootstrap || data_dir.join("admin.token").exists();
    // The bootstrap node's store id becomes the cluster's id, registered once.
    let mut id_done = !bootstrap
        || node
            .store()
            .get(store::CLUSTER_ID_KEY)
            .map(|(kv, _)| kv.is_some())
            .unwrap_or(false);
    // The CA is registered once; a node holding it checks the store until it is there.
    let mut ca_done = ca.is_none()
        || node
            .store()
            .get(http::join::CA_KEY)
            .map(|(kv, _)| kv.is_some())
            .unwrap_or(false);
    let mut fatal_logged = false;
    loop {
        if let Some(e) = node.fatal() {
            // Terminal until a restart: this node neither votes nor writes any more.
            if !fatal_logged {
                tracing::error!(cause = %e, "Raft stopped on this node; fix the cause (a full disk: free space) and restart the node: every acknowledged write is on disk");
                fatal_logged = true;
            }
            health.set_not_ready(format!(
                "Raft stopped after {e} (restart the node once the cause is fixed)"
            ));
        } else if !joined.load(Ordering::SeqCst) {
            health.set_not_ready("joining the cluster");
        } else if node.has_leader() {
            if let (Some(c), false, true) = (&ca, ca_done, node.is_leader()) {
                match http::join::register_ca(&node, c).await {
                    Ok(()) => ca_done = true,
                    Err(e) => tracing::warn!(error = %e, "Cannot register the CA yet"),
                }
            }
            if !id_done && node.is_leader() {
                let id = node.store().local_id().to_string();
                match node
                    .write(store::types::Command::Txn {
                        compare: vec![store::types::Compare {
                            key: store::CLUSTER_ID_KEY.into(),
                            op: store::types::CompareOp::Equal,
                            target: store::types::CompareTarget::CreateRevision(0),
                        }],
                        success: vec![store::types::Op::Put {
                            key: store::CLUSTER_ID_KEY.into(),
                            value: id,
                            lease: 0,
                        }],
                        failure: vec![],
                    })
                    .await
                {
                    Ok(_) => id_done = true,
                    Err(e) => tracing::warn!(error = %e, "Cannot register the cluster id yet"),
                }
            }
            if !token_done && node.is_leader() {
                match http::auth::ensure_admin_token(&node, &data_dir).await {
                    Ok(()) => token_done = true,
                    Err(e) => tracing::warn!(error = %e, "Cannot register the admin token yet"),
                }
            }
            if token_done && ca_done && id_done {
                // A leader is ready once a quorum confirms it: a restarted node leads
                // briefly on its old vote before it hears of a newer term.
                let confirmed = !node.is_leader()
                    || tokio::time::timeout(Duration::from_secs(1), node.linearize())
                        .await
                        .is_ok_and(|r| r.is_ok());
                if confirmed {
                    health.set_ready();
                } else {
                    health.set_not_ready("leadership not yet confirmed by a quorum");
                }
            }
        } else {
            health.set_not_ready("no Raft leader known");
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// Loads or creates this node's certificates. The bootstrap node creates the cluster CA
/// (kept in `control/ca`, registered in the store once it leads) and signs its own
/// certificate; a joining node gets one during the join; `[tls]` files override both.
/// Returns the CA when this node holds it.
fn setup_pki(
    cfg: &crate::config::RuntimeConfig,
    store: &Store,
    info: &NodeInfo,
    pki_dir: &std::path::Path,
    ca_dir: &std::path::Path,
    tls: &TlsHandle,
) -> Result<Option<Ca>, String> {
    let mut ca = Ca::load(ca_dir).map_err(|e| e.to_string())?;
    let mut node_tls = match (&cfg.tls.ca, &cfg.tls.cert, &cfg.tls.key) {
        (Some(ca), Some(cert), Some(key)) => {
            Some(NodeTls::load_files(ca, cert, key).map_err(|e| e.to_string())?)
        }
        _ => NodeTls::load(pki_dir).map_err(|e| e.to_string())?,
    };
    if ca.is_none() && node_tls.is_none() && cfg.control.bootstrap {
        let new = Ca::generate(store.local_id()).map_err(|e| e.to_string())?;
        new.save(ca_dir).map_err(|e| e.to_string())?;
        tracing::info!(dir = %ca_dir.display(), fingerprint = %new.fingerprint().unwrap_or_default(), "Created the cluster CA");
        ca = Some(new);
    }
    if let (None, Some(ca)) = (&node_tls, &ca) {
        let ips: Vec<std::net::IpAddr> =
            [info.api.trim_start_matches("http://"), info.peer.as_str()]
                .iter()
                .filter_map(|a| a.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
                .collect();
        let t = ca.issue(&info.name, &ips).map_err(|e| e.to_string())?;
        t.save(pki_dir).map_err(|e| e.to_string())?;
        node_tls = Some(t);
    }
    if let Some(t) = &node_tls {
        tls.set(t)
            .map_err(|e| format!("TLS material in {}: {e}", pki_dir.display()))?;
    }
    Ok(ca)
}
