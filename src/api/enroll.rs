//! Enrollment: how a machine that holds a join token reaches the cluster. It asks a
//! control URL (plain HTTP, no secret) for the cluster CA and the leader's peer address,
//! checks the CA against the fingerprint the token pins (as kubeadm's discovery hash
//! does), and only then sends the token, over TLS to the leader's peer listener, trusting
//! that CA alone. Used by joining control nodes and by gateways, agents and DB proxies
//! exchanging their token for an API credential.

use super::{api_error, Client, ClientError};
use crate::pki;
use http::Method;
use serde_json::Value;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long a node keeps trying to reach the cluster before the role fails.
const GIVE_UP: Duration = Duration::from_secs(180);

/// The CA fingerprint a join token pins.
pub fn token_fingerprint(token: &str) -> Result<&str, String> {
    match token.split('.').collect::<Vec<_>>().as_slice() {
        ["tsr1", fp, secret] if fp.len() == 64 && !secret.is_empty() => Ok(fp),
        _ => Err("join_token is not a tessera join token (expected tsr1.<ca-fingerprint>.<secret> from `tessera token create`)".into()),
    }
}

fn is_name_taken(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { code, .. } if code == "name_taken")
}

/// How one attempt at a join step ended, when it did not succeed.
enum Step {
    /// The cluster said no (bad, used or expired token, name taken, wrong CA): stop.
    Refused(String),
    /// Unreachable, no leader yet, leadership moving: try again.
    Retry(String),
}

/// Calls `path` with `body` on the cluster's leader over TLS, retrying transient failures
/// until [`GIVE_UP`]; a refusal ends it at once. Each attempt asks a join URL (plain
/// HTTP, no secret) for the CA and the leader's peer address, checks the CA against the
/// fingerprint `pinned` by the token, and only then sends the token, over TLS to the
/// leader's peer listener, trusting that CA alone.
pub async fn call_cluster(
    urls: &[String],
    pinned: &str,
    path: &str,
    body: &Value,
    shutdown: &CancellationToken,
) -> Result<Option<Value>, String> {
    let clients = urls
        .iter()
        .map(|u| Client::discovery(u).map(|c| c.with_timeout(Duration::from_secs(10))))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| e.to_string())?;
    let deadline = tokio::time::Instant::now() + GIVE_UP;
    let mut backoff = Duration::from_millis(300);
    loop {
        for client in &clients {
            let url = client.url();
            match attempt(client, pinned, path, body).await {
                Ok(v) => return Ok(Some(v)),
                Err(Step::Refused(e)) => {
                    return Err(format!(
                        "the cluster at {url} refused to admit this node: {e}"
                    ));
                }
                Err(Step::Retry(e)) => {
                    tracing::warn!(via = %url, path, error = %e, "Join step failed; retrying")
                }
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "could not reach the cluster through {} within {GIVE_UP:?}",
                urls.join(", ")
            ));
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn attempt(client: &Client, pinned: &str, path: &str, body: &Value) -> Result<Value, Step> {
    let info: Value = client
        .call(Method::GET, "/api/v1/join/info", None::<&()>)
        .await
        .map_err(|e| Step::Retry(e.to_string()))?;
    let ca = info["ca"]
        .as_str()
        .ok_or_else(|| Step::Retry("the join info names no CA".into()))?;
    let presented = pki::fingerprint(ca).map_err(|e| Step::Retry(e.to_string()))?;
    if presented != pinned {
        return Err(Step::Refused(format!(
            "the cluster presented CA {presented}, but the join token pins {pinned}: refusing to send the token"
        )));
    }
    // The pinned CA is the one `https://` control URLs must present from now on.
    super::trust_ca(ca).map_err(Step::Retry)?;
    let peer: std::net::SocketAddr = info["leader"]["peer"]
        .as_str()
        .ok_or_else(|| Step::Retry("no leader is known yet".into()))?
        .parse()
        .map_err(|_| Step::Retry("the leader's peer address is not IP:PORT".into()))?;
    let tls = pki::anonymous_client_config(ca).map_err(|e| Step::Retry(e.to_string()))?;
    let payload = serde_json::to_vec(body).map_err(|e| Step::Retry(e.to_string()))?;
    let exchange = tls_post(peer, tls, path, payload);
    let (status, bytes) = tokio::time::timeout(Duration::from_secs(90), exchange)
        .await
        .map_err(|_| Step::Retry(format!("{peer}{path} gave no answer within 90s")))?
        .map_err(Step::Retry)?;
    if status.is_success() {
        return serde_json::from_slice(&bytes)
            .map_err(|e| Step::Retry(format!("bad answer from {peer}: {e}")));
    }
    let e = api_error(status, &bytes);
    match &e {
        ClientError::Api { status, .. }
            if matches!(status, 400 | 403 | 404) || is_name_taken(&e) =>
        {
            Err(Step::Refused(e.to_string()))
        }
        _ => Err(Step::Retry(e.to_string())),
    }
}

/// One HTTP/2 POST over TLS to `peer`, whose certificate must name its IP.
async fn tls_post(
    peer: std::net::SocketAddr,
    tls: rustls::ClientConfig,
    path: &str,
    body: Vec<u8>,
) -> Result<(http::StatusCode, bytes::Bytes), String> {
    use http_body_util::{BodyExt, Full};
    let tcp = crate::net::connect_from(peer, None)
        .await
        .map_err(|e| format!("connect to {peer}: {e}"))?;
    let name = rustls::pki_types::ServerName::IpAddress(peer.ip().into());
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS with {peer}: {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .map_err(|e| format!("HTTP/2 with {peer}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let req = http::Request::post(format!("https://{peer}{path}"))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Full::new(bytes::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("{peer}{path}: {e}"))?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("{peer}{path}: {e}"))?
        .to_bytes();
    Ok((status, bytes))
}

/// A gateway's, agent's or DB proxy's own API credential: kept in a file, obtained once
/// by exchanging a join token of its role over TLS with the leader
/// (`POST /api/v1/join/credential`). A role co-located with a control node (`tessera
/// up`) mints itself a short-lived join token with the local `admin.token` and exchanges
/// it the same way: it never runs on the admin credential.
pub struct ServiceCredential {
    /// `gateway`, `agent` or `dbproxy`.
    pub role: &'static str,
    pub node_name: String,
    pub urls: Vec<String>,
    pub join_token: Option<String>,
    /// `<data_dir>/admin.token` when a control role runs in this process.
    pub admin_token: Option<std::path::PathBuf>,
    /// Where the credential is kept (0600); the cluster CA pinned at enrolment is kept
    /// next to it as `ca.pem`, for `https://` control URLs after a restart.
    pub file: std::path::PathBuf,
    /// `[tls] ca` of the profile: trusted for `https://` control URLs.
    pub tls_ca: Option<std::path::PathBuf>,
}

impl ServiceCredential {
    /// The credential of `role` on this node: kept in `<data_dir>/<role>/credential`,
    /// enrolled with `join_token`, or with the local admin token when a control role
    /// runs in the same process.
    pub fn for_role(
        role: &'static str,
        cfg: &crate::config::RuntimeConfig,
        urls: Vec<String>,
        join_token: Option<String>,
    ) -> ServiceCredential {
        ServiceCredential {
            role,
            node_name: cfg.node_name.clone(),
            urls,
            join_token,
            admin_token: cfg
                .has(crate::config::Role::Control)
                .then(|| cfg.data_dir.join("admin.token")),
            file: cfg.data_dir.join(role).join("credential"),
            tls_ca: cfg.tls.ca.clone(),
        }
    }

    fn ca_file(&self) -> std::path::PathBuf {
        self.file.with_file_name("ca.pem")
    }

    /// Trusts the profile's `[tls] ca`, else the CA pinned at an earlier enrolment.
    fn trust_known_ca(&self) -> Result<(), String> {
        for path in self.tls_ca.iter().chain(std::iter::once(&self.ca_file())) {
            match std::fs::read_to_string(path) {
                Ok(pem) => {
                    return super::trust_ca(&pem).map_err(|e| format!("{}: {e}", path.display()))
                }
                Err(e) if path == &self.ca_file() && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", path.display())),
            }
        }
        Ok(())
    }

    /// The token: from the file, or enrolled now (None: shut down meanwhile).
    pub async fn get(&self, shutdown: &CancellationToken) -> Result<Option<String>, String> {
        self.trust_known_ca()?;
        if let Ok(t) = std::fs::read_to_string(&self.file) {
            if !t.trim().is_empty() {
                return Ok(Some(t.trim().to_string()));
            }
        }
        let join_token = match (&self.join_token, &self.admin_token) {
            (Some(t), _) => t.clone(),
            (None, Some(admin)) => self.mint_join_token(admin).await?,
            (None, None) => {
                return Err(format!(
                    "this {role} has no credential: set {role}.join_token (from `tessera token create --role {role}`)",
                    role = self.role
                ))
            }
        };
        let pinned = token_fingerprint(&join_token)?.to_string();
        let body = serde_json::json!({"token": join_token, "name": self.node_name});
        let Some(v) = call_cluster(
            &self.urls,
            &pinned,
            "/api/v1/join/credential",
            &body,
            shutdown,
        )
        .await?
        else {
            return Ok(None);
        };
        let token = v["token"]
            .as_str()
            .ok_or("the enrollment answer has no token")?
            .to_string();
        if let Some(dir) = self.file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Some(ca) = super::trusted_ca() {
            let path = self.ca_file();
            crate::util::write_atomic(&path, ca.as_bytes(), 0o644)
                .map_err(|e| format!("{}: {e}", path.display()))?;
        }
        crate::util::write_atomic(&self.file, format!("{token}\n").as_bytes(), 0o600)
            .map_err(|e| format!("{}: {e}", self.file.display()))?;
        tracing::info!(user = %v["user"], role = self.role, "Enrolled with the control plane");
        Ok(Some(token))
    }

    /// Whether enrolment is only waiting for the co-located control role to write its
    /// admin token (a normal second at the start of `tessera up`, not worth a warning).
    pub fn waiting_for_local_control(&self) -> bool {
        self.join_token.is_none()
            && !self.file.exists()
            && self.admin_token.as_ref().is_some_and(|p| !p.exists())
    }

    /// Forgets a credential the control plane refused, if it can enroll again.
    pub fn forget(&self) {
        if self.join_token.is_some() || self.admin_token.is_some() {
            let _ = std::fs::remove_file(&self.file);
        }
    }

    /// A short-lived join token of this role, minted with the co-located admin token.
    async fn mint_join_token(&self, admin: &std::path::Path) -> Result<String, String> {
        let admin_token = std::fs::read_to_string(admin).map_err(|e| {
            format!(
                "{} (the local control role writes it once it leads): {e}",
                admin.display()
            )
        })?;
        let mut last = String::from("no control URL");
        for url in &self.urls {
            let client = Client::new(url, Some(admin_token.trim().to_string()))
                .map_err(|e| e.to_string())?;
            match client
                .call::<Value>(
                    Method::POST,
                    "/api/v1/tokens",
                    Some(&serde_json::json!({"role": self.role, "ttl_secs": 600})),
                )
                .await
            {
                Ok(v) => {
                    return v["token"]
                        .as_str()
                        .map(str::to_string)
                        .ok_or_else(|| "the token answer has no token".into())
                }
                Err(e) => last = e.to_string(),
            }
        }
        Err(format!("minting a {} join token: {last}", self.role))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_pin_a_fingerprint() {
        let fp = "a".repeat(64);
        assert_eq!(
            super::token_fingerprint(&format!("tsr1.{fp}.secret")).unwrap(),
            fp
        );
        assert!(super::token_fingerprint("tsr1.short.secret").is_err());
        assert!(super::token_fingerprint("admin-token").is_err());
    }
}
