//! `GET /api/v1/logs?app=...`: an app's collected log lines from every node it runs on.
//!
//! The control node finds the app's instances and their nodes, and asks each node's agent
//! (`GET /logs` on the address the agent reports as `status.agentApi`) with a grant made
//! for that node (`api::logs`): the caller's token never leaves the control plane. The
//! answer is NDJSON: records (`api::logs::Record`), and `{node, error}` for a node that
//! could not be read. Without `follow`, the most recent `limit` lines over all nodes in
//! time order; with `follow=true`, those and then new lines as the agents send them.
//! Any control node answers (nothing here needs the leader).

use super::auth::{Caller, TOKEN_PREFIX};
use super::error::ApiError;
use super::ApiState;
use crate::api::logs::{grant, Line, Query, GRANT_TTL_MS};
use crate::model::Kind;
use crate::util::now_ms;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use bytes::Bytes;
use http_body_util::BodyExt;
use std::collections::BTreeMap;
use std::time::Duration;

/// Roles that may read logs: people, not services.
const READERS: [&str; 4] = ["admin", "operator", "approver", "viewer"];

pub async fn logs(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    q: Result<axum::extract::Query<Query>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    if !READERS.contains(&caller.role.as_str()) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "user `{}` (role {}) may not read logs",
                caller.user, caller.role
            ),
        ));
    }
    let axum::extract::Query(q) = q?;
    let filter = q
        .check()
        .map_err(|(field, message)| ApiError::bad_field(field, message))?;
    let world = super::resources::read_world(&s, &[Kind::App, Kind::Instance, Kind::Node])
        .map_err(|e| ApiError::internal("resource read", e))?;
    if !world.objects.contains_key(&(Kind::App, q.app.clone())) {
        return Err(ApiError::not_found(format!("no app `{}`", q.app)));
    }
    // The nodes the app's (matching) instances are placed on.
    let mut nodes: BTreeMap<String, Option<String>> = BTreeMap::new();
    for ((kind, name), r) in &world.objects {
        if *kind != Kind::Instance || r.spec["app"] != q.app.as_str() {
            continue;
        }
        if filter
            .unit
            .as_ref()
            .is_some_and(|u| r.spec["unit"] != u.as_str())
            || filter.instance.as_ref().is_some_and(|i| i != name)
        {
            continue;
        }
        if let Some(node) = r.spec["node"].as_str() {
            let api = world
                .objects
                .get(&(Kind::Node, node.to_string()))
                .and_then(|n| n.status["agentApi"].as_str())
                .map(str::to_string);
            nodes.insert(node.to_string(), api);
        }
    }
    let keys = agent_keys(&s, &nodes)?;
    let expiry = now_ms() + GRANT_TTL_MS;
    let path = format!("/logs?{}", q.to_query_string());
    let limit = filter.limit;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Line>(256);
    for (node, api) in nodes {
        let tx = tx.clone();
        let Some(api) = api else {
            let _ = tx
                .send(Line::Problem {
                    error: "its agent has not reported where it can be reached (agentApi)".into(),
                    node,
                })
                .await;
            continue;
        };
        let g = grant(
            &node,
            expiry,
            &caller.user,
            keys.get(&node).map(Vec::as_slice).unwrap_or(&[]),
        );
        let path = path.clone();
        let follow = filter.follow;
        let tls = s.node.tls().client_http1();
        tokio::spawn(async move {
            if let Err(error) = read_agent(&api, tls, &g, &path, follow, &tx).await {
                let _ = tx.send(Line::Problem { node, error }).await;
            }
        });
    }
    drop(tx);
    if !filter.follow {
        let mut problems = Vec::new();
        let mut records = Vec::new();
        while let Some(line) = rx.recv().await {
            match line {
                Line::Record(r) => records.push(r),
                p => problems.push(p),
            }
        }
        records.sort_by(|a, b| (a.t, &a.node, a.seq).cmp(&(b.t, &b.node, b.seq)));
        let skip = records.len().saturating_sub(limit);
        let mut out = Vec::new();
        for line in problems
            .into_iter()
            .chain(records.into_iter().skip(skip).map(Line::Record))
        {
            push(&mut out, &line);
        }
        return Ok(ndjson(Body::from(out)));
    }
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let line = rx.recv().await?;
        let mut out = Vec::new();
        push(&mut out, &line);
        Some((Ok::<_, std::io::Error>(Bytes::from(out)), rx))
    });
    Ok(ndjson(Body::from_stream(stream)))
}

/// Reads one agent's answer line by line into `tx`.
async fn read_agent(
    api: &str,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    grant: &str,
    path: &str,
    follow: bool,
    tx: &tokio::sync::mpsc::Sender<Line>,
) -> Result<(), String> {
    // An agent with its certificate is read over mutual TLS: this member's certificate
    // gets in, and the agent's must name its address.
    let client = if api.starts_with("https://") {
        let tls =
            tls.ok_or("this control node has no certificate yet to reach the agent over TLS")?;
        crate::api::Client::with_tls(api, Some(grant.to_string()), tls)
    } else {
        crate::api::Client::new(api, Some(grant.to_string()))
    }
    .map_err(|e| e.to_string())?
    .with_timeout(Duration::from_secs(10));
    let mut body = client.stream(path).await.map_err(|e| e.to_string())?;
    let mut partial: Vec<u8> = Vec::new();
    // A complete answer (no follow) is bounded: 10,000 lines of at most 16 KiB.
    let deadline = tokio::time::Instant::now()
        + if follow {
            Duration::from_secs(3600)
        } else {
            Duration::from_secs(30)
        };
    loop {
        let frame = tokio::select! {
            f = body.frame() => f,
            _ = tokio::time::sleep_until(deadline) => return Err("the agent took too long".into()),
            _ = tx.closed() => return Ok(()),
        };
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| format!("reading from the agent: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        partial.extend_from_slice(&data);
        while let Some(i) = partial.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = partial.drain(..=i).collect();
            if let Ok(l) = serde_json::from_slice::<Line>(&line) {
                if tx.send(l).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    Ok(())
}

/// Grant keys per node: the SHA-256 of each credential of its agent (`agent-<node>`),
/// which the control plane stores as the tokens' keys.
fn agent_keys(
    s: &ApiState,
    nodes: &BTreeMap<String, Option<String>>,
) -> Result<BTreeMap<String, Vec<[u8; 32]>>, ApiError> {
    let (kvs, _) = s
        .node
        .store()
        .range(TOKEN_PREFIX, 1_000_000)
        .map_err(|e| ApiError::internal("token read", e))?;
    let mut out: BTreeMap<String, Vec<[u8; 32]>> = BTreeMap::new();
    for kv in kvs {
        let Ok(c) = serde_json::from_str::<Caller>(&kv.value) else {
            continue;
        };
        let Some(node) = c.user.strip_prefix("agent-") else {
            continue;
        };
        if c.role != "agent" || !nodes.contains_key(node) {
            continue;
        }
        let Some(hex) = kv.key.strip_prefix(TOKEN_PREFIX) else {
            continue;
        };
        if let Some(key) = unhex32(hex) {
            out.entry(node.to_string()).or_default().push(key);
        }
    }
    Ok(out)
}

fn unhex32(s: &str) -> Option<[u8; 32]> {
    crate::util::unhex(s)?.try_into().ok()
}

fn push(out: &mut Vec<u8>, line: &Line) {
    if serde_json::to_writer(&mut *out, line).is_ok() {
        out.push(b'\n');
    }
}

fn ndjson(body: Body) -> Response {
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/x-ndjson"),
    );
    resp.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn token_keys_decode() {
        let k = crate::api::logs::grant_key("t");
        assert_eq!(super::unhex32(&crate::util::hex(&k)), Some(k));
        assert_eq!(super::unhex32("zz"), None);
    }
}
