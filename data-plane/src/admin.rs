//! The admin listener: readiness, liveness, metrics, config dump, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use mesh_xds::ResourceType;

use crate::state::ProxyState;
use crate::upstream::{ProxyBody, local_response};

/// Why the proxy is not ready yet, for the `/ready` body.
fn missing(state: &ProxyState) -> String {
    let cfg = state.config.load();
    let store = &cfg.store;
    let mut parts = Vec::new();
    if !state.tls.ready() {
        parts.push("no workload certificate yet".to_string());
    }
    for ty in [ResourceType::Listener, ResourceType::Cluster] {
        if !store.status(ty).received {
            parts.push(format!("{ty} not received"));
        }
    }
    let routes: Vec<String> = store
        .route_names()
        .into_iter()
        .filter(|n| store.route(n).is_none())
        .collect();
    if !routes.is_empty() {
        parts.push(format!("RDS waiting for {}", routes.join(", ")));
    }
    let eds: Vec<String> = store
        .eds_names()
        .into_iter()
        .filter(|n| store.endpoints(n).is_none())
        .collect();
    if !eds.is_empty() {
        parts.push(format!("EDS waiting for {} clusters", eds.len()));
    }
    if parts.is_empty() {
        "config complete, publishing".to_string()
    } else {
        parts.join("; ")
    }
}

/// Handles one admin request from `peer`.
pub async fn handle(
    state: Arc<ProxyState>,
    req: Request<hyper::body::Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let path = req.uri().path();
    let method = req.method();
    match (method, path) {
        (&Method::GET | &Method::HEAD, "/ready") => {
            if state.is_ready() {
                local_response(StatusCode::OK, "ready\n")
            } else {
                local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("not ready: {}\n", missing(&state)),
                )
            }
        }
        (&Method::GET | &Method::HEAD, "/live") => local_response(StatusCode::OK, "live\n"),
        (&Method::GET, "/metrics") => {
            let mut resp = local_response(StatusCode::OK, state.metrics.encode());
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8",
                ),
            );
            resp
        }
        (&Method::GET, "/config_dump") => {
            let mut dump = state.config.load().store.dump();
            dump["secrets"] = state.tls.dump();
            let body = serde_json::to_string_pretty(&dump).unwrap_or_else(|e| format!("{e}"));
            let mut resp = local_response(StatusCode::OK, body);
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp
        }
        (&Method::POST, "/shutdown") => {
            if peer.ip().is_loopback() {
                tracing::info!(%peer, "shutdown requested via admin API");
                state.trigger_shutdown();
                local_response(StatusCode::OK, "shutting down\n")
            } else {
                local_response(
                    StatusCode::FORBIDDEN,
                    "mesh-proxy: /shutdown is only accepted from loopback\n",
                )
            }
        }
        (_, "/ready" | "/live" | "/metrics" | "/config_dump" | "/shutdown") => {
            local_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n")
        }
        _ => local_response(
            StatusCode::NOT_FOUND,
            "not found; try /ready, /live, /metrics, /config_dump, POST /shutdown\n",
        ),
    }
}
