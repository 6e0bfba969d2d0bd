//! The Raft RPC client openraft makes for one peer: its first call over the peer's shared
//! HTTP/2 connection (`network.rs`), from its second on over a Raft channel connection of
//! its own (`frame.rs`), falling back to HTTP/2 for a peer that does not offer the channel.
//! Appends are sized to arrive within openraft's per-call timeout (`AppendBudget`), and a
//! call openraft drops is finished on its connection by the next one.

use super::network::{
    frames_lock, CallError, Network, TransportError, PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE,
};
use super::types::*;
use bytes::Bytes;
use http_body_util::Full;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::time::Duration;

/// Payload bytes (commands' own size) sent in one append at most: a quarter of what the
/// peer server accepts (`rpc::MAX_RPC_BODY`), leaving room for JSON's escaping.
const MAX_APPEND_PAYLOAD: usize = 16 << 20;
/// What a replication stream's appends start with.
const FIRST_APPEND_PAYLOAD: usize = 1 << 20;
/// The least they shrink to (an append still carries one entry, however large).
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

/// How long the calls after a dropped one wait for its exchange to finish before they give
/// up its connection.
const IN_FLIGHT_LIMIT: Duration = Duration::from_secs(10);

/// How long a peer that speaks only HTTP/2 is called over it before trying again.
const HTTP_ONLY_RECHECK: Duration = Duration::from_secs(60);

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

impl PeerClient {
    pub(super) fn new(target: NodeId, peer: String, network: Network) -> Self {
        PeerClient {
            target,
            peer,
            network,
            calls: 0,
            conn: None,
            in_flight: None,
            append: AppendBudget::new(),
        }
    }

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
    use crate::pki::TlsHandle;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use openraft::network::RaftNetworkFactory;
    use openraft::Vote;
    use std::sync::Arc;

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

    /// A member's certificate from a new cluster CA, naming 127.0.0.1.
    fn member() -> crate::pki::NodeTls {
        let ca = crate::pki::Ca::generate("test-cluster").unwrap();
        let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        ca.issue("n1", &[ip]).unwrap()
    }

    /// The client a member with `member`'s certificate makes for the peer at `peer`.
    async fn client_of(
        member: &crate::pki::NodeTls,
        peer: std::net::SocketAddr,
    ) -> (Network, PeerClient) {
        let tls = TlsHandle::default();
        tls.set(member).unwrap();
        let mut network = Network {
            tls,
            source: None,
            pool: Default::default(),
            frames: Default::default(),
        };
        let node = NodeInfo {
            name: "peer".into(),
            api: "http://127.0.0.1:1".into(),
            peer: peer.to_string(),
            zone: None,
        };
        let client = network.new_client(2, &node).await;
        (network, client)
    }

    #[tokio::test]
    async fn a_peer_without_the_raft_channel_is_called_over_http2() {
        let member = member();
        let peer = http2_only_peer(&member).await;
        let (network, mut client) = client_of(&member, peer).await;
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
        let member = member();
        let (peer, accepted) = slow_channel_peer(&member, Duration::from_millis(200)).await;
        let (_, mut client) = client_of(&member, peer).await;
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
