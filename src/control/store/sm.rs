//! The replicated state machine on rocksdb: the key space (`kv`), the change history that
//! watches replay (`history`), and what was applied (`sm`). Snapshots are files beside the
//! database: a JSON header line, then one key per line. They are written, sent, received
//! and read as files (never whole in memory): a build streams the key space into a file,
//! a leader sends chunks read from it, a follower receives chunks into a file and
//! installs from it line by line.

use super::kv::Applier;
use super::log::anyerror;
use super::read::*;
use super::types::*;
use super::{decode, encode, CF_HISTORY, CF_KV, CF_LEASE, CF_LEASE_KEYS, CF_SM};
use openraft::storage::RaftStateMachine;
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::broadcast;

pub struct StateMachine {
    db: Arc<DB>,
    snapshots: PathBuf,
    events: broadcast::Sender<Arc<Vec<Event>>>,
    /// Serializes changes of the current snapshot: building one runs in its own task and
    /// can race an install.
    snap_lock: Arc<std::sync::Mutex<()>>,
    /// The file the snapshot being received is written to.
    receiving: Option<PathBuf>,
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
        // Files a build, a transfer or an install left when the process died: never current.
        if let Ok(entries) = std::fs::read_dir(&snapshots) {
            for e in entries.flatten() {
                if e.file_name().to_string_lossy().ends_with(".tmp") {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        StateMachine {
            db,
            snapshots,
            events,
            snap_lock: Arc::default(),
            receiving: None,
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

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<tokio::fs::File>, StorageError> {
        let io = |e: std::io::Error| StorageError::from(StorageIOError::write_snapshot(None, &e));
        std::fs::create_dir_all(&self.snapshots).map_err(io)?;
        let path = self.snapshots.join(format!(
            ".recv-{}.tmp",
            nonce().map_err(|e| io(std::io::Error::other(e)))?
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(io)?;
        if let Some(old) = self.receiving.replace(path) {
            let _ = std::fs::remove_file(old);
        }
        Ok(Box::new(tokio::fs::File::from_std(f)))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        mut snapshot: Box<tokio::fs::File>,
    ) -> Result<(), StorageError> {
        use tokio::io::AsyncWriteExt;
        let sig = Some(meta.signature());
        let bad = |e: String| -> StorageError {
            StorageIOError::read_snapshot(sig.clone(), anyerror(e)).into()
        };
        snapshot.flush().await.map_err(|e| bad(e.to_string()))?;
        let file = snapshot.into_std().await;
        let received = self.receiving.take();
        let (db, dir, lock, meta2) = (
            self.db.clone(),
            self.snapshots.clone(),
            self.snap_lock.clone(),
            meta.clone(),
        );
        let keys =
            tokio::task::spawn_blocking(move || install(&db, &dir, &lock, &meta2, file, received))
                .await
                .map_err(|e| StorageIOError::write_snapshot(sig.clone(), anyerror(e.to_string())))?
                .map_err(bad)?;
        // Watches on this node cannot follow a state that jumped: an empty batch tells
        // them to end, and the client's resume from its last revision answers 410.
        let _ = self.events.send(Arc::new(Vec::new()));
        tracing::info!(snapshot = %meta.snapshot_id, keys, "Installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let _no_change_meanwhile = self.snap_lock.lock().unwrap_or_else(|p| p.into_inner());
        let Some(meta) = self.read_sm::<SnapshotMeta>(KEY_SNAPSHOT)? else {
            return Ok(None);
        };
        let f = std::fs::File::open(self.snapshots.join(snapshot_file(&meta.snapshot_id)))
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        Ok(Some(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(f)),
        }))
    }
}

/// Installs the snapshot in `file` (received at `received`, when known): the key space
/// replaced from it line by line in one synced write with its meta, the file kept as the
/// current snapshot. Returns the number of keys.
fn install(
    db: &DB,
    dir: &Path,
    lock: &std::sync::Mutex<()>,
    meta: &SnapshotMeta,
    mut file: std::fs::File,
    received: Option<PathBuf>,
) -> Result<usize, String> {
    file.rewind().map_err(|e| e.to_string())?;
    // Where the bytes are on disk: the file they were received into (the same inode as
    // the handle), or a copy.
    let same = |p: &Path| {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(p), file.metadata()) {
            (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
            _ => false,
        }
    };
    let path = match received {
        Some(p) if same(&p) => p,
        _ => {
            let p = dir.join(format!(".copy-{}.tmp", nonce()?));
            std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
            let mut out = std::fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))?;
            std::io::copy(&mut file, &mut out).map_err(|e| format!("{}: {e}", p.display()))?;
            file.rewind().map_err(|e| e.to_string())?;
            p
        }
    };
    let r = (|| {
        std::fs::File::open(&path)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut lines = BufReader::new(file);
        let header = read_header(&mut lines)?;
        let sm_cf = cf(db, CF_SM)?;
        let mut batch = replace_state(db, &header.leases)?;
        let keys = put_lines(db, &mut batch, lines, |_| true)?;
        batch.put_cf(sm_cf, KEY_APPLIED, encode(&meta.last_log_id));
        batch.put_cf(sm_cf, KEY_MEMBERSHIP, encode(&meta.last_membership));
        batch.put_cf(sm_cf, KEY_REVISION, encode(&header.revision));
        batch.put_cf(sm_cf, KEY_COMPACTED, encode(&header.revision));
        persist_current(db, dir, lock, meta, &path, Some(batch))?;
        Ok(keys)
    })();
    if r.is_err() {
        let _ = std::fs::remove_file(&path);
    }
    r
}

fn nonce() -> Result<String, String> {
    Ok(crate::util::hex(
        &crate::util::random_bytes::<4>().map_err(|e| e.to_string())?,
    ))
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

/// Writes one consistent view to `out`: a JSON header line, then one key per line.
/// Returns the header and the number of keys.
fn serialize(r: &SnapRead, out: &mut dyn Write) -> Result<(SnapshotHeader, usize), String> {
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
    let header = SnapshotHeader {
        format: 1,
        last_applied: applied,
        revision: r.revision()?,
        membership,
        leases: all_leases(r)?,
    };
    let io = |e: std::io::Error| e.to_string();
    serde_json::to_writer(&mut *out, &header).map_err(|e| e.to_string())?;
    out.write_all(b"\n").map_err(io)?;
    let mut keys = 0usize;
    for item in r.snap.iterator_cf(cf(r.db, CF_KV)?, IteratorMode::Start) {
        let (_, v) = item.map_err(|e| e.to_string())?;
        let kv: KeyValue = decode(&v)?;
        serde_json::to_writer(&mut *out, &kv).map_err(|e| e.to_string())?;
        out.write_all(b"\n").map_err(io)?;
        keys += 1;
    }
    Ok((header, keys))
}

/// Writes a consistent copy of the whole state (as a Raft snapshot carries it) to `out`,
/// for backups; returns its revision and number of keys.
pub(super) fn export(db: &DB, out: &mut dyn Write) -> Result<(u64, usize), String> {
    let r = SnapRead::new(db);
    let (header, keys) = serialize(&r, out)?;
    Ok((header.revision, keys))
}

fn build(db: &DB, dir: &Path, lock: &std::sync::Mutex<()>) -> Result<Snapshot, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let tmp = dir.join(format!(".build-{}.tmp", nonce()?));
    let built = (|| {
        let f = std::fs::File::create(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        let mut w = std::io::BufWriter::with_capacity(256 << 10, f);
        let r = SnapRead::new(db);
        let (header, keys) = serialize(&r, &mut w)?;
        drop(r);
        let f = w.into_inner().map_err(|e| e.to_string())?;
        f.sync_all().map_err(|e| e.to_string())?;
        let bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
        // Opened before the file is renamed (or dropped, when a newer snapshot came
        // meanwhile): the handle reads it either way.
        let reader = std::fs::File::open(&tmp).map_err(|e| e.to_string())?;
        let applied = header.last_applied;
        let nonce = nonce()?;
        let snapshot_id = match applied {
            Some(l) => format!("{}-{}-{nonce}", l.leader_id.term, l.index),
            None => format!("0-0-{nonce}"),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: header.membership,
            snapshot_id,
        };
        persist_current(db, dir, lock, &meta, &tmp, None)?;
        tracing::info!(snapshot = %meta.snapshot_id, keys, bytes, "Built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: Box::new(tokio::fs::File::from_std(reader)),
        })
    })();
    if built.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    built
}

/// Makes `meta` and the snapshot in `file` (synced, in `dir`) current unless a newer
/// one is already current (a build racing an install must not put an older snapshot
/// back); `file` is renamed to the name of the snapshot id, or removed. So the meta record
/// and the file it names always agree; the batch, when given, is committed in the same
/// synced write as the meta.
fn persist_current(
    db: &DB,
    dir: &Path,
    lock: &std::sync::Mutex<()>,
    meta: &SnapshotMeta,
    file: &Path,
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
    if newer {
        let _ = std::fs::remove_file(file);
    } else {
        std::fs::rename(file, dir.join(snapshot_file(&meta.snapshot_id)))
            .map_err(|e| format!("{}: {e}", file.display()))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("{}: {e}", dir.display()))?;
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

/// A batch that clears the key space, the history and the leases and puts `leases` (a
/// snapshot carries no history); the keys follow with [`put_lines`].
fn replace_state(db: &DB, leases: &[Lease]) -> Result<WriteBatch, String> {
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
    Ok(batch)
}

/// Puts every key line of a snapshot (after its header) that `keep` accepts into
/// `batch`; returns how many.
fn put_lines(
    db: &DB,
    batch: &mut WriteBatch,
    lines: impl BufRead,
    keep: impl Fn(&KeyValue) -> bool,
) -> Result<usize, String> {
    let (kv_cf, index_cf) = (cf(db, CF_KV)?, cf(db, CF_LEASE_KEYS)?);
    let mut keys = 0;
    for (n, line) in lines.lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if line.is_empty() {
            continue;
        }
        let kv: KeyValue =
            serde_json::from_str(&line).map_err(|e| format!("bad snapshot line {}: {e}", n + 2))?;
        if !keep(&kv) {
            continue;
        }
        batch.put_cf(kv_cf, kv.key.as_bytes(), encode(&kv));
        if kv.lease != 0 {
            batch.put_cf(index_cf, lease_index_key(kv.lease, &kv.key), b"");
        }
        keys += 1;
    }
    Ok(keys)
}

/// Checks that `data` is a snapshot: its header and every key line parse.
pub(super) fn check_snapshot(mut lines: impl BufRead) -> Result<(), String> {
    read_header(&mut lines)?;
    for (n, line) in lines.lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if !line.is_empty() {
            serde_json::from_str::<KeyValue>(&line)
                .map_err(|e| format!("bad snapshot line {}: {e}", n + 2))?;
        }
    }
    Ok(())
}

/// The header line of a snapshot.
fn read_header(lines: &mut impl BufRead) -> Result<SnapshotHeader, String> {
    let mut first = String::new();
    if lines.read_line(&mut first).map_err(|e| e.to_string())? == 0 {
        return Err("empty snapshot".into());
    }
    let header: SnapshotHeader =
        serde_json::from_str(first.trim_end()).map_err(|e| format!("bad snapshot header: {e}"))?;
    if header.format != 1 {
        return Err(format!(
            "snapshot format {} is not supported",
            header.format
        ));
    }
    Ok(header)
}

/// Loads a snapshot body into an empty store as a one-member cluster of `me`: the state
/// machine holds the data at the snapshot's revision, the log starts right after it (as
/// if purged), and the vote carries the snapshot's term, so revisions keep growing.
pub(super) fn restore(
    db: &DB,
    dir: &std::path::Path,
    mut lines: impl BufRead,
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
    let header = read_header(&mut lines)?;
    let last = header
        .last_applied
        .ok_or("the snapshot holds no applied state")?;
    let (id, info) = me;
    let membership = openraft::Membership::new(
        vec![std::collections::BTreeSet::from([id])],
        std::collections::BTreeMap::from([(id, info)]),
    );
    let stored = StoredMembership::new(Some(last), membership);
    let mut batch = replace_state(db, &header.leases)?;
    // A new cluster: the bootstrap step registers this store's own id.
    let keys = put_lines(db, &mut batch, lines, |kv| kv.key != super::CLUSTER_ID_KEY)?;
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
    Ok((header.revision, keys))
}
