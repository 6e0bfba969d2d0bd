//! Forwarding collected lines to the sinks of `[[agent.log_sinks]]`.
//!
//! Each sink has a task that reads the local store after its cursor (the last sequence
//! number it delivered, saved in `<logs>/sinks/<name>.cursor`), sends a batch, and moves
//! the cursor only once the batch is delivered: an HTTP sink's 2xx answer, or a syslog
//! batch written whole to a connection the receiver had not closed. A sink that is down
//! is retried with backoff (1 s doubling to 30 s) while the store keeps the lines; lines
//! the store drops to stay within `agent.log_store_mb` before they could be sent are
//! counted (`tessera_agent_log_sink_dropped_total`) and logged. A new sink starts with
//! the lines collected from then on, not the store's history.

use super::store::{Reader, Store};
use crate::api::logs::Record;
use crate::config::sink::{facility_code, SinkTarget, SyslogTransport, UDP_MAX};
use crate::config::LogSink;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const SEND_TIMEOUT: Duration = Duration::from_secs(15);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A failing sink is logged at most this often.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// The sinks' metrics, labelled by sink name.
#[derive(Clone)]
pub struct SinkMetrics {
    lines: IntCounterVec,
    errors: IntCounterVec,
    dropped: IntCounterVec,
    lag: IntGaugeVec,
}

impl SinkMetrics {
    pub fn new(registry: &Registry) -> SinkMetrics {
        let counter = |name: &str, help: &str| {
            // ok: constant, valid names
            IntCounterVec::new(Opts::new(name, help), &["sink"]).expect("static metric")
        };
        let m = SinkMetrics {
            lines: counter(
                "tessera_agent_log_sink_lines_total",
                "Collected log lines delivered to the sink",
            ),
            errors: counter(
                "tessera_agent_log_sink_errors_total",
                "Failed attempts to deliver a batch to the sink",
            ),
            dropped: counter(
                "tessera_agent_log_sink_dropped_total",
                "Lines the local store dropped (over agent.log_store_mb) before the sink got them",
            ),
            // ok: constant, valid names
            lag: IntGaugeVec::new(
                Opts::new(
                    "tessera_agent_log_sink_lag_lines",
                    "Collected lines not yet delivered to the sink",
                ),
                &["sink"],
            )
            .expect("static metric"),
        };
        let _ = registry.register(Box::new(m.lines.clone()));
        let _ = registry.register(Box::new(m.errors.clone()));
        let _ = registry.register(Box::new(m.dropped.clone()));
        let _ = registry.register(Box::new(m.lag.clone()));
        m
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// A connection to a sink, kept between batches.
enum Conn {
    Udp(tokio::net::UdpSocket),
    Stream(Box<dyn Io>),
    Http(hyper::client::conn::http1::SendRequest<Full<Bytes>>),
}

/// One sink: its configuration, parsed, and its connection.
pub struct Sink {
    cfg: LogSink,
    target: SinkTarget,
    facility: u8,
    resolver: crate::net::resolve::Resolver,
    conn: Option<Conn>,
}

impl Sink {
    /// `cfg` passed `config::sink::check` at load.
    pub fn new(cfg: LogSink) -> Result<Sink, String> {
        let target = crate::config::sink::parse_target(&cfg.url)?;
        let facility = facility_code(&cfg.facility)
            .ok_or_else(|| format!("`{}` is not a syslog facility", cfg.facility))?;
        Ok(Sink {
            cfg,
            target,
            facility,
            resolver: crate::net::resolve::Resolver::default(),
            conn: None,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Whether this sink takes lines of `app`.
    pub fn wants(&self, app: &str) -> bool {
        self.cfg.apps.is_empty() || self.cfg.apps.iter().any(|a| a == app)
    }

    /// Delivers `records` (non-empty), or says why not; a failed connection is dropped
    /// so that the next attempt makes a new one.
    pub async fn send(&mut self, records: &[Record]) -> Result<(), String> {
        let r = tokio::time::timeout(SEND_TIMEOUT, self.try_send(records))
            .await
            .unwrap_or_else(|_| Err(format!("no answer within {}s", SEND_TIMEOUT.as_secs())));
        if r.is_err() {
            self.conn = None;
        }
        r
    }

    async fn try_send(&mut self, records: &[Record]) -> Result<(), String> {
        if let Some(Conn::Stream(io)) = &mut self.conn {
            if closed_by_peer(io) {
                self.conn = None;
            }
        }
        if matches!(&self.conn, Some(Conn::Http(s)) if s.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            self.conn = Some(self.connect().await?);
        }
        let (facility, sd_id) = (self.facility, self.cfg.sd_id.clone());
        let request = match self.target {
            SinkTarget::Http { .. } => {
                let mut body = Vec::new();
                for r in records {
                    serde_json::to_writer(&mut body, r).map_err(|e| e.to_string())?;
                    body.push(b'\n');
                }
                Some(self.http_request(body)?)
            }
            SinkTarget::Syslog { .. } => None,
        };
        match self.conn.as_mut() {
            Some(Conn::Udp(socket)) => {
                for r in records {
                    let msg =
                        super::syslog::cut(super::syslog::message(r, facility, &sd_id), UDP_MAX);
                    socket.send(&msg).await.map_err(|e| format!("send: {e}"))?;
                }
                Ok(())
            }
            Some(Conn::Stream(io)) => {
                let mut buf = Vec::new();
                for r in records {
                    super::syslog::frame(&super::syslog::message(r, facility, &sd_id), &mut buf);
                }
                io.write_all(&buf)
                    .await
                    .map_err(|e| format!("write: {e}"))?;
                io.flush().await.map_err(|e| format!("write: {e}"))
            }
            Some(Conn::Http(sender)) => {
                let req = request.ok_or("not an HTTP sink")?;
                sender
                    .ready()
                    .await
                    .map_err(|e| format!("connection: {e}"))?;
                let answer = sender
                    .send_request(req)
                    .await
                    .map_err(|e| format!("request: {e}"))?;
                let status = answer.status();
                let text = answer
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                if status.is_success() {
                    Ok(())
                } else {
                    let text = String::from_utf8_lossy(&text[..text.len().min(200)]).into_owned();
                    Err(format!("answered {status}: {}", text.trim()))
                }
            }
            None => Err("not connected".into()),
        }
    }

    fn http_request(&self, body: Vec<u8>) -> Result<http::Request<Full<Bytes>>, String> {
        let SinkTarget::Http { uri, .. } = &self.target else {
            return Err("not an HTTP sink".into());
        };
        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let host = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let mut req = http::Request::post(path)
            .header(http::header::HOST, host)
            .header(http::header::CONTENT_TYPE, "application/x-ndjson")
            .header(
                http::header::USER_AGENT,
                concat!("tessera-agent/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(file) = &self.cfg.token_file {
            let token = std::fs::read_to_string(file)
                .map_err(|e| format!("cannot read token_file {}: {e}", file.display()))?;
            req = req.header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", token.trim()),
            );
        }
        req.body(Full::new(Bytes::from(body)))
            .map_err(|e| format!("request: {e}"))
    }

    async fn connect(&self) -> Result<Conn, String> {
        let (host, port) = (self.target.host(), self.target.port());
        let addrs = self
            .resolver
            .resolve(host, port)
            .await
            .map_err(|e| e.to_string())?;
        let addr = *addrs
            .first()
            .ok_or_else(|| format!("`{host}` has no address"))?;
        if let SinkTarget::Syslog {
            transport: SyslogTransport::Udp,
            ..
        } = self.target
        {
            let local: std::net::SocketAddr = if addr.is_ipv4() {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            };
            let socket = tokio::net::UdpSocket::bind(local)
                .await
                .map_err(|e| format!("udp socket: {e}"))?;
            socket
                .connect(addr)
                .await
                .map_err(|e| format!("udp {addr}: {e}"))?;
            return Ok(Conn::Udp(socket));
        }
        let tcp = tokio::time::timeout(CONNECT_TIMEOUT, crate::net::connect_from(addr, None))
            .await
            .map_err(|_| format!("connect to {addr}: timed out"))?
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let io: Box<dyn Io> = if self.target.tls() {
            let ca = self.cfg.ca_file.as_ref().ok_or("no ca_file")?;
            let pem = std::fs::read_to_string(ca)
                .map_err(|e| format!("cannot read ca_file {}: {e}", ca.display()))?;
            let tls = crate::pki::trusting_client_config(&pem).map_err(|e| e.to_string())?;
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| format!("`{host}` as a TLS server name: {e}"))?;
            let stream = tokio::time::timeout(
                CONNECT_TIMEOUT,
                tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(name, tcp),
            )
            .await
            .map_err(|_| format!("TLS with {addr}: timed out"))?
            .map_err(|e| format!("TLS with {addr}: {e}"))?;
            Box::new(stream)
        } else {
            Box::new(tcp)
        };
        if matches!(self.target, SinkTarget::Http { .. }) {
            let (sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
                    .await
                    .map_err(|e| format!("HTTP with {addr}: {e}"))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            return Ok(Conn::Http(sender));
        }
        Ok(Conn::Stream(io))
    }
}

/// Whether the receiver closed (or reset) a syslog connection, from a read that must
/// not wait: a syslog receiver sends nothing, so end-of-stream or an error means it is
/// gone (over TLS, rustls takes session tickets and close_notify itself). Checked before
/// each batch so that a batch is not written into a socket whose other end is gone
/// (which TCP would accept, then lose).
fn closed_by_peer(io: &mut Box<dyn Io>) -> bool {
    use futures_util::FutureExt;
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 512];
    match io.read(&mut b).now_or_never() {
        None => false,
        Some(Ok(n)) => n == 0,
        Some(Err(_)) => true,
    }
}

/// Runs one sink until `shutdown`.
pub async fn run(
    mut sink: Sink,
    store: Arc<Mutex<Store>>,
    mut appended: tokio::sync::watch::Receiver<u64>,
    dir: PathBuf,
    metrics: SinkMetrics,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let name = sink.name().to_string();
    let cursor_file = dir.join(format!("{name}.cursor"));
    let next_seq = || super::lock(&store).next_seq();
    let mut cursor = match std::fs::read_to_string(&cursor_file)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
    {
        Some(c) if c < next_seq() => c,
        Some(c) => {
            tracing::warn!(sink = %name, cursor = c, "The log store is behind this sink's cursor (was it wiped?); forwarding from its end");
            next_seq().saturating_sub(1)
        }
        None => next_seq().saturating_sub(1),
    };
    let (lines, errors, dropped, lag) = (
        metrics.lines.with_label_values(&[&name]),
        metrics.errors.with_label_values(&[&name]),
        metrics.dropped.with_label_values(&[&name]),
        metrics.lag.with_label_values(&[&name]),
    );
    let reader = Arc::new(Mutex::new(Reader::default()));
    let mut backoff = Duration::from_secs(1);
    let mut last_warn: Option<Instant> = None;
    let mut failing = false;
    let batch = sink.cfg.batch;
    loop {
        let next = *appended.borrow_and_update();
        lag.set(next.saturating_sub(cursor + 1) as i64);
        if cursor + 1 >= next {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                r = appended.changed() => if r.is_err() { return },
            }
            continue;
        }
        let (store2, reader2) = (store.clone(), reader.clone());
        let read = tokio::task::spawn_blocking(move || {
            let segments = super::lock(&store2).segments_after(cursor);
            super::lock(&reader2).read(&segments, cursor, batch)
        })
        .await;
        let read = match read {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::warn!(sink = %name, error = %e, "Reading the log store for a sink failed");
                if pause(&shutdown, backoff).await {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        if read.missed > 0 {
            dropped.inc_by(read.missed);
            tracing::warn!(sink = %name, lines = read.missed, "Log lines were dropped from the local store before this sink got them (raise agent.log_store_mb, or check the sink)");
        }
        let Some(last) = read.records.last().map(|r| r.seq) else {
            // Nothing whole to read yet (a line being written): wait for the next append.
            if pause(&shutdown, Duration::from_millis(200)).await {
                return;
            }
            continue;
        };
        let wanted: Vec<Record> = read
            .records
            .into_iter()
            .filter(|r| sink.wants(&r.app))
            .collect();
        if !wanted.is_empty() {
            if let Err(e) = sink.send(&wanted).await {
                errors.inc();
                if last_warn.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                    tracing::warn!(sink = %name, url = %sink.cfg.url, error = %e, retry_in_ms = backoff.as_millis() as u64, "Cannot deliver log lines to a sink; they stay in the local store and are retried");
                    last_warn = Some(Instant::now());
                }
                failing = true;
                if pause(&shutdown, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
            lines.inc_by(wanted.len() as u64);
        }
        if failing {
            tracing::info!(sink = %name, "Log sink delivering again");
            failing = false;
            last_warn = None;
        }
        backoff = Duration::from_secs(1);
        cursor = last;
        if let Err(e) =
            crate::util::write_atomic(&cursor_file, cursor.to_string().as_bytes(), 0o600)
        {
            tracing::warn!(sink = %name, error = %e, "Saving a log sink's cursor failed");
        }
    }
}

/// Sleeps `d`; true when shutdown came first.
async fn pause(shutdown: &tokio_util::sync::CancellationToken, d: Duration) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}
