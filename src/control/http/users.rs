//! Users and their API tokens (admin only):
//!
//! - `POST /api/v1/users {name, role}` → 201 `{name, role, token}`: the user (a `User`
//!   resource, `spec.role`) and a new bearer token for it, shown this once; the store
//!   keeps only the token's SHA-256 (`/tessera/tokens/<hex>`).
//! - `POST /api/v1/users/{name}/tokens` → 201 `{name, role, token}`: another token.
//! - `DELETE /api/v1/users/{name}`: the user and every token of it.
//! - `GET /api/v1/users[/{name}]`: the generic resource reads.
//!
//! Roles: `admin` (everything), `operator` (apps, traffic rules, releases, artifacts),
//! `approver` (reads, approves releases, reads the audit trail), `viewer` (reads).
//! Every change is audited (the token never appears in the audit trail).

use super::auth::{token_key, Caller, TOKEN_PREFIX};
use super::error::{parse_body, ApiError};
use super::resources::{commit, commit_and_answer, context, Extra, Original, Want};
use super::ApiState;
use crate::control::http::context::RequestContext;
use crate::control::store::types::Op;
use crate::model::specs::ROLES;
use crate::model::{Kind, Resource};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    name: String,
    role: String,
}

pub(super) fn new_token() -> Result<String, ApiError> {
    let bytes = crate::util::random_bytes::<32>()
        .map_err(|e| ApiError::internal("reading /dev/urandom", e))?;
    Ok(format!("tsr_{}", crate::util::hex(&bytes)))
}

pub(super) fn token_op(token: &str, name: &str, role: &str) -> Result<Op, ApiError> {
    Ok(Op::Put {
        key: token_key(token),
        value: serde_json::to_string(&Caller {
            user: name.into(),
            role: role.into(),
        })
        .map_err(|e| ApiError::internal("encode", e))?,
        lease: 0,
    })
}

pub async fn create(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ctx: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ctx = context(ctx);
    let (u, raw): (NewUser, Bytes) = parse_body(body, "{\"name\": ..., \"role\": ...}")?;
    if let Err(e) = caller.require_admin() {
        return Err(
            super::audit::refuse(&s, &caller, &ctx, "user.create", "User", &u.name, e).await,
        );
    }
    let obj = Resource::new(Kind::User, &u.name, json!({"role": u.role}));
    if let Err(e) = obj.check(Some(Kind::User)) {
        let field = if e.field == "spec.role" {
            "role"
        } else {
            "name"
        };
        let e = ApiError::bad_field(field, e.message);
        return Err(
            super::audit::refuse(&s, &caller, &ctx, "user.create", "User", &u.name, e).await,
        );
    }
    if !ROLES.contains(&u.role.as_str()) {
        return Err(ApiError::bad_field("role", "unknown role"));
    }
    // A forwarded request is answered by the leader, which makes its own token.
    let token = new_token()?;
    let extra = Extra::Ops(vec![token_op(&token, &u.name, &u.role)?]);
    let original = Original {
        method: Method::POST,
        uri: &uri,
        headers: &headers,
        body: raw,
    };
    match commit(
        &s,
        &caller,
        &ctx,
        "user.create",
        &Want::Put(vec![(Kind::User, obj)]),
        &extra,
        &original,
    )
    .await?
    {
        Ok((_, rev)) => Ok(super::kv::with_revision(
            rev,
            json!({"name": u.name, "role": u.role, "token": token, "revision": rev}),
            StatusCode::CREATED,
        )),
        Err(forwarded) => Ok(forwarded),
    }
}

pub async fn add_token(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ctx: Option<Extension<RequestContext>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let ctx = context(ctx);
    if let Err(e) = caller.require_admin() {
        return Err(
            super::audit::refuse(&s, &caller, &ctx, "token.create", "User", &name, e).await,
        );
    }
    if !s.node.is_leader() {
        let leader = super::forward::not_leader(s.node.leader_info(), &headers)?;
        return Ok(super::forward::to_leader(
            &s,
            &leader,
            Method::POST,
            &super::forward::path_and_query(&uri),
            &headers,
            Bytes::new(),
        )
        .await);
    }
    use crate::control::store::types::{Command, Compare, CompareOp, CompareTarget};
    let user_key = super::resources::object_key(Kind::User, &name);
    let token = new_token()?;
    for _ in 0..super::resources::ATTEMPTS {
        s.node
            .linearize()
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let (keys, _, _) = s
            .node
            .store()
            .get_and_ranges(&[super::audit::HEAD, &user_key], &[], 0)
            .map_err(|e| ApiError::internal("user read", e))?;
        let head = super::audit::HeadAt::from_kv(keys[0].as_ref())
            .map_err(|e| ApiError::internal("audit head", e))?;
        let Some(kv) = keys[1].as_ref() else {
            return Err(super::audit::refuse(
                &s,
                &caller,
                &ctx,
                "token.create",
                "User",
                &name,
                ApiError::not_found(format!("user `{name}` does not exist")),
            )
            .await);
        };
        let user: Resource =
            serde_json::from_str(&kv.value).map_err(|e| ApiError::internal("user decode", e))?;
        let role = user
            .spec
            .get("role")
            .and_then(|r| r.as_str())
            .unwrap_or("viewer")
            .to_string();
        let entry = super::audit::Entry {
            action: "token.create".into(),
            kind: "User".into(),
            name: name.clone(),
            refused: None,
            diff: Vec::new(),
        };
        let (audit_ops, _) = super::audit::append_ops(&head.head, &caller, &ctx, vec![entry])
            .map_err(|e| ApiError::internal("audit event", e))?;
        // The user must still exist when the token lands, and no other audited change
        // (a deletion of this user, which revokes its tokens as it reads them) may
        // commit in between: then this is tried again.
        let mut success = vec![token_op(&token, &name, &role)?];
        success.extend(audit_ops);
        let cmd = Command::Txn {
            compare: vec![
                Compare {
                    key: user_key.clone(),
                    op: CompareOp::Equal,
                    target: CompareTarget::ModRevision(kv.mod_revision),
                },
                head.unchanged(),
            ],
            success,
            failure: Vec::new(),
        };
        let r = s
            .node
            .write(cmd)
            .await
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        if r.succeeded {
            return Ok(super::kv::with_revision(
                r.revision,
                json!({"name": name, "role": role, "token": token, "revision": r.revision}),
                StatusCode::CREATED,
            ));
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "busy",
        "other changes kept committing first; retry",
    ))
}

/// `DELETE /api/v1/users/{name}` (routed here by the generic resource delete).
pub async fn delete(
    s: &ApiState,
    caller: &Caller,
    ctx: &RequestContext,
    name: String,
    headers: &HeaderMap,
    uri: &Uri,
) -> Result<Response, ApiError> {
    if let Err(e) = caller.require_admin() {
        return Err(super::audit::refuse(s, caller, ctx, "user.delete", "User", &name, e).await);
    }
    if caller.user == name {
        let e = ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            "you cannot delete yourself; another admin can",
        );
        return Err(super::audit::refuse(s, caller, ctx, "user.delete", "User", &name, e).await);
    }
    let who = name.clone();
    // Every token of the user goes with it (read afresh on each attempt).
    let extra = Extra::Computed(Box::new(move |s: &ApiState| {
        let (kvs, _) = s
            .node
            .store()
            .range(TOKEN_PREFIX, 1_000_000)
            .map_err(|e| ApiError::internal("token read", e))?;
        Ok(kvs
            .into_iter()
            .filter(|kv| serde_json::from_str::<Caller>(&kv.value).is_ok_and(|c| c.user == who))
            .map(|kv| Op::Delete {
                key: kv.key,
                prefix: false,
            })
            .collect())
    }));
    let original = Original {
        method: Method::DELETE,
        uri,
        headers,
        body: Bytes::new(),
    };
    commit_and_answer(
        s,
        caller,
        ctx,
        "user.delete",
        &Want::Delete(Kind::User, name, None),
        &extra,
        &original,
        true,
    )
    .await
}
