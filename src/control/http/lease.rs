//! Leases (admin): `POST /api/v1/leases {"ttl_secs": N}` grants one (its id is the
//! revision that granted it); `POST /api/v1/leases/{id}/keepalive` restarts its TTL;
//! `GET /api/v1/leases[/{id}]` lists or shows them; `DELETE /api/v1/leases/{id}` revokes
//! one and deletes its keys. Keys are attached with `PUT /api/v1/kv/{key}?lease=ID` or a
//! transaction put's `lease`. Keep-alives and reads are answered by the leader (a
//! follower forwards them), which keeps the deadlines.

use super::auth::Caller;
use super::error::{parse_body, ApiError};
use super::kv::{linearize_or_forward, replicate, with_revision};
use super::ApiState;
use crate::control::store::types::{Command, Lease, LeaseWithKeys};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

pub const MIN_TTL_SECS: u64 = 1;
pub const MAX_TTL_SECS: u64 = 7 * 24 * 3600;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantBody {
    ttl_secs: u64,
}

fn parse_id(raw: &str) -> Result<u64, ApiError> {
    raw.parse::<u64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| ApiError::bad_field("id", format!("`{raw}` is not a lease id")))
}

fn not_found(id: u64) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "lease_not_found",
        format!("lease {id} does not exist (expired or revoked)"),
    )
}

pub async fn grant(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let (g, body): (GrantBody, _) = parse_body(body, "a lease grant {\"ttl_secs\": N}")?;
    if !(MIN_TTL_SECS..=MAX_TTL_SECS).contains(&g.ttl_secs) {
        return Err(ApiError::bad_field(
            "ttl_secs",
            format!(
                "{} is out of range {MIN_TTL_SECS}-{MAX_TTL_SECS}",
                g.ttl_secs
            ),
        ));
    }
    let cmd = Command::LeaseGrant {
        ttl_secs: g.ttl_secs,
    };
    match replicate(&s, cmd, Method::POST, &uri, &headers, body).await? {
        Ok(r) => {
            s.leases.renew(&Lease {
                id: r.revision,
                ttl_secs: g.ttl_secs,
            });
            Ok(with_revision(
                r.revision,
                json!({"id": r.revision, "ttl_secs": g.ttl_secs, "revision": r.revision}),
                StatusCode::CREATED,
            ))
        }
        Err(forwarded) => Ok(forwarded),
    }
}

/// The lease `id` with its keys and the revision read, answered by the leader (a
/// follower answers with the leader's response to the same request).
async fn leader_read(
    s: &ApiState,
    id: u64,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Result<(LeaseWithKeys, u64), Response>, ApiError> {
    if let Some(answer) = linearize_or_forward(s, method, uri, headers).await? {
        return Ok(Err(answer));
    }
    let (found, rev) = s
        .node
        .store()
        .lease(id)
        .map_err(|e| ApiError::internal("lease read", e))?;
    Ok(Ok((found.ok_or_else(|| not_found(id))?, rev)))
}

pub async fn keepalive(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let id = parse_id(&id)?;
    let ((lease, _), rev) = match leader_read(&s, id, Method::POST, &uri, &headers).await? {
        Ok(found) => found,
        Err(forwarded) => return Ok(forwarded),
    };
    s.leases.renew(&lease);
    Ok(with_revision(
        rev,
        json!({"id": id, "ttl_secs": lease.ttl_secs, "revision": rev}),
        StatusCode::OK,
    ))
}

pub async fn show(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let id = parse_id(&id)?;
    let ((lease, keys), rev) = match leader_read(&s, id, Method::GET, &uri, &headers).await? {
        Ok(found) => found,
        Err(forwarded) => return Ok(forwarded),
    };
    let remaining = s.leases.remaining(id).map(|d| d.as_millis() as u64);
    Ok(with_revision(
        rev,
        json!({"id": id, "ttl_secs": lease.ttl_secs, "remaining_ms": remaining, "keys": keys, "revision": rev}),
        StatusCode::OK,
    ))
}

pub async fn list(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    if let Some(answer) = linearize_or_forward(&s, Method::GET, &uri, &headers).await? {
        return Ok(answer);
    }
    let (leases, rev) = s
        .node
        .store()
        .leases()
        .map_err(|e| ApiError::internal("lease read", e))?;
    let items: Vec<_> = leases
        .iter()
        .map(|l| {
            json!({"id": l.id, "ttl_secs": l.ttl_secs,
                   "remaining_ms": s.leases.remaining(l.id).map(|d| d.as_millis() as u64)})
        })
        .collect();
    Ok(with_revision(
        rev,
        json!({"items": items, "revision": rev}),
        StatusCode::OK,
    ))
}

pub async fn revoke(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let id = parse_id(&id)?;
    let cmd = Command::LeaseRevoke { id };
    match replicate(&s, cmd, Method::DELETE, &uri, &headers, Bytes::new()).await? {
        Ok(r) if r.refused.is_some() => Err(not_found(id)),
        Ok(r) => Ok(with_revision(
            r.revision,
            json!({"revision": r.revision, "deleted": r.deleted}),
            StatusCode::OK,
        )),
        Err(forwarded) => Ok(forwarded),
    }
}
