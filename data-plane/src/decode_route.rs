//! One Envoy `Route` -> the proxy's [`RouteRule`], strictly.
//!
//! The proxy honours: path `prefix` / `path`; header matches `string_match.exact`
//! (or the older `exact_match`), where `:method` is the request method; query
//! parameter `string_match.exact`; a `route` action to a `cluster` or
//! `weighted_clusters` with `cluster_not_found_response_code`, `timeout` and
//! `retry_policy`; `direct_response`; request and response header
//! add (`OVERWRITE_IF_EXISTS_OR_ADD`, `APPEND_IF_EXISTS_OR_ADD`) and remove.
//! Anything else set in a route is refused with its name, so the controller learns
//! by NACK instead of traffic being misrouted. Each check clears what it
//! understood and compares the rest with the message's default: a field added to
//! Envoy's API later is refused too.

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValueOption, data_source, header_value_option::HeaderAppendAction,
};
use envoy_types::pb::envoy::config::route::v3::{
    HeaderMatcher, QueryParameterMatcher, Route, RouteAction, RouteMatch,
    header_matcher::HeaderMatchSpecifier, query_parameter_matcher::QueryParameterMatchSpecifier,
    route::Action, route_action::ClusterNotFoundResponseCode, route_action::ClusterSpecifier,
    route_match::PathSpecifier, weighted_cluster::ClusterWeight,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher::MatchPattern};
use http::header::{HeaderName, HeaderValue};

use crate::decode::{ForwardSpec, HeaderEdits, PathMatch, RequestMatch, RouteRule, RuleAction};
use crate::decode_policy::route_policy;

/// Decodes one route.
pub(crate) fn route(route: &Route) -> Result<RouteRule, String> {
    let rest = Route {
        name: String::new(),
        r#match: None,
        action: None,
        request_headers_to_add: Vec::new(),
        request_headers_to_remove: Vec::new(),
        response_headers_to_add: Vec::new(),
        response_headers_to_remove: Vec::new(),
        ..route.clone()
    };
    if rest != Route::default() {
        return Err(format!("unsupported route fields: {}", brief(&rest)));
    }
    let m = route.r#match.as_ref().ok_or("no match")?;
    let action = match &route.action {
        Some(Action::Route(a)) => RuleAction::Forward(forward(a)?),
        Some(Action::DirectResponse(d)) => {
            let status = u16::try_from(d.status)
                .ok()
                .filter(|s| (200..=599).contains(s))
                .ok_or_else(|| format!("direct_response status {} is out of range", d.status))?;
            let body = match d.body.as_ref().and_then(|b| b.specifier.as_ref()) {
                None => String::new(),
                Some(data_source::Specifier::InlineString(s)) => s.clone(),
                Some(data_source::Specifier::InlineBytes(b)) => {
                    String::from_utf8(b.clone()).map_err(|_| "direct_response body is not UTF-8")?
                }
                Some(_) => return Err("direct_response body must be inline".into()),
            };
            RuleAction::Respond { status, body }
        }
        _ => return Err("unsupported route action (only route and direct_response)".into()),
    };
    Ok(RouteRule {
        name: route.name.clone(),
        matcher: request_match(m)?,
        action,
        request_headers: edits(
            &route.request_headers_to_add,
            &route.request_headers_to_remove,
        )
        .map_err(|e| format!("request headers: {e}"))?,
        response_headers: edits(
            &route.response_headers_to_add,
            &route.response_headers_to_remove,
        )
        .map_err(|e| format!("response headers: {e}"))?,
    })
}

/// The first line of a message's debug form: enough to name the field.
fn brief(m: &impl std::fmt::Debug) -> String {
    let text = format!("{m:?}");
    text.chars().take(200).collect()
}

fn request_match(m: &RouteMatch) -> Result<RequestMatch, String> {
    let rest = RouteMatch {
        path_specifier: None,
        headers: Vec::new(),
        query_parameters: Vec::new(),
        // Envoy's default (true) is the only mode the proxy has.
        case_sensitive: m.case_sensitive.filter(|c| !c.value),
        ..m.clone()
    };
    if rest != RouteMatch::default() {
        return Err(format!("unsupported match fields: {}", brief(&rest)));
    }
    let path = match &m.path_specifier {
        Some(PathSpecifier::Prefix(p)) => PathMatch::Prefix(p.clone()),
        Some(PathSpecifier::Path(p)) => PathMatch::Exact(p.clone()),
        None => PathMatch::Prefix(String::new()),
        Some(other) => return Err(format!("unsupported path match {}", brief(other))),
    };
    let headers = m
        .headers
        .iter()
        .map(header_match)
        .collect::<Result<Vec<_>, _>>()?;
    let query = m
        .query_parameters
        .iter()
        .map(query_match)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RequestMatch {
        path,
        headers,
        query,
    })
}

fn exact_string(s: &StringMatcher) -> Option<&str> {
    match (&s.match_pattern, s.ignore_case) {
        (Some(MatchPattern::Exact(v)), false) => Some(v),
        _ => None,
    }
}

fn header_match(h: &HeaderMatcher) -> Result<(String, String), String> {
    let name = h.name.to_ascii_lowercase();
    if name.starts_with(':') && name != ":method" {
        return Err(format!(
            "header match on {name}: only :method among pseudo-headers"
        ));
    }
    if h.invert_match || h.treat_missing_header_as_empty {
        return Err(format!(
            "header match on {name}: invert_match and treat_missing_header_as_empty are not supported"
        ));
    }
    #[allow(deprecated)]
    let value = match &h.header_match_specifier {
        Some(HeaderMatchSpecifier::StringMatch(s)) => exact_string(s),
        Some(HeaderMatchSpecifier::ExactMatch(v)) => Some(v.as_str()),
        _ => None,
    };
    let value = value.ok_or_else(|| {
        format!("header match on {name}: only exact, case-sensitive matches are supported")
    })?;
    Ok((name, value.to_string()))
}

fn query_match(q: &QueryParameterMatcher) -> Result<(String, String), String> {
    let value = match &q.query_parameter_match_specifier {
        Some(QueryParameterMatchSpecifier::StringMatch(s)) => exact_string(s),
        _ => None,
    };
    let value = value.ok_or_else(|| {
        format!(
            "query parameter match on {:?}: only exact, case-sensitive matches are supported",
            q.name
        )
    })?;
    Ok((q.name.clone(), value.to_string()))
}

fn forward(a: &RouteAction) -> Result<ForwardSpec, String> {
    let rest = RouteAction {
        cluster_specifier: None,
        cluster_not_found_response_code: 0,
        timeout: None,
        retry_policy: None,
        // Decoded (strictly) by `route_policy`.
        hash_policy: Vec::new(),
        ..a.clone()
    };
    if rest != RouteAction::default() {
        return Err(format!("unsupported route action fields: {}", brief(&rest)));
    }
    let clusters = match &a.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => vec![(c.clone(), 1)],
        Some(ClusterSpecifier::WeightedClusters(w)) => weighted(&w.clusters)?,
        _ => return Err("only a named cluster or weighted_clusters is supported".into()),
    };
    let cluster_not_found =
        match ClusterNotFoundResponseCode::try_from(a.cluster_not_found_response_code) {
            Ok(ClusterNotFoundResponseCode::ServiceUnavailable) => 503,
            Ok(ClusterNotFoundResponseCode::NotFound) => 404,
            Ok(ClusterNotFoundResponseCode::InternalServerError) => 500,
            Err(_) => {
                return Err(format!(
                    "unknown cluster_not_found_response_code {}",
                    a.cluster_not_found_response_code
                ));
            }
        };
    Ok(ForwardSpec {
        clusters,
        cluster_not_found,
        policy: std::sync::Arc::new(route_policy(a)?),
    })
}

fn weighted(clusters: &[ClusterWeight]) -> Result<Vec<(String, u32)>, String> {
    let mut out = Vec::with_capacity(clusters.len());
    for c in clusters {
        let rest = ClusterWeight {
            name: String::new(),
            weight: None,
            ..c.clone()
        };
        if rest != ClusterWeight::default() || c.name.is_empty() {
            return Err(format!(
                "weighted cluster {:?}: only name and weight are supported",
                c.name
            ));
        }
        let weight = c.weight.as_ref().map_or(0, |w| w.value);
        if weight > 0 {
            out.push((c.name.clone(), weight));
        }
    }
    let total: u64 = out.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 || total > u64::from(u32::MAX) {
        return Err(format!(
            "weighted clusters: total weight {total} must be 1..=4294967295"
        ));
    }
    Ok(out)
}

fn edits(add: &[HeaderValueOption], remove: &[String]) -> Result<HeaderEdits, String> {
    let mut out = HeaderEdits::default();
    for option in add {
        #[allow(deprecated)]
        let legacy_append = option.append.is_some();
        let (Some(h), false) = (&option.header, legacy_append) else {
            return Err("each header option needs a header and no legacy append".into());
        };
        if !h.raw_value.is_empty() {
            return Err(format!("header {:?}: raw_value is not supported", h.key));
        }
        let name = HeaderName::from_bytes(h.key.as_bytes())
            .map_err(|_| format!("{:?} is not a valid header name", h.key))?;
        HeaderValue::from_str(&h.value)
            .map_err(|_| format!("header {:?}: value is not valid", h.key))?;
        let pair = (name.as_str().to_string(), h.value.clone());
        match HeaderAppendAction::try_from(option.append_action) {
            Ok(HeaderAppendAction::OverwriteIfExistsOrAdd) => out.set.push(pair),
            Ok(HeaderAppendAction::AppendIfExistsOrAdd) => out.append.push(pair),
            _ => {
                return Err(format!(
                    "header {:?}: only OVERWRITE_IF_EXISTS_OR_ADD and APPEND_IF_EXISTS_OR_ADD",
                    h.key
                ));
            }
        }
        if option.keep_empty_value {
            return Err(format!(
                "header {:?}: keep_empty_value is not supported",
                h.key
            ));
        }
    }
    for name in remove {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("{name:?} is not a valid header name"))?;
        out.remove.push(name.as_str().to_string());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::{RedirectAction, WeightedCluster};
    use envoy_types::pb::google::protobuf::{BoolValue, UInt32Value};
    use mesh_model::{ModelOptions, parse_documents};

    /// The controller's own routes for a service with an HTTPRoute decode whole.
    #[test]
    fn decodes_what_the_controller_sends() {
        let mesh = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {mesh.io/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: a}
spec: {selector: {app: a}, ports: [{port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r}
spec:
  parentRefs: [{group: "", kind: Service, name: a}]
  rules:
  - matches: [{path: {value: /x}, method: POST, headers: [{name: X-A, value: "1"}], queryParams: [{name: q, value: "2"}]}]
    filters:
    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-s, value: "1"}], add: [{name: x-a, value: "2"}], remove: [x-r]}}
    - {type: ResponseHeaderModifier, responseHeaderModifier: {remove: [server]}}
    backendRefs: [{name: a, port: 80, weight: 3}, {name: b, port: 80, weight: 1}]
    timeouts: {request: 1500ms}
    retry: {attempts: 4, codes: [502]}
"#;
        let model =
            mesh_model::Model::new(parse_documents(mesh, "t").unwrap(), ModelOptions::default());
        let view = model.service_ports().next().unwrap();
        let routes =
            mesh_xds::routes::service_routes(&model, &view, mesh_xds::routes::RouteClient::Sidecar)
                .unwrap();
        let rules: Vec<RouteRule> = routes.iter().map(|r| route(r).unwrap()).collect();
        assert_eq!(rules.len(), 3, "=/x, /x/ and the 404");
        let r = &rules[0];
        assert_eq!(r.name, "default/r");
        assert_eq!(r.matcher.path, PathMatch::Exact("/x".into()));
        assert_eq!(
            r.matcher.headers,
            [
                (":method".to_string(), "POST".to_string()),
                ("x-a".to_string(), "1".to_string())
            ]
        );
        assert_eq!(r.matcher.query, [("q".to_string(), "2".to_string())]);
        assert_eq!(
            r.request_headers.set,
            [("x-s".to_string(), "1".to_string())]
        );
        assert_eq!(
            r.request_headers.append,
            [("x-a".to_string(), "2".to_string())]
        );
        assert_eq!(r.request_headers.remove, ["x-r"]);
        assert_eq!(r.response_headers.remove, ["server"]);
        let RuleAction::Forward(f) = &r.action else {
            panic!("forward")
        };
        assert_eq!(
            f.clusters,
            [
                ("a.default.svc.cluster.local:80".to_string(), 3),
                ("b.default.svc.cluster.local:80".to_string(), 1)
            ]
        );
        assert_eq!(f.cluster_not_found, 500);
        assert_eq!(
            f.policy.timeout,
            Some(std::time::Duration::from_millis(1500))
        );
        let retry = f.policy.retry.as_ref().unwrap();
        assert_eq!((retry.num_retries, &retry.codes[..]), (4, &[502][..]));
        assert_eq!(
            rules[2].action,
            RuleAction::Respond {
                status: 404,
                body: mesh_xds::routes::NO_RULE_MATCHES.into()
            }
        );
    }

    #[test]
    fn refuses_what_it_cannot_honour() {
        let base = || Route {
            r#match: Some(RouteMatch {
                path_specifier: Some(PathSpecifier::Prefix("/".into())),
                ..Default::default()
            }),
            action: Some(Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
                ..Default::default()
            })),
            ..Default::default()
        };
        let cases: Vec<(Route, &str)> = vec![
            (
                Route {
                    action: Some(Action::Redirect(RedirectAction::default())),
                    ..base()
                },
                "unsupported route action",
            ),
            (
                Route {
                    tracing: Some(Default::default()),
                    ..base()
                },
                "unsupported route fields",
            ),
            (
                {
                    let mut r = base();
                    r.r#match.as_mut().unwrap().case_sensitive = Some(BoolValue { value: false });
                    r
                },
                "unsupported match fields",
            ),
            (
                {
                    let mut r = base();
                    r.r#match.as_mut().unwrap().headers.push(HeaderMatcher {
                        name: "x".into(),
                        header_match_specifier: Some(HeaderMatchSpecifier::PresentMatch(true)),
                        ..Default::default()
                    });
                    r
                },
                "only exact",
            ),
            (
                {
                    let mut r = base();
                    r.r#match.as_mut().unwrap().headers.push(HeaderMatcher {
                        name: ":path".into(),
                        ..Default::default()
                    });
                    r
                },
                "only :method",
            ),
            (
                Route {
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
                        prefix_rewrite: "/v2".into(),
                        ..Default::default()
                    })),
                    ..base()
                },
                "prefix_rewrite",
            ),
            (
                Route {
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::WeightedClusters(
                            WeightedCluster {
                                clusters: vec![ClusterWeight {
                                    name: "c".into(),
                                    weight: Some(UInt32Value { value: 0 }),
                                    ..Default::default()
                                }],
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    })),
                    ..base()
                },
                "total weight 0",
            ),
            (
                Route {
                    action: Some(Action::Route(RouteAction {
                        cluster_specifier: Some(ClusterSpecifier::Cluster("c".into())),
                        retry_policy: Some(
                            envoy_types::pb::envoy::config::route::v3::RetryPolicy {
                                retry_on: "cancelled".into(),
                                ..Default::default()
                            },
                        ),
                        ..Default::default()
                    })),
                    ..base()
                },
                "retry condition",
            ),
        ];
        for (r, expect) in cases {
            let e = route(&r).unwrap_err();
            assert!(e.contains(expect), "expected {expect:?} in {e}");
        }
        assert!(route(&base()).is_ok());
    }
}
