//! Upstream connections, pooled.
//!
//! HTTP/1.1 goes through hyper-util's pooling client, keyed by the endpoint address
//! (the request URI names the endpoint; the original `Host` header is kept).
//! HTTP/2 (to remote sidecars, and h2c prior knowledge to HTTP/2 apps) uses one
//! multiplexed connection per (address, expected identity) from [`H2Pool`], so the
//! `:authority` stays the one the app asked for instead of the endpoint's IP.
//!
//! To another sidecar the connection is mutual TLS 1.3 ([`Mtls`]): after the
//! handshake the server's SPIFFE ID must equal the identity EDS says the endpoint
//! has, else no request is sent on it and the caller answers 503 naming both.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::client::conn::http2::SendRequest;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::ClientConfig;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream as ClientTlsStream;

use crate::headers::strip_hop_by_hop;

/// The body of every response the proxy sends downstream: the upstream's body
/// streamed through (watched for a gRPC status, see [`crate::grpc`]), or one the
/// proxy wrote itself.
pub type ProxyBody = Either<crate::grpc::Observed, Full<Bytes>>;

/// The body of every request the proxy sends upstream: the caller's streamed
/// through, or one held in memory (so that it can be sent again on a retry).
pub type UpstreamBody = Either<Incoming, Full<Bytes>>;

/// A response the proxy writes itself (errors, admin pages).
pub fn local_response(status: StatusCode, body: impl Into<Bytes>) -> Response<ProxyBody> {
    let mut resp = Response::new(Either::Right(Full::new(body.into())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Why an upstream request failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made.
    #[error("connect to {addr} failed: {reason}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The request could not be formed (bad authority, bad path).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The peer proved an identity other than the one the endpoint should have.
    #[error("identity mismatch at {addr}: expected {expected}, peer is {actual}")]
    IdentityMismatch {
        /// Where.
        addr: SocketAddr,
        /// The endpoint's identity from EDS.
        expected: String,
        /// What its certificate says.
        actual: String,
    },
    /// Mutual TLS is required but not possible (no certificate yet, no identity).
    #[error("{0}")]
    NoTls(String),
    /// The peer refused the HTTP/2 stream before processing it.
    #[error("request to {addr} refused: {reason}")]
    Refused {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection was made but the exchange failed.
    #[error("request to {addr} failed: {reason}")]
    Exchange {
        /// Where.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
}

impl UpstreamError {
    /// The status code to answer downstream with: 503 when the upstream could not
    /// be reached, 400 for a request that cannot be forwarded, else 502.
    pub fn status(&self) -> StatusCode {
        match self {
            UpstreamError::Connect { .. }
            | UpstreamError::IdentityMismatch { .. }
            | UpstreamError::NoTls(_) => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamError::Invalid(_) => StatusCode::BAD_REQUEST,
            UpstreamError::Exchange { .. } | UpstreamError::Refused { .. } => {
                StatusCode::BAD_GATEWAY
            }
        }
    }
}

/// The causes of `e` (skipping its generic top level), joined by `: `.
fn causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = e.source();
    while let Some(cause) = next {
        let text = cause.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        next = cause.source();
    }
    if parts.is_empty() {
        e.to_string()
    } else {
        parts.join(": ")
    }
}

/// Mutual TLS to another sidecar.
#[derive(Debug, Clone)]
pub struct Mtls {
    /// Our client configuration (certificate + trust bundle).
    pub config: Arc<ClientConfig>,
    /// The SPIFFE ID the server must prove.
    pub expected: Arc<str>,
}

/// The request target as an origin server expects it: the path and query of
/// an absolute-form or origin-form URI (`/` when there is none).
pub fn origin_form(uri: &Uri) -> &str {
    uri.path_and_query()
        .map(|p| p.as_str())
        .filter(|p| p.starts_with('/'))
        .unwrap_or("/")
}

/// A TCP connection to `addr` (Nagle off) within `timeout`.
pub async fn connect_tcp(addr: SocketAddr, timeout: Duration) -> Result<TcpStream, UpstreamError> {
    let connect_err = |reason: String| UpstreamError::Connect { addr, reason };
    let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| connect_err(format!("timed out after {} ms", timeout.as_millis())))?
        .map_err(|e| connect_err(e.to_string()))?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

/// A mutual-TLS connection to the sidecar at `addr` whose certificate proves
/// `mtls.expected`; on any other identity no byte of the caller's is sent.
///
/// The ALPN offered is `mtls.config`'s: `h2` for pooled HTTP, `mesh-tcp` for a
/// proxied TCP connection, `http/1.1` for an Upgrade request.
pub async fn connect_mtls(
    addr: SocketAddr,
    mtls: &Mtls,
    timeout: Duration,
) -> Result<ClientTlsStream<TcpStream>, UpstreamError> {
    let connect_err = |reason: String| UpstreamError::Connect { addr, reason };
    let stream = connect_tcp(addr, timeout).await?;
    let tls = tokio::time::timeout(
        timeout,
        TlsConnector::from(mtls.config.clone())
            .connect(mesh_identity::tls::mesh_server_name(), stream),
    )
    .await
    .map_err(|_| connect_err("TLS handshake timed out".into()))?
    .map_err(|e| connect_err(format!("TLS handshake: {e}")))?;
    let actual = mesh_identity::tls::peer_identity(tls.get_ref().1.peer_certificates())
        .map(|id| id.to_string());
    if actual.as_deref() != Some(&*mtls.expected) {
        return Err(UpstreamError::IdentityMismatch {
            addr,
            expected: mtls.expected.to_string(),
            actual: actual.unwrap_or_else(|| "without a mesh identity".into()),
        });
    }
    Ok(tls)
}

/// Pool key: the address and, for mutual TLS, the identity it must have.
type PoolKey = (SocketAddr, Option<Arc<str>>);

/// One HTTP/2 connection per (address, expected identity), shared by all
/// requests to it.
#[derive(Debug, Default)]
pub struct H2Pool {
    conns: Mutex<HashMap<PoolKey, Slot>>,
}

#[derive(Debug, Default, Clone)]
struct Slot {
    sender: Option<SendRequest<UpstreamBody>>,
    /// Serialises connection setup so concurrent first requests share one connection.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

impl H2Pool {
    fn cached(
        &self,
        key: &PoolKey,
    ) -> Result<SendRequest<UpstreamBody>, Arc<tokio::sync::Mutex<()>>> {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        let slot = conns.entry(key.clone()).or_default();
        match &slot.sender {
            Some(s) if !s.is_closed() => Ok(s.clone()),
            _ => Err(slot.connecting.clone()),
        }
    }

    /// A sender on a live connection to `addr` (mutual TLS when `mtls` is
    /// given), connecting if needed.
    pub async fn get(
        &self,
        addr: SocketAddr,
        mtls: Option<&Mtls>,
        timeout: Duration,
    ) -> Result<SendRequest<UpstreamBody>, UpstreamError> {
        let key: PoolKey = (addr, mtls.map(|m| m.expected.clone()));
        let lock = match self.cached(&key) {
            Ok(s) => return Ok(s),
            Err(lock) => lock,
        };
        let _guard = lock.lock().await;
        // Someone else may have connected while we waited.
        if let Ok(s) = self.cached(&key) {
            return Ok(s);
        }
        let connect_err = |reason: String| UpstreamError::Connect { addr, reason };
        let mut h2 = hyper::client::conn::http2::Builder::new(TokioExecutor::new());
        h2.timer(TokioTimer::new())
            .keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10))
            .adaptive_window(true);
        let sender = match mtls {
            None => {
                let stream = connect_tcp(addr, timeout).await?;
                let (sender, conn) = h2
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| connect_err(format!("HTTP/2 handshake: {e}")))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%addr, "upstream HTTP/2 connection closed: {e}");
                    }
                });
                sender
            }
            Some(m) => {
                let tls = connect_mtls(addr, m, timeout).await?;
                let (sender, conn) = h2
                    .handshake(TokioIo::new(tls))
                    .await
                    .map_err(|e| connect_err(format!("HTTP/2 handshake: {e}")))?;
                let expected = m.expected.clone();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%addr, %expected, "upstream mTLS connection closed: {e}");
                    }
                });
                sender
            }
        };
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        conns.entry(key).or_default().sender = Some(sender.clone());
        Ok(sender)
    }

    /// Forgets a connection that failed, so the next request reconnects.
    fn evict(&self, key: &PoolKey) {
        let mut conns = self.conns.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = conns.get_mut(key) {
            slot.sender = None;
        }
    }
}

/// The proxy's upstream clients.
#[derive(Debug)]
pub struct Upstreams {
    h1: Client<HttpConnector, UpstreamBody>,
    h2: H2Pool,
}

impl Default for Upstreams {
    fn default() -> Self {
        Upstreams::new()
    }
}

/// Connect timeout of HTTP/1.1 upstreams (the pooling client has one for all).
const H1_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

impl Upstreams {
    /// Clients with pooling on.
    pub fn new() -> Upstreams {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(H1_CONNECT_TIMEOUT));
        connector.enforce_http(true);
        let h1 = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(60))
            .pool_max_idle_per_host(256)
            .set_host(false)
            .build(connector);
        Upstreams {
            h1,
            h2: H2Pool::default(),
        }
    }

    /// Sends `req` to `addr`, keeping `authority` as the request's host; over
    /// mutual TLS (always HTTP/2) when `mtls` is given.
    ///
    /// Hop-by-hop headers are removed and the URI is reduced to its path, as an
    /// origin server expects; callers add their own headers beforehand.
    pub async fn send(
        &self,
        addr: SocketAddr,
        http2: bool,
        mtls: Option<&Mtls>,
        connect_timeout: Duration,
        authority: &str,
        req: Request<UpstreamBody>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let http2 = http2 || mtls.is_some();
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let path = origin_form(&parts.uri);
        let invalid = |e: http::Error| UpstreamError::Invalid(e.to_string());
        let mut resp = if http2 {
            // `:authority` carries the host; a Host header would be redundant.
            parts.headers.remove(header::HOST);
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(authority)
                .path_and_query(path)
                .build()
                .map_err(invalid)?;
            parts.version = Version::HTTP_2;
            let mut sender = self.h2.get(addr, mtls, connect_timeout).await?;
            let req = Request::from_parts(parts, body);
            let sent = async {
                sender.ready().await?;
                sender.send_request(req).await
            };
            match sent.await {
                Ok(resp) => resp,
                Err(e) => {
                    if sender.is_closed() {
                        self.h2.evict(&(addr, mtls.map(|m| m.expected.clone())));
                    }
                    let reason = causes(&e);
                    // h2's REFUSED_STREAM reads "refused stream before processing
                    // any application logic": nothing ran, any method may retry.
                    if reason.contains("refused stream") {
                        return Err(UpstreamError::Refused { addr, reason });
                    }
                    return Err(UpstreamError::Exchange { addr, reason });
                }
            }
        } else {
            let host = HeaderValue::from_str(authority)
                .map_err(|e| UpstreamError::Invalid(format!("bad host {authority:?}: {e}")))?;
            parts.headers.insert(header::HOST, host);
            parts.uri = Uri::builder()
                .scheme("http")
                .authority(addr.to_string())
                .path_and_query(path)
                .build()
                .map_err(invalid)?;
            parts.version = Version::HTTP_11;
            match self.h1.request(Request::from_parts(parts, body)).await {
                Ok(resp) => resp,
                Err(e) if e.is_connect() => {
                    let reason = causes(&e);
                    return Err(UpstreamError::Connect { addr, reason });
                }
                Err(e) => {
                    let reason = causes(&e);
                    return Err(UpstreamError::Exchange { addr, reason });
                }
            }
        };
        strip_hop_by_hop(resp.headers_mut());
        Ok(resp)
    }
}
