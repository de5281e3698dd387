//! The accept loop shared by the outbound, inbound and admin listeners: HTTP/1.1 and
//! HTTP/2 prior knowledge on one port, connection metrics, graceful drain.
//!
//! The inbound listener first sniffs each connection: a TLS ClientHello (first byte
//! 0x16) goes through the rustls acceptor (client certificate required) and the
//! caller's SPIFFE ID is recorded for policy and metrics; plaintext is served only
//! when the inbound listener has a plaintext chain (PERMISSIVE), else the
//! connection is closed and counted.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use crate::metrics::Reporter;
use crate::state::ProxyState;
use crate::upstream::ProxyBody;

/// Resolves once `shutdown` is (or becomes) `true`, or its sender is gone.
pub async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// What a handler learns about the connection a request came on.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The remote address.
    pub peer: SocketAddr,
    /// The caller's SPIFFE ID, verified by mutual TLS.
    pub principal: Option<Arc<str>>,
    /// Whether the connection is mutual TLS.
    pub mtls: bool,
}

impl ConnInfo {
    fn plain(peer: SocketAddr) -> ConnInfo {
        ConnInfo {
            peer,
            principal: None,
            mtls: false,
        }
    }
}

/// How a listener treats new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain HTTP (outbound from the app, admin).
    Plain,
    /// The inbound listener: mutual TLS and, when allowed, plaintext.
    Inbound,
}

/// A served connection: plain TCP or TLS over it.
#[derive(Debug)]
pub enum Io {
    /// Plaintext.
    Plain(TcpStream),
    /// Server side of TLS.
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
        }
    }
}

/// How long a new inbound connection may take to send its first byte and finish
/// the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the dev-mode "STRICT not enforced" warning was logged.
static STRICT_UNENFORCED_WARNED: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// First byte of a TLS record carrying a handshake message (the ClientHello).
const TLS_HANDSHAKE: u8 = 0x16;

/// Sniffs and, for TLS, handshakes an inbound connection. `None` means close it.
async fn accept_inbound(
    state: &ProxyState,
    stream: TcpStream,
    peer: SocketAddr,
) -> Option<(Io, ConnInfo)> {
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        Ok(Ok(_)) => return None,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "inbound peek failed: {e}");
            return None;
        }
        Err(_) => {
            tracing::debug!(%peer, "inbound connection sent nothing; closing");
            return None;
        }
    }
    // Before the inbound listener arrives: plaintext only in dev mode.
    let (plaintext_ok, tls_ok) = match state.config.load().inbound.as_ref() {
        Some(t) => (t.accepts_plaintext, t.accepts_tls),
        None => (!state.tls.enabled(), state.tls.enabled()),
    };
    if first[0] != TLS_HANDSHAKE {
        if plaintext_ok {
            return Some((Io::Plain(stream), ConnInfo::plain(peer)));
        }
        if !state.tls.enabled() {
            // Dev mode (no token): without a certificate this sidecar cannot do
            // mutual TLS, so it keeps serving plaintext as before mTLS existed
            // rather than make the workload unreachable. Said once, loudly.
            if !STRICT_UNENFORCED_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    "the inbound listener is STRICT but this sidecar has no identity (no --token): \
                     accepting plaintext; STRICT is not enforced in dev mode"
                );
            }
            return Some((Io::Plain(stream), ConnInfo::plain(peer)));
        }
        state.metrics.plaintext_refused.inc();
        tracing::debug!(%peer, "plaintext refused: the inbound listener requires mutual TLS (STRICT)");
        return None;
    }
    if !tls_ok {
        tracing::debug!(%peer, "TLS refused: the inbound listener has no TLS filter chain");
        return None;
    }
    let Some(configs) = state.tls.configs() else {
        tracing::debug!(%peer, "TLS refused: no workload certificate yet");
        return None;
    };
    let accept = TlsAcceptor::from(configs.server.clone()).accept(stream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => {
            let principal = mesh_identity::tls::peer_identity(tls.get_ref().1.peer_certificates())
                .map(|id| Arc::<str>::from(id.to_string()));
            Some((
                Io::Tls(Box::new(tls)),
                ConnInfo {
                    peer,
                    principal,
                    mtls: true,
                },
            ))
        }
        Ok(Err(e)) => {
            state.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, "inbound TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            state.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, "inbound TLS handshake timed out");
            None
        }
    }
}

/// Serves `listener` with `handler` until `shutdown` flips to `true`, then stops
/// accepting and lets open connections finish for at most `grace`.
///
/// `reporter` names the connection metrics; the admin listener passes `None`.
/// `transport` says whether connections are sniffed for TLS (inbound).
pub async fn serve<F, Fut>(
    name: &'static str,
    listener: TcpListener,
    state: Arc<ProxyState>,
    reporter: Option<Reporter>,
    grace: Duration,
    transport: Transport,
    handler: F,
) where
    F: Fn(Request<Incoming>, Arc<ConnInfo>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Response<ProxyBody>> + Send + 'static,
{
    let mut shutdown: watch::Receiver<bool> = state.shutdown.subscribe();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(Some(Duration::from_secs(30)));
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                tracing::warn!(listener = name, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        if let Some(r) = reporter {
            state.metrics.connection_opened(r);
        }
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let state = state.clone();
        tokio::spawn(async move {
            let accepted = match transport {
                Transport::Plain => Some((Io::Plain(stream), ConnInfo::plain(peer))),
                Transport::Inbound => accept_inbound(&state, stream, peer).await,
            };
            if let Some((io, info)) = accepted {
                let info = Arc::new(info);
                let service = service_fn(move |req| {
                    let fut = handler(req, info.clone());
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let conn = builder
                    .serve_connection(TokioIo::new(io), service)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(listener = name, %peer, "connection error: {e}");
                }
            }
            if let Some(r) = reporter {
                state.metrics.connection_closed(r);
            }
        });
    }
    drop(listener);
    let open = graceful.count();
    if open > 0 {
        tracing::info!(listener = name, open, "draining connections");
    }
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(listener = name, "grace period over; closing remaining connections");
        }
    }
}
