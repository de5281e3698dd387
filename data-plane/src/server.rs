//! The accept loop shared by the outbound, inbound and admin listeners: HTTP/1.1 and
//! HTTP/2 prior knowledge on one port, connection metrics, graceful drain.
//!
//! The outbound listener reads each connection's original destination (capture),
//! sniffs it for HTTP unless the port is opaque, and picks a filter chain: HTTP
//! is served here, TCP proxied by [`crate::tcp`].
//!
//! The inbound listener first sniffs each connection: a TLS ClientHello (first byte
//! 0x16) goes through the rustls acceptor (client certificate required) and the
//! caller's SPIFFE ID is recorded for policy and metrics; plaintext is served only
//! when the inbound listener has a plaintext chain (PERMISSIVE), else the
//! connection is closed and counted. TLS with ALPN `mesh-tcp`, plaintext starting
//! with the TCP preface, and captured plaintext to an opaque port are proxied as
//! TCP.

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
use crate::original_dst::original_dst;
use crate::state::ProxyState;
use crate::tcp::{self, InboundTcp};
use crate::tcp_listener::ChainAction;
use crate::tls::ALPN_MESH_TCP;
use crate::upstream::ProxyBody;
use crate::{preface, sniff};

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
    /// Where the peer was connecting before capture redirected it (`None` when
    /// it dialled the listener itself).
    pub original_dst: Option<SocketAddr>,
}

impl ConnInfo {
    fn plain(peer: SocketAddr, original_dst: Option<SocketAddr>) -> ConnInfo {
        ConnInfo {
            peer,
            principal: None,
            mtls: false,
            original_dst,
        }
    }
}

/// What the listener does with a new connection after looking at it.
enum Accepted {
    /// Serve it as HTTP.
    Http(Io, ConnInfo),
    /// Proxied as TCP (and counted) already.
    Handled,
    /// Closed without serving.
    Refused,
}

/// How a listener treats new connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Plain HTTP (admin).
    Plain,
    /// The outbound listener: original destination, sniffing, filter chains.
    Outbound,
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

/// Picks the outbound listener's chain for a connection: by its original
/// destination and, unless the port is opaque, its sniffed protocol. TCP chains
/// are proxied here; HTTP is returned to be served.
async fn accept_outbound(state: &Arc<ProxyState>, stream: TcpStream, peer: SocketAddr) -> Accepted {
    let dst = original_dst(&stream);
    let chains = state.config.load().tcp.outbound.clone();
    // Without capture (explicit proxy use) there is no destination but the HTTP
    // request's own; before the listener arrives the HTTP path answers 503.
    let (Some(dst), Some(chains)) = (dst, chains) else {
        return Accepted::Http(Io::Plain(stream), ConnInfo::plain(peer, dst));
    };
    let protocol = if chains.sniffs(Some(dst)) {
        sniff::detect(&stream).await.alpn()
    } else {
        None
    };
    match chains.select(Some(dst), protocol) {
        Some(ChainAction::Http) => {
            Accepted::Http(Io::Plain(stream), ConnInfo::plain(peer, Some(dst)))
        }
        Some(ChainAction::Tcp(target)) => {
            tcp::outbound(state.clone(), stream, peer, Some(dst), target).await;
            Accepted::Handled
        }
        None => {
            tracing::debug!(%peer, %dst, "no filter chain matches; closing");
            Accepted::Refused
        }
    }
}

/// Sniffs and, for TLS, handshakes an inbound connection; `mesh-tcp` connections
/// and captured plaintext to opaque ports are proxied as TCP here.
async fn accept_inbound(state: &Arc<ProxyState>, stream: TcpStream, peer: SocketAddr) -> Accepted {
    let dst = original_dst(&stream);
    // Before the inbound listener arrives: plaintext only in dev mode.
    let (plaintext_ok, tls_ok) = match state.config.load().inbound.as_ref() {
        Some(t) => (t.accepts_plaintext, t.accepts_tls),
        None => (!state.tls.enabled(), state.tls.enabled()),
    };
    // Captured plaintext to an opaque port: never sniffed (the client may be
    // waiting for the server to speak first).
    if let Some(port) = dst.map(|d| d.port())
        && let Some(entry) = state.config.load().tcp.inbound.get(&port)
    {
        if entry.plaintext.is_none() && state.tls.enabled() {
            state.metrics.plaintext_refused.inc();
            tracing::debug!(%peer, port, "plaintext refused: the opaque port requires mutual TLS (STRICT)");
            return Accepted::Refused;
        }
        let info = ConnInfo::plain(peer, dst);
        tcp::inbound(
            state.clone(),
            Io::Plain(stream),
            info,
            InboundTcp::Captured(port),
        )
        .await;
        return Accepted::Handled;
    }
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1..)) => {}
        Ok(Ok(_)) => return Accepted::Refused,
        Ok(Err(e)) => {
            tracing::debug!(%peer, "inbound peek failed: {e}");
            return Accepted::Refused;
        }
        Err(_) => {
            tracing::debug!(%peer, "inbound connection sent nothing; closing");
            return Accepted::Refused;
        }
    }
    if first[0] != TLS_HANDSHAKE {
        if !plaintext_ok && state.tls.enabled() {
            state.metrics.plaintext_refused.inc();
            tracing::debug!(%peer, "plaintext refused: the inbound listener requires mutual TLS (STRICT)");
            return Accepted::Refused;
        }
        if !plaintext_ok
            && !STRICT_UNENFORCED_WARNED.swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            // Dev mode (no token): without a certificate this sidecar cannot do
            // mutual TLS, so it keeps serving plaintext as before mTLS existed
            // rather than make the workload unreachable. Said once, loudly.
            tracing::warn!(
                "the inbound listener is STRICT but this sidecar has no identity (no --token): \
                 accepting plaintext; STRICT is not enforced in dev mode"
            );
        }
        let info = ConnInfo::plain(peer, dst);
        if sniff::starts_with(&stream, preface::MAGIC.as_bytes()).await {
            tcp::inbound(state.clone(), Io::Plain(stream), info, InboundTcp::Preface).await;
            return Accepted::Handled;
        }
        return Accepted::Http(Io::Plain(stream), info);
    }
    if !tls_ok {
        tracing::debug!(%peer, "TLS refused: the inbound listener has no TLS filter chain");
        return Accepted::Refused;
    }
    let Some(configs) = state.tls.configs() else {
        tracing::debug!(%peer, "TLS refused: no workload certificate yet");
        return Accepted::Refused;
    };
    let accept = TlsAcceptor::from(configs.server.clone()).accept(stream);
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await {
        Ok(Ok(tls)) => {
            let session = tls.get_ref().1;
            let principal = mesh_identity::tls::peer_identity(session.peer_certificates())
                .map(|id| Arc::<str>::from(id.to_string()));
            let is_tcp = session.alpn_protocol() == Some(ALPN_MESH_TCP);
            let info = ConnInfo {
                peer,
                principal,
                mtls: true,
                original_dst: dst,
            };
            if is_tcp {
                tcp::inbound(
                    state.clone(),
                    Io::Tls(Box::new(tls)),
                    info,
                    InboundTcp::Preface,
                )
                .await;
                return Accepted::Handled;
            }
            Accepted::Http(Io::Tls(Box::new(tls)), info)
        }
        Ok(Err(e)) => {
            state.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, "inbound TLS handshake failed: {e}");
            Accepted::Refused
        }
        Err(_) => {
            state.metrics.tls_handshake_failures.inc();
            tracing::debug!(%peer, "inbound TLS handshake timed out");
            Accepted::Refused
        }
    }
}

/// Counts one running connection task in a shared counter while it lives.
struct TaskGuard(Arc<watch::Sender<usize>>);

impl TaskGuard {
    fn new(count: Arc<watch::Sender<usize>>) -> TaskGuard {
        count.send_modify(|n| *n += 1);
        TaskGuard(count)
    }
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n -= 1);
    }
}

/// Serves `listener` with `handler` until `shutdown` flips to `true`, then stops
/// accepting and lets open connections (HTTP and proxied TCP) finish for at most
/// `grace`.
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
    // Connection tasks still running: HTTP ones end through `graceful`, proxied
    // TCP ones when their peers close, so the drain waits for both.
    let tasks = Arc::new(watch::channel(0usize).0);
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
        let handler = handler.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let state = state.clone();
        let running = TaskGuard::new(tasks.clone());
        tokio::spawn(async move {
            let _running = running;
            let accepted = match transport {
                Transport::Plain => Accepted::Http(Io::Plain(stream), ConnInfo::plain(peer, None)),
                Transport::Outbound => accept_outbound(&state, stream, peer).await,
                Transport::Inbound => accept_inbound(&state, stream, peer).await,
            };
            // Proxied TCP connections count themselves, with their peers' labels.
            let counted = reporter.filter(|_| !matches!(accepted, Accepted::Handled));
            if let Some(r) = counted {
                state.metrics.connection_opened(r);
            }
            if let Accepted::Http(io, info) = accepted {
                let info = Arc::new(info);
                let service = service_fn(move |req| {
                    let fut = handler(req, info.clone());
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let conn = builder
                    .serve_connection_with_upgrades(TokioIo::new(io), service)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(listener = name, %peer, "connection error: {e}");
                }
            }
            if let Some(r) = counted {
                state.metrics.connection_closed(r);
            }
        });
    }
    drop(listener);
    let open = *tasks.borrow();
    if open > 0 {
        tracing::info!(listener = name, open, "draining connections");
    }
    let mut left = tasks.subscribe();
    let drained = async {
        graceful.shutdown().await;
        let _ = left.wait_for(|n| *n == 0).await;
    };
    tokio::select! {
        _ = drained => {}
        _ = tokio::time::sleep(grace) => {
            tracing::warn!(listener = name, "grace period over; closing remaining connections");
        }
    }
}
