//! The TLS port (15012): accepts connections with the controller's serving
//! certificate, verifies client certificates when sent, and tells handlers who the
//! peer is (see [`Peer`]).

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use mesh_identity::Identity;
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What the TLS port knows about a connection, put in every request's extensions.
#[derive(Debug, Clone)]
pub struct SecureConnInfo {
    /// The client's address.
    pub remote: Option<SocketAddr>,
    /// The SPIFFE identity of the client's verified certificate, if it sent one.
    pub identity: Option<Identity>,
}

/// Who sent a request, on either port.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The client's address.
    pub addr: Option<SocketAddr>,
    /// Whether the request came over the TLS port.
    pub secure: bool,
    /// The client certificate's identity (TLS port only).
    pub identity: Option<Identity>,
}

impl Peer {
    /// Reads the peer from a request's extensions.
    pub fn of<T>(request: &tonic::Request<T>) -> Peer {
        if let Some(info) = request.extensions().get::<SecureConnInfo>() {
            return Peer {
                addr: info.remote,
                secure: true,
                identity: info.identity.clone(),
            };
        }
        Peer {
            addr: request
                .extensions()
                .get::<TcpConnectInfo>()
                .and_then(|i| i.remote_addr()),
            secure: false,
            identity: None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.addr {
            Some(a) => write!(f, "{a}")?,
            None => f.write_str("?")?,
        }
        match (&self.identity, self.secure) {
            (Some(id), _) => write!(f, " ({id})"),
            (None, true) => f.write_str(" (tls, no client certificate)"),
            (None, false) => f.write_str(" (plaintext)"),
        }
    }
}

/// A TLS connection on the secure port.
pub struct SecureStream {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    info: SecureConnInfo,
}

impl fmt::Debug for SecureStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecureStream")
            .field("info", &self.info)
            .finish()
    }
}

impl Connected for SecureStream {
    type ConnectInfo = SecureConnInfo;

    fn connect_info(&self) -> SecureConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for SecureStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for SecureStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Accepts TCP connections on `listener` and completes TLS handshakes (each in
/// its own task, so a slow client holds up nobody) with the current serving
/// configuration from `configs`. Failed handshakes are logged and dropped.
pub fn incoming(
    listener: TcpListener,
    configs: watch::Receiver<Arc<ServerConfig>>,
) -> ReceiverStream<io::Result<SecureStream>> {
    let (tx, rx) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = tx.closed() => return,
            };
            let (tcp, remote) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "secure xDS accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(configs.borrow().clone());
            let tx = tx.clone();
            tokio::spawn(async move {
                let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        tracing::info!(%remote, error = %e, "TLS handshake on the secure xDS port failed");
                        return;
                    }
                    Err(_) => {
                        tracing::info!(%remote, "TLS handshake on the secure xDS port timed out");
                        return;
                    }
                };
                let identity =
                    mesh_identity::tls::peer_identity(tls.get_ref().1.peer_certificates());
                tracing::debug!(%remote, identity = ?identity.as_ref().map(ToString::to_string), "TLS connection");
                let info = SecureConnInfo {
                    remote: Some(remote),
                    identity,
                };
                let _ = tx.send(Ok(SecureStream { inner: tls, info })).await;
            });
        }
    });
    ReceiverStream::new(rx)
}
