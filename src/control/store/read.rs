//! Reading the state machine's column families through one rocksdb snapshot, so every
//! read (and every apply batch) sees one consistent revision: keys, ranges, history,
//! leases and the compaction floor.

use super::kv::KvRead;
use super::types::*;
use super::{decode, CF_HISTORY, CF_KV, CF_LEASE, CF_LEASE_KEYS, CF_SM};
use rocksdb::{IteratorMode, DB};

pub(super) const KEY_APPLIED: &[u8] = b"last_applied";
pub(super) const KEY_MEMBERSHIP: &[u8] = b"membership";
pub(super) const KEY_SNAPSHOT: &[u8] = b"snapshot_meta";
pub(super) const KEY_COMPACTED: &[u8] = b"compact_revision";
/// The last revision handed out (see `types::KeyValue`).
pub(super) const KEY_REVISION: &[u8] = b"revision";

pub(super) fn cf<'a>(db: &'a DB, name: &str) -> Result<&'a rocksdb::ColumnFamily, String> {
    db.cf_handle(name)
        .ok_or_else(|| format!("column family {name} missing"))
}

pub(super) fn lease_id_key(id: u64) -> [u8; 8] {
    id.to_be_bytes()
}

pub(super) fn lease_index_key(id: u64, key: &str) -> Vec<u8> {
    let mut k = id.to_be_bytes().to_vec();
    k.extend_from_slice(key.as_bytes());
    k
}

pub(super) fn history_key(rev: u64, seq: u32) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..8].copy_from_slice(&rev.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// Reads through a rocksdb snapshot, so a read sees one applied state.
pub(super) struct SnapRead<'a> {
    pub(super) db: &'a DB,
    pub(super) snap: rocksdb::Snapshot<'a>,
}

impl<'a> SnapRead<'a> {
    pub(super) fn new(db: &'a DB) -> Self {
        SnapRead {
            db,
            snap: db.snapshot(),
        }
    }

    /// The revision this view observes.
    pub(super) fn revision(&self) -> Result<u64, String> {
        let raw = self
            .snap
            .get_cf(cf(self.db, CF_SM)?, KEY_REVISION)
            .map_err(|e| e.to_string())?;
        Ok(raw.map(|b| decode(&b)).transpose()?.unwrap_or(0))
    }
}

impl KvRead for SnapRead<'_> {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, String> {
        let raw = self
            .snap
            .get_cf(cf(self.db, CF_KV)?, key.as_bytes())
            .map_err(|e| e.to_string())?;
        raw.map(|b| decode(&b)).transpose()
    }

    fn prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, String> {
        scan(self, prefix, usize::MAX)
    }

    fn lease(&self, id: u64) -> Result<Option<Lease>, String> {
        let raw = self
            .snap
            .get_cf(cf(self.db, CF_LEASE)?, lease_id_key(id))
            .map_err(|e| e.to_string())?;
        raw.map(|b| decode(&b)).transpose()
    }

    fn lease_keys(&self, id: u64) -> Result<Vec<String>, String> {
        let start = id.to_be_bytes();
        let mode = IteratorMode::From(&start, rocksdb::Direction::Forward);
        let mut out = Vec::new();
        for item in self.snap.iterator_cf(cf(self.db, CF_LEASE_KEYS)?, mode) {
            let (k, _) = item.map_err(|e| e.to_string())?;
            if k.len() < 8 || k[..8] != start {
                break;
            }
            out.push(String::from_utf8_lossy(&k[8..]).into_owned());
        }
        Ok(out)
    }
}

pub(super) fn all_leases(r: &SnapRead) -> Result<Vec<Lease>, String> {
    let mut out = Vec::new();
    for item in r.snap.iterator_cf(cf(r.db, CF_LEASE)?, IteratorMode::Start) {
        let (_, v) = item.map_err(|e| e.to_string())?;
        out.push(decode(&v)?);
    }
    Ok(out)
}

pub(super) fn read_leases(db: &DB) -> Result<(Vec<Lease>, u64), String> {
    let r = SnapRead::new(db);
    Ok((all_leases(&r)?, r.revision()?))
}

/// A lease, its attached keys and the applied revision.
pub(super) fn read_lease(db: &DB, id: u64) -> Result<(Option<LeaseWithKeys>, u64), String> {
    let r = SnapRead::new(db);
    let found = match r.lease(id)? {
        Some(l) => Some((l, r.lease_keys(id)?)),
        None => None,
    };
    Ok((found, r.revision()?))
}

/// The compaction floor (watches cannot start below it) and the applied revision.
pub(super) fn read_compaction(db: &DB) -> Result<(u64, u64), String> {
    let r = SnapRead::new(db);
    Ok((compacted(&r)?, r.revision()?))
}

pub(super) fn compacted(r: &SnapRead) -> Result<u64, String> {
    Ok(r.snap
        .get_cf(cf(r.db, CF_SM)?, KEY_COMPACTED)
        .map_err(|e| e.to_string())?
        .map(|b| decode(&b))
        .transpose()?
        .unwrap_or(0))
}

fn scan(r: &SnapRead, prefix: &str, limit: usize) -> Result<Vec<KeyValue>, String> {
    scan_from(r, prefix, prefix, limit)
}

/// Keys under `prefix` from `from` (inclusive) on, at most `limit`.
fn scan_from(
    r: &SnapRead,
    prefix: &str,
    from: &str,
    limit: usize,
) -> Result<Vec<KeyValue>, String> {
    let mut out = Vec::new();
    let start = if from > prefix { from } else { prefix };
    let mode = IteratorMode::From(start.as_bytes(), rocksdb::Direction::Forward);
    for item in r.snap.iterator_cf(cf(r.db, CF_KV)?, mode) {
        let (k, v) = item.map_err(|e| e.to_string())?;
        if !k.starts_with(prefix.as_bytes()) || out.len() >= limit {
            break;
        }
        out.push(decode(&v)?);
    }
    Ok(out)
}

pub(super) fn read_get(db: &DB, key: &str) -> Result<(Option<KeyValue>, u64), String> {
    let r = SnapRead::new(db);
    Ok((r.get(key)?, r.revision()?))
}

pub(super) fn read_range(
    db: &DB,
    prefix: &str,
    limit: usize,
) -> Result<(Vec<KeyValue>, u64), String> {
    let r = SnapRead::new(db);
    Ok((scan(&r, prefix, limit)?, r.revision()?))
}

pub(super) fn read_range_from(
    db: &DB,
    prefix: &str,
    from: &str,
    limit: usize,
) -> Result<(Vec<KeyValue>, u64), String> {
    let r = SnapRead::new(db);
    Ok((scan_from(&r, prefix, from, limit)?, r.revision()?))
}

/// Several keys and ranges, all from one consistent snapshot.
pub(super) fn read_keys_and_ranges(
    db: &DB,
    keys: &[&str],
    prefixes: &[String],
    limit: usize,
) -> Result<super::types::KeysAndRange, String> {
    let r = SnapRead::new(db);
    let got = keys
        .iter()
        .map(|k| r.get(k))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ranged = Vec::new();
    for p in prefixes {
        ranged.extend(scan(&r, p, limit)?);
    }
    Ok((got, ranged, r.revision()?))
}

/// Changes after revision `after` under `prefix` (at most `limit`), the oldest revision
/// still kept (older ones are compacted), and the applied revision the read observed.
pub(super) fn read_history(
    db: &DB,
    after: u64,
    prefix: &str,
    limit: usize,
) -> Result<(Vec<Event>, u64, u64), String> {
    let r = SnapRead::new(db);
    let compacted = compacted(&r)?;
    let mut out = Vec::new();
    let mode = IteratorMode::From(
        &history_key(after.saturating_add(1), 0),
        rocksdb::Direction::Forward,
    );
    for item in r.snap.iterator_cf(cf(db, CF_HISTORY)?, mode) {
        let (_, v) = item.map_err(|e| e.to_string())?;
        let ev: Event = decode(&v)?;
        // Never split one revision's events (a transaction has several) across batches.
        if out.len() >= limit
            && out
                .last()
                .is_some_and(|l: &Event| l.revision != ev.revision)
        {
            break;
        }
        if ev.kv.key.starts_with(prefix) {
            out.push(ev);
        }
    }
    Ok((out, compacted, r.revision()?))
}
