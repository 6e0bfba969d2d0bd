//! Raft RPC server: the handlers behind the peer listener (`control.peer_listen`).

use super::network::{PATH_APPEND, PATH_SNAPSHOT, PATH_VOTE};
use super::types::*;
use axum::extract::{DefaultBodyLimit, State};
use axum::routing::post;
use axum::{Json, Router};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

/// Largest RPC body accepted: a batch of entries or one snapshot chunk.
const MAX_RPC_BODY: usize = 64 << 20;

pub fn router(raft: Raft) -> Router {
    Router::new()
        .route(PATH_APPEND, post(append))
        .route(PATH_VOTE, post(vote))
        .route(PATH_SNAPSHOT, post(snapshot))
        .layer(DefaultBodyLimit::max(MAX_RPC_BODY))
        .with_state(raft)
}

async fn append(
    State(raft): State<Raft>,
    Json(req): Json<AppendEntriesRequest<TypeConfig>>,
) -> Json<Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>> {
    Json(raft.append_entries(req).await)
}

async fn vote(
    State(raft): State<Raft>,
    Json(req): Json<VoteRequest<NodeId>>,
) -> Json<Result<VoteResponse<NodeId>, RaftError<NodeId>>> {
    Json(raft.vote(req).await)
}

async fn snapshot(
    State(raft): State<Raft>,
    Json(req): Json<InstallSnapshotRequest<TypeConfig>>,
) -> Json<Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>> {
    Json(raft.install_snapshot(req).await)
}

/// Serves the peer listener over TLS until `shutdown`: a connection that presents a
/// certificate from the cluster CA gets `router` (Raft RPCs, and the join endpoints for
/// forwarding); one without a certificate gets only `anonymous` (the join endpoints); a
/// certificate from another CA fails the handshake. There is no plaintext mode. A member
/// that negotiates the Raft channel's ALPN (`frame::ALPN`) gets `raft`'s appends and votes
/// as frames instead of HTTP/2.
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: Router,
    anonymous: Router,
    raft: Raft,
    tls: crate::pki::TlsHandle,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    loop {
        let (tcp, remote) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "Peer accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(config) = tls.server() else {
            tracing::debug!(%remote, "Peer connection refused: no certificate yet");
            continue;
        };
        let (router, anonymous, raft) = (router.clone(), anonymous.clone(), raft.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let handshake = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
            let stream =
                match tokio::time::timeout(std::time::Duration::from_secs(10), handshake).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        tracing::warn!(%remote, error = %e, "Peer TLS handshake refused");
                        return;
                    }
                    Err(_) => return,
                };
            let authenticated = stream.get_ref().1.peer_certificates().is_some();
            if stream.get_ref().1.alpn_protocol() == Some(super::frame::ALPN) {
                // The Raft channel is for members only.
                if authenticated {
                    super::frame::serve(stream, raft, remote, shutdown).await;
                } else {
                    tracing::warn!(%remote, "Raft channel refused: no member certificate");
                }
                return;
            }
            let router = if authenticated { router } else { anonymous };
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(Some(std::time::Duration::from_secs(5)))
                .keep_alive_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), TowerToHyperService::new(router));
            tokio::select! {
                _ = conn => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
}
