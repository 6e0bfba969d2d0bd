//! The HTTPS entrance's certificates: loaded from files, chosen per connection by SNI
//! (exact name, then `*.domain`, else the first certificate), reloaded when a file changes.

use crate::config::GatewayCertificate;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// How often certificate files are checked for changes.
const RELOAD_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, Default)]
struct Table {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.bank.example` is stored as `bank.example`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

#[derive(Debug)]
pub struct SniResolver {
    table: ArcSwap<Table>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let t = self.table.load();
        let Some(name) = hello.server_name() else {
            return t.default.clone();
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = t.exact.get(&name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = t.wildcard.get(parent) {
                return Some(k.clone());
            }
        }
        t.default.clone()
    }
}

fn load_one(c: &GatewayCertificate) -> Result<(Vec<String>, Arc<CertifiedKey>), String> {
    let cert_pem = std::fs::read(&c.cert).map_err(|e| format!("{}: {e}", c.cert.display()))?;
    let key_pem = std::fs::read(&c.key).map_err(|e| format!("{}: {e}", c.key.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", c.cert.display()))?;
    let leaf = chain
        .first()
        .ok_or_else(|| format!("{}: holds no certificate", c.cert.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| format!("{}: not a PEM private key: {e}", c.key.display()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("{}: unsupported key: {e}", c.key.display()))?;
    let hosts = if c.hosts.is_empty() {
        dns_names(leaf).map_err(|e| format!("{}: {e}", c.cert.display()))?
    } else {
        c.hosts.iter().map(|h| h.to_ascii_lowercase()).collect()
    };
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| {
        format!(
            "{} does not belong to {}: {e}",
            c.key.display(),
            c.cert.display()
        )
    })?;
    Ok((hosts, Arc::new(certified)))
}

/// The DNS names a certificate is for (its subject alternative names).
fn dns_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut out = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                out.push(d.to_ascii_lowercase());
            }
        }
    }
    Ok(out)
}

fn load(certs: &[GatewayCertificate]) -> Result<Table, String> {
    let mut t = Table::default();
    for c in certs {
        let (hosts, key) = load_one(c)?;
        if t.default.is_none() {
            t.default = Some(key.clone());
        }
        for h in hosts {
            match h.strip_prefix("*.") {
                Some(parent) => t.wildcard.entry(parent.to_string()).or_insert(key.clone()),
                None => t.exact.entry(h).or_insert(key.clone()),
            };
        }
    }
    Ok(t)
}

/// The rustls configuration of the HTTPS entrance and its resolver (for reloads).
pub fn server_config(
    certs: &[GatewayCertificate],
) -> Result<(Arc<rustls::ServerConfig>, Arc<SniResolver>), String> {
    let resolver = Arc::new(SniResolver {
        table: ArcSwap::from_pointee(load(certs)?),
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_no_client_auth()
    .with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(cfg), resolver))
}

fn mtimes(certs: &[GatewayCertificate]) -> Vec<Option<SystemTime>> {
    let files: Vec<&PathBuf> = certs.iter().flat_map(|c| [&c.cert, &c.key]).collect();
    files
        .iter()
        .map(|f| std::fs::metadata(f).and_then(|m| m.modified()).ok())
        .collect()
}

/// Reloads the certificates when a file changes; a bad new file keeps the old ones.
pub async fn reload(
    certs: Vec<GatewayCertificate>,
    resolver: Arc<SniResolver>,
    shutdown: CancellationToken,
) {
    let mut seen = mtimes(&certs);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(RELOAD_EVERY) => {}
        }
        let now = mtimes(&certs);
        if now == seen {
            continue;
        }
        seen = now;
        match load(&certs) {
            Ok(t) => {
                resolver.table.store(Arc::new(t));
                tracing::info!("Reloaded the HTTPS entrance's certificates");
            }
            Err(e) => {
                tracing::error!(error = %e, "New certificate files are unusable; keeping the old ones")
            }
        }
    }
}
