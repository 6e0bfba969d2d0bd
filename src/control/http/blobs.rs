//! Artifact contents ("blobs"), content-addressed by SHA-256 and kept on the control
//! nodes' disks (`<data_dir>/control/blobs/<sha256>`), never in the Raft log; the
//! `artifacts` resources name them.
//!
//! - `PUT /api/v1/blobs/{sha256}`: the bytes are written as they arrive (temp file,
//!   hashed on the way, fsync, rename once the digest matches) and copied to every other member over the peer channel
//!   (mutual TLS, the caller's token with them). The answer says how many members hold
//!   it. Admins and operators (the writers of artifacts).
//! - `GET /api/v1/blobs/{sha256}`: the bytes, for agents and people, streamed from the
//!   file (many agents downloading a large artifact at once cost no memory). A node
//!   without them fetches them from a member that has them (spooled to disk with the
//!   digest checked, then served from the file).
//!
//! Copies between members stream over the peer channel both ways, so a push or a fetch
//! of the largest artifact costs buffers, not its size, in memory.

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;
use crate::control::store::PeerBody;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use http_body_util::Full;
use serde_json::json;
use std::time::Duration;

/// Marks a copy sent by another member (stored, not copied further).
const REPLICA: &str = "x-tessera-replica";
/// The largest artifact accepted.
pub const MAX_BLOB: usize = 512 << 20;
const PEER_TIMEOUT: Duration = Duration::from_secs(120);

fn dir(s: &ApiState) -> std::path::PathBuf {
    s.node.store().control_dir().join("blobs")
}

fn check_digest(sha: &str) -> Result<(), ApiError> {
    if sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(ApiError::bad_field(
            "sha256",
            format!("`{sha}` is not a SHA-256 digest (64 lowercase hex digits)"),
        ))
    }
}

fn may_push(caller: &Caller) -> Result<(), ApiError> {
    if caller.role == "admin" || caller.role == "operator" {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "user `{}` (role {}) may not push artifacts: admins and operators only",
            caller.user, caller.role
        ),
    ))
}

/// How long a member may take to answer a copy of `size` bytes: the answer comes once
/// the whole body is stored, so the wait grows with the size (at least 8 MiB/s).
fn transfer_ttl(size: u64) -> Duration {
    PEER_TIMEOUT + Duration::from_secs(size / (8 << 20))
}

/// The file `path` as a streamed peer-channel body.
async fn file_body(path: &std::path::Path) -> std::io::Result<PeerBody> {
    use futures_util::TryStreamExt;
    use http_body_util::BodyExt;
    let f = tokio::fs::File::open(path).await?;
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 64 << 10);
    Ok(http_body_util::StreamBody::new(stream.map_ok(hyper::body::Frame::data)).boxed())
}

/// Writes a pushed body to `<blobs>/.<sha>.<random>.part` as it arrives, hashing it on
/// the way, and moves it into place once the digest matches; nothing is kept otherwise.
/// Memory stays flat whatever the size.
async fn receive<B>(s: &ApiState, sha: &str, body: B) -> Result<u64, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: std::fmt::Display,
{
    let d = dir(s);
    tokio::fs::create_dir_all(&d)
        .await
        .map_err(|e| ApiError::internal("blob dir", e))?;
    let path = d.join(sha);
    let suffix = crate::util::hex(
        &crate::util::random_bytes::<6>().map_err(|e| ApiError::internal("blob", e))?,
    );
    let tmp = d.join(format!(".{sha}.{suffix}.part"));
    let storage = |e: std::io::Error| {
        ApiError::new(
            StatusCode::INSUFFICIENT_STORAGE,
            "storage",
            format!("cannot store the artifact on this control node: {e}"),
        )
    };
    let write = async {
        let (actual, size) = crate::util::spool(body, &tmp, MAX_BLOB as u64)
            .await
            .map_err(|e| match e {
                crate::util::SpoolError::Body(m) => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("reading the upload: {m}"),
                ),
                crate::util::SpoolError::TooLarge => ApiError::new(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too_large",
                    format!("artifacts are at most {} MiB", MAX_BLOB >> 20),
                ),
                crate::util::SpoolError::Io(e) => storage(e),
            })?;
        if actual != sha {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "digest_mismatch",
                format!("the content's SHA-256 is {actual}, not {sha}: the upload was damaged"),
            ));
        }
        tokio::fs::rename(&tmp, &path).await.map_err(storage)?;
        if let Ok(dirf) = tokio::fs::File::open(&d).await {
            let _ = dirf.sync_all().await;
        }
        Ok(size)
    };
    let r = write.await;
    if r.is_err() {
        let _ = tokio::fs::remove_file(&tmp).await;
    }
    r
}

pub async fn put(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(sha): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    may_push(&caller)?;
    check_digest(&sha)?;
    let size = receive(&s, &sha, body).await?;
    if headers.contains_key(REPLICA) {
        return Ok(Json(json!({"sha256": sha, "size": size})).into_response());
    }
    // Copy it to every other member, all at once, each streamed from the file.
    let others = s.node.other_members();
    let total = others.len() + 1;
    let path = dir(&s).join(&sha);
    let copies = others.iter().map(|m| {
        let req = http::Request::builder()
            .method(Method::PUT)
            .uri(format!("/api/v1/blobs/{sha}"))
            .header(REPLICA, "1")
            .header(header::CONTENT_LENGTH, size)
            .header(header::CONTENT_TYPE, "application/octet-stream");
        let req = match headers.get(header::AUTHORIZATION) {
            Some(a) => req.header(header::AUTHORIZATION, a),
            None => req,
        };
        let (s, name, path) = (s.clone(), m.name.clone(), path.clone());
        async move {
            let body = file_body(&path)
                .await
                .map_err(|e| format!("{name}: reading {}: {e}", path.display()))?;
            let req = req.body(body).map_err(|e| e.to_string())?;
            match s.node.forward_streaming(m, req, transfer_ttl(size)).await {
                Ok(r) if r.status().is_success() => Ok(name),
                Ok(r) => Err(format!("{name}: answered {}", r.status())),
                Err(e) => Err(format!("{name}: {e}")),
            }
        }
    });
    let results = futures_util::future::join_all(copies).await;
    let failed: Vec<String> = results.into_iter().filter_map(Result::err).collect();
    let held = total - failed.len();
    if !failed.is_empty() {
        tracing::warn!(sha256 = %sha, failed = ?failed, "Some members did not take an artifact's copy");
    }
    Ok(Json(json!({
        "sha256": sha,
        "size": size,
        "members": total,
        "copies": held,
        "failed": failed,
    }))
    .into_response())
}

pub async fn get(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(sha): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !matches!(
        caller.role.as_str(),
        "admin" | "operator" | "approver" | "viewer" | "agent"
    ) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "user `{}` (role {}) may not read artifacts",
                caller.user, caller.role
            ),
        ));
    }
    check_digest(&sha)?;
    let path = dir(&s).join(&sha);
    // A member without the content fetches it first (spooled into place), then every
    // answer streams from the file.
    let f = match tokio::fs::File::open(&path).await {
        Ok(f) => f,
        Err(_) if headers.contains_key(REPLICA) => {
            return Err(ApiError::not_found(format!(
                "no artifact content {sha} here"
            )));
        }
        Err(_) => {
            fetch_from_members(&s, &sha, &headers).await?;
            tokio::fs::File::open(&path)
                .await
                .map_err(|e| ApiError::internal("blob read", e))?
        }
    };
    let len = f.metadata().await.map(|m| m.len()).ok();
    let body = Body::from_stream(tokio_util::io::ReaderStream::with_capacity(f, 64 << 10));
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    if let Some(n) = len {
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!("\"{sha}\"")) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}

/// Finds the content on another member and keeps a copy (spooled, its digest checked,
/// as a push is); returns its size.
async fn fetch_from_members(s: &ApiState, sha: &str, headers: &HeaderMap) -> Result<u64, ApiError> {
    use http_body_util::BodyExt;
    let mut tried = Vec::new();
    for m in s.node.other_members() {
        let mut req = http::Request::builder()
            .method(Method::GET)
            .uri(format!("/api/v1/blobs/{sha}"))
            .header(REPLICA, "1");
        if let Some(a) = headers.get(header::AUTHORIZATION) {
            req = req.header(header::AUTHORIZATION, a);
        }
        let empty = Full::new(Bytes::new())
            .map_err(|never| match never {})
            .boxed();
        let Ok(req) = req.body(empty) else {
            continue;
        };
        match s.node.forward_streaming(&m, req, PEER_TIMEOUT).await {
            Ok(r) if r.status().is_success() => {
                // The transfer itself is bounded by the size it may have.
                let limit = transfer_ttl(MAX_BLOB as u64);
                match tokio::time::timeout(limit, receive(s, sha, r.into_body())).await {
                    Ok(Ok(size)) => {
                        tracing::info!(sha256 = %sha, from = %m.name, size, "Fetched an artifact's content from a member");
                        return Ok(size);
                    }
                    Ok(Err(e)) => tried.push(format!("{}: {}", m.name, e.message)),
                    Err(_) => tried.push(format!("{}: the copy took over {limit:?}", m.name)),
                }
            }
            Ok(r) => tried.push(format!("{}: {}", m.name, r.status())),
            Err(e) => tried.push(format!("{}: {e}", m.name)),
        }
    }
    Err(ApiError::not_found(if tried.is_empty() {
        format!("no artifact content {sha}: push it with `tessera artifact push`")
    } else {
        format!(
            "no artifact content {sha} on any control node ({})",
            tried.join("; ")
        )
    }))
}
