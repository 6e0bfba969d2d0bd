//! Committing a change: validated on the leader against one consistent read of every
//! object, then written in one transaction with its audit events, on condition that the
//! audit head has not moved (see the module above).

use super::*;

/// The original request, to forward to the leader when this node is not it.
pub(in crate::control::http) struct Original<'a> {
    pub method: Method,
    pub uri: &'a Uri,
    pub headers: &'a HeaderMap,
    pub body: Bytes,
}

/// Writes that go into the same transaction as a change (a user's token records).
pub(in crate::control::http) enum Extra {
    None,
    Ops(Vec<Op>),
    /// Computed from the store on each attempt (what to delete with a user).
    #[allow(clippy::type_complexity)]
    Computed(Box<dyn Fn(&ApiState) -> Result<Vec<Op>, ApiError> + Send + Sync>),
}

/// What one committed change did to one object.
#[derive(serde::Serialize)]
pub(in crate::control::http) struct Outcome {
    pub kind: &'static str,
    pub name: String,
    /// `created`, `configured`, `unchanged` or `deleted`.
    pub action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<Resource>,
}

/// A request for changes, resolved against the current world into concrete changes.
pub(in crate::control::http) enum Want {
    /// Put these objects (create or replace).
    Put(Vec<(Kind, Resource)>),
    /// Delete one object, optionally only at `revision`.
    Delete(Kind, String, Option<u64>),
}

pub(super) enum Failure {
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
pub(in crate::control::http) async fn commit(
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
        Want::Put(objects)
            if objects
                .iter()
                .any(|(k, _)| super::super::secrets::has_secrets(*k)) =>
        {
            Some(super::super::secrets::data_key(s).await?)
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
            Err(e @ RaftFailure::OutcomeUnknown(_)) => {
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
pub(in crate::control::http) fn dry_run(uri: &Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|p| p == "dryRun=true" || p == "dryRun=1"))
}

pub(in crate::control::http) async fn forward(
    s: &ApiState,
    o: &Original<'_>,
) -> Result<Response, ApiError> {
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
    key: Option<&super::super::secrets::DataKey>,
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
                if let (true, Some(key)) = (super::super::secrets::has_secrets(*kind), key) {
                    super::super::secrets::seal_spec(
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
pub(in crate::control::http) async fn commit_and_answer(
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

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        match self {
            Failure::Api(e) | Failure::Refused(_, _, e) => e.into_response(),
        }
    }
}
