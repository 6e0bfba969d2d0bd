//! What a session does beyond one shard: answers of its own (logical database names),
//! `SET` on every backend connection, DDL and every-shard writes on all shards, and
//! SELECTs scattered over shards and merged.

use super::*;

impl Session {
    /// Answers what only the proxy knows: the logical database names.
    pub(super) async fn local(&mut self, what: sql::Local, topo: &Topology) -> Reply {
        let (column, rows): (&str, Vec<Option<String>>) = match what {
            sql::Local::Database => (
                "DATABASE()",
                vec![self
                    .db
                    .as_ref()
                    .and_then(|d| topo.databases.get(d))
                    .map(|d| d.name.clone())],
            ),
            sql::Local::ShowDatabases => {
                let mut names: Vec<String> = topo
                    .users
                    .get(&self.user)
                    .map(|a| {
                        a.databases
                            .iter()
                            .filter_map(|d| topo.databases.get(d).map(|d| d.name.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort();
                ("Database", names.into_iter().map(Some).collect())
            }
        };
        let mut out = Vec::new();
        let mut seq = wire::frame(&mut out, 1, &[1]);
        seq = wire::frame(&mut out, seq, &wire::column_def(column));
        seq = wire::frame(&mut out, seq, &wire::eof_packet(self.status()));
        for r in rows {
            let mut p = Vec::new();
            match r {
                Some(v) => wire::put_lenenc_str(&mut p, v.as_bytes()),
                None => p.push(0xFB),
            }
            seq = wire::frame(&mut out, seq, &p);
        }
        wire::frame(&mut out, seq, &wire::eof_packet(self.status()));
        self.wr.write_all(&out).await?;
        self.flush().await
    }

    pub(super) async fn session_set(&mut self, text: &str, topo: &Topology) -> Reply {
        let lower = text.to_ascii_lowercase();
        if lower.contains("tessera_read_your_writes") {
            self.read_your_writes =
                !(lower.contains("= 0") || lower.contains("=0") || lower.contains("off"));
            return self.ok(1).await;
        }
        // Apply to every held connection; check it on one shard when none is held.
        let mut p = vec![com::QUERY];
        p.extend_from_slice(text.as_bytes());
        let mut pools: Vec<Arc<Pool>> = self.held.values().map(|h| h.pool.clone()).collect();
        if pools.is_empty() {
            if let Some(s) = self
                .default_database(topo)
                .and_then(|d| d.shards.values().next().cloned())
            {
                pools.push(s.primary.clone());
            }
        }
        for pool in pools {
            let r = match self.conn(&pool).await {
                Ok(h) => h.lease.conn.collect(&p).await,
                Err(m) => return self.error(1, er::UNAVAILABLE, &m).await,
            };
            match r {
                Ok(Collected::Ok(_)) => {}
                Ok(Collected::Err(e)) => {
                    self.send(1, &e).await?;
                    return self.flush().await;
                }
                Ok(_) => {}
                Err(e) => {
                    self.drop_conn(&pool);
                    return self.error(1, er::UNAVAILABLE, &e.to_string()).await;
                }
            }
        }
        self.sets.push(text.to_string());
        self.ok(1).await
    }

    /// DDL on every shard's primary, one after another; the first error stops it.
    pub(super) async fn ddl(&mut self, db: &Database, payload: &[u8], a: &Analysis) -> Reply {
        if self.tx_unit.is_some() {
            return self
                .error(
                    1,
                    er::UNKNOWN,
                    "DDL inside a transaction pinned to a shard is not allowed; COMMIT first",
                )
                .await;
        }
        let shards: Vec<Arc<ShardRoute>> = match &a.hint.unit {
            Some(u) => db.shards.get(u).cloned().into_iter().collect(),
            None => db.shards.values().cloned().collect(),
        };
        self.run_everywhere(&shards, payload).await
    }

    pub(super) async fn broadcast(&mut self, db: &Database, payload: &[u8]) -> Reply {
        let shards: Vec<Arc<ShardRoute>> = db.shards.values().cloned().collect();
        self.run_everywhere(&shards, payload).await
    }

    pub(super) async fn run_everywhere(
        &mut self,
        shards: &[Arc<ShardRoute>],
        payload: &[u8],
    ) -> Reply {
        let mut affected = 0u64;
        for s in shards {
            let pool = s.primary.clone();
            let r = match self.conn(&pool).await {
                Ok(h) => h.lease.conn.collect(payload).await,
                Err(m) => return self.shard_down(s, &pool, &m).await,
            };
            match r {
                Ok(Collected::Ok(p)) => affected += wire::ok_counts(&p).map(|c| c.0).unwrap_or(0),
                Ok(Collected::Err(e)) => {
                    let (code, msg) = wire::parse_err(&e).unwrap_or((1105, String::new()));
                    let m = format!("on shard {}: {msg}", s.unit);
                    self.send(1, &wire::err_packet((code, "HY000"), &m)).await?;
                    return self.flush().await;
                }
                Ok(Collected::Rows { .. }) => {}
                Err(e) => {
                    self.drop_conn(&pool);
                    return self.shard_down(s, &pool, &e.to_string()).await;
                }
            }
        }
        let p = wire::ok_packet(affected, 0, self.status(), "");
        self.send(1, &p).await?;
        self.flush().await
    }

    /// A SELECT on every shard in `units`, merged: ORDER BY and LIMIT/OFFSET applied to
    /// the union as one database would. A prepared statement's EXECUTE runs there as the
    /// plan's shard statement, prepared on each connection, and its binary rows are
    /// merged the same way.
    pub(super) async fn scatter(
        &mut self,
        db: &Database,
        units: &[String],
        plan: &sql::Merge,
        how: Scatter<'_>,
    ) -> Reply {
        let mut results = Vec::new();
        // One shard after another on this session's connections (held for reuse); the
        // shards answer in parallel below when the session holds no state to replay.
        let mut pools = Vec::new();
        for u in units {
            let Some(shard) = db.shards.get(u).cloned() else {
                continue;
            };
            // Units that share one physical database are asked once.
            if pools.iter().any(|(s, _): &(Arc<ShardRoute>, Arc<Pool>)| {
                Arc::ptr_eq(&s.primary, &shard.primary)
            }) {
                continue;
            }
            let pool = self.pick(
                &shard,
                self.read_your_writes && self.wrote,
                db.max_replica_lag_ms,
            );
            if let Err(m) = self.conn(&pool).await {
                return self.shard_down(&shard, &pool, &m).await;
            }
            pools.push((shard, pool));
        }
        // What each connection is sent: packets without an answer (long data), then the
        // statement.
        let mut sends: Vec<(Vec<Vec<u8>>, Vec<u8>)> = Vec::with_capacity(pools.len());
        match how {
            Scatter::Text => {
                let mut p = vec![com::QUERY];
                p.extend_from_slice(plan.shard_sql.as_bytes());
                sends.resize(pools.len(), (Vec::new(), p));
            }
            Scatter::Exec { id, payload } => {
                let Some(st) = self.stmts.get_mut(&id) else {
                    return self
                        .error(1, er::UNKNOWN_STMT_HANDLER, "Unknown prepared statement")
                        .await;
                };
                let long_data = std::mem::take(&mut st.long_data);
                let (nparams, types) = (st.params as usize, st.types.clone());
                for (shard, pool) in &pools {
                    let k = key(pool);
                    let Some(held) = self.held.get_mut(&k) else {
                        continue;
                    };
                    let backend_id = match held.scatter_stmts.get(&id) {
                        Some(b) => *b,
                        None => {
                            let mut p = vec![com::STMT_PREPARE];
                            p.extend_from_slice(plan.shard_sql.as_bytes());
                            match held.lease.conn.prepare(&p).await {
                                Ok(Ok((b, packets))) => {
                                    let (_, _, n) =
                                        prepared::parse_prepare_ok(&packets[0]).unwrap_or_default();
                                    if n as usize != nparams {
                                        // Never run it with its parameters misplaced.
                                        let close = prepared::with_stmt_id(
                                            &[com::STMT_CLOSE, 0, 0, 0, 0],
                                            b,
                                        );
                                        let _ = held.lease.conn.send(&close).await;
                                        let m = "This prepared SELECT cannot be scattered across shards as written (its parameters would move); bind one shard key value";
                                        return self.error(1, er::NOT_SUPPORTED_YET, m).await;
                                    }
                                    held.scatter_stmts.insert(id, b);
                                    b
                                }
                                Ok(Err(err)) => {
                                    self.send(1, &err).await?;
                                    return self.flush().await;
                                }
                                Err(e) => {
                                    let pool = pool.clone();
                                    self.drop_conn(&pool);
                                    return self.shard_down(shard, &pool, &e.to_string()).await;
                                }
                            }
                        }
                    };
                    let chunks = long_data
                        .iter()
                        .map(|c| prepared::with_stmt_id(c, backend_id))
                        .collect();
                    let p = prepared::exec_for_backend(payload, backend_id, nparams, &types, true);
                    sends.push((chunks, p));
                }
            }
        }
        let futs = pools.iter().zip(sends).map(|((_, pool), (chunks, p))| {
            let key = key(pool);
            let held = self.held.remove(&key);
            async move {
                let mut held = held.expect("held above"); // ok: conn() put each pool there, once
                let mut r = Ok(());
                for c in &chunks {
                    r = held
                        .lease
                        .conn
                        .send(c)
                        .await
                        .map_err(|e| BackendError::Lost(e.to_string()));
                    if r.is_err() {
                        break;
                    }
                }
                let r = match r {
                    Ok(()) => held.lease.conn.collect(&p).await,
                    Err(e) => Err(e),
                };
                (key, held, r)
            }
        });
        let answers = futures_util::future::join_all(futs).await;
        let mut failed = None;
        for ((shard, _), (key, held, r)) in pools.iter().zip(answers) {
            let healthy = held.lease.conn.healthy;
            if healthy {
                self.held.insert(key, held);
            } else {
                held.pool.discard(held.lease);
            }
            match r {
                Ok(c) => results.push(c),
                Err(e) => failed = Some((shard.clone(), held_addr(&pools, key), e.to_string())),
            }
        }
        if let Some((shard, addr, e)) = failed {
            let m = format!(
                "Shard {} ({addr}) failed during a scattered SELECT: {e}",
                shard.unit
            );
            return self.error(1, er::UNAVAILABLE, &m).await;
        }
        let mut columns = None;
        let mut rows = Vec::new();
        for c in results {
            match c {
                Collected::Err(e) => {
                    self.send(1, &e).await?;
                    return self.flush().await;
                }
                Collected::Ok(_) => {}
                Collected::Rows {
                    columns: cols,
                    rows: r,
                    ..
                } => {
                    columns.get_or_insert(cols);
                    rows.extend(r);
                }
            }
        }
        let Some(columns) = columns else {
            return self.ok(1).await;
        };
        let encoding = match how {
            Scatter::Text => merge::Rows::Text,
            Scatter::Exec { .. } => merge::Rows::Binary,
        };
        let rows = match merge::merge(&columns, rows, plan, encoding) {
            Ok(r) => r,
            Err(m) => return self.error(1, er::UNKNOWN, &m).await,
        };
        let columns = &columns[..columns.len().saturating_sub(plan.hidden)];
        let mut out = Vec::with_capacity(rows.iter().map(|r| r.len() + 4).sum::<usize>() + 256);
        let mut cnt = Vec::new();
        wire::put_lenenc_int(&mut cnt, columns.len() as u64);
        let mut seq = wire::frame(&mut out, 1, &cnt);
        for c in columns {
            seq = wire::frame(&mut out, seq, c);
        }
        seq = wire::frame(&mut out, seq, &wire::eof_packet(self.status()));
        for r in &rows {
            seq = wire::frame(&mut out, seq, r);
        }
        wire::frame(&mut out, seq, &wire::eof_packet(self.status()));
        self.wr.write_all(&out).await?;
        self.flush().await
    }
}
