//! Work the leader does on the cluster's behalf: ending expired leases and compacting old
//! history. Followers do nothing here; a new leader starts both afresh.
//!
//! Lease deadlines live only in the leader's memory (as in etcd): when a node becomes
//! leader it gives every lease a full TTL, so a lease never ends early because of a
//! failover; it may end up to one TTL late.

use super::store::types::{Command, Lease};
use super::store::RaftNode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const TICK: Duration = Duration::from_millis(200);
const COMPACT_EVERY: Duration = Duration::from_secs(5);

/// The leader's lease deadlines.
#[derive(Clone, Default)]
pub struct LeaseClock(Arc<Mutex<HashMap<u64, Instant>>>);

impl LeaseClock {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Restarts `lease`'s TTL from now (a keep-alive, or a grant).
    pub fn renew(&self, lease: &Lease) {
        self.map().insert(
            lease.id,
            Instant::now() + Duration::from_secs(lease.ttl_secs),
        );
    }

    /// Time left before `id` expires, as this leader sees it.
    pub fn remaining(&self, id: u64) -> Option<Duration> {
        self.map()
            .get(&id)
            .map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Aligns the clock with the stored leases (new ones get a full TTL, gone ones are
    /// forgotten) and returns the ids past their deadline.
    fn expired(&self, leases: &[Lease], now: Instant) -> Vec<u64> {
        let mut map = self.map();
        let live: std::collections::HashSet<u64> = leases.iter().map(|l| l.id).collect();
        map.retain(|id, _| live.contains(id));
        let mut out = Vec::new();
        for l in leases {
            let deadline = *map
                .entry(l.id)
                .or_insert(now + Duration::from_secs(l.ttl_secs));
            if deadline <= now {
                out.push(l.id);
            }
        }
        out
    }

    fn clear(&self) {
        self.map().clear();
    }
}

/// Runs until `shutdown`: on the leader, revokes expired leases and keeps the history to
/// `keep` revisions.
pub async fn run(node: RaftNode, clock: LeaseClock, keep: u64, shutdown: CancellationToken) {
    let mut last_compact = Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(TICK) => {}
        }
        if !node.is_leader() {
            clock.clear();
            continue;
        }
        let leases = match node.store().leases() {
            Ok((l, _)) => l,
            Err(e) => {
                tracing::warn!(error = %e, "Cannot read leases");
                continue;
            }
        };
        for id in clock.expired(&leases, Instant::now()) {
            match node.write(Command::LeaseRevoke { id }).await {
                Ok(r) if r.refused.is_none() => {
                    tracing::info!(
                        lease = id,
                        keys = r.deleted,
                        revision = r.revision,
                        "Lease expired"
                    )
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(lease = id, error = %e, "Cannot end an expired lease"),
            }
        }
        if last_compact.elapsed() >= COMPACT_EVERY {
            last_compact = Instant::now();
            compact(&node, keep).await;
        }
    }
}

async fn compact(node: &RaftNode, keep: u64) {
    let Ok((floor, applied)) = node.store().compaction() else {
        return;
    };
    // Compact in steps of a tenth of `keep`, not on every write.
    if applied.saturating_sub(floor) <= keep + keep / 10 {
        return;
    }
    let to = applied - keep;
    match node.write(Command::Compact { revision: to }).await {
        Ok(_) => tracing::debug!(to, "Compacted history"),
        Err(e) => tracing::warn!(error = %e, "Cannot compact history"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_leases_get_a_full_ttl_and_gone_ones_are_forgotten() {
        let clock = LeaseClock::default();
        let t0 = Instant::now();
        let a = Lease { id: 1, ttl_secs: 1 };
        let b = Lease {
            id: 2,
            ttl_secs: 10,
        };
        assert!(clock.expired(&[a.clone(), b.clone()], t0).is_empty());
        assert_eq!(
            clock.expired(&[a.clone(), b.clone()], t0 + Duration::from_secs(2)),
            vec![1]
        );
        // A keep-alive pushes the deadline out.
        clock.renew(&a);
        assert!(clock
            .expired(
                &[a.clone(), b.clone()],
                Instant::now() + Duration::from_millis(500)
            )
            .is_empty());
        clock.expired(std::slice::from_ref(&b), t0);
        assert!(clock.remaining(1).is_none());
        assert!(clock.remaining(2).is_some());
    }
}
