//! One client connection: handshake and login, then one command at a time, each routed
//! to the shard that owns its rows.
//!
//! A session holds at most one backend connection per server it has used, for its whole
//! life (session state such as `SET` variables and temporary tables stays where the
//! client put it); they go back to their pools, reset, when the client leaves. `SET`
//! statements are replayed on each backend connection the session takes later.
//!
//! Transactions: `BEGIN` is held until the first statement names a shard; the session
//! then begins on that shard's primary and stays pinned to it until COMMIT/ROLLBACK. A
//! statement for another shard inside the transaction is refused and the transaction
//! is left as it was.

use super::backend::{Backend, BackendError, Collected, Lease, Pool, State};
use super::merge;
use super::metrics::DbMetrics;
use super::prepared::{self, Prepared};
use super::sql::{self, Analysis, Class, ParseFailure};
use super::topology::{Database, ShardRoute, Topology};
use super::wire::{self, cap, com, er};
use crate::model::specs::TableType;
use arc_swap::ArcSwap;
use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;

mod change_user;
mod multi;
mod prepared_cmds;
mod route;

/// What every session shares.
pub struct Shared {
    pub topology: ArcSwap<Topology>,
    /// TLS offered to clients (`dbproxy.tls_cert`/`tls_key`).
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Clients without TLS are refused.
    pub require_tls: bool,
    pub metrics: DbMetrics,
    pub next_id: AtomicU32,
    pub version: String,
    pub slow_query: Option<Duration>,
    pub max_packet: usize,
    /// A statement still unanswered after this is abandoned (None: no limit).
    pub statement_timeout: Option<Duration>,
    /// Round-robin over replicas.
    pub rr: AtomicUsize,
    /// The coordinator of every-shard writes (XA).
    pub xa: Arc<super::xa::Coordinator>,
}

type Reply = Result<(), Fatal>;

/// The session cannot go on (the client left, or sent garbage, or a backend broke in the
/// middle of a response).
#[derive(Debug)]
pub struct Fatal(pub String);

impl From<std::io::Error> for Fatal {
    fn from(e: std::io::Error) -> Self {
        Fatal(e.to_string())
    }
}

struct Held {
    pool: Arc<Pool>,
    lease: Lease,
    /// The client's prepared statement ids → this connection's.
    stmts: HashMap<u32, u32>,
    /// The same for the statements' scattered forms (the SELECT each shard runs when
    /// one EXECUTE reaches several shards).
    scatter_stmts: HashMap<u32, u32>,
}

/// How a SELECT reaches the shards it scatters to.
#[derive(Clone, Copy)]
enum Scatter<'a> {
    /// As the text of the plan's shard statement (COM_QUERY); rows come back as text.
    Text,
    /// As the client's EXECUTE of statement `id` (its parameter `values` decoded), run
    /// on each shard as a statement prepared from the plan's shard statement; rows come
    /// back binary.
    Exec {
        id: u32,
        payload: &'a [u8],
        values: &'a [Option<String>],
    },
}

/// What a routed command sends to the chosen backend.
#[derive(Clone, Copy)]
enum Cmd<'a> {
    /// A COM_QUERY (or COM_FIELD_LIST) payload, sent as it is.
    Text(&'a [u8]),
    /// A COM_STMT_EXECUTE of the client's statement `id`.
    Exec { id: u32, payload: &'a [u8] },
    /// A COM_STMT_FETCH from the cursor statement `id` opened.
    Fetch { id: u32, payload: &'a [u8] },
}

pub struct Session {
    shared: Arc<Shared>,
    peer: SocketAddr,
    rd: BufReader<Rd>,
    wr: BufWriter<Wr>,
    buf: Vec<u8>,
    user: String,
    /// Current logical database (lowercase).
    db: Option<String>,
    autocommit: bool,
    /// Inside BEGIN … COMMIT (or autocommit = 0): statements go to one shard's primary.
    in_tx: bool,
    /// The unit the open transaction runs on, once a statement started it there.
    tx_unit: Option<String>,
    /// Session `SET` statements, replayed on each backend connection taken later.
    sets: Vec<String>,
    /// Backend connections held, by pool address.
    held: HashMap<usize, Held>,
    /// After a write, the session's reads go to primaries (read-your-writes), when asked
    /// with `SET tessera_read_your_writes = 1`.
    read_your_writes: bool,
    wrote: bool,
    /// Prepared statements by the proxy's id.
    stmts: HashMap<u32, Prepared>,
    next_stmt: u32,
    /// Open cursors by the client's statement id: the held connection (key) whose
    /// server keeps it, and its shard. Rows are fetched there, passed through.
    cursors: HashMap<u32, (usize, Arc<ShardRoute>)>,
    /// The capabilities the client announced, and the nonce it was greeted with (a
    /// COM_CHANGE_USER answers that same nonce).
    caps: u32,
    nonce: [u8; 20],
}

type Rd = Box<dyn AsyncRead + Send + Unpin>;
type Wr = Box<dyn AsyncWrite + Send + Unpin>;

/// What the greeting exchange leaves: the streams (TLS or not), the client's handshake
/// response and its sequence id, and the nonce it answers.
struct Greeted {
    rd: BufReader<Rd>,
    wr: BufWriter<Wr>,
    response: Vec<u8>,
    seq: u8,
    nonce: [u8; 20],
}

/// Sends the greeting, reads the client's answer, and switches to TLS when it asks.
async fn greet(mut sock: TcpStream, peer: SocketAddr, shared: &Shared) -> Option<Greeted> {
    let refuse = |seq: u8, code: (u16, &str), msg: &str| {
        let mut out = Vec::new();
        wire::frame(&mut out, seq, &wire::err_packet(code, msg));
        out
    };
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let nonce = wire::nonce();
    let caps = if shared.tls.is_some() {
        cap::PROXY | cap::SSL
    } else {
        cap::PROXY
    };
    let mut out = Vec::new();
    wire::frame(
        &mut out,
        0,
        &wire::handshake_v10(id, &shared.version, &nonce, caps),
    );
    sock.write_all(&out).await.ok()?;
    let mut buf = Vec::with_capacity(256);
    let limit = Duration::from_secs(10);
    let seq = match tokio::time::timeout(limit, wire::read_packet(&mut sock, &mut buf, 64 * 1024))
        .await
    {
        Ok(Ok(seq)) => seq,
        Ok(Err(_)) => return None,
        Err(_) => {
            let _ = sock
                .write_all(&refuse(
                    1,
                    er::HANDSHAKE,
                    "Bad handshake: no answer within 10 s",
                ))
                .await;
            return None;
        }
    };
    if !wire::is_ssl_request(&buf) {
        if shared.require_tls {
            let m = "Connections using insecure transport are prohibited: this proxy requires TLS (mariadb --ssl, mysql --ssl-mode=REQUIRED)";
            let _ = sock
                .write_all(&refuse(seq.wrapping_add(1), (3159, "HY000"), m))
                .await;
            return None;
        }
        let (r, w) = sock.into_split();
        return Some(Greeted {
            rd: BufReader::with_capacity(16 * 1024, Box::new(r) as Rd),
            wr: BufWriter::with_capacity(32 * 1024, Box::new(w) as Wr),
            response: buf,
            seq,
            nonce,
        });
    }
    let Some(acceptor) = shared.tls.clone() else {
        let _ = sock
            .write_all(&refuse(
                seq.wrapping_add(1),
                er::HANDSHAKE,
                "Bad handshake: TLS was not offered",
            ))
            .await;
        return None;
    };
    let tls = match tokio::time::timeout(limit, acceptor.accept(sock)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "MySQL client TLS handshake failed");
            return None;
        }
        Err(_) => return None,
    };
    let (r, w) = tokio::io::split(tls);
    let mut rd = BufReader::with_capacity(16 * 1024, Box::new(r) as Rd);
    let seq =
        match tokio::time::timeout(limit, wire::read_packet(&mut rd, &mut buf, 64 * 1024)).await {
            Ok(Ok(seq)) => seq,
            _ => return None,
        };
    Some(Greeted {
        rd,
        wr: BufWriter::with_capacity(32 * 1024, Box::new(w) as Wr),
        response: buf,
        seq,
        nonce,
    })
}

pub async fn serve(sock: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = sock.set_nodelay(true);
    shared.metrics.clients.inc();
    let Some(g) = greet(sock, peer, &shared).await else {
        shared.metrics.clients.dec();
        return;
    };
    let mut s = Session {
        shared: shared.clone(),
        peer,
        rd: g.rd,
        wr: g.wr,
        buf: g.response,
        user: String::new(),
        db: None,
        autocommit: true,
        in_tx: false,
        tx_unit: None,
        sets: Vec::new(),
        held: HashMap::new(),
        read_your_writes: false,
        wrote: false,
        stmts: HashMap::new(),
        next_stmt: 1,
        cursors: HashMap::new(),
        caps: 0,
        nonce: [0; 20],
    };
    match s.login(g.seq, g.nonce).await {
        Ok(true) => {
            if let Err(Fatal(e)) = s.run().await {
                tracing::debug!(peer = %s.peer, user = %s.user, error = %e, "MySQL session ended");
            }
        }
        Ok(false) => {}
        Err(Fatal(e)) => tracing::debug!(peer = %peer, error = %e, "MySQL login failed"),
    }
    s.release_all().await;
    shared.metrics.clients.dec();
}

impl Session {
    async fn send(&mut self, seq: u8, payload: &[u8]) -> Reply {
        let mut out = Vec::with_capacity(payload.len() + 4);
        wire::frame(&mut out, seq, payload);
        self.wr.write_all(&out).await?;
        Ok(())
    }

    async fn flush(&mut self) -> Reply {
        self.wr.flush().await?;
        Ok(())
    }

    async fn error(&mut self, seq: u8, code: (u16, &str), msg: &str) -> Reply {
        self.shared
            .metrics
            .errors
            .with_label_values(&[&code.0.to_string()])
            .inc();
        self.send(seq, &wire::err_packet(code, msg)).await?;
        self.flush().await
    }

    fn status(&self) -> u16 {
        let mut s = 0;
        if self.autocommit {
            s |= wire::SERVER_STATUS_AUTOCOMMIT;
        }
        if self.in_tx {
            s |= wire::SERVER_STATUS_IN_TRANS;
        }
        s
    }

    async fn ok(&mut self, seq: u8) -> Reply {
        let p = wire::ok_packet(0, 0, self.status(), "");
        self.send(seq, &p).await?;
        self.flush().await
    }

    /// Handshake and authentication; Ok(false) when the client was refused.
    /// Authenticates the handshake response in `self.buf` (sequence `seq`) against the
    /// proxy users; Ok(false) when the client was refused.
    async fn login(&mut self, seq: u8, nonce: [u8; 20]) -> Result<bool, Fatal> {
        let next = seq.wrapping_add(1);
        let client = match wire::parse_handshake_response(&self.buf) {
            Ok(c) => c,
            Err(m) => {
                self.error(next, er::HANDSHAKE, &format!("Bad handshake: {}", m.0))
                    .await?;
                return Ok(false);
            }
        };
        self.user = client.user.clone();
        self.caps = client.caps;
        self.nonce = nonce;
        let topo = self.shared.topology.load_full();
        let plugin = client.plugin.as_deref().unwrap_or(wire::NATIVE).to_string();
        let seq = match self
            .authenticate(&topo, &client.user, client.auth.clone(), plugin, next)
            .await?
        {
            Ok(seq) => seq,
            Err((seq, msg)) => {
                self.error(seq, er::ACCESS_DENIED, &msg).await?;
                return Ok(false);
            }
        };
        if let Some(db) = &client.database {
            if let Err((code, msg)) = self.check_db(&topo, db) {
                self.error(seq, code, &msg).await?;
                return Ok(false);
            }
            self.db = Some(db.to_ascii_lowercase());
        }
        // Backend connections speak utf8mb4; a client that chose another character set
        // gets it on every connection it uses.
        if let Some(cs) = wire::charset_name(client.charset) {
            self.sets.push(format!("SET NAMES {cs}"));
        }
        self.shared.metrics.logins.with_label_values(&["ok"]).inc();
        self.ok(seq).await?;
        Ok(true)
    }

    /// Checks proxy user `user`'s `auth`, made with `plugin` against the greeting's nonce;
    /// a client using another plugin is first switched to `mysql_native_password`
    /// (sequence `seq`). Ok(next sequence) when accepted (after the fast-auth packet of
    /// `caching_sha2_password`), Err((sequence, message)) when refused.
    async fn authenticate(
        &mut self,
        topo: &Topology,
        user: &str,
        mut auth: Vec<u8>,
        mut plugin: String,
        mut seq: u8,
    ) -> Result<Result<u8, (u8, String)>, Fatal> {
        let nonce = self.nonce;
        if plugin != wire::NATIVE && plugin != wire::SHA2 {
            let mut p = vec![0xFE];
            p.extend_from_slice(wire::NATIVE.as_bytes());
            p.push(0);
            p.extend_from_slice(&nonce);
            p.push(0);
            self.send(seq, &p).await?;
            self.flush().await?;
            let s = wire::read_packet(&mut self.rd, &mut self.buf, 64 * 1024).await?;
            auth = std::mem::take(&mut self.buf);
            plugin = wire::NATIVE.into();
            seq = s.wrapping_add(1);
        }
        let ok = topo.users.get(user).is_some_and(|a| {
            let want = if plugin == wire::SHA2 {
                wire::scramble_sha2(a.password.as_bytes(), &nonce)
            } else {
                wire::scramble_native(a.password.as_bytes(), &nonce)
            };
            wire::same(&auth, &want)
        });
        if !ok {
            self.shared
                .metrics
                .logins
                .with_label_values(&["denied"])
                .inc();
            tracing::info!(peer = %self.peer, user = %user, "MySQL login refused");
            let msg = format!(
                "Access denied for user '{user}'@'{}' (using password: {})",
                self.peer.ip(),
                if auth.is_empty() { "NO" } else { "YES" }
            );
            return Ok(Err((seq, msg)));
        }
        if plugin == wire::SHA2 {
            self.send(seq, &[0x01, 0x03]).await?;
            seq = seq.wrapping_add(1);
        }
        Ok(Ok(seq))
    }

    fn check_db(&self, topo: &Topology, db: &str) -> Result<(), ((u16, &'static str), String)> {
        let lower = db.to_ascii_lowercase();
        let allowed = topo
            .users
            .get(&self.user)
            .is_some_and(|a| a.databases.contains(&lower));
        if !topo.databases.contains_key(&lower) {
            Err((er::BAD_DB, format!("Unknown database '{db}'")))
        } else if !allowed {
            Err((
                (1044, "42000"),
                format!("Access denied for user '{}' to database '{db}'", self.user),
            ))
        } else {
            Ok(())
        }
    }

    async fn run(&mut self) -> Reply {
        loop {
            let read = wire::read_packet(&mut self.rd, &mut self.buf, self.shared.max_packet).await;
            match read {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    let msg = format!("Got a packet bigger than 'max_allowed_packet' bytes ({e})");
                    self.error(1, er::NET_PACKET_TOO_LARGE, &msg).await?;
                    return Err(Fatal(msg));
                }
                Err(e) => return Err(e.into()),
            }
            let Some(&cmd) = self.buf.first() else {
                self.error(1, er::UNKNOWN_COM, "Empty command packet")
                    .await?;
                continue;
            };
            let payload = std::mem::take(&mut self.buf);
            let r = match cmd {
                com::QUIT => return Ok(()),
                com::PING => self.ok(1).await,
                com::QUERY => self.query(&payload).await,
                com::INIT_DB => {
                    let name = String::from_utf8_lossy(&payload[1..]).into_owned();
                    self.use_db(&name).await
                }
                com::RESET_CONNECTION => {
                    self.reset().await;
                    self.ok(1).await
                }
                com::CHANGE_USER => self.change_user(&payload).await,
                com::SET_OPTION => {
                    let p = wire::eof_packet(self.status());
                    self.send(1, &p).await?;
                    self.flush().await
                }
                com::STATISTICS => {
                    let t = self.shared.topology.load();
                    let text = format!(
                        "tessera dbproxy  Databases: {}  Shards: {}",
                        t.databases.len(),
                        t.databases.values().map(|d| d.shards.len()).sum::<usize>()
                    );
                    self.send(1, text.as_bytes()).await?;
                    self.flush().await
                }
                com::FIELD_LIST => self.field_list(&payload).await,
                com::STMT_PREPARE => self.prepare(&payload).await,
                com::STMT_EXECUTE => self.execute(&payload).await,
                com::STMT_CLOSE => {
                    self.close_stmt(&payload).await;
                    Ok(())
                }
                com::STMT_SEND_LONG_DATA => {
                    // No response; replayed before the next EXECUTE.
                    if let Some(p) = prepared::stmt_id(&payload)
                        .ok()
                        .and_then(|id| self.stmts.get_mut(&id))
                    {
                        p.long_data.push(payload.clone());
                    }
                    Ok(())
                }
                com::STMT_RESET => self.reset_stmt(&payload).await,
                com::STMT_FETCH => self.fetch(&payload).await,
                other => {
                    self.error(
                        1,
                        er::UNKNOWN_COM,
                        &format!("Unknown command 0x{other:02x}"),
                    )
                    .await
                }
            };
            self.buf = payload;
            r?;
        }
    }

    async fn use_db(&mut self, name: &str) -> Reply {
        let topo = self.shared.topology.load_full();
        match self.check_db(&topo, name) {
            Ok(()) => {
                if self.tx_unit.is_some() {
                    return self
                        .error(
                            1,
                            er::UNKNOWN,
                            "Cannot change the database inside a transaction pinned to a shard",
                        )
                        .await;
                }
                self.db = Some(name.to_ascii_lowercase());
                self.ok(1).await
            }
            Err((code, msg)) => self.error(1, code, &msg).await,
        }
    }

    fn database(&self, topo: &Topology) -> Option<Arc<Database>> {
        topo.databases.get(self.db.as_ref()?).cloned()
    }

    /// The database to use when none is selected: the user's only one.
    fn default_database(&self, topo: &Topology) -> Option<Arc<Database>> {
        if let Some(d) = self.database(topo) {
            return Some(d);
        }
        let a = topo.users.get(&self.user)?;
        let mut dbs = a.databases.iter();
        let first = dbs.next()?;
        topo.databases.get(first).cloned()
    }

    async fn field_list(&mut self, payload: &[u8]) -> Reply {
        let topo = self.shared.topology.load_full();
        let Some(db) = self.database(&topo) else {
            return self.error(1, er::NO_DB, "No database selected").await;
        };
        let Some(shard) = db.shards.values().next().cloned() else {
            return self
                .error(1, er::UNKNOWN, "The database has no shards")
                .await;
        };
        self.relay_on(&shard, true, Cmd::Text(payload)).await
    }

    async fn query(&mut self, payload: &[u8]) -> Reply {
        let started = Instant::now();
        let text =
            match std::str::from_utf8(&payload[1..]) {
                Ok(t) => t.to_string(),
                Err(_) => return self
                    .error(
                        1,
                        er::UNKNOWN,
                        "The statement is not valid UTF-8 (utf8mb4 is the proxy's character set)",
                    )
                    .await,
            };
        let analysis = sql::analyze(&text);
        let class = match &analysis {
            Ok(a) => class_label(&a.class),
            Err(_) => "unparsed",
        };
        let r = self.route(payload, &text, analysis).await;
        let took = started.elapsed();
        self.shared
            .metrics
            .latency
            .with_label_values(&[class])
            .observe(took.as_secs_f64());
        if let Some(slow) = self.shared.slow_query {
            if took >= slow {
                let shown: String = text.chars().take(1024).collect();
                tracing::warn!(target: "tessera::slowquery", user = %self.user, db = ?self.db, ms = took.as_millis() as u64, class, sql = %shown, "Slow statement");
            }
        }
        r
    }

    /// A backend connection to `pool` for this session (held until the session ends).
    async fn conn(&mut self, pool: &Arc<Pool>) -> Result<&mut Held, String> {
        let key = key(pool);
        if !self.held.contains_key(&key) {
            let mut lease = pool
                .get()
                .await
                .map_err(|e| format!("{}: {e}", pool.target.addr))?;
            for s in &self.sets {
                match lease.conn.collect(&wire::command(com::QUERY, s)).await {
                    Ok(Collected::Ok(_)) => {}
                    Ok(_) => return Err(format!("replaying `{s}` on {} failed", pool.target.addr)),
                    Err(e) => {
                        pool.discard(lease);
                        return Err(format!("{}: {e}", pool.target.addr));
                    }
                }
            }
            self.held.insert(
                key,
                Held {
                    pool: pool.clone(),
                    lease,
                    stmts: HashMap::new(),
                    scatter_stmts: HashMap::new(),
                },
            );
        }
        Ok(self.held.get_mut(&key).expect("just inserted")) // ok: inserted above
    }

    fn drop_conn(&mut self, pool: &Arc<Pool>) {
        let k = key(pool);
        self.cursors.retain(|_, (held, _)| *held != k);
        if let Some(h) = self.held.remove(&k) {
            h.pool.discard(h.lease);
        }
    }

    async fn release_all(&mut self) {
        self.cursors.clear();
        for (_, h) in self.held.drain() {
            h.pool.put(h.lease, true).await;
        }
    }

    /// The pool a statement on `shard` uses.
    fn pick(&self, shard: &ShardRoute, primary: bool, max_lag_ms: u64) -> Arc<Pool> {
        if !primary {
            let ok: Vec<&Arc<Pool>> = shard
                .replicas
                .iter()
                .filter(|p| p.is_up() && p.health.lag_ms.load(Ordering::Relaxed) <= max_lag_ms)
                .collect();
            if !ok.is_empty() {
                // Prefer a replica this session already holds a connection to.
                if let Some(p) = ok.iter().find(|p| self.held.contains_key(&key(p))) {
                    return (*p).clone();
                }
                let i = self.shared.rr.fetch_add(1, Ordering::Relaxed) % ok.len();
                return ok[i].clone();
            }
        }
        shard.primary.clone()
    }

    /// Runs one statement on one shard and relays the answer.
    async fn single(&mut self, shard: &Arc<ShardRoute>, primary: bool, cmd: Cmd<'_>) -> Reply {
        if self.in_tx && self.tx_unit.is_none() {
            // Start the held-back transaction on this shard's primary.
            let pool = shard.primary.clone();
            let begun = match self.conn(&pool).await {
                Ok(h) => h.lease.conn.collect(b"\x03START TRANSACTION").await,
                Err(m) => return self.shard_down(shard, &pool, &m).await,
            };
            match begun {
                Ok(Collected::Ok(_)) => self.tx_unit = Some(shard.unit.clone()),
                Ok(Collected::Err(p)) => {
                    self.send(1, &p).await?;
                    return self.flush().await;
                }
                Ok(_) | Err(_) => {
                    self.drop_conn(&pool);
                    return self
                        .shard_down(shard, &pool, "the transaction could not be started")
                        .await;
                }
            }
        }
        self.relay_on(shard, primary, cmd).await
    }

    async fn relay_on(&mut self, shard: &Arc<ShardRoute>, primary: bool, cmd: Cmd<'_>) -> Reply {
        let lag = {
            let topo = self.shared.topology.load();
            self.db
                .as_ref()
                .and_then(|d| topo.databases.get(d))
                .map(|d| d.max_replica_lag_ms)
                .unwrap_or(5_000)
        };
        let pool = match cmd {
            // Where the cursor is (fetch() checked that it is held).
            Cmd::Fetch { id, .. } => {
                match self.cursors.get(&id).and_then(|(k, _)| self.held.get(k)) {
                    Some(h) => h.pool.clone(),
                    None => return self.no_cursor(id).await,
                }
            }
            _ => self.pick(shard, primary || self.in_tx, lag),
        };
        if pool.target.addr == shard.primary.target.addr && primary {
            self.wrote = true;
        }
        if let Err(m) = self.conn(&pool).await {
            return self.shard_down(shard, &pool, &m).await;
        }
        // Out of the map while it relays, so the client writer can be borrowed too.
        let mut held = self.held.remove(&key(&pool)).expect("held above"); // ok: conn() just put it there
        let limit = self.shared.statement_timeout;
        let r = match cmd {
            Cmd::Text(payload) => {
                bounded(limit, held.lease.conn.relay(payload, &mut self.wr)).await
            }
            Cmd::Exec { id, payload } => match self.on_backend(&mut held, id).await {
                Ok(backend_id) => {
                    let p = match self.stmts.get(&id) {
                        Some(st) => prepared::exec_for_backend(
                            payload,
                            backend_id,
                            st.params as usize,
                            &st.types,
                            false,
                        ),
                        None => prepared::with_stmt_id(payload, backend_id),
                    };
                    bounded(limit, held.lease.conn.relay(&p, &mut self.wr)).await
                }
                Err(Ok(err)) => {
                    // The backend refused to prepare it (a table missing on this shard).
                    self.held.insert(key(&pool), held);
                    self.send(1, &err).await?;
                    return self.flush().await;
                }
                Err(Err(e)) => Some(Err(e)),
            },
            Cmd::Fetch { id, payload } => {
                let backend_id = held.stmts.get(&id).copied().unwrap_or(0);
                let p = prepared::with_stmt_id(payload, backend_id);
                bounded(
                    limit,
                    held.lease.conn.relay_from(&p, &mut self.wr, State::Rows),
                )
                .await
            }
        };
        // An EXECUTE that opened a cursor leaves it on this connection; one that did
        // not (or failed) closed any the statement had there.
        if let (Cmd::Exec { id, .. }, Some(r)) = (cmd, &r) {
            let opened = matches!(r, Ok(Some(st)) if st & wire::SERVER_STATUS_CURSOR_EXISTS != 0);
            let before = if opened {
                self.cursors.insert(id, (key(&pool), shard.clone()))
            } else {
                self.cursors.remove(&id)
            };
            if let Some((k, _)) = before.filter(|(k, _)| *k != key(&pool)) {
                self.close_cursor_on(k, id).await;
            }
        }
        let (relayed, conn_id) = (held.lease.conn.relayed, held.lease.conn.conn_id);
        if held.lease.conn.healthy && r.is_some() {
            self.held.insert(key(&pool), held);
        } else {
            let k = key(&pool);
            self.cursors.retain(|_, (held, _)| *held != k);
            pool.discard(held.lease);
        }
        let Some(r) = r else {
            // Timed out: stop the statement on the server, drop the connection (its
            // answer is half read), and tell the client if it has seen nothing yet.
            let target = pool.target.clone();
            let timeout = pool.connect_timeout;
            tokio::spawn(async move {
                if let Ok(mut b) = Backend::connect(&target, timeout).await {
                    let _ = b.query_named(&format!("KILL QUERY {conn_id}")).await;
                }
            });
            if self.tx_unit.is_some() {
                self.tx_unit = None;
                self.in_tx = !self.autocommit;
            }
            let ms = limit.map(|l| l.as_millis()).unwrap_or(0);
            if relayed {
                return Err(Fatal(format!(
                    "statement timed out after {ms} ms mid-answer"
                )));
            }
            let m = format!("Query execution was interrupted, maximum statement execution time exceeded (dbproxy.statement_timeout_ms = {ms}; shard {}, {})", shard.unit, pool.target.addr);
            return self.error(1, (3024, "HY000"), &m).await;
        };
        match r {
            Ok(_) => self.flush().await,
            Err(BackendError::Lost(e)) => {
                pool.mark_down(&e);
                self.drop_conn(&pool);
                self.shard_down(shard, &pool, &format!("the connection was lost ({e})"))
                    .await
            }
            Err(e) => {
                if matches!(e, BackendError::Io(_)) {
                    pool.mark_down(&e.to_string());
                }
                // Bytes of the answer may already be on their way: the client cannot be
                // told cleanly; end the session (as a server crash would).
                Err(Fatal(format!(
                    "backend {} failed mid-statement: {e}",
                    pool.target.addr
                )))
            }
        }
    }

    async fn shard_down(&mut self, shard: &ShardRoute, pool: &Pool, why: &str) -> Reply {
        let role = if std::ptr::eq(pool, &*shard.primary) {
            "primary"
        } else {
            "replica"
        };
        let aborted = if self.tx_unit.is_some() {
            self.tx_unit = None;
            self.in_tx = !self.autocommit;
            " (the open transaction is lost)"
        } else {
            ""
        };
        let m = format!(
            "Shard {} is unavailable: its {role} {} cannot be reached: {why}{aborted}",
            shard.unit, pool.target.addr
        );
        self.shared
            .metrics
            .backend_errors
            .with_label_values(&[&shard.unit, role])
            .inc();
        self.error(1, er::UNAVAILABLE, &m).await
    }

    /// Ends the pinned transaction with COMMIT or ROLLBACK; Err names what went wrong.
    async fn finish_tx(&mut self, word: &str) -> Result<(), String> {
        let Some(unit) = self.tx_unit.take() else {
            return Ok(());
        };
        let topo = self.shared.topology.load_full();
        let pool = self
            .database(&topo)
            .or_else(|| self.default_database(&topo))
            .and_then(|d| d.shards.get(&unit).map(|s| s.primary.clone()))
            .ok_or_else(|| {
                format!("shard {unit} is no longer configured; the transaction was abandoned")
            })?;
        let p = wire::command(com::QUERY, word);
        let h = self.conn(&pool).await?;
        match h.lease.conn.collect(&p).await {
            Ok(Collected::Ok(_)) => Ok(()),
            Ok(Collected::Err(e)) => Err(wire::parse_err(&e)
                .map(|(c, m)| format!("{m} (error {c})"))
                .unwrap_or_default()),
            Ok(_) => Err("unexpected answer".into()),
            Err(e) => {
                self.drop_conn(&pool);
                Err(format!(
                    "{word} on shard {unit} failed: {e}; the outcome is unknown"
                ))
            }
        }
    }
}

/// `fut` within `limit` (None: it did not finish in time).
async fn bounded<T>(
    limit: Option<Duration>,
    fut: impl std::future::Future<Output = T>,
) -> Option<T> {
    match limit {
        Some(l) => tokio::time::timeout(l, fut).await.ok(),
        None => Some(fut.await),
    }
}

/// A pool's identity as a map key.
fn key(p: &Arc<Pool>) -> usize {
    Arc::as_ptr(p) as usize
}

fn held_addr(pools: &[(Arc<ShardRoute>, Arc<Pool>)], k: usize) -> String {
    pools
        .iter()
        .find(|(_, p)| key(p) == k)
        .map(|(_, p)| p.target.addr.clone())
        .unwrap_or_default()
}

fn class_label(c: &Class) -> &'static str {
    match c {
        Class::Read => "read",
        Class::Write => "write",
        Class::Begin | Class::Commit | Class::Rollback | Class::Autocommit(_) => "transaction",
        Class::Session => "set",
        Class::Use(_) => "use",
        Class::Local(_) => "local",
        Class::Ddl => "ddl",
        Class::Other => "other",
    }
}
