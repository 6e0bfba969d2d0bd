//! The cluster's own PKI: a CA created by the first control node, node certificates signed
//! from CSRs (the private key never leaves the node that made it), and the rustls
//! configurations for mutual TLS. Every connection between roles authenticates both ends
//! with certificates from this CA.

use crate::util::hex;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use time::{Duration, OffsetDateTime};

/// ALPN name of the control nodes' Raft channel on the peer listener
/// (`control::store::frame`).
pub const RAFT_ALPN: &[u8] = b"tessera-raft/1";

const CA_YEARS: i64 = 10;
const NODE_DAYS: i64 = 365;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// The cluster CA: its certificate and (on control nodes only) its private key.
#[derive(Clone)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

fn validity(days: i64) -> (OffsetDateTime, OffsetDateTime) {
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clocks that disagree a little.
    (now - Duration::hours(1), now + Duration::days(days))
}

impl Ca {
    pub fn generate(cluster_id: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(
            DnType::CommonName,
            format!("tessera cluster CA {cluster_id}"),
        );
        dn.push(DnType::OrganizationName, "tessera");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        (params.not_before, params.not_after) = validity(CA_YEARS * 366);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Saves the CA (key 0600) as `ca.pem` and `ca.key` in `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        write_files(
            dir,
            &[
                (CA_FILE, &self.cert_pem, 0o644),
                (CA_KEY_FILE, &self.key_pem, 0o600),
            ],
        )
    }

    /// Loads the CA saved by [`Ca::save`], if this node has it.
    pub fn load(dir: &Path) -> Result<Option<Ca>, PkiError> {
        if !dir.join(CA_KEY_FILE).exists() {
            return Ok(None);
        }
        Ok(Some(Ca {
            cert_pem: read_file(&dir.join(CA_FILE))?,
            key_pem: read_file(&dir.join(CA_KEY_FILE))?,
        }))
    }

    /// SHA-256 of the CA certificate (DER), hex: what join tokens carry to pin the CA.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        fingerprint(&self.cert_pem)
    }

    /// Signs a node certificate for the public key in `csr_pem`. Only the key is taken
    /// from the CSR: names, usages and validity are set here, so a CSR cannot ask for more.
    pub fn sign_csr(&self, csr_pem: &str, name: &str, ips: &[IpAddr]) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Invalid(format!("bad CSR: {e}")))?;
        let key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key)?;
        let params = node_params(name, ips, Usage::Member)?;
        Ok(params.signed_by(&csr.public_key, &issuer)?.pem())
    }

    /// Signs an agent's certificate for the public key in `csr_pem`: the names are
    /// `agent.<node>` and the agent's listener IPs, and its only usage is server
    /// authentication. It cannot act as a TLS client, so the peer listener, which takes
    /// any client certificate from this CA as a member's, refuses it.
    pub fn sign_agent_csr(
        &self,
        csr_pem: &str,
        node: &str,
        ips: &[IpAddr],
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::Invalid(format!("bad CSR: {e}")))?;
        let key = KeyPair::from_pem(&self.key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(&self.cert_pem, key)?;
        let params = node_params(&format!("agent.{node}"), ips, Usage::AgentServer)?;
        Ok(params.signed_by(&csr.public_key, &issuer)?.pem())
    }

    /// A key and certificate for this node, signed directly (the bootstrap node).
    pub fn issue(&self, name: &str, ips: &[IpAddr]) -> Result<NodeTls, PkiError> {
        let (key_pem, csr_pem) = new_key_and_csr(name)?;
        let cert_pem = self.sign_csr(&csr_pem, name, ips)?;
        Ok(NodeTls {
            ca_pem: self.cert_pem.clone(),
            cert_pem,
            key_pem,
        })
    }
}

/// What a certificate may do: a control member's authenticates both ends of mutual TLS;
/// an agent's only serves.
#[derive(Clone, Copy, PartialEq)]
enum Usage {
    Member,
    AgentServer,
}

/// Names: the node name (a DNS name), its IPs, and `localhost` when one of the IPs is a
/// loopback address (so `https://localhost:7400` works on the machine itself).
fn node_params(name: &str, ips: &[IpAddr], usage: Usage) -> Result<CertificateParams, PkiError> {
    let mut names = vec![name.to_string()];
    if name != "localhost" && ips.iter().any(IpAddr::is_loopback) {
        names.push("localhost".to_string());
    }
    let mut params = CertificateParams::new(names)?;
    for ip in ips {
        params.subject_alt_names.push(SanType::IpAddress(*ip));
    }
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match usage {
        Usage::Member => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Usage::AgentServer => vec![ExtendedKeyUsagePurpose::ServerAuth],
    };
    (params.not_before, params.not_after) = validity(NODE_DAYS);
    Ok(params)
}

/// A new private key and a CSR for it (the key stays with the caller).
pub fn new_key_and_csr(name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let params = CertificateParams::new(vec![name.to_string()])?;
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// SHA-256 (hex) of the first certificate in `pem`.
pub fn fingerprint(pem: &str) -> Result<String, PkiError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| PkiError::Invalid(format!("bad certificate: {e}")))?;
    Ok(hex(&Sha256::digest(der.as_ref())))
}

/// This node's CA bundle, certificate and key, as PEM.
#[derive(Clone)]
pub struct NodeTls {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl NodeTls {
    /// When this node's certificate stops being valid.
    pub fn not_after(&self) -> Result<OffsetDateTime, PkiError> {
        let der = CertificateDer::from_pem_slice(self.cert_pem.as_bytes())
            .map_err(|e| PkiError::Invalid(format!("bad node certificate: {e}")))?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)
            .map_err(|e| PkiError::Invalid(format!("bad node certificate: {e}")))?;
        Ok(cert.validity().not_after.to_datetime())
    }
}

const CA_FILE: &str = "ca.pem";
const CERT_FILE: &str = "node.pem";
const KEY_FILE: &str = "node.key";
const CA_KEY_FILE: &str = "ca.key";

impl NodeTls {
    /// Loads `ca.pem`, `node.pem`, `node.key` from `dir`; `None` when absent.
    pub fn load(dir: &Path) -> Result<Option<NodeTls>, PkiError> {
        if !dir.join(KEY_FILE).exists() {
            return Ok(None);
        }
        Self::load_files(
            &dir.join(CA_FILE),
            &dir.join(CERT_FILE),
            &dir.join(KEY_FILE),
        )
        .map(Some)
    }

    /// Loads explicitly configured files (`[tls]` of the profile).
    pub fn load_files(ca: &Path, cert: &Path, key: &Path) -> Result<NodeTls, PkiError> {
        Ok(NodeTls {
            ca_pem: read_file(ca)?,
            cert_pem: read_file(cert)?,
            key_pem: read_file(key)?,
        })
    }

    /// Writes the three files into `dir` (the key 0600), key last.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        write_files(
            dir,
            &[
                (CA_FILE, &self.ca_pem, 0o644),
                (CERT_FILE, &self.cert_pem, 0o644),
                (KEY_FILE, &self.key_pem, 0o600),
            ],
        )
    }

    fn parts(
        &self,
    ) -> Result<
        (
            rustls::RootCertStore,
            Vec<CertificateDer<'static>>,
            PrivateKeyDer<'static>,
        ),
        PkiError,
    > {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(c.map_err(|e| PkiError::Invalid(format!("bad CA certificate: {e}")))?)?;
        }
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| PkiError::Invalid(format!("bad node certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| PkiError::Invalid(format!("bad node key: {e}")))?;
        Ok((roots, chain, key))
    }

    /// Server side of the peer listener: a client certificate, when presented, must come
    /// from our CA (or the handshake fails); a client without one may connect, and is
    /// served only the join endpoints (see `control::store::rpc::serve_tls`), so a joining
    /// node can send its token over TLS to a server it authenticated.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        // The Raft channel first: a server picks the first of its own it is offered.
        self.mutual_server_config(true, &[RAFT_ALPN, b"h2"])
    }

    /// A server that checks client certificates against our CA (a client without one
    /// gets in only when `optional`), offering `alpn`.
    fn mutual_server_config(
        &self,
        optional: bool,
        alpn: &[&[u8]],
    ) -> Result<rustls::ServerConfig, PkiError> {
        let (roots, chain, key) = self.parts()?;
        let provider = provider();
        let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        );
        let builder = if optional {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        let verifier = builder
            .build()
            .map_err(|e| PkiError::Invalid(format!("client verifier: {e}")))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(cfg)
    }

    /// Server side of the API listener's HTTPS: callers authenticate with bearer tokens,
    /// so no client certificate is asked for; ALPN offers h2 and http/1.1.
    pub fn api_server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        let (_, chain, key) = self.parts()?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(cfg)
    }

    /// Server side of an agent's listener over TLS: only a client with a certificate from
    /// our CA that may authenticate clients (a control member's) gets in; ALPN offers h2
    /// and http/1.1.
    pub fn agent_server_config(&self) -> Result<rustls::ServerConfig, PkiError> {
        self.mutual_server_config(false, &[b"h2", b"http/1.1"])
    }

    /// Client side of mutual TLS: trusts only our CA and presents this node's certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, PkiError> {
        let (roots, chain, key) = self.parts()?;
        let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(cfg)
    }
}

/// A TLS client that trusts only `ca_pem` and presents no certificate: how a joining
/// node talks to the cluster before it has one.
pub fn anonymous_client_config(ca_pem: &str) -> Result<rustls::ClientConfig, PkiError> {
    let mut cfg = trusting_client_config(ca_pem)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(cfg)
}

/// A TLS client that trusts only the CA certificates in `ca_pem` (at least one), with
/// no client certificate and no ALPN: for services outside the cluster (log sinks).
pub fn trusting_client_config(ca_pem: &str) -> Result<rustls::ClientConfig, PkiError> {
    let roots = roots_from_pem(ca_pem).map_err(PkiError::Invalid)?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// The CA certificates in `ca_pem` (at least one), or what is wrong with them.
pub fn roots_from_pem(ca_pem: &str) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        let c = c.map_err(|e| format!("bad CA certificate: {e}"))?;
        roots
            .add(c)
            .map_err(|e| format!("bad CA certificate: {e}"))?;
    }
    if roots.is_empty() {
        return Err("no CA certificate in the PEM".into());
    }
    Ok(roots)
}

/// How a TLS client checks its server (the `mysql` client's `--ssl-mode` levels).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerCheck {
    /// Encrypted, the certificate not checked (`REQUIRED`, `PREFERRED`).
    None,
    /// The certificate chains to the given CA; any name (`VERIFY_CA`).
    Chain,
    /// The certificate chains to the CA and names the server (`VERIFY_IDENTITY`).
    Identity,
}

/// A TLS client without ALPN or a client certificate that checks its server as `check`
/// says, against the CA certificates in `ca_pem` (needed unless `check` is None).
pub fn checking_client_config(
    check: ServerCheck,
    ca_pem: Option<&str>,
) -> Result<rustls::ClientConfig, PkiError> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let roots = || -> Result<Arc<rustls::RootCertStore>, PkiError> {
        let pem = ca_pem.ok_or_else(|| PkiError::Invalid("no CA certificates given".into()))?;
        Ok(Arc::new(roots_from_pem(pem).map_err(PkiError::Invalid)?))
    };
    Ok(match check {
        ServerCheck::None => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
            .with_no_client_auth(),
        ServerCheck::Chain => {
            let inner =
                rustls::client::WebPkiServerVerifier::builder_with_provider(roots()?, provider)
                    .build()
                    .map_err(|e| PkiError::Invalid(format!("server verifier: {e}")))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(ChainOnly(inner)))
                .with_no_client_auth()
        }
        ServerCheck::Identity => builder
            .with_root_certificates(roots()?)
            .with_no_client_auth(),
    })
}

/// Checks that the server's certificate chains to the roots, whatever names it carries.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl rustls::client::danger::ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
        match self
            .0
            .verify_server_cert(end_entity, intermediates, name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                NotValidForName | NotValidForNameContext { .. },
            )) => Ok(rustls::client::danger::ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn read_file(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|e| PkiError::File {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Writes each `(name, body, mode)` into `dir` (created 0700) atomically: temp file,
/// fsync, rename. Keys are written 0600 from the first byte.
fn write_files(dir: &Path, files: &[(&str, &String, u32)]) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let err = |p: &Path, e: std::io::Error| PkiError::File {
        path: p.to_path_buf(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err(dir, e))?;
    for (name, body, mode) in files {
        let path = dir.join(name);
        crate::util::write_atomic(&path, body.as_bytes(), *mode).map_err(|e| err(&path, e))?;
    }
    Ok(())
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// TLS material that may arrive after start (a joining node gets its certificate while
/// already running): connectors and acceptors read it on each new connection.
#[derive(Clone, Default)]
pub struct TlsHandle {
    inner: Arc<RwLock<Option<Configs>>>,
}

#[derive(Clone)]
struct Configs {
    client: Arc<rustls::ClientConfig>,
    /// `client` speaking HTTP/1.1 (the API client's protocol), for agents' listeners.
    client_http1: Arc<rustls::ClientConfig>,
    /// `client` offering the Raft channel first, then HTTP/2 (a member not yet upgraded).
    client_raft: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
    api: Arc<rustls::ServerConfig>,
}

impl TlsHandle {
    pub fn set(&self, tls: &NodeTls) -> Result<(), PkiError> {
        let client = tls.client_config()?;
        let mut client_http1 = client.clone();
        client_http1.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut client_raft = client.clone();
        client_raft.alpn_protocols = vec![RAFT_ALPN.to_vec(), b"h2".to_vec()];
        let configs = Configs {
            client: Arc::new(client),
            client_http1: Arc::new(client_http1),
            client_raft: Arc::new(client_raft),
            server: Arc::new(tls.server_config()?),
            api: Arc::new(tls.api_server_config()?),
        };
        if let Ok(mut g) = self.inner.write() {
            *g = Some(configs);
        }
        Ok(())
    }

    pub fn client(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.inner
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|c| c.client.clone()))
    }

    /// [`TlsHandle::client`] offering http/1.1: how a control node reads an agent's logs.
    pub fn client_http1(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.inner
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|c| c.client_http1.clone()))
    }

    /// [`TlsHandle::client`] offering the Raft channel (control nodes' appends and votes).
    pub fn client_raft(&self) -> Option<Arc<rustls::ClientConfig>> {
        self.inner
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|c| c.client_raft.clone()))
    }

    pub fn server(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.inner
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|c| c.server.clone()))
    }

    /// The API listener's HTTPS configuration (see [`NodeTls::api_server_config`]).
    pub fn api_server(&self) -> Option<Arc<rustls::ServerConfig>> {
        self.inner
            .read()
            .ok()
            .and_then(|g| g.as_ref().map(|c| c.api.clone()))
    }
}

/// Accepts any server certificate (signatures are still checked). Used where the
/// certificate is checked otherwise or not asked to be: the one request for the join
/// info, before a node has the cluster CA (it carries no secret, and its CA is then
/// checked against the fingerprint the join token pins), and the DB proxy's connections
/// to servers with `tls.mode` `preferred` or `required` (the `mysql` client's meaning:
/// encrypted, not authenticated).
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A TLS client for the join info only (see [`AnyServer`]); http/1.1.
pub fn discovery_client_config() -> Result<rustls::ClientConfig, PkiError> {
    let provider = provider();
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_signs_csrs_and_fingerprints_are_stable() {
        let ca = Ca::generate("test").unwrap();
        let fp = ca.fingerprint().unwrap();
        assert_eq!(fp.len(), 64);
        assert_eq!(fp, fingerprint(&ca.cert_pem).unwrap());
        let node = ca.issue("n1", &["127.0.0.1".parse().unwrap()]).unwrap();
        node.server_config().unwrap();
        node.client_config().unwrap();
        assert!(ca.sign_csr("not a csr", "x", &[]).is_err());
    }

    #[test]
    fn an_agent_certificate_serves_but_cannot_pass_for_a_member() {
        use rustls::client::danger::ServerCertVerifier;
        let ca = Ca::generate("test").unwrap();
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let (key_pem, csr) = new_key_and_csr("agent.n1").unwrap();
        let agent = NodeTls {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: ca.sign_agent_csr(&csr, "n1", &[ip]).unwrap(),
            key_pem,
        };
        agent.agent_server_config().unwrap();
        let member = ca.issue("n1", &[ip]).unwrap();
        let (roots, _, _) = member.parts().unwrap();
        let roots = Arc::new(roots);
        let der = |pem: &str| CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        let now = rustls::pki_types::UnixTime::now();
        let clients =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()
                .unwrap();
        assert!(clients
            .verify_client_cert(&der(&member.cert_pem), &[], now)
            .is_ok());
        let refused = clients.verify_client_cert(&der(&agent.cert_pem), &[], now);
        assert!(
            refused.is_err(),
            "an agent certificate authenticated a client"
        );
        let servers =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider())
                .build()
                .unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(ip.into());
        servers
            .verify_server_cert(&der(&agent.cert_pem), &[], &name, &[], now)
            .unwrap();
        let other = rustls::pki_types::ServerName::IpAddress(
            "127.0.0.10".parse::<IpAddr>().unwrap().into(),
        );
        assert!(servers
            .verify_server_cert(&der(&agent.cert_pem), &[], &other, &[], now)
            .is_err());
    }
}
