//! Where a statement goes: the hint, the analysis and the session's state (transaction,
//! read-your-writes) choose the shard(s) and whether the primary must answer.

use super::*;

impl Session {
    pub(super) async fn route(
        &mut self,
        payload: &[u8],
        text: &str,
        analysis: Result<Analysis, (ParseFailure, sql::Hint)>,
    ) -> Reply {
        let topo = self.shared.topology.load_full();
        let a = match analysis {
            Ok(a) => a,
            Err((ParseFailure::Empty, _)) => {
                return self.error(1, (1065, "42000"), "Query was empty").await
            }
            Err((ParseFailure::Multi, _)) => {
                return self
                    .error(1, er::NOT_SUPPORTED_YET, "tessera dbproxy routes one statement at a time: send the statements separately")
                    .await
            }
            Err((ParseFailure::Syntax(e), hint)) => {
                // Route what cannot be parsed only where its target is certain.
                let db = self.default_database(&topo);
                let shard = match (&hint.unit, &db) {
                    (Some(u), Some(d)) => d.shards.get(u).cloned(),
                    (None, Some(d)) if d.shards.len() == 1 => d.shards.values().next().cloned(),
                    _ => None,
                };
                return match shard {
                    Some(s) => self.single(&s, true, Cmd::Text(payload)).await,
                    None => {
                        self.error(1, er::PARSE, &format!(
                            "tessera dbproxy cannot parse this statement to route it ({e}); add /* tessera: shard=UNIT */ to send it to one shard"
                        ))
                        .await
                    }
                };
            }
        };
        match &a.class {
            Class::Use(name) => return self.use_db(&name.clone()).await,
            Class::Begin => {
                if self.tx_unit.is_some() {
                    // MySQL commits an open transaction at BEGIN.
                    if let Err(m) = self.finish_tx("COMMIT").await {
                        return self.error(1, er::UNKNOWN, &m).await;
                    }
                }
                self.in_tx = true;
                return self.ok(1).await;
            }
            Class::Commit | Class::Rollback => {
                let word = if a.class == Class::Commit {
                    "COMMIT"
                } else {
                    "ROLLBACK"
                };
                let r = self.finish_tx(word).await;
                self.in_tx = !self.autocommit;
                return match r {
                    Ok(()) => self.ok(1).await,
                    Err(m) => self.error(1, er::UNKNOWN, &m).await,
                };
            }
            Class::Autocommit(on) => {
                let on = *on;
                if on && self.tx_unit.is_some() {
                    if let Err(m) = self.finish_tx("COMMIT").await {
                        return self.error(1, er::UNKNOWN, &m).await;
                    }
                }
                self.autocommit = on;
                self.in_tx = !on;
                return self.ok(1).await;
            }
            Class::Session => return self.session_set(text, &topo).await,
            Class::Local(what) => return self.local(*what, &topo).await,
            _ => {}
        }
        self.dispatch(Cmd::Text(payload), &a, None, &topo).await
    }

    /// Routes a statement (text, or an EXECUTE with its parameter values) to its shards.
    pub(super) async fn dispatch(
        &mut self,
        cmd: Cmd<'_>,
        a: &Analysis,
        params: Option<&[Option<String>]>,
        topo: &Topology,
    ) -> Reply {
        let exec = !matches!(cmd, Cmd::Text(_));
        let payload = match cmd {
            Cmd::Text(p) => p,
            Cmd::Exec { payload, .. } | Cmd::Fetch { payload, .. } => payload,
        };
        let Some(db) = self.default_database(topo) else {
            return if a.tables.is_empty() {
                self.error(1, er::NO_DB, "No database selected and this user has none; connect with a database the proxy serves")
                    .await
            } else {
                self.error(1, er::NO_DB, "No database selected").await
            };
        };
        if a.class == Class::Ddl {
            if exec {
                return self.error(1, er::NOT_SUPPORTED_YET, "DDL cannot be prepared through tessera dbproxy; send it as a plain statement").await;
            }
            return self.ddl(&db, payload, a).await;
        }
        // Which shards does the statement touch?
        let units: Vec<String> = match self.target_units(topo, &db, a, params) {
            Ok(u) => u,
            Err(m) => return self.error(1, er::UNKNOWN, &m).await,
        };
        let write = a.class != Class::Read;
        if let Some(pinned) = &self.tx_unit {
            if units.len() != 1 || &units[0] != pinned {
                let m = format!(
                    "This transaction is pinned to shard {pinned} (unit); the statement needs {}. Finish the transaction first; it is unchanged.",
                    units.join(", ")
                );
                return self.error(1, er::UNKNOWN, &m).await;
            }
        }
        if units.len() == 1 {
            let Some(shard) = db.shards.get(&units[0]).cloned() else {
                let m = format!("Database '{}' has no shard for unit {}", db.name, units[0]);
                return self.error(1, er::UNKNOWN, &m).await;
            };
            let primary =
                write || self.in_tx || a.hint.primary || (self.read_your_writes && self.wrote);
            let class = class_label(&a.class);
            self.shared
                .metrics
                .statements
                .with_label_values(&[&db.name, &shard.unit, class])
                .inc();
            return self.single(&shard, primary, cmd).await;
        }
        if exec && write {
            let m = format!(
                "This prepared statement's parameters reach shards {}; a prepared write runs on one shard (bind one shard key value)",
                units.join(", ")
            );
            return self.error(1, er::NOT_SUPPORTED_YET, &m).await;
        }
        // Several shards.
        let (_, kinds) = db.table_kinds(&a.tables);
        let every = !kinds.is_empty() && kinds.iter().all(|k| *k == TableType::EveryShard);
        if write {
            if every && a.class == Class::Write {
                if self.in_tx {
                    let m = "A write to tables that exist in every shard runs as its own XA transaction over all shards, so it cannot run inside a transaction; COMMIT first (the transaction is unchanged)";
                    return self.error(1, er::UNKNOWN, m).await;
                }
                return self.broadcast(&db, payload).await;
            }
            let m = format!(
                "This {} spans shards {} of database '{}': writes must name one shard key value (or IN values of one shard), or carry /* tessera: shard=UNIT */",
                if a.class == Class::Write { "write" } else { "statement" },
                units.join(", "),
                db.name
            );
            return self.error(1, er::UNKNOWN, &m).await;
        }
        if self.in_tx {
            let m = "A statement that spans shards cannot run inside a transaction (it is pinned to one shard); the transaction is unchanged";
            return self.error(1, er::UNKNOWN, m).await;
        }
        match &a.merge {
            Ok(plan) => {
                let plan = plan.clone();
                for u in &units {
                    self.shared
                        .metrics
                        .statements
                        .with_label_values(&[&db.name, u, "scatter"])
                        .inc();
                }
                let how = match (cmd, params) {
                    (Cmd::Exec { id, payload }, Some(values)) => Scatter::Exec {
                        id,
                        payload,
                        values,
                    },
                    _ => Scatter::Text,
                };
                self.scatter(&db, &units, &plan, how).await
            }
            Err(why) => {
                let m = format!(
                    "This SELECT has no shard key, so it would run on shards {}; {why}. Add the shard key to WHERE or /* tessera: shard=UNIT */",
                    units.join(", ")
                );
                self.error(1, er::NOT_SUPPORTED_YET, &m).await
            }
        }
    }

    /// The units a statement's rows live in.
    pub(super) fn target_units(
        &self,
        topo: &Topology,
        db: &Database,
        a: &Analysis,
        params: Option<&[Option<String>]>,
    ) -> Result<Vec<String>, String> {
        if let Some(u) = &a.hint.unit {
            if !db.shards.contains_key(u) {
                return Err(format!(
                    "The hint names shard {u}, which database '{}' does not have (it has {})",
                    db.name,
                    db.shards.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            return Ok(vec![u.clone()]);
        }
        let all: Vec<String> = db.shards.keys().cloned().collect();
        if all.len() == 1 {
            // An unsharded database: everything is in its one shard.
            return Ok(all);
        }
        let here = || -> Vec<String> {
            match &self.tx_unit {
                Some(u) => vec![u.clone()],
                None => all.iter().take(1).cloned().collect(),
            }
        };
        if a.tables.is_empty() {
            return Ok(here());
        }
        let (keys, kinds) = db.table_kinds(&a.tables);
        let global = kinds.contains(&TableType::Global);
        let sharded = kinds.contains(&TableType::Sharded);
        if global && sharded {
            return Err("A statement cannot mix global tables with sharded ones (they live in different shards)".into());
        }
        if global {
            let g = topo
                .global_units
                .iter()
                .find(|u| db.shards.contains_key(*u))
                .ok_or_else(|| {
                    format!(
                        "Database '{}' has no shard in a GZone unit for its global tables",
                        db.name
                    )
                })?;
            return Ok(vec![g.clone()]);
        }
        if !sharded {
            // Only every-shard tables: any one shard reads; writes go to all.
            return Ok(if a.class == Class::Read { here() } else { all });
        }
        match a.key_values(&keys) {
            Some(values) => {
                // Parameters (`?` bound at EXECUTE): their values, or every shard when
                // they are not known yet (PREPARE).
                let mut bound = BTreeSet::new();
                for v in values {
                    match prepared::marker_index(&v) {
                        None => {
                            bound.insert(v);
                        }
                        Some(i) => match params {
                            None => return Ok(all),
                            Some(p) => match p.get(i).cloned().flatten() {
                                Some(x) => {
                                    bound.insert(x);
                                }
                                None => {
                                    return Err(format!(
                                        "The shard key is bound to parameter {} whose value is NULL or not a number or string",
                                        i + 1
                                    ))
                                }
                            },
                        },
                    }
                }
                let mut units = BTreeSet::new();
                for v in &bound {
                    let u = topo.unit_of(v).ok_or_else(|| {
                        format!("No unit owns the slot of shard key value {v}: the shard map does not cover it")
                    })?;
                    units.insert(u.to_string());
                }
                Ok(units.into_iter().collect())
            }
            None => Ok(all),
        }
    }
}
