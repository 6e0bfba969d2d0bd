//! The admin endpoints every role serves: `/healthz` (alive), `/readyz` (ready to serve,
//! 503 with the reason until then) and `/metrics` (Prometheus text format).

use crate::telemetry::{Health, Metrics};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone)]
struct AdminState {
    health: Health,
    metrics: Metrics,
}

/// Routes for `/healthz`, `/readyz`, `/metrics`; merge into a role's own router or serve alone.
pub fn router(health: Health, metrics: Metrics) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .with_state(AdminState { health, metrics })
}

fn count(s: &AdminState, path: &str, code: StatusCode) {
    s.metrics
        .admin_requests
        .with_label_values(&[s.health.role().as_str(), path, code.as_str()])
        .inc();
}

async fn healthz(State(s): State<AdminState>) -> Response {
    count(&s, "/healthz", StatusCode::OK);
    Json(json!({"status": "alive", "role": s.health.role().as_str()})).into_response()
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let ready = s.health.is_ready();
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    count(&s, "/readyz", code);
    let body =
        json!({"ready": ready, "role": s.health.role().as_str(), "reason": s.health.reason()});
    (code, Json(body)).into_response()
}

async fn metrics_text(State(s): State<AdminState>) -> Response {
    count(&s, "/metrics", StatusCode::OK);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Serves `router` on `listener` until `shutdown` fires, then lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.cancelled_owned())
    .await
}
