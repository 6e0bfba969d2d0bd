//! Networking helpers shared by roles and the CLI.

pub mod dual;
pub mod probe;
pub mod resolve;

use std::net::{IpAddr, SocketAddr};

/// Connects to `addr`, leaving from `source` when given (and of the same address family),
/// so that firewalls and partition tests can tell which node a connection comes from.
pub async fn connect_from(
    addr: SocketAddr,
    source: Option<IpAddr>,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    if let Some(ip) = source.filter(|ip| ip.is_ipv4() == addr.is_ipv4() && !ip.is_unspecified()) {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}
