//! The outbound listener: app -> mesh.
//!
//! Requests are routed by the absolute URI's authority (explicit proxy use) or the
//! `Host`/`:authority` header to a virtual host, by its rules (path, method,
//! headers, query) to a cluster of the rule's weighted split, to an endpoint picked
//! round robin. A host no service claims is a 503; a known host no rule matches is
//! a 404. The rule's request header edits apply before the mesh hop headers are
//! set, its response edits to whatever the caller gets.
//! Endpoints with a sidecar are reached at the sidecar's inbound port with the mesh
//! hop headers, over mutual TLS with the endpoint's SPIFFE ID checked when this
//! proxy has an identity (over h2c in dev mode); others directly.

use std::sync::Arc;
use std::time::Instant;

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::headers::{
    DESTINATION_SERVICE, SOURCE_NAMESPACE, SOURCE_WORKLOAD, TARGET_PORT, strip_mesh,
};
use crate::metrics::{Reporter, RequestLabels};
use crate::route_match::RequestView;
use crate::routing::{ActionRt, ClusterRt, EndpointRt, RuleRt};
use crate::state::ProxyState;
use crate::upstream::{Mtls, ProxyBody, UpstreamError, local_response};

/// The host a request is for, lowercased: the URI authority when the request is in
/// absolute form (or HTTP/2), else the `Host` header. User info is dropped.
pub fn request_host<B>(req: &Request<B>) -> Option<String> {
    if let Some(auth) = req.uri().authority() {
        let host = auth.host();
        return Some(match auth.port_u16() {
            Some(p) => format!("{host}:{p}").to_ascii_lowercase(),
            None => host.to_ascii_lowercase(),
        });
    }
    let host = req.headers().get(header::HOST)?.to_str().ok()?.trim();
    (!host.is_empty()).then(|| host.to_ascii_lowercase())
}

/// What routing decided for a request.
enum Decision {
    /// Send it to this endpoint, with the matched rule's header edits.
    Forward(Arc<ClusterRt>, Arc<EndpointRt>, Arc<RuleRt>),
    /// Answer it here: status, message, and the cluster or service it was for
    /// (for metrics).
    Reject(StatusCode, String, Refused),
    /// The matched rule answers directly (`direct_response`) with this status and
    /// body; the rule is kept for its response header edits.
    Respond(StatusCode, bytes::Bytes, Arc<RuleRt>, Arc<str>),
}

/// What a refused request was for, as far as routing got.
enum Refused {
    Nothing,
    Service(Arc<str>),
    Cluster(Arc<ClusterRt>),
}

fn decide(state: &ProxyState, host: &str, req: &RequestView<'_>) -> Decision {
    let cfg = state.config.load();
    let Some(table) = cfg.outbound.as_ref() else {
        return Decision::Reject(
            StatusCode::SERVICE_UNAVAILABLE,
            "mesh-proxy: configuration not received from the controller yet".into(),
            Refused::Nothing,
        );
    };
    let Some(vhost) = table.find(host) else {
        return Decision::Reject(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "mesh-proxy: no service matches host {host:?} (namespace {})",
                state.me.namespace
            ),
            Refused::Nothing,
        );
    };
    // Host known, no rule: Envoy's 404 (and Gateway API's for a routed service).
    let Some(rule) = vhost.route(req) else {
        return Decision::Reject(
            StatusCode::NOT_FOUND,
            format!(
                "mesh-proxy: no route for {} {} on {host:?}",
                req.method, req.path
            ),
            Refused::Service(vhost.service.clone()),
        );
    };
    let split = match &rule.action {
        ActionRt::Respond(status, body) => {
            return Decision::Respond(*status, body.clone(), rule.clone(), vhost.service.clone());
        }
        ActionRt::Forward(split) => split,
    };
    let target = split.pick();
    let Some(cluster) = target.cluster.clone() else {
        return Decision::Reject(
            split.cluster_not_found,
            format!(
                "mesh-proxy: cluster {} is not known{}",
                target.cluster_name,
                if split.cluster_not_found == StatusCode::SERVICE_UNAVAILABLE {
                    " yet"
                } else {
                    " (the route names a backend that does not exist)"
                }
            ),
            Refused::Service(vhost.service.clone()),
        );
    };
    match cluster.pick().cloned() {
        Some(ep) => Decision::Forward(cluster, ep, rule.clone()),
        None => Decision::Reject(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("mesh-proxy: service {} has no endpoints", cluster.name),
            Refused::Cluster(cluster),
        ),
    }
}

fn reject(msg: String, status: StatusCode) -> Response<ProxyBody> {
    tracing::debug!(%status, "{msg}");
    local_response(status, format!("{msg}\n"))
}

/// Handles one outbound request.
pub async fn handle(state: Arc<ProxyState>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let start = Instant::now();
    let rejected = |code: StatusCode, refused: &Refused| {
        let secs = start.elapsed().as_secs_f64();
        let service = match refused {
            Refused::Cluster(c) => {
                return c
                    .no_endpoint_stats
                    .record(&state.metrics, code.as_u16(), secs);
            }
            Refused::Service(s) => s.to_string(),
            Refused::Nothing => crate::metrics::UNKNOWN.to_string(),
        };
        state.metrics.record(
            &RequestLabels {
                source_workload: state.me.workload.clone(),
                source_namespace: state.me.namespace.clone(),
                destination_service: service,
                response_code: code.as_u16(),
                ..RequestLabels::unknown(Reporter::Source)
            },
            secs,
        )
    };
    if req.method() == Method::CONNECT {
        rejected(StatusCode::NOT_IMPLEMENTED, &Refused::Nothing);
        return reject(
            "mesh-proxy: CONNECT tunnels are not supported; send plain HTTP".into(),
            StatusCode::NOT_IMPLEMENTED,
        );
    }
    let Some(host) = request_host(&req) else {
        rejected(StatusCode::BAD_REQUEST, &Refused::Nothing);
        return reject(
            "mesh-proxy: request has no Host header or authority".into(),
            StatusCode::BAD_REQUEST,
        );
    };
    let view = RequestView::new(req.method(), req.uri(), req.headers());
    let (cluster, ep, rule) = match decide(&state, &host, &view) {
        Decision::Forward(c, e, r) => (c, e, r),
        Decision::Reject(code, msg, refused) => {
            rejected(code, &refused);
            return reject(msg, code);
        }
        Decision::Respond(status, body, rule, service) => {
            rejected(status, &Refused::Service(service));
            let mut resp = local_response(status, body);
            rule.response_headers.apply(resp.headers_mut());
            return resp;
        }
    };
    rule.request_headers.apply(req.headers_mut());

    // Keep what the app addressed as the host, including the Host header when the
    // request came in absolute form.
    let authority = match req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
    {
        Some(h) if req.uri().authority().is_none() => h.to_string(),
        _ => req
            .uri()
            .authority()
            .map(|a| {
                a.as_str()
                    .rsplit('@')
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .unwrap_or_else(|| host.clone()),
    };
    let mut mtls = None;
    let (addr, http2) = match ep.spec.sidecar_port {
        Some(_) => {
            if state.tls.enabled() {
                let refuse = |msg: String| {
                    tracing::warn!(cluster = %cluster.name, endpoint = %ep.connect_addr, "{msg}");
                    ep.stats.record(
                        &state.metrics,
                        StatusCode::SERVICE_UNAVAILABLE.as_u16(),
                        start.elapsed().as_secs_f64(),
                    );
                    reject(msg, StatusCode::SERVICE_UNAVAILABLE)
                };
                let Some(configs) = state.tls.configs() else {
                    return refuse(
                        "mesh-proxy: no workload certificate yet; cannot call other sidecars"
                            .into(),
                    );
                };
                let Some(expected) = ep.spec.identity.as_deref() else {
                    return refuse(format!(
                        "mesh-proxy: endpoint {} of service {} has no identity; refusing to call it without one",
                        ep.spec.address, cluster.name
                    ));
                };
                mtls = Some(Mtls {
                    config: configs.client.clone(),
                    expected: expected.into(),
                });
            }
            let headers = req.headers_mut();
            strip_mesh(headers);
            headers.insert(TARGET_PORT, HeaderValue::from(ep.spec.address.port()));
            if let Ok(v) = HeaderValue::from_str(&state.me.workload) {
                headers.insert(SOURCE_WORKLOAD, v);
            }
            if let Ok(v) = HeaderValue::from_str(&state.me.namespace) {
                headers.insert(SOURCE_NAMESPACE, v);
            }
            if let Ok(v) = HeaderValue::from_str(&cluster.service) {
                headers.insert(DESTINATION_SERVICE, v);
            }
            (ep.connect_addr, true)
        }
        None => {
            strip_mesh(req.headers_mut());
            (ep.spec.address, cluster.http2)
        }
    };
    if crate::upgrade::requested(&req) {
        let resp = crate::upgrade::forward(
            &state,
            addr,
            mtls.as_ref(),
            cluster.connect_timeout,
            &authority,
            req,
        )
        .await
        .unwrap_or_else(|e| crate::upgrade::failed(&cluster.name, &e));
        ep.stats.record(
            &state.metrics,
            resp.status().as_u16(),
            start.elapsed().as_secs_f64(),
        );
        return resp;
    }
    let result = state
        .upstreams
        .send(
            addr,
            http2,
            mtls.as_ref(),
            cluster.connect_timeout,
            &authority,
            req,
        )
        .await;
    let elapsed = || start.elapsed().as_secs_f64();
    let mut resp = match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let seconds = elapsed();
            let metrics_state = state.clone();
            let endpoint = ep.clone();
            let mut resp = crate::grpc::observe(resp, move |grpc| {
                endpoint
                    .stats
                    .record_grpc(&metrics_state.metrics, status, grpc, seconds);
            });
            rule.response_headers.apply(resp.headers_mut());
            return resp;
        }
        Err(UpstreamError::IdentityMismatch {
            addr,
            expected,
            actual,
        }) => {
            tracing::warn!(
                cluster = %cluster.name,
                %addr,
                %expected,
                %actual,
                "peer identity mismatch; request not sent"
            );
            local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "mesh-proxy: identity mismatch for service {} at {addr}: expected {expected}, peer is {actual}\n",
                    cluster.name
                ),
            )
        }
        Err(e) => {
            tracing::debug!(cluster = %cluster.name, %addr, "upstream error: {e}");
            let status = e.status();
            let what = if status == StatusCode::SERVICE_UNAVAILABLE {
                "upstream connect error"
            } else {
                "upstream error"
            };
            local_response(
                status,
                format!("mesh-proxy: {what} for service {}: {e}\n", cluster.name),
            )
        }
    };
    rule.response_headers.apply(resp.headers_mut());
    ep.stats
        .record(&state.metrics, resp.status().as_u16(), elapsed());
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_from_absolute_uri_or_header() {
        let r = Request::get("http://Catalog.Default:8080/x")
            .header("host", "other")
            .body(())
            .unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("catalog.default:8080"));
        let r = Request::get("/x").header("host", "WEB").body(()).unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("web"));
        let r = Request::get("http://u:p@web:80/").body(()).unwrap();
        assert_eq!(request_host(&r).as_deref(), Some("web:80"));
        let r = Request::get("/x").body(()).unwrap();
        assert_eq!(request_host(&r), None);
    }
}
