//! The replicated state machine on rocksdb: the key space (`kv`), the change history that
//! watches replay (`history`), and what was applied (`sm`). Snapshots are files beside the
//! database: a JSON header line, then one key per line.

use super::kv::Applier;
use super::log::anyerror;
use super::read::*;
use super::types::*;
use super::{decode, encode, CF_HISTORY, CF_KV, CF_LEASE, CF_LEASE_KEYS, CF_SM};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, Cursor, Write};
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::broadcast;

pub struct StateMachine {
    db: Arc<DB>,
    snapshots: PathBuf,
    events: broadcast::Sender<Arc<Vec<Event>>>,
    /// Serializes changes of the current snapshot: building one runs in its own task and
    /// can race an install.
    snap_lock: Arc<std::sync::Mutex<()>>,
}

#[derive(Serialize, Deserialize)]
pub(super) struct SnapshotHeader {
    pub format: u32,
    pub last_applied: Option<LogId>,
    /// The revision the state is at.
    #[serde(default)]
    pub revision: u64,
    pub membership: StoredMembership,
    #[serde(default)]
    pub leases: Vec<Lease>,
}

impl StateMachine {
    pub(super) fn new(
        db: Arc<DB>,
        snapshots: PathBuf,
        events: broadcast::Sender<Arc<Vec<Event>>>,
    ) -> Self {
        StateMachine {
            db,
            snapshots,
            events,
            snap_lock: Arc::default(),
        }
    }

    fn read_sm<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let c = cf(&self.db, CF_SM).map_err(|e| StorageIOError::read_state_machine(anyerror(e)))?;
        let raw = self
            .db
            .get_cf(c, key)
            .map_err(|e| StorageIOError::read_state_machine(&e))?;
        raw.map(|b| decode(&b).map_err(|e| StorageIOError::read_state_machine(anyerror(e)).into()))
            .transpose()
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let applied = self.read_sm::<Option<LogId>>(KEY_APPLIED)?.flatten();
        let membership = self.read_sm(KEY_MEMBERSHIP)?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let db = self.db.clone();
        let base = SnapRead::new(&db);
        let base_revision = base
            .revision()
            .map_err(|e| StorageIOError::read_state_machine(anyerror(e)))?;
        let mut applier = Applier::new(&base, base_revision);
        let mut results = Vec::new();
        let mut last = None;
        let mut membership = None;
        for entry in entries {
            last = Some(entry.log_id);
            let r = match &entry.payload {
                EntryPayload::Normal(cmd) => applier
                    .apply_next(cmd)
                    .map_err(|e| StorageIOError::apply(entry.log_id, anyerror(e)))?,
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m.clone()));
                    CommandResult {
                        revision: applier.revision,
                        ..Default::default()
                    }
                }
                EntryPayload::Blank => CommandResult {
                    revision: applier.revision,
                    ..Default::default()
                },
            };
            results.push(r);
        }
        let Some(last) = last else { return Ok(results) };
        let err =
            |e: String| -> StorageError { StorageIOError::write_state_machine(anyerror(e)).into() };
        let (kv_cf, hist_cf, sm_cf) = (
            cf(&db, CF_KV).map_err(err)?,
            cf(&db, CF_HISTORY).map_err(err)?,
            cf(&db, CF_SM).map_err(err)?,
        );
        let (lease_cf, index_cf) = (
            cf(&db, CF_LEASE).map_err(err)?,
            cf(&db, CF_LEASE_KEYS).map_err(err)?,
        );
        let mut batch = WriteBatch::default();
        for (k, v) in &applier.writes {
            match v {
                Some(kv) => batch.put_cf(kv_cf, k.as_bytes(), encode(kv)),
                None => batch.delete_cf(kv_cf, k.as_bytes()),
            }
        }
        for (id, l) in &applier.leases {
            match l {
                Some(l) => batch.put_cf(lease_cf, lease_id_key(*id), encode(l)),
                None => batch.delete_cf(lease_cf, lease_id_key(*id)),
            }
        }
        for ((id, key), attached) in &applier.lease_index {
            if *attached {
                batch.put_cf(index_cf, lease_index_key(*id, key), b"");
            } else {
                batch.delete_cf(index_cf, lease_index_key(*id, key));
            }
        }
        let mut seq_rev = (0u64, 0u32);
        for ev in &applier.events {
            seq_rev = if seq_rev.0 == ev.revision {
                (ev.revision, seq_rev.1 + 1)
            } else {
                (ev.revision, 0)
            };
            batch.put_cf(hist_cf, history_key(seq_rev.0, seq_rev.1), encode(ev));
        }
        batch.put_cf(sm_cf, KEY_APPLIED, encode(&Some(last)));
        batch.put_cf(sm_cf, KEY_REVISION, encode(&applier.revision));
        if let Some(m) = &membership {
            batch.put_cf(sm_cf, KEY_MEMBERSHIP, encode(m));
        }
        if let Some(to) = applier.compact {
            let floor = compacted(&base).map_err(err)?;
            if to > floor {
                batch.delete_range_cf(hist_cf, history_key(0, 0), history_key(to, 0));
                batch.put_cf(sm_cf, KEY_COMPACTED, encode(&to));
            }
        }
        let events = std::mem::take(&mut applier.events);
        drop(applier);
        drop(base);
        db.write(batch)
            .map_err(|e| StorageIOError::write_state_machine(&e))?;
        if !events.is_empty() {
            let _ = self.events.send(Arc::new(events));
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            db: self.db.clone(),
            dir: self.snapshots.clone(),
            lock: self.snap_lock.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let sig = Some(meta.signature());
        let bad = |e: String| -> StorageError {
            StorageIOError::read_snapshot(sig.clone(), anyerror(e)).into()
        };
        let data = snapshot.into_inner();
        let (header, kvs) = parse_snapshot(&data).map_err(bad)?;
        let db = &self.db;
        let sm_cf = cf(db, CF_SM).map_err(bad)?;
        let mut batch = replace_state(db, &header.leases, &kvs).map_err(bad)?;
        let applied = meta.last_log_id;
        batch.put_cf(sm_cf, KEY_APPLIED, encode(&applied));
        batch.put_cf(sm_cf, KEY_MEMBERSHIP, encode(&meta.last_membership));
        batch.put_cf(sm_cf, KEY_REVISION, encode(&header.revision));
        batch.put_cf(sm_cf, KEY_COMPACTED, encode(&header.revision));
        let (db, dir, lock, meta2) = (
            self.db.clone(),
            self.snapshots.clone(),
            self.snap_lock.clone(),
            meta.clone(),
        );
        tokio::task::spawn_blocking(move || {
            persist_current(&db, &dir, &lock, &meta2, &data, Some(batch))
        })
        .await
        .map_err(|e| StorageIOError::write_snapshot(sig.clone(), anyerror(e.to_string())))?
        .map_err(|e| StorageIOError::write_snapshot(sig.clone(), anyerror(e)))?;
        // Watches on this node cannot follow a state that jumped: an empty batch tells
        // them to end, and the client's resume from its last revision answers 410.
        let _ = self.events.send(Arc::new(Vec::new()));
        tracing::info!(snapshot = %meta.snapshot_id, keys = kvs.len(), "Installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let _no_change_meanwhile = self.snap_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(meta) = self.read_sm::<SnapshotMeta>(KEY_SNAPSHOT)? else {
            return Ok(None);
        };
        let data = std::fs::read(self.snapshots.join(snapshot_file(&meta.snapshot_id)))
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        }))
    }
}

pub struct SnapshotBuilder {
    db: Arc<DB>,
    dir: PathBuf,
    lock: Arc<std::sync::Mutex<()>>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let db = self.db.clone();
        let (dir, lock) = (self.dir.clone(), self.lock.clone());
        // Serializing a large key space is CPU and disk work: keep it off the runtime threads.
        let built = tokio::task::spawn_blocking(move || build(&db, &dir, &lock))
            .await
            .map_err(|e| StorageIOError::write_snapshot(None, anyerror(e.to_string())))?;
        built.map_err(|e| StorageIOError::write_snapshot(None, anyerror(e)).into())
    }
}

/// Serializes one consistent view: a JSON header line, then one key per line.
fn serialize(r: &SnapRead) -> Result<(SnapshotHeader, Vec<u8>, usize), String> {
    let sm = cf(r.db, CF_SM)?;
    let applied: Option<LogId> = r
        .snap
        .get_cf(sm, KEY_APPLIED)
        .map_err(|e| e.to_string())?
        .map(|b| decode(&b))
        .transpose()?
        .flatten();
    let membership: StoredMembership = r
        .snap
        .get_cf(sm, KEY_MEMBERSHIP)
        .map_err(|e| e.to_string())?
        .map(|b| decode(&b))
        .transpose()?
        .unwrap_or_default();
    let mut data = Vec::new();
    let header = SnapshotHeader {
        format: 1,
        last_applied: applied,
        revision: r.revision()?,
        membership,
        leases: all_leases(r)?,
    };
    serde_json::to_writer(&mut data, &header).map_err(|e| e.to_string())?;
    data.push(b'\n');
    let mut keys = 0usize;
    for item in r.snap.iterator_cf(cf(r.db, CF_KV)?, IteratorMode::Start) {
        let (_, v) = item.map_err(|e| e.to_string())?;
        let kv: KeyValue = decode(&v)?;
        serde_json::to_writer(&mut data, &kv).map_err(|e| e.to_string())?;
        data.push(b'\n');
        keys += 1;
    }
    Ok((header, data, keys))
}

/// A consistent copy of the whole state (as a Raft snapshot carries it), for backups.
pub(super) fn export(db: &DB) -> Result<(Vec<u8>, u64, usize), String> {
    let r = SnapRead::new(db);
    let (header, data, keys) = serialize(&r)?;
    Ok((data, header.revision, keys))
}

fn build(db: &DB, dir: &std::path::Path, lock: &std::sync::Mutex<()>) -> Result<Snapshot, String> {
    let r = SnapRead::new(db);
    let (header, data, keys) = serialize(&r)?;
    drop(r);
    let applied = header.last_applied;
    let nonce = crate::util::hex(&crate::util::random_bytes::<4>().map_err(|e| e.to_string())?);
    let snapshot_id = match applied {
        Some(l) => format!("{}-{}-{nonce}", l.leader_id.term, l.index),
        None => format!("0-0-{nonce}"),
    };
    let meta = SnapshotMeta {
        last_log_id: applied,
        last_membership: header.membership,
        snapshot_id,
    };
    persist_current(db, dir, lock, &meta, &data, None)?;
    tracing::info!(snapshot = %meta.snapshot_id, keys, bytes = data.len(), "Built snapshot");
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    })
}

/// Makes `meta`/`data` the current snapshot unless a newer one is already current (a
/// build racing an install must not put an older snapshot back). The file is named by
/// the snapshot id, so the meta record and the file it names always agree; the batch,
/// when given, is committed in the same synced write as the meta.
fn persist_current(
    db: &DB,
    dir: &std::path::Path,
    lock: &std::sync::Mutex<()>,
    meta: &SnapshotMeta,
    data: &[u8],
    batch: Option<WriteBatch>,
) -> Result<bool, String> {
    let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
    let sm = cf(db, CF_SM)?;
    let current: Option<SnapshotMeta> = db
        .get_cf(sm, KEY_SNAPSHOT)
        .map_err(|e| e.to_string())?
        .map(|b| decode(&b))
        .transpose()?;
    let mut batch = batch.unwrap_or_default();
    let newer = current
        .as_ref()
        .is_some_and(|c| c.last_log_id > meta.last_log_id);
    if !newer {
        write_snapshot_file(dir, &snapshot_file(&meta.snapshot_id), data)?;
        batch.put_cf(sm, KEY_SNAPSHOT, encode(meta));
    }
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync).map_err(|e| e.to_string())?;
    if !newer {
        if let Some(old) = current.filter(|c| c.snapshot_id != meta.snapshot_id) {
            let _ = std::fs::remove_file(dir.join(snapshot_file(&old.snapshot_id)));
        }
    }
    Ok(!newer)
}

fn snapshot_file(id: &str) -> String {
    format!("{id}.snap")
}

/// A batch that replaces the key space and leases with `kvs` and `leases` and clears the
/// history (a snapshot carries no history).
fn replace_state(db: &DB, leases: &[Lease], kvs: &[KeyValue]) -> Result<WriteBatch, String> {
    let (kv_cf, hist_cf) = (cf(db, CF_KV)?, cf(db, CF_HISTORY)?);
    let (lease_cf, index_cf) = (cf(db, CF_LEASE)?, cf(db, CF_LEASE_KEYS)?);
    let mut batch = WriteBatch::default();
    // Keys are UTF-8, which never contains the byte 0xFF: this range covers them all.
    batch.delete_range_cf(kv_cf, b"".as_slice(), b"\xff".as_slice());
    batch.delete_range_cf(hist_cf, history_key(0, 0), history_key(u64::MAX, u32::MAX));
    batch.delete_range_cf(lease_cf, lease_id_key(0), lease_id_key(u64::MAX));
    batch.delete_range_cf(index_cf, lease_id_key(0), lease_id_key(u64::MAX));
    // The u64::MAX ends above are exclusive; ids never reach them (they are revisions).
    for l in leases {
        batch.put_cf(lease_cf, lease_id_key(l.id), encode(l));
    }
    for kv in kvs {
        batch.put_cf(kv_cf, kv.key.as_bytes(), encode(kv));
        if kv.lease != 0 {
            batch.put_cf(index_cf, lease_index_key(kv.lease, &kv.key), b"");
        }
    }
    Ok(batch)
}

pub(super) fn parse_snapshot(data: &[u8]) -> Result<(SnapshotHeader, Vec<KeyValue>), String> {
    let mut lines = Cursor::new(data).lines();
    let first = lines
        .next()
        .ok_or("empty snapshot")?
        .map_err(|e| e.to_string())?;
    let header: SnapshotHeader =
        serde_json::from_str(&first).map_err(|e| format!("bad snapshot header: {e}"))?;
    if header.format != 1 {
        return Err(format!(
            "snapshot format {} is not supported",
            header.format
        ));
    }
    let mut kvs = Vec::new();
    for (n, line) in lines.enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if line.is_empty() {
            continue;
        }
        kvs.push(
            serde_json::from_str(&line).map_err(|e| format!("bad snapshot line {}: {e}", n + 2))?,
        );
    }
    Ok((header, kvs))
}

/// Writes a snapshot file atomically: temp file, fsync, rename, fsync the directory.
fn write_snapshot_file(dir: &std::path::Path, name: &str, data: &[u8]) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    f.write_all(data)
        .and_then(|_| f.sync_all())
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, dir.join(name)).map_err(|e| e.to_string())?;
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| e.to_string())
}

/// Loads a snapshot body into an empty store as a one-member cluster of `me`: the state
/// machine holds the data at the snapshot's revision, the log starts right after it (as
/// if purged), and the vote carries the snapshot's term, so revisions keep growing.
pub(super) fn restore(
    db: &DB,
    dir: &std::path::Path,
    body: &[u8],
    me: (NodeId, NodeInfo),
) -> Result<(u64, usize), String> {
    let sm = cf(db, CF_SM)?;
    if db
        .get_cf(sm, KEY_APPLIED)
        .map_err(|e| e.to_string())?
        .is_some()
    {
        return Err("the store is not empty: restore only into a fresh data_dir".into());
    }
    let (header, mut kvs) = parse_snapshot(body)?;
    // A new cluster: the bootstrap step registers this store's own id.
    kvs.retain(|kv| kv.key != super::CLUSTER_ID_KEY);
    let last = header
        .last_applied
        .ok_or("the snapshot holds no applied state")?;
    let (id, info) = me;
    let membership = openraft::Membership::new(
        vec![std::collections::BTreeSet::from([id])],
        std::collections::BTreeMap::from([(id, info)]),
    );
    let stored = StoredMembership::new(Some(last), membership);
    let mut batch = replace_state(db, &header.leases, &kvs)?;
    batch.put_cf(sm, KEY_APPLIED, encode(&Some(last)));
    batch.put_cf(sm, KEY_MEMBERSHIP, encode(&stored));
    batch.put_cf(sm, KEY_REVISION, encode(&header.revision));
    batch.put_cf(sm, KEY_COMPACTED, encode(&header.revision));
    super::log::seed(db, &mut batch, last, &Vote::new(last.leader_id.term, id))?;
    let mut sync = WriteOptions::default();
    sync.set_sync(true);
    db.write_opt(batch, &sync).map_err(|e| e.to_string())?;
    // A snapshot of the restored state, so a member that joins later can be sent it.
    build(db, dir, &std::sync::Mutex::new(()))?;
    Ok((header.revision, kvs.len()))
}
