//! The proxy's view of the estate, rebuilt from the control plane's `zones units
//! shardmaps datasources` on every change: logical databases, their shards (one per
//! unit), each shard's primary and replicas as connection pools, the table rules, the
//! slot → unit map, and the proxy users.
//!
//! Pools outlive topologies: [`Pools`] hands the same pool to every topology that names
//! the same server, database and account, so a change elsewhere in the estate does not
//! drop connections.

use super::backend::{Pool, Target, TlsPolicy};
use crate::api::feed::Inputs;
use crate::model::specs::{DataSourceSpec, ProxyUser, ShardMapSpec, TableType, UnitSpec, UnitType};
use crate::model::{Kind, Resource};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const INPUT_KINDS: [Kind; 4] = [Kind::Zone, Kind::Unit, Kind::ShardMap, Kind::DataSource];

#[derive(Clone, Debug)]
pub struct PoolSettings {
    /// The IP backend connections leave from (`dbproxy.backend_source_ip`).
    pub source: Option<std::net::IpAddr>,
    pub max_per_server: usize,
    pub connect_timeout: Duration,
    pub wait: Duration,
}

/// Every pool ever built, by target; pools no topology names are closed on install.
pub struct Pools {
    settings: PoolSettings,
    pools: Mutex<HashMap<Target, Arc<Pool>>>,
}

impl Pools {
    pub fn new(settings: PoolSettings) -> Pools {
        Pools {
            settings,
            pools: Mutex::new(HashMap::new()),
        }
    }

    fn get(&self, target: Target) -> Arc<Pool> {
        let mut pools = self.pools.lock().unwrap_or_else(|e| e.into_inner());
        pools
            .entry(target.clone())
            .or_insert_with(|| {
                Arc::new(Pool::new(
                    target,
                    self.settings.max_per_server,
                    self.settings.connect_timeout,
                    self.settings.wait,
                ))
            })
            .clone()
    }

    /// Forgets pools that `topology` does not use.
    pub fn retain(&self, topology: &Topology) {
        let used: BTreeSet<*const Pool> = topology.all_pools().map(Arc::as_ptr).collect();
        self.pools
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, p| used.contains(&Arc::as_ptr(p)));
    }
}

pub struct ShardRoute {
    pub unit: String,
    pub primary: Arc<Pool>,
    pub replicas: Vec<Arc<Pool>>,
}

pub struct Database {
    /// The logical name clients use.
    pub name: String,
    /// The DataSource resource it comes from.
    pub datasource: String,
    pub shard_key: Option<String>,
    /// Table rules by lowercase name.
    pub tables: HashMap<String, (TableType, Option<String>)>,
    /// Shards by unit.
    pub shards: BTreeMap<String, Arc<ShardRoute>>,
    pub max_replica_lag_ms: u64,
    /// Promote a replica after the primary is unreachable this long (None: manual).
    pub failover_after: Option<Duration>,
}

impl Database {
    /// The shard-key columns (lowercase) of the sharded tables among `tables`, and
    /// whether any of them is not sharded (global / every-shard).
    pub fn table_kinds(&self, tables: &[String]) -> (BTreeSet<String>, Vec<TableType>) {
        let mut keys = BTreeSet::new();
        let mut kinds = Vec::new();
        for t in tables {
            match self.tables.get(t) {
                Some((TableType::Sharded, k)) => {
                    if let Some(k) = k.as_ref().or(self.shard_key.as_ref()) {
                        keys.insert(k.to_ascii_lowercase());
                    }
                    kinds.push(TableType::Sharded);
                }
                Some((kind, _)) => kinds.push(*kind),
                None => {
                    if let Some(k) = &self.shard_key {
                        keys.insert(k.to_ascii_lowercase());
                    }
                    kinds.push(TableType::Sharded);
                }
            }
        }
        (keys, kinds)
    }
}

pub struct ProxyAccount {
    pub password: String,
    /// Logical databases (lowercase) the account may use.
    pub databases: BTreeSet<String>,
}

#[derive(Default)]
pub struct Topology {
    pub revision: u64,
    /// Slot (0-99) → unit.
    pub slot_unit: Vec<Option<String>>,
    /// The GZone units (global tables live in their shard).
    pub global_units: Vec<String>,
    /// Logical databases by lowercase name.
    pub databases: HashMap<String, Arc<Database>>,
    pub users: HashMap<String, ProxyAccount>,
    /// Inputs skipped, with why (logged and shown on the admin listener).
    pub problems: Vec<String>,
}

impl Topology {
    pub fn all_pools(&self) -> impl Iterator<Item = &Arc<Pool>> {
        self.databases.values().flat_map(|d| {
            d.shards
                .values()
                .flat_map(|s| std::iter::once(&s.primary).chain(s.replicas.iter()))
        })
    }

    /// The unit owning a shard-key value.
    pub fn unit_of(&self, key: &str) -> Option<&str> {
        let slot = crate::model::slot::slot_of(key.as_bytes());
        self.slot_unit.get(slot as usize)?.as_deref()
    }
}

fn spec<T: serde::de::DeserializeOwned>(r: &Resource) -> Option<T> {
    serde_json::from_value(r.spec.clone()).ok()
}

pub fn compile(inputs: &Inputs, pools: &Pools) -> Topology {
    let mut t = Topology {
        revision: inputs.revision,
        ..Topology::default()
    };
    let units: BTreeMap<String, UnitSpec> = inputs
        .of_kind(Kind::Unit)
        .filter_map(|r| Some((r.metadata.name.clone(), spec(r)?)))
        .collect();
    let maps: Vec<(String, ShardMapSpec)> = inputs
        .of_kind(Kind::ShardMap)
        .filter_map(|r| Some((r.metadata.name.clone(), spec(r)?)))
        .collect();
    t.slot_unit = crate::model::slot::slot_units(&units, &maps);
    t.global_units = units
        .iter()
        .filter(|(_, u)| u.unit_type == UnitType::GZone)
        .map(|(n, _)| n.clone())
        .collect();
    for r in inputs.of_kind(Kind::DataSource) {
        let name = &r.metadata.name;
        let Some(ds) = spec::<DataSourceSpec>(r) else {
            t.problems
                .push(format!("datasource {name}: spec does not parse"));
            continue;
        };
        let logical = ds.database.to_ascii_lowercase();
        if t.databases.contains_key(&logical) {
            t.problems.push(format!(
                "datasource {name}: database `{}` is already served by another data source",
                ds.database
            ));
            continue;
        }
        let user = ds.user.clone().unwrap_or_default();
        let password = ds.password.clone().unwrap_or_default();
        let mut shards = BTreeMap::new();
        for s in &ds.shards {
            if !units.contains_key(&s.unit) {
                t.problems.push(format!(
                    "datasource {name}: unit `{}` does not exist; its shard is not served",
                    s.unit
                ));
                continue;
            }
            let db = s.database.clone().unwrap_or_else(|| ds.database.clone());
            let target = |addr: &str| Target {
                addr: addr.to_string(),
                source: pools.settings.source,
                database: db.clone(),
                user: user.clone(),
                password: password.clone(),
                tls: TlsPolicy {
                    mode: ds.tls.mode,
                    ca: ds.tls.ca.clone(),
                },
            };
            shards.insert(
                s.unit.clone(),
                Arc::new(ShardRoute {
                    unit: s.unit.clone(),
                    primary: pools.get(target(&s.primary)),
                    replicas: s.replicas.iter().map(|a| pools.get(target(a))).collect(),
                }),
            );
        }
        // Without proxy users, the backend account itself may log in to the proxy.
        let fallback = ProxyUser {
            name: user.clone(),
            password: password.clone(),
        };
        let accounts: &[ProxyUser] = if ds.proxy_users.is_empty() && !user.is_empty() {
            std::slice::from_ref(&fallback)
        } else {
            &ds.proxy_users
        };
        for u in accounts {
            let acct = t
                .users
                .entry(u.name.clone())
                .or_insert_with(|| ProxyAccount {
                    password: u.password.clone(),
                    databases: BTreeSet::new(),
                });
            if acct.password != u.password {
                t.problems.push(format!(
                    "datasource {name}: proxy user `{}` has another password in another data source; that one is used",
                    u.name
                ));
            }
            acct.databases.insert(logical.clone());
        }
        t.databases.insert(
            logical,
            Arc::new(Database {
                name: ds.database.clone(),
                datasource: name.clone(),
                shard_key: ds.shard_key.clone(),
                tables: ds
                    .tables
                    .iter()
                    .map(|tr| {
                        (
                            tr.name.to_ascii_lowercase(),
                            (tr.table_type, tr.shard_key.clone()),
                        )
                    })
                    .collect(),
                shards,
                max_replica_lag_ms: ds.max_replica_lag_ms as u64,
                failover_after: (ds.failover == crate::model::specs::FailoverMode::Auto)
                    .then(|| Duration::from_millis(ds.failover_after_ms as u64)),
            }),
        );
    }
    t
}
