//! What a session does beyond one shard: answers of its own (logical database names),
//! `SET` on every backend connection, DDL and every-shard writes on all shards, and
//! SELECTs scattered over shards and merged.

use super::*;

/// A COM_QUERY of `sql`.
fn query(sql: &str) -> Vec<u8> {
    wire::command(com::QUERY, sql)
}

/// Why an every-shard write did not commit.
enum TwoPhase {
    /// A shard refused it: its ERR (rewritten to name the shard), for the client.
    Refused(Vec<u8>),
    /// A shard could not be reached or its connection broke.
    Down(Arc<ShardRoute>, Arc<Pool>, String),
}

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
        let p = wire::command(com::QUERY, text);
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

    /// A write to every-shard tables: on every shard's primary, all or nothing (XA, see
    /// [`crate::dbproxy::xa`]).
    pub(super) async fn broadcast(&mut self, db: &Database, payload: &[u8]) -> Reply {
        let mut shards: Vec<Arc<ShardRoute>> = Vec::new();
        for s in db.shards.values() {
            // Units that share one physical database are written once.
            if !shards.iter().any(|x| Arc::ptr_eq(&x.primary, &s.primary)) {
                shards.push(s.clone());
            }
        }
        if shards.len() < 2 {
            return self.run_everywhere(&shards, payload).await;
        }
        let xa = self.shared.xa.clone();
        let xid = match xa.begin() {
            Ok(x) => x,
            Err(m) => {
                let m = format!("A write to every shard runs as one XA transaction, and {m}");
                return self.error(1, er::UNKNOWN, &m).await;
            }
        };
        let r = self.two_phase(&shards, payload, &xid).await;
        xa.done(&xid);
        self.shared
            .metrics
            .xa
            .with_label_values(&[match &r {
                Ok(_) => "committed",
                Err(_) => "rolled_back",
            }])
            .inc();
        match r {
            Ok(affected) => {
                let p = wire::ok_packet(affected, 0, self.status(), "");
                self.send(1, &p).await?;
                self.flush().await
            }
            Err(TwoPhase::Refused(p)) => {
                self.send(1, &p).await?;
                self.flush().await
            }
            Err(TwoPhase::Down(shard, pool, m)) => self.shard_down(&shard, &pool, &m).await,
        }
    }

    /// Runs `payload` as XA transaction `xid` on every shard's primary: prepared
    /// everywhere, then decided and committed; rolled back everywhere on any failure
    /// before the decision. Ok(affected rows).
    async fn two_phase(
        &mut self,
        shards: &[Arc<ShardRoute>],
        payload: &[u8],
        xid: &str,
    ) -> Result<u64, TwoPhase> {
        let limit = self.shared.statement_timeout;
        let mut affected = 0u64;
        let mut begun: Vec<(Arc<ShardRoute>, Arc<Pool>)> = Vec::new();
        let mut failure = None;
        // Phase one: the statement inside the XA transaction on each primary, prepared.
        for s in shards {
            let pool = s.primary.clone();
            if let Err(m) = self.conn(&pool).await {
                failure = Some(TwoPhase::Down(s.clone(), pool, m));
                break;
            }
            let Some(h) = self.held.get_mut(&key(&pool)) else {
                break;
            };
            let steps = [
                query(&format!("XA START '{xid}'")),
                payload.to_vec(),
                query(&format!("XA END '{xid}'")),
                query(&format!("XA PREPARE '{xid}'")),
            ];
            begun.push((s.clone(), pool.clone()));
            for (i, step) in steps.iter().enumerate() {
                let answer = bounded(limit, h.lease.conn.collect(step))
                    .await
                    .unwrap_or_else(|| {
                        Err(BackendError::Lost(
                            "no answer within dbproxy.statement_timeout_ms".into(),
                        ))
                    });
                match answer {
                    Ok(Collected::Ok(p)) => {
                        if i == 1 {
                            affected += wire::ok_counts(&p).map(|c| c.0).unwrap_or(0);
                        }
                    }
                    Ok(Collected::Err(e)) => {
                        let (code, msg) = wire::parse_err(&e).unwrap_or((1105, String::new()));
                        let m = format!(
                            "on shard {}: {msg} (the write was rolled back on every shard)",
                            s.unit
                        );
                        failure = Some(TwoPhase::Refused(wire::err_packet((code, "HY000"), &m)));
                        break;
                    }
                    Ok(Collected::Rows { .. }) => {
                        let m = format!(
                            "on shard {}: the write returned rows (rolled back on every shard)",
                            s.unit
                        );
                        failure = Some(TwoPhase::Refused(wire::err_packet(er::UNKNOWN, &m)));
                        break;
                    }
                    Err(e) => {
                        failure = Some(TwoPhase::Down(
                            s.clone(),
                            pool.clone(),
                            format!("{e} (the write was rolled back on every shard)"),
                        ));
                        break;
                    }
                }
            }
            if let Some(TwoPhase::Down(..)) = &failure {
                // Its answer may be half read: close it (the server rolls back an XA
                // transaction not yet prepared; recovery one that was).
                begun.pop();
                self.drop_conn(&pool);
            }
            if failure.is_some() {
                break;
            }
        }
        if let Some(f) = failure {
            self.xa_rollback(&begun, xid).await;
            return Err(f);
        }
        // The decision, durable before any shard commits.
        if let Err(e) = self.shared.xa.decide(xid) {
            tracing::error!(xid, error = %e, "Recording an XA decision failed; rolling back");
            self.xa_rollback(&begun, xid).await;
            let m = format!("The every-shard write could not be committed (its decision could not be recorded: {e}); it was rolled back on every shard");
            return Err(TwoPhase::Refused(wire::err_packet(er::UNKNOWN, &m)));
        }
        // Phase two. A shard that does not answer keeps it prepared until recovery
        // commits it there: the write is decided, so the client is told it committed.
        let mut all = true;
        for (s, pool) in &begun {
            let ok = match self.held.get_mut(&key(pool)) {
                Some(h) => matches!(
                    bounded(
                        limit,
                        h.lease.conn.collect(&query(&format!("XA COMMIT '{xid}'")))
                    )
                    .await,
                    Some(Ok(Collected::Ok(_)))
                ),
                None => false,
            };
            if !ok {
                all = false;
                self.drop_conn(pool);
                tracing::warn!(xid, unit = %s.unit, server = %pool.target.addr, "XA COMMIT not confirmed; recovery will finish it");
            }
        }
        if all {
            self.shared.xa.forget(xid);
        }
        Ok(affected)
    }

    /// Undoes phase one of `xid` where it began: XA END (when still active) and XA
    /// ROLLBACK. A connection that does not answer is dropped (the server rolls back an
    /// unprepared XA transaction of a closed connection; a prepared one is left to
    /// recovery, which rolls it back since nothing was decided).
    async fn xa_rollback(&mut self, begun: &[(Arc<ShardRoute>, Arc<Pool>)], xid: &str) {
        for (_, pool) in begun {
            let Some(h) = self.held.get_mut(&key(pool)) else {
                continue;
            };
            // Fails harmlessly when the transaction already ended (prepared).
            let limit = self.shared.statement_timeout;
            let _ = bounded(
                limit,
                h.lease.conn.collect(&query(&format!("XA END '{xid}'"))),
            )
            .await;
            let rolled = bounded(
                limit,
                h.lease
                    .conn
                    .collect(&query(&format!("XA ROLLBACK '{xid}'"))),
            )
            .await;
            if !matches!(rolled, Some(Ok(Collected::Ok(_)))) {
                self.drop_conn(pool);
            }
        }
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
        // The plan with an EXECUTE's LIMIT and OFFSET parameters bound.
        let mut bound: Option<sql::Merge> = None;
        match how {
            Scatter::Text => {
                let p = wire::command(com::QUERY, &plan.shard_sql);
                sends.resize(pools.len(), (Vec::new(), p));
            }
            Scatter::Exec {
                id,
                payload,
                values,
            } => {
                let Some(st) = self.stmts.get_mut(&id) else {
                    return self
                        .error(1, er::UNKNOWN_STMT_HANDLER, "Unknown prepared statement")
                        .await;
                };
                // The types as this EXECUTE (or an earlier one) bound them: execute()
                // has decoded its parameters already.
                let (nparams, types) = (st.params as usize, st.types.clone());
                // LIMIT and OFFSET given as parameters: read them, and give the shards
                // one parameter for both.
                let push = match plan.bind(values) {
                    Ok((b, push)) => {
                        bound = Some(b);
                        push
                    }
                    Err(m) => return self.error(1, er::WRONG_ARGUMENTS, &m).await,
                };
                let rewritten = match (plan.kept_params, push) {
                    (Some(k), Some(v)) => {
                        match prepared::with_trailing_limit(payload, nparams, &types, k, v) {
                            Ok(p) => Some((p, k + 1)),
                            Err(m) => {
                                let msg = format!("Malformed COM_STMT_EXECUTE: {}", m.0);
                                return self.error(1, er::HANDSHAKE, &msg).await;
                            }
                        }
                    }
                    _ => None,
                };
                let Some(st) = self.stmts.get_mut(&id) else {
                    return self
                        .error(1, er::UNKNOWN_STMT_HANDLER, "Unknown prepared statement")
                        .await;
                };
                let long_data = std::mem::take(&mut st.long_data);
                let expected = rewritten.as_ref().map_or(nparams, |(_, n)| *n);
                for (shard, pool) in &pools {
                    let k = key(pool);
                    let Some(held) = self.held.get_mut(&k) else {
                        continue;
                    };
                    let backend_id = match held.scatter_stmts.get(&id) {
                        Some(b) => *b,
                        None => {
                            let p = wire::command(com::STMT_PREPARE, &plan.shard_sql);
                            match held.lease.conn.prepare(&p).await {
                                Ok(Ok((b, packets))) => {
                                    let (_, _, n) =
                                        prepared::parse_prepare_ok(&packets[0]).unwrap_or_default();
                                    if n as usize != expected {
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
                    let p = match &rewritten {
                        Some((p, n)) => prepared::exec_for_backend(p, backend_id, *n, &[], true),
                        None => {
                            prepared::exec_for_backend(payload, backend_id, nparams, &types, true)
                        }
                    };
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
        let plan = bound.as_ref().unwrap_or(plan);
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
