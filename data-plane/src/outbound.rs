//! The outbound listener: app -> mesh.
//!
//! Requests are routed by the absolute URI's authority (explicit proxy use) or the
//! `Host`/`:authority` header to a virtual host, by its rules (path, method,
//! headers, query) to a cluster of the rule's weighted split, through the
//! cluster's circuit breaker, to an endpoint its balancer picks, retried within
//! the route's timeout and the cluster's retry budget when the route's retry
//! policy says so. A host no service claims is a 503; a known host no rule
//! matches is a 404. The rule's request header edits apply before the mesh hop
//! headers are set, its response edits to whatever the caller gets.
//! Endpoints with a sidecar are reached at the sidecar's inbound port with the mesh
//! hop headers, over mutual TLS with the endpoint's SPIFFE ID checked when this
//! proxy has an identity (over h2c in dev mode); others directly.

use std::sync::Arc;
use std::time::{Duration, Instant};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{Either, Full};
use hyper::body::Incoming;

use crate::circuit_breaker::Overflow;
use crate::decode_policy::{RetrySpec, RoutePolicySpec};
use crate::hash_key::hash_key;
use crate::headers::{
    DESTINATION_SERVICE, SOURCE_NAMESPACE, SOURCE_WORKLOAD, TARGET_PORT, strip_mesh,
};
use crate::metrics::{Reporter, RequestLabels, ResilienceEvent};
use crate::retry::{self, Outcome, RequestBody};
use crate::route_match::RequestView;
use crate::routing::{ActionRt, ClusterRt, EndpointRt, RuleRt};
use crate::state::ProxyState;
use crate::upstream::{Mtls, ProxyBody, UpstreamBody, UpstreamError, local_response};

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
    /// Send it to this cluster under the route's policy, with the matched
    /// rule's header edits.
    Forward(Arc<ClusterRt>, Arc<RoutePolicySpec>, Arc<RuleRt>),
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
    if cluster.endpoints.is_empty() {
        // Fail fast: nothing to wait for or retry.
        return Decision::Reject(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("mesh-proxy: service {} has no endpoints", cluster.name),
            Refused::Cluster(cluster),
        );
    }
    Decision::Forward(cluster, target.policy.clone(), rule.clone())
}

fn reject(msg: String, status: StatusCode) -> Response<ProxyBody> {
    tracing::debug!(%status, "{msg}");
    local_response(status, format!("{msg}\n"))
}

/// The response header naming the circuit-breaker limit that refused a request.
pub const OVERLOADED_HEADER: &str = "x-mesh-overloaded";
/// The response header naming the timeout that produced a 504.
pub const TIMEOUT_HEADER: &str = "x-mesh-timeout";

/// Handles one outbound request: route, admit (circuit breaker), then attempt
/// and retry within the route timeout.
pub async fn handle(state: Arc<ProxyState>, req: Request<Incoming>) -> Response<ProxyBody> {
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
    let (cluster, policy, rule) = match decide(&state, &host, &view) {
        Decision::Forward(c, p, r) => (c, p, r),
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
    let mut resp = forward(&state, &host, req, &cluster, &policy, &rule, start).await;
    rule.response_headers.apply(resp.headers_mut());
    resp
}

/// A routed request: admit (circuit breaker), then attempt and retry within the
/// route timeout. The rule's request edits apply here; the caller applies its
/// response edits to whatever comes back.
async fn forward(
    state: &Arc<ProxyState>,
    host: &str,
    mut req: Request<Incoming>,
    cluster: &Arc<ClusterRt>,
    policy: &RoutePolicySpec,
    rule: &RuleRt,
    start: Instant,
) -> Response<ProxyBody> {
    let rejected = |code: StatusCode| {
        cluster.no_endpoint_stats.record(
            &state.metrics,
            code.as_u16(),
            start.elapsed().as_secs_f64(),
        )
    };
    let _admitted = match cluster.load.admit(&cluster.policy.limits) {
        Ok(slot) => slot,
        Err(overflow) => {
            rejected(StatusCode::SERVICE_UNAVAILABLE);
            return overloaded(state, cluster, overflow);
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
            .unwrap_or_else(|| host.to_string()),
    };
    if crate::upgrade::requested(&req) {
        return upgrade(state, cluster, &authority, req, start).await;
    }
    let key = hash_key(&policy.hash, req.headers());
    let (mut parts, body) = req.into_parts();
    strip_mesh(&mut parts.headers);
    let retry = policy.retry.as_ref().filter(|r| r.num_retries > 0);
    let body = if retry.is_some() {
        match retry::buffer(body).await {
            Ok(b) => b,
            Err(e) => {
                rejected(StatusCode::BAD_REQUEST);
                return reject(
                    format!("mesh-proxy: reading the request body failed: {e}"),
                    StatusCode::BAD_REQUEST,
                );
            }
        }
    } else {
        RequestBody::Streaming(body)
    };
    let call = Call {
        state,
        cluster,
        parts: &parts,
        authority: &authority,
        retry,
        hash: key.hash,
        start,
    };
    let mut resp = match policy.timeout {
        None => call.run(body).await,
        Some(limit) => match tokio::time::timeout(limit, call.run(body)).await {
            Ok(resp) => resp,
            Err(_) => {
                state
                    .metrics
                    .resilience(&cluster.service, ResilienceEvent::Timeout);
                rejected(StatusCode::GATEWAY_TIMEOUT);
                let mut resp = reject(
                    format!(
                        "mesh-proxy: request timeout of {} ms exceeded for service {} (route timeout)",
                        limit.as_millis(),
                        cluster.name
                    ),
                    StatusCode::GATEWAY_TIMEOUT,
                );
                resp.headers_mut()
                    .insert(TIMEOUT_HEADER, HeaderValue::from_static("route"));
                resp
            }
        },
    };
    if let Some(cookie) = key.set_cookie {
        resp.headers_mut().append(header::SET_COOKIE, cookie);
    }
    resp
}

/// 503 for a request a circuit-breaker limit refused, naming the limit.
fn overloaded(state: &ProxyState, cluster: &ClusterRt, overflow: Overflow) -> Response<ProxyBody> {
    let limits = &cluster.policy.limits;
    let value = match overflow {
        Overflow::Requests => limits.max_requests,
        Overflow::Pending => limits.max_pending_requests,
    };
    state.metrics.resilience(
        &cluster.service,
        ResilienceEvent::Overflow(overflow.as_str()),
    );
    tracing::debug!(cluster = %cluster.name, limit = overflow.as_str(), "circuit breaker open");
    let mut resp = local_response(
        StatusCode::SERVICE_UNAVAILABLE,
        format!(
            "mesh-proxy: circuit breaker open for service {}: {} ({value}) reached\n",
            cluster.name,
            overflow.as_str()
        ),
    );
    resp.headers_mut().insert(
        OVERLOADED_HEADER,
        HeaderValue::from_static(overflow.as_str()),
    );
    resp
}

/// How one attempt ended.
enum Attempt {
    Response(Response<Incoming>),
    Failed(UpstreamError),
    PerTryTimeout(Duration),
}

impl Attempt {
    fn outcome(&self) -> Outcome {
        match self {
            Attempt::Response(r) => Outcome::Status(r.status()),
            Attempt::PerTryTimeout(_) => Outcome::Timeout,
            Attempt::Failed(UpstreamError::Connect { .. })
            | Attempt::Failed(UpstreamError::IdentityMismatch { .. })
            | Attempt::Failed(UpstreamError::NoTls(_)) => Outcome::ConnectFailure,
            Attempt::Failed(UpstreamError::Refused { .. }) => Outcome::RefusedStream,
            Attempt::Failed(UpstreamError::Exchange { .. }) => Outcome::Reset,
            Attempt::Failed(UpstreamError::Invalid(_)) => Outcome::Status(StatusCode::BAD_REQUEST),
        }
    }
}

/// One outbound request's attempts.
struct Call<'a> {
    state: &'a Arc<ProxyState>,
    cluster: &'a Arc<ClusterRt>,
    parts: &'a http::request::Parts,
    authority: &'a str,
    retry: Option<&'a RetrySpec>,
    hash: Option<u64>,
    start: Instant,
}

impl Call<'_> {
    /// Attempts until one succeeds, the failure is not retriable, the retries or
    /// the budget run out, or the body cannot be sent again.
    async fn run(&self, body: RequestBody) -> Response<ProxyBody> {
        let cluster = self.cluster;
        let idempotent = retry::is_idempotent(&self.parts.method);
        let mut body = Some(body);
        let mut tried: Vec<usize> = Vec::new();
        let mut retries = 0u32;
        let mut _retry_slot = None;
        loop {
            let avoid = self.retry.is_some_and(|r| r.avoid_previous_hosts);
            let Some(i) = cluster.pick(self.hash, if avoid { &tried } else { &[] }) else {
                return reject(
                    format!("mesh-proxy: service {} has no endpoints", cluster.name),
                    StatusCode::SERVICE_UNAVAILABLE,
                );
            };
            let ep = &cluster.endpoints[i];
            let (this_body, replay) = match body.take() {
                Some(RequestBody::Buffered(b)) => (
                    Either::Right(Full::new(b.clone())),
                    Some(RequestBody::Buffered(b)),
                ),
                Some(RequestBody::Streaming(s)) => (Either::Left(s), None),
                None => unreachable!("a streaming body is never retried"),
            };
            body = replay;
            let attempt = match self.attempt(ep, this_body).await {
                Ok(a) => a,
                Err(resp) => return resp,
            };
            let outcome = attempt.outcome();
            if cluster.record_outcome(i, outcome.is_endpoint_failure()) {
                self.state
                    .metrics
                    .resilience(&cluster.service, ResilienceEvent::Ejected);
            }
            let again = self.retry.filter(|r| {
                retries < r.num_retries
                    && body.is_some()
                    && retry::retriable(r, outcome, idempotent)
            });
            let Some(spec) = again else {
                return self.respond(ep, attempt);
            };
            let Some(slot) = cluster.load.try_retry(&cluster.policy.retry_budget) else {
                self.state
                    .metrics
                    .resilience(&cluster.service, ResilienceEvent::BudgetExhausted);
                tracing::debug!(cluster = %cluster.name, "retry budget spent; not retrying");
                return self.respond(ep, attempt);
            };
            drop(attempt);
            _retry_slot = Some(slot);
            retries += 1;
            tried.push(i);
            self.state
                .metrics
                .resilience(&cluster.service, ResilienceEvent::Retried);
            tracing::debug!(cluster = %cluster.name, endpoint = %ep.spec.address, ?outcome, retries, "retrying");
            tokio::time::sleep(retry::backoff(spec, retries)).await;
        }
    }

    /// Sends the request once to `ep`; `Err` is a response the proxy gives at
    /// once (no certificate, no identity, connection limit).
    async fn attempt(
        &self,
        ep: &EndpointRt,
        body: UpstreamBody,
    ) -> Result<Attempt, Response<ProxyBody>> {
        let state = self.state;
        let cluster = self.cluster;
        let mut req = Request::new(body);
        *req.method_mut() = self.parts.method.clone();
        *req.uri_mut() = self.parts.uri.clone();
        *req.version_mut() = self.parts.version;
        *req.headers_mut() = self.parts.headers.clone();
        let (addr, http2, mtls) =
            hop(state, cluster, ep, req.headers_mut(), self.start).map_err(|r| *r)?;
        // An HTTP/1.1 request holds a connection for its whole exchange, so the
        // connection limit applies to it; HTTP/2 multiplexes one per endpoint.
        let _connection = if http2 {
            None
        } else {
            match cluster.load.connection(&cluster.policy.limits).await {
                Ok(slot) => Some(slot),
                Err(overflow) => {
                    ep.stats.record(
                        &state.metrics,
                        StatusCode::SERVICE_UNAVAILABLE.as_u16(),
                        self.start.elapsed().as_secs_f64(),
                    );
                    return Err(overloaded(state, cluster, overflow));
                }
            }
        };
        let in_flight = ep.load.start();
        let send = state.upstreams.send(
            addr,
            http2,
            mtls.as_ref(),
            cluster.connect_timeout,
            self.authority,
            req,
        );
        let per_try = self.retry.and_then(|r| r.per_try_timeout);
        let result = match per_try {
            None => send.await,
            Some(limit) => match tokio::time::timeout(limit, send).await {
                Ok(r) => r,
                Err(_) => return Ok(Attempt::PerTryTimeout(limit)),
            },
        };
        Ok(match result {
            Ok(resp) => {
                in_flight.finish();
                Attempt::Response(resp)
            }
            // A failure says nothing about the endpoint's latency.
            Err(e) => Attempt::Failed(e),
        })
    }

    /// The downstream response for the last attempt, counted in the metrics.
    fn respond(&self, ep: &Arc<EndpointRt>, attempt: Attempt) -> Response<ProxyBody> {
        let cluster = self.cluster;
        let resp = match attempt {
            Attempt::Response(resp) => {
                // Counted when the gRPC status is known (trailers), streamed.
                let status = resp.status().as_u16();
                let seconds = self.start.elapsed().as_secs_f64();
                let state = self.state.clone();
                let endpoint = ep.clone();
                return crate::grpc::observe(resp, move |grpc| {
                    endpoint
                        .stats
                        .record_grpc(&state.metrics, status, grpc, seconds);
                });
            }
            Attempt::PerTryTimeout(limit) => {
                let mut resp = local_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    format!(
                        "mesh-proxy: per-try timeout of {} ms exceeded for service {} at {}\n",
                        limit.as_millis(),
                        cluster.name,
                        ep.spec.address
                    ),
                );
                resp.headers_mut()
                    .insert(TIMEOUT_HEADER, HeaderValue::from_static("per-try"));
                resp
            }
            Attempt::Failed(UpstreamError::IdentityMismatch {
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
            Attempt::Failed(e) => {
                tracing::debug!(cluster = %cluster.name, endpoint = %ep.spec.address, "upstream error: {e}");
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
        ep.stats.record(
            &self.state.metrics,
            resp.status().as_u16(),
            self.start.elapsed().as_secs_f64(),
        );
        resp
    }
}

/// Where and how to send a request to `ep`: the endpoint's sidecar (mesh hop
/// headers added, mutual TLS with its identity when this proxy has one) or the
/// app itself; `Err` is the answer when the hop cannot be made safely.
fn hop(
    state: &ProxyState,
    cluster: &ClusterRt,
    ep: &EndpointRt,
    headers: &mut http::HeaderMap,
    start: Instant,
) -> Result<(std::net::SocketAddr, bool, Option<Mtls>), Box<Response<ProxyBody>>> {
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
                    Box::new(reject(msg, StatusCode::SERVICE_UNAVAILABLE))
                };
                let Some(configs) = state.tls.configs() else {
                    return Err(refuse(
                        "mesh-proxy: no workload certificate yet; cannot call other sidecars"
                            .into(),
                    ));
                };
                let Some(expected) = ep.spec.identity.as_deref() else {
                    return Err(refuse(format!(
                        "mesh-proxy: endpoint {} of service {} has no identity; refusing to call it without one",
                        ep.spec.address, cluster.name
                    )));
                };
                mtls = Some(Mtls {
                    config: configs.client.clone(),
                    expected: expected.into(),
                });
            }
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
        None => (ep.spec.address, cluster.http2),
    };
    Ok((addr, http2, mtls))
}

/// An Upgrade (WebSocket) request: one endpoint, no retries (the connection
/// becomes a tunnel), spliced after the 101.
async fn upgrade(
    state: &ProxyState,
    cluster: &ClusterRt,
    authority: &str,
    mut req: Request<Incoming>,
    start: Instant,
) -> Response<ProxyBody> {
    let Some(i) = cluster.pick(None, &[]) else {
        return reject(
            format!("mesh-proxy: service {} has no endpoints", cluster.name),
            StatusCode::SERVICE_UNAVAILABLE,
        );
    };
    let ep = &cluster.endpoints[i];
    strip_mesh(req.headers_mut());
    let (addr, _, mtls) = match hop(state, cluster, ep, req.headers_mut(), start) {
        Ok(h) => h,
        Err(resp) => return *resp,
    };
    let resp = crate::upgrade::forward(
        state,
        addr,
        mtls.as_ref(),
        cluster.connect_timeout,
        authority,
        req,
    )
    .await
    .unwrap_or_else(|e| crate::upgrade::failed(&cluster.name, &e));
    ep.stats.record(
        &state.metrics,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
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
