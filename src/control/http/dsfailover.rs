//! `POST /api/v1/datasources/{name}/failover {unit, from, to}`: a shard's replica `to`
//! becomes its primary in place of `from`, which leaves the data source (it may come back
//! with writes the new primary never saw; an operator adds it again as a replica once it
//! is rebuilt). DB proxies with automatic failover call it when a primary stays
//! unreachable; admins and operators may call it by hand. The control plane is the
//! arbiter: the change commits only while `from` is still the primary, so of several
//! proxies seeing the same failure exactly one wins (the others get 409). Audited as
//! `failover` by the caller, through the same validated commit as any change.
//!
//! A proxy's request is also checked against what the other proxies report
//! (`status.proxies.<node>`, sent on every change of a server's health and every 30 s):
//! while another proxy reported within [`REPORT_FRESH`] that it reaches `from`, the
//! failover is refused (409 `primary_reachable`, audited): a primary cut off from one
//! proxy only (a one-sided partition) is not failed over. People may still move it.

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

/// A proxy's report younger than this counts as its current view.
const REPORT_FRESH: std::time::Duration = std::time::Duration::from_secs(45);

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
    let refuse =
        |e: ApiError| super::audit::refuse(&s, &caller, &ctx, "failover", "DataSource", &name, e);
    if caller.role != "dbproxy" {
        if let Err(e) = may_write(&caller, Kind::DataSource) {
            return Err(refuse(e).await);
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
        if let Some(me) = caller
            .user
            .strip_prefix("dbproxy-")
            .filter(|_| caller.role == "dbproxy")
        {
            if let Some(other) = reaches(&obj.status, me, &b, crate::util::now_ms()) {
                let e = ApiError::new(
                    StatusCode::CONFLICT,
                    "primary_reachable",
                    format!(
                        "DB proxy `{other}` still reaches {} (its report is under {} s old): a primary cut off from one proxy only is not failed over",
                        b.from,
                        REPORT_FRESH.as_secs()
                    ),
                );
                return Err(refuse(e).await);
            }
        }
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

/// Another proxy than `me` whose fresh report (at `now_ms`) has `b.from` up as the
/// primary of `b.unit`'s shard.
fn reaches(status: &serde_json::Value, me: &str, b: &Body, now_ms: u64) -> Option<String> {
    let proxies = status.get("proxies")?.as_object()?;
    proxies.iter().find_map(|(node, report)| {
        if node == me {
            return None;
        }
        let at = report.get("updatedAt")?.as_str()?;
        let at_ms = crate::util::parse_rfc3339_ms(at)?;
        if now_ms.saturating_sub(at_ms) > REPORT_FRESH.as_millis() as u64 {
            return None;
        }
        let primary = report.get("shards")?.get(&b.unit)?.get("primary")?;
        let up = primary.get("address")?.as_str()? == b.from && primary.get("up")?.as_bool()?;
        up.then(|| node.clone())
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_proxys_fresh_report_of_the_primary_up_blocks_a_failover() {
        let b = Body {
            unit: "rz00".into(),
            from: "10.0.0.1:3306".into(),
            to: "10.0.0.2:3306".into(),
        };
        let now = crate::util::parse_rfc3339_ms("2026-11-30T10:00:30Z").unwrap();
        let report = |at: &str, addr: &str, up: bool| serde_json::json!({"updatedAt": at, "shards": {"rz00": {"primary": {"address": addr, "up": up}, "replicas": []}}});
        let status = |others: serde_json::Value| {
            let mut proxies =
                serde_json::json!({"p1": report("2026-11-30T10:00:29Z", "10.0.0.1:3306", false)});
            for (k, v) in others.as_object().unwrap() {
                proxies[k] = v.clone();
            }
            serde_json::json!({"proxies": proxies})
        };
        // Only this proxy (p1) reports: nothing blocks.
        assert_eq!(reaches(&status(serde_json::json!({})), "p1", &b, now), None);
        // p2 reaches it, fresh: blocked, named.
        let s = status(
            serde_json::json!({"p2": report("2026-11-30T10:00:00Z", "10.0.0.1:3306", true)}),
        );
        assert_eq!(reaches(&s, "p1", &b, now).as_deref(), Some("p2"));
        // p2 also lost it, its report is stale, or it speaks of another primary: not.
        for other in [
            report("2026-11-30T10:00:28Z", "10.0.0.1:3306", false),
            report("2026-11-30T09:59:00Z", "10.0.0.1:3306", true),
            report("2026-11-30T10:00:28Z", "10.0.0.9:3306", true),
            serde_json::json!({"updatedAt": "not a time"}),
        ] {
            let s = status(serde_json::json!({"p2": other}));
            assert_eq!(reaches(&s, "p1", &b, now), None, "{s}");
        }
    }
}
