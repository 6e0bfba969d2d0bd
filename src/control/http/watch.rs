//! Watches. `GET /api/v1/watch?kinds=a,b&since=REV` streams resource changes (`resources`);
//! `GET /api/v1/kv-watch?prefix=P&since=REV` (admin): Server-Sent Events, one event per
//! change under `P`, each with its revision as the SSE id. `since` is the last revision
//! the client has seen (also taken from `Last-Event-ID` on reconnect): the stream
//! replays every later change still in the history, then follows live, so a client that
//! reconnects with `since` misses nothing. A `since` older than the kept history answers
//! 410 `compacted`; a stream that falls behind a compaction (or whose node installs a
//! snapshot) ends with a `compacted` event. Without `since` the stream starts at the
//! current revision.

use super::auth::Caller;
use super::error::ApiError;
use super::kv::validate_key;
use super::resources::PREFIX;
use super::ApiState;
use crate::control::store::types::Event;
use crate::control::store::types::EventKind;
use crate::control::store::Store;
use crate::model::{Kind, Resource};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::json;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

const REPLAY_BATCH: usize = 1000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    #[serde(default)]
    prefix: String,
    since: Option<u64>,
}

pub async fn watch(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    caller.require_admin()?;
    let Query(q) = q?;
    if !q.prefix.is_empty() {
        validate_key("prefix", &q.prefix)?;
    }
    let prefix = q.prefix.clone();
    let render = move |ev: &Event| ev.kv.key.starts_with(&prefix).then(|| sse(ev));
    stream(&s, q.prefix, q.since, &headers, Arc::new(render), false)
}

/// Turns a stored change into the SSE event a watcher gets (None: not for it).
pub type Render = Arc<dyn Fn(&Event) -> Option<SseEvent> + Send + Sync>;

/// An SSE stream of the changes under `prefix` after `since` (or `Last-Event-ID`, or
/// now), each rendered by `render`. With `progress`, a `PROGRESS` event
/// (`{"revision": N}`) follows every delivery after which the watcher has seen every
/// change up to N: the end of the history replay, and each committed batch that had
/// events for it (one commit's events are never split by it).
pub fn stream(
    s: &ApiState,
    prefix: String,
    since: Option<u64>,
    headers: &HeaderMap,
    render: Render,
    progress: bool,
) -> Result<Response, ApiError> {
    let last_event_id = match headers.get("last-event-id") {
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| ApiError::bad_field("Last-Event-ID", "not a revision"))?,
        ),
        None => None,
    };
    let store = s.node.store().clone();
    // Subscribe before reading history, so nothing falls between the two.
    let live = store.subscribe();
    let since = match since.or(last_event_id) {
        Some(since) => {
            let (_, compacted, applied) = store
                .history(since, &prefix, 1)
                .map_err(|e| ApiError::internal("history read", e))?;
            if since < compacted {
                return Err(ApiError::new(StatusCode::GONE, "compacted", format!("revision {since} is compacted; the oldest revision still kept is {compacted}")));
            }
            if since > applied {
                return Err(ApiError::bad_field(
                    "since",
                    format!("revision {since} is in the future (current {applied})"),
                ));
            }
            since
        }
        None => {
            store
                .history(u64::MAX - 1, "", 1)
                .map_err(|e| ApiError::internal("history read", e))?
                .2
        }
    };
    let (tx, rx) = mpsc::channel::<SseEvent>(256);
    tokio::spawn(pump(store, prefix, since, live, tx, render, progress));
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|ev| (Ok::<_, Infallible>(ev), rx))
    });
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

fn sse(ev: &Event) -> SseEvent {
    let kind = match ev.kind {
        crate::control::store::types::EventKind::Put => "put",
        crate::control::store::types::EventKind::Delete => "delete",
    };
    SseEvent::default()
        .id(ev.revision.to_string())
        .event(kind)
        .json_data(ev)
        .unwrap_or_default()
}

/// The last event of a stream that cannot continue from `last`.
fn progress_event(revision: u64) -> SseEvent {
    SseEvent::default()
        .id(revision.to_string())
        .event("PROGRESS")
        .data(serde_json::json!({"revision": revision}).to_string())
}

fn gone(last: u64, floor: u64) -> SseEvent {
    SseEvent::default().event("compacted").data(
        serde_json::json!({
            "code": "compacted",
            "message": format!("the history after revision {last} is no longer kept (oldest: {floor}); re-read the keys and watch from the new revision"),
        })
        .to_string(),
    )
}

/// Replays history after `last`, then forwards live events; on lag, replays again.
async fn pump(
    store: Store,
    prefix: String,
    mut last: u64,
    mut live: broadcast::Receiver<std::sync::Arc<Vec<Event>>>,
    tx: mpsc::Sender<SseEvent>,
    render: Render,
    progress: bool,
) {
    loop {
        // Replay from history until caught up with what is applied.
        loop {
            let Ok((events, floor, applied)) = store.history(last, &prefix, REPLAY_BATCH) else {
                return;
            };
            if last < floor {
                // Compacted while this watch fell behind: end with a reason; resuming
                // from `last` then answers 410.
                let _ = tx.send(gone(last, floor)).await;
                return;
            }
            let done = events.len() < REPLAY_BATCH;
            for ev in &events {
                if let Some(out) = render(ev) {
                    if tx.send(out).await.is_err() {
                        return;
                    }
                }
                last = ev.revision;
            }
            if done {
                // Everything up to `applied` under the prefix has been sent.
                last = last.max(applied);
                if progress && tx.send(progress_event(last)).await.is_err() {
                    return;
                }
                break;
            }
        }
        loop {
            tokio::select! {
                _ = tx.closed() => return,
                batch = live.recv() => match batch {
                    Ok(batch) if batch.is_empty() => {
                        // This node installed a snapshot: its history restarted.
                        let _ = tx.send(gone(last, last + 1)).await;
                        return;
                    }
                    Ok(batch) => {
                        let mut sent = false;
                        for ev in batch.iter().filter(|e| e.revision > last && e.kv.key.starts_with(&prefix)) {
                            if let Some(out) = render(ev) {
                                if tx.send(out).await.is_err() {
                                    return;
                                }
                                sent = true;
                            }
                        }
                        if let Some(ev) = batch.last() {
                            last = last.max(ev.revision);
                        }
                        if progress && sent && tx.send(progress_event(last)).await.is_err() {
                            return;
                        }
                    }
                    // Too slow to follow live: catch up from the history instead.
                    Err(broadcast::error::RecvError::Lagged(_)) => break,
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceWatchQuery {
    /// Comma-separated kinds (default: all).
    #[serde(default)]
    kinds: String,
    since: Option<u64>,
    /// Also send `PROGRESS` events (see [`stream`]).
    #[serde(default)]
    progress: bool,
}

/// `GET /api/v1/watch?kinds=a,b&since=REV`: one SSE event per change of those kinds,
/// `id` = revision, `event` = `ADDED`/`MODIFIED`/`DELETED`, `data` =
/// `{type, revision, kind, name, object}`. Resumable like the KV watch.
pub async fn resources(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    q: Result<Query<ResourceWatchQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Query(q) = q?;
    let mut kinds = Vec::new();
    for k in q.kinds.split(',').map(str::trim).filter(|k| !k.is_empty()) {
        let kind = Kind::parse(k).filter(|k| k.stored()).ok_or_else(|| {
            ApiError::bad_field("kinds", format!("`{k}` is not a kind that can be watched"))
        })?;
        super::resources::may_read(&caller, kind)?;
        kinds.push(kind);
    }
    if kinds.is_empty() {
        kinds = Kind::ALL
            .into_iter()
            .filter(|k| k.stored() && super::resources::may_read(&caller, *k).is_ok())
            .collect();
    }
    let prefixes: Vec<String> = kinds
        .iter()
        .map(|k| format!("{PREFIX}{}/", k.plural()))
        .collect();
    let (state, who) = (s.clone(), caller.clone());
    let render = move |ev: &Event| -> Option<axum::response::sse::Event> {
        if !prefixes.iter().any(|p| ev.kv.key.starts_with(p.as_str())) {
            return None;
        }
        let rest = ev.kv.key.strip_prefix(PREFIX)?;
        let (plural, name) = rest.split_once('/')?;
        let kind = Kind::parse(plural)?;
        let (ty, object) = match ev.kind {
            EventKind::Put => {
                let mut r: Resource = serde_json::from_str(&ev.kv.value).ok()?;
                r.metadata.revision = Some(ev.kv.mod_revision);
                super::resources::present(&state, &who, kind, &mut r);
                (
                    if ev.kv.version == 1 {
                        "ADDED"
                    } else {
                        "MODIFIED"
                    },
                    serde_json::to_value(r).ok()?,
                )
            }
            EventKind::Delete => (
                "DELETED",
                json!({"apiVersion": crate::model::API_VERSION, "kind": kind.singular(), "metadata": {"name": name, "revision": ev.revision}}),
            ),
        };
        axum::response::sse::Event::default()
            .id(ev.revision.to_string())
            .event(ty)
            .json_data(json!({"type": ty, "revision": ev.revision, "kind": kind.singular(), "name": name, "object": object}))
            .ok()
    };
    stream(
        &s,
        PREFIX.to_string(),
        q.since,
        &headers,
        std::sync::Arc::new(render),
        q.progress,
    )
}
