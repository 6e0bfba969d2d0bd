//! The dbproxy role: a MySQL-protocol proxy that routes each statement to the shard
//! owning its rows, by the same slot function and shard map as the gateway.
//!
//! - `wire.rs`: packets, handshake, OK/ERR/EOF, password scrambles (pure, fuzzed).
//! - `sql.rs`: what a statement means for routing (sqlparser, MySQL dialect).
//! - `topology.rs`: data sources, shards and proxy users from the control plane.
//! - `backend.rs`: backend connections (results relayed undecoded) and their pools.
//! - `session.rs`: one client: login, routing, transactions, read/write splitting;
//!   `session/prepared_cmds.rs` prepared statements, `session/multi.rs` what spans shards.
//! - `merge.rs`: ORDER BY / LIMIT over the rows of a SELECT scattered over shards.
//! - `prepared.rs`: prepared statements (the proxy's ids, EXECUTE parameter decoding).
//! - `metrics.rs`: `tessera_dbproxy_*`.
//! - `report.rs`: server health reported to the control plane (DataSource status).
//! - `failover.rs`: automatic promotion of a replica when a primary stays unreachable.
//!
//! Inputs come from `crate::api::feed` (list + watch of `zones units shardmaps
//! datasources`, cached in `<data_dir>/dbproxy/datasources.json`). A checker pings every
//! backend server every 2 s and reads each replica's lag.

mod backend;
mod failover;
mod merge;
mod metrics;
mod prepared;
mod report;
mod session;
mod sql;
mod topology;
pub mod wire;
mod xa;

use crate::admin;
use crate::api::feed::{Feed, FeedStatus};
use crate::config::Role;
use crate::role::{bind_tcp, local_addr, Bound, RoleContext, RoleError};
use arc_swap::ArcSwap;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use backend::Backend;
use serde_json::json;
use session::Shared;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use topology::{PoolSettings, Pools, Topology};

const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Calls the control plane with this proxy's credential (the file the feed enrolled
/// into), trying each URL until one answers with success. Err: (HTTP status of the last
/// answer, if any, and what went wrong).
async fn call_control(
    urls: &[String],
    credential: &std::path::Path,
    method: http::Method,
    path: &str,
    body: &serde_json::Value,
    timeout: Duration,
) -> Result<serde_json::Value, (Option<u16>, String)> {
    let token = std::fs::read_to_string(credential)
        .map_err(|e| (None, format!("no credential yet ({e})")))?;
    let mut last = (None, String::from("no control URL"));
    for url in urls {
        let client = match crate::api::Client::new(url, Some(token.trim().to_string())) {
            Ok(c) => c.with_timeout(timeout),
            Err(e) => {
                last = (None, format!("{url}: {e}"));
                continue;
            }
        };
        match client.call(method.clone(), path, Some(body)).await {
            Ok(v) => return Ok(v),
            Err(e) => last = (e.status(), format!("{url}: {e}")),
        }
    }
    Err(last)
}

pub async fn bind(ctx: &RoleContext) -> Result<Bound, RoleError> {
    let cfg = &ctx.config;
    let d = cfg.dbproxy.clone();
    let health = ctx.metrics.health(Role::Dbproxy);
    let mysql = bind_tcp("dbproxy.listen", d.listen.0).await?;
    if let Some(ip) = d.backend_source_ip {
        // Not an address of this machine: every backend connection would fail; say so now.
        let probe = std::net::SocketAddr::new(ip, 0);
        std::net::TcpListener::bind(probe).map_err(|e| RoleError::Failed {
            role: Role::Dbproxy,
            message: format!(
                "dbproxy.backend_source_ip {ip} cannot be used as a source address here: {e}"
            ),
        })?;
    }
    let admin_l = bind_tcp("dbproxy.admin_listen", d.admin_listen.0).await?;
    let listeners = vec![
        ("mysql", local_addr(&mysql, d.listen.0)),
        ("admin", local_addr(&admin_l, d.admin_listen.0)),
    ];
    let tls = match (&d.tls_cert, &d.tls_key) {
        (Some(cert), Some(key)) => {
            Some(
                tls_acceptor(cert, key).map_err(|message| RoleError::Failed {
                    role: Role::Dbproxy,
                    message: format!("dbproxy.tls_cert/tls_key: {message}"),
                })?,
            )
        }
        _ => None,
    };
    let shared = Arc::new(Shared {
        topology: ArcSwap::from_pointee(Topology::default()),
        tls,
        require_tls: d.require_tls,
        metrics: metrics::DbMetrics::new(ctx.metrics.registry()),
        next_id: AtomicU32::new(1),
        version: d.server_version.clone(),
        slow_query: (d.slow_query_ms > 0).then(|| Duration::from_millis(d.slow_query_ms)),
        max_packet: d.max_packet_bytes,
        statement_timeout: (d.statement_timeout_ms > 0)
            .then(|| Duration::from_millis(d.statement_timeout_ms)),
        rr: AtomicUsize::new(0),
        xa: Arc::new(xa::Coordinator::new(
            &cfg.node_name,
            Some(cfg.data_dir.join("dbproxy").join("xa")),
        )),
    });
    let pools = Arc::new(Pools::new(PoolSettings {
        source: d.backend_source_ip,
        max_per_server: d.max_backend_connections,
        connect_timeout: Duration::from_millis(d.backend_connect_timeout_ms),
        wait: Duration::from_millis(d.backend_wait_ms),
    }));
    let status = Arc::new(Mutex::new(FeedStatus {
        source: "none".into(),
        ..FeedStatus::default()
    }));
    let urls: Vec<String> = ctx
        .control_urls(&d.control)
        .iter()
        .map(|u| u.to_string().trim_end_matches('/').to_string())
        .collect();
    let failover = {
        let (shared, urls, file, fences) = (
            shared.clone(),
            urls.clone(),
            cfg.data_dir.join("dbproxy").join("credential"),
            cfg.data_dir.join("dbproxy").join("fences.json"),
        );
        move |shutdown| failover::run(shared, urls, file, fences, shutdown)
    };
    let report = {
        let (shared, urls, file) = (
            shared.clone(),
            urls.clone(),
            cfg.data_dir.join("dbproxy").join("credential"),
        );
        move |shutdown| report::run(shared, urls, file, shutdown)
    };
    let feed = Feed {
        credential: crate::api::enroll::ServiceCredential::for_role(
            "dbproxy",
            cfg,
            urls.clone(),
            d.join_token.clone(),
        ),
        urls,
        dir: cfg.data_dir.join("dbproxy"),
        cache_file: "datasources.json",
        kinds: &topology::INPUT_KINDS,
        install: {
            let (shared, pools) = (shared.clone(), pools.clone());
            Box::new(move |inputs, source| {
                let t = topology::compile(inputs, &pools);
                for p in &t.problems {
                    tracing::warn!(problem = %p, "Data source input skipped");
                }
                tracing::debug!(
                    revision = t.revision,
                    databases = t.databases.len(),
                    source,
                    "Installing data sources"
                );
                shared.metrics.topology_revision.set(t.revision as i64);
                pools.retain(&t);
                shared.topology.store(Arc::new(t));
            })
        },
        status: status.clone(),
        reachable: ctx.metrics.control_reachable(Role::Dbproxy),
    };
    let admin_router = admin::router(health.clone(), ctx.metrics.clone()).merge(
        Router::new()
            .route("/datasources", get(datasources))
            .with_state(AdminState {
                shared: shared.clone(),
                status,
            }),
    );
    Ok(Bound::new(Role::Dbproxy, listeners, move |shutdown| {
        Box::pin(async move {
            health.set_not_ready("no data sources yet (from the control plane or the cache)");
            let feed_task = tokio::spawn(feed.run(shutdown.clone()));
            let checks = tokio::spawn(check_backends(shared.clone(), shutdown.clone()));
            let recovery = tokio::spawn(recover_xa(
                shared.clone(),
                Duration::from_millis(d.backend_connect_timeout_ms),
                shutdown.clone(),
            ));
            let reporter = tokio::spawn(report(shutdown.clone()));
            let promoter = tokio::spawn(failover(shutdown.clone()));
            let ready = {
                let (shared, health, shutdown) = (shared.clone(), health.clone(), shutdown.clone());
                tokio::spawn(async move {
                    while shared.topology.load().revision == 0 {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        }
                    }
                    health.set_ready();
                })
            };
            let (a, b) = tokio::join!(
                serve_mysql(mysql, shared.clone(), d.max_connections, shutdown.clone()),
                admin::serve(admin_l, admin_router, shutdown)
            );
            let _ = tokio::join!(feed_task, checks, ready, reporter, promoter, recovery);
            health.set_not_ready("stopped");
            a.and(b).map_err(|source| RoleError::Serve {
                role: Role::Dbproxy,
                what: "listener",
                source,
            })
        })
    }))
}

/// TLS for MySQL clients from PEM files (the certificate chain, leaf first, and its key).
fn tls_acceptor(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_pem = std::fs::read(cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let key_pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", cert.display()))?;
    if chain.is_empty() {
        return Err(format!("{}: holds no certificate", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", key.display()))?;
    let cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

async fn serve_mysql(
    listener: TcpListener,
    shared: Arc<Shared>,
    max_connections: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(max_connections));
    let sessions = tokio_util::task::TaskTracker::new();
    loop {
        let (mut sock, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "Accepting a MySQL connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            // Refuse with the server's own error, so the client says "Too many connections".
            let mut out = Vec::new();
            wire::frame(
                &mut out,
                0,
                &wire::err_packet(wire::er::CON_COUNT, "Too many connections"),
            );
            tokio::spawn(async move {
                let _ = sock.write_all(&out).await;
                let _ = sock.shutdown().await;
            });
            continue;
        };
        let shared = shared.clone();
        let stop = shutdown.clone();
        sessions.spawn(async move {
            tokio::select! {
                _ = session::serve(sock, peer, shared) => {}
                // On shutdown, give sessions a moment to finish their statement.
                _ = async { stop.cancelled().await; tokio::time::sleep(Duration::from_secs(2)).await } => {}
            }
            drop(permit);
        });
    }
    sessions.close();
    sessions.wait().await;
    Ok(())
}

/// Finishes prepared every-shard writes left behind (see [`xa`]): once the data sources
/// are known, then every [`xa::RECOVER_EVERY`].
async fn recover_xa(shared: Arc<Shared>, connect_timeout: Duration, shutdown: CancellationToken) {
    let mut wait = Duration::from_millis(200);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        let topo = shared.topology.load_full();
        if topo.revision == 0 {
            continue;
        }
        wait = xa::RECOVER_EVERY;
        let r = shared.xa.recover(&topo, connect_timeout).await;
        let m = &shared.metrics;
        m.xa_recovered
            .with_label_values(&["committed"])
            .inc_by(r.committed as u64);
        m.xa_recovered
            .with_label_values(&["rolled_back"])
            .inc_by(r.rolled_back as u64);
        m.xa_foreign_prepared.set(r.others as i64);
        if r.others > 0 {
            tracing::warn!(
                count = r.others,
                "Prepared XA transactions of other proxies are waiting on the shards"
            );
        }
    }
}

/// Every 2 s: each backend server gets a connection test, each replica a lag reading.
async fn check_backends(shared: Arc<Shared>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(CHECK_EVERY) => {}
        }
        let topo = shared.topology.load_full();
        let mut checks = Vec::new();
        for db in topo.databases.values() {
            for shard in db.shards.values() {
                let servers = std::iter::once((shard.primary.clone(), "primary"))
                    .chain(shard.replicas.iter().map(|r| (r.clone(), "replica")));
                for (pool, role) in servers {
                    let labels = [
                        db.name.clone(),
                        shard.unit.clone(),
                        role.to_string(),
                        pool.target.addr.clone(),
                    ];
                    checks.push(check_one(pool, role == "replica", labels, &shared));
                }
            }
        }
        futures_util::future::join_all(checks).await;
    }
}

async fn check_one(pool: Arc<backend::Pool>, replica: bool, labels: [String; 4], shared: &Shared) {
    let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
    let timeout = pool.connect_timeout;
    let result = async {
        let mut b = Backend::connect(&pool.target, timeout).await?;
        if replica {
            let lag = tokio::time::timeout(timeout, replica_lag_ms(&mut b))
                .await
                .map_err(|_| {
                    backend::BackendError::Other("SHOW SLAVE STATUS timed out".into())
                })??;
            Ok::<_, backend::BackendError>(lag)
        } else {
            tokio::time::timeout(timeout, b.ping())
                .await
                .map_err(|_| backend::BackendError::Other("ping timed out".into()))??;
            Ok(Some(0))
        }
    }
    .await;
    let was_up = pool.is_up();
    match result {
        Ok(lag) => {
            let lag = lag.unwrap_or(u64::MAX);
            pool.health.lag_ms.store(lag, Ordering::Relaxed);
            pool.mark_up();
            if !was_up {
                tracing::info!(server = %pool.target.addr, "Backend server reachable again");
            }
            shared.metrics.backend_up.with_label_values(&labels).set(1);
            shared
                .metrics
                .replica_lag_ms
                .with_label_values(&labels)
                .set(if lag == u64::MAX { -1 } else { lag as i64 });
        }
        Err(e) => {
            if was_up {
                tracing::warn!(server = %pool.target.addr, error = %e, "Backend server check failed");
            }
            pool.mark_down(&e.to_string());
            shared.metrics.backend_up.with_label_values(&labels).set(0);
        }
    }
    *pool
        .health
        .checked
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    shared
        .metrics
        .pool_open
        .with_label_values(&labels)
        .set(pool.open.load(Ordering::Relaxed) as i64);
    shared
        .metrics
        .pool_in_use
        .with_label_values(&labels)
        .set(pool.in_use() as i64);
}

/// Seconds_Behind_Master in ms; None when the server is not replicating.
async fn replica_lag_ms(b: &mut Backend) -> Result<Option<u64>, backend::BackendError> {
    let (names, rows) = b.query_named("SHOW SLAVE STATUS").await?;
    let Some(row) = rows.first() else {
        return Ok(None);
    };
    let cell = |name: &str| {
        names
            .iter()
            .position(|n| n.eq_ignore_ascii_case(name))
            .and_then(|i| row.get(i).cloned().flatten())
    };
    let running = cell("Slave_SQL_Running").is_some_and(|v| v == "Yes")
        && cell("Slave_IO_Running").is_some_and(|v| v == "Yes");
    if !running {
        return Ok(None);
    }
    Ok(cell("Seconds_Behind_Master")
        .and_then(|s| s.parse::<u64>().ok())
        .map(|s| s * 1000))
}

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    status: Arc<Mutex<FeedStatus>>,
}

/// `GET /datasources`: databases, shards, servers and their health as this proxy sees
/// them.
async fn datasources(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let t = s.shared.topology.load_full();
    let feed = s.status.lock().map(|s| s.clone()).unwrap_or_default();
    let server = |p: &backend::Pool| {
        let lag = p.health.lag_ms.load(Ordering::Relaxed);
        json!({
            "address": p.target.addr,
            "database": p.target.database,
            "up": p.is_up(),
            "lastError": p.last_error(),
            "lagMs": if lag == u64::MAX { None } else { Some(lag) },
            "connections": p.open.load(Ordering::Relaxed),
            "inUse": p.in_use(),
        })
    };
    let mut dbs: Vec<_> = t.databases.values().collect();
    dbs.sort_by(|a, b| a.name.cmp(&b.name));
    Json(json!({
        "revision": t.revision,
        "source": feed.source,
        "connected": feed.connected,
        "lastError": feed.last_error,
        "problems": t.problems,
        "databases": dbs.iter().map(|d| json!({
            "name": d.name,
            "datasource": d.datasource,
            "shardKey": d.shard_key,
            "shards": d.shards.values().map(|s| json!({
                "unit": s.unit,
                "primary": server(&s.primary),
                "replicas": s.replicas.iter().map(|r| server(r)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    }))
}
