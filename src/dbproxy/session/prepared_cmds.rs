//! The prepared-statement commands of a session: PREPARE on one shard, EXECUTE routed
//! by its parameters (the statement prepared lazily on each backend connection), FETCH
//! from the cursor an EXECUTE opened (on the connection that holds it), RESET, CLOSE.

use super::*;

impl Session {
    /// Makes sure the client's statement `id` is prepared on `held`'s connection and
    /// that its long data has been sent there; returns the connection's statement id.
    /// Err(Ok(ERR payload)) when the server refuses to prepare it.
    pub(super) async fn on_backend(
        &mut self,
        held: &mut Held,
        id: u32,
    ) -> Result<u32, Result<Vec<u8>, BackendError>> {
        let Some(st) = self.stmts.get_mut(&id) else {
            return Err(Ok(wire::err_packet(
                er::UNKNOWN_STMT_HANDLER,
                "Unknown prepared statement",
            )));
        };
        let backend_id = match held.stmts.get(&id) {
            Some(b) => *b,
            None => {
                let p = wire::command(com::STMT_PREPARE, &st.sql);
                match held.lease.conn.prepare(&p).await {
                    Ok(Ok((b, _))) => {
                        held.stmts.insert(id, b);
                        b
                    }
                    Ok(Err(err)) => return Err(Ok(err)),
                    Err(e) => return Err(Err(e)),
                }
            }
        };
        for chunk in std::mem::take(&mut st.long_data) {
            let p = prepared::with_stmt_id(&chunk, backend_id);
            if let Err(e) = held.lease.conn.send(&p).await {
                return Err(Err(BackendError::Lost(e.to_string())));
            }
        }
        Ok(backend_id)
    }

    /// COM_STMT_PREPARE: prepared on one shard the statement may run on (for its
    /// metadata, which every shard shares); the client gets the proxy's own id.
    pub(super) async fn prepare(&mut self, payload: &[u8]) -> Reply {
        let Ok(sql) = std::str::from_utf8(&payload[1..]) else {
            return self
                .error(1, er::UNKNOWN, "The statement is not valid UTF-8")
                .await;
        };
        let sql = sql.to_string();
        let topo = self.shared.topology.load_full();
        let Some(db) = self.default_database(&topo) else {
            return self.error(1, er::NO_DB, "No database selected").await;
        };
        let analysis = match sql::analyze(&sql) {
            Ok(a) => Some(a),
            Err((ParseFailure::Syntax(e), hint)) if hint.unit.is_none() && db.shards.len() > 1 => {
                let m = format!(
                    "tessera dbproxy cannot parse this statement to route it ({e}); add /* tessera: shard=UNIT */ to send it to one shard"
                );
                return self.error(1, er::PARSE, &m).await;
            }
            Err((ParseFailure::Multi, _)) => {
                return self
                    .error(
                        1,
                        er::NOT_SUPPORTED_YET,
                        "tessera dbproxy prepares one statement at a time",
                    )
                    .await;
            }
            Err(_) => None,
        };
        let unit = match &analysis {
            Some(a) => match self.target_units(&topo, &db, a, None) {
                Ok(u) => self.tx_unit.clone().or_else(|| u.into_iter().next()),
                Err(m) => return self.error(1, er::UNKNOWN, &m).await,
            },
            None => sql::hints(&sql)
                .unit
                .or_else(|| db.shards.keys().next().cloned()),
        };
        let Some(shard) = unit.and_then(|u| db.shards.get(&u).cloned()) else {
            return self
                .error(1, er::UNKNOWN, "No shard to prepare the statement on")
                .await;
        };
        let pool = shard.primary.clone();
        if let Err(m) = self.conn(&pool).await {
            return self.shard_down(&shard, &pool, &m).await;
        }
        let mut held = self.held.remove(&key(&pool)).expect("held above"); // ok: conn() just put it there
        let r = held.lease.conn.prepare(payload).await;
        let (backend_id, packets) = match r {
            Ok(Ok(x)) => x,
            Ok(Err(err)) => {
                self.held.insert(key(&pool), held);
                self.send(1, &err).await?;
                return self.flush().await;
            }
            Err(e) => {
                if held.lease.conn.healthy {
                    self.held.insert(key(&pool), held);
                } else {
                    pool.discard(held.lease);
                }
                return self.shard_down(&shard, &pool, &e.to_string()).await;
            }
        };
        let (_, _, params) = prepared::parse_prepare_ok(&packets[0]).unwrap_or_default();
        let id = self.next_stmt;
        self.next_stmt = self.next_stmt.wrapping_add(1).max(1);
        held.stmts.insert(id, backend_id);
        self.held.insert(key(&pool), held);
        self.stmts.insert(
            id,
            Prepared {
                sql: sql.into(),
                analysis: analysis.map(std::sync::Arc::new),
                params,
                types: Vec::new(),
                long_data: Vec::new(),
            },
        );
        let mut out = Vec::new();
        let mut seq = 1u8;
        for (i, p) in packets.iter().enumerate() {
            let p = if i == 0 {
                prepared::with_stmt_id(p, id)
            } else {
                p.clone()
            };
            seq = wire::frame(&mut out, seq, &p);
        }
        self.wr.write_all(&out).await?;
        self.flush().await
    }

    /// COM_STMT_EXECUTE: routed by its parameters like the statement it prepares.
    pub(super) async fn execute(&mut self, payload: &[u8]) -> Reply {
        let started = Instant::now();
        let id = prepared::stmt_id(payload).unwrap_or(0);
        let Some(st) = self.stmts.get_mut(&id) else {
            let m =
                format!("Unknown prepared statement handler ({id}) given to mysqld_stmt_execute");
            return self.error(1, er::UNKNOWN_STMT_HANDLER, &m).await;
        };
        let values = match prepared::exec_params(payload, st.params as usize, &mut st.types) {
            Ok(v) => v,
            Err(m) => {
                let msg = format!("Malformed COM_STMT_EXECUTE: {}", m.0);
                return self.error(1, er::HANDSHAKE, &msg).await;
            }
        };
        let (analysis, sql) = (st.analysis.clone(), st.sql.clone());
        let topo = self.shared.topology.load_full();
        let Some(a) = analysis else {
            // Unparsed: the one shard it was prepared for (hint or only shard).
            let unit = sql::hints(&sql).unit;
            let shard = self.default_database(&topo).and_then(|d| match unit {
                Some(u) => d.shards.get(&u).cloned(),
                None => d.shards.values().next().cloned(),
            });
            return match shard {
                Some(s) => self.single(&s, true, Cmd::Exec { id, payload }).await,
                None => {
                    self.error(
                        1,
                        er::UNKNOWN,
                        "The statement's shard is no longer configured",
                    )
                    .await
                }
            };
        };
        let class = class_label(&a.class);
        let r = match &a.class {
            // Transaction control and settings behave as their text forms.
            Class::Begin
            | Class::Commit
            | Class::Rollback
            | Class::Autocommit(_)
            | Class::Use(_)
            | Class::Session => {
                let p = wire::command(com::QUERY, &sql);
                Box::pin(self.route(&p, &sql, Ok((*a).clone()))).await
            }
            _ => {
                self.dispatch(Cmd::Exec { id, payload }, &a, Some(&values), &topo)
                    .await
            }
        };
        self.shared
            .metrics
            .latency
            .with_label_values(&[class])
            .observe(started.elapsed().as_secs_f64());
        r
    }

    /// COM_STMT_FETCH: the next rows of the cursor the statement's last EXECUTE opened,
    /// read on the backend connection that holds it and passed through.
    pub(super) async fn fetch(&mut self, payload: &[u8]) -> Reply {
        if payload.len() != 9 {
            return self
                .error(
                    1,
                    er::HANDSHAKE,
                    "Malformed COM_STMT_FETCH: expected a statement id and a row count",
                )
                .await;
        }
        let id = prepared::stmt_id(payload).unwrap_or(0);
        if !self.stmts.contains_key(&id) {
            let m = format!("Unknown prepared statement handler ({id}) given to mysqld_stmt_fetch");
            return self.error(1, er::UNKNOWN_STMT_HANDLER, &m).await;
        }
        let Some((_, shard)) = self.cursors.get(&id).cloned() else {
            return self.no_cursor(id).await;
        };
        self.relay_on(&shard, false, Cmd::Fetch { id, payload })
            .await
    }

    pub(super) async fn no_cursor(&mut self, id: u32) -> Reply {
        let m = format!("The statement ({id}) has no open cursor.");
        self.error(1, er::STMT_HAS_NO_OPEN_CURSOR, &m).await
    }

    /// COM_STMT_RESET: the statement's long data is dropped and its cursor closed.
    pub(super) async fn reset_stmt(&mut self, payload: &[u8]) -> Reply {
        let Some(id) = prepared::stmt_id(payload)
            .ok()
            .filter(|id| self.stmts.contains_key(id))
        else {
            return self
                .error(
                    1,
                    er::UNKNOWN_STMT_HANDLER,
                    "Unknown prepared statement handler given to mysqld_stmt_reset",
                )
                .await;
        };
        if let Some(st) = self.stmts.get_mut(&id) {
            st.long_data.clear();
        }
        if let Some((k, _)) = self.cursors.remove(&id) {
            self.close_cursor_on(k, id).await;
        }
        self.ok(1).await
    }

    /// Closes statement `id`'s cursor on held connection `k` (COM_STMT_RESET there); a
    /// connection that does not answer cleanly is dropped.
    pub(super) async fn close_cursor_on(&mut self, k: usize, id: u32) {
        let Some(held) = self.held.get_mut(&k) else {
            return;
        };
        let Some(&backend_id) = held.stmts.get(&id) else {
            return;
        };
        let p = prepared::with_stmt_id(&[com::STMT_RESET, 0, 0, 0, 0], backend_id);
        let limit = self.shared.statement_timeout;
        if !matches!(
            bounded(limit, held.lease.conn.collect(&p)).await,
            Some(Ok(Collected::Ok(_)))
        ) {
            let pool = held.pool.clone();
            self.drop_conn(&pool);
        }
    }

    /// COM_STMT_CLOSE: forgotten here and on every connection that prepared it (which
    /// closes its cursor there).
    pub(super) async fn close_stmt(&mut self, payload: &[u8]) {
        let Ok(id) = prepared::stmt_id(payload) else {
            return;
        };
        self.cursors.remove(&id);
        if self.stmts.remove(&id).is_none() {
            return;
        }
        for held in self.held.values_mut() {
            let ids = [held.stmts.remove(&id), held.scatter_stmts.remove(&id)];
            for b in ids.into_iter().flatten() {
                let _ = held
                    .lease
                    .conn
                    .send(&prepared::with_stmt_id(payload, b))
                    .await;
            }
        }
    }
}
