//! The gateway role: the L7 entrance that routes every user to the unit owning their data.
//!
//! - `table.rs`: the route table, compiled from resources (pure); matching and unit choice.
//! - `h1.rs`: the entrance's own HTTP/1.1 loop for plain requests; the rest to hyper.
//! - `proxy.rs`: the data plane (one `handle` for both), retries, mirror,
//!   passive ejection, in-flight accounting, metrics and access log.
//! - `crate::api::feed`: credential, list + watch of the control plane, the on-disk route
//!   cache (`routes.json`).
//! - here: the listeners, active health checks, and the admin endpoints
//!   (`/routes`, `/endpoints`, `/drained`).
//!
//! The gateway is ready once it has a route table, from the control plane or from its
//! cache; it never needs the control plane to keep serving.

mod h1;
mod proxy;
pub mod table;
mod tls;

use crate::admin;
use crate::api::feed::{Feed, FeedStatus};
use crate::config::Role;
use crate::role::{bind_tcp, local_addr, Bound, RoleContext, RoleError};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use proxy::{Gateway, GatewayMetrics};
use serde::Deserialize;
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub async fn bind(ctx: &RoleContext) -> Result<Bound, RoleError> {
    let cfg = &ctx.config;
    let g = cfg.gateway.clone();
    let health = ctx.metrics.health(Role::Gateway);
    let entrance = bind_tcp("gateway.listen", g.listen.0).await?;
    let admin_l = bind_tcp("gateway.admin_listen", g.admin_listen.0).await?;
    let mut listeners = vec![
        ("entrance", local_addr(&entrance, g.listen.0)),
        ("admin", local_addr(&admin_l, g.admin_listen.0)),
    ];
    let https = match g.tls_listen {
        Some(addr) => {
            let (config, resolver) =
                tls::server_config(&g.certificates).map_err(|message| RoleError::Failed {
                    role: Role::Gateway,
                    message: format!("gateway.certificates: {message}"),
                })?;
            let l = bind_tcp("gateway.tls_listen", addr.0).await?;
            listeners.push(("https", local_addr(&l, addr.0)));
            Some((l, config, resolver))
        }
        None => None,
    };
    let admin_bound = local_addr(&admin_l, g.admin_listen.0);
    let advertise = match &g.admin_advertise {
        // Checked when the profile was loaded (config/validate.rs).
        Some(u) => Some(u.trim_end_matches('/').to_string()),
        None if admin_bound.ip().is_unspecified() => {
            tracing::warn!(admin = %admin_bound, "gateway.admin_listen is a wildcard address and gateway.admin_advertise is not set: agents cannot ask this gateway whether an endpoint drained");
            None
        }
        None => Some(format!("http://{admin_bound}")),
    };
    let gateway = Arc::new(Gateway::new(
        GatewayMetrics::new(ctx.metrics.registry()),
        g.access_log,
        g.max_body_bytes,
        g.max_header_bytes,
    ));
    let status = Arc::new(Mutex::new(FeedStatus {
        source: "none".into(),
        ..FeedStatus::default()
    }));
    let urls: Vec<String> = ctx
        .control_urls(&g.control)
        .iter()
        .map(|u| u.to_string().trim_end_matches('/').to_string())
        .collect();
    let registrar = advertise.map(|admin| Registrar {
        urls: urls.clone(),
        node: cfg.node_name.clone(),
        zone: cfg.zone.clone(),
        admin,
        credential: cfg.data_dir.join("gateway").join("credential"),
    });
    let feed = Feed {
        credential: crate::api::enroll::ServiceCredential::for_role(
            "gateway",
            cfg,
            urls.clone(),
            g.join_token.clone(),
        ),
        urls,
        dir: cfg.data_dir.join("gateway"),
        cache_file: "routes.json",
        kinds: &table::INPUT_KINDS,
        install: {
            let (gateway, zone) = (gateway.clone(), cfg.zone.clone());
            let resolver = https.as_ref().map(|(_, _, r)| r.clone());
            Box::new(move |inputs, source| {
                let mut table = table::compile(inputs, zone.as_deref(), &gateway.states);
                if let Some(r) = &resolver {
                    table.problems.extend(r.install_stored(inputs));
                }
                for p in &table.problems {
                    tracing::warn!(problem = %p, "Route table input skipped");
                }
                tracing::debug!(
                    revision = table.revision,
                    rules = table.rules.len(),
                    endpoints = table.endpoints.len(),
                    source,
                    "Installing a route table"
                );
                gateway.install(table);
            })
        },
        status: status.clone(),
        reachable: ctx.metrics.control_reachable(Role::Gateway),
    };
    let admin_router = admin::router(health.clone(), ctx.metrics.clone()).merge(
        Router::new()
            .route("/routes", get(routes))
            .route("/endpoints", get(endpoints))
            .route("/drained", get(drained))
            .with_state(AdminState {
                gateway: gateway.clone(),
                status,
            }),
    );
    Ok(Bound::new(Role::Gateway, listeners, move |shutdown| {
        Box::pin(async move {
            health.set_not_ready("no route table yet (from the control plane or the cache)");
            let feed_task = tokio::spawn(feed.run(shutdown.clone()));
            let checks = tokio::spawn(health_checks(gateway.clone(), shutdown.clone()));
            let registering = tokio::spawn({
                let (gateway, shutdown) = (gateway.clone(), shutdown.clone());
                async move {
                    if let Some(r) = registrar {
                        r.run(gateway, shutdown).await;
                    }
                }
            });
            let ready = {
                let (gateway, health, shutdown) =
                    (gateway.clone(), health.clone(), shutdown.clone());
                tokio::spawn(async move {
                    while gateway.table.load().revision == 0 {
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        }
                    }
                    health.set_ready();
                })
            };
            let secure = async {
                match https {
                    Some((l, config, resolver)) => {
                        let reload = tokio::spawn(tls::reload(
                            g.certificates.clone(),
                            resolver,
                            shutdown.clone(),
                        ));
                        let r =
                            serve_entrance(l, Some(config), gateway.clone(), &g, shutdown.clone())
                                .await;
                        let _ = reload.await;
                        r
                    }
                    None => Ok(()),
                }
            };
            let (a, b, c) = tokio::join!(
                serve_entrance(entrance, None, gateway.clone(), &g, shutdown.clone()),
                admin::serve(admin_l, admin_router, shutdown.clone()),
                secure
            );
            let _ = tokio::join!(feed_task, checks, ready, registering);
            health.set_not_ready("stopped");
            a.and(b).and(c).map_err(|source| RoleError::Serve {
                role: Role::Gateway,
                what: "listener",
                source,
            })
        })
    }))
}

/// How long a client may take to complete its TLS handshake.
const TLS_HANDSHAKE: Duration = Duration::from_secs(10);

/// Accepts client connections (at most `max_connections` open) and serves HTTP/1.1 and
/// HTTP/2 on them (h2c, or over TLS with `tls`, ALPN choosing); on shutdown stops
/// accepting and lets open requests finish.
async fn serve_entrance(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    gateway: Arc<Gateway>,
    cfg: &crate::config::GatewayConfig,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(cfg.header_read_timeout_secs))
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(cfg.max_header_bytes as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Duration::from_secs(30));
    let builder = Arc::new(builder);
    let slots = Arc::new(Semaphore::new(cfg.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let tasks = tokio_util::task::TaskTracker::new();
    let limits = h1::Limits {
        header_timeout: Duration::from_secs(cfg.header_read_timeout_secs),
        max_head: cfg.max_header_bytes.max(8192),
        max_body: cfg.max_body_bytes,
    };
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and the like: pause rather than spin.
                    tracing::warn!(error = %e, "Accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let gw = gateway.clone();
        let secure = tls.is_some();
        let (builder, watcher, stop) = (builder.clone(), graceful.watcher(), shutdown.clone());
        let failures = gateway.metrics.tls_failures.clone();
        let acceptor = tls.clone().map(tokio_rustls::TlsAcceptor::from);
        tasks.spawn(async move {
            let service = {
                let gw = gw.clone();
                hyper::service::service_fn(move |req| gw.clone().handle(req, peer, secure))
            };
            let Some(acceptor) = acceptor else {
                // HTTP/1.1 in the gateway's own loop; h2c and the unusual to hyper.
                if let h1::End::Hyper(io) = h1::serve(stream, &gw, peer, false, limits, &stop).await {
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(client = %peer, error = %e, "Client connection ended with an error");
                    }
                }
                drop(permit);
                return;
            };
            let tls_stream = match tokio::time::timeout(TLS_HANDSHAKE, acceptor.accept(stream)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    failures.inc();
                    tracing::debug!(client = %peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    failures.inc();
                    tracing::debug!(client = %peer, "TLS handshake timed out");
                    return;
                }
            };
            let h2 = tls_stream.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = if h2 {
                h1::Prefixed::plain(tls_stream)
            } else {
                match h1::serve(tls_stream, &gw, peer, true, limits, &stop).await {
                    h1::End::Closed => {
                        drop(permit);
                        return;
                    }
                    h1::End::Hyper(io) => io,
                }
            };
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned();
            if let Err(e) = watcher.watch(conn).await {
                tracing::debug!(client = %peer, error = %e, "Client connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    // In-flight requests finish; the process's drain deadline bounds this. The own loop
    // sees `shutdown` and closes each connection after the request it is on.
    graceful.shutdown().await;
    tasks.close();
    tasks.wait().await;
    Ok(())
}

/// Tells the control plane, every 10 s, where this gateway's admin listener is and which
/// table revision it serves (`PUT /api/v1/gateways/<node>`), so that agents ask it
/// whether an endpoint has drained before stopping it.
struct Registrar {
    urls: Vec<String>,
    node: String,
    zone: Option<String>,
    admin: String,
    /// The gateway's credential file, written once the feed has enrolled.
    credential: std::path::PathBuf,
}

const REGISTER_EVERY: Duration = Duration::from_secs(10);

impl Registrar {
    async fn run(self, gateway: Arc<Gateway>, shutdown: CancellationToken) {
        let mut wait = Duration::from_millis(200);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let Some(token) = std::fs::read_to_string(&self.credential)
                .ok()
                .map(|t| t.trim().to_string())
                .filter(|t| !t.is_empty())
            else {
                wait = Duration::from_secs(1); // not enrolled yet
                continue;
            };
            let body = json!({
                "admin": self.admin,
                "zone": self.zone,
                "revision": gateway.table.load().revision,
            });
            let path = format!("/api/v1/gateways/{}", self.node);
            let mut last = String::new();
            let mut done = false;
            for u in &self.urls {
                let client = match crate::api::Client::new(u, Some(token.clone())) {
                    Ok(c) => c.with_timeout(Duration::from_secs(5)),
                    Err(e) => {
                        last = e.to_string();
                        continue;
                    }
                };
                match client
                    .call::<serde_json::Value>(http::Method::PUT, &path, Some(&body))
                    .await
                {
                    Ok(_) => {
                        done = true;
                        break;
                    }
                    Err(e) => last = e.to_string(),
                }
            }
            if done {
                if failing {
                    tracing::info!(admin = %self.admin, "Registered with the control plane again");
                }
                failing = false;
                wait = REGISTER_EVERY;
            } else {
                if !failing {
                    tracing::warn!(error = %last, "Registering this gateway with the control plane failed; retrying");
                }
                failing = true;
                wait = Duration::from_secs(2);
            }
        }
    }
}

/// Active health checks: each endpoint whose app declares a check is probed at its
/// interval; two failures in a row mark it unhealthy, one success healthy again.
async fn health_checks(gateway: Arc<Gateway>, shutdown: CancellationToken) {
    use http_body_util::{BodyExt, Empty};
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(1)
            .build(http);
    let mut rounds = 0u32;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        }
        let table = gateway.table.load_full();
        rounds = rounds.wrapping_add(1);
        if rounds.is_multiple_of(20) {
            // Idle upstream connections past their timeout are closed every 5 s.
            gateway.upstreams.sweep(&|_| true);
            gateway
                .metrics
                .upstream_idle
                .set(gateway.upstreams.idle_count() as i64);
        }
        let now = gateway.states.now_ms();
        let mut seen = std::collections::HashSet::new();
        for ep in &table.endpoints {
            let Some(probe) = &ep.probe else { continue };
            if !seen.insert(ep.addr) || ep.state.next_check_ms.load(Ordering::Relaxed) > now {
                continue;
            }
            ep.state
                .next_check_ms
                .store(now + probe.interval.as_millis() as u64, Ordering::Relaxed);
            let Ok(uri) = format!("http://{}{}", ep.addr, probe.path).parse::<http::Uri>() else {
                continue;
            };
            let (client, ep, timeout) = (client.clone(), ep.clone(), probe.timeout);
            tokio::spawn(async move {
                let ok = match tokio::time::timeout(timeout, client.get(uri)).await {
                    Ok(Ok(resp)) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        ok
                    }
                    _ => false,
                };
                let s = &ep.state;
                if ok {
                    s.check_failures.store(0, Ordering::Relaxed);
                    if s.unhealthy.swap(false, Ordering::Relaxed) {
                        tracing::info!(endpoint = %ep.addr, app = %ep.app, unit = %ep.unit, "Endpoint healthy again");
                    }
                } else if s.check_failures.fetch_add(1, Ordering::Relaxed) + 1 >= 2
                    && !s.unhealthy.swap(true, Ordering::Relaxed)
                {
                    tracing::warn!(endpoint = %ep.addr, app = %ep.app, unit = %ep.unit, "Endpoint failed its health checks");
                }
            });
        }
    }
}

#[derive(Clone)]
struct AdminState {
    gateway: Arc<Gateway>,
    status: Arc<Mutex<FeedStatus>>,
}

/// `GET /routes`: the active table's version, where it came from, its rules.
async fn routes(State(s): State<AdminState>) -> Response {
    let t = s.gateway.table.load_full();
    let status = s.status.lock().map(|s| s.clone()).unwrap_or_default();
    Json(json!({
        "revision": t.revision,
        "source": status.source,
        "connected": status.connected,
        "control": status.control,
        "applied_at": status.applied_at,
        "last_error": status.last_error,
        "rules": t.rules.iter().map(|r| r.name.to_string()).collect::<Vec<_>>(),
        "endpoints": t.endpoints.len(),
        "problems": t.problems,
    }))
    .into_response()
}

/// `GET /endpoints`: every endpoint of the active table with its live state.
async fn endpoints(State(s): State<AdminState>) -> Response {
    let t = s.gateway.table.load_full();
    let now = s.gateway.states.now_ms();
    let items: Vec<_> = t
        .endpoints
        .iter()
        .map(|e| {
            let st = &e.state;
            json!({
                "address": e.addr.to_string(),
                "app": &*e.app,
                "unit": &*e.unit,
                "zone": &*e.zone,
                "version": e.version.as_deref(),
                "instance": e.instance,
                "draining": e.draining,
                "healthy": !st.unhealthy.load(Ordering::Relaxed),
                "ejected": st.ejected_until_ms.load(Ordering::Relaxed) > now,
                "inflight": st.inflight.load(Ordering::Relaxed),
                "requests": st.requests.load(Ordering::Relaxed),
            })
        })
        .collect();
    Json(json!({"revision": t.revision, "items": items})).into_response()
}

#[derive(Deserialize)]
struct DrainQuery {
    /// `IP:PORT` of the endpoint.
    endpoint: Option<String>,
    /// Or the instance's name.
    instance: Option<String>,
}

/// `GET /drained?endpoint=IP:PORT` (or `?instance=NAME`): whether this gateway sends the
/// endpoint nothing new (it is draining or gone from the active table) and nothing of its
/// is in flight. `drained: true` is what an agent waits for before stopping it.
async fn drained(
    State(s): State<AdminState>,
    q: Result<Query<DrainQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let bad = |m: &str| {
        (
            axum::http::StatusCode::BAD_REQUEST,
            Json(json!({"code": "bad_request", "message": m})),
        )
            .into_response()
    };
    let Ok(Query(q)) = q else {
        return bad("expected ?endpoint=IP:PORT or ?instance=NAME");
    };
    let t = s.gateway.table.load_full();
    let matching: Vec<_> = match (&q.endpoint, &q.instance) {
        (Some(a), _) => match a.parse::<std::net::SocketAddr>() {
            Ok(addr) => t.endpoints.iter().filter(|e| e.addr == addr).collect(),
            Err(_) => return bad("endpoint: expected IP:PORT"),
        },
        (None, Some(i)) => t
            .endpoints
            .iter()
            .filter(|e| e.instance.as_deref() == Some(i.as_str()))
            .collect(),
        (None, None) => return bad("expected ?endpoint=IP:PORT or ?instance=NAME"),
    };
    let routable = matching.iter().any(|e| !e.draining);
    let inflight: usize = match (&q.endpoint, matching.first()) {
        (Some(a), _) => a
            .parse()
            .map(|addr| s.gateway.states.get(addr).inflight.load(Ordering::Relaxed))
            .unwrap_or(0),
        (None, Some(e)) => e.state.inflight.load(Ordering::Relaxed),
        (None, None) => 0,
    };
    Json(json!({
        "drained": !routable && inflight == 0,
        "routable": routable,
        "inflight": inflight,
        "revision": t.revision,
    }))
    .into_response()
}
