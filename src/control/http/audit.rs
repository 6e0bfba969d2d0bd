//! The audit trail's storage and API. Events are kept under
//! `/tessera/audit/events/<seq, 20 digits>`; `/tessera/audit/head` holds the last
//! `{seq, hash}`. Every audited write (accepted changes together with their events, in
//! one transaction; refused ones on their own) compares the head's `mod_revision`, so
//! appends are serialized and the chain never forks. Resource writes use the same
//! compare to know that nothing changed between their validation and their commit.
//!
//! `GET /api/v1/auditevents?after=SEQ&limit=N&kind=&name=&user=&since=&until=` pages
//! through events in order; admins and approvers (the roles that review changes) may
//! read them.

use super::auth::Caller;
use super::context::RequestContext;
use super::error::ApiError;
use super::kv::with_revision;
use super::ApiState;
use crate::control::store::types::{Command, Compare, CompareOp, CompareTarget, KeyValue, Op};
use crate::model::audit::{AuditEvent, GENESIS};
use crate::model::diff::FieldChange;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde::{Deserialize, Serialize};
use serde_json::json;

pub const HEAD: &str = "/tessera/audit/head";
pub const EVENTS: &str = "/tessera/audit/events/";
const MAX_PAGE: usize = 1000;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Head {
    pub seq: u64,
    pub hash: String,
}

/// The head as read (value and `mod_revision`, 0 when there is none yet).
#[derive(Clone, Debug)]
pub struct HeadAt {
    pub head: Head,
    pub mod_revision: u64,
}

impl HeadAt {
    pub fn from_kv(kv: Option<&KeyValue>) -> Result<HeadAt, String> {
        match kv {
            None => Ok(HeadAt {
                head: Head {
                    seq: 0,
                    hash: GENESIS.into(),
                },
                mod_revision: 0,
            }),
            Some(kv) => Ok(HeadAt {
                head: serde_json::from_str(&kv.value)
                    .map_err(|e| format!("the audit head is unreadable: {e}"))?,
                mod_revision: kv.mod_revision,
            }),
        }
    }

    /// The compare that holds only while no other audited write has committed.
    pub fn unchanged(&self) -> Compare {
        Compare {
            key: HEAD.into(),
            op: CompareOp::Equal,
            target: CompareTarget::ModRevision(self.mod_revision),
        }
    }
}

pub fn event_key(seq: u64) -> String {
    format!("{EVENTS}{seq:020}")
}

/// What an audit event says, before it is linked into the chain.
pub struct Entry {
    pub action: String,
    pub kind: String,
    pub name: String,
    pub refused: Option<String>,
    pub diff: Vec<FieldChange>,
}

/// Seals `entries` after `head` and returns the puts (events and the new head) and the
/// sealed events.
pub fn append_ops(
    head: &Head,
    caller: &Caller,
    ctx: &RequestContext,
    entries: Vec<Entry>,
) -> Result<(Vec<Op>, Vec<AuditEvent>), String> {
    let time = crate::model::now_rfc3339();
    let (mut seq, mut hash) = (head.seq, head.hash.clone());
    let mut ops = Vec::new();
    let mut sealed = Vec::new();
    for e in entries {
        let ev = AuditEvent {
            seq: 0,
            time: time.clone(),
            user: caller.user.clone(),
            role: caller.role.clone(),
            action: e.action,
            kind: e.kind,
            name: e.name,
            outcome: if e.refused.is_some() {
                "refused".into()
            } else {
                "accepted".into()
            },
            reason: e.refused,
            diff: e.diff,
            request_id: ctx.request_id.clone(),
            source: ctx.source.clone(),
            prev_hash: String::new(),
            hash: String::new(),
        }
        .seal(seq + 1, &hash);
        seq = ev.seq;
        hash = ev.hash.clone();
        ops.push(Op::Put {
            key: event_key(seq),
            value: serde_json::to_string(&ev).map_err(|e| e.to_string())?,
            lease: 0,
        });
        sealed.push(ev);
    }
    ops.push(Op::Put {
        key: HEAD.into(),
        value: serde_json::to_string(&Head { seq, hash }).map_err(|e| e.to_string())?,
        lease: 0,
    });
    Ok((ops, sealed))
}

/// Records a refused change and gives back the error for the caller (best effort: the
/// refusal is reported even if its audit event cannot be written; that is logged).
pub async fn refuse(
    s: &ApiState,
    caller: &Caller,
    ctx: &RequestContext,
    action: &str,
    kind: &str,
    name: &str,
    e: super::error::ApiError,
) -> super::error::ApiError {
    record(s, caller, ctx, action, kind, name, Some(&e.message)).await;
    e
}

/// Audits the outcome of a change made by a handler of its own (join tokens, member
/// removal): an error is recorded as refused, a success as accepted, and an answer the
/// leader gave to a forwarded request not at all (the leader recorded it).
pub async fn audited(
    s: &ApiState,
    caller: &Caller,
    ctx: Option<axum::Extension<RequestContext>>,
    action: &str,
    kind: &str,
    name: &str,
    result: Result<Response, super::error::ApiError>,
) -> Result<Response, super::error::ApiError> {
    let ctx = super::resources::context(ctx);
    match result {
        Ok(resp)
            if resp
                .extensions()
                .get::<super::forward::Forwarded>()
                .is_some() =>
        {
            Ok(resp)
        }
        Ok(resp) if resp.status().is_success() => {
            record(s, caller, &ctx, action, kind, name, None).await;
            Ok(resp)
        }
        Ok(resp) => Ok(resp),
        Err(e) => Err(refuse(s, caller, &ctx, action, kind, name, e).await),
    }
}

async fn record(
    s: &ApiState,
    caller: &Caller,
    ctx: &RequestContext,
    action: &str,
    kind: &str,
    name: &str,
    reason: Option<&str>,
) {
    for _ in 0..5 {
        let head = match s
            .node
            .store()
            .get(HEAD)
            .map_err(|e| e.to_string())
            .and_then(|(kv, _)| HeadAt::from_kv(kv.as_ref()))
        {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "Cannot read the audit head");
                return;
            }
        };
        let entry = Entry {
            action: action.into(),
            kind: kind.into(),
            name: name.into(),
            refused: reason.map(str::to_string),
            diff: Vec::new(),
        };
        let Ok((ops, _)) = append_ops(&head.head, caller, ctx, vec![entry]) else {
            return;
        };
        let cmd = Command::Txn {
            compare: vec![head.unchanged()],
            success: ops,
            failure: Vec::new(),
        };
        match s.node.write(cmd).await {
            Ok(r) if r.succeeded => return,
            Ok(_) => continue,
            Err(e) => {
                tracing::warn!(error = %e, action, kind, name, "Could not record a refused change in the audit trail");
                return;
            }
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Events after this sequence number (default 0: from the start).
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    kind: Option<String>,
    name: Option<String>,
    user: Option<String>,
    /// RFC 3339 bounds on `time` (inclusive).
    since: Option<String>,
    until: Option<String>,
}

fn may_read(caller: &Caller) -> Result<(), ApiError> {
    if caller.role == "admin" || caller.role == "approver" {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "user `{}` (role {}) may not read the audit trail: admin or approver only",
                caller.user, caller.role
            ),
        ))
    }
}

pub async fn list(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    may_read(&caller)?;
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100);
    if limit == 0 || limit > MAX_PAGE {
        return Err(ApiError::bad_field(
            "limit",
            format!("{limit} is out of range 1-{MAX_PAGE}"),
        ));
    }
    for (field, v) in [("since", &q.since), ("until", &q.until)] {
        if let Some(v) = v {
            if time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
                .is_err()
            {
                return Err(ApiError::bad_field(
                    field,
                    format!("`{v}` is not an RFC 3339 time (e.g. 2026-11-22T08:00:00Z)"),
                ));
            }
        }
    }
    if let Some(answer) =
        super::kv::linearize_or_forward(&s, axum::http::Method::GET, &uri, &headers).await?
    {
        return Ok(answer);
    }
    // Filters apply to a bounded scan: a page reads at most MAX_PAGE * 10 events and
    // says where to continue (`next`), so a selective filter never scans unboundedly.
    let scan = (limit * 10).min(MAX_PAGE * 10);
    let (kvs, rev) = s
        .node
        .store()
        .range_from(EVENTS, &event_key(q.after.saturating_add(1)), scan)
        .map_err(|e| ApiError::internal("audit read", e))?;
    let scanned = kvs.len();
    let mut items = Vec::new();
    let mut next = q.after;
    for kv in kvs {
        let ev: AuditEvent = serde_json::from_str(&kv.value)
            .map_err(|e| ApiError::internal("audit event decode", e))?;
        next = ev.seq;
        let keep = q.kind.as_ref().is_none_or(|k| {
            k.eq_ignore_ascii_case(&ev.kind)
                || crate::model::Kind::parse(k).is_some_and(|k| k.singular() == ev.kind)
        }) && q.name.as_ref().is_none_or(|n| *n == ev.name)
            && q.user.as_ref().is_none_or(|u| *u == ev.user)
            && q.since
                .as_ref()
                .is_none_or(|t| ev.time.as_str() >= t.as_str())
            && q.until
                .as_ref()
                .is_none_or(|t| ev.time.as_str() <= t.as_str());
        if keep {
            items.push(ev);
            if items.len() == limit {
                break;
            }
        }
    }
    let more = scanned == scan || items.len() == limit;
    Ok(with_revision(
        rev,
        json!({
            "apiVersion": crate::model::API_VERSION,
            "kind": "AuditEventList",
            "items": items,
            "next": next,
            "more": more,
            "revision": rev,
        }),
        StatusCode::OK,
    ))
}

/// `GET /api/v1/auditevents/verify`: walks the whole chain from the first event (a
/// page at a time, through one linearizable read each) and checks sequence numbers,
/// links and hashes, then that the last event is the recorded head.
pub async fn verify(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
) -> Result<Response, ApiError> {
    may_read(&caller)?;
    if let Some(answer) =
        super::kv::linearize_or_forward(&s, axum::http::Method::GET, &uri, &headers).await?
    {
        return Ok(answer);
    }
    let store = s.node.store();
    // The head first: events are appended in the same transaction that moves it, so every
    // event up to this head is already readable.
    let (head_kv, rev) = store
        .get(HEAD)
        .map_err(|e| ApiError::internal("audit read", e))?;
    let head = HeadAt::from_kv(head_kv.as_ref())
        .map_err(|e| ApiError::internal("audit head", e))?
        .head;
    let mut prev = (0u64, GENESIS.to_string());
    let broken = |seq: u64, message: String, checked: u64| {
        Ok(with_revision(
            rev,
            json!({"ok": false, "checked": checked, "seq": seq, "message": message,
                   "head": {"seq": head.seq, "hash": head.hash}}),
            StatusCode::OK,
        ))
    };
    while prev.0 < head.seq {
        let (kvs, _) = store
            .range_from(EVENTS, &event_key(prev.0 + 1), MAX_PAGE)
            .map_err(|e| ApiError::internal("audit read", e))?;
        let mut page = Vec::with_capacity(kvs.len());
        for kv in &kvs {
            match serde_json::from_str::<AuditEvent>(&kv.value) {
                Ok(ev) if ev.seq <= head.seq => page.push(ev),
                Ok(_) => break,
                Err(e) => {
                    return broken(
                        prev.0 + 1,
                        format!("the event stored at {} does not decode: {e}", kv.key),
                        prev.0,
                    )
                }
            }
        }
        if page.is_empty() {
            return broken(
                prev.0 + 1,
                format!(
                    "the head says {} events, but the chain ends at {}",
                    head.seq, prev.0
                ),
                prev.0,
            );
        }
        match crate::model::audit::verify(&page, (prev.0, &prev.1)) {
            Ok(last) => prev = last,
            Err(b) => return broken(b.seq, b.reason, b.seq.saturating_sub(1)),
        }
    }
    if prev.1 != head.hash {
        return broken(
            head.seq,
            "the last event's hash is not the recorded head: the head or the event was changed"
                .into(),
            prev.0,
        );
    }
    Ok(with_revision(
        rev,
        json!({"ok": true, "checked": prev.0, "head": {"seq": head.seq, "hash": head.hash}}),
        StatusCode::OK,
    ))
}

pub async fn show(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(seq): Path<String>,
) -> Result<Response, ApiError> {
    may_read(&caller)?;
    let seq: u64 = seq
        .parse()
        .map_err(|_| ApiError::bad_field("seq", format!("`{seq}` is not a sequence number")))?;
    let (kv, rev) = s
        .node
        .store()
        .get(&event_key(seq))
        .map_err(|e| ApiError::internal("audit read", e))?;
    let kv = kv.ok_or_else(|| ApiError::not_found(format!("no audit event {seq}")))?;
    let ev: serde_json::Value =
        serde_json::from_str(&kv.value).map_err(|e| ApiError::internal("audit event decode", e))?;
    Ok(with_revision(rev, ev, StatusCode::OK))
}
