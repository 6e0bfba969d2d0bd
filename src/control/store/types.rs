//! The Raft type configuration and the commands the replicated state machine applies.

use serde::{Deserialize, Serialize};

/// A control node as the Raft membership knows it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `node_name` of the profile.
    pub name: String,
    /// Base URL of its REST API (clients and forwarded writes).
    pub api: String,
    /// `host:port` of its Raft peer listener.
    pub peer: String,
    pub zone: Option<String>,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.name, self.peer)
    }
}

openraft::declare_raft_types!(
    /// tessera's Raft: u64 node ids, [`NodeInfo`] nodes, [`Command`] entries.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = tokio::fs::File,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;

/// A stored key with etcd's bookkeeping. Revisions count the key-space commands applied
/// (every command gets the next one, whether or not it changed anything); they are not
/// Raft log indexes, so several commands can share one log entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
    /// Revision that created the key (since its last deletion).
    pub create_revision: u64,
    /// Revision of the last change.
    pub mod_revision: u64,
    /// Number of changes since creation (1 on create).
    pub version: u64,
    /// The lease the key is attached to (0 = none); the key is deleted when it expires.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lease: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A lease: keys attached to it are deleted when it is revoked or expires. Its id is the
/// revision that granted it. Deadlines are not replicated: the leader keeps them in
/// memory and gives every lease a full TTL when it takes over (as etcd does), so a
/// lease never expires early; it may expire up to one TTL late after a failover.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub id: u64,
    pub ttl_secs: u64,
}

/// Keys read by name (None = absent), keys read by prefix, and the revision observed.
pub type KeysAndRange = (Vec<Option<KeyValue>>, Vec<KeyValue>, u64);

/// A lease and the keys attached to it.
pub type LeaseWithKeys = (Lease, Vec<String>);

/// What a compare in a transaction looks at.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareTarget {
    /// The key's `mod_revision` (0 when absent).
    ModRevision(u64),
    /// The key's `create_revision` (0 when absent).
    CreateRevision(u64),
    /// The key's `version` (0 when absent).
    Version(u64),
    /// The key's value (an absent key never matches).
    Value(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    pub key: String,
    pub op: CompareOp,
    pub target: CompareTarget,
}

/// A write inside a transaction or on its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    Put {
        key: String,
        value: String,
        /// Attach the key to this lease (0 = none).
        #[serde(default, skip_serializing_if = "is_zero")]
        lease: u64,
    },
    Delete {
        key: String,
        #[serde(default)]
        prefix: bool,
    },
}

/// A replicated command; applied in log order by every member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    Put {
        key: String,
        value: String,
        #[serde(default, skip_serializing_if = "is_zero")]
        lease: u64,
    },
    Delete {
        key: String,
        prefix: bool,
    },
    /// A new lease; its id is the revision of this command.
    LeaseGrant {
        ttl_secs: u64,
    },
    /// Ends a lease and deletes its keys (also how an expired lease is ended).
    LeaseRevoke {
        id: u64,
    },
    /// Drops the change history older than `revision` (watches cannot start before it).
    Compact {
        revision: u64,
    },
    /// Several commands proposed together (one Raft entry); each still gets its own
    /// revision and result, in order.
    Batch {
        cmds: Vec<Command>,
    },
    Txn {
        compare: Vec<Compare>,
        success: Vec<Op>,
        failure: Vec<Op>,
    },
}

/// The outcome of one command.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandResult {
    /// The revision (log index) the command committed at.
    pub revision: u64,
    /// For transactions: whether every compare held.
    pub succeeded: bool,
    /// Keys deleted.
    pub deleted: u64,
    /// The previous value of a single-key put or delete.
    pub prev: Option<KeyValue>,
    /// Why the command changed nothing (e.g. a put naming a lease that does not exist).
    /// Deterministic: every member refuses it alike.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// For a batch: one result per command, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub batch: Vec<CommandResult>,
}

/// One change, as watches see it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    pub revision: u64,
    /// After a put: the new value. After a delete: the key with empty value and the
    /// deletion revision as `mod_revision`.
    pub kv: KeyValue,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Put,
    Delete,
}

impl Command {
    /// Roughly how many bytes the command carries (to bound batches).
    pub fn approx_size(&self) -> usize {
        match self {
            Command::Put { key, value, .. } => key.len() + value.len() + 32,
            Command::Delete { key, .. } => key.len() + 32,
            Command::LeaseGrant { .. } | Command::LeaseRevoke { .. } | Command::Compact { .. } => {
                32
            }
            Command::Batch { cmds } => cmds.iter().map(Command::approx_size).sum(),
            Command::Txn {
                compare,
                success,
                failure,
            } => {
                let op = |o: &Op| match o {
                    Op::Put { key, value, .. } => key.len() + value.len() + 32,
                    Op::Delete { key, .. } => key.len() + 32,
                };
                compare
                    .iter()
                    .map(|c| {
                        c.key.len()
                            + 32
                            + match &c.target {
                                CompareTarget::Value(v) => v.len(),
                                _ => 0,
                            }
                    })
                    .sum::<usize>()
                    + success.iter().map(op).sum::<usize>()
                    + failure.iter().map(op).sum::<usize>()
            }
        }
    }

    /// A plain put (no lease).
    pub fn put(key: impl Into<String>, value: impl Into<String>) -> Command {
        Command::Put {
            key: key.into(),
            value: value.into(),
            lease: 0,
        }
    }
}
