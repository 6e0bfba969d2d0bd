//! Shard map history: `GET /api/v1/shardmaps/{name}/history` lists every kept version
//! (the last 100, written with each change in the same transaction), and
//! `POST /api/v1/shardmaps/{name}/revert {revision}` makes the map what it was then,
//! validated and audited like any change.

use super::auth::Caller;
use super::context::RequestContext;
use super::error::ApiError;
use super::kv::{linearize_or_forward, with_revision};
use super::resources::{
    commit_and_answer, context, may_write, Extra, Original, Want, HISTORY, HISTORY_KEEP,
};
use super::ApiState;
use crate::model::{Kind, Resource};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

/// `GET /api/v1/shardmaps/{name}/history`: every kept version, oldest first, with the
/// revision it committed at (what `revert` takes).
pub async fn history(
    State(s): State<ApiState>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    if let Some(answer) = linearize_or_forward(&s, Method::GET, &uri, &headers).await? {
        return Ok(answer);
    }
    let (kvs, rev) = s
        .node
        .store()
        .range(&format!("{HISTORY}{name}/"), HISTORY_KEEP * 2)
        .map_err(|e| ApiError::internal("history read", e))?;
    let mut items = Vec::new();
    for kv in &kvs {
        let mut r: Resource =
            serde_json::from_str(&kv.value).map_err(|e| ApiError::internal("history decode", e))?;
        r.metadata.revision = Some(kv.mod_revision);
        let seq = kv
            .key
            .rsplit('/')
            .next()
            .and_then(|s| s.parse::<u64>().ok());
        items.push(json!({"revision": kv.mod_revision, "auditSeq": seq, "object": r}));
    }
    if items.is_empty() {
        return Err(ApiError::not_found(format!(
            "shard map `{name}` has no history"
        )));
    }
    Ok(with_revision(
        rev,
        json!({"name": name, "items": items, "revision": rev}),
        StatusCode::OK,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevertBody {
    revision: u64,
}

/// `POST /api/v1/shardmaps/{name}/revert {revision}`: makes the shard map what it was
/// at `revision` (one of its history's), validated and audited like any change.
pub async fn revert(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ctx: Option<Extension<RequestContext>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ctx = context(ctx);
    if let Err(e) = may_write(&caller, Kind::ShardMap) {
        return Err(super::audit::refuse(&s, &caller, &ctx, "revert", "ShardMap", &name, e).await);
    }
    let (b, raw): (RevertBody, Bytes) = super::error::parse_body(body, "{\"revision\": N}")?;
    let (kvs, _) = s
        .node
        .store()
        .range(&format!("{HISTORY}{name}/"), HISTORY_KEEP * 2)
        .map_err(|e| ApiError::internal("history read", e))?;
    let Some(kv) = kvs.iter().find(|kv| kv.mod_revision == b.revision) else {
        return Err(ApiError {
            field: Some("revision".into()),
            ..ApiError::not_found(format!(
                "shard map `{name}` has no version at revision {}; see GET /api/v1/shardmaps/{name}/history",
                b.revision
            ))
        });
    };
    let mut old: Resource =
        serde_json::from_str(&kv.value).map_err(|e| ApiError::internal("history decode", e))?;
    old.metadata.revision = None;
    let original = Original {
        method: Method::POST,
        uri: &uri,
        headers: &headers,
        body: raw,
    };
    commit_and_answer(
        &s,
        &caller,
        &ctx,
        "revert",
        &Want::Put(vec![(Kind::ShardMap, old)]),
        &Extra::None,
        &original,
        true,
    )
    .await
}
