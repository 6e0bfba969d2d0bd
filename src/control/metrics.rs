//! The control role's Prometheus metrics: the Raft view of this node, the store's
//! revisions and leases, and how well writes batch. Refreshed once a second.

use super::store::RaftNode;
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

struct Gauges {
    term: IntGauge,
    leader: IntGauge,
    last_log: IntGauge,
    applied: IntGauge,
    members: IntGaugeVec,
    revision: IntGauge,
    compacted: IntGauge,
    leases: IntGauge,
    proposals: IntCounter,
    commands: IntCounter,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> Option<IntGauge> {
    let g = IntGauge::new(name, help).ok()?;
    let _ = registry.register(Box::new(g.clone()));
    Some(g)
}

fn counter(registry: &Registry, name: &str, help: &str) -> Option<IntCounter> {
    let c = IntCounter::new(name, help).ok()?;
    let _ = registry.register(Box::new(c.clone()));
    Some(c)
}

/// Registers the metrics and refreshes them from `node` until `shutdown`.
pub async fn run(node: RaftNode, registry: Registry, shutdown: CancellationToken) {
    let Some(g) = register(&registry) else {
        tracing::warn!("Cannot register the control metrics");
        return;
    };
    let (mut seen_proposals, mut seen_commands) = (0u64, 0u64);
    loop {
        let m = node.members();
        g.term.set(m.term as i64);
        g.leader.set(node.is_leader() as i64);
        g.last_log.set(m.last_log_index.unwrap_or(0) as i64);
        g.applied.set(m.last_applied.unwrap_or(0) as i64);
        for role in ["voter", "learner"] {
            let n = m.members.iter().filter(|x| x.role == role).count();
            g.members.with_label_values(&[role]).set(n as i64);
        }
        if let Ok((floor, rev)) = node.store().compaction() {
            g.revision.set(rev as i64);
            g.compacted.set(floor as i64);
        }
        if let Ok((leases, _)) = node.store().leases() {
            g.leases.set(leases.len() as i64);
        }
        let (proposals, commands) = node.proposal_stats();
        g.proposals.inc_by(proposals.saturating_sub(seen_proposals));
        g.commands.inc_by(commands.saturating_sub(seen_commands));
        (seen_proposals, seen_commands) = (proposals, commands);
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn register(registry: &Registry) -> Option<Gauges> {
    let members = IntGaugeVec::new(
        Opts::new(
            "tessera_raft_members",
            "Members of the Raft cluster by role",
        ),
        &["role"],
    )
    .ok()?;
    let _ = registry.register(Box::new(members.clone()));
    Some(Gauges {
        term: gauge(registry, "tessera_raft_term", "Current Raft term")?,
        leader: gauge(
            registry,
            "tessera_raft_is_leader",
            "1 while this node is the leader",
        )?,
        last_log: gauge(
            registry,
            "tessera_raft_last_log_index",
            "Last Raft log index on this node",
        )?,
        applied: gauge(
            registry,
            "tessera_raft_applied_index",
            "Last Raft log index applied on this node",
        )?,
        members,
        revision: gauge(
            registry,
            "tessera_store_revision",
            "Store revision applied on this node",
        )?,
        compacted: gauge(
            registry,
            "tessera_store_compacted_revision",
            "Oldest revision still kept for watches",
        )?,
        leases: gauge(registry, "tessera_store_leases", "Leases in the store")?,
        proposals: counter(
            registry,
            "tessera_raft_proposals_total",
            "Raft entries proposed by this node's writes",
        )?,
        commands: counter(
            registry,
            "tessera_raft_proposed_commands_total",
            "Writes proposed by this node (several share an entry under load)",
        )?,
    })
}
