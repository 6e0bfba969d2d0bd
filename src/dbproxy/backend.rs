//! Connections to the shards' MySQL/MariaDB servers and their pools.
//!
//! A [`Backend`] is one logged-in connection. [`Backend::relay`] sends a command and
//! copies the server's response to the client packet by packet, reading only the header
//! bytes it needs to know where the response ends (OK, ERR, or a result set's final
//! EOF, following SERVER_MORE_RESULTS_EXISTS): rows are never decoded. [`Backend::collect`]
//! gathers a response instead, for the statements whose results the proxy merges.
//!
//! Connections use TLS as the DataSource's `tls.mode` says (by default when the server
//! offers it): an SSLRequest after the greeting, then rustls, then the login.
//!
//! A [`Pool`] per (server, database, account) keeps idle connections, bounds how many
//! exist, bounds how long a session waits for one, and remembers the server's last error
//! for `tessera get datasources` and the admin listener.

mod tls;

use super::wire::{self, cap, com, Malformed};
use crate::model::specs::BackendTlsMode;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tls::Io;
pub use tls::TlsPolicy;
use tokio::io::{AsyncWrite, AsyncWriteExt, BufStream};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The largest response packet a backend may send (MariaDB's max_allowed_packet cap).
const LIMIT: usize = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error from the server: {0}")]
    Protocol(&'static str),
    #[error("the server refused the proxy's login: {1} (error {0})")]
    Login(u16, String),
    #[error("{0}")]
    Other(String),
    /// The connection failed before any byte of the answer reached the client, so the
    /// client can still be told with an ERR packet.
    #[error("lost the connection before it answered: {0}")]
    Lost(String),
}

impl From<Malformed> for BackendError {
    fn from(m: Malformed) -> Self {
        BackendError::Protocol(m.0)
    }
}

/// Where to connect and as whom.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    pub addr: String,
    /// Where connections leave from (None: the kernel's choice).
    pub source: Option<std::net::IpAddr>,
    pub database: String,
    pub user: String,
    pub password: String,
    pub tls: TlsPolicy,
}

pub struct Backend {
    io: BufStream<Io>,
    /// Whether the connection runs over TLS.
    pub tls: bool,
    pub conn_id: u32,
    pub version: String,
    /// False once an I/O or protocol error leaves the connection in an unknown state.
    pub healthy: bool,
    /// Whether the response being relayed has sent any byte to the client yet.
    pub relayed: bool,
    buf: Vec<u8>,
}

/// A response gathered instead of relayed.
#[derive(Debug)]
pub enum Collected {
    Ok(Vec<u8>),
    Err(Vec<u8>),
    Rows {
        /// Column definition payloads.
        columns: Vec<Vec<u8>>,
        /// Row payloads (text protocol).
        rows: Vec<Vec<u8>>,
    },
}

impl Backend {
    pub async fn connect(t: &Target, timeout: Duration) -> Result<Backend, BackendError> {
        let fut = async {
            let sock = match t.addr.parse::<std::net::SocketAddr>() {
                Ok(addr) => crate::net::connect_from(addr, t.source).await?,
                Err(_) => TcpStream::connect(&t.addr).await?,
            };
            let _ = sock.set_nodelay(true);
            let mut b = Backend {
                io: BufStream::with_capacity(32 * 1024, 16 * 1024, Io::Plain(sock)),
                tls: false,
                conn_id: 0,
                version: String::new(),
                healthy: true,
                relayed: false,
                buf: Vec::with_capacity(4096),
            };
            b.login(t).await?;
            Ok(b)
        };
        match tokio::time::timeout(timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(BackendError::Other(format!(
                "no answer within {} ms",
                timeout.as_millis()
            ))),
        }
    }

    async fn read(&mut self) -> Result<u8, BackendError> {
        match wire::read_packet(&mut self.io, &mut self.buf, LIMIT).await {
            Ok(seq) => Ok(seq),
            Err(e) => {
                self.healthy = false;
                Err(e.into())
            }
        }
    }

    async fn write(&mut self, seq: u8, payload: &[u8]) -> Result<(), BackendError> {
        let mut out = Vec::with_capacity(payload.len() + 4);
        wire::frame(&mut out, seq, payload);
        let r = async {
            self.io.write_all(&out).await?;
            self.io.flush().await
        }
        .await;
        if r.is_err() {
            self.healthy = false;
        }
        Ok(r?)
    }

    async fn login(&mut self, t: &Target) -> Result<(), BackendError> {
        self.read().await?;
        if let Some((code, msg)) = wire::parse_err(&self.buf) {
            return Err(BackendError::Login(code, msg));
        }
        let hello = wire::parse_handshake_v10(&self.buf)?;
        if hello.caps & cap::PROTOCOL_41 == 0 {
            return Err(BackendError::Protocol(
                "the server does not speak protocol 4.1",
            ));
        }
        self.conn_id = hello.conn_id;
        self.version = hello.version.clone();
        // No connection attributes are sent, so that capability is not claimed.
        let mut caps = cap::PROXY & !cap::CONNECT_ATTRS & (hello.caps | cap::LONG_PASSWORD);
        let offered = hello.caps & cap::SSL != 0;
        let mut seq = 1u8;
        match t.tls.mode {
            BackendTlsMode::Disabled => {}
            BackendTlsMode::Preferred if !offered => {}
            _ if !offered => {
                return Err(BackendError::Other(
                    "the server does not offer TLS, which the DataSource's tls.mode requires (give the server ssl_cert and ssl_key, or set tls.mode to preferred)".into(),
                ))
            }
            _ => {
                caps |= cap::SSL;
                // An SSLRequest is the handshake response cut after its fixed part.
                let resp = wire::handshake_response(caps, "", &[], None, "");
                self.write(seq, &resp[..32]).await?;
                seq += 1;
                self.start_tls(t).await?;
            }
        }
        let plugin = if hello.plugin == wire::SHA2 {
            wire::SHA2
        } else {
            wire::NATIVE
        };
        let auth = scramble(plugin, t.password.as_bytes(), &hello.nonce);
        let db = (!t.database.is_empty()).then_some(t.database.as_str());
        let resp = wire::handshake_response(caps, &t.user, &auth, db, plugin);
        self.write(seq, &resp).await?;
        // OK, ERR, an auth switch (0xFE) or more auth data (0x01), a few rounds at most.
        for _ in 0..4 {
            let seq = self.read().await?;
            match self.buf.first() {
                Some(0x00) => return Ok(()),
                Some(0xFF) => {
                    let (code, msg) = wire::parse_err(&self.buf).unwrap_or((0, String::new()));
                    return Err(BackendError::Login(code, msg));
                }
                Some(0xFE) => {
                    let mut r = wire::Reader::new(&self.buf[1..]);
                    let name = String::from_utf8_lossy(r.cstr()?).into_owned();
                    let nonce = r.rest();
                    let nonce = nonce.strip_suffix(&[0]).unwrap_or(nonce).to_vec();
                    if name != wire::NATIVE && name != wire::SHA2 {
                        return Err(BackendError::Other(format!(
                            "the server asks for the `{name}` authentication plugin; the proxy's backend account must use mysql_native_password or caching_sha2_password"
                        )));
                    }
                    let auth = scramble(&name, t.password.as_bytes(), &nonce);
                    self.write(seq.wrapping_add(1), &auth).await?;
                }
                Some(0x01) if self.buf.get(1) == Some(&0x03) => {} // fast auth ok; OK follows
                // Full authentication: over TLS the password itself may be sent.
                Some(0x01) if self.buf.get(1) == Some(&0x04) && self.tls => {
                    let mut p = t.password.as_bytes().to_vec();
                    p.push(0);
                    self.write(seq.wrapping_add(1), &p).await?;
                }
                Some(0x01) => {
                    return Err(BackendError::Other(
                        "the server wants caching_sha2_password's full authentication (RSA or TLS); give the proxy's backend account mysql_native_password or warm the server's cache".into(),
                    ))
                }
                _ => return Err(BackendError::Protocol("unexpected packet during login")),
            }
        }
        Err(BackendError::Protocol("login did not finish"))
    }

    /// Sends one command (sequence 0).
    pub async fn send(&mut self, payload: &[u8]) -> Result<(), BackendError> {
        self.write(0, payload).await
    }

    /// Sends a command and copies the whole response to `client` as it arrives, packet by
    /// packet with the server's sequence ids (which continue the client's command's).
    /// Returns the final status flags (OK or EOF), or None after an ERR.
    pub async fn relay<W: AsyncWrite + Unpin>(
        &mut self,
        payload: &[u8],
        client: &mut W,
    ) -> Result<Option<u16>, BackendError> {
        self.relay_from(payload, client, State::First).await
    }

    /// [`Backend::relay`] of a command whose response starts in `state`: a
    /// COM_STMT_FETCH is answered with rows and an EOF ([`State::Rows`]).
    pub async fn relay_from<W: AsyncWrite + Unpin>(
        &mut self,
        payload: &[u8],
        client: &mut W,
        state: State,
    ) -> Result<Option<u16>, BackendError> {
        if let Err(e) = self.send(payload).await {
            return Err(BackendError::Lost(e.to_string()));
        }
        self.relay_response(client, state).await
    }

    /// Copies one response (to a command already sent) to `client`.
    pub async fn relay_response<W: AsyncWrite + Unpin>(
        &mut self,
        client: &mut W,
        mut state: State,
    ) -> Result<Option<u16>, BackendError> {
        let mut hdr = Vec::with_capacity(4);
        let mut first = true;
        self.relayed = false;
        loop {
            let seq = match self.read().await {
                Ok(seq) => seq,
                Err(e) if first => return Err(BackendError::Lost(e.to_string())),
                Err(e) => return Err(e),
            };
            first = false;
            // Re-frame (a logical payload over 16 MiB becomes several packets again).
            hdr.clear();
            hdr.extend_from_slice(
                &(self.buf.len().min(wire::MAX_PAYLOAD) as u32).to_le_bytes()[..3],
            );
            hdr.push(seq);
            let w = async {
                if self.buf.len() < wire::MAX_PAYLOAD {
                    client.write_all(&hdr).await?;
                    client.write_all(&self.buf).await
                } else {
                    let mut out = Vec::with_capacity(self.buf.len() + 16);
                    wire::frame(&mut out, seq, &self.buf);
                    client.write_all(&out).await
                }
            }
            .await;
            self.relayed = true;
            if let Err(e) = w {
                // The client went away; the server's response must still be drained.
                self.healthy = false;
                return Err(BackendError::Io(e));
            }
            match step(state, &self.buf)? {
                Step::Continue(s) => state = s,
                Step::Done(status) => return Ok(status),
            }
        }
    }

    /// Sends a command and gathers its (single) response.
    pub async fn collect(&mut self, payload: &[u8]) -> Result<Collected, BackendError> {
        self.send(payload).await?;
        let mut state = State::First;
        let mut columns = Vec::new();
        let mut rows = Vec::new();
        loop {
            self.read().await?;
            let p = std::mem::take(&mut self.buf);
            let step = step(state, &p)?;
            match (&state, &step) {
                (State::First, Step::Done(Some(_))) => {
                    self.buf = p.clone();
                    return Ok(Collected::Ok(p));
                }
                (_, Step::Done(None)) => return Ok(Collected::Err(p)),
                (State::Columns(_), _) => columns.push(p),
                (State::Rows, Step::Continue(State::Rows)) => rows.push(p),
                (State::Rows, Step::Done(Some(_)))
                | (State::Rows, Step::Continue(State::First)) => {
                    let status = match step {
                        Step::Done(Some(s)) => s,
                        _ => wire::SERVER_MORE_RESULTS_EXISTS,
                    };
                    if status & wire::SERVER_MORE_RESULTS_EXISTS != 0 {
                        self.healthy = false;
                        return Err(BackendError::Other(
                            "a statement with several result sets cannot be merged across shards"
                                .into(),
                        ));
                    }
                    return Ok(Collected::Rows { columns, rows });
                }
                _ => {}
            }
            state = match step {
                Step::Continue(s) => s,
                Step::Done(_) => return Err(BackendError::Protocol("unexpected end of a result")),
            };
        }
    }

    /// COM_STMT_PREPARE: Ok(Ok((server's statement id, the response's payloads))) or
    /// Ok(Err(ERR payload)).
    pub async fn prepare(
        &mut self,
        payload: &[u8],
    ) -> Result<Result<(u32, Vec<Vec<u8>>), Vec<u8>>, BackendError> {
        if let Err(e) = self.send(payload).await {
            return Err(BackendError::Lost(e.to_string()));
        }
        if let Err(e) = self.read().await {
            return Err(BackendError::Lost(e.to_string()));
        }
        if self.buf.first() == Some(&0xFF) {
            return Ok(Err(self.buf.clone()));
        }
        let (id, cols, params) = match super::prepared::parse_prepare_ok(&self.buf) {
            Ok(x) => x,
            Err(m) => {
                self.healthy = false;
                return Err(m.into());
            }
        };
        let mut packets = vec![self.buf.clone()];
        for n in [params, cols] {
            if n > 0 {
                for _ in 0..=n {
                    self.read().await?;
                    packets.push(self.buf.clone());
                }
                if wire::eof_status(packets.last().map(Vec::as_slice).unwrap_or_default()).is_none()
                {
                    self.healthy = false;
                    return Err(BackendError::Protocol("prepare response without its EOF"));
                }
            }
        }
        Ok(Ok((id, packets)))
    }

    /// A statement's column names and rows, for the proxy's own checks.
    pub async fn query_named(
        &mut self,
        sql: &str,
    ) -> Result<(Vec<String>, Vec<Vec<Option<String>>>), BackendError> {
        match self.collect(&wire::command(com::QUERY, sql)).await? {
            Collected::Ok(_) => Ok((Vec::new(), Vec::new())),
            Collected::Err(e) => {
                let (code, msg) = wire::parse_err(&e).unwrap_or((0, String::new()));
                Err(BackendError::Other(format!("{msg} (error {code})")))
            }
            Collected::Rows { columns, rows, .. } => Ok((
                columns
                    .iter()
                    .map(|c| {
                        super::merge::column_info(c)
                            .map(|i| i.0)
                            .unwrap_or_default()
                    })
                    .collect(),
                rows.iter()
                    .map(|r| decode_text_row(r))
                    .collect::<Result<_, _>>()?,
            )),
        }
    }

    /// COM_RESET_CONNECTION: drops session state so the next session starts clean.
    pub async fn reset(&mut self) -> Result<(), BackendError> {
        match self.collect(&[com::RESET_CONNECTION]).await? {
            Collected::Ok(_) => Ok(()),
            _ => {
                self.healthy = false;
                Err(BackendError::Other(
                    "COM_RESET_CONNECTION was refused".into(),
                ))
            }
        }
    }

    pub async fn ping(&mut self) -> Result<(), BackendError> {
        match self.collect(&[com::PING]).await? {
            Collected::Ok(_) => Ok(()),
            _ => Err(BackendError::Other("COM_PING failed".into())),
        }
    }
}

fn scramble(plugin: &str, password: &[u8], nonce: &[u8]) -> Vec<u8> {
    if plugin == wire::SHA2 {
        wire::scramble_sha2(password, nonce)
    } else {
        wire::scramble_native(password, nonce)
    }
}

/// Where a response stands, packet by packet (classic EOF framing).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum State {
    /// Expecting OK, ERR or a column count.
    First,
    /// This many column definitions to go.
    Columns(u64),
    /// Expecting the EOF after the column definitions.
    ColumnsEof,
    Rows,
}

#[derive(Debug, PartialEq)]
pub enum Step {
    Continue(State),
    /// The response ended: Some(status) after OK/EOF, None after ERR.
    Done(Option<u16>),
}

/// The next state after packet `p` in state `s`.
pub fn step(s: State, p: &[u8]) -> Result<Step, Malformed> {
    let more = |status: u16| {
        if status & wire::SERVER_MORE_RESULTS_EXISTS != 0 {
            Step::Continue(State::First)
        } else {
            Step::Done(Some(status))
        }
    };
    Ok(match s {
        State::First => match p.first() {
            Some(0x00) => more(wire::ok_status(p).ok_or(Malformed("bad OK packet"))?),
            Some(0xFF) => Step::Done(None),
            Some(0xFB) => return Err(Malformed("LOCAL INFILE was not offered")),
            Some(_) => {
                let n = wire::Reader::new(p)
                    .lenenc_int()?
                    .ok_or(Malformed("bad column count"))?;
                if n == 0 {
                    return Err(Malformed("a result set without columns"));
                }
                Step::Continue(State::Columns(n))
            }
            None => return Err(Malformed("empty packet")),
        },
        State::Columns(1) => Step::Continue(State::ColumnsEof),
        State::Columns(n) => Step::Continue(State::Columns(n - 1)),
        State::ColumnsEof => match wire::eof_status(p) {
            None => return Err(Malformed("column definitions not followed by EOF")),
            // An EXECUTE that opened a cursor: no rows now, they come with FETCH.
            Some(status) if status & wire::SERVER_STATUS_CURSOR_EXISTS != 0 => {
                Step::Done(Some(status))
            }
            Some(_) => Step::Continue(State::Rows),
        },
        State::Rows => match (p.first(), wire::eof_status(p)) {
            (_, Some(status)) => more(status),
            (Some(0xFF), _) => Step::Done(None),
            _ => Step::Continue(State::Rows),
        },
    })
}

/// A text-protocol row as strings (NULL = None).
pub fn decode_text_row(p: &[u8]) -> Result<Vec<Option<String>>, Malformed> {
    let mut r = wire::Reader::new(p);
    let mut out = Vec::new();
    while !r.is_empty() {
        out.push(
            r.lenenc_str()?
                .map(|b| String::from_utf8_lossy(b).into_owned()),
        );
    }
    Ok(out)
}

/// Health of one server as the proxy sees it.
#[derive(Debug, Default)]
pub struct Health {
    pub up: AtomicBool,
    /// Replication lag in milliseconds (replicas; u64::MAX = not replicating).
    pub lag_ms: AtomicU64,
    pub last_error: Mutex<Option<String>>,
    pub checked: Mutex<Option<Instant>>,
    /// Since when the server has been unreachable without a success in between.
    pub down_since: Mutex<Option<Instant>>,
}

pub struct Pool {
    pub target: Target,
    idle: Mutex<Vec<Backend>>,
    slots: Arc<Semaphore>,
    pub max: usize,
    pub open: AtomicUsize,
    pub connect_timeout: Duration,
    pub wait: Duration,
    pub health: Health,
}

/// A connection taken from a pool; give it back with [`Pool::put`].
pub struct Lease {
    pub conn: Backend,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    pub fn new(target: Target, max: usize, connect_timeout: Duration, wait: Duration) -> Pool {
        let health = Health::default();
        health.up.store(true, Ordering::Relaxed);
        Pool {
            target,
            idle: Mutex::new(Vec::new()),
            slots: Arc::new(Semaphore::new(max)),
            max,
            open: AtomicUsize::new(0),
            connect_timeout,
            wait,
            health,
        }
    }

    pub fn in_use(&self) -> usize {
        self.max - self.slots.available_permits()
    }

    /// An idle connection or a new one, waiting at most `self.wait` for a free slot.
    pub async fn get(&self) -> Result<Lease, BackendError> {
        let permit = match tokio::time::timeout(self.wait, self.slots.clone().acquire_owned()).await
        {
            Ok(Ok(p)) => p,
            _ => {
                return Err(BackendError::Other(format!(
                    "all {} connections to {} are busy (waited {} ms)",
                    self.max,
                    self.target.addr,
                    self.wait.as_millis()
                )))
            }
        };
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        if let Some(conn) = idle {
            return Ok(Lease {
                conn,
                _permit: permit,
            });
        }
        match Backend::connect(&self.target, self.connect_timeout).await {
            Ok(conn) => {
                self.open.fetch_add(1, Ordering::Relaxed);
                self.mark_up();
                Ok(Lease {
                    conn,
                    _permit: permit,
                })
            }
            Err(e) => {
                self.mark_down(&e.to_string());
                Err(e)
            }
        }
    }

    /// Returns a connection: reset so no session state leaks to the next user, or
    /// dropped when it is broken.
    pub async fn put(&self, mut lease: Lease, dirty: bool) {
        if lease.conn.healthy && dirty {
            let _ = tokio::time::timeout(Duration::from_secs(2), lease.conn.reset())
                .await
                .map_err(|_| lease.conn.healthy = false);
        }
        if lease.conn.healthy {
            self.idle
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(lease.conn);
        } else {
            self.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Forgets a broken connection.
    pub fn discard(&self, lease: Lease) {
        drop(lease);
        self.open.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn mark_up(&self) {
        self.health.up.store(true, Ordering::Relaxed);
        *self
            .health
            .down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        *self
            .health
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }

    pub fn mark_down(&self, error: &str) {
        self.health.up.store(false, Ordering::Relaxed);
        self.health
            .down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(Instant::now);
        *self
            .health
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(error.to_string());
        // Idle connections to a server that is down are useless.
        let n = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            let n = idle.len();
            idle.clear();
            n
        };
        self.open.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn is_up(&self) -> bool {
        self.health.up.load(Ordering::Relaxed)
    }

    /// How long the server has been unreachable (None while it answers).
    pub fn down_for(&self) -> Option<Duration> {
        self.health
            .down_since
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|t| t.elapsed())
    }

    pub fn last_error(&self) -> Option<String> {
        self.health
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_framing_follows_results_and_more_results() {
        let ok = wire::ok_packet(0, 0, 0, "");
        assert_eq!(step(State::First, &ok).unwrap(), Step::Done(Some(0)));
        let more = wire::ok_packet(0, 0, wire::SERVER_MORE_RESULTS_EXISTS, "");
        assert_eq!(
            step(State::First, &more).unwrap(),
            Step::Continue(State::First)
        );
        let err = wire::err_packet(wire::er::PARSE, "x");
        assert_eq!(step(State::First, &err).unwrap(), Step::Done(None));
        assert_eq!(
            step(State::First, &[2]).unwrap(),
            Step::Continue(State::Columns(2))
        );
        assert_eq!(
            step(State::Columns(2), b"def").unwrap(),
            Step::Continue(State::Columns(1))
        );
        assert_eq!(
            step(State::Columns(1), b"def").unwrap(),
            Step::Continue(State::ColumnsEof)
        );
        let eof = wire::eof_packet(0);
        assert_eq!(
            step(State::ColumnsEof, &eof).unwrap(),
            Step::Continue(State::Rows)
        );
        assert!(step(State::ColumnsEof, b"row").is_err());
        // An EXECUTE that opened a cursor ends after its column definitions.
        let cursor = wire::eof_packet(wire::SERVER_STATUS_CURSOR_EXISTS | 2);
        assert_eq!(
            step(State::ColumnsEof, &cursor).unwrap(),
            Step::Done(Some(wire::SERVER_STATUS_CURSOR_EXISTS | 2))
        );
        // A row starting with 0xFE is a long string, not an EOF.
        let mut long_row = vec![0xFE];
        long_row.extend_from_slice(&[0; 8]);
        assert_eq!(
            step(State::Rows, &long_row).unwrap(),
            Step::Continue(State::Rows)
        );
        assert_eq!(step(State::Rows, &eof).unwrap(), Step::Done(Some(0)));
        assert_eq!(
            step(
                State::Rows,
                &wire::eof_packet(wire::SERVER_MORE_RESULTS_EXISTS)
            )
            .unwrap(),
            Step::Continue(State::First)
        );
        assert!(step(State::First, &[0xFB]).is_err());
        assert!(step(State::First, &[]).is_err());
    }

    #[test]
    fn text_rows_decode_with_nulls() {
        let mut p = Vec::new();
        wire::put_lenenc_str(&mut p, b"42");
        p.push(0xFB);
        wire::put_lenenc_str(&mut p, b"");
        assert_eq!(
            decode_text_row(&p).unwrap(),
            vec![Some("42".into()), None, Some(String::new())]
        );
        assert!(decode_text_row(&[5, b'a']).is_err());
    }
}
