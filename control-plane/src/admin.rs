//! The controller's admin HTTP server: readiness, metrics, debug views, and the
//! CA's operator endpoints (join tokens, trust bundle, root rotation).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::identity::Authority;
use crate::identity::rotation::RotateError;
use crate::metrics::Metrics;
use crate::publish::Published;
use crate::registry::RegistryState;
use crate::xds::status::SyncRegistry;

/// Largest request body the admin server reads.
const MAX_BODY: usize = 64 * 1024;

/// What the admin endpoints read.
#[derive(Debug, Clone)]
pub struct AdminState {
    /// The registry's current state.
    pub registry: watch::Receiver<RegistryState>,
    /// Sync state of every proxy.
    pub sync: Arc<SyncRegistry>,
    /// Controller metrics.
    pub metrics: Arc<Metrics>,
    /// The CA and token key.
    pub authority: Arc<Authority>,
    /// Published snapshots (root rotation watches them).
    pub snapshots: watch::Receiver<Published>,
}

/// Serves admin requests on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: AdminState) {
    loop {
        let (stream, remote) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "admin accept failed");
                continue;
            }
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(&state, remote, req).await) }
            });
            let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(
    status: StatusCode,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, content_type)
        .body(Full::new(body.into()))
        .expect("static response parts are valid")
}

fn json_with(status: StatusCode, value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => respond(status, "application/json", body),
        Err(e) => respond(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            format!("cannot encode: {e}\n"),
        ),
    }
}

fn json(value: &impl serde::Serialize) -> Response<Full<Bytes>> {
    json_with(StatusCode::OK, value)
}

fn error(status: StatusCode, message: impl std::fmt::Display) -> Response<Full<Bytes>> {
    json_with(status, &serde_json::json!({ "error": message.to_string() }))
}

const ENDPOINTS: &str = "GET /ready, /metrics, /debug/registry, /debug/syncz, /debug/ca, /ca/bundle; \
                         POST /tokens, /ca/rotate";

fn is_loopback(addr: &SocketAddr) -> bool {
    match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.is_loopback(),
        std::net::IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

/// Body of `POST /tokens`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    namespace: String,
    service_account: String,
    #[serde(default)]
    ttl_seconds: Option<u64>,
}

async fn handle(
    state: &AdminState,
    remote: SocketAddr,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    match (&method, path.as_str()) {
        (&Method::GET, "/ready") => respond(StatusCode::OK, "text/plain", "ready\n"),
        (&Method::GET, "/metrics") => respond(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            state.metrics.encode(),
        ),
        (&Method::GET, "/debug/registry") => json(&*state.registry.borrow()),
        (&Method::GET, "/debug/syncz") => json(&state.sync.list()),
        (&Method::GET, "/debug/ca") => json(&state.authority.debug()),
        (&Method::GET, "/ca/bundle") => respond(
            StatusCode::OK,
            "application/x-pem-file",
            state.authority.bundle_pem().to_string(),
        ),
        (&Method::POST, "/tokens") => {
            // Whoever can mint tokens can become any workload: loopback only.
            if !is_loopback(&remote) {
                tracing::warn!(%remote, "refused POST /tokens from a non-loopback peer");
                return error(
                    StatusCode::FORBIDDEN,
                    "tokens are only issued to loopback clients (run meshctl on the controller's host)",
                );
            }
            let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => return error(StatusCode::BAD_REQUEST, format!("cannot read body: {e}")),
            };
            let request: TokenRequest = match serde_json::from_slice(&body) {
                Ok(r) => r,
                Err(e) => {
                    return error(
                        StatusCode::BAD_REQUEST,
                        format!(
                            "body must be JSON {{\"namespace\", \"service_account\", \"ttl_seconds\"?}}: {e}"
                        ),
                    );
                }
            };
            match state.authority.create_token(
                &request.namespace,
                &request.service_account,
                request.ttl_seconds,
            ) {
                Ok((identity, token)) => {
                    tracing::info!(%identity, ttl_seconds = ?request.ttl_seconds, %remote, "issued join token");
                    json(&serde_json::json!({
                        "token": token,
                        "identity": identity.to_string(),
                    }))
                }
                Err(e) => error(StatusCode::BAD_REQUEST, e),
            }
        }
        (&Method::POST, "/ca/rotate") => {
            if !is_loopback(&remote) {
                return error(
                    StatusCode::FORBIDDEN,
                    "rotation is only started from loopback clients",
                );
            }
            match state
                .authority
                .start_rotation(state.sync.clone(), state.snapshots.clone())
            {
                Ok(()) => {
                    tracing::info!(%remote, "root rotation requested");
                    json_with(StatusCode::ACCEPTED, &state.authority.debug())
                }
                Err(e @ RotateError::AlreadyRunning(_)) => error(StatusCode::CONFLICT, e),
                Err(e @ RotateError::UserCa) => error(StatusCode::CONFLICT, e),
                Err(e @ RotateError::NotLeader(_)) => error(StatusCode::CONFLICT, e),
            }
        }
        (
            _,
            "/ready" | "/metrics" | "/debug/registry" | "/debug/syncz" | "/debug/ca" | "/ca/bundle"
            | "/tokens" | "/ca/rotate",
        ) => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            format!("{method} not allowed on {path}; {ENDPOINTS}\n"),
        ),
        (_, other) => respond(
            StatusCode::NOT_FOUND,
            "text/plain",
            format!("no such endpoint {other}; try {ENDPOINTS}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_peers() {
        assert!(is_loopback(&"127.0.0.1:1".parse().unwrap()));
        assert!(is_loopback(&"[::1]:1".parse().unwrap()));
        assert!(is_loopback(&"[::ffff:127.0.0.1]:1".parse().unwrap()));
        assert!(!is_loopback(&"10.0.0.1:1".parse().unwrap()));
        assert!(!is_loopback(&"[::ffff:10.0.0.1]:1".parse().unwrap()));
    }
}
