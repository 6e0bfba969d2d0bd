//! The dbproxy role: the MySQL-protocol proxy. Today it binds its listeners and answers
//! each MySQL client with a protocol-correct ERR packet saying that no data sources are
//! configured, so clients fail at once with a clear message instead of hanging. The
//! handshake, routing and splitting build on this.

use crate::admin;
use crate::config::Role;
use crate::net::probe;
use crate::role::{bind_tcp, local_addr, Bound, RoleContext, RoleError};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// ER_UNKNOWN_ERROR; sent before the handshake, so without an SQLSTATE marker.
const ER_UNKNOWN_ERROR: u16 = 1105;

pub async fn bind(ctx: &RoleContext) -> Result<Bound, RoleError> {
    let cfg = &ctx.config;
    let health = ctx.metrics.health(Role::Dbproxy);
    let mysql = bind_tcp("dbproxy.listen", cfg.dbproxy.listen.0).await?;
    let admin_l = bind_tcp("dbproxy.admin_listen", cfg.dbproxy.admin_listen.0).await?;
    let listeners = vec![
        ("mysql", local_addr(&mysql, cfg.dbproxy.listen.0)),
        ("admin", local_addr(&admin_l, cfg.dbproxy.admin_listen.0)),
    ];
    let urls = ctx.control_urls(&cfg.dbproxy.control);
    let gauge = ctx.metrics.control_reachable(Role::Dbproxy);
    let router = admin::router(health.clone(), ctx.metrics.clone());
    Ok(Bound::new(Role::Dbproxy, listeners, move |shutdown| {
        Box::pin(async move {
            let probe = tokio::spawn(probe::watch_control(
                Role::Dbproxy,
                urls,
                Duration::from_secs(5),
                gauge,
                None,
                shutdown.clone(),
            ));
            health.set_ready();
            let (a, b) = tokio::join!(
                refuse_all(mysql, shutdown.clone()),
                admin::serve(admin_l, router, shutdown)
            );
            let _ = probe.await;
            health.set_not_ready("stopped");
            a.and(b).map_err(|source| RoleError::Serve {
                role: Role::Dbproxy,
                what: "listener",
                source,
            })
        })
    }))
}

async fn refuse_all(listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    let packet = err_packet(
        ER_UNKNOWN_ERROR,
        "tessera dbproxy: no data sources are configured yet",
    );
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            accepted = listener.accept() => {
                let Ok((mut sock, peer)) = accepted else { continue };
                let packet = packet.clone();
                tokio::spawn(async move {
                    tracing::debug!(%peer, "Refusing MySQL client: no data sources");
                    let _ = sock.write_all(&packet).await;
                    let _ = sock.shutdown().await;
                });
            }
        }
    }
}

/// A MySQL ERR packet with sequence id 0 (3-byte length, sequence, 0xFF, code, message).
fn err_packet(code: u16, message: &str) -> Vec<u8> {
    let mut payload = vec![0xFF];
    payload.extend_from_slice(&code.to_le_bytes());
    payload.extend_from_slice(message.as_bytes());
    let len = payload.len() as u32;
    let mut out = len.to_le_bytes()[..3].to_vec();
    out.push(0);
    out.extend(payload);
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn err_packet_layout() {
        let p = super::err_packet(1105, "no");
        assert_eq!(p, vec![5, 0, 0, 0, 0xFF, 0x51, 0x04, b'n', b'o']);
    }
}
