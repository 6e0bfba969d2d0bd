//! Event retention, a reconciler on the leader: node events older than
//! `control.event_retention_secs` are deleted, and beyond `control.event_retention_max`
//! events the oldest go first, so the store does not grow with every crash loop.
//!
//! Events are observations, not configuration: pruning them is logged and counted
//! (`tessera_control_events_pruned_total`), not written to the audit trail. Watchers see
//! the deletions like any other.

use super::resources::PREFIX;
use super::ApiState;
use crate::control::store::types::{Command, KeyValue};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How many deletions go into one Raft entry.
const CHUNK: usize = 500;

#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_age: Duration,
    pub max_count: usize,
}

pub async fn run(
    s: ApiState,
    r: Retention,
    pruned: prometheus::IntCounter,
    shutdown: CancellationToken,
) {
    let every = (r.max_age / 4).clamp(Duration::from_secs(1), Duration::from_secs(60));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        if !s.node.is_leader() {
            continue;
        }
        match pass(&s, &r).await {
            Ok(0) => {}
            Ok(n) => pruned.inc_by(n as u64),
            Err(e) => tracing::warn!(error = %e, "Event retention pass failed; retrying"),
        }
    }
}

/// When an event was made: agents name them `<node>-<unix ms>-<seq>`. An event named
/// otherwise counts as new (it still goes when there are too many, by revision).
fn event_ms(name: &str, now: u64) -> u64 {
    let mut parts = name.rsplitn(3, '-');
    let (_, ms) = (parts.next(), parts.next());
    ms.and_then(|m| m.parse::<u64>().ok())
        .filter(|m| *m <= now)
        .unwrap_or(now)
}

/// The keys to delete, oldest first: past the age limit, or beyond the count.
fn doomed(kvs: &[KeyValue], prefix: &str, r: &Retention, now: u64) -> Vec<String> {
    let mut events: Vec<(u64, u64, &str)> = kvs
        .iter()
        .map(|kv| {
            let name = kv.key.strip_prefix(prefix).unwrap_or(&kv.key);
            (event_ms(name, now), kv.create_revision, kv.key.as_str())
        })
        .collect();
    events.sort();
    let too_many = events.len().saturating_sub(r.max_count);
    let cutoff = now.saturating_sub(r.max_age.as_millis() as u64);
    events
        .iter()
        .enumerate()
        .filter(|(i, (ms, _, _))| *i < too_many || *ms < cutoff)
        .map(|(_, (_, _, k))| k.to_string())
        .collect()
}

async fn pass(s: &ApiState, r: &Retention) -> Result<usize, String> {
    let prefix = format!("{PREFIX}events/");
    let (kvs, _) = s.node.store().range(&prefix, usize::MAX)?;
    let keys = doomed(&kvs, &prefix, r, crate::util::now_ms());
    for chunk in keys.chunks(CHUNK) {
        let cmds = chunk
            .iter()
            .map(|k| Command::Delete {
                key: k.clone(),
                prefix: false,
            })
            .collect();
        s.node
            .write(Command::Batch { cmds })
            .await
            .map_err(|e| e.to_string())?;
    }
    if !keys.is_empty() {
        tracing::info!(
            pruned = keys.len(),
            kept = kvs.len() - keys.len(),
            max_age_secs = r.max_age.as_secs(),
            max_count = r.max_count,
            "Pruned node events past their retention"
        );
    }
    Ok(keys.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(name: &str, rev: u64) -> KeyValue {
        KeyValue {
            key: format!("/p/{name}"),
            value: String::new(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: 0,
        }
    }

    #[test]
    fn the_old_and_the_surplus_go_oldest_first() {
        let now = 1_000_000;
        let kvs = vec![
            kv("n-1-999000-1", 5),    // 1 s old
            kv("n-2-990000-1", 4),    // 10 s old
            kv("node-a-500000-7", 3), // 500 s old
            kv("odd", 9),             // unnamed: counts as new
        ];
        let r = Retention {
            max_age: Duration::from_secs(100),
            max_count: 10,
        };
        assert_eq!(doomed(&kvs, "/p/", &r, now), ["/p/node-a-500000-7"]);
        let r = Retention {
            max_age: Duration::from_secs(1000),
            max_count: 2,
        };
        assert_eq!(
            doomed(&kvs, "/p/", &r, now),
            ["/p/node-a-500000-7", "/p/n-2-990000-1"]
        );
        assert_eq!(event_ms("a-b-c", now), now);
        assert_eq!(event_ms("n-2000000-1", now), now, "from the future: new");
    }
}
