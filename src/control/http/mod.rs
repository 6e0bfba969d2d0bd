//! The control REST API. Everything under `/api/v1` needs a bearer token (`auth`);
//! errors are JSON (`error`); writes reaching a follower are forwarded to the leader
//! (`forward`). One file per resource: `kv` (raw store, compaction and backups, admin
//! only), `lease`, `watch`, `join` (tokens, certificates, membership).

mod audit;
pub mod auth;
mod blob_gc;
mod blob_scrub;
mod blobs;
pub mod context;
mod dsfailover;
mod error;
mod forward;
mod gateways;
pub mod join;
mod kv;
mod lease;
mod logs;
mod nodecert;
mod openapi;
mod placement;
mod resources;
mod retention;
mod secrets;
mod shardmaps;
mod status;
mod users;
mod watch;

use super::console::Console;
use super::housekeeping::LeaseClock;
use super::store::RaftNode;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use error::ApiError;
use serde_json::json;

#[derive(Clone)]
pub struct ApiState {
    pub node: RaftNode,
    /// Lease deadlines (meaningful on the leader).
    pub leases: LeaseClock,
    /// The key-encryption key (`control.kek_file`) the data key is wrapped with.
    pub kek: Option<secrets::DataKey>,
}

/// The control API's routers, one per place it is served.
pub struct Routers {
    /// The API listener: everything, public and protected.
    pub api: Router,
    /// The peer listener, to anyone over TLS: the join endpoints (they never forward; a
    /// non-leader answers 503 and the joiner asks again).
    pub join: Router,
    /// The peer listener, to members only: the protected API, for requests a follower
    /// forwards to the leader. No fallback, so it merges with the Raft routes.
    pub forwarded: Router,
}

pub use blob_gc::{BlobGc, BlobMetrics};
pub use retention::Retention;

/// The reconcilers: placement of VM-mode instances and event retention (on the leader),
/// and blob collection (on every node, for its own disk).
pub async fn reconcile(
    node: RaftNode,
    leases: LeaseClock,
    retention: Retention,
    pruned: prometheus::IntCounter,
    blobs: (BlobGc, BlobMetrics),
    shutdown: tokio_util::sync::CancellationToken,
) {
    // The reconcilers seal no secrets.
    let s = ApiState {
        node,
        leases,
        kek: None,
    };
    tokio::join!(
        placement::run(s.clone(), shutdown.clone()),
        retention::run(s.clone(), retention, pruned, shutdown.clone()),
        blob_gc::run(s, blobs.0, blobs.1, shutdown),
    );
}

/// The API's routers (see [`Routers`]); paths outside `/api/` go to the console.
pub fn routers(
    node: RaftNode,
    leases: LeaseClock,
    console: Console,
    kek: Option<secrets::DataKey>,
) -> Routers {
    let state = ApiState { node, leases, kek };
    // One route per kind (unknown kinds fall through to the JSON 404).
    let mut kinds = Router::new();
    for kind in crate::model::Kind::ALL {
        if !kind.stored() {
            continue;
        }
        let plural = kind.plural();
        if kind != crate::model::Kind::User {
            kinds = kinds.route(&format!("/api/v1/{plural}"), get(resources::list));
        }
        kinds = kinds
            .route(
                &format!("/api/v1/{plural}/{{name}}"),
                get(resources::get)
                    .put(resources::put)
                    .delete(resources::delete),
            )
            .route(
                &format!("/api/v1/{plural}/{{name}}/status"),
                axum::routing::put(status::put_status),
            );
    }
    let api = Router::new()
        .route(
            "/api/v1/datasources/{name}/failover",
            post(dsfailover::failover),
        )
        .route("/api/v1/nodes/{name}/certificate", post(nodecert::issue))
        .route("/api/v1/kv/txn", post(kv::txn))
        .route("/api/v1/kv-compact", get(kv::compaction).post(kv::compact))
        .route("/api/v1/snapshot", get(kv::snapshot))
        .route("/api/v1/leases", get(lease::list).post(lease::grant))
        .route(
            "/api/v1/leases/{id}",
            get(lease::show).delete(lease::revoke),
        )
        .route("/api/v1/leases/{id}/keepalive", post(lease::keepalive))
        .route(
            "/api/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/api/v1/kv-watch", get(watch::watch))
        .route(
            "/api/v1/blobs/{sha256}",
            get(blobs::get)
                .put(blobs::put)
                .layer(DefaultBodyLimit::max(blobs::MAX_BLOB)),
        )
        .route("/api/v1/logs", get(logs::logs))
        .route("/api/v1/members", get(members))
        .route("/api/v1/gateways", get(gateways::list))
        .route(
            "/api/v1/gateways/{name}",
            axum::routing::put(gateways::register),
        )
        .route(
            "/api/v1/members/{name}",
            axum::routing::delete(join::remove_member),
        )
        .route("/api/v1/tokens", post(join::create_token))
        .route("/api/v1/apply", post(resources::apply))
        .route("/api/v1/openapi.json", get(openapi::serve))
        .route("/api/v1/users", get(resources::list).post(users::create))
        .route("/api/v1/users/{name}/tokens", post(users::add_token))
        .route("/api/v1/watch", get(watch::resources))
        .route("/api/v1/auditevents", get(audit::list))
        .route("/api/v1/auditevents/verify", get(audit::verify))
        .route("/api/v1/auditevents/{seq}", get(audit::show))
        .route("/api/v1/shardmaps/{name}/history", get(shardmaps::history))
        .route("/api/v1/shardmaps/{name}/revert", post(shardmaps::revert))
        .route("/api/v1", get(index))
        .merge(kinds)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        // Values are limited to 1 MiB (checked with a JSON error); this bounds the read.
        .layer(DefaultBodyLimit::max(kv::MAX_VALUE * 4));
    // The join token in the body is the credential here; these handlers never forward it.
    let join_routes = Router::new()
        .route("/api/v1/join", post(join::join))
        .route("/api/v1/join/cert", post(join::join_cert))
        .route("/api/v1/join/credential", post(join::credential))
        .layer(DefaultBodyLimit::max(64 << 10))
        .fallback(not_found)
        .with_state(state.clone());
    let forwarded = api
        .clone()
        .layer(axum::middleware::from_fn(context::forwarded))
        .with_state(state.clone());
    let api = Router::new()
        .route("/api/v1/join/info", get(join::info))
        .merge(api.layer(axum::middleware::from_fn(context::direct)))
        .fallback(move |method: Method, uri: Uri, headers: HeaderMap| {
            let console = console.clone();
            async move {
                if uri.path() == "/api" || uri.path().starts_with("/api/") {
                    not_found(uri).await.into_response()
                } else {
                    console.serve(&method, &uri, &headers).await
                }
            }
        })
        .with_state(state);
    Routers {
        api,
        join: join_routes,
        forwarded,
    }
}

async fn index(State(s): State<ApiState>, Extension(caller): Extension<auth::Caller>) -> Response {
    Json(json!({
        "version": crate::telemetry::VERSION,
        "cluster": s.node.store().cluster_id(),
        "user": caller.user,
        "role": caller.role,
    }))
    .into_response()
}

async fn members(State(s): State<ApiState>) -> Response {
    Json(s.node.members()).into_response()
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::not_found(format!("no such endpoint: {}", uri.path()))
}

/// Counts every answer of the API listener by route template (`/api/v1/kv/{*key}`, not
/// the key), method and status, and times it to its head:
/// `tessera_control_api_requests_total` and `tessera_control_api_request_seconds`.
/// Paths outside the API count as `console`.
pub fn with_metrics(router: Router, registry: &prometheus::Registry) -> Router {
    use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
    let requests = IntCounterVec::new(
        Opts::new(
            "tessera_control_api_requests_total",
            "API answers by route template, method and status.",
        ),
        &["route", "method", "code"],
    )
    .expect("static metric"); // ok: constant name and labels
    let seconds = HistogramVec::new(
        HistogramOpts::new(
            "tessera_control_api_request_seconds",
            "Time to an API answer's head, by route template.",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
        ]),
        &["route"],
    )
    .expect("static metric"); // ok: constant name and labels
    let _ = registry.register(Box::new(requests.clone()));
    let _ = registry.register(Box::new(seconds.clone()));
    router.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            let (requests, seconds) = (requests.clone(), seconds.clone());
            async move {
                let route = match req.extensions().get::<axum::extract::MatchedPath>() {
                    Some(m) => m.as_str().to_string(),
                    None if req.uri().path().starts_with("/api") => "unmatched".into(),
                    None => "console".into(),
                };
                let method = match *req.method() {
                    Method::GET => "GET",
                    Method::PUT => "PUT",
                    Method::POST => "POST",
                    Method::DELETE => "DELETE",
                    Method::HEAD => "HEAD",
                    _ => "other",
                };
                let start = std::time::Instant::now();
                let resp = next.run(req).await;
                requests
                    .with_label_values(&[&route, method, resp.status().as_str()])
                    .inc();
                seconds
                    .with_label_values(&[&route])
                    .observe(start.elapsed().as_secs_f64());
                resp
            }
        },
    ))
}
