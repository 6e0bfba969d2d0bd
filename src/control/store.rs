//! The control plane's on-disk store: one RocksDB database with column families. This is
//! the only module that imports rocksdb. Writes are synced (WAL fsync) before they are
//! acknowledged. The Raft log, vote and state machine column families land here.

use rocksdb::{ColumnFamilyDescriptor, Options, WriteOptions, DB};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Column families; `meta` holds the node's identity.
const CF_META: &str = "meta";
const COLUMN_FAMILIES: [&str; 1] = [CF_META];

const KEY_CLUSTER_ID: &[u8] = b"cluster_id";
const KEY_NODE_NAME: &[u8] = b"node_name";

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
    cluster_id: String,
}

impl Store {
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
        match db.get_cf(&meta, KEY_NODE_NAME).map_err(rocks)? {
            Some(found) if found != node.as_bytes() => {
                return Err(StoreError::WrongNode {
                    path: dir.to_path_buf(),
                    found: String::from_utf8_lossy(&found).into_owned(),
                    expected: node.to_string(),
                })
            }
            Some(_) => {}
            None => db
                .put_cf_opt(&meta, KEY_NODE_NAME, node.as_bytes(), &sync)
                .map_err(rocks)?,
        }
        let cluster_id = match db.get_cf(&meta, KEY_CLUSTER_ID).map_err(rocks)? {
            Some(id) => String::from_utf8_lossy(&id).into_owned(),
            None => {
                let id = new_cluster_id();
                db.put_cf_opt(&meta, KEY_CLUSTER_ID, id.as_bytes(), &sync)
                    .map_err(rocks)?;
                id
            }
        };
        Ok(Store {
            db: Arc::new(db),
            cluster_id,
        })
    }

    /// A random identifier fixed when the store is created.
    pub fn cluster_id(&self) -> &str {
        &self.cluster_id
    }

    /// The open database, for the store's own submodules.
    #[allow(dead_code)]
    pub(crate) fn db(&self) -> &DB {
        &self.db
    }
}

/// 128 random bits from the kernel, hex encoded.
fn new_cluster_id() -> String {
    let mut buf = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut buf);
    }
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reopens_with_the_same_identity_and_refuses_another_node() {
        let dir = tempfile::tempdir().unwrap();
        let id = Store::open(dir.path(), "n1")
            .unwrap()
            .cluster_id()
            .to_string();
        assert_eq!(id.len(), 32);
        assert_eq!(Store::open(dir.path(), "n1").unwrap().cluster_id(), id);
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
