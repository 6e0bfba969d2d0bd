//! A role's link to the control plane: its credential, the resources it works from
//! (listed, then watched), and the copy of them on disk. Used by the gateway (route
//! table) and the DB proxy (data sources).
//!
//! - Credential: `<data_dir>/<role>/credential` (0600), obtained once by exchanging the
//!   role's `join_token` over TLS with the leader (`api::enroll`). A role co-located
//!   with a control node (`tessera up`) mints itself a join token with the local
//!   `admin.token` and exchanges it the same way: it never runs on the admin credential.
//! - Sync: list the input kinds, install them, then follow
//!   `/api/v1/watch?kinds=…&since=REV&progress=true`, installing at each PROGRESS event
//!   after changes (so an install never holds half of a commit). A dropped stream resumes
//!   from the last revision seen; a compacted one is listed again.
//! - Cache: the inputs are written to `<data_dir>/<role>/<cache file>` (at most once a
//!   second, atomically). At start the role serves from it before the control plane
//!   answers, so the data plane never depends on the control plane being up.

use crate::api::{Client, ClientError, List};
use crate::model::{Kind, Resource};
use bytes::{Buf, BytesMut};
use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// The objects of a role's input kinds as of `revision`; also what it keeps on disk.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Inputs {
    pub revision: u64,
    pub objects: BTreeMap<String, Resource>,
}

impl Inputs {
    pub fn key(kind: Kind, name: &str) -> String {
        format!("{}/{name}", kind.plural())
    }

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        let prefix = format!("{}/", kind.plural());
        self.objects
            .range(prefix.clone()..)
            .take_while(move |(k, _)| k.starts_with(&prefix))
            .map(|(_, r)| r)
    }
}

/// No byte for this long on a watch (the server sends a keep-alive every 15 s): reconnect.
const WATCH_IDLE: Duration = Duration::from_secs(45);
const CACHE_EVERY: Duration = Duration::from_secs(1);

/// What the admin listener shows of the feed.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct FeedStatus {
    /// `none`, `cache` or `control`: where the active table came from.
    pub source: String,
    pub connected: bool,
    pub last_error: Option<String>,
    /// When the active table was installed (RFC 3339).
    pub applied_at: Option<String>,
    pub control: Option<String>,
}

/// Puts inputs to work: (inputs, where they came from).
pub type Installer = Box<dyn Fn(&Inputs, &str) + Send + Sync>;

pub struct Feed {
    pub urls: Vec<String>,
    pub credential: crate::api::enroll::ServiceCredential,
    /// `<data_dir>/<role>`.
    pub dir: PathBuf,
    /// The cache file's name in `dir`.
    pub cache_file: &'static str,
    /// What is listed and watched.
    pub kinds: &'static [Kind],
    /// Puts a consistent set of inputs to work; the second argument says where they came
    /// from (`cache` or `control`).
    pub install: Installer,
    pub status: Arc<Mutex<FeedStatus>>,
    pub reachable: prometheus::IntGauge,
}

enum Stop {
    /// Start over with a fresh list (compacted history, a gap).
    Relist(String),
    /// The credential was refused: enroll again if possible.
    Unauthorized(String),
    Shutdown,
}

#[derive(Deserialize)]
struct WatchEvent {
    #[serde(rename = "type")]
    ty: String,
    revision: u64,
    kind: String,
    name: String,
    object: Resource,
}

impl Feed {
    fn cache_path(&self) -> PathBuf {
        self.dir.join(self.cache_file)
    }

    fn set_status(&self, f: impl FnOnce(&mut FeedStatus)) {
        f(&mut self.status.lock().unwrap_or_else(|e| e.into_inner()));
    }

    fn install(&self, inputs: &Inputs, source: &str) {
        (self.install)(inputs, source);
        self.set_status(|s| {
            s.source = source.into();
            s.applied_at = Some(crate::model::now_rfc3339());
        });
    }

    fn save(&self, inputs: &Inputs) {
        let body = match serde_json::to_vec(inputs) {
            Ok(b) => b,
            Err(e) => return tracing::warn!(error = %e, "Encoding the feed cache failed"),
        };
        if let Err(e) = crate::util::write_atomic(&self.cache_path(), &body, 0o600) {
            tracing::warn!(path = %self.cache_path().display(), error = %e, "Writing the feed cache failed");
        }
    }

    /// Serves from the cached inputs, if any.
    fn load_cache(&self) -> Option<Inputs> {
        let bytes = std::fs::read(self.cache_path()).ok()?;
        match serde_json::from_slice::<Inputs>(&bytes) {
            Ok(i) => {
                tracing::info!(
                    revision = i.revision,
                    objects = i.objects.len(),
                    "Serving the cached inputs until the control plane answers"
                );
                self.install(&i, "cache");
                Some(i)
            }
            Err(e) => {
                tracing::warn!(path = %self.cache_path().display(), error = %e, "The feed cache is unreadable; ignoring it");
                None
            }
        }
    }

    pub async fn run(self, shutdown: CancellationToken) {
        let _ = std::fs::create_dir_all(&self.dir);
        let mut held = self.load_cache().unwrap_or_default();
        let mut backoff = Duration::from_millis(200);
        loop {
            let started = Instant::now();
            let outcome = match self.credential.get(&shutdown).await {
                Ok(Some(token)) => self.sync(&token, &mut held, &shutdown).await,
                Ok(None) => Stop::Shutdown,
                Err(e) => Stop::Relist(e),
            };
            self.reachable.set(0);
            self.set_status(|s| s.connected = false);
            match outcome {
                Stop::Shutdown => break,
                Stop::Unauthorized(e) => {
                    tracing::error!(error = %e, role = self.credential.role, "The control plane refused this role's credential; enrolling again needs a new join_token");
                    self.set_status(|s| s.last_error = Some(e));
                    self.credential.forget();
                }
                Stop::Relist(e) if self.credential.waiting_for_local_control() => {
                    tracing::debug!(error = %e, "Waiting for the local control role");
                }
                Stop::Relist(e) => {
                    tracing::warn!(error = %e, "Feed from the control plane interrupted; serving what is held and retrying");
                    self.set_status(|s| s.last_error = Some(e));
                }
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = if started.elapsed() > Duration::from_secs(10) {
                Duration::from_millis(200)
            } else {
                (backoff * 2).min(Duration::from_secs(5))
            };
        }
        if held.revision > 0 {
            self.save(&held);
        }
    }

    /// Lists, installs, then follows the watch until it cannot continue.
    async fn sync(&self, token: &str, held: &mut Inputs, shutdown: &CancellationToken) -> Stop {
        let mut last_err = String::from("no control URL");
        for url in &self.urls {
            let client = match Client::new(url, Some(token.to_string())) {
                Ok(c) => c.with_timeout(Duration::from_secs(10)),
                Err(e) => return Stop::Relist(e.to_string()),
            };
            match self.sync_with(&client, held, shutdown).await {
                Stop::Relist(e) => last_err = format!("{url}: {e}"),
                other => return other,
            }
        }
        Stop::Relist(last_err)
    }

    async fn sync_with(
        &self,
        client: &Client,
        held: &mut Inputs,
        shutdown: &CancellationToken,
    ) -> Stop {
        let unauthorized = |e: &ClientError| matches!(e.status(), Some(401 | 403));
        // List every input kind; watch from the oldest list's revision (older events are
        // recognised by the revisions of the objects already held and skipped).
        let mut fresh = Inputs::default();
        let mut since = u64::MAX;
        for &kind in self.kinds {
            let list: List = match client
                .call(
                    http::Method::GET,
                    &format!("/api/v1/{}", kind.plural()),
                    None::<&()>,
                )
                .await
            {
                Ok(l) => l,
                Err(e) if unauthorized(&e) => return Stop::Unauthorized(e.to_string()),
                Err(e) => return Stop::Relist(e.to_string()),
            };
            since = since.min(list.revision);
            fresh.revision = fresh.revision.max(list.revision);
            for r in list.items {
                fresh.objects.insert(Inputs::key(kind, &r.metadata.name), r);
            }
        }
        *held = fresh;
        self.reachable.set(1);
        self.set_status(|s| {
            s.connected = true;
            s.last_error = None;
            s.control = Some(client.url().to_string());
        });
        let kinds: Vec<&str> = self.kinds.iter().map(|k| k.plural()).collect();
        let mut last_save = Instant::now();
        let mut dirty = false;
        // Changes held but not installed yet: installed at the next PROGRESS event, when
        // every change up to its revision has arrived. The lists above may stand at
        // different revisions; the watch replays from the oldest and its first PROGRESS
        // makes them one consistent table.
        let mut pending = true;
        loop {
            let path = format!(
                "/api/v1/watch?kinds={}&since={since}&progress=true",
                kinds.join(",")
            );
            let mut body = match client.stream(&path).await {
                Ok(b) => b,
                Err(e) if unauthorized(&e) => return Stop::Unauthorized(e.to_string()),
                Err(e) if e.status() == Some(410) => return Stop::Relist(e.to_string()),
                Err(e) => {
                    // A follower that has not applied `since` yet answers 400: wait a little.
                    tracing::debug!(error = %e, "Watch refused; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return Stop::Shutdown,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                    }
                    if e.status() == Some(400) {
                        continue;
                    }
                    return Stop::Relist(e.to_string());
                }
            };
            let mut buf = BytesMut::new();
            loop {
                let frame = tokio::select! {
                    _ = shutdown.cancelled() => {
                        if dirty { self.save(held); }
                        return Stop::Shutdown;
                    }
                    f = tokio::time::timeout(WATCH_IDLE, body.frame()) => f,
                };
                let data = match frame {
                    Err(_) => break, // idle: reconnect
                    Ok(None) => break,
                    Ok(Some(Err(e))) => {
                        tracing::debug!(error = %e, "Watch stream broke; resuming");
                        break;
                    }
                    Ok(Some(Ok(f))) => match f.into_data() {
                        Ok(d) => d,
                        Err(_) => continue,
                    },
                };
                buf.extend_from_slice(&data);
                while let Some(end) = find_event_end(&buf) {
                    let raw = buf.split_to(end.0);
                    buf.advance(end.1);
                    let Some((event, payload)) = parse_sse(&raw) else {
                        continue;
                    };
                    match event.as_str() {
                        "compacted" => return Stop::Relist(payload),
                        // Every change up to this revision has arrived: a table built now
                        // never holds half of a commit.
                        "PROGRESS" => {
                            let Some(rev) = serde_json::from_str::<serde_json::Value>(&payload)
                                .ok()
                                .and_then(|v| v["revision"].as_u64())
                            else {
                                continue;
                            };
                            since = since.max(rev);
                            held.revision = held.revision.max(rev);
                            if pending {
                                self.install(held, "control");
                                pending = false;
                                dirty = true;
                            }
                        }
                        _ => {
                            let Ok(ev) = serde_json::from_str::<WatchEvent>(&payload) else {
                                continue;
                            };
                            pending |= apply(held, ev);
                        }
                    }
                }
                if dirty && last_save.elapsed() >= CACHE_EVERY {
                    self.save(held);
                    dirty = false;
                    last_save = Instant::now();
                }
            }
            if dirty {
                self.save(held);
                dirty = false;
            }
        }
    }
}

/// Applies one watch event; false when it is older than what is held.
fn apply(held: &mut Inputs, ev: WatchEvent) -> bool {
    let Some(kind) = Kind::parse(&ev.kind) else {
        return false;
    };
    let key = Inputs::key(kind, &ev.name);
    let held_rev = held
        .objects
        .get(&key)
        .and_then(|r| r.metadata.revision)
        .unwrap_or(0);
    if ev.revision <= held_rev {
        return false;
    }
    if ev.ty == "DELETED" {
        held.objects.remove(&key);
    } else {
        held.objects.insert(key, ev.object);
    }
    true
}

/// The end of the first complete SSE event in `buf`: (event length, separator length).
fn find_event_end(buf: &[u8]) -> Option<(usize, usize)> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2));
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| (i, 4));
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.0 <= b.0 { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// (event name, data) of one SSE event; comments (keep-alives) give None.
fn parse_sse(raw: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(raw).ok()?;
    let mut event = String::from("message");
    let mut data: Vec<&str> = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("event:") {
            event = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("data:") {
            data.push(v.strip_prefix(' ').unwrap_or(v));
        }
    }
    (!data.is_empty()).then(|| (event, data.join("\n")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_split_and_parse() {
        let buf = b": keep-alive\n\nid: 5\nevent: ADDED\ndata: {\"a\":1}\n\nid: 6\r\ndata: x\r\n\r\npartial";
        let (end, sep) = find_event_end(buf).unwrap();
        assert_eq!(parse_sse(&buf[..end]), None);
        let rest = &buf[end + sep..];
        let (end, sep) = find_event_end(rest).unwrap();
        assert_eq!(
            parse_sse(&rest[..end]),
            Some(("ADDED".into(), "{\"a\":1}".into()))
        );
        let rest = &rest[end + sep..];
        let (end, _) = find_event_end(rest).unwrap();
        assert_eq!(
            parse_sse(&rest[..end]),
            Some(("message".into(), "x".into()))
        );
    }

    #[test]
    fn older_events_do_not_undo_newer_state() {
        let mut held = Inputs::default();
        let mut r = Resource::new(Kind::App, "a", serde_json::json!({}));
        r.metadata.revision = Some(10);
        held.objects.insert(Inputs::key(Kind::App, "a"), r.clone());
        let ev = |ty: &str, rev| WatchEvent {
            ty: ty.into(),
            revision: rev,
            kind: "App".into(),
            name: "a".into(),
            object: r.clone(),
        };
        assert!(!apply(&mut held, ev("DELETED", 9)));
        assert!(held.objects.contains_key("apps/a"));
        assert!(apply(&mut held, ev("DELETED", 11)));
        assert!(held.objects.is_empty());
    }
}
