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

/// The original request, to forward to the leader when this node is not it.
pub(super) struct Original<'a> {
    pub method: Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

/// Writes that go into the same transaction as a change (a user's token records).
pub(super) enum Extra {
    None,
    Ops(Vec<Op>),
    /// Computed from the store on each attempt (what to delete with a user).
    #[allow(clippy::type_complexity)]
    Computed(Box<dyn Fn(&ApiState) -> Result<Vec<Op>, ApiError> + Send + Sync>),
}

/// What one committed change did to one object.
#[derive(serde::Serialize)]
pub(super) struct Outcome {
    pub kind: &'static str,
    pub name: String,
    /// `created`, `configured`, `unchanged` or `deleted`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<Resource>,
}

/// A request for changes, resolved against the current world into concrete changes.
pub(super) enum Want {
    /// Put these objects (create or replace).
    Put(Vec<(Kind, Resource)>),
    /// Delete one object, optionally only at `revision`.
    Delete(Kind, String, Option<u64>),
}

enum Failure {
    Api(ApiError),
    /// Refused for a reason worth an audit event: (kind, name, error).
    Refused(String, String, ApiError),
}

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Self {
        Failure::Api(e)
    }
}

/// Validates `want` on the leader and commits it with its audit events. Answers the
/// outcomes and the revision they committed at (or the current one if nothing changed).
pub(super) async fn commit(
    s: &ApiState,
    caller: &Caller,
    ctx: &RequestContext,
    verb: &str,
    want: &Want,
    extra: &Extra,
    original: &Original<'_>,
) -> Result<Result<(Vec<Outcome>, u64), Response>, ApiError> {
    if !s.node.is_leader() {
        return forward(s, original).await.map(Err);
    }
    let dry = dry_run(original.uri);
    // Only the kinds the rules can involve are read (an estate's instances and events
    // need not be decoded to add a region).
    let mut relevant: Vec<Kind> = match want {
        Want::Put(objects) => objects.iter().flat_map(|(k, _)| k.checked_with()).collect(),
        Want::Delete(k, _, _) => k.checked_with(),
    };
    relevant.sort();
    relevant.dedup();
    // Secrets in the objects are sealed under the cluster's data key (made on first use).
    let key = match want {
        Want::Put(objects) if objects.iter().any(|(k, _)| super::secrets::has_secrets(*k)) => {
            Some(super::secrets::data_key(s).await?)
        }
        _ => None,
    };
    for _ in 0..ATTEMPTS {
        match s.node.linearize().await {
            Ok(()) => {}
            Err(RaftFailure::NotLeader { .. }) => return forward(s, original).await.map(Err),
            Err(e) => return Err(ApiError::unavailable(e.to_string())),
        }
        let snap = read_kinds(s, &relevant)?;
        let extra_ops = match extra {
            Extra::None => Vec::new(),
            Extra::Ops(ops) => ops.clone(),
            Extra::Computed(f) => f(s)?,
        };
        let plan = match plan(&snap, want, key.as_ref()) {
            Ok(p) => p,
            Err(Failure::Api(e)) => return Err(e),
            // A dry run changes nothing, so its refusal is not an event of the audit trail.
            Err(Failure::Refused(_, _, e)) if dry => return Err(e),
            Err(Failure::Refused(kind, name, e)) => {
                return Err(audit::refuse(s, caller, ctx, verb, &kind, &name, e).await)
            }
        };
        if plan.ops.is_empty() || dry {
            return Ok(Ok((plan.outcomes, snap.revision)));
        }
        let (audit_ops, _) = audit::append_ops(&snap.head.head, caller, ctx, plan.entries)
            .map_err(|e| ApiError::internal("audit event", e))?;
        let mut compare = vec![snap.head.unchanged()];
        compare.extend(plan.compare);
        let mut success = plan.ops;
        success.extend(extra_ops);
        success.extend(audit_ops);
        let cmd = Command::Txn {
            compare,
            success,
            failure: Vec::new(),
        };
        match s.node.write(cmd).await {
            Ok(r) if r.succeeded => {
                let mut outcomes = plan.outcomes;
                for o in &mut outcomes {
                    if let Some(obj) = &mut o.object {
                        if o.action != "unchanged" {
                            obj.metadata.revision = Some(r.revision);
                        }
                    }
                }
                if let Err(e) = trim_history(s, &plan.maps_changed).await {
                    tracing::warn!(error = %e, "Could not trim shard map history");
                }
                return Ok(Ok((outcomes, r.revision)));
            }
            // Another change committed since the read: validate again.
            Ok(_) => continue,
            Err(RaftFailure::NotLeader { .. }) => return forward(s, original).await.map(Err),
            Err(e @ RaftFailure::OutcomeUnknown) => {
                return Err(ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "outcome_unknown",
                    e.to_string(),
                ))
            }
            Err(e) => return Err(ApiError::unavailable(e.to_string())),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "busy",
        "other changes kept committing first; retry",
    ))
}

/// `?dryRun=true`: validate against the current estate and answer what would change,
/// committing nothing.
pub(super) fn dry_run(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|p| p == "dryRun=true" || p == "dryRun=1"))
}

pub(super) async fn forward(s: &ApiState, o: &Original<'_>) -> Result<Response, ApiError> {
    let leader = not_leader(s.node.leader_info(), o.headers)?;
    Ok(to_leader(
        s,
        &leader,
        o.method.clone(),
        &path_and_query(o.uri),
        o.headers,
        o.body.clone(),
    )
    .await)
}

struct Plan {
    compare: Vec<Compare>,
    ops: Vec<Op>,
    entries: Vec<Entry>,
    outcomes: Vec<Outcome>,
    maps_changed: Vec<String>,
}

fn plan(
    snap: &Snapshot,
    want: &Want,
    key: Option<&super::secrets::DataKey>,
) -> Result<Plan, Failure> {
    let world = &snap.world;
    let mut changes = Vec::new();
    let mut outcomes = Vec::new();
    let mut compare = Vec::new();
    let refuse = |kind: Kind, name: &str, e: ApiError| {
        Failure::Refused(kind.singular().into(), name.to_string(), e)
    };
    match want {
        Want::Put(objects) => {
            let mut seen = std::collections::BTreeSet::new();
            for (kind, obj) in objects {
                let name = obj.metadata.name.clone();
                if !seen.insert((*kind, name.clone())) {
                    return Err(refuse(
                        *kind,
                        &name,
                        ApiError::bad_field(
                            "metadata.name",
                            format!("{} `{name}` appears twice", kind.singular()),
                        ),
                    ));
                }
                let current = world.get(*kind, &name);
                if *kind == Kind::User && current.is_some() {
                    return Err(refuse(
                        *kind,
                        &name,
                        ApiError {
                            field: Some("name".into()),
                            ..ApiError::new(
                                StatusCode::CONFLICT,
                                "exists",
                                format!("user `{name}` already exists"),
                            )
                        },
                    ));
                }
                if let Some(want_rev) = obj.metadata.revision.filter(|r| *r > 0) {
                    let have = current.and_then(|c| c.metadata.revision).unwrap_or(0);
                    if have != want_rev {
                        return Err(refuse(
                            *kind,
                            &name,
                            ApiError {
                                field: Some("metadata.revision".into()),
                                ..ApiError::new(
                                    StatusCode::CONFLICT,
                                    "stale_revision",
                                    if have == 0 {
                                        format!("{} `{name}` does not exist (any more); revision {want_rev} is stale", kind.singular())
                                    } else {
                                        format!("{} `{name}` is at revision {have}, not {want_rev}: someone changed it; read it again and reapply your change", kind.singular())
                                    },
                                )
                            },
                        ));
                    }
                }
                // The object must still be as read: status writes do not move the audit
                // head, and the status kept below is the one read.
                compare.push(Compare {
                    key: object_key(*kind, &name),
                    op: CompareOp::Equal,
                    target: CompareTarget::ModRevision(
                        current.and_then(|c| c.metadata.revision).unwrap_or(0),
                    ),
                });
                let mut stored = obj.clone();
                stored.metadata.revision = None;
                stored.kind = kind.singular().into();
                // Status belongs to tessera; creation time to the first write.
                stored.status = current
                    .map(|c| c.status.clone())
                    .unwrap_or(serde_json::Value::Null);
                stored.metadata.created_at = current
                    .and_then(|c| c.metadata.created_at.clone())
                    .or_else(|| Some(crate::model::now_rfc3339()));
                if stored.spec.is_null() {
                    stored.spec = json!({});
                }
                if let (true, Some(key)) = (super::secrets::has_secrets(*kind), key) {
                    super::secrets::seal_spec(
                        key,
                        *kind,
                        &name,
                        &mut stored.spec,
                        current.map(|c| &c.spec),
                    )
                    .map_err(|e| refuse(*kind, &name, e))?;
                }
                let unchanged = current.is_some_and(|c| c.declared() == stored.declared());
                let mut shown = stored.clone();
                shown.metadata.revision = current.and_then(|c| c.metadata.revision);
                outcomes.push(Outcome {
                    kind: kind.singular(),
                    name: name.clone(),
                    action: if unchanged {
                        "unchanged"
                    } else if current.is_some() {
                        "configured"
                    } else {
                        "created"
                    },
                    object: Some(shown),
                });
                if !unchanged {
                    changes.push(Change::Put(*kind, stored));
                }
            }
        }
        Want::Delete(kind, name, rev) => {
            let Some(current) = world.get(*kind, name) else {
                return Err(Failure::Api(ApiError::not_found(format!(
                    "{} `{name}` does not exist",
                    kind.singular().to_ascii_lowercase()
                ))));
            };
            let have = current.metadata.revision.unwrap_or(0);
            if let Some(want_rev) = rev {
                if *want_rev != have {
                    return Err(refuse(
                        *kind,
                        name,
                        ApiError {
                            field: Some("revision".into()),
                            ..ApiError::new(
                                StatusCode::CONFLICT,
                                "stale_revision",
                                format!(
                                    "{} `{name}` is at revision {have}, not {want_rev}",
                                    kind.singular()
                                ),
                            )
                        },
                    ));
                }
            }
            outcomes.push(Outcome {
                kind: kind.singular(),
                name: name.clone(),
                action: "deleted",
                object: None,
            });
            changes.push(Change::Delete(*kind, name.clone()));
        }
    }
    if let Err((key, e)) = world.check(&changes) {
        return Err(refuse(key.0, &key.1, invalid(&e)));
    }
    let mut ops = Vec::new();
    let mut entries = Vec::new();
    let mut maps_changed = Vec::new();
    for c in &changes {
        let (kind, name) = c.key();
        let before = world.get(kind, &name).map(Resource::declared);
        match c {
            Change::Put(_, r) => {
                let value =
                    serde_json::to_string(r).map_err(|e| ApiError::internal("encode", e))?;
                ops.push(Op::Put {
                    key: object_key(kind, &name),
                    value: value.clone(),
                    lease: 0,
                });
                if kind == Kind::ShardMap {
                    // A version per change, keyed by the audit sequence it is recorded under.
                    let seq = snap.head.head.seq + entries.len() as u64 + 1;
                    ops.push(Op::Put {
                        key: format!("{HISTORY}{name}/{seq:020}"),
                        value,
                        lease: 0,
                    });
                    maps_changed.push(name.clone());
                }
                entries.push(Entry {
                    action: if before.is_some() { "update" } else { "create" }.into(),
                    kind: kind.singular().into(),
                    name: name.clone(),
                    refused: None,
                    diff: diff(before.as_ref(), Some(&r.declared())),
                });
            }
            Change::Delete(..) => {
                ops.push(Op::Delete {
                    key: object_key(kind, &name),
                    prefix: false,
                });
                entries.push(Entry {
                    action: "delete".into(),
                    kind: kind.singular().into(),
                    name: name.clone(),
                    refused: None,
                    diff: diff(before.as_ref(), None),
                });
            }
        }
    }
    Ok(Plan {
        compare,
        ops,
        entries,
        outcomes,
        maps_changed,
    })
}

/// Keeps the newest `HISTORY_KEEP` versions of each changed shard map.
async fn trim_history(s: &ApiState, maps: &[String]) -> Result<(), String> {
    for name in maps {
        let prefix = format!("{HISTORY}{name}/");
        let (kvs, _) = s.node.store().range(&prefix, 100_000)?;
        if kvs.len() <= HISTORY_KEEP {
            continue;
        }
        let drop = kvs.len() - HISTORY_KEEP;
        let ops = kvs[..drop]
            .iter()
            .map(|kv| Op::Delete {
                key: kv.key.clone(),
                prefix: false,
            })
            .collect();
        s.node
            .write(Command::Txn {
                compare: Vec::new(),
                success: ops,
                failure: Vec::new(),
            })
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// [`commit`], then the answer: the object (`single`) or the apply summary, or the
/// leader's answer when the request was forwarded.
#[allow(clippy::too_many_arguments)]
pub(super) async fn commit_and_answer(
    s: &ApiState,
    caller: &Caller,
    ctx: &RequestContext,
    verb: &str,
    want: &Want,
    extra: &Extra,
    original: &Original<'_>,
    single: bool,
) -> Result<Response, ApiError> {
    Ok(
        match commit(s, caller, ctx, verb, want, extra, original).await? {
            Ok((outcomes, rev)) => answer(outcomes, rev, single),
            Err(forwarded) => forwarded,
        },
    )
}

fn answer(outcomes: Vec<Outcome>, revision: u64, single: bool) -> Response {
    if single {
        let o = outcomes.into_iter().next();
        let status = match o.as_ref().map(|o| o.action) {
            Some("created") => StatusCode::CREATED,
            _ => StatusCode::OK,
        };
        let body = match o {
            Some(Outcome {
                object: Some(obj), ..
            }) => serde_json::to_value(obj).unwrap_or_default(),
            Some(o) => {
                json!({"kind": o.kind, "name": o.name, "action": o.action, "revision": revision})
            }
            None => json!({"revision": revision}),
        };
        return with_revision(revision, body, status);
    }
    let changed = outcomes.iter().filter(|o| o.action != "unchanged").count();
    with_revision(
        revision,
        json!({"revision": revision, "changed": changed, "results": outcomes}),
        StatusCode::OK,
    )
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

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Api(e) | Failure::Refused(_, _, e) => e.into_response(),
        }
    }
}
