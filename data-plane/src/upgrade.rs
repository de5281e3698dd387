//! HTTP/1.1 `Upgrade` (WebSocket) passthrough.
//!
//! An upgrade takes over its connection, so it cannot ride the pooled HTTP/2
//! connections between sidecars (HTTP/2 has no `Upgrade`; RFC 8441's extended
//! CONNECT would need both ends and the app to speak it). Decision: each Upgrade
//! request gets a dedicated upstream connection speaking HTTP/1.1, to a remote
//! sidecar over mutual TLS with ALPN `http/1.1` (the server's SPIFFE ID checked
//! as for every hop), to an app in plaintext. The request goes with its
//! `Connection: upgrade` and `Upgrade` headers; when the upstream answers `101`,
//! the 101 goes back downstream and both upgraded connections are spliced.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::headers::strip_hop_by_hop;
use crate::state::ProxyState;
use crate::upstream::{
    Mtls, ProxyBody, UpstreamError, connect_mtls, connect_tcp, local_response, origin_form,
};

/// Whether `req` asks to switch protocols (HTTP/1.1 `Connection: upgrade` with an
/// `Upgrade` header).
pub fn requested<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(header::UPGRADE)
        && req
            .headers()
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
}

/// Hop-by-hop headers removed, but the upgrade request (or its 101 answer) kept.
fn keep_upgrade(headers: &mut http::HeaderMap) {
    let upgrade = headers.get(header::UPGRADE).cloned();
    strip_hop_by_hop(headers);
    if let Some(u) = upgrade {
        headers.insert(header::UPGRADE, u);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Sends the Upgrade request `req` to `addr` on a connection of its own (mutual
/// TLS with ALPN `http/1.1` when `mtls` names the peer's identity), keeping
/// `authority` as its host, and splices the two upgraded connections after a 101.
pub async fn forward(
    state: &ProxyState,
    addr: SocketAddr,
    mtls: Option<&Mtls>,
    timeout: Duration,
    authority: &str,
    mut req: Request<Incoming>,
) -> Result<Response<ProxyBody>, UpstreamError> {
    let downstream = hyper::upgrade::on(&mut req);
    let (mut parts, body) = req.into_parts();
    keep_upgrade(&mut parts.headers);
    let host = HeaderValue::from_str(authority)
        .map_err(|e| UpstreamError::Invalid(format!("bad host {authority:?}: {e}")))?;
    parts.headers.insert(header::HOST, host);
    parts.uri = Uri::try_from(origin_form(&parts.uri))
        .map_err(|e| UpstreamError::Invalid(e.to_string()))?;
    let req = Request::from_parts(parts, body);
    let mut resp = match mtls {
        Some(m) => {
            let configs = state
                .tls
                .configs()
                .ok_or_else(|| UpstreamError::NoTls("no workload certificate yet".into()))?;
            let h1 = Mtls {
                config: configs.client_http1.clone(),
                expected: m.expected.clone(),
            };
            exchange(addr, connect_mtls(addr, &h1, timeout).await?, req).await?
        }
        None => exchange(addr, connect_tcp(addr, timeout).await?, req).await?,
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        let upstream = hyper::upgrade::on(&mut resp);
        tokio::spawn(async move {
            match tokio::try_join!(downstream, upstream) {
                Ok((d, u)) => {
                    let (mut d, mut u) = (TokioIo::new(d), TokioIo::new(u));
                    if let Err(e) = tokio::io::copy_bidirectional(&mut d, &mut u).await {
                        tracing::debug!(%addr, "upgraded connection ended: {e}");
                    }
                }
                Err(e) => tracing::debug!(%addr, "upgrade failed: {e}"),
            }
        });
        keep_upgrade(resp.headers_mut());
    } else {
        strip_hop_by_hop(resp.headers_mut());
    }
    Ok(resp.map(|b| http_body_util::Either::Left(crate::grpc::Observed::plain(b))))
}

/// One HTTP/1.1 exchange on `io`, with upgrades allowed.
async fn exchange<I>(
    addr: SocketAddr,
    io: I,
    req: Request<Incoming>,
) -> Result<Response<Incoming>, UpstreamError>
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let failed = |e: hyper::Error| UpstreamError::Exchange {
        addr,
        reason: e.to_string(),
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(failed)?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(%addr, "upgrade connection closed: {e}");
        }
    });
    sender.send_request(req).await.map_err(failed)
}

/// The downstream answer when an Upgrade could not be forwarded.
pub fn failed(service: &str, e: &UpstreamError) -> Response<ProxyBody> {
    local_response(
        e.status(),
        format!("mesh-proxy: upgrade to service {service} failed: {e}\n"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_upgrade_requests_and_keeps_their_headers() {
        let ws = Request::get("/chat")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .body(())
            .unwrap();
        assert!(requested(&ws));
        let plain = Request::get("/").header("upgrade", "h2c").body(()).unwrap();
        assert!(!requested(&plain), "no Connection: upgrade");
        let mut headers = ws.headers().clone();
        headers.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        keep_upgrade(&mut headers);
        assert_eq!(headers["upgrade"], "websocket");
        assert_eq!(headers["connection"], "upgrade");
        assert!(!headers.contains_key("keep-alive"));
    }
}
