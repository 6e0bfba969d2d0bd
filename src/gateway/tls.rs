//! The HTTPS entrance's certificates, chosen per connection by SNI (exact name, then
//! `*.domain`, else a default): from the files of the profile (reloaded when a file
//! changes), and from the control plane's `certificates` (replaced with every table the
//! feed installs; the feed's cache keeps them for a start with the control plane down).
//! A name in both is served from the files.

use crate::config::GatewayCertificate;
use arc_swap::ArcSwap;
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
    /// From the profile's files.
    files: ArcSwap<Table>,
    /// From the control plane.
    stored: ArcSwap<Table>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let (f, c) = (self.files.load(), self.stored.load());
        let default = || f.default.clone().or_else(|| c.default.clone());
        let Some(name) = hello.server_name() else {
            return default();
        };
        let name = name.to_ascii_lowercase();
        if let Some(k) = f.exact.get(&name).or_else(|| c.exact.get(&name)) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = f.wildcard.get(parent).or_else(|| c.wildcard.get(parent)) {
                return Some(k.clone());
            }
        }
        default()
    }
}

impl SniResolver {
    /// Replaces the control plane's certificates with those in `inputs`; one that cannot
    /// be used is skipped and named in the answer.
    pub fn install_stored(&self, inputs: &crate::api::feed::Inputs) -> Vec<String> {
        let mut t = Table::default();
        let mut problems = Vec::new();
        // Sorted by name (the inputs are), so the default is stable.
        for r in inputs.of_kind(crate::model::Kind::Certificate) {
            let name = &r.metadata.name;
            let spec: crate::model::certificate::CertificateSpec =
                match serde_json::from_value(r.spec.clone()) {
                    Ok(s) => s,
                    Err(e) => {
                        problems.push(format!("certificate {name}: {e}"));
                        continue;
                    }
                };
            if spec.key.starts_with(crate::model::SEALED_PREFIX) {
                problems.push(format!(
                    "certificate {name}: its key arrived sealed (this credential is not a gateway's)"
                ));
                continue;
            }
            match crate::model::certificate::certified(
                spec.cert.as_bytes(),
                spec.key.as_bytes(),
                &spec.hosts,
            ) {
                Ok((hosts, key)) => add(&mut t, hosts, key),
                Err(p) => problems.push(format!("certificate {name}: {}: {}", p.part, p.message)),
            }
        }
        self.stored.store(Arc::new(t));
        problems
    }
}

fn add(t: &mut Table, hosts: Vec<String>, key: Arc<CertifiedKey>) {
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

fn load_one(c: &GatewayCertificate) -> Result<(Vec<String>, Arc<CertifiedKey>), String> {
    let cert_pem = std::fs::read(&c.cert).map_err(|e| format!("{}: {e}", c.cert.display()))?;
    let key_pem = std::fs::read(&c.key).map_err(|e| format!("{}: {e}", c.key.display()))?;
    crate::model::certificate::certified(&cert_pem, &key_pem, &c.hosts).map_err(|p| {
        let file = if p.part == "key" { &c.key } else { &c.cert };
        format!("{}: {}", file.display(), p.message)
    })
}

fn load(certs: &[GatewayCertificate]) -> Result<Table, String> {
    let mut t = Table::default();
    for c in certs {
        let (hosts, key) = load_one(c)?;
        add(&mut t, hosts, key);
    }
    Ok(t)
}

/// The rustls configuration of the HTTPS entrance and its resolver (for reloads).
pub fn server_config(
    certs: &[GatewayCertificate],
) -> Result<(Arc<rustls::ServerConfig>, Arc<SniResolver>), String> {
    let resolver = Arc::new(SniResolver {
        files: ArcSwap::from_pointee(load(certs)?),
        stored: ArcSwap::from_pointee(Table::default()),
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
                resolver.files.store(Arc::new(t));
                tracing::info!("Reloaded the HTTPS entrance's certificates");
            }
            Err(e) => {
                tracing::error!(error = %e, "New certificate files are unusable; keeping the old ones")
            }
        }
    }
}
