//! The raw key-value API (admin only): `GET/PUT/DELETE /api/v1/kv/{key}` (`?prefix=true`
//! for ranges), `POST /api/v1/kv/txn`. Every answer carries the revision it committed at
//! or observed, in the body and in `x-tessera-revision`.
//!
//! `PUT ?lease=ID` attaches the key to a lease; `POST /api/v1/kv-compact` drops old
//! history; `GET /api/v1/snapshot` is a consistent backup.
//!
//! Limits: keys are 1-1024 bytes of UTF-8 without control characters; values are UTF-8
//! up to 1 MiB; a transaction has at most 128 compares and 128 operations per branch;
//! ranges return at most `limit` keys (default 1000, at most 10000).

use super::auth::Caller;
use super::error::{parse_body, ApiError};
use super::forward::{not_leader, path_and_query, to_leader};
use super::ApiState;
use crate::control::store::types::{Command, CommandResult, Compare, Op};
use crate::control::store::RaftFailure;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

pub const MAX_KEY: usize = 1024;
pub const MAX_VALUE: usize = 1 << 20;
const MAX_TXN_OPS: usize = 128;
const DEFAULT_LIMIT: usize = 1000;
const MAX_LIMIT: usize = 10_000;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvQuery {
    #[serde(default)]
    prefix: bool,
    limit: Option<usize>,
    /// `linearizable` (default) or `stale`.
    consistency: Option<String>,
}

pub fn validate_key(field: &str, key: &str) -> Result<(), ApiError> {
    if key.is_empty() {
        return Err(ApiError::bad_field(field, "the key is empty"));
    }
    if key.len() > MAX_KEY {
        return Err(ApiError::bad_field(
            field,
            format!("the key is {} bytes; the limit is {MAX_KEY}", key.len()),
        ));
    }
    if key.chars().any(char::is_control) {
        return Err(ApiError::bad_field(
            field,
            "the key contains a control character",
        ));
    }
    Ok(())
}

/// Key spaces holding secrets (the CA key, token hashes): not readable or writable
/// through the raw KV API, even by an admin.
const RESERVED: [&str; 3] = ["/tessera/pki/", "/tessera/tokens/", "/tessera/jointokens/"];

fn is_reserved(key: &str) -> bool {
    RESERVED.iter().any(|r| key.starts_with(r))
}

/// Key spaces that only their own APIs write (typed resources with their validation,
/// the audit chain, shard map history): the raw KV API reads but never writes them.
const OWNED: [&str; 3] = [
    "/tessera/resources/",
    "/tessera/audit/",
    "/tessera/history/",
];

/// Test builds of a cluster may set this to tamper with the audit chain through the
/// raw KV API (to prove `tessera audit verify` notices); never set it in production.
pub const TEST_TAMPER_ENV: &str = "TESSERA_TEST_ALLOW_AUDIT_TAMPERING";

/// Refuses a write to a key (or, with `prefix`, a range) in a reserved or owned space.
fn guard_write(field: &str, key: &str, prefix: bool) -> Result<(), ApiError> {
    guard(field, key, prefix)?;
    let tamper = std::env::var_os(TEST_TAMPER_ENV).is_some_and(|v| v == "1");
    let hits = OWNED.iter().any(|r| {
        let hit = if prefix {
            r.starts_with(key) || key.starts_with(r)
        } else {
            key.starts_with(r)
        };
        hit && !(tamper && !prefix && *r == "/tessera/audit/")
    });
    if hits {
        return Err(ApiError {
            field: Some(field.to_string()),
            ..ApiError::new(
                StatusCode::FORBIDDEN,
                "reserved",
                format!(
                    "`{key}` is written only through its own API ({}: resources, audit trail, shard map history)",
                    OWNED.join(", ")
                ),
            )
        });
    }
    Ok(())
}

/// Refuses a key (or, with `prefix`, a range) that reaches into a reserved key space.
fn guard(field: &str, key: &str, prefix: bool) -> Result<(), ApiError> {
    let hits = if prefix {
        RESERVED
            .iter()
            .any(|r| r.starts_with(key) || key.starts_with(r))
    } else {
        is_reserved(key)
    };
    if hits {
        let e = ApiError::new(
            StatusCode::FORBIDDEN,
            "reserved",
            format!(
                "`{key}` reaches into a reserved key space ({}) that holds secrets",
                RESERVED.join(", ")
            ),
        );
        return Err(ApiError {
            field: Some(field.to_string()),
            ..e
        });
    }
    Ok(())
}

fn validate_value(field: &str, v: &str) -> Result<(), ApiError> {
    if v.len() > MAX_VALUE {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("{field} is {} bytes; the limit is {MAX_VALUE}", v.len()),
        ));
    }
    Ok(())
}

/// Makes local state reflect every write committed before this call (read index through
/// the leader), or, on a follower that cannot, answers with the leader's response to the
/// same request.
pub(super) async fn linearize_or_forward(
    s: &ApiState,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
) -> Result<Option<Response>, ApiError> {
    match s.node.linearize().await {
        Ok(()) => Ok(None),
        Err(RaftFailure::NotLeader { leader }) => {
            let leader = not_leader(leader, headers)?;
            Ok(Some(
                to_leader(
                    s,
                    &leader,
                    method,
                    &path_and_query(uri),
                    headers,
                    Bytes::new(),
                )
                .await,
            ))
        }
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

pub(super) fn with_revision(rev: u64, body: serde_json::Value, status: StatusCode) -> Response {
    let mut r = (status, Json(body)).into_response();
    if let Ok(v) = HeaderValue::from_str(&rev.to_string()) {
        r.headers_mut().insert("x-tessera-revision", v);
    }
    r
}

pub async fn get(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    q: Result<Query<KvQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let Query(q) = q?;
    validate_key("key", &key)?;
    if !q.prefix {
        guard("key", &key, false)?;
    }
    let stale = match q.consistency.as_deref() {
        None | Some("linearizable") => false,
        Some("stale") => true,
        Some(other) => {
            return Err(ApiError::bad_field(
                "consistency",
                format!("`{other}`: expected linearizable or stale"),
            ))
        }
    };
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::bad_field(
            "limit",
            format!("{limit} is out of range 1-{MAX_LIMIT}"),
        ));
    }
    if !stale {
        if let Some(answer) = linearize_or_forward(&s, Method::GET, &uri, &headers).await? {
            return Ok(answer);
        }
    }
    let store = s.node.store();
    if q.prefix {
        let (mut items, rev) = store
            .range(&key, limit + 1)
            .map_err(|e| ApiError::internal("range read", e))?;
        let more = items.len() > limit;
        items.truncate(limit);
        // Ranges skip reserved keys rather than refusing a broad prefix like "/".
        items.retain(|kv| !is_reserved(&kv.key));
        Ok(with_revision(
            rev,
            json!({"items": items, "revision": rev, "more": more}),
            StatusCode::OK,
        ))
    } else {
        let (kv, rev) = store.get(&key).map_err(|e| ApiError::internal("read", e))?;
        match kv {
            Some(kv) => Ok(with_revision(
                rev,
                json!({"kv": kv, "revision": rev}),
                StatusCode::OK,
            )),
            None => Ok(with_revision(
                rev,
                json!({"code": "not_found", "message": format!("key `{key}` does not exist"), "revision": rev}),
                StatusCode::NOT_FOUND,
            )),
        }
    }
}

/// Replicates `cmd`, forwarding the original request to the leader when needed.
pub(super) async fn replicate(
    s: &ApiState,
    cmd: Command,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Result<CommandResult, Response>, ApiError> {
    match s.node.write(cmd).await {
        Ok(r) => Ok(Ok(r)),
        Err(RaftFailure::NotLeader { leader }) => {
            let leader = not_leader(leader, headers)?;
            Ok(Err(to_leader(
                s,
                &leader,
                method,
                &path_and_query(uri),
                headers,
                body,
            )
            .await))
        }
        // The client must treat the write as maybe applied (read before retrying a
        // non-idempotent change).
        Err(e @ RaftFailure::OutcomeUnknown(_)) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "outcome_unknown",
            e.to_string(),
        )),
        Err(e) => Err(ApiError::unavailable(e.to_string())),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PutQuery {
    /// Attach the key to this lease.
    #[serde(default)]
    lease: u64,
}

/// A command that every member refused alike (it changed nothing).
fn refused(r: &CommandResult) -> Result<(), ApiError> {
    match &r.refused {
        Some(why) if why.starts_with("lease") => Err(ApiError {
            field: Some("lease".into()),
            ..ApiError::new(StatusCode::NOT_FOUND, "lease_not_found", why.clone())
        }),
        Some(why) => Err(ApiError::new(StatusCode::CONFLICT, "refused", why.clone())),
        None => Ok(()),
    }
}

pub async fn put(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    q: Result<Query<PutQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let Query(q) = q?;
    validate_key("key", &key)?;
    guard_write("key", &key, false)?;
    let body = body?;
    let value = std::str::from_utf8(&body)
        .map_err(|_| ApiError::bad_field("value", "the value must be UTF-8 text"))?
        .to_string();
    validate_value("the value", &value)?;
    let cmd = Command::Put {
        key,
        value,
        lease: q.lease,
    };
    match replicate(&s, cmd, Method::PUT, &uri, &headers, body).await? {
        Ok(r) => {
            refused(&r)?;
            Ok(with_revision(
                r.revision,
                json!({"revision": r.revision, "prev": r.prev}),
                StatusCode::OK,
            ))
        }
        Err(forwarded) => Ok(forwarded),
    }
}

pub async fn delete(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(key): Path<String>,
    q: Result<Query<KvQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let Query(q) = q?;
    validate_key("key", &key)?;
    guard_write("key", &key, q.prefix)?;
    match replicate(
        &s,
        Command::Delete {
            key,
            prefix: q.prefix,
        },
        Method::DELETE,
        &uri,
        &headers,
        Bytes::new(),
    )
    .await?
    {
        Ok(r) => Ok(with_revision(
            r.revision,
            json!({"revision": r.revision, "deleted": r.deleted, "prev": r.prev}),
            StatusCode::OK,
        )),
        Err(forwarded) => Ok(forwarded),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TxnBody {
    #[serde(default)]
    compare: Vec<Compare>,
    #[serde(default)]
    success: Vec<Op>,
    #[serde(default)]
    failure: Vec<Op>,
}

fn validate_ops(branch: &str, ops: &[Op]) -> Result<(), ApiError> {
    if ops.len() > MAX_TXN_OPS {
        return Err(ApiError::bad_field(
            branch,
            format!("{} operations; the limit is {MAX_TXN_OPS}", ops.len()),
        ));
    }
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Put { key, value, .. } => {
                validate_key(&format!("{branch}[{i}].key"), key)?;
                validate_value(&format!("{branch}[{i}].value"), value)?;
            }
            Op::Delete { key, .. } => validate_key(&format!("{branch}[{i}].key"), key)?,
        }
    }
    Ok(())
}

pub async fn txn(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let (t, body): (TxnBody, _) = parse_body(body, "a transaction")?;
    if t.compare.len() > MAX_TXN_OPS {
        return Err(ApiError::bad_field(
            "compare",
            format!("{} compares; the limit is {MAX_TXN_OPS}", t.compare.len()),
        ));
    }
    for (i, c) in t.compare.iter().enumerate() {
        validate_key(&format!("compare[{i}].key"), &c.key)?;
    }
    for (i, c) in t.compare.iter().enumerate() {
        guard(&format!("compare[{i}].key"), &c.key, false)?;
    }
    for (branch, ops) in [("success", &t.success), ("failure", &t.failure)] {
        for (i, op) in ops.iter().enumerate() {
            match op {
                Op::Put { key, .. } => guard_write(&format!("{branch}[{i}].key"), key, false)?,
                Op::Delete { key, prefix } => {
                    guard_write(&format!("{branch}[{i}].key"), key, *prefix)?
                }
            }
        }
    }
    validate_ops("success", &t.success)?;
    validate_ops("failure", &t.failure)?;
    let cmd = Command::Txn {
        compare: t.compare,
        success: t.success,
        failure: t.failure,
    };
    match replicate(&s, cmd, Method::POST, &uri, &headers, body).await? {
        Ok(r) => {
            refused(&r)?;
            Ok(with_revision(
                r.revision,
                json!({"revision": r.revision, "succeeded": r.succeeded, "deleted": r.deleted}),
                StatusCode::OK,
            ))
        }
        Err(forwarded) => Ok(forwarded),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactBody {
    revision: u64,
}

/// `POST /api/v1/kv-compact {"revision": R}`: drops the change history before `R`, so
/// watches can no longer start below it. Keys and their current values are untouched.
pub async fn compact(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let (c, body): (CompactBody, _) = parse_body(body, "a compaction {\"revision\": N}")?;
    let (floor, current) = s
        .node
        .store()
        .compaction()
        .map_err(|e| ApiError::internal("compaction read", e))?;
    if c.revision > current {
        return Err(ApiError::bad_field(
            "revision",
            format!("{} is in the future (current {current})", c.revision),
        ));
    }
    if c.revision < floor {
        return Err(ApiError {
            field: Some("revision".into()),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "compacted",
                format!(
                    "the history is already compacted to {floor}, past {}",
                    c.revision
                ),
            )
        });
    }
    let cmd = Command::Compact {
        revision: c.revision,
    };
    match replicate(&s, cmd, Method::POST, &uri, &headers, body).await? {
        Ok(r) => Ok(with_revision(
            r.revision,
            json!({"revision": r.revision, "compacted": c.revision}),
            StatusCode::OK,
        )),
        Err(forwarded) => Ok(forwarded),
    }
}

/// `GET /api/v1/kv-compact`: the compaction floor and the current revision.
pub async fn compaction(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let (floor, rev) = s
        .node
        .store()
        .compaction()
        .map_err(|e| ApiError::internal("compaction read", e))?;
    Ok(with_revision(
        rev,
        json!({"compacted": floor, "revision": rev}),
        StatusCode::OK,
    ))
}

/// `GET /api/v1/snapshot`: a consistent, checksummed backup of the whole store (see
/// `store::backup`), streamed from a file. It holds the cluster CA key and token hashes:
/// admin only.
pub async fn snapshot(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    if let Some(answer) = linearize_or_forward(&s, Method::GET, &uri, &headers).await? {
        return Ok(answer);
    }
    // Written to a file (never whole in memory), sent from it, and gone once sent: the
    // file is unlinked as soon as it is open.
    let store = s.node.store().clone();
    let dir = store.control_dir().join("backups");
    let (path, rev, size) = tokio::task::spawn_blocking(move || store.backup_file(&dir))
        .await
        .map_err(|e| ApiError::internal("snapshot task", e))?
        .map_err(|e| ApiError::internal("snapshot", e))?;
    let file = tokio::fs::File::open(&path).await;
    let _ = tokio::fs::remove_file(&path).await;
    let file = file.map_err(|e| ApiError::internal("snapshot file", e))?;
    tracing::info!(revision = rev, bytes = size, user = %caller.user, "Serving a snapshot");
    let body =
        axum::body::Body::from_stream(tokio_util::io::ReaderStream::with_capacity(file, 256 << 10));
    let mut r = (
        [(http::header::CONTENT_TYPE, "application/octet-stream")],
        body,
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&rev.to_string()) {
        r.headers_mut().insert("x-tessera-revision", v);
    }
    if let Ok(v) = HeaderValue::from_str(&size.to_string()) {
        r.headers_mut().insert(http::header::CONTENT_LENGTH, v);
    }
    Ok(r)
}
