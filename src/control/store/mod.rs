//! The control plane's store: one RocksDB database with column families, holding the Raft
//! log and vote (`log`), the replicated state machine (`sm`, a revisioned key-value
//! space), and the node's identity. This module tree is the only importer of rocksdb and
//! openraft.
//!
//! Durability: log appends, votes, truncation and purges are written with `sync`. State
//! machine writes are not synced on their own; they share the WAL with the synced log
//! writes, and the WAL is replayed in order, so a later synced write makes them durable
//! too. Purging the log (after a snapshot) is itself a synced write.

// openraft's trait signatures fix `StorageError` (224 bytes) as the error type.
#![allow(clippy::result_large_err)]

pub mod backup;
mod client;
mod frame;
pub mod kv;
mod log;
mod network;
mod node;
mod read;
mod rpc;
mod sm;
pub mod types;

pub use log::LogStore;
pub use network::PeerBody;
pub use node::{MembersView, RaftFailure, RaftNode, RaftSettings, MAX_VOTERS};
pub use sm::StateMachine;

use crate::util::{hex, random_bytes};
use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use types::{Event, KeyValue, Lease, NodeInfo};

pub(crate) const CF_META: &str = "meta";
pub(crate) const CF_RAFT: &str = "raft";
pub(crate) const CF_LOG: &str = "log";
pub(crate) const CF_SM: &str = "sm";
pub(crate) const CF_KV: &str = "kv";
pub(crate) const CF_HISTORY: &str = "history";
/// Leases by id, and the (lease id, key) index of attached keys.
pub(crate) const CF_LEASE: &str = "lease";
pub(crate) const CF_LEASE_KEYS: &str = "lease_keys";
const COLUMN_FAMILIES: [&str; 8] = [
    CF_META,
    CF_RAFT,
    CF_LOG,
    CF_SM,
    CF_KV,
    CF_HISTORY,
    CF_LEASE,
    CF_LEASE_KEYS,
];

const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
/// Where the cluster's id is replicated (written once by the bootstrap node).
pub const CLUSTER_ID_KEY: &str = "/tessera/cluster/id";
const KEY_NODE_NAME: &[u8] = b"node_name";
const KEY_NODE_ID: &[u8] = b"node_id";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path} is in use by another tessera process (its LOCK is held); stop it or use another data_dir")]
    Locked { path: PathBuf },
    #[error("store {path} belongs to node `{found}`, not `{expected}`; a data_dir is never shared between nodes")]
    WrongNode {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error("store {path}: {message}")]
    Rocks { path: PathBuf, message: String },
}

/// A handle to the open store; cheap to clone; closes when the last clone drops.
#[derive(Clone)]
pub struct Store {
    db: Arc<DB>,
    dir: PathBuf,
    node_id: u64,
    cluster_id: String,
    events: tokio::sync::broadcast::Sender<Arc<Vec<Event>>>,
}

impl Store {
    /// `<data_dir>/control`, where the store's directory is (blobs live beside it).
    pub fn control_dir(&self) -> PathBuf {
        self.dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.dir.clone())
    }

    /// Opens (creating if new) the store at `dir` for node `node`. Blocking.
    pub fn open(dir: &Path, node: &str) -> Result<Store, StoreError> {
        let rocks = |e: rocksdb::Error| {
            let message = e.to_string();
            if message.contains("lock")
                && (message.contains("Resource temporarily unavailable")
                    || message.contains("No locks available"))
            {
                StoreError::Locked {
                    path: dir.to_path_buf(),
                }
            } else {
                StoreError::Rocks {
                    path: dir.to_path_buf(),
                    message,
                }
            }
        };
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Rocks {
            path: dir.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        opts.set_keep_log_file_num(4);
        let cfs = COLUMN_FAMILIES
            .iter()
            .map(|n| ColumnFamilyDescriptor::new(*n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(rocks)?;
        let meta = db.cf_handle(CF_META).ok_or_else(|| StoreError::Rocks {
            path: dir.to_path_buf(),
            message: "column family `meta` missing after open".into(),
        })?;
        let mut sync = WriteOptions::default();
        sync.set_sync(true);
        match db.get_cf(meta, KEY_NODE_NAME).map_err(rocks)? {
            Some(found) if found != node.as_bytes() => {
                return Err(StoreError::WrongNode {
                    path: dir.to_path_buf(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                    expected: node.to_string(),
                })
            }
            Some(_) => {}
            None => db
                .put_cf_opt(meta, KEY_NODE_NAME, node.as_bytes(), &sync)
                .map_err(rocks)?,
        }
        let no_random = |e: std::io::Error| StoreError::Rocks {
            path: dir.to_path_buf(),
            message: format!("reading /dev/urandom: {e}"),
        };
        let cluster_id = match db.get_cf(meta, KEY_CLUSTER_ID).map_err(rocks)? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = hex(&random_bytes::<16>().map_err(no_random)?);
                db.put_cf_opt(meta, KEY_CLUSTER_ID, id.as_bytes(), &sync)
                    .map_err(rocks)?;
                id
            }
        };
        // A node id is drawn once per store: a wiped machine comes back as a new member,
        // never as an old id with a forgotten log.
        let node_id = match db.get_cf(meta, KEY_NODE_ID).map_err(rocks)? {
            Some(b) if b.len() == 8 => {
                u64::from_be_bytes(b.as_slice().try_into().unwrap_or([0; 8]))
            }
            _ => {
                let id = u64::from_be_bytes(random_bytes::<8>().map_err(no_random)?) >> 1 | 1;
                db.put_cf_opt(meta, KEY_NODE_ID, id.to_be_bytes(), &sync)
                    .map_err(rocks)?;
                id
            }
        };
        let (events, _) = tokio::sync::broadcast::channel(1024);
        Ok(Store {
            db: Arc::new(db),
            dir: dir.to_path_buf(),
            node_id,
            cluster_id,
            events,
        })
    }

    /// A random identifier fixed when the store is created: on the node that bootstraps a
    /// cluster it becomes the cluster's id (see [`Store::cluster_id`]).
    pub fn local_id(&self) -> &str {
        &self.cluster_id
    }

    /// The cluster's id: the bootstrap node's store id, replicated under
    /// [`CLUSTER_ID_KEY`] once registered (until then, this store's own id).
    pub fn cluster_id(&self) -> String {
        match self.get(CLUSTER_ID_KEY) {
            Ok((Some(kv), _)) => kv.value,
            _ => self.cluster_id.clone(),
        }
    }

    /// This node's Raft id, fixed when the store is created.
    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The Raft log and vote storage.
    pub fn log_store(&self) -> LogStore {
        LogStore::new(self.db.clone(), self.node_id)
    }

    /// The replicated state machine (one per Raft instance).
    pub fn state_machine(&self) -> StateMachine {
        StateMachine::new(self.db.clone(), self.snapshot_dir(), self.events.clone())
    }

    /// Where snapshots are kept: beside the database directory, never inside it.
    fn snapshot_dir(&self) -> PathBuf {
        self.dir.parent().unwrap_or(&self.dir).join("snapshots")
    }

    /// Committed changes as they are applied.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<Arc<Vec<Event>>> {
        self.events.subscribe()
    }

    /// The value of `key` and the revision the read observed (local state; callers make
    /// reads linearizable through Raft first).
    pub fn get(&self, key: &str) -> Result<(Option<KeyValue>, u64), String> {
        read::read_get(&self.db, key)
    }

    /// Changes after revision `after` under `prefix` (at most `limit`), the compaction
    /// floor (a watch from below it cannot be served), and the applied revision.
    pub fn history(
        &self,
        after: u64,
        prefix: &str,
        limit: usize,
    ) -> Result<(Vec<Event>, u64, u64), String> {
        read::read_history(&self.db, after, prefix, limit)
    }

    /// Up to `limit` keys starting with `prefix`, and the revision the read observed.
    pub fn range(&self, prefix: &str, limit: usize) -> Result<(Vec<KeyValue>, u64), String> {
        read::read_range(&self.db, prefix, limit)
    }

    /// Up to `limit` keys starting with `prefix`, from key `from` (inclusive) on.
    pub fn range_from(
        &self,
        prefix: &str,
        from: &str,
        limit: usize,
    ) -> Result<(Vec<KeyValue>, u64), String> {
        read::read_range_from(&self.db, prefix, from, limit)
    }

    /// `keys`, and up to `limit` keys under each of `prefixes`, read from one snapshot.
    pub fn get_and_ranges(
        &self,
        keys: &[&str],
        prefixes: &[String],
        limit: usize,
    ) -> Result<types::KeysAndRange, String> {
        read::read_keys_and_ranges(&self.db, keys, prefixes, limit)
    }

    /// Every lease, and the revision the read observed.
    pub fn leases(&self) -> Result<(Vec<Lease>, u64), String> {
        read::read_leases(&self.db)
    }

    /// One lease with its attached keys, and the revision the read observed.
    pub fn lease(&self, id: u64) -> Result<(Option<types::LeaseWithKeys>, u64), String> {
        read::read_lease(&self.db, id)
    }

    /// The compaction floor (history below it is gone) and the applied revision.
    pub fn compaction(&self) -> Result<(u64, u64), String> {
        read::read_compaction(&self.db)
    }

    /// Writes a consistent backup of the whole state to a new file in `dir`, the body
    /// streamed through its checksum and then the trailer (see [`backup`]); returns the
    /// file, the revision it is consistent at and its size. Files older than an hour
    /// that an interrupted backup left in `dir` are removed first. Blocking.
    pub fn backup_file(&self, dir: &std::path::Path) -> Result<(PathBuf, u64, u64), String> {
        use std::io::Write;
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                let old = e
                    .metadata()
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > std::time::Duration::from_secs(3600));
                if old {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        let nonce = crate::util::hex(&crate::util::random_bytes::<8>().map_err(|e| e.to_string())?);
        let path = dir.join(format!("backup-{nonce}.snap"));
        let written = (|| {
            let at = |e: std::io::Error| format!("{}: {e}", path.display());
            let f = std::fs::File::create(&path).map_err(at)?;
            let mut w = backup::Hashing::new(std::io::BufWriter::with_capacity(256 << 10, f));
            let (revision, keys) = sm::export(&self.db, &mut w)?;
            let (sha, bytes) = (w.sha256(), w.bytes);
            let mut f = w.inner;
            let t = backup::trailer(bytes, sha, revision, keys, &self.cluster_id());
            f.write_all(&t).and_then(|_| f.flush()).map_err(at)?;
            Ok((revision, bytes + t.len() as u64))
        })();
        match written {
            Ok((revision, size)) => Ok((path, revision, size)),
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Loads a backup body (a checked backup file's body, read line by line) into this
    /// fresh store, as a new one-member cluster whose only member is this node, described
    /// by `me`. Returns the revision restored and the number of keys. Blocking.
    pub fn restore(
        &self,
        body: impl std::io::BufRead,
        me: NodeInfo,
    ) -> Result<(u64, usize), String> {
        sm::restore(&self.db, &self.snapshot_dir(), body, (self.node_id, me))
    }
}

/// Stored records: a format byte, then JSON. The byte lets a later release change the
/// encoding without a flag day.
pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    let mut out = vec![1u8];
    // Serializing our own plain data types cannot fail.
    let _ = serde_json::to_writer(&mut out, v);
    out
}

pub(crate) fn decode<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, String> {
    match b.split_first() {
        Some((1, rest)) => serde_json::from_slice(rest).map_err(|e| format!("corrupt record: {e}")),
        Some((v, _)) => Err(format!(
            "record format {v} is newer than this binary understands"
        )),
        None => Err("empty record".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopens_with_the_same_identity_and_refuses_another_node() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), "n1").unwrap();
        let (id, node) = (s.local_id().to_string(), s.node_id());
        drop(s);
        assert_eq!(id.len(), 32);
        let s = Store::open(dir.path(), "n1").unwrap();
        assert_eq!((s.local_id(), s.node_id()), (id.as_str(), node));
        drop(s);
        assert!(matches!(
            Store::open(dir.path(), "n2"),
            Err(StoreError::WrongNode { .. })
        ));
    }

    #[test]
    fn a_second_open_is_refused_while_the_first_holds_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path(), "n1").unwrap();
        let err = Store::open(dir.path(), "n1").err().unwrap();
        assert!(matches!(err, StoreError::Locked { .. }), "{err}");
    }
}

#[cfg(test)]
mod suite {
    use super::types::*;
    use super::*;
    use openraft::testing::{StoreBuilder, Suite};

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
        async fn build(&self) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError> {
            let dir = tempfile::tempdir().map_err(|e| openraft::StorageIOError::write(&e))?;
            let store = Store::open(&dir.path().join("store"), "suite").map_err(|e| {
                openraft::StorageIOError::write(openraft::AnyError::error(e.to_string()))
            })?;
            Ok((dir, store.log_store(), store.state_machine()))
        }
    }

    /// openraft's own conformance suite for log storage and state machines.
    #[test]
    fn openraft_storage_suite() {
        Suite::test_all(Builder).unwrap();
    }
}
