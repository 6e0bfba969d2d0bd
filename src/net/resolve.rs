//! Name resolution that works in a statically linked binary.
//!
//! glibc's `getaddrinfo` (what `std::net::ToSocketAddrs` and `tokio::net::lookup_host` use)
//! loads NSS modules with `dlopen` at run time; in a static binary that needs the exact
//! glibc that linked it, which an air-gapped bank host will not have. tessera never calls
//! it: IP literals are used as they are, and names go through hickory-resolver, a pure-Rust
//! stub resolver that reads `/etc/hosts` and `/etc/resolv.conf` itself. Listen addresses are
//! IP:PORT by design, so binding never resolves anything.

use hickory_resolver::TokioResolver;
use std::net::{IpAddr, SocketAddr};
use tokio::sync::OnceCell;

#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve `{host}`: the system resolver configuration is unusable ({reason})")]
    NoConfig { host: String, reason: String },
    #[error("cannot resolve `{host}`: {reason}")]
    Lookup { host: String, reason: String },
}

/// A process-wide resolver, built on first use.
#[derive(Default)]
pub struct Resolver {
    inner: OnceCell<Result<TokioResolver, String>>,
}

impl Resolver {
    /// Addresses for `host` (a name, an IP, or a bracketed IPv6 literal) and `port`.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, ResolveError> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        let resolver = self
            .inner
            .get_or_init(|| async {
                TokioResolver::builder_tokio()
                    .map_err(|e| e.to_string())
                    .and_then(|b| b.build().map_err(|e| e.to_string()))
            })
            .await
            .as_ref()
            .map_err(|reason| ResolveError::NoConfig {
                host: host.to_string(),
                reason: reason.clone(),
            })?;
        let lookup = resolver
            .lookup_ip(bare)
            .await
            .map_err(|e| ResolveError::Lookup {
                host: host.to_string(),
                reason: e.to_string(),
            })?;
        let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(ResolveError::Lookup {
                host: host.to_string(),
                reason: "no addresses".into(),
            });
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_need_no_lookup() {
        let r = Resolver::default();
        assert_eq!(
            r.resolve("127.0.0.9", 80).await.unwrap(),
            vec!["127.0.0.9:80".parse().unwrap()]
        );
        assert_eq!(
            r.resolve("[::1]", 81).await.unwrap(),
            vec!["[::1]:81".parse().unwrap()]
        );
    }

    #[tokio::test]
    async fn localhost_comes_from_the_hosts_file() {
        let addrs = Resolver::default()
            .resolve("localhost", 7400)
            .await
            .unwrap();
        assert!(
            addrs
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7400),
            "{addrs:?}"
        );
    }
}
