//! Lossless stops: before a leaving process gets SIGTERM, every live gateway is asked
//! whether it has drained the process's endpoint.
//!
//! The gateways are those registered with the control plane (`GET /api/v1/gateways`,
//! `live`); each is asked `GET <admin>/drained?endpoint=IP:PORT` every 200 ms until it
//! says `drained: true` (its active table no longer routes there and nothing of it is in
//! flight). The stop goes ahead once all have said so, or after [`DRAIN_MAX`] with a
//! warning naming the gateways that did not. With no gateway registered (none deployed,
//! or the control plane unreachable) a fixed [`DRAIN_GRACE`] stands in.

use super::{pid_alive, signal, Proc};
use crate::api::Client;
use http::Method;
use serde_json::Value;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Without gateways to ask: between an endpoint leaving the tables and its SIGTERM.
pub const DRAIN_GRACE: Duration = Duration::from_secs(2);
/// The longest a stop waits for gateways to report the endpoint drained.
pub const DRAIN_MAX: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(200);
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// Still asking.
pub const WAITING: u8 = 0;
/// Every live gateway said drained.
pub const DRAINED: u8 = 1;
/// No gateway to ask: the fixed grace applies.
pub const NO_GATEWAYS: u8 = 2;
/// Some gateway never said drained within [`DRAIN_MAX`].
pub const GAVE_UP: u8 = 3;

/// Whether a process that started leaving `waited` ago may get its SIGTERM now.
pub fn may_stop(state: Option<&AtomicU8>, waited: Duration) -> bool {
    match state.map(|s| s.load(Ordering::Acquire)) {
        Some(DRAINED) | Some(GAVE_UP) => true,
        Some(WAITING) => waited >= DRAIN_MAX,
        _ => waited >= DRAIN_GRACE,
    }
}

/// Starts asking the gateways about `endpoint` in the background; the returned state
/// says how it went.
pub fn watch(client: &Client, instance: &str, endpoint: SocketAddr) -> Arc<AtomicU8> {
    let state = Arc::new(AtomicU8::new(WAITING));
    let (client, instance, s) = (client.clone(), instance.to_string(), state.clone());
    tokio::spawn(async move {
        let outcome = ask_all(&client, &instance, endpoint).await;
        s.store(outcome, Ordering::Release);
    });
    state
}

async fn ask_all(client: &Client, instance: &str, endpoint: SocketAddr) -> u8 {
    let started = Instant::now();
    let gateways = match client
        .call::<Value>(Method::GET, "/api/v1/gateways", None::<&Value>)
        .await
    {
        Ok(v) => live_admin_urls(&v),
        Err(e) => {
            tracing::warn!(instance, error = %e, "Listing the gateways failed; stopping after the fixed drain grace");
            return NO_GATEWAYS;
        }
    };
    if gateways.is_empty() {
        tracing::debug!(
            instance,
            "No gateway registered; stopping after the fixed drain grace"
        );
        return NO_GATEWAYS;
    }
    let mut pending = gateways;
    loop {
        let mut still = Vec::new();
        for g in pending {
            if !drained_at(&g, endpoint).await {
                still.push(g);
            }
        }
        pending = still;
        if pending.is_empty() {
            tracing::info!(instance, %endpoint, waited_ms = started.elapsed().as_millis() as u64, "Every gateway reports the endpoint drained");
            return DRAINED;
        }
        if started.elapsed() + POLL >= DRAIN_MAX {
            tracing::warn!(instance, %endpoint, gateways = ?pending, "Gateways did not report the endpoint drained in time; stopping it anyway");
            return GAVE_UP;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The admin URLs of the gateways listed as live.
pub fn live_admin_urls(list: &Value) -> Vec<String> {
    list["items"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter(|g| g["live"] == Value::Bool(true))
                .filter_map(|g| g["admin"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// `GET <admin>/drained?endpoint=...`: true only on an answer saying `drained: true`.
async fn drained_at(admin: &str, endpoint: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Some(authority) = admin
        .strip_prefix("http://")
        .map(|a| a.trim_end_matches('/'))
    else {
        return false;
    };
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(authority).await.ok()?;
        let req = format!(
            "GET /drained?endpoint={endpoint} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        (&mut s).take(64 << 10).read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        let v: Value = serde_json::from_str(body.trim()).ok()?;
        Some(v["drained"] == Value::Bool(true))
    };
    tokio::time::timeout(ASK_TIMEOUT, ask)
        .await
        .ok()
        .flatten()
        .unwrap_or(false)
}

/// Marks a process as leaving; the gateways are asked in the background whether its
/// endpoint has drained.
pub(super) fn begin_leaving(name: &str, p: &mut Proc, client: &Client, ip: IpAddr) {
    p.leaving = Some(Instant::now());
    p.drain = Some(watch(client, name, SocketAddr::new(ip, p.port)));
}

/// One step of stopping a process that is leaving: SIGTERM once every gateway reports
/// its endpoint drained (or the drain bounds passed), SIGKILL after the stop grace; true
/// once it is gone.
pub(super) fn step_stop(name: &str, p: &mut Proc) -> bool {
    let Some(since) = p.leaving else {
        return false;
    };
    match (p.pid, p.term_sent) {
        (None, _) => true,
        (Some(pid), None) => {
            if may_stop(p.drain.as_deref(), since.elapsed()) {
                signal(pid, rustix::process::Signal::TERM);
                p.term_sent = Some(Instant::now());
            }
            false
        }
        (Some(pid), Some(t)) => {
            let reaped = match &mut p.child {
                Some(c) => matches!(c.try_wait(), Ok(Some(_))),
                None => !pid_alive(pid),
            };
            if reaped {
                tracing::info!(instance = %name, "Stopped an instance process");
                return true;
            }
            if t.elapsed() >= super::STOP_GRACE {
                signal(pid, rustix::process::Signal::KILL);
            }
            false
        }
    }
}

pub(super) async fn stop_now(p: &mut Proc) {
    let Some(pid) = p.pid else { return };
    signal(pid, rustix::process::Signal::TERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let done = match &mut p.child {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => !pid_alive(pid),
        };
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal(pid, rustix::process::Signal::KILL);
    if let Some(c) = &mut p.child {
        let _ = tokio::time::timeout(Duration::from_secs(1), c.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_stop_waits_for_the_gateways_or_the_bounds() {
        let s = |v| AtomicU8::new(v);
        let secs = Duration::from_secs;
        assert!(!may_stop(Some(&s(WAITING)), secs(3)));
        assert!(may_stop(Some(&s(WAITING)), DRAIN_MAX));
        assert!(may_stop(Some(&s(DRAINED)), Duration::ZERO));
        assert!(may_stop(Some(&s(GAVE_UP)), Duration::ZERO));
        assert!(!may_stop(Some(&s(NO_GATEWAYS)), secs(1)));
        assert!(may_stop(Some(&s(NO_GATEWAYS)), DRAIN_GRACE));
        assert!(may_stop(None, DRAIN_GRACE));
    }

    #[test]
    fn only_live_gateways_are_asked() {
        let list = json!({"items": [
            {"name": "a", "admin": "http://127.0.0.1:7403", "live": true},
            {"name": "b", "admin": "http://127.0.0.2:7403", "live": false},
            {"name": "c", "live": true},
        ]});
        assert_eq!(live_admin_urls(&list), vec!["http://127.0.0.1:7403"]);
        assert!(live_admin_urls(&json!({})).is_empty());
    }
}
