//! The inbound listener: mesh -> app.
//!
//! Remote sidecars say which app port they want in `mesh-target-port`; plain
//! clients may omit it when the workload serves a single port. The mesh hop headers
//! are removed before the request reaches the app.

use std::sync::Arc;
use std::time::Instant;

use http::header;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::headers::{
    DESTINATION_SERVICE, SOURCE_NAMESPACE, SOURCE_WORKLOAD, TARGET_PORT, label_value, strip_mesh,
};
use crate::metrics::{Reporter, RequestLabels};
use crate::routing::{ClusterRt, EndpointRt};
use crate::state::ProxyState;
use crate::upstream::{ProxyBody, local_response};

fn choose(
    state: &ProxyState,
    req: &Request<Incoming>,
) -> Result<(Arc<ClusterRt>, Arc<EndpointRt>), (StatusCode, String)> {
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
    let target = &table.ports[&port];
    let Some(cluster) = target.cluster.clone() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "mesh-proxy: cluster {} is not known yet",
                target.cluster_name
            ),
        ));
    };
    match cluster.pick().cloned() {
        Some(ep) => Ok((cluster, ep)),
        None => Err((
            StatusCode::SERVICE_UNAVAILABLE,
            format!("mesh-proxy: cluster {} has no endpoints", cluster.name),
        )),
    }
}

/// Handles one inbound request.
pub async fn handle(state: Arc<ProxyState>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let headers = req.headers();
    let labels = RequestLabels {
        source_workload: label_value(headers, &SOURCE_WORKLOAD),
        source_namespace: label_value(headers, &SOURCE_NAMESPACE),
        destination_service: label_value(headers, &DESTINATION_SERVICE),
        destination_workload: state.me.workload.clone(),
        destination_namespace: state.me.namespace.clone(),
        ..RequestLabels::unknown(Reporter::Destination)
    };
    let resp = match choose(&state, &req) {
        Err((status, msg)) => {
            tracing::debug!(%status, "{msg}");
            local_response(status, format!("{msg}\n"))
        }
        Ok((cluster, ep)) => {
            let authority = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .map(str::to_string)
                .or_else(|| req.uri().authority().map(|a| a.to_string()))
                .unwrap_or_else(|| ep.spec.address.to_string());
            strip_mesh(req.headers_mut());
            match state
                .upstreams
                .send(
                    ep.spec.address,
                    cluster.http2,
                    cluster.connect_timeout,
                    &authority,
                    req,
                )
                .await
            {
                Ok(resp) => resp.map(http_body_util::Either::Left),
                Err(e) => {
                    tracing::debug!(cluster = %cluster.name, "app error: {e}");
                    local_response(
                        e.status(),
                        format!("mesh-proxy: cannot reach the app ({}): {e}\n", cluster.name),
                    )
                }
            }
        }
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
