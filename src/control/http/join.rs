//! Join tokens, admission and membership changes.
//!
//! `POST /api/v1/tokens` (admin) mints a single-use token `tsr1.<ca-sha256>.<secret>` for
//! a role with an expiry; only its SHA-256 is stored, under `/tessera/jointokens/`. The
//! CA fingerprint in it lets the new machine check it is talking to the right cluster
//! before trusting anything it is sent (as kubeadm's discovery hash does).
//!
//! A new control node then calls, with the token in the body as its credential:
//! 1. `POST /api/v1/join/cert` with a CSR: the token is consumed (atomically, by a compare
//!    on its revision; the same node may retry) and a certificate signed by the cluster CA
//!    is returned with the CA certificate;
//! 2. `POST /api/v1/join`: the node is added as a learner, waited for until it has caught
//!    up, and promoted to voter while there are fewer than five.
//!
//! `DELETE /api/v1/members/{name}` (admin) removes a member safely.

use super::auth::Caller;
use super::error::{parse_body, ApiError};
use super::forward::{not_leader, path_and_query, to_leader};
use super::ApiState;
use crate::control::store::types::{Command, Compare, CompareOp, CompareTarget, NodeInfo, Op};
use crate::control::store::RaftFailure;
use crate::pki::Ca;
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
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub const JOIN_TOKEN_PREFIX: &str = "/tessera/jointokens/";
/// The cluster CA (certificate and key), readable by control nodes only.
pub const CA_KEY: &str = "/tessera/pki/ca";
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

#[derive(Serialize, Deserialize)]
pub struct StoredCa {
    pub cert: String,
    pub key: String,
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

/// `GET /api/v1/join/info` (no token): the cluster CA certificate and the leader's peer
/// address. A joining node checks the CA against the fingerprint its token pins, then
/// sends the token over TLS to that address (never over this plain listener).
pub async fn info(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let ca = cluster_ca(&s)?;
    let m = s.node.members();
    let leader = m
        .members
        .iter()
        .find(|x| x.leader)
        .map(|x| json!({"name": x.name, "peer": x.peer}));
    Ok(Json(json!({"ca": ca.cert_pem, "leader": leader})).into_response())
}

/// The cluster CA from the store.
pub(super) fn cluster_ca(s: &ApiState) -> Result<Ca, ApiError> {
    let (kv, _) = s
        .node
        .store()
        .get(CA_KEY)
        .map_err(|e| ApiError::internal("CA read", e))?;
    let kv = kv.ok_or_else(|| {
        ApiError::unavailable("the cluster CA is not registered yet; retry in a moment")
    })?;
    let ca: StoredCa =
        serde_json::from_str(&kv.value).map_err(|e| ApiError::internal("CA decode", e))?;
    Ok(Ca {
        cert_pem: ca.cert,
        key_pem: ca.key,
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    role: String,
    ttl_secs: Option<u64>,
}

/// `POST /api/v1/tokens`, audited (`token.create`, kind `JoinToken`, name = the role).
pub async fn create_token(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ctx: Option<Extension<super::context::RequestContext>>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let role = body
        .as_ref()
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .and_then(|v| v["role"].as_str().map(str::to_string))
        .unwrap_or_default();
    let result = create_token_inner(&s, &caller, headers, uri, body).await;
    super::audit::audited(&s, &caller, ctx, "token.create", "JoinToken", &role, result).await
}

async fn create_token_inner(
    s: &ApiState,
    caller: &Caller,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let s = s.clone();
    caller.require_admin()?;
    let (req, body): (CreateToken, _) = parse_body(body, "{role, ttl_secs?}")?;
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
    let fp = cluster_ca(&s)?
        .fingerprint()
        .map_err(|e| ApiError::internal("CA fingerprint", e))?;
    let secret = random_bytes::<32>().map_err(|e| ApiError::internal("token generation", e))?;
    let token = format!("tsr1.{fp}.{}", hex(&secret));
    let record = JoinToken {
        role: req.role.clone(),
        expires_at: now() + ttl,
        used: false,
        created_by: caller.user.clone(),
        used_by: None,
    };
    let value =
        serde_json::to_string(&record).map_err(|e| ApiError::internal("token encoding", e))?;
    match s.node.write(Command::put(token_key(&token), value)).await {
        Ok(r) => Ok((StatusCode::CREATED, Json(json!({"token": token, "role": req.role, "expires_at": record.expires_at, "revision": r.revision}))).into_response()),
        Err(RaftFailure::NotLeader { leader }) => {
            let leader = not_leader(leader, &headers)?;
            Ok(to_leader(&s, &leader, Method::POST, &path_and_query(&uri), &headers, body).await)
        }
        Err(e) => Err(raft_error(e)),
    }
}

/// The join endpoints run only on the leader and never forward (the token must not
/// travel further than the TLS connection it came on): elsewhere a 503 tells the joining
/// node to ask `GET /api/v1/join/info` for the leader again.
async fn leader_only(s: &ApiState) -> Result<(), ApiError> {
    match s.node.linearize().await {
        Ok(()) => Ok(()),
        Err(RaftFailure::NotLeader { .. }) => Err(ApiError::unavailable(
            "this node is not the leader (leadership is changing); ask /api/v1/join/info again",
        )),
        Err(e) => Err(raft_error(e)),
    }
}

/// Checks `token` for a control node `node_id` and consumes it (the same node may
/// present it again, e.g. when it retries after a lost answer).
async fn consume(s: &ApiState, token: &str, node_id: &str) -> Result<(), ApiError> {
    consume_for(s, token, node_id, &["control"])
        .await
        .map(|_| ())
}

/// [`consume`] for a token of one of `roles`; returns the token's role.
async fn consume_for(
    s: &ApiState,
    token: &str,
    node_id: &str,
    roles: &[&str],
) -> Result<String, ApiError> {
    let refused = |m: &str| ApiError::new(StatusCode::FORBIDDEN, "join_refused", m.to_string());
    let key = token_key(token);
    let (record, _) = s
        .node
        .store()
        .get(&key)
        .map_err(|e| ApiError::internal("token read", e))?;
    let Some(kv) = record else {
        return Err(refused("the join token is not known to this cluster (mistyped, forged, or for another cluster)"));
    };
    let mut t: JoinToken =
        serde_json::from_str(&kv.value).map_err(|e| ApiError::internal("token decode", e))?;
    let same_node = t.used && t.used_by.as_deref() == Some(node_id);
    if t.used && !same_node {
        return Err(refused(
            "the join token was already used; create a new one with `tessera token create`",
        ));
    }
    if t.expires_at <= now() && !same_node {
        return Err(refused(
            "the join token has expired; create a new one with `tessera token create`",
        ));
    }
    if !roles.contains(&t.role.as_str()) {
        return Err(refused(&format!(
            "the join token is for the {} role, not {}",
            t.role,
            roles.join(" or ")
        )));
    }
    let role = t.role.clone();
    if same_node {
        return Ok(role);
    }
    t.used = true;
    t.used_by = Some(node_id.to_string());
    let value = serde_json::to_string(&t).map_err(|e| ApiError::internal("token encode", e))?;
    let txn = Command::Txn {
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
        failure: vec![],
    };
    if !s.node.write(txn).await.map_err(raft_error)?.succeeded {
        return Err(refused(
            "the join token was used concurrently by another node",
        ));
    }
    Ok(role)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialRequest {
    pub token: String,
    /// The enrolling machine's node name.
    pub name: String,
}

/// `POST /api/v1/join/credential {token, name}` (peer listener, TLS): a gateway, agent
/// or DB proxy exchanges its join token for an API bearer token of its role, held by the
/// user `<role>-<name>` (created, or re-enrolled with a new token). Audited.
pub async fn credential(
    State(s): State<ApiState>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (req, raw): (CredentialRequest, _) = parse_body(body, "{token, name}")?;
    crate::model::check_name("name", &req.name)
        .map_err(|e| ApiError::bad_field("name", e.message))?;
    leader_only(&s).await?;
    let role = consume_for(
        &s,
        &req.token,
        &format!("service:{}", req.name),
        &SERVICE_ROLES,
    )
    .await?;
    let user = format!("{role}-{}", req.name);
    crate::model::check_name("name", &user).map_err(|e| ApiError::bad_field("name", e.message))?;
    let mut obj =
        crate::model::Resource::new(crate::model::Kind::User, &user, json!({"role": role}));
    obj.metadata
        .annotations
        .insert("tessera.io/enrolled-at".into(), crate::model::now_rfc3339());
    let token = super::users::new_token()?;
    let extra = super::resources::Extra::Ops(vec![super::users::token_op(&token, &user, &role)?]);
    let caller = Caller {
        user: format!("{user} (join token)"),
        role: role.clone(),
    };
    let ctx = super::resources::context(None);
    let original = super::resources::Original {
        method: Method::POST,
        uri: &uri,
        headers: &headers,
        body: raw,
    };
    let want = super::resources::Want::Put(vec![(crate::model::Kind::User, obj)]);
    match super::resources::commit(&s, &caller, &ctx, "user.enroll", &want, &extra, &original)
        .await?
    {
        Ok((_, rev)) => {
            tracing::info!(user = %user, role = %role, "Enrolled a service credential");
            Ok(
                Json(json!({"user": user, "role": role, "token": token, "revision": rev}))
                    .into_response(),
            )
        }
        Err(forwarded) => Ok(forwarded),
    }
}

/// Roles that enroll for an API credential rather than Raft membership.
pub const SERVICE_ROLES: [&str; 3] = ["agent", "gateway", "dbproxy"];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertRequest {
    pub token: String,
    pub node_id: String,
    pub name: String,
    /// Addresses the certificate must name (the node's API and peer IPs).
    pub ips: Vec<IpAddr>,
    pub csr: String,
}

pub async fn join_cert(
    State(s): State<ApiState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (req, _): (CertRequest, _) = parse_body(body, "a certificate request")?;
    if req.ips.is_empty() || req.ips.len() > 16 {
        return Err(ApiError::bad_field("ips", "name 1 to 16 addresses"));
    }
    leader_only(&s).await?;
    name_free(&s, &req.name, &req.node_id)?;
    consume(&s, &req.token, &req.node_id).await?;
    let ca = cluster_ca(&s)?;
    let cert = ca
        .sign_csr(&req.csr, &req.name, &req.ips)
        .map_err(|e| ApiError::bad_field("csr", e.to_string()))?;
    tracing::info!(node = %req.name, node_id = %req.node_id, "Issued a control node certificate");
    Ok(Json(json!({"cert": cert, "ca": ca.cert_pem})).into_response())
}

/// A name belongs to one member: a wiped machine that comes back under its old name has
/// a new id, and must wait until the old member is removed (as etcd requires), so a
/// misconfigured duplicate can never push a healthy member out.
fn name_free(s: &ApiState, name: &str, node_id: &str) -> Result<(), ApiError> {
    match s.node.find_member(name) {
        Some(id) if id.to_string() != node_id => Err(ApiError::new(
            StatusCode::CONFLICT,
            "name_taken",
            format!("a member named `{name}` already exists (id {id}); if this machine replaces it, run `tessera members remove {name}` first, then join again with a new token"),
        )),
        _ => Ok(()),
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
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (req, _): (JoinRequest, _) = parse_body(body, "a join request")?;
    let id: u64 = req
        .node_id
        .parse()
        .map_err(|_| ApiError::bad_field("node_id", "not a node id"))?;
    leader_only(&s).await?;
    name_free(&s, &req.node.name, &req.node_id)?;
    consume(&s, &req.token, &req.node_id).await?;
    tracing::info!(node = %req.node.name, node_id = id, peer = %req.node.peer, "Admitting a control node");
    let role = s
        .node
        .add_member(id, req.node, CATCH_UP)
        .await
        .map_err(raft_error)?;
    Ok(Json(json!({"cluster_id": s.node.store().cluster_id(), "node_id": req.node_id, "role": role, "members": s.node.members()})).into_response())
}

/// `DELETE /api/v1/members/{name}`, audited (`member.remove`, kind `Member`).
pub async fn remove_member(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ctx: Option<Extension<super::context::RequestContext>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let result = remove_member_inner(&s, &caller, &name, headers, uri).await;
    super::audit::audited(&s, &caller, ctx, "member.remove", "Member", &name, result).await
}

async fn remove_member_inner(
    s: &ApiState,
    caller: &Caller,
    name: &str,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let (s, name) = (s.clone(), name.to_string());
    caller.require_admin()?;
    let id = s
        .node
        .find_member(&name)
        .ok_or_else(|| ApiError::not_found(format!("no member named `{name}`")))?;
    match s.node.remove_member(id).await {
        Ok(()) => Ok(Json(json!({"removed": name, "members": s.node.members()})).into_response()),
        Err(RaftFailure::NotLeader { leader }) => {
            let leader = not_leader(leader, &headers)?;
            Ok(to_leader(
                &s,
                &leader,
                Method::DELETE,
                &path_and_query(&uri),
                &headers,
                Bytes::new(),
            )
            .await)
        }
        Err(e) => Err(raft_error(e)),
    }
}

/// Registers the CA in the store (run by the bootstrap node once it leads).
pub async fn register_ca(node: &crate::control::store::RaftNode, ca: &Ca) -> Result<(), String> {
    let (existing, _) = node.store().get(CA_KEY)?;
    if existing.is_some() {
        return Ok(());
    }
    let value = serde_json::to_string(&StoredCa {
        cert: ca.cert_pem.clone(),
        key: ca.key_pem.clone(),
    })
    .map_err(|e| e.to_string())?;
    node.write(Command::put(CA_KEY, value))
        .await
        .map_err(|e| format!("registering the CA: {e}"))?;
    Ok(())
}
