//! The gateway registry: where each gateway's admin listener is, so that an agent can ask
//! every gateway whether an endpoint has drained before it stops the process behind it.
//!
//! - `PUT /api/v1/gateways/{name}`: a gateway says, every 10 s, its zone, its admin URL
//!   and the route table revision it serves. Only that gateway's own credential (user
//!   `gateway-<name>`) or an admin may write it.
//! - `GET /api/v1/gateways`: every registered gateway, `live` while its last word is
//!   under 30 s old. Any authenticated caller may read it.
//!
//! Entries are kept in the store under `/tessera/gateways/<name>`; they are presence, not
//! configuration, so they are not resources and not audited.

use super::auth::Caller;
use super::error::ApiError;
use super::kv::replicate;
use super::ApiState;
use crate::control::store::types::Command;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{json, Value};

pub const PREFIX: &str = "/tessera/gateways/";
/// A gateway is live while its last registration is younger than this.
pub const LIVE_MS: u64 = 30_000;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Registration {
    zone: Option<String>,
    /// `http://IP:PORT` of the gateway's admin listener.
    admin: String,
    #[serde(default)]
    revision: u64,
}

/// `http://HOST:PORT` with nothing after it (a trailing `/` allowed).
fn check_admin_url(u: &str) -> Result<(), ApiError> {
    if crate::util::is_http_authority_url(u) {
        Ok(())
    } else {
        Err(ApiError::bad_field(
            "admin",
            format!("`{u}` is not an admin URL of the form http://IP:PORT"),
        ))
    }
}

pub async fn register(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    crate::model::check_name("name", &name).map_err(|e| ApiError::bad_field("name", e.message))?;
    let own = caller.role == "gateway" && caller.user == format!("gateway-{name}");
    if !own && caller.role != "admin" {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "user `{}` (role {}) may not register gateway `{name}`: only that gateway's own credential or an admin",
                caller.user, caller.role
            ),
        ));
    }
    let body = body?;
    let reg: Registration = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("the body is not a gateway registration ({{\"admin\": \"http://IP:PORT\", \"zone\": ..., \"revision\": N}}): {e}"),
        )
    })?;
    check_admin_url(&reg.admin)?;
    if let Some(z) = &reg.zone {
        crate::model::check_name("zone", z).map_err(|e| ApiError::bad_field("zone", e.message))?;
    }
    let value = json!({
        "name": name,
        "zone": reg.zone,
        "admin": reg.admin.trim_end_matches('/'),
        "revision": reg.revision,
        "seenAtMs": crate::util::now_ms(),
    })
    .to_string();
    let cmd = Command::Put {
        key: format!("{PREFIX}{name}"),
        value,
        lease: 0,
    };
    match replicate(&s, cmd, Method::PUT, &uri, &headers, body).await? {
        Ok(r) => Ok((StatusCode::OK, Json(json!({"revision": r.revision}))).into_response()),
        Err(forwarded) => Ok(forwarded),
    }
}

pub async fn list(
    State(s): State<ApiState>,
    Extension(_caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let (kvs, revision) = s
        .node
        .store()
        .range(PREFIX, 10_000)
        .map_err(|e| ApiError::internal("listing gateways", e))?;
    let now = crate::util::now_ms();
    let items: Vec<Value> = kvs
        .iter()
        .filter_map(|kv| serde_json::from_str::<Value>(&kv.value).ok())
        .map(|mut v| {
            let seen = v["seenAtMs"].as_u64().unwrap_or(0);
            v["live"] = json!(now.saturating_sub(seen) < LIVE_MS);
            v
        })
        .collect();
    Ok(Json(json!({"items": items, "revision": revision})))
}

#[cfg(test)]
mod tests {
    use super::check_admin_url;

    #[test]
    fn admin_urls() {
        for ok in [
            "http://127.0.0.1:7403",
            "http://10.0.0.5:7403/",
            "http://gw-1.dc1:7403",
            "http://[::1]:7403",
        ] {
            assert!(check_admin_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "127.0.0.1:7403",
            "https://x:1",
            "http://x",
            "http://x:99999",
            "http://x:1/path",
            "http://u@x:1",
            "http://:1",
            "http://x:1?q",
        ] {
            assert!(check_admin_url(bad).is_err(), "{bad}");
        }
    }
}
