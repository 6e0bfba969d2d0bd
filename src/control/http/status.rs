//! `PUT /api/v1/{kinds}/{name}/status`: the status tessera's own components report.

use super::auth::Caller;
use super::error::ApiError;
use super::kv::with_revision;
use super::resources::{decode, forward, kind_of, object_key, Original, ATTEMPTS};
use super::ApiState;
use crate::control::store::types::{Command, Compare, CompareOp, CompareTarget, Op};
use crate::control::store::RaftFailure;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StatusBody {
    /// Only if the object is still at this revision.
    #[serde(default)]
    revision: Option<u64>,
    status: serde_json::Value,
}

/// Largest status object accepted.
const MAX_STATUS: usize = 64 << 10;

/// `PUT /api/v1/{kinds}/{name}/status {status, revision?}`: replaces the status that
/// tessera's own components (agents, reconcilers) report, leaving spec and labels alone.
/// Admins, agents for their own node and the instances placed on it, and DB proxies for
/// data sources (merged under `status.proxies.<proxy>`). Not audited:
/// status is observed state, not a change anyone declares, and it changes with every
/// heartbeat.
pub async fn put_status(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let kind = kind_of(&uri)?;
    // An agent reports on its own node and its instances (checked on the object below).
    let agent_node = (caller.role == "agent")
        .then(|| caller.user.strip_prefix("agent-").map(str::to_string))
        .flatten()
        .filter(|_| {
            matches!(
                kind,
                crate::model::Kind::Node | crate::model::Kind::Instance
            )
        });
    // A DB proxy reports how it sees a data source's servers, under its own name in
    // `status.proxies` (each proxy's report replaces only its own entry).
    let proxy = (caller.role == "dbproxy" && kind == crate::model::Kind::DataSource)
        .then(|| caller.user.strip_prefix("dbproxy-").map(str::to_string))
        .flatten();
    if agent_node.is_none() && proxy.is_none() {
        caller.require_admin()?;
    }
    let (b, raw): (StatusBody, Bytes) =
        super::error::parse_body(body, "{\"status\": {...}, \"revision\"?: N}")?;
    if !b.status.is_object() {
        return Err(ApiError::bad_field("status", "must be an object"));
    }
    if raw.len() > MAX_STATUS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("a status is at most {MAX_STATUS} bytes"),
        ));
    }
    let original = Original {
        method: Method::PUT,
        uri: &uri,
        headers: &headers,
        body: raw,
    };
    if !s.node.is_leader() {
        return forward(&s, &original).await;
    }
    for _ in 0..ATTEMPTS {
        match s.node.linearize().await {
            Ok(()) => {}
            Err(RaftFailure::NotLeader { .. }) => return forward(&s, &original).await,
            Err(e) => return Err(ApiError::unavailable(e.to_string())),
        }
        let key = object_key(kind, &name);
        let (kv, _) = s
            .node
            .store()
            .get(&key)
            .map_err(|e| ApiError::internal("resource read", e))?;
        let Some(kv) = kv else {
            return Err(ApiError::not_found(format!(
                "{} `{name}` does not exist",
                kind.singular().to_ascii_lowercase()
            )));
        };
        if let Some(want) = b.revision.filter(|r| *r != kv.mod_revision) {
            return Err(ApiError {
                field: Some("revision".into()),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "stale_revision",
                    format!(
                        "{} `{name}` is at revision {}, not {want}",
                        kind.singular(),
                        kv.mod_revision
                    ),
                )
            });
        }
        let mut obj = decode(&kv)?;
        if let Some(own) = &agent_node {
            let mine = match kind {
                crate::model::Kind::Node => name == *own,
                _ => obj.spec.get("node").and_then(|n| n.as_str()) == Some(own.as_str()),
            };
            if !mine {
                return Err(ApiError::new(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    format!(
                        "user `{}` reports only on node `{own}` and the instances placed on it",
                        caller.user
                    ),
                ));
            }
        }
        obj.metadata.revision = None;
        match &proxy {
            Some(p) => {
                if !obj.status.is_object() {
                    obj.status = serde_json::json!({});
                }
                let proxies = obj
                    .status
                    .as_object_mut()
                    .expect("made an object above") // ok: set to an object just before
                    .entry("proxies")
                    .or_insert_with(|| serde_json::json!({}));
                if !proxies.is_object() {
                    *proxies = serde_json::json!({});
                }
                proxies
                    .as_object_mut()
                    .expect("made an object above") // ok: set to an object just before
                    .insert(p.clone(), b.status.clone());
            }
            None => obj.status = b.status.clone(),
        }
        let value = serde_json::to_string(&obj).map_err(|e| ApiError::internal("encode", e))?;
        let cmd = Command::Txn {
            compare: vec![Compare {
                key: key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(kv.mod_revision),
            }],
            success: vec![Op::Put {
                key,
                value,
                lease: 0,
            }],
            failure: Vec::new(),
        };
        match s.node.write(cmd).await {
            Ok(r) if r.succeeded => {
                obj.metadata.revision = Some(r.revision);
                return Ok(with_revision(
                    r.revision,
                    serde_json::to_value(obj).unwrap_or_default(),
                    StatusCode::OK,
                ));
            }
            Ok(_) => continue,
            Err(RaftFailure::NotLeader { .. }) => return forward(&s, &original).await,
            Err(e) => return Err(ApiError::unavailable(e.to_string())),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "busy",
        "the object kept changing; retry",
    ))
}
