//! `POST /api/v1/nodes/{name}/certificate`: an agent's certificate for its listener.
//! Only the agent of that node may ask (its credential is `agent-<name>`), with a CSR
//! for a key that never leaves the agent and the IPs its listener answers on. The
//! certificate names `agent.<name>` and those IPs and may only serve TLS: control nodes
//! read the agent's logs over mutual TLS with it, and it cannot pass for a member's.
//! Every issue is audited (`certificate.issue` on the Node).

use super::auth::Caller;
use super::context::RequestContext;
use super::error::{parse_body, ApiError};
use super::forward::{not_leader, path_and_query, to_leader};
use super::ApiState;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;
use std::net::IpAddr;

/// At most this many addresses in one certificate.
const MAX_IPS: usize = 16;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentCertRequest {
    csr: String,
    ips: Vec<IpAddr>,
}

pub async fn issue(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ctx: Option<Extension<RequestContext>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let result = issue_inner(&s, &caller, &name, headers, uri, body).await;
    super::audit::audited(&s, &caller, ctx, "certificate.issue", "Node", &name, result).await
}

async fn issue_inner(
    s: &ApiState,
    caller: &Caller,
    name: &str,
    headers: HeaderMap,
    uri: Uri,
    body: Result<bytes::Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    if caller.role != "agent" || caller.user.strip_prefix("agent-") != Some(name) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "user `{}` (role {}) may not get a certificate for node `{name}`: only that node's agent may",
                caller.user, caller.role
            ),
        ));
    }
    let (req, body): (AgentCertRequest, _) = parse_body(body, "{csr, ips}")?;
    if req.ips.is_empty() || req.ips.len() > MAX_IPS {
        return Err(ApiError::bad_field(
            "ips",
            format!("name 1 to {MAX_IPS} addresses"),
        ));
    }
    if let Some(ip) = req
        .ips
        .iter()
        .find(|ip| ip.is_unspecified() || ip.is_multicast())
    {
        return Err(ApiError::bad_field(
            "ips",
            format!("{ip} is not an address a listener answers on"),
        ));
    }
    // The audit event is written on the leader; a member passes the request on.
    if !s.node.is_leader() {
        let leader = not_leader(s.node.leader_info(), &headers)?;
        return Ok(to_leader(
            s,
            &leader,
            Method::POST,
            &path_and_query(&uri),
            &headers,
            body,
        )
        .await);
    }
    let ca = super::join::cluster_ca(s)?;
    let cert = ca
        .sign_agent_csr(&req.csr, name, &req.ips)
        .map_err(|e| ApiError::bad_field("csr", e.to_string()))?;
    tracing::info!(node = %name, ips = ?req.ips, "Issued an agent certificate");
    Ok((
        StatusCode::CREATED,
        Json(json!({"cert": cert, "ca": ca.cert_pem})),
    )
        .into_response())
}
