//! The key-value semantics of the state machine, free of storage: an [`Applier`] reads
//! through to a [`KvRead`] and collects the writes and events of a batch of commands, so
//! the state machine can commit them in one atomic rocksdb write.

use super::types::*;
use std::collections::BTreeMap;

/// Read access to the committed key space.
pub trait KvRead {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, String>;
    /// Every key starting with `prefix`, in key order.
    fn prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, String>;
}

/// Applies commands over a base key space, buffering the result.
pub struct Applier<'a> {
    base: &'a dyn KvRead,
    /// key -> new value (`None` = deleted), the overlay of this batch.
    pub writes: BTreeMap<String, Option<KeyValue>>,
    pub events: Vec<Event>,
}

impl<'a> Applier<'a> {
    pub fn new(base: &'a dyn KvRead) -> Self {
        Applier {
            base,
            writes: BTreeMap::new(),
            events: Vec::new(),
        }
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, String> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    fn prefix_keys(&self, prefix: &str) -> Result<Vec<String>, String> {
        let mut keys: BTreeMap<String, bool> = self
            .base
            .prefix(prefix)?
            .into_iter()
            .map(|kv| (kv.key, true))
            .collect();
        for (k, v) in self.writes.range(prefix.to_string()..) {
            if !k.starts_with(prefix) {
                break;
            }
            keys.insert(k.clone(), v.is_some());
        }
        Ok(keys
            .into_iter()
            .filter(|(_, live)| *live)
            .map(|(k, _)| k)
            .collect())
    }

    /// Applies `cmd` at `revision`.
    pub fn apply(&mut self, cmd: &Command, revision: u64) -> Result<CommandResult, String> {
        let mut result = CommandResult {
            revision,
            ..Default::default()
        };
        match cmd {
            Command::Put { key, value } => {
                result.prev = self.put(key, value, revision)?;
            }
            Command::Delete { key, prefix } => {
                let (n, prev) = self.delete(key, *prefix, revision)?;
                result.deleted = n;
                result.prev = prev;
            }
            Command::Txn {
                compare,
                success,
                failure,
            } => {
                let mut ok = true;
                for c in compare {
                    if !self.holds(c)? {
                        ok = false;
                        break;
                    }
                }
                result.succeeded = ok;
                for op in if ok { success } else { failure } {
                    match op {
                        Op::Put { key, value } => {
                            self.put(key, value, revision)?;
                        }
                        Op::Delete { key, prefix } => {
                            result.deleted += self.delete(key, *prefix, revision)?.0;
                        }
                    }
                }
            }
        }
        Ok(result)
    }

    fn put(&mut self, key: &str, value: &str, revision: u64) -> Result<Option<KeyValue>, String> {
        let prev = self.get(key)?;
        let kv = KeyValue {
            key: key.to_string(),
            value: value.to_string(),
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
        };
        self.events.push(Event {
            kind: EventKind::Put,
            revision,
            kv: kv.clone(),
        });
        self.writes.insert(key.to_string(), Some(kv));
        Ok(prev)
    }

    fn delete(
        &mut self,
        key: &str,
        prefix: bool,
        revision: u64,
    ) -> Result<(u64, Option<KeyValue>), String> {
        let keys = if prefix {
            self.prefix_keys(key)?
        } else {
            self.get(key)?.map(|kv| vec![kv.key]).unwrap_or_default()
        };
        let mut prev = None;
        for k in &keys {
            let old = self.get(k)?;
            if let Some(old) = &old {
                self.events.push(Event {
                    kind: EventKind::Delete,
                    revision,
                    kv: KeyValue {
                        key: k.clone(),
                        value: String::new(),
                        create_revision: old.create_revision,
                        mod_revision: revision,
                        version: 0,
                    },
                });
            }
            self.writes.insert(k.clone(), None);
            if !prefix {
                prev = old;
            }
        }
        Ok((keys.len() as u64, prev))
    }

    fn holds(&self, c: &Compare) -> Result<bool, String> {
        let cur = self.get(&c.key)?;
        let ord = |a: u64, b: u64| a.cmp(&b);
        let ordering = match &c.target {
            CompareTarget::ModRevision(r) => ord(cur.as_ref().map_or(0, |k| k.mod_revision), *r),
            CompareTarget::CreateRevision(r) => {
                ord(cur.as_ref().map_or(0, |k| k.create_revision), *r)
            }
            CompareTarget::Version(v) => ord(cur.as_ref().map_or(0, |k| k.version), *v),
            CompareTarget::Value(v) => match &cur {
                Some(k) => k.value.as_str().cmp(v.as_str()),
                None => return Ok(false),
            },
        };
        Ok(match c.op {
            CompareOp::Equal => ordering.is_eq(),
            CompareOp::NotEqual => ordering.is_ne(),
            CompareOp::Less => ordering.is_lt(),
            CompareOp::Greater => ordering.is_gt(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Map(BTreeMap<String, KeyValue>);

    impl KvRead for Map {
        fn get(&self, key: &str) -> Result<Option<KeyValue>, String> {
            Ok(self.0.get(key).cloned())
        }
        fn prefix(&self, p: &str) -> Result<Vec<KeyValue>, String> {
            Ok(self
                .0
                .range(p.to_string()..)
                .take_while(|(k, _)| k.starts_with(p))
                .map(|(_, v)| v.clone())
                .collect())
        }
    }

    fn commit(base: &mut Map, cmds: &[(Command, u64)]) -> Vec<CommandResult> {
        let mut a = Applier::new(&*base);
        let results: Vec<_> = cmds.iter().map(|(c, r)| a.apply(c, *r).unwrap()).collect();
        let writes = std::mem::take(&mut a.writes);
        for (k, v) in writes {
            match v {
                Some(kv) => base.0.insert(k, kv),
                None => base.0.remove(&k),
            };
        }
        results
    }

    fn put(k: &str, v: &str) -> Command {
        Command::Put {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn revisions_and_versions_follow_etcd() {
        let mut m = Map::default();
        let r = commit(&mut m, &[(put("a", "1"), 5), (put("a", "2"), 6)]);
        assert_eq!(r[1].prev.as_ref().unwrap().value, "1");
        let a = &m.0["a"];
        assert_eq!((a.create_revision, a.mod_revision, a.version), (5, 6, 2));
        commit(
            &mut m,
            &[
                (
                    Command::Delete {
                        key: "a".into(),
                        prefix: false,
                    },
                    7,
                ),
                (put("a", "3"), 8),
            ],
        );
        let a = &m.0["a"];
        assert_eq!((a.create_revision, a.mod_revision, a.version), (8, 8, 1));
    }

    #[test]
    fn prefix_delete_sees_the_batch_overlay() {
        let mut m = Map::default();
        commit(&mut m, &[(put("/a/1", "x"), 1), (put("/b", "y"), 2)]);
        let r = commit(
            &mut m,
            &[
                (put("/a/2", "z"), 3),
                (
                    Command::Delete {
                        key: "/a/".into(),
                        prefix: true,
                    },
                    4,
                ),
            ],
        );
        assert_eq!(r[1].deleted, 2);
        assert_eq!(m.0.keys().collect::<Vec<_>>(), vec!["/b"]);
    }

    #[test]
    fn txn_compares_then_applies_one_branch() {
        let mut m = Map::default();
        commit(&mut m, &[(put("k", "v"), 10)]);
        let cas = |rev| Command::Txn {
            compare: vec![Compare {
                key: "k".into(),
                op: CompareOp::Equal,
                target: CompareTarget::ModRevision(rev),
            }],
            success: vec![Op::Put {
                key: "k".into(),
                value: "new".into(),
            }],
            failure: vec![Op::Put {
                key: "lost".into(),
                value: "1".into(),
            }],
        };
        let r = commit(&mut m, &[(cas(9), 11)]);
        assert!(!r[0].succeeded);
        assert_eq!(m.0["k"].value, "v");
        assert!(m.0.contains_key("lost"));
        let r = commit(&mut m, &[(cas(10), 12)]);
        assert!(r[0].succeeded);
        assert_eq!(m.0["k"].value, "new");
        // Absent keys compare as revision 0; a value compare on them never holds.
        let create_if_absent = Command::Txn {
            compare: vec![Compare {
                key: "n".into(),
                op: CompareOp::Equal,
                target: CompareTarget::CreateRevision(0),
            }],
            success: vec![Op::Put {
                key: "n".into(),
                value: "1".into(),
            }],
            failure: vec![],
        };
        assert!(commit(&mut m, &[(create_if_absent.clone(), 13)])[0].succeeded);
        assert!(!commit(&mut m, &[(create_if_absent, 14)])[0].succeeded);
    }
}
