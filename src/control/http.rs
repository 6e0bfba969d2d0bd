//! The control REST API. Today: the index and JSON errors for unknown paths; the resource
//! endpoints of CONTRACT.md land here, one file per resource.

use super::store::Store;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub fn router(store: Store) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/api/v1", get(index))
        .fallback(not_found)
        .with_state(store)
}

async fn index(axum::extract::State(store): axum::extract::State<Store>) -> Response {
    Json(json!({
        "name": "tessera",
        "version": crate::telemetry::VERSION,
        "cluster": store.cluster_id(),
        "api": "/api/v1",
    }))
    .into_response()
}

async fn not_found(uri: axum::http::Uri) -> Response {
    let body = json!({"code": "not_found", "message": format!("no such endpoint: {}", uri.path())});
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}
