//! Raft RPC client: one persistent HTTP/2 connection per peer, shared by every client
//! openraft creates for that peer (it creates one per replication stream, vote round and
//! leadership check), JSON bodies; a client's appends and votes after its first call
//! travel on a Raft channel connection of its own instead (`frame.rs`: length-prefixed
//! frames on a mutual-TLS connection). API requests a follower forwards to the leader travel
//! over the same connection (`Network::forward`). Peers are addressed by `IP:PORT` (their advertised
//! peer address), so no name lookup is involved.
//! mTLS between control nodes wraps this same connection (see `rpc.rs` for the server).

use super::types::*;
use crate::pki::TlsHandle;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request body on the peer channel: whole (Raft RPCs, forwarded API calls) or
/// streamed (artifact copies).
pub type PeerBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub const PATH_APPEND: &str = "/raft/v1/append";

/// Payload bytes (commands' own size) sent in one append at most: a quarter of what the
/// peer server accepts (`rpc::MAX_RPC_BODY`), leaving room for JSON's escaping.
const MAX_APPEND_PAYLOAD: usize = 16 << 20;
/// What a replication stream's appends start with, and the least they shrink to (an append
/// carries one entry however large).
const FIRST_APPEND_PAYLOAD: usize = 1 << 20;
const MIN_APPEND_PAYLOAD: usize = 64 << 10;

/// How many payload bytes a replication stream puts in one append. openraft drops an
/// append that outlasts its timeout (the heartbeat interval, 50-100 ms), so a follower owed
/// a lot is sent what can arrive in time: halved after an append that did not finish
/// (dropped, or failed), doubled after one cut to the budget that finished within a
/// quarter of its time.
#[derive(Debug)]
struct AppendBudget {
    bytes: usize,
    /// An append is out, not yet known to have finished.
    open: bool,
}

impl AppendBudget {
    fn new() -> Self {
        AppendBudget {
            bytes: FIRST_APPEND_PAYLOAD,
            open: false,
        }
    }

    /// The budget for the next append, which is now out.
    fn start(&mut self) -> usize {
        if std::mem::replace(&mut self.open, true) {
            self.bytes = (self.bytes / 2).max(MIN_APPEND_PAYLOAD);
        }
        self.bytes
    }

    /// The append finished (the peer answered) in `took` of `ttl`; `cut` when it carried
    /// fewer entries than it was given, for the budget.
    fn finished(&mut self, cut: bool, took: Duration, ttl: Duration) {
        self.open = false;
        if cut && took < ttl / 4 {
            self.bytes = (self.bytes * 2).min(MAX_APPEND_PAYLOAD);
        }
    }
}

/// How many of `entries` (at least one) fit in `budget` payload bytes.
fn entries_within(entries: &[Entry], budget: usize) -> usize {
    let mut size = 0;
    for (i, e) in entries.iter().enumerate() {
        size += match &e.payload {
            openraft::EntryPayload::Normal(cmd) => cmd.approx_size(),
            _ => 1024,
        };
        if size > budget {
            return i.max(1);
        }
    }
    entries.len()
}
pub const PATH_VOTE: &str = "/raft/v1/vote";
pub const PATH_SNAPSHOT: &str = "/raft/v1/snapshot";

/// Creates a [`PeerClient`] per target node; every connection is mutual TLS with the
/// cluster CA (see `crate::pki`).
#[derive(Clone)]
pub struct Network {
    pub tls: TlsHandle,
    /// The IP outgoing peer connections leave from (`peer_listen`'s, when specific).
    pub source: Option<std::net::IpAddr>,
    pub pool: Pool,
    /// Peers that answered the Raft channel's ALPN with HTTP/2 (`frame.rs`).
    pub frames: FramePeers,
}

/// Peers that answered the Raft channel's ALPN with HTTP/2 (a member not yet upgraded),
/// and when: they are called over HTTP/2 for a minute before the channel is tried again.
pub type FramePeers = Arc<Mutex<HashMap<String, std::time::Instant>>>;

/// The connection of the Raft channel owned by one client.
type FrameConn = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// One call on the Raft channel (the frame written, the answer read), owning the
/// connection, which it hands back with the answer.
type Exchange = std::pin::Pin<
    Box<
        dyn std::future::Future<Output = (std::io::Result<(u8, Vec<u8>)>, FrameConn)> + Send + Sync,
    >,
>;

fn exchange_on(mut conn: FrameConn, kind: u8, body: Bytes) -> Exchange {
    Box::pin(async move {
        let answer = async {
            super::frame::write_frame(&mut conn, kind, &body).await?;
            super::frame::read_frame(&mut conn).await?.ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the peer closed the connection",
                )
            })
        }
        .await;
        (answer, conn)
    })
}

/// How long a call a dropped call left in flight is waited for (by the calls after it)
/// before its connection is given up.
const IN_FLIGHT_LIMIT: Duration = Duration::from_secs(10);

/// How long a peer that speaks only HTTP/2 is called over it before trying again.
const HTTP_ONLY_RECHECK: Duration = Duration::from_secs(60);

fn frames_lock(
    peers: &FramePeers,
) -> std::sync::MutexGuard<'_, HashMap<String, std::time::Instant>> {
    peers.lock().unwrap_or_else(|p| p.into_inner())
}

/// Open HTTP/2 connections by peer address; a connection multiplexes every call to it.
pub type Pool = Arc<Mutex<HashMap<String, SendRequest<PeerBody>>>>;

fn pool_lock(pool: &Pool) -> std::sync::MutexGuard<'_, HashMap<String, SendRequest<PeerBody>>> {
    pool.lock().unwrap_or_else(|p| p.into_inner())
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerClient;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> PeerClient {
        PeerClient {
            target,
            peer: node.peer.clone(),
            network: self.clone(),
            calls: 0,
            conn: None,
            in_flight: None,
            append: AppendBudget::new(),
        }
    }
}

/// A client openraft made for one peer. Its first call goes over the shared HTTP/2
/// connection; from its second on it has a Raft channel connection of its own. openraft
/// makes a client per replication stream (long-lived: every append and heartbeat to that
/// peer) and one per vote round and leadership check (one call each, and many at once
/// under concurrent linearizable reads, which HTTP/2 multiplexes on one connection).
pub struct PeerClient {
    target: NodeId,
    peer: String,
    network: Network,
    calls: u64,
    conn: Option<FrameConn>,
    /// A call on `conn` that openraft dropped before its answer (when it began), left to
    /// finish: cutting a frame off midway would cost the connection, and the next call
    /// would dial afresh only to be dropped the same way.
    in_flight: Option<(tokio::time::Instant, Exchange)>,
    append: AppendBudget,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

enum CallError {
    /// No connection could be made: openraft backs off.
    Unreachable(TransportError),
    Network(TransportError),
}

impl Network {
    /// A TLS connection to `peer` (IP:PORT), dialed from this node's IP within `ttl`,
    /// mutual TLS with the cluster CA, the peer's certificate naming its IP.
    async fn dial(
        &self,
        peer: &str,
        config: Option<Arc<rustls::ClientConfig>>,
        ttl: Duration,
    ) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, CallError> {
        let addr: std::net::SocketAddr = peer.parse().map_err(|_| {
            CallError::Unreachable(TransportError(format!(
                "peer address `{peer}` is not IP:PORT"
            )))
        })?;
        let stream = tokio::time::timeout(ttl, crate::net::connect_from(addr, self.source))
            .await
            .map_err(|_| {
                CallError::Unreachable(TransportError(format!("connect to {addr} timed out")))
            })?
            .map_err(|e| {
                CallError::Unreachable(TransportError(format!("connect to {addr}: {e}")))
            })?;
        let config = config.ok_or_else(|| {
            CallError::Unreachable(TransportError("this node has no certificate yet".into()))
        })?;
        // The peer's certificate must name its IP: a node cannot pose as another.
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        tokio::time::timeout(
            ttl,
            tokio_rustls::TlsConnector::from(config).connect(name, stream),
        )
        .await
        .map_err(|_| {
            CallError::Unreachable(TransportError(format!(
                "TLS handshake with {addr} timed out"
            )))
        })?
        .map_err(|e| {
            CallError::Unreachable(TransportError(format!("TLS handshake with {addr}: {e}")))
        })
    }

    /// An open connection to `peer` (IP:PORT): the pooled one, or a new one, dialed from
    /// this node's IP, mutual TLS with the cluster CA, the peer's certificate naming its IP.
    async fn sender(&self, peer: &str, ttl: Duration) -> Result<SendRequest<PeerBody>, CallError> {
        if let Some(s) = pool_lock(&self.pool).get(peer) {
            if !s.is_closed() {
                return Ok(s.clone());
            }
        }
        let stream = self.dial(peer, self.tls.client(), ttl).await?;
        let (sender, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(5)))
            .keep_alive_timeout(Duration::from_secs(10))
            .handshake(TokioIo::new(stream))
            .await
            .map_err(|e| {
                CallError::Unreachable(TransportError(format!("handshake with {peer}: {e}")))
            })?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        pool_lock(&self.pool).insert(peer.to_string(), sender.clone());
        Ok(sender)
    }

    /// Sends `request` (path and query only; scheme and authority are added) to `peer`
    /// over the pooled connection and reads the whole answer, within `ttl`. A failed
    /// exchange drops the connection from the pool (a partition looks like a silent
    /// one): the next call dials afresh.
    async fn exchange(
        &self,
        peer: &str,
        request: http::Request<Full<Bytes>>,
        ttl: Duration,
    ) -> Result<http::Response<Bytes>, CallError> {
        let exchange = async {
            let mut sender = self.sender(peer, ttl).await?;
            sender
                .ready()
                .await
                .map_err(|e| CallError::Network(TransportError(e.to_string())))?;
            let (mut parts, body) = request.into_parts();
            parts.uri =
                absolute(peer, &parts.uri).map_err(|e| CallError::Network(TransportError(e)))?;
            let body = body.map_err(|never| match never {}).boxed();
            let resp = sender
                .send_request(http::Request::from_parts(parts, body))
                .await
                .map_err(|e| CallError::Network(TransportError(e.to_string())))?;
            let (parts, body) = resp.into_parts();
            let bytes = body
                .collect()
                .await
                .map_err(|e| CallError::Network(TransportError(e.to_string())))?
                .to_bytes();
            Ok(http::Response::from_parts(parts, bytes))
        };
        let result = match tokio::time::timeout(ttl, exchange).await {
            Ok(r) => r,
            Err(_) => Err(CallError::Network(TransportError(format!(
                "{peer} did not answer within {ttl:?}"
            )))),
        };
        if result.is_err() {
            pool_lock(&self.pool).remove(peer);
        }
        result
    }

    /// Sends `request` to `peer` and returns the answer as it starts, its body to be
    /// read by the caller: large transfers (artifact copies) stream both ways. `ttl`
    /// bounds the wait for the answer's head (which a peer sends once it has the whole
    /// request body).
    pub async fn exchange_streaming(
        &self,
        peer: &str,
        request: http::Request<PeerBody>,
        ttl: Duration,
    ) -> Result<http::Response<hyper::body::Incoming>, String> {
        let exchange = async {
            let mut sender = self.sender(peer, ttl).await.map_err(|e| match e {
                CallError::Unreachable(e) | CallError::Network(e) => e.0,
            })?;
            sender.ready().await.map_err(|e| e.to_string())?;
            let (mut parts, body) = request.into_parts();
            parts.uri = absolute(peer, &parts.uri)?;
            sender
                .send_request(http::Request::from_parts(parts, body))
                .await
                .map_err(|e| e.to_string())
        };
        let result = match tokio::time::timeout(ttl, exchange).await {
            Ok(r) => r,
            Err(_) => Err(format!("{peer} did not answer within {ttl:?}")),
        };
        if result.is_err() {
            pool_lock(&self.pool).remove(peer);
        }
        result
    }

    /// Sends an API request to another member over the peer channel (mutual TLS) and
    /// returns its whole answer: how a follower forwards a request to the leader without
    /// the caller's token ever crossing the network in the clear.
    pub async fn forward(
        &self,
        peer: &str,
        request: http::Request<Full<Bytes>>,
        ttl: Duration,
    ) -> Result<http::Response<Bytes>, String> {
        self.exchange(peer, request, ttl)
            .await
            .map_err(|e| match e {
                CallError::Unreachable(e) | CallError::Network(e) => e.0,
            })
    }
}

/// HTTP/2 carries scheme and authority as pseudo-headers: `uri` (path and query) as an
/// absolute URI at `peer`.
fn absolute(peer: &str, uri: &http::Uri) -> Result<http::Uri, String> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    format!("https://{peer}{pq}")
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())
}

impl PeerClient {
    /// One call on this client's Raft channel connection (dialed when it has none): the
    /// answer's body, or `None` when the peer speaks only HTTP/2 (the caller uses that).
    /// A connection that fails before answering after serving earlier calls (the peer
    /// restarted, say) is replaced once: appends and votes may be repeated. A call dropped
    /// or out of time leaves its exchange in flight; the next call first waits for it (its
    /// answer is stale: openraft sends again what it needs).
    async fn frame_call(
        &mut self,
        kind: u8,
        body: Bytes,
        ttl: Duration,
    ) -> Result<Option<Vec<u8>>, CallError> {
        let peer = self.peer.clone();
        let deadline = tokio::time::Instant::now() + ttl;
        {
            let mut g = frames_lock(&self.network.frames);
            if let Some(since) = g.get(&peer) {
                if since.elapsed() < HTTP_ONLY_RECHECK {
                    return Ok(None);
                }
                g.remove(&peer);
            }
        }
        if let Some((since, exchange)) = self.in_flight.as_mut() {
            let until = deadline.min(*since + IN_FLIGHT_LIMIT);
            match tokio::time::timeout_at(until, exchange).await {
                Err(_) if until < deadline => self.in_flight = None,
                Err(_) => {
                    return Err(CallError::Network(TransportError(format!(
                        "{peer} did not answer an earlier call within {ttl:?}"
                    ))))
                }
                Ok((answer, conn)) => {
                    self.in_flight = None;
                    if answer.is_ok() {
                        self.conn = Some(conn);
                    }
                }
            }
        }
        for attempt in 0..2 {
            let reused = self.conn.is_some();
            let conn = match self.conn.take() {
                Some(c) => c,
                None => {
                    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                    let tls = self.network.tls.client_raft();
                    let c = self.network.dial(&peer, tls, left).await?;
                    if c.get_ref().1.alpn_protocol() != Some(super::frame::ALPN) {
                        frames_lock(&self.network.frames)
                            .insert(peer.clone(), std::time::Instant::now());
                        return Ok(None);
                    }
                    c
                }
            };
            let (_, exchange) = self.in_flight.insert((
                tokio::time::Instant::now(),
                exchange_on(conn, kind, body.clone()),
            ));
            let Ok((answer, conn)) = tokio::time::timeout_at(deadline, exchange).await else {
                return Err(CallError::Network(TransportError(format!(
                    "{peer} did not answer within {ttl:?}"
                ))));
            };
            self.in_flight = None;
            match answer {
                Err(_) if reused && attempt == 0 => continue,
                Err(e) => {
                    return Err(CallError::Network(TransportError(format!(
                        "Raft channel to {peer}: {e}"
                    ))))
                }
                Ok((super::frame::OK, answer)) => {
                    self.conn = Some(conn);
                    return Ok(Some(answer));
                }
                Ok((_, why)) => {
                    return Err(CallError::Network(TransportError(format!(
                        "{peer} refused the call: {}",
                        String::from_utf8_lossy(&why[..why.len().min(200)])
                    ))))
                }
            }
        }
        Err(CallError::Network(TransportError(format!(
            "Raft channel to {peer}: no answer"
        ))))
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        path: &str,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, CallError> {
        let body = Bytes::from(
            serde_json::to_vec(req)
                .map_err(|e| CallError::Network(TransportError(e.to_string())))?,
        );
        let kind = match path {
            PATH_APPEND => Some(super::frame::APPEND),
            PATH_VOTE => Some(super::frame::VOTE),
            _ => None,
        };
        self.calls += 1;
        if let Some(kind) = kind.filter(|_| self.calls > 1) {
            if let Some(answer) = self.frame_call(kind, body.clone(), ttl).await? {
                return serde_json::from_slice(&answer).map_err(|e| {
                    CallError::Network(TransportError(format!(
                        "bad response from {}: {e}",
                        self.peer
                    )))
                });
            }
        }
        let request = http::Request::post(path)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(body))
            .map_err(|e| CallError::Network(TransportError(e.to_string())))?;
        let resp = self.network.exchange(&self.peer, request, ttl).await?;
        let (status, bytes) = (resp.status(), resp.into_body());
        if !status.is_success() {
            return Err(CallError::Network(TransportError(format!(
                "{}{path} answered {status}: {}",
                self.peer,
                String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
            ))));
        }
        serde_json::from_slice(&bytes).map_err(|e| {
            CallError::Network(TransportError(format!(
                "bad response from {}: {e}",
                self.peer
            )))
        })
    }

    async fn rpc<Req: Serialize, T: DeserializeOwned, E: std::error::Error + DeserializeOwned>(
        &mut self,
        path: &str,
        req: &Req,
        option: &RPCOption,
    ) -> Result<T, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>> {
        match self
            .call::<Req, Result<T, RaftError<NodeId, E>>>(path, req, option.hard_ttl())
            .await
        {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new(self.target, e))),
            Err(CallError::Unreachable(e)) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(CallError::Network(e)) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for PeerClient {
    async fn append_entries(
        &mut self,
        mut rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        // A lagging follower may be owed more than one append can carry in time: send a
        // prefix that fits the budget and report how far it got (openraft continues from
        // there).
        let keep = entries_within(&rpc.entries, self.append.start());
        let cut = (keep < rpc.entries.len()).then(|| rpc.entries[keep - 1].log_id);
        rpc.entries.truncate(keep);
        let started = std::time::Instant::now();
        let result = self.rpc(PATH_APPEND, &rpc, &option).await;
        if !matches!(result, Err(RPCError::Network(_) | RPCError::Unreachable(_))) {
            self.append
                .finished(cut.is_some(), started.elapsed(), option.hard_ttl());
        }
        match (result?, cut) {
            (AppendEntriesResponse::Success, Some(last)) => {
                Ok(AppendEntriesResponse::PartialSuccess(Some(last)))
            }
            (other, _) => Ok(other),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.rpc(PATH_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.rpc(PATH_VOTE, &rpc, &option).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::Vote;

    /// A member on an older release: its peer listener speaks HTTP/2 only (no Raft
    /// channel) and answers votes. Returns its address.
    async fn http2_only_peer(tls: &crate::pki::NodeTls) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(tls.agent_server_config().unwrap());
        let router = axum::Router::new().route(
            PATH_VOTE,
            axum::routing::post(
                |axum::Json(req): axum::Json<VoteRequest<NodeId>>| async move {
                    let answer: Result<VoteResponse<NodeId>, RaftError<NodeId>> =
                        Ok(VoteResponse {
                            vote: req.vote,
                            vote_granted: false,
                            last_log_id: None,
                        });
                    axum::Json(answer)
                },
            ),
        );
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (config, router) = (config.clone(), router.clone());
                tokio::spawn(async move {
                    let Ok(tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await else {
                        return;
                    };
                    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .serve_connection(
                            TokioIo::new(tls),
                            hyper_util::service::TowerToHyperService::new(router),
                        )
                        .await;
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_peer_without_the_raft_channel_is_called_over_http2() {
        let ca = crate::pki::Ca::generate("test-cluster").unwrap();
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let member = ca.issue("n1", &[ip]).unwrap();
        let peer = http2_only_peer(&member).await;
        let tls = TlsHandle::default();
        tls.set(&member).unwrap();
        let mut network = Network {
            tls,
            source: None,
            pool: Default::default(),
            frames: Default::default(),
        };
        let node = NodeInfo {
            name: "old".into(),
            api: "http://127.0.0.1:1".into(),
            peer: peer.to_string(),
            zone: None,
        };
        let mut client = network.new_client(2, &node).await;
        let req = VoteRequest::new(Vote::new(3, 1), None);
        // The first call goes over HTTP/2; the second asks for the channel, is answered
        // with h2, and is made over HTTP/2 as well; the peer is remembered as HTTP/2-only.
        for _ in 0..3 {
            let option = RPCOption::new(Duration::from_secs(5));
            let answer = client.vote(req.clone(), option).await.expect("answered");
            assert!(!answer.vote_granted);
        }
        assert!(frames_lock(&network.frames).contains_key(&peer.to_string()));
    }

    /// A peer whose Raft channel echoes each frame, after `delay` when it starts with
    /// `slow`; counts its connections.
    async fn slow_channel_peer(
        tls: &crate::pki::NodeTls,
        delay: Duration,
    ) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::new(tls.server_config().unwrap());
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let config = config.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await
                    else {
                        return;
                    };
                    while let Ok(Some((_, body))) = super::super::frame::read_frame(&mut tls).await
                    {
                        if body.starts_with(b"slow") {
                            tokio::time::sleep(delay).await;
                        }
                        let ok = super::super::frame::OK;
                        if super::super::frame::write_frame(&mut tls, ok, &body)
                            .await
                            .is_err()
                        {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    #[tokio::test]
    async fn a_call_out_of_time_keeps_its_connection_for_the_next() {
        let ca = crate::pki::Ca::generate("test-cluster").unwrap();
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        let member = ca.issue("n1", &[ip]).unwrap();
        let (peer, accepted) = slow_channel_peer(&member, Duration::from_millis(200)).await;
        let tls = TlsHandle::default();
        tls.set(&member).unwrap();
        let mut network = Network {
            tls,
            source: None,
            pool: Default::default(),
            frames: Default::default(),
        };
        let node = NodeInfo {
            name: "slow".into(),
            api: "http://127.0.0.1:1".into(),
            peer: peer.to_string(),
            zone: None,
        };
        let mut client = network.new_client(2, &node).await;
        let long = Duration::from_secs(5);
        let warm = Bytes::from_static(b"warm");
        let answer = client
            .frame_call(super::super::frame::APPEND, warm, long)
            .await;
        assert!(matches!(answer, Ok(Some(_))), "the first call failed");
        let slow = Bytes::from_static(b"slow");
        let short = Duration::from_millis(50);
        assert!(client
            .frame_call(super::super::frame::APPEND, slow, short)
            .await
            .is_err());
        // The next call waits out the first one's answer on the same connection, then
        // makes its own.
        let second = Bytes::from_static(b"second");
        let answer = client
            .frame_call(super::super::frame::APPEND, second, long)
            .await
            .unwrap_or_else(|_| panic!("the second call failed"));
        assert_eq!(answer.as_deref(), Some(&b"second"[..]));
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn the_append_budget_shrinks_after_a_dropped_append_and_grows_after_quick_ones() {
        let ttl = Duration::from_millis(100);
        let mut b = AppendBudget::new();
        assert_eq!(b.start(), FIRST_APPEND_PAYLOAD);
        // Dropped before it finished: the next one gets half.
        assert_eq!(b.start(), FIRST_APPEND_PAYLOAD / 2);
        b.finished(true, Duration::from_millis(10), ttl);
        assert_eq!(b.start(), FIRST_APPEND_PAYLOAD);
        // A slow append, or one that was not cut, leaves it where it is.
        b.finished(true, Duration::from_millis(60), ttl);
        assert_eq!(b.start(), FIRST_APPEND_PAYLOAD);
        b.finished(false, Duration::from_millis(1), ttl);
        for _ in 0..20 {
            b.start();
        }
        assert_eq!(b.start(), MIN_APPEND_PAYLOAD);
        for _ in 0..20 {
            b.finished(true, Duration::from_millis(1), ttl);
            b.start();
        }
        assert_eq!(b.bytes, MAX_APPEND_PAYLOAD);
    }
}
