//! The typed resource API (CONTRACT.md "REST API"):
//!
//! - `GET /api/v1/{kinds}[?labelSelector=...]`, `GET /api/v1/{kinds}/{name}`
//! - `PUT /api/v1/{kinds}/{name}` (create or replace; a `metadata.revision` that is not
//!   the stored one answers 409), `DELETE /api/v1/{kinds}/{name}[?revision=N]`
//! - `POST /api/v1/apply`: many documents (YAML or JSON), all or nothing; objects whose
//!   labels, annotations and spec are unchanged are left alone (and not audited)
//! - `GET /api/v1/watch?kinds=a,b&since=REV`: Server-Sent Events
//! - `GET /api/v1/shardmaps/{name}/history`, `POST /api/v1/shardmaps/{name}/revert`
//!
//! Objects live under `/tessera/resources/<kinds>/<name>`. A change is validated on the
//! leader against one consistent read of every object and committed in one
//! transaction with its audit events, on condition that the audit head has not moved
//! since that read (every change moves it): concurrent changes never both pass a check
//! that only one of them may pass. A change that loses that race is re-validated.

use super::audit::{self, Entry, HeadAt};
use super::auth::Caller;
use super::context::RequestContext;
use super::error::ApiError;
use super::forward::{not_leader, path_and_query, to_leader};
use super::kv::{linearize_or_forward, with_revision};
use super::ApiState;
use crate::control::store::types::{Command, Compare, CompareOp, CompareTarget, Op};
use crate::control::store::RaftFailure;
use crate::model::diff::diff;
use crate::model::kinds::Writers;
use crate::model::world::{Change, World};
use crate::model::{Invalid, Kind, Resource, Selector};
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

mod commit;

pub(super) use commit::{commit, commit_and_answer, dry_run, forward, Extra, Original, Want};

pub const PREFIX: &str = "/tessera/resources/";
pub(super) const HISTORY: &str = "/tessera/history/shardmaps/";
/// Upper bound on objects read for one validation (an estate is hundreds to thousands).
const MAX_OBJECTS: usize = 200_000;
/// Documents in one apply.
const MAX_DOCUMENTS: usize = 1000;
/// Attempts when concurrent changes keep winning the race.
pub(super) const ATTEMPTS: usize = 8;
/// Shard map versions kept per map.
pub(super) const HISTORY_KEEP: usize = 100;

pub fn object_key(kind: Kind, name: &str) -> String {
    format!("{PREFIX}{}/{name}", kind.plural())
}

/// The kind a request addresses: the path segment after `/api/v1/` (routes exist only
/// for real kinds, so anything else is a routing mistake, answered 404).
pub(super) fn kind_of(uri: &Uri) -> Result<Kind, ApiError> {
    let seg = uri
        .path()
        .strip_prefix("/api/v1/")
        .and_then(|p| p.split('/').next())
        .unwrap_or("");
    match Kind::parse(seg) {
        Some(k) if k.plural() == seg => Ok(k),
        _ => Err(ApiError::not_found(format!(
            "no such endpoint: {}",
            uri.path()
        ))),
    }
}

fn forbidden(caller: &Caller, what: String) -> ApiError {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!(
            "user `{}` (role {}) may not {what}",
            caller.user, caller.role
        ),
    )
}

pub(super) fn may_read(caller: &Caller, kind: Kind) -> Result<(), ApiError> {
    if kind == Kind::User && caller.role != "admin" {
        return Err(forbidden(caller, "read users: admin only".into()));
    }
    if let Some(kinds) = crate::model::specs::service_reads(&caller.role) {
        if !kinds.contains(&kind) {
            return Err(forbidden(caller, format!("read {}", kind.plural())));
        }
    }
    Ok(())
}

/// An agent (user `agent-<node>`) registers and updates its own node, and records
/// events named `<node>-…`; nothing else.
pub(super) fn own_node(caller: &Caller, kind: Kind, name: &str) -> bool {
    let Some(node) = caller.user.strip_prefix("agent-") else {
        return false;
    };
    caller.role == "agent"
        && match kind {
            Kind::Node => name == node,
            Kind::Event => name
                .strip_prefix(node)
                .is_some_and(|rest| rest.starts_with('-')),
            _ => false,
        }
}

pub(super) fn may_write(caller: &Caller, kind: Kind) -> Result<(), ApiError> {
    let ok = match kind.writers() {
        Writers::Admin => caller.role == "admin",
        Writers::Operators => caller.role == "admin" || caller.role == "operator",
        Writers::System => false,
    };
    if ok {
        return Ok(());
    }
    Err(match kind.writers() {
        Writers::System => ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "read_only",
            format!(
                "{} are written by tessera itself, not through this API",
                kind.plural()
            ),
        ),
        Writers::Admin => forbidden(caller, format!("change {}: admin only", kind.plural())),
        Writers::Operators => forbidden(
            caller,
            format!("change {}: admin or operator only", kind.plural()),
        ),
    })
}

pub(super) fn invalid(e: &Invalid) -> ApiError {
    let (status, code) = if e.conflict {
        (StatusCode::CONFLICT, "conflict")
    } else {
        (StatusCode::UNPROCESSABLE_ENTITY, "invalid")
    };
    ApiError {
        field: Some(e.field.clone()),
        ..ApiError::new(status, code, e.message.clone())
    }
}

/// Decodes a stored object and fills in its revision.
pub(super) fn decode(kv: &crate::control::store::types::KeyValue) -> Result<Resource, ApiError> {
    let mut r: Resource = serde_json::from_str(&kv.value)
        .map_err(|e| ApiError::internal(&format!("decoding {}", kv.key), e))?;
    r.metadata.revision = Some(kv.mod_revision);
    Ok(r)
}

/// The audit head and the objects a change is checked against, from one snapshot.
struct Snapshot {
    head: HeadAt,
    world: World,
    revision: u64,
}

/// Every object of `kinds` as of one snapshot (for reconcilers).
pub(super) fn read_world(s: &ApiState, kinds: &[Kind]) -> Result<World, String> {
    read_kinds(s, kinds)
        .map(|snap| snap.world)
        .map_err(|e| e.message)
}

/// Commits `want` as tessera itself (`user` names the component, e.g.
/// `system:placement`), validated and audited like any change. Leader only.
pub(super) async fn commit_system(
    s: &ApiState,
    user: &str,
    verb: &str,
    want: Want,
) -> Result<u64, String> {
    let caller = Caller {
        user: user.into(),
        role: "admin".into(),
    };
    let ctx = RequestContext {
        request_id: format!(
            "{user}-{}",
            crate::util::hex(&crate::util::random_bytes::<6>().unwrap_or_default())
        ),
        source: "control".into(),
    };
    let uri = Uri::from_static("/api/v1/apply");
    let headers = HeaderMap::new();
    let original = Original {
        method: Method::POST,
        uri: &uri,
        headers: &headers,
        body: Bytes::new(),
    };
    match commit(s, &caller, &ctx, verb, &want, &Extra::None, &original).await {
        Ok(Ok((_, rev))) => Ok(rev),
        Ok(Err(_)) => Err("not the leader".into()),
        Err(e) => Err(e.message),
    }
}

/// The audit head and every object of `kinds`, from one snapshot.
fn read_kinds(s: &ApiState, kinds: &[Kind]) -> Result<Snapshot, ApiError> {
    let prefixes: Vec<String> = kinds
        .iter()
        .map(|k| format!("{PREFIX}{}/", k.plural()))
        .collect();
    let (keys, kvs, revision) = s
        .node
        .store()
        .get_and_ranges(&[audit::HEAD], &prefixes, MAX_OBJECTS)
        .map_err(|e| ApiError::internal("resource read", e))?;
    let head =
        HeadAt::from_kv(keys[0].as_ref()).map_err(|e| ApiError::internal("audit head", e))?;
    let mut world = World::default();
    for kv in &kvs {
        let r = decode(kv)?;
        let Some(kind) = Kind::parse(&r.kind) else {
            continue;
        };
        world.objects.insert((kind, r.metadata.name.clone()), r);
    }
    Ok(Snapshot {
        head,
        world,
        revision,
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListQuery {
    label_selector: Option<String>,
    /// `linearizable` (default) or `stale`.
    consistency: Option<String>,
}

fn stale(c: Option<&str>) -> Result<bool, ApiError> {
    match c {
        None | Some("linearizable") => Ok(false),
        Some("stale") => Ok(true),
        Some(other) => Err(ApiError::bad_field(
            "consistency",
            format!("`{other}`: expected linearizable or stale"),
        )),
    }
}

pub async fn list(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let kind = kind_of(&uri)?;
    list_kind(s, caller, kind, q, headers, uri).await
}

async fn list_kind(
    s: ApiState,
    caller: Caller,
    kind: Kind,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    may_read(&caller, kind)?;
    let Query(q) = q?;
    let selector = Selector::parse(q.label_selector.as_deref().unwrap_or(""))
        .map_err(|e| ApiError::bad_field("labelSelector", e))?;
    if !stale(q.consistency.as_deref())? {
        if let Some(answer) = linearize_or_forward(&s, Method::GET, &uri, &headers).await? {
            return Ok(answer);
        }
    }
    if kind == Kind::AuditEvent {
        return Err(ApiError::not_found("audit events: GET /api/v1/auditevents"));
    }
    let (kvs, rev) = s
        .node
        .store()
        .range(&format!("{PREFIX}{}/", kind.plural()), MAX_OBJECTS)
        .map_err(|e| ApiError::internal("resource read", e))?;
    let mut items = Vec::new();
    for kv in &kvs {
        let mut r = decode(kv)?;
        if selector.matches(&r.metadata.labels) {
            present(&s, &caller, kind, &mut r);
            items.push(r);
        }
    }
    Ok(with_revision(
        rev,
        json!({
            "apiVersion": crate::model::API_VERSION,
            "kind": format!("{}List", kind.singular()),
            "items": items,
            "revision": rev,
        }),
        StatusCode::OK,
    ))
}

/// A stored object as `caller` gets it (list, get, watch): secrets opened for the role
/// that uses them, and a certificate's derived facts (`status.notAfter`,
/// `status.dnsNames`) added.
pub(super) fn present(s: &ApiState, caller: &Caller, kind: Kind, r: &mut Resource) {
    super::secrets::reveal(s, caller, kind, r);
    if kind == Kind::Certificate {
        let facts = r
            .spec
            .get("cert")
            .and_then(serde_json::Value::as_str)
            .and_then(crate::model::certificate::facts);
        if let Some(serde_json::Value::Object(facts)) = facts {
            if !r.status.is_object() {
                r.status = serde_json::Value::Object(Default::default());
            }
            if let Some(status) = r.status.as_object_mut() {
                status.extend(facts);
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    consistency: Option<String>,
}

pub async fn get(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    q: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let kind = kind_of(&uri)?;
    may_read(&caller, kind)?;
    let Query(q) = q?;
    if !stale(q.consistency.as_deref())? {
        if let Some(answer) = linearize_or_forward(&s, Method::GET, &uri, &headers).await? {
            return Ok(answer);
        }
    }
    let (kv, rev) = s
        .node
        .store()
        .get(&object_key(kind, &name))
        .map_err(|e| ApiError::internal("resource read", e))?;
    match kv {
        Some(kv) => {
            let mut r = decode(&kv)?;
            present(&s, &caller, kind, &mut r);
            Ok(with_revision(
                rev,
                serde_json::to_value(r).unwrap_or_default(),
                StatusCode::OK,
            ))
        }
        None => Err(ApiError::not_found(format!(
            "{} `{name}` does not exist",
            kind.singular().to_ascii_lowercase()
        ))),
    }
}

pub(super) fn context(ctx: Option<Extension<RequestContext>>) -> RequestContext {
    ctx.map(|c| c.0).unwrap_or(RequestContext {
        request_id: "none".into(),
        source: "unknown".into(),
    })
}

#[allow(clippy::too_many_arguments)]
pub async fn put(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ctx: Option<Extension<RequestContext>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ctx = context(ctx);
    let kind = kind_of(&uri)?;
    if !own_node(&caller, kind, &name) {
        if let Err(e) = may_write(&caller, kind) {
            return Err(
                audit::refuse(&s, &caller, &ctx, "update", kind.singular(), &name, e).await,
            );
        }
    }
    let body = body?;
    let mut obj: Resource =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
            .map_err(|e| {
                let path = e.path().to_string();
                ApiError::bad_field(
                    if path == "." {
                        "body".to_string()
                    } else {
                        path
                    },
                    format!("not a {} object: {}", kind.singular(), e.into_inner()),
                )
            })?;
    if obj.metadata.name.is_empty() {
        obj.metadata.name = name.clone();
    }
    if obj.metadata.name != name {
        return Err(ApiError::bad_field(
            "metadata.name",
            format!("`{}` in the body, `{name}` in the URL", obj.metadata.name),
        ));
    }
    if obj.kind.is_empty() {
        obj.kind = kind.singular().into();
    }
    if let Err(e) = obj.check(Some(kind)) {
        let e = invalid(&e);
        return Err(audit::refuse(&s, &caller, &ctx, "update", kind.singular(), &name, e).await);
    }
    let original = Original {
        method: Method::PUT,
        uri: &uri,
        headers: &headers,
        body: body.clone(),
    };
    commit_and_answer(
        &s,
        &caller,
        &ctx,
        "update",
        &Want::Put(vec![(kind, obj)]),
        &Extra::None,
        &original,
        true,
    )
    .await
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    revision: Option<u64>,
}

#[allow(clippy::too_many_arguments)]
pub async fn delete(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ctx: Option<Extension<RequestContext>>,
    Path(name): Path<String>,
    q: Result<Query<DeleteQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let ctx = context(ctx);
    let kind = kind_of(&uri)?;
    let Query(q) = q?;
    if kind == Kind::User {
        return super::users::delete(&s, &caller, &ctx, name, &headers, &uri).await;
    }
    if let Err(e) = may_write(&caller, kind) {
        return Err(audit::refuse(&s, &caller, &ctx, "delete", kind.singular(), &name, e).await);
    }
    let original = Original {
        method: Method::DELETE,
        uri: &uri,
        headers: &headers,
        body: Bytes::new(),
    };
    commit_and_answer(
        &s,
        &caller,
        &ctx,
        "delete",
        &Want::Delete(kind, name, q.revision),
        &Extra::None,
        &original,
        true,
    )
    .await
}

pub async fn apply(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ctx: Option<Extension<RequestContext>>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ctx = context(ctx);
    let body = body?;
    let text =
        std::str::from_utf8(&body).map_err(|_| ApiError::bad_field("body", "not UTF-8 text"))?;
    let docs = crate::model::parse_documents(text).map_err(|e| ApiError {
        field: Some(e.field.clone()),
        ..ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.message)
    })?;
    if docs.is_empty() {
        return Err(ApiError::bad_field("body", "no documents"));
    }
    if docs.len() > MAX_DOCUMENTS {
        return Err(ApiError::bad_field(
            "body",
            format!(
                "{} documents; at most {MAX_DOCUMENTS} per apply",
                docs.len()
            ),
        ));
    }
    let mut objects = Vec::new();
    for (i, d) in docs.into_iter().enumerate() {
        let at = |e: Invalid| {
            let mut e = invalid(&e);
            e.field = Some(format!(
                "document {}: {}",
                i + 1,
                e.field.unwrap_or_default()
            ));
            e
        };
        let kind = match d.check(None) {
            Ok(k) => k,
            Err(e) if dry_run(&uri) => return Err(at(e)),
            Err(e) => {
                let e = at(e);
                return Err(audit::refuse(
                    &s,
                    &caller,
                    &ctx,
                    "apply",
                    &d.kind,
                    &d.metadata.name,
                    e,
                )
                .await);
            }
        };
        if let Err(e) = may_write(&caller, kind) {
            if dry_run(&uri) {
                return Err(e);
            }
            return Err(audit::refuse(
                &s,
                &caller,
                &ctx,
                "apply",
                kind.singular(),
                &d.metadata.name,
                e,
            )
            .await);
        }
        objects.push((kind, d));
    }
    let original = Original {
        method: Method::POST,
        uri: &uri,
        headers: &headers,
        body: body.clone(),
    };
    commit_and_answer(
        &s,
        &caller,
        &ctx,
        "apply",
        &Want::Put(objects),
        &Extra::None,
        &original,
        false,
    )
    .await
}
