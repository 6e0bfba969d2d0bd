//! A small HTTP/1.1 client for the control API: names resolved without glibc (see
//! `net::resolve`), a bearer token, JSON in and out, and the API's JSON errors turned
//! into [`ClientError::Api`].

use crate::net::resolve::Resolver;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("`{url}` is not a control URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("{message} ({status} {code}{})", field.as_ref().map(|f| format!(", field `{f}`")).unwrap_or_default())]
    Api {
        status: u16,
        code: String,
        message: String,
        field: Option<String>,
    },
    #[error("bad response from {url}: {reason}")]
    BadResponse { url: String, reason: String },
    /// A local failure while handling the answer (e.g. writing a file).
    #[error("{0}")]
    Local(String),
}

impl ClientError {
    /// Whether the server judged the request itself bad (so retrying cannot help).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, ClientError::Api { status, .. } if *status == 400 || *status == 413 || *status == 422)
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

#[derive(Deserialize)]
struct ErrorBody {
    code: String,
    message: String,
    field: Option<String>,
}

#[derive(Clone)]
pub struct Client {
    base: http::Uri,
    url: String,
    token: Option<String>,
    resolver: Arc<Resolver>,
    timeout: Duration,
    /// Set for `https://` URLs: trusts the cluster CA (see [`trust_ca`]).
    tls: Option<Arc<rustls::ClientConfig>>,
}

/// The cluster CA this process trusts for `https://` control URLs, and the TLS client
/// built on it. Set by the CLI (`--ca`), by a role from its profile or from what it
/// pinned at enrolment.
static TRUSTED: std::sync::RwLock<Option<(String, Arc<rustls::ClientConfig>)>> =
    std::sync::RwLock::new(None);

/// Trusts the CA certificates in `ca_pem` for `https://` control URLs from now on.
pub fn trust_ca(ca_pem: &str) -> Result<(), String> {
    let mut cfg = crate::pki::trusting_client_config(ca_pem).map_err(|e| e.to_string())?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    if let Ok(mut g) = TRUSTED.write() {
        *g = Some((ca_pem.to_string(), Arc::new(cfg)));
    }
    Ok(())
}

/// The PEM given to [`trust_ca`], if any.
pub fn trusted_ca() -> Option<String> {
    TRUSTED
        .read()
        .ok()
        .and_then(|g| g.as_ref().map(|t| t.0.clone()))
}

fn trusted_config() -> Option<Arc<rustls::ClientConfig>> {
    TRUSTED
        .read()
        .ok()
        .and_then(|g| g.as_ref().map(|t| t.1.clone()))
}

impl Client {
    pub fn new(url: &str, token: Option<String>) -> Result<Client, ClientError> {
        Client::build(url, token, trusted_config)
    }

    /// A client without a token for the join info (`GET /api/v1/join/info`) before the
    /// cluster CA is known: over `https://` it checks no certificate, because the answer
    /// is checked against the CA fingerprint a join token pins and no secret is sent.
    pub fn discovery(url: &str) -> Result<Client, ClientError> {
        Client::build(url, None, || {
            trusted_config().or_else(|| crate::pki::discovery_client_config().ok().map(Arc::new))
        })
    }

    /// A client whose `https://` connections use `tls` (a control node's mutual TLS, to
    /// an agent's listener).
    pub fn with_tls(
        url: &str,
        token: Option<String>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Client, ClientError> {
        Client::build(url, token, || Some(tls))
    }

    /// Parses `url`; an `https://` one gets the TLS client `https` gives (None: no CA).
    fn build(
        url: &str,
        token: Option<String>,
        https: impl FnOnce() -> Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Client, ClientError> {
        let bad = |reason: &str| ClientError::BadUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let base: http::Uri = url
            .trim_end_matches('/')
            .parse()
            .map_err(|_| bad("not a URL"))?;
        let tls = match base.scheme_str() {
            Some("http") => None,
            Some("https") => Some(https().ok_or_else(|| {
                bad("https needs the cluster CA to check the server: pass --ca FILE or set TESSERA_CA (a control node keeps it in <data-dir>/control/pki/ca.pem)")
            })?),
            _ => return Err(bad("expected http://HOST:PORT or https://HOST:PORT")),
        };
        if base.host().is_none() {
            return Err(bad("missing host"));
        }
        Ok(Client {
            base,
            url: url.trim_end_matches('/').to_string(),
            token,
            resolver: Arc::new(Resolver::default()),
            timeout: Duration::from_secs(90),
            tls,
        })
    }

    pub fn with_timeout(mut self, t: Duration) -> Client {
        self.timeout = t;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Sends a request; any status is returned as is.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Bytes), ClientError> {
        let exchange = async {
            let resp = self.request(method, path, body).await?;
            let status = resp.status();
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| self.unreachable(e.to_string()))?
                .to_bytes();
            Ok((status, bytes))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.unreachable(format!("no answer within {:?}", self.timeout)))?
    }

    /// Starts a GET whose answer is a stream (Server-Sent Events): the timeout covers the
    /// answer's head only; a non-2xx answer becomes [`ClientError::Api`].
    pub async fn stream(&self, path: &str) -> Result<hyper::body::Incoming, ClientError> {
        let resp = tokio::time::timeout(self.timeout, self.request(Method::GET, path, None))
            .await
            .map_err(|_| self.unreachable(format!("no answer within {:?}", self.timeout)))??;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = tokio::time::timeout(self.timeout, resp.into_body().collect())
                .await
                .ok()
                .and_then(Result::ok)
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(api_error(status, &bytes));
        }
        Ok(resp.into_body())
    }

    fn unreachable(&self, reason: String) -> ClientError {
        ClientError::Unreachable {
            url: self.url.clone(),
            reason,
        }
    }

    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<http::Response<hyper::body::Incoming>, ClientError> {
        let host = self.base.host().unwrap_or("localhost");
        let default_port = if self.tls.is_some() { 443 } else { 80 };
        let port = self.base.port_u16().unwrap_or(default_port);
        let addrs = self
            .resolver
            .resolve(host, port)
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        let mut last = String::from("no address");
        let mut stream = None;
        for a in addrs {
            match tokio::net::TcpStream::connect(a).await {
                Ok(s) => {
                    stream = Some(s);
                    break;
                }
                Err(e) => last = format!("{a}: {e}"),
            }
        }
        let stream = stream.ok_or_else(|| self.unreachable(last))?;
        let mut sender = match &self.tls {
            None => self.handshake(stream).await?,
            Some(cfg) => {
                // IP literals are checked against the certificate's IP names.
                let bare = host.trim_start_matches('[').trim_end_matches(']');
                let name = rustls::pki_types::ServerName::try_from(bare.to_string())
                    .map_err(|e| self.unreachable(format!("{host}: {e}")))?;
                let tls = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, stream)
                    .await
                    .map_err(|e| self.unreachable(format!("TLS: {e}")))?;
                self.handshake(tls).await?
            }
        };
        let authority = self.base.authority().map(|a| a.as_str()).unwrap_or(host);
        let mut req = http::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, authority)
            .header(
                http::header::USER_AGENT,
                concat!("tessera/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::BadUrl {
                url: self.url.clone(),
                reason: e.to_string(),
            })?;
        sender
            .send_request(req)
            .await
            .map_err(|e| self.unreachable(e.to_string()))
    }

    /// HTTP/1.1 on `io`, its connection driven by a task of its own.
    async fn handshake<IO>(
        &self,
        io: IO,
    ) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, ClientError>
    where
        IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
            .await
            .map_err(|e| self.unreachable(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// Sends JSON (or nothing) and decodes a JSON answer; non-2xx becomes [`ClientError::Api`].
    pub async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| ClientError::BadResponse {
                url: self.url.clone(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        let (status, bytes) = self.send(method, path, body).await?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes).map_err(|e| ClientError::BadResponse {
            url: format!("{}{path}", self.url),
            reason: e.to_string(),
        })
    }
}

/// The error a non-2xx answer stands for (the API's JSON error, or the start of the body).
pub fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(e) => ClientError::Api {
            status: status.as_u16(),
            code: e.code,
            message: e.message,
            field: e.field,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: "http".into(),
            message: String::from_utf8_lossy(&bytes[..bytes.len().min(300)]).into_owned(),
            field: None,
        },
    }
}
