//! TLS on a backend connection: the DataSource's policy (`tls.mode`, `tls.ca`), the
//! stream that is TCP until the login switches it to rustls, and the switch itself.

use super::{Backend, BackendError, Target};
use crate::model::specs::BackendTlsMode;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, BufStream, ReadBuf};
use tokio::net::TcpStream;

/// The DataSource's `tls`: when to use TLS and how to check the server.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct TlsPolicy {
    pub mode: BackendTlsMode,
    /// PEM CA certificates (verifyCa, verifyIdentity).
    pub ca: Option<String>,
}

impl TlsPolicy {
    pub(super) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, BackendError> {
        use crate::pki::ServerCheck;
        let check = match self.mode {
            BackendTlsMode::VerifyCa => ServerCheck::Chain,
            BackendTlsMode::VerifyIdentity => ServerCheck::Identity,
            _ => ServerCheck::None,
        };
        crate::pki::checking_client_config(check, self.ca.as_deref())
            .map(Arc::new)
            .map_err(|e| BackendError::Other(format!("the DataSource's tls: {e}")))
    }
}

/// The connection to a server: TCP, then TLS when it was switched on.
pub(super) enum Io {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Only while switching to TLS.
    Switching,
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_read(cx, buf),
            Io::Switching => Poll::Ready(Err(switching())),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(s).poll_write(cx, buf),
            Io::Switching => Poll::Ready(Err(switching())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s).poll_flush(cx),
            Io::Switching => Poll::Ready(Err(switching())),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s).poll_shutdown(cx),
            Io::Switching => Poll::Ready(Err(switching())),
        }
    }
}

fn switching() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotConnected, "switching to TLS")
}

impl Backend {
    /// Switches the connection to TLS (after the SSLRequest), checking the server as the
    /// policy says; the name checked is the host of the server's address.
    pub(super) async fn start_tls(&mut self, t: &Target) -> Result<(), BackendError> {
        let config = t.tls.client_config()?;
        let host = t
            .addr
            .rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(&t.addr)
            .trim_start_matches('[')
            .trim_end_matches(']');
        let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| {
            BackendError::Other(format!(
                "`{host}` cannot be checked against a certificate: {e}"
            ))
        })?;
        let io = std::mem::replace(&mut self.io, BufStream::new(Io::Switching));
        let Io::Plain(tcp) = io.into_inner() else {
            return Err(BackendError::Protocol("TLS asked for twice"));
        };
        let stream = tokio_rustls::TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .map_err(|e| {
                self.healthy = false;
                BackendError::Other(format!("TLS with the server failed: {e}"))
            })?;
        self.io = BufStream::with_capacity(32 * 1024, 16 * 1024, Io::Tls(Box::new(stream)));
        self.tls = true;
        Ok(())
    }
}
