//! `POST /api/v1/datasources/{name}/failover {unit, from, to}`: a shard's replica `to`
//! becomes its primary in place of `from`, which leaves the data source (it may come back
//! with writes the new primary never saw; an operator adds it again as a replica once it
//! is rebuilt). DB proxies with automatic failover call it when a primary stays
//! unreachable; admins and operators may call it by hand. The control plane is the
//! arbiter: the change commits only while `from` is still the primary, so of several
//! proxies seeing the same failure exactly one wins (the others get 409). Audited as
//! `failover` by the caller, through the same validated commit as any change.

use super::auth::Caller;
use super::context::RequestContext;
use super::error::ApiError;
use super::resources::{
    commit_and_answer, decode, invalid, may_write, object_key, Extra, Original, Want,
};
use super::ApiState;
use crate::model::Kind;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use bytes::Bytes;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    unit: String,
    from: String,
    to: String,
}

#[allow(clippy::too_many_arguments)]
pub async fn failover(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ctx: Option<Extension<RequestContext>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let ctx = super::resources::context(ctx);
    if caller.role != "dbproxy" {
        if let Err(e) = may_write(&caller, Kind::DataSource) {
            return Err(super::audit::refuse(
                &s,
                &caller,
                &ctx,
                "failover",
                "DataSource",
                &name,
                e,
            )
            .await);
        }
    }
    let (b, raw): (Body, Bytes) = super::error::parse_body(
        body,
        "{\"unit\": UNIT, \"from\": \"HOST:PORT\", \"to\": \"HOST:PORT\"}",
    )?;
    let original = Original {
        method: Method::POST,
        uri: &uri,
        headers: &headers,
        body: raw,
    };
    // Status reports move the object's revision all the time: a commit that finds it
    // moved is planned again from a fresh read (a real change of the primary then
    // answers 409 stale_primary).
    let mut last = None;
    for _ in 0..5 {
        let obj = planned(&s, &name, &b)?;
        let r = commit_and_answer(
            &s,
            &caller,
            &ctx,
            "failover",
            &Want::Put(vec![(Kind::DataSource, obj)]),
            &Extra::None,
            &original,
            true,
        )
        .await;
        match r {
            Err(e) if e.code == "stale_revision" => last = Some(e),
            Ok(answer) => {
                tracing::warn!(datasource = %name, unit = %b.unit, from = %b.from, to = %b.to, by = %caller.user, "Data source failover");
                return Ok(answer);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "busy",
            "the data source kept changing; retry",
        )
    }))
}

/// The data source with `to` as the primary of `unit`'s shard, from the stored object
/// (edited as JSON, so nothing else in the spec changes form).
fn planned(s: &ApiState, name: &str, b: &Body) -> Result<crate::model::Resource, ApiError> {
    let (kv, _) = s
        .node
        .store()
        .get(&object_key(Kind::DataSource, name))
        .map_err(|e| ApiError::internal("resource read", e))?;
    let Some(kv) = kv else {
        return Err(ApiError::not_found(format!(
            "datasource `{name}` does not exist"
        )));
    };
    let mut obj = decode(&kv)?;
    let shards = obj
        .spec
        .get_mut("shards")
        .and_then(serde_json::Value::as_array_mut)
        .ok_or_else(|| ApiError::internal("datasource spec", "no shards"))?;
    let Some(shard) = shards
        .iter_mut()
        .find(|sh| sh.get("unit").and_then(serde_json::Value::as_str) == Some(b.unit.as_str()))
    else {
        return Err(ApiError::bad_field(
            "unit",
            format!("datasource `{name}` has no shard for unit `{}`", b.unit),
        ));
    };
    let primary = shard
        .get("primary")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    if primary != b.from {
        return Err(ApiError {
            field: Some("from".into()),
            ..ApiError::new(
                StatusCode::CONFLICT,
                "stale_primary",
                format!(
                    "the primary of {}'s shard is {primary}, not {} (it was moved already)",
                    b.unit, b.from
                ),
            )
        });
    }
    let replicas: Vec<String> = shard
        .get("replicas")
        .and_then(|r| serde_json::from_value(r.clone()).ok())
        .unwrap_or_default();
    if !replicas.contains(&b.to) {
        return Err(ApiError::bad_field(
            "to",
            format!(
                "{} is not a replica of {}'s shard (replicas: {})",
                b.to,
                b.unit,
                replicas.join(", ")
            ),
        ));
    }
    shard["primary"] = serde_json::Value::String(b.to.clone());
    shard["replicas"] =
        serde_json::json!(replicas.iter().filter(|r| **r != b.to).collect::<Vec<_>>());
    // Only if nothing changed since it was read (another failover, an edit).
    obj.metadata.revision = Some(kv.mod_revision);
    obj.check(Some(Kind::DataSource)).map_err(|e| invalid(&e))?;
    Ok(obj)
}
