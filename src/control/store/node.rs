//! A control node's Raft instance over the [`Store`]: start (bootstrapping a new cluster
//! once, never on restart), replicated writes, linearizable reads, membership view.

use super::network::Network;
use super::types::*;
use super::Store;
use crate::pki::TlsHandle;
use openraft::error::{CheckIsLeaderError, ClientWriteError, RaftError};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Raft timing and snapshot policy (from `[control]`).
#[derive(Clone, Debug)]
pub struct RaftSettings {
    pub heartbeat: Duration,
    pub election_min: Duration,
    pub election_max: Duration,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_logs: u64,
    /// The IP outgoing peer connections leave from.
    pub source: Option<std::net::IpAddr>,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum RaftFailure {
    /// This node is not the leader; `leader` is who is, when known.
    #[error("not the leader")]
    NotLeader { leader: Option<NodeInfo> },
    #[error("no quorum: {0}")]
    NoQuorum(String),
    #[error("refused: {0}")]
    Refused(String),
    /// The write was proposed, then this node stopped leading (or Raft stopped on it)
    /// before it was answered: it may or may not be applied (the new leader may commit
    /// it). The text says what happened.
    #[error("{0}; it may or may not have been applied")]
    OutcomeUnknown(String),
    #[error("raft: {0}")]
    Fatal(String),
}

/// Proposes queued writes until every [`RaftNode`] is gone: one at a time when they come
/// one at a time; everything that queued up meanwhile as one batch entry under load (group
/// commit at the Raft level: one log append, one replication round, one apply for many
/// writes). Each write still gets its own revision and result.
async fn propose(
    raft: Raft,
    mut queue: tokio::sync::mpsc::Receiver<Proposal>,
    proposed: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    while let Some(first) = queue.recv().await {
        let mut size = first.0.approx_size();
        let mut waiting = vec![first];
        while waiting.len() < BATCH_MAX_COMMANDS && size < BATCH_MAX_BYTES {
            match queue.try_recv() {
                Ok(p) => {
                    size += p.0.approx_size();
                    waiting.push(p);
                }
                Err(_) => break,
            }
        }
        proposed.0.fetch_add(1, Relaxed);
        proposed.1.fetch_add(waiting.len() as u64, Relaxed);
        if waiting.len() == 1 {
            let (cmd, reply) = waiting.remove(0);
            let r = write_while_leading(&raft, cmd).await;
            let _ = reply.send(r);
            continue;
        }
        let (cmds, replies): (Vec<Command>, Vec<_>) = waiting.into_iter().unzip();
        match write_while_leading(&raft, Command::Batch { cmds }).await {
            Ok(r) if r.batch.len() == replies.len() => {
                for (reply, result) in replies.into_iter().zip(r.batch) {
                    let _ = reply.send(Ok(result));
                }
            }
            Ok(r) => {
                let e = RaftFailure::Fatal(format!(
                    "a batch of {} commands came back with {} results",
                    replies.len(),
                    r.batch.len()
                ));
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// `client_write`, given up on as [`RaftFailure::OutcomeUnknown`] once this node stops
/// leading the term it proposed in. openraft answers a proposal when it is applied or
/// when a conflicting leader truncates it, but not when the entry disappears under an
/// installed snapshot: without this, a deposed leader (a restarted one that briefly led
/// on its old vote, or one cut off by a partition) would wait forever.
async fn write_while_leading(raft: &Raft, cmd: Command) -> Result<CommandResult, RaftFailure> {
    // Server metrics change only with vote, role or membership, not with every append
    // and apply as the full metrics do: watching those would wake this task several
    // times per write.
    let mut metrics = raft.server_metrics();
    let (term, leading) = {
        let m = metrics.borrow();
        (m.vote.leader_id().term, m.state == ServerState::Leader)
    };
    if !leading {
        // Not proposed here: openraft answers at once with who leads.
        return raft
            .client_write(cmd)
            .await
            .map(|r| r.data)
            .map_err(write_failure);
    }
    // Resolves to true when Raft itself stopped (its metrics channel closed), false when
    // the term or role changed.
    let deposed = async {
        loop {
            {
                let m = metrics.borrow_and_update();
                if m.vote.leader_id().term != term || m.state != ServerState::Leader {
                    return false;
                }
            }
            if metrics.changed().await.is_err() {
                return true;
            }
        }
    };
    tokio::select! {
        r = raft.client_write(cmd) => r.map(|r| r.data).map_err(write_failure),
        stopped = deposed => Err(RaftFailure::OutcomeUnknown(if stopped {
            // openraft records why before its core goes away (a storage error, such as
            // a full disk).
            match failure(raft) {
                Some(e) => format!("Raft stopped on this node while the write was in flight after {e}"),
                None => "Raft stopped on this node while the write was in flight".into(),
            }
        } else {
            "leadership changed while the write was in flight".into()
        })),
    }
}

/// Why Raft's core stopped, if it failed ("a storage error: ...", or a panic); `None`
/// while it runs or after a normal stop.
fn failure(raft: &Raft) -> Option<String> {
    let m = raft.metrics();
    let m = m.borrow();
    match &m.running_state {
        Ok(()) | Err(openraft::error::Fatal::Stopped) => None,
        Err(openraft::error::Fatal::StorageError(e)) => Some(format!("a storage error: {e}")),
        Err(e) => Some(e.to_string()),
    }
}

/// Voters beyond five add latency without adding much safety; further nodes stay learners.
pub const MAX_VOTERS: usize = 5;

fn write_failure(e: RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>) -> RaftFailure {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => RaftFailure::NotLeader {
            leader: f.leader_node,
        },
        RaftError::APIError(ClientWriteError::ChangeMembershipError(e)) => {
            RaftFailure::Refused(e.to_string())
        }
        RaftError::Fatal(e) => RaftFailure::Fatal(e.to_string()),
    }
}

/// A write waiting for the proposer, with where its result goes.
type Proposal = (
    Command,
    tokio::sync::oneshot::Sender<Result<CommandResult, RaftFailure>>,
);

/// At most this many commands, or about this many bytes, share one Raft entry.
const BATCH_MAX_COMMANDS: usize = 512;
const BATCH_MAX_BYTES: usize = 2 << 20;

#[derive(Clone)]
pub struct RaftNode {
    raft: Raft,
    /// Writes go through one proposer task, which batches the ones that arrive while a
    /// proposal is in flight into the next entry.
    proposals: tokio::sync::mpsc::Sender<Proposal>,
    /// (entries proposed, commands in them) by this node's writes.
    proposed: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)>,
    store: Store,
    info: NodeInfo,
    /// Membership changes one at a time: openraft refuses a change while another is
    /// in flight, and concurrent joins would otherwise fail each other.
    membership_lock: Arc<tokio::sync::Mutex<()>>,
    tls: TlsHandle,
    /// The peer channel (pooled mutual-TLS connections), shared with Raft.
    network: Network,
}

/// One member as `GET /api/v1/members` shows it.
#[derive(Debug, Serialize)]
pub struct MemberView {
    pub id: String,
    pub name: String,
    pub api: String,
    pub peer: String,
    pub zone: Option<String>,
    /// `voter` or `learner`.
    pub role: &'static str,
    pub leader: bool,
    /// Highest log index known replicated to it (leader's view; null elsewhere).
    pub matched_index: Option<u64>,
    /// Entries behind the leader's last log index (leader's view).
    pub lag: Option<u64>,
}

#[derive(Debug, Serialize)]
pub struct MembersView {
    pub cluster_id: String,
    /// This node's id.
    pub node_id: String,
    pub state: String,
    pub term: u64,
    pub leader: Option<String>,
    pub last_log_index: Option<u64>,
    pub last_applied: Option<u64>,
    pub members: Vec<MemberView>,
}

impl RaftNode {
    pub async fn start(
        store: Store,
        info: NodeInfo,
        s: &RaftSettings,
        bootstrap: bool,
        tls: TlsHandle,
    ) -> Result<RaftNode, RaftFailure> {
        let config = Config {
            cluster_name: "tessera".into(),
            heartbeat_interval: s.heartbeat.as_millis() as u64,
            election_timeout_min: s.election_min.as_millis() as u64,
            election_timeout_max: s.election_max.as_millis() as u64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(s.snapshot_logs),
            // Keep some log behind a snapshot so a briefly lagging follower catches up
            // from the log, not a whole snapshot.
            max_in_snapshot_log_to_keep: s.snapshot_logs.min(1000),
            install_snapshot_timeout: 10_000,
            ..Default::default()
        }
        .validate()
        .map_err(|e| RaftFailure::Fatal(format!("raft config: {e}")))?;
        let id = store.node_id();
        let network = Network {
            tls: tls.clone(),
            source: s.source,
            pool: Default::default(),
            frames: Default::default(),
        };
        let raft = Raft::new(
            id,
            Arc::new(config),
            network.clone(),
            store.log_store(),
            store.state_machine(),
        )
        .await
        .map_err(|e| RaftFailure::Fatal(e.to_string()))?;
        let initialized = raft
            .is_initialized()
            .await
            .map_err(|e| RaftFailure::Fatal(e.to_string()))?;
        if bootstrap && !initialized {
            let mut members = BTreeMap::new();
            members.insert(id, info.clone());
            raft.initialize(members)
                .await
                .map_err(|e| RaftFailure::Fatal(format!("bootstrap: {e}")))?;
            tracing::info!(node_id = id, "Bootstrapped a new cluster");
        }
        let (proposals, queue) = tokio::sync::mpsc::channel(4096);
        let proposed: Arc<(std::sync::atomic::AtomicU64, std::sync::atomic::AtomicU64)> =
            Arc::default();
        tokio::spawn(propose(raft.clone(), queue, proposed.clone()));
        Ok(RaftNode {
            raft,
            proposals,
            proposed,
            store,
            info,
            membership_lock: Arc::default(),
            tls,
            network,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// Sends an API request to `member`'s peer listener over mutual TLS (see
    /// [`Network::forward`]) and returns its whole answer.
    pub async fn forward(
        &self,
        member: &NodeInfo,
        request: http::Request<http_body_util::Full<bytes::Bytes>>,
        ttl: Duration,
    ) -> Result<http::Response<bytes::Bytes>, String> {
        self.network.forward(&member.peer, request, ttl).await
    }

    /// [`RaftNode::forward`] with a streamed body each way (see
    /// `Network::exchange_streaming`).
    pub async fn forward_streaming(
        &self,
        member: &NodeInfo,
        request: http::Request<super::network::PeerBody>,
        ttl: Duration,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        self.network
            .exchange_streaming(&member.peer, request, ttl)
            .await
    }

    /// Serves the peer listener until `shutdown`: to members (a certificate from the
    /// cluster CA) Raft RPCs, `join` and `forwarded` (the API, for requests another
    /// member forwards); to clients without a certificate `join` alone.
    pub async fn serve_peers(
        &self,
        listener: tokio::net::TcpListener,
        join: axum::Router,
        forwarded: axum::Router,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        super::rpc::serve_tls(
            listener,
            super::rpc::router(self.raft.clone())
                .merge(join.clone())
                .merge(forwarded),
            join,
            self.raft.clone(),
            self.tls.clone(),
            shutdown,
        )
        .await
    }

    /// This node's TLS material (set once it has a certificate).
    pub fn tls(&self) -> &TlsHandle {
        &self.tls
    }

    /// Replicates `cmd`; answers once it is committed and applied here.
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, RaftFailure> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let stopped = || RaftFailure::Fatal("this node is shutting down".into());
        self.proposals
            .send((cmd, tx))
            .await
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?
    }

    /// (Raft entries proposed, writes carried in them) since start.
    pub fn proposal_stats(&self) -> (u64, u64) {
        use std::sync::atomic::Ordering::Relaxed;
        (self.proposed.0.load(Relaxed), self.proposed.1.load(Relaxed))
    }

    /// Waits until local state reflects every write committed before this call
    /// (read index through the leader, then until it is applied here).
    pub async fn linearize(&self) -> Result<(), RaftFailure> {
        match self.raft.ensure_linearizable().await {
            Ok(_) => Ok(()),
            Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f))) => {
                Err(RaftFailure::NotLeader {
                    leader: f.leader_node,
                })
            }
            Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(e))) => {
                Err(RaftFailure::NoQuorum(e.to_string()))
            }
            Err(RaftError::Fatal(e)) => Err(RaftFailure::Fatal(e.to_string())),
        }
    }

    /// Waits (bounded) until some node is leader and this node has applied the log it knows.
    pub async fn wait_leader(&self, limit: Duration) -> Result<(), RaftFailure> {
        self.raft
            .wait(Some(limit))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map(|_| ())
            .map_err(|e| RaftFailure::NoQuorum(e.to_string()))
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader
    }

    /// The leader this node knows of, if any.
    pub fn leader_info(&self) -> Option<NodeInfo> {
        let m = self.raft.metrics().borrow().clone();
        let leader = m.current_leader?;
        m.membership_config.membership().get_node(&leader).cloned()
    }

    /// Why Raft stopped on this node, if it failed: openraft stops its core for good on a
    /// storage error (a full disk, a failing device) or a panic, and only a restart brings
    /// it back. A normal stop (shutdown) is not a failure.
    pub fn fatal(&self) -> Option<String> {
        failure(&self.raft)
    }

    pub fn has_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader.is_some()
    }

    /// Every member but this node (voters and learners), as the membership names them.
    pub fn other_members(&self) -> Vec<NodeInfo> {
        let m = self.raft.metrics().borrow().clone();
        let me = m.id;
        m.membership_config
            .membership()
            .nodes()
            .filter(|(id, _)| **id != me)
            .map(|(_, n)| n.clone())
            .collect()
    }

    pub fn members(&self) -> MembersView {
        let m = self.raft.metrics().borrow().clone();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let last = m.last_log_index.unwrap_or(0);
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched = m
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(id))
                    .map(|l| l.map_or(0, |l| l.index));
                MemberView {
                    id: id.to_string(),
                    name: node.name.clone(),
                    api: node.api.clone(),
                    peer: node.peer.clone(),
                    zone: node.zone.clone(),
                    role: if voters.contains(id) {
                        "voter"
                    } else {
                        "learner"
                    },
                    leader: m.current_leader == Some(*id),
                    matched_index: matched,
                    lag: matched.map(|x| last.saturating_sub(x)),
                }
            })
            .collect();
        MembersView {
            cluster_id: self.store.cluster_id(),
            node_id: m.id.to_string(),
            state: format!("{:?}", m.state).to_lowercase(),
            term: m.current_term,
            leader: m.current_leader.map(|l| l.to_string()),
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|l| l.index),
            members,
        }
    }

    /// Adds `id` as a learner, waits (bounded) until it has caught up, then promotes it to
    /// voter while there are fewer than [`MAX_VOTERS`]. Returns the role it ended with.
    pub async fn add_member(
        &self,
        id: NodeId,
        info: NodeInfo,
        catch_up: Duration,
    ) -> Result<&'static str, RaftFailure> {
        let _one_at_a_time = self.membership_lock.lock().await;
        match tokio::time::timeout(catch_up, self.raft.add_learner(id, info, true)).await {
            Ok(r) => r.map_err(write_failure)?,
            Err(_) => {
                return Err(RaftFailure::NoQuorum(format!(
                    "the new member did not catch up within {catch_up:?}"
                )))
            }
        };
        let voters: Vec<NodeId> = self.membership().voter_ids().collect();
        if voters.contains(&id) {
            return Ok("voter");
        }
        if voters.len() >= MAX_VOTERS {
            return Ok("learner");
        }
        let add: std::collections::BTreeSet<NodeId> = [id].into();
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(add), false)
            .await
            .map_err(write_failure)?;
        Ok("voter")
    }

    /// Removes a member: a voter through a joint configuration, a learner directly.
    pub async fn remove_member(&self, id: NodeId) -> Result<(), RaftFailure> {
        let _one_at_a_time = self.membership_lock.lock().await;
        let membership = self.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let ids: std::collections::BTreeSet<NodeId> = [id].into();
        if voters.contains(&id) {
            if voters.len() == 1 {
                return Err(RaftFailure::Refused(
                    "it is the only voter; a cluster needs at least one".into(),
                ));
            }
            self.raft
                .change_membership(ChangeMembers::RemoveVoters(ids), false)
                .await
                .map_err(write_failure)?;
        } else if membership.get_node(&id).is_some() {
            self.raft
                .change_membership(ChangeMembers::RemoveNodes(ids), false)
                .await
                .map_err(write_failure)?;
        } else {
            return Err(RaftFailure::Refused(format!("{id} is not a member")));
        }
        Ok(())
    }

    /// The membership this node currently knows.
    fn membership(&self) -> openraft::Membership<NodeId, NodeInfo> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .clone()
    }

    /// A member's id by name or by id.
    pub fn find_member(&self, name_or_id: &str) -> Option<NodeId> {
        let m = self.membership();
        let found = m
            .nodes()
            .find(|(id, n)| n.name == name_or_id || id.to_string() == name_or_id)
            .map(|(id, _)| *id);
        found
    }

    pub async fn is_initialized(&self) -> bool {
        self.raft.is_initialized().await.unwrap_or(false)
    }

    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "Raft shutdown");
        }
    }
}
