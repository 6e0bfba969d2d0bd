//! Raft RPC transport: one persistent HTTP/2 connection per peer, shared by every client
//! openraft creates for that peer (`client.rs`: it creates one per replication stream,
//! vote round and leadership check), and the TLS dial of the Raft channel those clients
//! use from their second call on (`frame.rs`). API requests a follower forwards to the
//! leader travel over the same HTTP/2 connection (`Network::forward`), artifact copies too
//! (`Network::exchange_streaming`). Peers are addressed by `IP:PORT` (their advertised peer
//! address), so no name lookup is involved; every connection is mutual TLS with the
//! cluster CA (see `rpc.rs` for the server).

use super::client::PeerClient;
use super::types::*;
use crate::pki::TlsHandle;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use openraft::network::RaftNetworkFactory;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A request body on the peer channel: whole (Raft RPCs, forwarded API calls) or
/// streamed (artifact copies).
pub type PeerBody = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub const PATH_APPEND: &str = "/raft/v1/append";
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

pub(super) fn frames_lock(
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
        PeerClient::new(target, node.peer.clone(), self.clone())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(super) struct TransportError(pub(super) String);

pub(super) enum CallError {
    /// No connection could be made: openraft backs off.
    Unreachable(TransportError),
    Network(TransportError),
}

impl Network {
    /// A TLS connection to `peer` (IP:PORT), dialed from this node's IP within `ttl`,
    /// mutual TLS with the cluster CA, the peer's certificate naming its IP.
    pub(super) async fn dial(
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
    pub(super) async fn exchange(
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
