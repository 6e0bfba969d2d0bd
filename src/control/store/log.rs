//! The Raft log and vote on rocksdb (`log` and `raft` column families). Every write that
//! openraft must be able to rely on is synced before the call (or the append callback)
//! returns.
//!
//! Group commit: an append goes to the WAL and memtable at once (so readers see it) and
//! its callback goes to a syncer thread. The syncer takes every callback queued so far,
//! syncs the WAL once (`FlushWAL(sync)`, which covers every write made before it), and
//! only then reports those appends durable. Under concurrent writes one fsync serves
//! many entries; alone, an append costs one fsync as before. That is for the leader's
//! own proposals, whose replication must not wait for the local disk. Entries another
//! leader proposed (this node is a follower, and its answer waits for the flush anyway)
//! are written synced in place: two thread hand-offs fewer on the path of every commit.
//! Votes, truncation and purges stay synced writes of their own.

use super::types::*;
use super::{decode, encode, CF_LOG, CF_RAFT};
use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError};
use rocksdb::{IteratorMode, WriteBatch, WriteOptions, DB};
use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct LogStore {
    db: Arc<DB>,
    syncer: Arc<Syncer>,
    /// This node's Raft id: entries proposed under it go through the syncer.
    me: NodeId,
}

/// The syncer thread's inbox. When the last [`LogStore`] clone goes, dropping this closes
/// the inbox and joins the thread, so no flush is still running (holding the database)
/// when the process exits.
struct Syncer {
    tx: Option<std::sync::mpsc::Sender<LogFlushed<TypeConfig>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Syncer {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Syncs the WAL for batches of appends until every [`LogStore`] clone is gone. The
/// thread holds the database only weakly, so closing it never waits on (or races with)
/// this thread at process exit.
fn spawn_syncer(db: &Arc<DB>) -> Syncer {
    let (tx, rx) = std::sync::mpsc::channel::<LogFlushed<TypeConfig>>();
    let weak = Arc::downgrade(db);
    let spawned = std::thread::Builder::new()
        .name("raft-log-sync".into())
        .spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut waiting = vec![first];
                waiting.extend(rx.try_iter());
                let synced = match weak.upgrade() {
                    Some(db) => db.flush_wal(true).map_err(|e| e.to_string()),
                    None => Err("the store is closed".to_string()),
                };
                for callback in waiting {
                    callback.log_io_completed(synced.clone().map_err(std::io::Error::other));
                }
            }
        });
    let thread = match spawned {
        Ok(t) => Some(t),
        Err(e) => {
            // Without the thread every append reports an error: Raft stops rather than
            // acknowledging writes it cannot make durable.
            tracing::error!(error = %e, "Cannot start the log sync thread");
            None
        }
    };
    Syncer {
        tx: Some(tx),
        thread,
    }
}

fn idx(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

fn synced() -> WriteOptions {
    let mut w = WriteOptions::default();
    w.set_sync(true);
    w
}

impl LogStore {
    pub(super) fn new(db: Arc<DB>, me: NodeId) -> Self {
        let syncer = Arc::new(spawn_syncer(&db));
        LogStore { db, syncer, me }
    }

    fn cf(&self, name: &str) -> Result<&rocksdb::ColumnFamily, StorageError> {
        self.db.cf_handle(name).ok_or_else(|| {
            StorageIOError::read(anyerror(format!("column family {name} missing"))).into()
        })
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        let raw = self
            .db
            .get_cf(self.cf(CF_RAFT)?, key)
            .map_err(|e| StorageIOError::read(&e))?;
        raw.map(|b| decode(&b).map_err(|e| StorageIOError::read(anyerror(e)).into()))
            .transpose()
    }
}

pub(super) fn anyerror(msg: String) -> openraft::AnyError {
    openraft::AnyError::error(msg)
}

/// Ranges of at most this many entries are read by key (one batched lookup) rather than
/// through an iterator: replicating and applying a commit read one or a few entries, and
/// creating and seeking a rocksdb iterator cost more than the lookups (a profile of
/// sequential puts had iterator setup at 4% of the leader's CPU).
const POINT_READ_MAX: u64 = 16;

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        // Exclusive; `None` for an unbounded range.
        let end = match range.end_bound() {
            Bound::Included(i) => Some(i.saturating_add(1)),
            Bound::Excluded(i) => Some(*i),
            Bound::Unbounded => None,
        };
        let cf = self.cf(CF_LOG)?;
        let mut out = Vec::new();
        if let Some(end) = end.filter(|e| e.saturating_sub(start) <= POINT_READ_MAX) {
            let keys: Vec<[u8; 8]> = (start..end).map(idx).collect();
            let values = self.db.batched_multi_get_cf(cf, &keys, true);
            for (i, v) in (start..end).zip(values) {
                // A missing index is skipped, as the iterator below would skip it.
                if let Some(v) = v.map_err(|e| StorageIOError::read_logs(&e))? {
                    out.push(
                        decode(&v)
                            .map_err(|e| StorageIOError::read_log_at_index(i, anyerror(e)))?,
                    );
                }
            }
            return Ok(out);
        }
        let mut opts = rocksdb::ReadOptions::default();
        if let Some(end) = end {
            opts.set_iterate_upper_bound(idx(end).to_vec());
        }
        for item in self.db.iterator_cf_opt(
            cf,
            opts,
            IteratorMode::From(&idx(start), rocksdb::Direction::Forward),
        ) {
            let (k, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
            let i = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| StorageIOError::read_logs(anyerror("bad log key".into())))?,
            );
            if !range.contains(&i) {
                break;
            }
            out.push(decode(&v).map_err(|e| StorageIOError::read_log_at_index(i, anyerror(e)))?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last = match self
            .db
            .iterator_cf(self.cf(CF_LOG)?, IteratorMode::End)
            .next()
        {
            Some(item) => {
                let (_, v) = item.map_err(|e| StorageIOError::read_logs(&e))?;
                let e: Entry = decode(&v).map_err(|e| StorageIOError::read_logs(anyerror(e)))?;
                Some(e.log_id)
            }
            None => last_purged,
        };
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        self.db
            .put_cf_opt(self.cf(CF_RAFT)?, KEY_VOTE, encode(vote), &synced())
            .map_err(|e| StorageIOError::write_vote(&e))?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get_meta(KEY_VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Not synced: losing it only means re-deriving commit from a quorum after a crash.
        self.db
            .put_cf(self.cf(CF_RAFT)?, KEY_COMMITTED, encode(&committed))
            .map_err(|e| StorageIOError::write(&e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let cf = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        let mut own = false;
        for e in entries {
            own |= e.log_id.leader_id.node_id == self.me;
            batch.put_cf(cf, idx(e.log_id.index), encode(&e));
        }
        if !own {
            // Replicated from a leader: synced here, reported at once.
            let written = self.db.write_opt(batch, &synced());
            let result = written.as_ref().map(|_| ()).map_err(|e| e.to_string());
            callback.log_io_completed(result.map_err(std::io::Error::other));
            return written.map_err(|e| StorageIOError::write_logs(&e).into());
        }
        // Not synced here: the syncer makes it durable before the callback fires.
        match self.db.write(batch) {
            Ok(()) => match self.syncer.tx.as_ref().map(|tx| tx.send(callback)) {
                Some(Ok(())) => Ok(()),
                None => Err(StorageIOError::write_logs(anyerror(
                    "the log store is closing".into(),
                ))
                .into()),
                Some(Err(std::sync::mpsc::SendError(callback))) => {
                    let e = "the log sync thread is gone";
                    callback.log_io_completed(Err(std::io::Error::other(e)));
                    Err(StorageIOError::write_logs(anyerror(e.into())).into())
                }
            },
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(&e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let cf = self.cf(CF_LOG)?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, idx(log_id.index), idx(u64::MAX));
        batch.delete_cf(cf, idx(u64::MAX));
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_RAFT)?, KEY_LAST_PURGED, encode(&log_id));
        batch.delete_range_cf(
            self.cf(CF_LOG)?,
            idx(0),
            idx(log_id.index.saturating_add(1)),
        );
        self.db
            .write_opt(batch, &synced())
            .map_err(|e| StorageIOError::write_logs(&e))?;
        Ok(())
    }
}

/// Seeds an empty log as if everything up to `last` had been applied and purged, with
/// `vote` as the last vote cast (used when a new cluster starts from a backup).
pub(super) fn seed(
    db: &DB,
    batch: &mut WriteBatch,
    last: LogId,
    vote: &Vote,
) -> Result<(), String> {
    let raft = db
        .cf_handle(CF_RAFT)
        .ok_or_else(|| format!("column family {CF_RAFT} missing"))?;
    let log = db
        .cf_handle(CF_LOG)
        .ok_or_else(|| format!("column family {CF_LOG} missing"))?;
    if db.iterator_cf(log, IteratorMode::Start).next().is_some()
        || db
            .get_cf(raft, KEY_VOTE)
            .map_err(|e| e.to_string())?
            .is_some()
    {
        return Err("the store already holds a Raft log or vote".into());
    }
    batch.put_cf(raft, KEY_LAST_PURGED, encode(&last));
    batch.put_cf(raft, KEY_COMMITTED, encode(&Some(last)));
    batch.put_cf(raft, KEY_VOTE, encode(vote));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: u64) -> Entry {
        Entry {
            log_id: openraft::LogId::new(openraft::CommittedLeaderId::new(1, 7), i),
            payload: openraft::EntryPayload::Blank,
        }
    }

    /// Point reads (small ranges) and the iterator (large or open ranges) return the same
    /// entries, in order, for every kind of bound, also across a purged prefix.
    #[tokio::test]
    async fn ranges_read_the_same_by_key_and_by_iterator() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = super::super::Store::open(&dir.path().join("store"), "n").expect("open");
        let mut log = store.log_store();
        let cf = log.cf(CF_LOG).expect("cf");
        // Entries 10..=60: 0..10 purged.
        for i in 10..=60 {
            log.db.put_cf(cf, idx(i), encode(&entry(i))).expect("put");
        }
        use Bound::{Excluded as Ex, Included as In, Unbounded as Un};
        // (range asked for, entries expected): small ranges are read by key, the rest
        // through the iterator.
        let cases = [
            ((In(20), Ex(21)), 20..21),
            ((In(20), In(35)), 20..36),
            ((In(20), Ex(37)), 20..37),
            ((In(5), Ex(15)), 10..15),
            ((In(0), Ex(40)), 10..40),
            ((In(55), Ex(70)), 55..61),
            ((In(58), Un), 58..61),
            ((Un, Un), 10..61),
            ((In(30), Ex(30)), 30..30),
            ((Ex(40), Ex(44)), 41..44),
        ];
        for (range, want) in cases {
            let got = log.try_get_log_entries(range).await.unwrap();
            let got: Vec<u64> = got.into_iter().map(|e| e.log_id.index).collect();
            assert_eq!(got, want.collect::<Vec<_>>(), "{range:?}");
        }
    }
}
