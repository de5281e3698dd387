//! The inbound listener: mesh -> app.
//!
//! Remote sidecars say which app port they want in `mesh-target-port`; plain
//! clients may omit it when the workload serves a single port. The port's filter
//! chain for the connection's transport (mutual TLS or plaintext) supplies the
//! authorization, evaluated against the caller's verified SPIFFE ID before
//! anything reaches the app; a denial is a 403 naming the policy. The mesh hop
//! headers and any incoming `x-forwarded-client-cert` are removed before the
//! request reaches the app (and XFCC is set from the verified identities when
//! `--forward-client-cert` is on).

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::authz::{Attributes, Authz, Verdict};
use crate::headers::{
    DESTINATION_SERVICE, SOURCE_NAMESPACE, SOURCE_WORKLOAD, TARGET_PORT, label_value, strip_mesh,
};
use crate::metrics::{MUTUAL_TLS, Reporter, RequestLabels, UNKNOWN};
use crate::routing::{ClusterRt, EndpointRt};
use crate::server::ConnInfo;
use crate::state::ProxyState;

/// The header that tells the app who called (Envoy's format).
pub const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Where a request goes and what it must pass first.
struct Chosen {
    cluster: Arc<ClusterRt>,
    endpoint: Arc<EndpointRt>,
    authz: Arc<Authz>,
}
use crate::upstream::{ProxyBody, local_response};

fn choose(
    state: &ProxyState,
    req: &Request<Incoming>,
    conn: &ConnInfo,
) -> Result<Chosen, (StatusCode, String)> {
    let cfg = state.config.load();
    let Some(table) = cfg.inbound.as_ref() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "mesh-proxy: inbound configuration not received from the controller yet".into(),
        ));
    };
    let port = match req.headers().get(&TARGET_PORT) {
        Some(v) => {
            let port = v.to_str().ok().and_then(|s| s.trim().parse::<u16>().ok());
            match port {
                Some(p) if table.ports.contains_key(&p) => p,
                Some(p) => {
                    return Err((
                        StatusCode::NOT_FOUND,
                        format!(
                            "mesh-proxy: workload {}.{} does not serve port {p} (it serves {})",
                            state.me.workload,
                            state.me.namespace,
                            table.port_list()
                        ),
                    ));
                }
                None => {
                    return Err((
                        StatusCode::BAD_REQUEST,
                        format!("mesh-proxy: invalid {TARGET_PORT} header {v:?}"),
                    ));
                }
            }
        }
        // Captured plaintext (PERMISSIVE) says its port by where it was going.
        None if conn
            .original_dst
            .is_some_and(|d| table.ports.contains_key(&d.port())) =>
        {
            conn.original_dst.map_or(0, |d| d.port())
        }
        None => match table.ports.keys().collect::<Vec<_>>()[..] {
            [only] => *only,
            [] => {
                return Err((
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!(
                        "mesh-proxy: workload {}.{} serves no ports",
                        state.me.workload, state.me.namespace
                    ),
                ));
            }
            _ => {
                return Err((
                    StatusCode::BAD_REQUEST,
                    format!(
                        "mesh-proxy: request has no {TARGET_PORT} header and workload {}.{} serves several ports {}",
                        state.me.workload,
                        state.me.namespace,
                        table.port_list()
                    ),
                ));
            }
        },
    };
    let entry = &table.ports[&port];
    let authz = if conn.mtls {
        entry.tls.clone()
    } else if state.tls.enabled() {
        entry.plaintext.clone()
    } else {
        // Dev mode serves plaintext even on mTLS-only chains (see `server`); their
        // policies still apply, to a caller without a principal.
        entry.plaintext.clone().or_else(|| entry.tls.clone())
    };
    let Some(authz) = authz else {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "mesh-proxy: port {port} of workload {}.{} only accepts {}\n",
                state.me.workload,
                state.me.namespace,
                if conn.mtls { "plaintext" } else { "mutual TLS" }
            ),
        ));
    };
    let target = &entry.target;
    let Some(cluster) = target.cluster.clone() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "mesh-proxy: cluster {} is not known yet",
                target.cluster_name
            ),
        ));
    };
    match cluster.pick_endpoint().cloned() {
        Some(endpoint) => Ok(Chosen {
            cluster,
            endpoint,
            authz,
        }),
        None => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("mesh-proxy: cluster {} has no endpoints", cluster.name),
        )),
    }
}

/// Evaluates `authz` for `req`; `Some(response)` when denied.
fn authorize(
    state: &ProxyState,
    authz: &Authz,
    req: &Request<Incoming>,
    conn: &ConnInfo,
) -> Option<Response<ProxyBody>> {
    if authz.is_empty() {
        return None;
    }
    let attrs = Attributes {
        principal: conn.principal.as_deref(),
        path: req.uri().path(),
        method: req.method().as_str(),
    };
    let Verdict::Deny { reason, policy } = authz.evaluate(&attrs) else {
        return None;
    };
    state
        .metrics
        .count_denied(&state.me.workload, &state.me.namespace, reason.as_str());
    let caller = conn
        .principal
        .as_deref()
        .unwrap_or("an unauthenticated caller");
    let body = match &policy {
        Some(p) => format!("mesh-proxy: RBAC: access denied by policy {p} ({caller})\n"),
        None => format!("mesh-proxy: RBAC: access denied: no ALLOW policy matches {caller}\n"),
    };
    tracing::debug!(
        peer = %conn.peer,
        principal = caller,
        method = %req.method(),
        path = req.uri().path(),
        reason = reason.as_str(),
        policy = policy.as_deref().unwrap_or("-"),
        "request denied by authorization policy"
    );
    Some(local_response(StatusCode::FORBIDDEN, body))
}

/// Sets (or removes) `x-forwarded-client-cert` for the app.
fn forward_client_cert(state: &ProxyState, headers: &mut http::HeaderMap, conn: &ConnInfo) {
    headers.remove(XFCC);
    if !state.forward_client_cert {
        return;
    }
    let (Some(peer), Some(me)) = (conn.principal.as_deref(), state.tls.configs()) else {
        return;
    };
    if let Ok(v) = HeaderValue::from_str(&format!("By={};URI={peer}", me.spiffe_id)) {
        headers.insert(XFCC, v);
    }
}

/// Handles one inbound request.
pub async fn handle(
    state: Arc<ProxyState>,
    mut req: Request<Incoming>,
    conn: Arc<ConnInfo>,
) -> Response<ProxyBody> {
    let start = Instant::now();
    let headers = req.headers();
    let labels = RequestLabels {
        source_workload: label_value(headers, &SOURCE_WORKLOAD),
        source_namespace: label_value(headers, &SOURCE_NAMESPACE),
        source_principal: conn.principal.as_deref().unwrap_or(UNKNOWN).to_string(),
        destination_service: label_value(headers, &DESTINATION_SERVICE),
        destination_workload: state.me.workload.clone(),
        destination_namespace: state.me.namespace.clone(),
        destination_principal: state
            .tls
            .configs()
            .map_or_else(|| UNKNOWN.to_string(), |c| c.spiffe_id.to_string()),
        connection_security_policy: if conn.mtls { MUTUAL_TLS } else { "none" },
        ..RequestLabels::unknown(Reporter::Destination)
    };
    let resp = match choose(&state, &req, &conn) {
        Err((status, msg)) => {
            tracing::debug!(%status, "{msg}");
            local_response(status, format!("{}\n", msg.trim_end()))
        }
        Ok(chosen) => match authorize(&state, &chosen.authz, &req, &conn) {
            Some(denied) => denied,
            None => {
                let Chosen {
                    cluster,
                    endpoint: ep,
                    ..
                } = chosen;
                let authority = req
                    .headers()
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| req.uri().authority().map(|a| a.to_string()))
                    .unwrap_or_else(|| ep.spec.address.to_string());
                strip_mesh(req.headers_mut());
                forward_client_cert(&state, req.headers_mut(), &conn);
                let sent = if crate::upgrade::requested(&req) {
                    crate::upgrade::forward(
                        &state,
                        ep.spec.address,
                        None,
                        cluster.connect_timeout,
                        &authority,
                        req,
                    )
                    .await
                } else {
                    let sent = state
                        .upstreams
                        .send(
                            ep.spec.address,
                            cluster.http2,
                            None,
                            cluster.connect_timeout,
                            &authority,
                            req.map(http_body_util::Either::Left),
                        )
                        .await;
                    match sent {
                        Ok(resp) => {
                            let status = resp.status().as_u16();
                            let seconds = start.elapsed().as_secs_f64();
                            let state = state.clone();
                            return crate::grpc::observe(resp, move |grpc_status| {
                                state.metrics.record(
                                    &RequestLabels {
                                        response_code: status,
                                        grpc_status,
                                        ..labels
                                    },
                                    seconds,
                                );
                            });
                        }
                        Err(e) => Err(e),
                    }
                };
                match sent {
                    Ok(resp) => resp,
                    Err(e) => {
                        tracing::debug!(cluster = %cluster.name, "app error: {e}");
                        local_response(
                            e.status(),
                            format!("mesh-proxy: cannot reach the app ({}): {e}\n", cluster.name),
                        )
                    }
                }
            }
        },
    };
    state.metrics.record(
        &RequestLabels {
            response_code: resp.status().as_u16(),
            ..labels
        },
        start.elapsed().as_secs_f64(),
    );
    resp
}
