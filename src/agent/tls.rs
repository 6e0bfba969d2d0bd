//! The certificate of the agent's listener. Control nodes read an agent's logs from its
//! listener (`GET /logs`); with this certificate that happens over mutual TLS: the agent
//! proves it is `agent.<node>` at its address, the control node proves it is a member.
//! The key is made here and never leaves the machine; the control plane signs a CSR for
//! it (`POST /api/v1/nodes/{node}/certificate`, this node's agent credential only). The
//! certificate is kept in `<data_dir>/agent/tls/` with the addresses it names, and asked
//! for again when it is missing, names other addresses, or has less than `RENEW_DAYS`
//! left. Until the agent has one its listener is plain HTTP only.

use crate::api::Client;
use crate::net::dual::TlsSource;
use crate::pki::NodeTls;
use http::Method;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Renew when fewer days than this are left (certificates last a year).
const RENEW_DAYS: i64 = 30;
const IPS_FILE: &str = "ips";
/// How often a held certificate is looked at again.
const CHECK_EVERY: Duration = Duration::from_secs(3600);
const RETRY: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct AgentTls {
    dir: PathBuf,
    node: String,
    ips: Vec<IpAddr>,
    server: Arc<RwLock<Option<Arc<rustls::ServerConfig>>>>,
}

#[derive(serde::Deserialize)]
struct Issued {
    cert: String,
    ca: String,
}

impl AgentTls {
    /// The agent of `node` answering on `ips`; a certificate kept in `dir` from an
    /// earlier run is used at once if it is still good for them.
    pub fn new(dir: PathBuf, node: &str, ips: Vec<IpAddr>) -> AgentTls {
        let tls = AgentTls {
            dir,
            node: node.to_string(),
            ips,
            server: Arc::default(),
        };
        match tls.kept() {
            Ok(Some(kept)) => {
                if let Err(e) = tls.install(&kept) {
                    tracing::warn!(dir = %tls.dir.display(), error = %e, "The kept agent certificate cannot be used; a new one will be asked for");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(dir = %tls.dir.display(), error = %e, "Cannot read the kept agent certificate; a new one will be asked for")
            }
        }
        tls
    }

    /// Whether the listener has a certificate (then `/logs` is served over TLS only).
    pub fn ready(&self) -> bool {
        self.server.read().map(|g| g.is_some()).unwrap_or(false)
    }

    pub fn source(&self) -> TlsSource {
        let server = self.server.clone();
        Arc::new(move || server.read().ok().and_then(|g| g.clone()))
    }

    /// The certificate in `dir`, if it names this agent's addresses and is not due.
    fn kept(&self) -> Result<Option<NodeTls>, String> {
        let Some(kept) = NodeTls::load(&self.dir).map_err(|e| e.to_string())? else {
            return Ok(None);
        };
        let ips = std::fs::read_to_string(self.dir.join(IPS_FILE)).unwrap_or_default();
        if ips.trim() != ips_line(&self.ips) {
            return Ok(None);
        }
        let left = kept.not_after().map_err(|e| e.to_string())? - time::OffsetDateTime::now_utc();
        Ok((left > time::Duration::days(RENEW_DAYS)).then_some(kept))
    }

    fn install(&self, tls: &NodeTls) -> Result<(), String> {
        let cfg = tls.agent_server_config().map_err(|e| e.to_string())?;
        if let Ok(mut g) = self.server.write() {
            *g = Some(Arc::new(cfg));
        }
        Ok(())
    }

    /// Asks the control plane for a certificate unless a good one is held; true when a
    /// new one was installed.
    pub async fn ensure(&self, client: &Client) -> Result<bool, String> {
        if self.ready() && self.kept()?.is_some() {
            return Ok(false);
        }
        let (key_pem, csr) = crate::pki::new_key_and_csr(&format!("agent.{}", self.node))
            .map_err(|e| e.to_string())?;
        let body = serde_json::json!({"csr": csr, "ips": self.ips});
        let path = format!("/api/v1/nodes/{}/certificate", self.node);
        let issued: Issued = client
            .call(Method::POST, &path, Some(&body))
            .await
            .map_err(|e| e.to_string())?;
        let tls = NodeTls {
            ca_pem: issued.ca,
            cert_pem: issued.cert,
            key_pem,
        };
        self.install(&tls)?;
        tls.save(&self.dir).map_err(|e| e.to_string())?;
        std::fs::write(self.dir.join(IPS_FILE), ips_line(&self.ips) + "\n")
            .map_err(|e| format!("{}: {e}", self.dir.join(IPS_FILE).display()))?;
        let until = tls.not_after().map(|t| t.to_string()).unwrap_or_default();
        tracing::info!(ips = %ips_line(&self.ips), valid_until = %until, dir = %self.dir.display(), "The agent listener has its certificate: logs are read over mutual TLS");
        Ok(true)
    }

    /// Keeps the certificate current until `shutdown`: looked at hourly, or every 30 s
    /// while the agent has none because the control plane could not give one.
    pub async fn keep(self, client: Client, shutdown: CancellationToken) {
        let mut wait = if self.ready() { CHECK_EVERY } else { RETRY };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = match self.ensure(&client).await {
                Ok(_) => CHECK_EVERY,
                Err(e) => {
                    tracing::warn!(error = %e, "Cannot get this agent's listener certificate yet; retrying in 30 s");
                    RETRY
                }
            };
        }
    }
}

fn ips_line(ips: &[IpAddr]) -> String {
    ips.iter()
        .map(IpAddr::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}
