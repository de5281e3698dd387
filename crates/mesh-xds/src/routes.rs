//! Gateway API HTTPRoutes → Envoy routes for one service port's virtual host.
//!
//! The matches of every route attached to the port are put in Gateway API
//! precedence ([`mesh_model::ordered_matches`]) and emitted as Envoy routes in that
//! order, so Envoy's first-match-wins gives Gateway API's answer. After them comes
//! a catch-all `direct_response` 404: with routes attached, a request that no rule
//! matches is not sent to the service (Gateway API's mesh semantics).
//!
//! Expressed only with fields both Envoy and gRPC's xDS client understand:
//! `PathPrefix /a` (element-wise) becomes two routes, `path: /a` and
//! `prefix: /a/`, because gRPC refuses `path_separated_prefix`; header matches use
//! `string_match.exact`; methods are a `:method` header match.

use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::core::v3::{
    DataSource, HeaderValue, HeaderValueOption, data_source,
    header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, QueryParameterMatcher, RetryPolicy, Route, RouteAction,
    RouteMatch, WeightedCluster, header_matcher::HeaderMatchSpecifier,
    query_parameter_matcher::QueryParameterMatchSpecifier, retry_policy::RetryBackOff,
    route::Action, route_action::ClusterNotFoundResponseCode, route_action::ClusterSpecifier,
    route_match::PathSpecifier, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use envoy_types::pb::google::protobuf::UInt32Value;
use mesh_model::{
    HeaderModifier, MatchedRule, Model, PathMatch, RouteRetry, RouteRule, ServicePortView,
    ordered_matches,
};

use crate::names;
use crate::policy::{RoutePolicy, duration, route_policy};

/// Which client the routes are for: the routes mean the same, but gRPC's xDS client
/// ignores routes with query matches and never sends another method than POST.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteClient {
    /// A sidecar (or Envoy) on the outbound path.
    Sidecar,
    /// A proxyless gRPC client's API listener.
    Grpc,
}

/// Body of the 404 for a request to a routed service that no rule matches.
pub const NO_RULE_MATCHES: &str = "mesh: no HTTPRoute rule matches this request";
/// Body of the 500 for a rule with no usable backend.
pub const NO_VALID_BACKEND: &str = "mesh: the matching HTTPRoute rule has no valid backend";

/// The routes of `view`'s virtual host when HTTPRoutes are attached to it, in
/// precedence order and ending in the 404 catch-all; `None` when none are (the
/// port keeps its default route to its own cluster).
pub fn service_routes(
    model: &Model,
    view: &ServicePortView<'_>,
    client: RouteClient,
) -> Option<Vec<Route>> {
    let attached = model.http_routes(view.service, view.port);
    if attached.is_empty() {
        return None;
    }
    // Every rule starts from the service's TrafficPolicy (or the defaults).
    let policy = route_policy(model.traffic_policy(view.service));
    let mut routes = Vec::new();
    for matched in ordered_matches(&attached) {
        let Some(route_match) = envoy_matches(&matched, client) else {
            continue;
        };
        let name = format!("{}/{}", matched.route.namespace, matched.route.name);
        let action = rule_action(
            model,
            &matched.route.namespace,
            matched.rule,
            client,
            &policy,
        );
        for m in route_match {
            routes.push(rule_route(&name, m, action.clone(), matched.rule));
        }
    }
    routes.push(Route {
        name: "no-rule-matches".into(),
        r#match: Some(prefix_match("/")),
        action: Some(direct_response(404, NO_RULE_MATCHES)),
        ..Default::default()
    });
    Some(routes)
}

fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(PathSpecifier::Prefix(prefix.into())),
        ..Default::default()
    }
}

fn exact(value: &str) -> StringMatcher {
    StringMatcher {
        match_pattern: Some(MatchPattern::Exact(value.into())),
        ignore_case: false,
    }
}

fn header_exact(name: &str, value: &str) -> HeaderMatcher {
    HeaderMatcher {
        name: name.into(),
        header_match_specifier: Some(HeaderMatchSpecifier::StringMatch(exact(value))),
        ..Default::default()
    }
}

/// The Envoy matches for one Gateway API match (two for an element-wise prefix),
/// or `None` when `client` can never send a request that matches it.
fn envoy_matches(matched: &MatchedRule<'_>, client: RouteClient) -> Option<Vec<RouteMatch>> {
    let m = matched.matcher;
    let mut headers = Vec::new();
    match (m.method.as_deref(), client) {
        (Some("POST") | None, RouteClient::Grpc) => {}
        (Some(_), RouteClient::Grpc) => return None,
        (Some(method), RouteClient::Sidecar) => headers.push(header_exact(":method", method)),
        (None, RouteClient::Sidecar) => {}
    }
    headers.extend(m.headers.iter().map(|(n, v)| header_exact(n, v)));
    if client == RouteClient::Grpc && !m.query_params.is_empty() {
        return None;
    }
    let query_parameters: Vec<QueryParameterMatcher> = m
        .query_params
        .iter()
        .map(|(n, v)| QueryParameterMatcher {
            name: n.clone(),
            query_parameter_match_specifier: Some(QueryParameterMatchSpecifier::StringMatch(
                exact(v),
            )),
        })
        .collect();
    let paths = match &m.path {
        PathMatch::Exact(p) => vec![PathSpecifier::Path(p.clone())],
        PathMatch::Prefix(p) if p == "/" => vec![PathSpecifier::Prefix(p.clone())],
        PathMatch::Prefix(p) => vec![
            PathSpecifier::Path(p.clone()),
            PathSpecifier::Prefix(format!("{p}/")),
        ],
    };
    Some(
        paths
            .into_iter()
            .map(|path| RouteMatch {
                path_specifier: Some(path),
                headers: headers.clone(),
                query_parameters: query_parameters.clone(),
                ..Default::default()
            })
            .collect(),
    )
}

fn direct_response(status: u32, body: &str) -> Action {
    Action::DirectResponse(DirectResponseAction {
        status,
        body: Some(DataSource {
            specifier: Some(data_source::Specifier::InlineString(body.into())),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// Where a rule sends requests: its backends with weight above 0, split by weight.
/// A backend that does not exist keeps its share under a cluster name no proxy
/// knows, answered 500 (`cluster_not_found_response_code`), as Gateway API asks;
/// a rule with no backend carrying weight answers 500 outright.
///
/// The service's route `policy` (TrafficPolicy timeout, retries, hash policy)
/// applies first; the rule's own `timeouts.request` and `retry` override it.
fn rule_action(
    model: &Model,
    namespace: &str,
    rule: &RouteRule,
    client: RouteClient,
    policy: &RoutePolicy,
) -> Action {
    let clusters: Vec<ClusterWeight> = rule
        .backends
        .iter()
        .filter(|b| b.weight > 0)
        .map(|b| {
            let fqdn = match model.backend(namespace, b) {
                Some(view) => view.fqdn,
                None => format!(
                    "{}.{namespace}.svc.{}",
                    b.service, model.options.cluster_domain
                ),
            };
            ClusterWeight {
                name: names::service_port(&fqdn, b.port),
                weight: Some(UInt32Value { value: b.weight }),
                ..Default::default()
            }
        })
        .collect();
    let any_valid = rule
        .backends
        .iter()
        .any(|b| b.weight > 0 && model.backend(namespace, b).is_some());
    if !any_valid {
        return direct_response(500, NO_VALID_BACKEND);
    }
    let cluster_specifier = match <[ClusterWeight; 1]>::try_from(clusters) {
        Ok([only]) => ClusterSpecifier::Cluster(only.name),
        Err(clusters) => ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters,
            ..Default::default()
        }),
    };
    let mut action = RouteAction {
        cluster_specifier: Some(cluster_specifier),
        cluster_not_found_response_code: ClusterNotFoundResponseCode::InternalServerError as i32,
        ..Default::default()
    };
    match client {
        RouteClient::Sidecar => {
            policy.apply(&mut action);
            if let Some(timeout) = rule.timeout {
                action.timeout = Some(duration(timeout));
            }
            if let Some(retry) = &rule.retry {
                action.retry_policy = Some(retry_policy(retry));
            }
        }
        // gRPC clients take deadlines from the caller and retry on gRPC codes
        // only; what they can use of the policy is which key RING_HASH hashes.
        RouteClient::Grpc => action.hash_policy = policy.hash_policy.clone(),
    }
    Action::Route(action)
}

/// Gateway API `retry` as Envoy's retry policy: `attempts` retries on connect
/// failures, resets and the listed status codes (503 when none are listed, the
/// mesh's default), with `backoff` as the base interval (25 ms by default).
pub fn retry_policy(retry: &RouteRetry) -> RetryPolicy {
    let codes: Vec<u32> = if retry.codes.is_empty() {
        vec![503]
    } else {
        retry.codes.iter().map(|&c| u32::from(c)).collect()
    };
    RetryPolicy {
        retry_on: "connect-failure,refused-stream,reset,retriable-status-codes".into(),
        num_retries: Some(UInt32Value {
            value: retry.attempts.unwrap_or(2),
        }),
        retriable_status_codes: codes,
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(duration(
                retry.backoff.unwrap_or(StdDuration::from_millis(25)),
            )),
            max_interval: None,
        }),
        ..Default::default()
    }
}

fn header_options(list: &[(String, String)], action: HeaderAppendAction) -> Vec<HeaderValueOption> {
    list.iter()
        .map(|(k, v)| HeaderValueOption {
            header: Some(HeaderValue {
                key: k.clone(),
                value: v.clone(),
                ..Default::default()
            }),
            append_action: action as i32,
            ..Default::default()
        })
        .collect()
}

/// `set` overwrites, `add` appends.
fn headers_to_add(m: &HeaderModifier) -> Vec<HeaderValueOption> {
    let mut out = header_options(&m.set, HeaderAppendAction::OverwriteIfExistsOrAdd);
    out.extend(header_options(
        &m.add,
        HeaderAppendAction::AppendIfExistsOrAdd,
    ));
    out
}

fn rule_route(name: &str, m: RouteMatch, action: Action, rule: &RouteRule) -> Route {
    Route {
        name: name.into(),
        r#match: Some(m),
        action: Some(action),
        request_headers_to_add: headers_to_add(&rule.request_headers),
        request_headers_to_remove: rule.request_headers.remove.clone(),
        response_headers_to_add: headers_to_add(&rule.response_headers),
        response_headers_to_remove: rule.response_headers.remove.clone(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_model::{ModelOptions, parse_documents};

    const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {mesh.io/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {selector: {app: catalog}, ports: [{port: 80}, {port: 81}]}
---
apiVersion: v1
kind: Service
metadata: {name: catalog-v2, namespace: shop}
spec: {selector: {app: catalog-v2}, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: canary, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: catalog, port: 80}]
  rules:
  - backendRefs: [{name: catalog, port: 80, weight: 90}, {name: catalog-v2, port: 80, weight: 10}, {name: catalog, port: 81, weight: 0}]
  - matches: [{path: {type: Exact, value: /health}}]
    backendRefs: [{name: catalog, port: 80}]
    timeouts: {request: 2s}
    retry: {attempts: 3, codes: [502]}
  - matches: [{path: {value: /api/}, method: GET, queryParams: [{name: v, value: "2"}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-a, value: "1"}], add: [{name: x-b, value: "2"}], remove: [x-c]}}]
    backendRefs: [{name: catalog-v2, port: 80}, {name: ghost, port: 80}]
  - matches: [{path: {value: /gone}}]
    backendRefs: [{name: ghost, port: 80}]
"#;

    fn routes(client: RouteClient, port_index: usize) -> Option<Vec<Route>> {
        let model = Model::new(parse_documents(MESH, "t").unwrap(), ModelOptions::default());
        let view = model.service_ports().nth(port_index).unwrap();
        service_routes(&model, &view, client)
    }

    fn path(r: &Route) -> String {
        match r.r#match.as_ref().unwrap().path_specifier.as_ref().unwrap() {
            PathSpecifier::Path(p) => format!("={p}"),
            PathSpecifier::Prefix(p) => p.clone(),
            other => format!("{other:?}"),
        }
    }

    fn route_action(r: &Route) -> &RouteAction {
        match r.action.as_ref().unwrap() {
            Action::Route(a) => a,
            other => panic!("not a route action: {other:?}"),
        }
    }

    fn status(r: &Route) -> Option<u32> {
        match r.action.as_ref().unwrap() {
            Action::DirectResponse(d) => Some(d.status),
            _ => None,
        }
    }

    #[test]
    fn rules_in_precedence_order_ending_in_404() {
        let rs = routes(RouteClient::Sidecar, 0).expect("routes attached");
        let paths: Vec<String> = rs.iter().map(path).collect();
        // "/gone" is a longer prefix than "/api".
        assert_eq!(
            paths,
            ["=/health", "=/gone", "/gone/", "=/api", "/api/", "/", "/"]
        );
        assert_eq!(status(rs.last().unwrap()), Some(404));
        // The exact rule: one cluster, its timeout and retries.
        let health = route_action(&rs[0]);
        assert_eq!(
            health.cluster_specifier,
            Some(ClusterSpecifier::Cluster(
                "catalog.shop.svc.cluster.local:80".into()
            ))
        );
        assert_eq!(health.timeout.as_ref().map(|d| d.seconds), Some(2));
        let retry = health.retry_policy.as_ref().unwrap();
        assert_eq!(retry.num_retries.as_ref().map(|n| n.value), Some(3));
        assert_eq!(retry.retriable_status_codes, [502]);
        // Method and query as matchers; header edits; an unknown backend keeps its
        // share under a cluster nobody has, answered 500.
        let api = &rs[3];
        let m = api.r#match.as_ref().unwrap();
        assert_eq!(m.headers[0].name, ":method");
        assert_eq!(m.query_parameters[0].name, "v");
        assert_eq!(api.request_headers_to_add.len(), 2);
        assert_eq!(api.request_headers_to_remove, ["x-c"]);
        let a = route_action(api);
        assert_eq!(
            a.cluster_not_found_response_code,
            ClusterNotFoundResponseCode::InternalServerError as i32
        );
        let Some(ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier else {
            panic!("weighted")
        };
        assert_eq!(w.clusters[1].name, "ghost.shop.svc.cluster.local:80");
        // Only unknown backends: 500 outright.
        assert_eq!(status(&rs[1]), Some(500));
        // The split: weight 0 is left out.
        let Some(ClusterSpecifier::WeightedClusters(w)) = &route_action(&rs[5]).cluster_specifier
        else {
            panic!("weighted")
        };
        let split: Vec<_> = w
            .clusters
            .iter()
            .map(|c| (c.name.as_str(), c.weight.as_ref().unwrap().value))
            .collect();
        assert_eq!(
            split,
            [
                ("catalog.shop.svc.cluster.local:80", 90),
                ("catalog-v2.shop.svc.cluster.local:80", 10)
            ]
        );
    }

    #[test]
    fn grpc_gets_what_it_can_match_and_unrouted_ports_get_none() {
        let rs = routes(RouteClient::Grpc, 0).unwrap();
        let paths: Vec<String> = rs.iter().map(path).collect();
        assert_eq!(
            paths,
            ["=/health", "=/gone", "/gone/", "/", "/"],
            "GET and query routes dropped"
        );
        assert!(route_action(&rs[0]).retry_policy.is_none());
        assert!(
            routes(RouteClient::Sidecar, 1).is_none(),
            "port 81 has no routes"
        );
    }
}
