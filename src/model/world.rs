//! A consistent set of resources and the rules that span objects.
//!
//! A change (one PUT, one DELETE, or a whole `apply`) is checked on the world as it
//! would be afterwards: every reference of a changed object resolves; nothing left
//! names a deleted object; no slot is owned by two RZones; every shard map sends each
//! slot to the RZone that owns it. Only violations that involve a changed object are
//! reported, so an unrelated change is never blocked by old state.

use super::kinds::Kind;
use super::specs::{self, UnitType};
use super::{Invalid, Resource};
use std::collections::{BTreeMap, BTreeSet};

pub type Key = (Kind, String);

#[derive(Clone, Debug, Default)]
pub struct World {
    pub objects: BTreeMap<Key, Resource>,
}

/// One change to the world.
#[derive(Clone, Debug)]
pub enum Change {
    Put(Kind, Resource),
    Delete(Kind, String),
}

impl Change {
    pub fn key(&self) -> Key {
        match self {
            Change::Put(k, r) => (*k, r.metadata.name.clone()),
            Change::Delete(k, n) => (*k, n.clone()),
        }
    }
}

impl World {
    pub fn get(&self, kind: Kind, name: &str) -> Option<&Resource> {
        self.objects.get(&(kind, name.to_string()))
    }

    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = &Resource> {
        self.objects
            .range((kind, String::new())..)
            .take_while(move |((k, _), _)| *k == kind)
            .map(|(_, r)| r)
    }

    /// The world after `changes` (later changes to the same object win).
    pub fn with(&self, changes: &[Change]) -> World {
        let mut w = self.clone();
        for c in changes {
            match c {
                Change::Put(k, r) => {
                    w.objects.insert((*k, r.metadata.name.clone()), r.clone());
                }
                Change::Delete(k, n) => {
                    w.objects.remove(&(*k, n.clone()));
                }
            }
        }
        w
    }

    /// Checks `changes` against this world (each object is assumed valid on its own).
    /// The error names the object and field at fault.
    pub fn check(&self, changes: &[Change]) -> Result<(), (Key, Invalid)> {
        let after = self.with(changes);
        let changed: BTreeSet<Key> = changes.iter().map(Change::key).collect();
        // References of changed objects resolve, with the right shape.
        for c in changes {
            let Change::Put(kind, r) = c else { continue };
            let key = (*kind, r.metadata.name.clone());
            for re in specs::references(*kind, &r.spec) {
                let Some(target) = after.get(re.kind, &re.name) else {
                    return Err((
                        key,
                        Invalid::new(
                            re.field,
                            format!(
                                "{} `{}` does not exist",
                                re.kind.singular().to_ascii_lowercase(),
                                re.name
                            ),
                        ),
                    ));
                };
                if *kind == Kind::ShardMap
                    && specs::unit_type(&target.spec) != Some(UnitType::RZone)
                {
                    return Err((
                        key,
                        Invalid::new(
                            re.field,
                            format!("unit `{}` is not an RZone; only RZones own slots", re.name),
                        ),
                    ));
                }
            }
        }
        // Nothing left refers to a deleted object.
        for c in changes {
            let Change::Delete(kind, name) = c else {
                continue;
            };
            if after.get(*kind, name).is_some() {
                continue;
            }
            for ((rk, rn), r) in &after.objects {
                for re in specs::references(*rk, &r.spec) {
                    if re.kind == *kind && re.name == *name {
                        return Err((
                            (*kind, name.clone()),
                            Invalid::conflict(
                                "metadata.name",
                                format!(
                                    "{} `{name}` is still referenced by {} `{rn}` ({}); change or delete that first",
                                    kind.singular().to_ascii_lowercase(),
                                    rk.singular().to_ascii_lowercase(),
                                    re.field
                                ),
                            ),
                        ));
                    }
                }
            }
        }
        // No slot owned by two RZones.
        let mut owner: BTreeMap<u8, &str> = BTreeMap::new();
        let mut units: Vec<&Resource> = after.of_kind(Kind::Unit).collect();
        // Changed units last, so the error is reported on them.
        units.sort_by_key(|u| changed.contains(&(Kind::Unit, u.metadata.name.clone())));
        for u in units {
            for slot in specs::unit_slots(&u.spec) {
                if let Some(prev) = owner.insert(slot, &u.metadata.name) {
                    let involved = [prev, u.metadata.name.as_str()]
                        .iter()
                        .any(|n| changed.contains(&(Kind::Unit, n.to_string())));
                    if involved {
                        return Err((
                            (Kind::Unit, u.metadata.name.clone()),
                            Invalid::conflict(
                                "spec.slots",
                                format!("slot {slot:02} is already owned by RZone `{prev}`"),
                            ),
                        ));
                    }
                }
            }
        }
        // Shard maps agree with slot ownership.
        for m in after.of_kind(Kind::ShardMap) {
            let Some(table) = specs::shard_table(&m.spec) else {
                continue;
            };
            let mkey = (Kind::ShardMap, m.metadata.name.clone());
            for (slot, unit) in table {
                let involved = changed.contains(&mkey)
                    || changed.contains(&(Kind::Unit, unit.clone()))
                    || owner
                        .get(&slot)
                        .is_some_and(|o| changed.contains(&(Kind::Unit, o.to_string())));
                if !involved {
                    continue;
                }
                match owner.get(&slot) {
                    Some(o) if *o == unit => {}
                    other => {
                        let why = match other {
                            Some(o) => format!("slot {slot:02} is owned by RZone `{o}`"),
                            None => format!("slot {slot:02} is owned by no RZone"),
                        };
                        return Err((
                            mkey,
                            Invalid::conflict(
                                "spec.slots",
                                format!(
                                    "shard map `{}` sends slot {slot:02} to `{unit}`, but {why}; change the units' slots and the shard map together (one apply)",
                                    m.metadata.name
                                ),
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(kind: Kind, name: &str, spec: serde_json::Value) -> Change {
        Change::Put(kind, Resource::new(kind, name, spec))
    }

    fn base() -> World {
        World::default().with(&[
            obj(Kind::Region, "hz", json!({})),
            obj(Kind::Zone, "hz-a", json!({"region": "hz"})),
            obj(Kind::Zone, "hz-b", json!({"region": "hz"})),
            obj(
                Kind::Unit,
                "rz00",
                json!({"type": "RZone", "zone": "hz-a", "standbyZone": "hz-b", "slots": ["00-49"]}),
            ),
            obj(
                Kind::Unit,
                "rz01",
                json!({"type": "RZone", "zone": "hz-b", "slots": ["50-99"]}),
            ),
            obj(
                Kind::ShardMap,
                "default",
                json!({"slots": {"00-49": "rz00", "50-99": "rz01"}}),
            ),
        ])
    }

    #[test]
    fn references_must_exist() {
        let w = base();
        let e = w
            .check(&[obj(Kind::Zone, "x", json!({"region": "nowhere"}))])
            .unwrap_err();
        assert_eq!(e.1.field, "spec.region");
        // Created together in one change: fine.
        w.check(&[
            obj(Kind::Region, "sh", json!({})),
            obj(Kind::Zone, "sh-a", json!({"region": "sh"})),
        ])
        .unwrap();
    }

    #[test]
    fn nothing_deleted_while_referenced() {
        let w = base();
        let e = w
            .check(&[Change::Delete(Kind::Zone, "hz-b".into())])
            .unwrap_err();
        assert!(e.1.conflict);
        assert!(
            e.1.message.contains("unit `rz00`") || e.1.message.contains("unit `rz01`"),
            "{}",
            e.1
        );
        w.check(&[
            Change::Delete(Kind::ShardMap, "default".into()),
            Change::Delete(Kind::Unit, "rz01".into()),
        ])
        .unwrap();
    }

    #[test]
    fn slots_have_one_owner_and_maps_agree() {
        let w = base();
        let e = w
            .check(&[obj(
                Kind::Unit,
                "rz02",
                json!({"type": "RZone", "zone": "hz-a", "slots": ["40-45"]}),
            )])
            .unwrap_err();
        assert!(e.1.conflict && e.1.message.contains("rz00"), "{}", e.1);
        // Moving slots between units needs the map to follow in the same change.
        let move_units = [
            obj(
                Kind::Unit,
                "rz00",
                json!({"type": "RZone", "zone": "hz-a", "slots": ["00-39"]}),
            ),
            obj(
                Kind::Unit,
                "rz01",
                json!({"type": "RZone", "zone": "hz-b", "slots": ["40-99"]}),
            ),
        ];
        let e = w.check(&move_units).unwrap_err();
        assert_eq!(e.0, (Kind::ShardMap, "default".to_string()));
        let mut all = move_units.to_vec();
        all.push(obj(
            Kind::ShardMap,
            "default",
            json!({"slots": {"00-39": "rz00", "40-99": "rz01"}}),
        ));
        w.check(&all).unwrap();
        // Maps name RZones only.
        let w2 = w.with(&[obj(
            Kind::Unit,
            "gz00",
            json!({"type": "GZone", "zone": "hz-a"}),
        )]);
        let e = w2
            .check(&[obj(
                Kind::ShardMap,
                "x",
                json!({"slots": {"00-99": "gz00"}}),
            )])
            .unwrap_err();
        assert!(e.1.message.contains("not an RZone"));
    }
}
