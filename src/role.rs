//! The shape every role shares: `bind` (sockets, stores; serves nothing) returns a
//! [`Bound`] role that reports its addresses and whose `run(shutdown)` serves until the
//! token fires. Tests bind port 0 and read the real addresses from the listeners file.

use crate::config::{Role, RuntimeConfig};
use crate::telemetry::Metrics;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A role's serving future.
pub type RunFuture = Pin<Box<dyn Future<Output = Result<(), RoleError>> + Send>>;

/// What a role needs from the process around it.
#[derive(Clone)]
pub struct RoleContext {
    pub config: RuntimeConfig,
    pub metrics: Metrics,
    /// The API address the co-located control role bound, once it has.
    pub local_control: Option<SocketAddr>,
}

impl RoleContext {
    /// The control URLs a client role uses: its configured list, or else the co-located
    /// control role (validation guarantees one of the two).
    pub fn control_urls(&self, configured: &[String]) -> Vec<http::Uri> {
        if configured.is_empty() {
            return self
                .local_control
                .and_then(|a| local_url(a).parse().ok())
                .into_iter()
                .collect();
        }
        configured
            .iter()
            .filter_map(|u| crate::config::check_url(u).ok())
            .collect()
    }
}

/// `http://ADDR` for a bound address, with a wildcard IP replaced by loopback.
pub fn local_url(addr: SocketAddr) -> String {
    let ip = if addr.ip().is_unspecified() {
        match addr {
            SocketAddr::V4(_) => std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        }
    } else {
        addr.ip()
    };
    format!("http://{}", SocketAddr::new(ip, addr.port()))
}

/// A role with its sockets bound, ready to run.
pub struct Bound {
    pub role: Role,
    /// (what, address), e.g. ("api", 127.0.0.1:7400); the first is the role's main listener.
    pub listeners: Vec<(&'static str, SocketAddr)>,
    run: Box<dyn FnOnce(CancellationToken) -> RunFuture + Send>,
}

impl Bound {
    pub fn new(
        role: Role,
        listeners: Vec<(&'static str, SocketAddr)>,
        run: impl FnOnce(CancellationToken) -> RunFuture + Send + 'static,
    ) -> Bound {
        Bound {
            role,
            listeners,
            run: Box::new(run),
        }
    }

    /// Serves until `shutdown` fires and in-flight work is drained.
    pub fn run(self, shutdown: CancellationToken) -> RunFuture {
        (self.run)(shutdown)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("cannot listen on {addr} (`{key}`): {source}")]
    Bind {
        key: String,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("{role}: {what} failed: {source}")]
    Serve {
        role: Role,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("{role}: {message}")]
    Failed { role: Role, message: String },
}

/// Binds a TCP listener, naming the config key in the error.
pub async fn bind_tcp(key: &str, addr: SocketAddr) -> Result<TcpListener, RoleError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| RoleError::Bind {
            key: key.to_string(),
            addr,
            source,
        })
}

/// The address a listener actually got (differs from the config when the port was 0).
pub fn local_addr(l: &TcpListener, fallback: SocketAddr) -> SocketAddr {
    l.local_addr().unwrap_or(fallback)
}
