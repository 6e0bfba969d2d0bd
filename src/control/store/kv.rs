//! The key-value semantics of the state machine, free of storage: an [`Applier`] reads
//! through to a [`KvRead`] and collects the writes and events of a batch of commands, so
//! the state machine can commit them in one atomic rocksdb write.

use super::types::*;
use std::collections::{BTreeMap, BTreeSet};

/// Read access to the committed state.
pub trait KvRead {
    fn get(&self, key: &str) -> Result<Option<KeyValue>, String>;
    /// Every key starting with `prefix`, in key order.
    fn prefix(&self, prefix: &str) -> Result<Vec<KeyValue>, String>;
    fn lease(&self, id: u64) -> Result<Option<Lease>, String>;
    /// The keys attached to lease `id`.
    fn lease_keys(&self, id: u64) -> Result<Vec<String>, String>;
}

/// Applies commands over a base state, buffering the result.
pub struct Applier<'a> {
    base: &'a dyn KvRead,
    /// key -> new value (`None` = deleted), the overlay of this batch.
    pub writes: BTreeMap<String, Option<KeyValue>>,
    /// lease id -> new record (`None` = revoked).
    pub leases: BTreeMap<u64, Option<Lease>>,
    /// (lease, key) -> attached (`true`) or detached (`false`).
    pub lease_index: BTreeMap<(u64, String), bool>,
    /// The highest compaction revision asked for in this batch.
    pub compact: Option<u64>,
    pub events: Vec<Event>,
    /// The last revision handed out; the next command gets `revision + 1`.
    pub revision: u64,
}

impl<'a> Applier<'a> {
    /// An applier over `base`, whose last revision is `revision`.
    pub fn new(base: &'a dyn KvRead, revision: u64) -> Self {
        Applier {
            base,
            writes: BTreeMap::new(),
            leases: BTreeMap::new(),
            lease_index: BTreeMap::new(),
            compact: None,
            events: Vec::new(),
            revision,
        }
    }

    /// Applies one replicated command (a batch: each of its commands in turn), giving
    /// each key-space command the next revision.
    pub fn apply_next(&mut self, cmd: &Command) -> Result<CommandResult, String> {
        if let Command::Batch { cmds } = cmd {
            let mut batch = Vec::with_capacity(cmds.len());
            for c in cmds {
                batch.push(self.apply_next(c)?);
            }
            return Ok(CommandResult {
                revision: self.revision,
                batch,
                ..Default::default()
            });
        }
        self.revision += 1;
        self.apply(cmd, self.revision)
    }

    fn get(&self, key: &str) -> Result<Option<KeyValue>, String> {
        match self.writes.get(key) {
            Some(v) => Ok(v.clone()),
            None => self.base.get(key),
        }
    }

    fn lease(&self, id: u64) -> Result<Option<Lease>, String> {
        match self.leases.get(&id) {
            Some(l) => Ok(l.clone()),
            None => self.base.lease(id),
        }
    }

    fn lease_keys(&self, id: u64) -> Result<Vec<String>, String> {
        let mut keys: BTreeSet<String> = self.base.lease_keys(id)?.into_iter().collect();
        for ((_, k), attached) in self
            .lease_index
            .range((id, String::new())..)
            .take_while(|((l, _), _)| *l == id)
        {
            if *attached {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().collect())
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

    /// Why a put naming `lease` must be refused, if it must.
    fn missing_lease(&self, lease: u64) -> Result<Option<String>, String> {
        if lease != 0 && self.lease(lease)?.is_none() {
            return Ok(Some(format!(
                "lease {lease} does not exist (expired or revoked)"
            )));
        }
        Ok(None)
    }

    /// Applies `cmd` at `revision`. An `Err` is a storage failure; a command that must
    /// change nothing comes back with `refused` set.
    pub fn apply(&mut self, cmd: &Command, revision: u64) -> Result<CommandResult, String> {
        let mut result = CommandResult {
            revision,
            ..Default::default()
        };
        match cmd {
            Command::Put { key, value, lease } => {
                result.refused = self.missing_lease(*lease)?;
                if result.refused.is_none() {
                    result.prev = self.put(key, value, *lease, revision)?;
                }
            }
            Command::Delete { key, prefix } => {
                let (n, prev) = self.delete(key, *prefix, revision)?;
                result.deleted = n;
                result.prev = prev;
            }
            Command::LeaseGrant { ttl_secs } => {
                self.leases.insert(
                    revision,
                    Some(Lease {
                        id: revision,
                        ttl_secs: *ttl_secs,
                    }),
                );
            }
            Command::LeaseRevoke { id } => {
                if self.lease(*id)?.is_none() {
                    result.refused = Some(format!("lease {id} does not exist"));
                } else {
                    for key in self.lease_keys(*id)? {
                        result.deleted += self.delete(&key, false, revision)?.0;
                    }
                    self.leases.insert(*id, None);
                }
            }
            Command::Compact { revision: to } => {
                let to = (*to).min(revision);
                self.compact = Some(self.compact.map_or(to, |c| c.max(to)));
            }
            Command::Batch { cmds } => {
                // Batches are flattened by `apply_next`; a nested one is applied in turn.
                for c in cmds {
                    result.batch.push(self.apply(c, revision)?);
                }
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
                let branch = if ok { success } else { failure };
                // A branch applies whole or not at all.
                for op in branch {
                    if let Op::Put { lease, .. } = op {
                        if let Some(why) = self.missing_lease(*lease)? {
                            result.refused = Some(why);
                            return Ok(result);
                        }
                    }
                }
                for op in branch {
                    match op {
                        Op::Put { key, value, lease } => {
                            self.put(key, value, *lease, revision)?;
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

    fn put(
        &mut self,
        key: &str,
        value: &str,
        lease: u64,
        revision: u64,
    ) -> Result<Option<KeyValue>, String> {
        let prev = self.get(key)?;
        let old_lease = prev.as_ref().map_or(0, |p| p.lease);
        if old_lease != lease {
            if old_lease != 0 {
                self.lease_index.insert((old_lease, key.to_string()), false);
            }
            if lease != 0 {
                self.lease_index.insert((lease, key.to_string()), true);
            }
        }
        let kv = KeyValue {
            key: key.to_string(),
            value: value.to_string(),
            create_revision: prev.as_ref().map_or(revision, |p| p.create_revision),
            mod_revision: revision,
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
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
                if old.lease != 0 {
                    self.lease_index.insert((old.lease, k.clone()), false);
                }
                self.events.push(Event {
                    kind: EventKind::Delete,
                    revision,
                    kv: KeyValue {
                        key: k.clone(),
                        value: String::new(),
                        create_revision: old.create_revision,
                        mod_revision: revision,
                        version: 0,
                        lease: 0,
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
    struct Map(BTreeMap<String, KeyValue>, BTreeMap<u64, Lease>);

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
        fn lease(&self, id: u64) -> Result<Option<Lease>, String> {
            Ok(self.1.get(&id).cloned())
        }
        fn lease_keys(&self, id: u64) -> Result<Vec<String>, String> {
            Ok(self
                .0
                .values()
                .filter(|kv| kv.lease == id)
                .map(|kv| kv.key.clone())
                .collect())
        }
    }

    fn commit(base: &mut Map, cmds: &[(Command, u64)]) -> Vec<CommandResult> {
        let mut a = Applier::new(&*base, 0);
        let results: Vec<_> = cmds.iter().map(|(c, r)| a.apply(c, *r).unwrap()).collect();
        let writes = std::mem::take(&mut a.writes);
        let leases = std::mem::take(&mut a.leases);
        for (k, v) in writes {
            match v {
                Some(kv) => base.0.insert(k, kv),
                None => base.0.remove(&k),
            };
        }
        for (id, l) in leases {
            match l {
                Some(l) => base.1.insert(id, l),
                None => base.1.remove(&id),
            };
        }
        results
    }

    fn put(k: &str, v: &str) -> Command {
        Command::put(k, v)
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
                lease: 0,
            }],
            failure: vec![Op::Put {
                key: "lost".into(),
                value: "1".into(),
                lease: 0,
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
                lease: 0,
            }],
            failure: vec![],
        };
        assert!(commit(&mut m, &[(create_if_absent.clone(), 13)])[0].succeeded);
        assert!(!commit(&mut m, &[(create_if_absent, 14)])[0].succeeded);
    }

    #[test]
    fn revoking_a_lease_deletes_its_keys_and_only_its_keys() {
        let mut m = Map::default();
        let leased = |k: &str, lease| Command::Put {
            key: k.into(),
            value: "v".into(),
            lease,
        };
        let r = commit(&mut m, &[(Command::LeaseGrant { ttl_secs: 5 }, 3)]);
        assert!(r[0].refused.is_none());
        assert_eq!(m.1[&3].ttl_secs, 5);
        // A put naming a missing lease changes nothing, alone or in a transaction.
        let r = commit(&mut m, &[(leased("/x", 99), 4)]);
        assert!(r[0].refused.as_deref().unwrap().contains("99"));
        let txn = Command::Txn {
            compare: vec![],
            success: vec![
                Op::Put {
                    key: "/y".into(),
                    value: "v".into(),
                    lease: 0,
                },
                Op::Put {
                    key: "/z".into(),
                    value: "v".into(),
                    lease: 99,
                },
            ],
            failure: vec![],
        };
        assert!(commit(&mut m, &[(txn, 5)])[0].refused.is_some());
        assert!(m.0.is_empty());
        // Attach two keys in the same batch as the grant's successor; move one away.
        commit(
            &mut m,
            &[
                (leased("/a", 3), 6),
                (leased("/b", 3), 7),
                (put("/c", "plain"), 8),
                (leased("/b", 0), 9),
            ],
        );
        assert_eq!(m.0["/a"].lease, 3);
        assert_eq!(m.0["/b"].lease, 0);
        let r = commit(&mut m, &[(Command::LeaseRevoke { id: 3 }, 10)]);
        assert_eq!(r[0].deleted, 1);
        assert_eq!(m.0.keys().collect::<Vec<_>>(), vec!["/b", "/c"]);
        assert!(m.1.is_empty());
        // Revoking again is refused, not an error.
        assert!(commit(&mut m, &[(Command::LeaseRevoke { id: 3 }, 11)])[0]
            .refused
            .is_some());
    }

    #[test]
    fn lease_index_overlay_sees_attach_and_revoke_in_one_batch() {
        let mut m = Map::default();
        let mut a = Applier::new(&m, 0);
        a.apply(&Command::LeaseGrant { ttl_secs: 1 }, 1).unwrap();
        a.apply(
            &Command::Put {
                key: "k".into(),
                value: "v".into(),
                lease: 1,
            },
            2,
        )
        .unwrap();
        let r = a.apply(&Command::LeaseRevoke { id: 1 }, 3).unwrap();
        assert_eq!(r.deleted, 1);
        assert_eq!(a.writes["k"], None);
        assert_eq!(a.leases[&1], None);
        m.0.clear();
    }

    #[test]
    fn compaction_never_passes_its_own_revision() {
        let m = Map::default();
        let mut a = Applier::new(&m, 0);
        a.apply(&Command::Compact { revision: 50 }, 10).unwrap();
        assert_eq!(a.compact, Some(10));
        a.apply(&Command::Compact { revision: 5 }, 11).unwrap();
        assert_eq!(a.compact, Some(10));
    }

    #[test]
    fn a_batch_gives_each_command_its_own_revision_and_result() {
        let m = Map::default();
        let mut a = Applier::new(&m, 41);
        let r = a
            .apply_next(&Command::Batch {
                cmds: vec![
                    put("a", "1"),
                    Command::Put {
                        key: "b".into(),
                        value: "2".into(),
                        lease: 7,
                    },
                    put("a", "3"),
                ],
            })
            .unwrap();
        let revs: Vec<u64> = r.batch.iter().map(|x| x.revision).collect();
        assert_eq!(revs, vec![42, 43, 44]);
        assert!(r.batch[1].refused.is_some(), "no lease 7: refused alone");
        assert_eq!(r.batch[2].prev.as_ref().unwrap().value, "1");
        assert_eq!(a.writes["a"].as_ref().unwrap().mod_revision, 44);
        assert!(!a.writes.contains_key("b"));
        assert_eq!(a.revision, 44);
        // Every command takes a revision, even one that changed nothing.
        let r = a.apply_next(&put("c", "x")).unwrap();
        assert_eq!(r.revision, 45);
    }
}
