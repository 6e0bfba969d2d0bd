//! Join tokens and membership changes.
//!
//! `POST /api/v1/tokens` (admin) mints a single-use token for a role with an expiry; only
//! its SHA-256 is stored, under `/tessera/jointokens/`. `POST /api/v1/join` (no bearer:
//! the token in the body is the credential) lets a new control node in: the token is
//! checked and consumed atomically (a compare on its revision), the node is added as a
//! learner, waited for until it has caught up, and promoted to voter while there are
//! fewer than five. `DELETE /api/v1/members/{name}` (admin) removes a member safely.

use super::auth::Caller;
use super::error::ApiError;
use super::forward::{not_leader, to_leader};
use super::ApiState;
use crate::control::store::types::{Command, Compare, CompareOp, CompareTarget, NodeInfo, Op};
use crate::control::store::RaftFailure;
use crate::util::{hex, random_bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const JOIN_TOKEN_PREFIX: &str = "/tessera/jointokens/";
const ROLES: [&str; 4] = ["control", "agent", "gateway", "dbproxy"];
const MAX_TTL_SECS: u64 = 7 * 24 * 3600;
/// How long a joining node may take to catch up before the join is abandoned.
const CATCH_UP: Duration = Duration::from_secs(60);

#[derive(Debug, Serialize, Deserialize)]
struct JoinToken {
    role: String,
    expires_at: u64,
    used: bool,
    created_by: String,
    /// The node that used it: that node may retry its own join with it.
    #[serde(default)]
    used_by: Option<String>,
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn token_key(token: &str) -> String {
    format!(
        "{JOIN_TOKEN_PREFIX}{}",
        hex(&Sha256::digest(token.as_bytes()))
    )
}

fn raft_error(e: RaftFailure) -> ApiError {
    match e {
        RaftFailure::Refused(m) => ApiError::new(StatusCode::CONFLICT, "refused", m),
        other => ApiError::unavailable(other.to_string()),
    }
}

fn pq(uri: &Uri) -> String {
    uri.path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    role: String,
    ttl_secs: Option<u64>,
}

pub async fn create_token(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let body = body.map_err(|e| ApiError::new(e.status(), "bad_body", e.body_text()))?;
    let req: CreateToken = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_field("body", format!("expected {{role, ttl_secs?}}: {e}")))?;
    if !ROLES.contains(&req.role.as_str()) {
        return Err(ApiError::bad_field(
            "role",
            format!(
                "`{}` is not a role: expected one of {}",
                req.role,
                ROLES.join(", ")
            ),
        ));
    }
    let ttl = req.ttl_secs.unwrap_or(3600);
    if ttl == 0 || ttl > MAX_TTL_SECS {
        return Err(ApiError::bad_field(
            "ttl_secs",
            format!("{ttl} is out of range 1-{MAX_TTL_SECS}"),
        ));
    }
    let secret = random_bytes::<32>().map_err(|e| ApiError::internal("token generation", e))?;
    let token = format!("tsr1.{}", hex(&secret));
    let record = JoinToken {
        role: req.role.clone(),
        expires_at: now() + ttl,
        used: false,
        created_by: caller.user.clone(),
        used_by: None,
    };
    let value =
        serde_json::to_string(&record).map_err(|e| ApiError::internal("token encoding", e))?;
    match s.node.write(Command::Put { key: token_key(&token), value }).await {
        Ok(r) => Ok((StatusCode::CREATED, Json(json!({"token": token, "role": req.role, "expires_at": record.expires_at, "revision": r.revision}))).into_response()),
        Err(RaftFailure::NotLeader { leader }) => {
            let leader = not_leader(leader, &headers)?;
            Ok(to_leader(&leader, Method::POST, &pq(&uri), &headers, body).await)
        }
        Err(e) => Err(raft_error(e)),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub token: String,
    /// The joining node's Raft id (a string: ids exceed JSON's safe integers).
    pub node_id: String,
    pub node: NodeInfo,
}

pub async fn join(
    State(s): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), "bad_body", e.body_text()))?;
    let req: JoinRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_field("body", format!("not a join request: {e}")))?;
    let id: u64 = req
        .node_id
        .parse()
        .map_err(|_| ApiError::bad_field("node_id", "not a node id"))?;
    match s.node.linearize().await {
        Ok(()) => {}
        Err(RaftFailure::NotLeader { leader }) => {
            let leader = not_leader(leader, &headers)?;
            return Ok(to_leader(&leader, Method::POST, &pq(&uri), &headers, body).await);
        }
        Err(e) => return Err(raft_error(e)),
    }
    let refused = |m: &str| ApiError::new(StatusCode::FORBIDDEN, "join_refused", m.to_string());
    let key = token_key(&req.token);
    let (record, _) = s
        .node
        .store()
        .get(&key)
        .map_err(|e| ApiError::internal("token read", e))?;
    let Some(kv) = record else {
        return Err(refused("the join token is not known to this cluster (mistyped, forged, or for another cluster)"));
    };
    let mut token: JoinToken =
        serde_json::from_str(&kv.value).map_err(|e| ApiError::internal("token decode", e))?;
    let retry_by_same_node = token.used && token.used_by.as_deref() == Some(req.node_id.as_str());
    if token.used && !retry_by_same_node {
        return Err(refused(
            "the join token was already used; create a new one with `tessera token create`",
        ));
    }
    if token.expires_at <= now() && !retry_by_same_node {
        return Err(refused(
            "the join token has expired; create a new one with `tessera token create`",
        ));
    }
    if token.role != "control" {
        return Err(refused(&format!(
            "the join token is for the {} role, not control",
            token.role
        )));
    }
    if !retry_by_same_node {
        // Consume the token atomically: it holds only if nobody changed it since we read it.
        token.used = true;
        token.used_by = Some(req.node_id.clone());
        let value =
            serde_json::to_string(&token).map_err(|e| ApiError::internal("token encode", e))?;
        let consume = Command::Txn {
            compare: vec![Compare {
                key: key.clone(),
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(kv.mod_revision),
            }],
            success: vec![Op::Put { key, value }],
            failure: vec![],
        };
        let r = s.node.write(consume).await.map_err(raft_error)?;
        if !r.succeeded {
            return Err(refused(
                "the join token was used concurrently by another node",
            ));
        }
    }
    tracing::info!(node = %req.node.name, node_id = id, peer = %req.node.peer, "Admitting a control node");
    let role = s
        .node
        .add_member(id, req.node, CATCH_UP)
        .await
        .map_err(raft_error)?;
    Ok(Json(json!({"cluster_id": s.node.store().cluster_id(), "node_id": req.node_id, "role": role, "members": s.node.members()})).into_response())
}

pub async fn remove_member(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let id = s
        .node
        .find_member(&name)
        .ok_or_else(|| ApiError::not_found(format!("no member named `{name}`")))?;
    match s.node.remove_member(id).await {
        Ok(()) => Ok(Json(json!({"removed": name, "members": s.node.members()})).into_response()),
        Err(RaftFailure::NotLeader { leader }) => {
            let leader = not_leader(leader, &headers)?;
            Ok(to_leader(&leader, Method::DELETE, &pq(&uri), &headers, Bytes::new()).await)
        }
        Err(e) => Err(raft_error(e)),
    }
}
