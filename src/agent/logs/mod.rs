//! Log collection on this node: the files of the instances placed here (their
//! `stdout.log`/`stderr.log`, and every file under the app's `logDir`) are followed
//! (`follow.rs`) into a bounded local store (`store.rs`), and served on the agent's
//! listener as `GET /logs` to control nodes holding a grant (`api::logs`), which is how
//! `tessera logs` and the console read them from every node.

pub mod follow;
pub mod forward;
pub mod store;
mod syslog;

use crate::api::logs::{verify_grant, Filter, Line, Query, Record, MAX_LIMIT};
use crate::util::now_ms;
use axum::body::Body;
use axum::extract::{Query as Q, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use follow::{Collector, Source};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const POLL: Duration = Duration::from_millis(500);
/// A followed answer stays open at most this long (the client asks again).
const FOLLOW_MAX: Duration = Duration::from_secs(3600);

/// What the collector and the API share.
#[derive(Clone)]
pub struct Logs {
    node: String,
    dir: PathBuf,
    store: Arc<Mutex<store::Store>>,
    /// What to collect, set by the supervisor on every pass.
    pub sources: Arc<Mutex<Vec<Source>>>,
    /// The grant key: the SHA-256 of this agent's current credential.
    key: Arc<Mutex<Option<[u8; 32]>>>,
    /// The next sequence number, bumped after each append (wakes followers).
    appended: tokio::sync::watch::Sender<u64>,
}

impl Logs {
    pub fn open(node: &str, dir: PathBuf, cap_bytes: u64) -> std::io::Result<Logs> {
        let store = store::Store::open(&dir, cap_bytes)?;
        let (appended, _) = tokio::sync::watch::channel(store.next_seq());
        Ok(Logs {
            node: node.to_string(),
            dir,
            store: Arc::new(Mutex::new(store)),
            sources: Arc::default(),
            key: Arc::default(),
            appended,
        })
    }

    /// The agent's credential changed (enrolment).
    pub fn set_credential(&self, token: &str) {
        *lock(&self.key) = Some(crate::api::logs::grant_key(token));
    }

    pub fn router(&self) -> Router {
        Router::new()
            .route("/logs", get(serve))
            .with_state(self.clone())
    }

    /// Starts one forwarding task per sink (`[[agent.log_sinks]]`).
    pub fn forward(
        &self,
        sinks: &[crate::config::LogSink],
        registry: &prometheus::Registry,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        if sinks.is_empty() {
            return Vec::new();
        }
        let dir = self.dir.join("sinks");
        if let Err(e) = std::fs::create_dir_all(&dir) {
            tracing::warn!(error = %e, dir = %dir.display(), "Cannot create the log sinks' directory");
        }
        let metrics = forward::SinkMetrics::new(registry);
        let mut tasks = Vec::new();
        for cfg in sinks {
            match forward::Sink::new(cfg.clone()) {
                Ok(sink) => tasks.push(tokio::spawn(forward::run(
                    sink,
                    self.store.clone(),
                    self.appended.subscribe(),
                    dir.clone(),
                    metrics.clone(),
                    shutdown.clone(),
                ))),
                // Profiles are checked at load; this is a sink that slipped through.
                Err(e) => tracing::error!(sink = %cfg.name, error = %e, "Log sink not started"),
            }
        }
        tasks
    }

    /// Collects until shutdown, saving offsets so that a restart goes on from them.
    pub async fn collect(self, shutdown: tokio_util::sync::CancellationToken) {
        let offsets = self.dir.join("offsets.json");
        let saved: BTreeMap<PathBuf, (u64, u64)> = std::fs::read(&offsets)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        let collector = Arc::new(Mutex::new(Collector::new(&self.node, saved)));
        let mut last_saved = BTreeMap::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(POLL) => {}
            }
            let (this, collector) = (self.clone(), collector.clone());
            let pass = tokio::task::spawn_blocking(move || {
                let sources = lock(&this.sources).clone();
                let mut c = lock(&collector);
                let mut records = c.poll(&sources, now_ms());
                let mut store = lock(&this.store);
                if let Err(e) = store.append(&mut records) {
                    tracing::warn!(error = %e, "Writing collected log lines failed");
                }
                (c.offsets(), store.next_seq())
            })
            .await;
            let Ok((now, next)) = pass else { continue };
            self.appended.send_replace(next);
            if now != last_saved {
                if let Ok(bytes) = serde_json::to_vec(&now) {
                    if let Err(e) = crate::util::write_atomic(&offsets, &bytes, 0o600) {
                        tracing::warn!(error = %e, "Saving log offsets failed");
                    }
                }
                last_saved = now;
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn error(status: StatusCode, code: &str, message: String, field: Option<&str>) -> Response {
    let mut body = serde_json::json!({"code": code, "message": message});
    if let Some(f) = field {
        body["field"] = f.into();
    }
    (status, axum::Json(body)).into_response()
}

/// `GET /logs?app=...`: NDJSON lines, the most recent `limit` that match; with
/// `follow=true` the answer stays open and new lines follow.
async fn serve(
    State(logs): State<Logs>,
    headers: HeaderMap,
    q: Result<Q<Query>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let grant = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let Some(key) = *lock(&logs.key) else {
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "this agent has not enrolled yet".into(),
            None,
        );
    };
    let caller = match verify_grant(grant, &logs.node, &key, now_ms()) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("a log read grant from the control plane is needed: {e}"),
                None,
            )
        }
    };
    let q = match q {
        Ok(Q(q)) => q,
        Err(e) => {
            return error(StatusCode::BAD_REQUEST, "invalid", e.body_text(), None);
        }
    };
    let filter = match q.check() {
        Ok(f) => f,
        Err((field, message)) => {
            return error(StatusCode::BAD_REQUEST, "invalid", message, Some(field));
        }
    };
    tracing::debug!(caller = %caller, app = %filter.app, follow = filter.follow, "Serving logs");
    let filter = Arc::new(filter);
    let first = {
        let (segments, filter) = (lock(&logs.store).segments(), filter.clone());
        tokio::task::spawn_blocking(move || store::query(&segments, &filter, 0))
            .await
            .unwrap_or_default()
    };
    if !filter.follow {
        return ndjson(Body::from(lines(&first)));
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Vec<u8>>(16);
    let mut after = first.last().map(|r| r.seq).unwrap_or(0);
    let mut wake = logs.appended.subscribe();
    if after == 0 {
        after = wake.borrow().saturating_sub(1);
    }
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + FOLLOW_MAX;
        if tx.send(lines(&first)).await.is_err() {
            return;
        }
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => return,
                _ = tx.closed() => return,
                changed = wake.changed() => if changed.is_err() { return },
            }
            let tail = lock(&logs.store).segments_after(after);
            let f = Filter {
                limit: MAX_LIMIT,
                grep: filter.grep.clone(),
                app: filter.app.clone(),
                unit: filter.unit.clone(),
                instance: filter.instance.clone(),
                since_ms: filter.since_ms,
                follow: true,
            };
            let new = tokio::task::spawn_blocking(move || store::query(&tail, &f, after))
                .await
                .unwrap_or_default();
            if let Some(last) = new.last() {
                after = last.seq;
                if tx.send(lines(&new)).await.is_err() {
                    return;
                }
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(bytes::Bytes::from(chunk)), rx))
    });
    ndjson(Body::from_stream(stream))
}

fn lines(records: &[Record]) -> Vec<u8> {
    let mut out = Vec::new();
    for r in records {
        if serde_json::to_writer(&mut out, &Line::Record(r.clone())).is_ok() {
            out.push(b'\n');
        }
    }
    out
}

fn ndjson(body: Body) -> Response {
    Response::builder()
        .header(header::CONTENT_TYPE, "application/x-ndjson")
        .header(header::CACHE_CONTROL, "no-store")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
