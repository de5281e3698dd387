//! Gateway API `HTTPRoute` (gateway.networking.k8s.io/v1) as the mesh profile uses
//! it: a route attached to a Service, whose rules pick backends for requests to that
//! Service. The types hold validated values only (see `parse_http_route`), and
//! [`ordered_matches`] puts the matches of every route attached to one service port
//! in Gateway API precedence, so a first-match-wins table honours it.

use std::cmp::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// An HTTPRoute whose parents are Services (the Gateway API mesh profile).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpRoute {
    /// The route's name.
    pub name: String,
    /// The route's namespace; parents and backends are Services in it.
    pub namespace: String,
    /// `metadata.creationTimestamp` (RFC 3339) when known: older routes win ties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    /// The Services (and optionally ports) whose traffic this route takes over.
    pub parents: Vec<RouteParent>,
    /// Rules; a request takes the one with the most specific matching match.
    pub rules: Vec<RouteRule>,
}

/// A `parentRef` of kind Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteParent {
    /// The Service's name, in the route's namespace.
    pub service: String,
    /// Only this service port; `None` means every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// One rule: any of its matches selects it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRule {
    /// Conditions, ORed; never empty (an absent list means "prefix /").
    pub matches: Vec<RouteMatch>,
    /// Headers to change on the request before it is sent.
    #[serde(default, skip_serializing_if = "HeaderModifier::is_empty")]
    pub request_headers: HeaderModifier,
    /// Headers to change on the response before the caller gets it.
    #[serde(default, skip_serializing_if = "HeaderModifier::is_empty")]
    pub response_headers: HeaderModifier,
    /// Where matching requests go, split by weight.
    pub backends: Vec<BackendRef>,
    /// `timeouts.request`: the whole request, retries included; `Some(0)` disables
    /// the timeout.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_millis"
    )]
    pub timeout: Option<Duration>,
    /// `retry`: how failed requests are retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<RouteRetry>,
}

/// One match: every condition must hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteMatch {
    /// The path condition.
    pub path: PathMatch,
    /// The HTTP method, upper case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header name (lower case) and exact value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Query parameter name and exact value.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<(String, String)>,
}

impl RouteMatch {
    /// The match of a rule without matches: every request.
    pub fn any() -> RouteMatch {
        RouteMatch {
            path: PathMatch::Prefix("/".into()),
            method: None,
            headers: Vec::new(),
            query_params: Vec::new(),
        }
    }
}

/// A path condition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PathMatch {
    /// `PathPrefix`: element-wise prefix (`/a` matches `/a` and `/a/b`, not `/ab`);
    /// stored without a trailing `/` unless it is `/` itself.
    Prefix(String),
    /// `Exact`: the whole path, without the query.
    Exact(String),
}

/// `RequestHeaderModifier` / `ResponseHeaderModifier`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderModifier {
    /// Replace (or add) these headers; names lower case.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    /// Append these values.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub add: Vec<(String, String)>,
    /// Remove these headers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderModifier {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.add.is_empty() && self.remove.is_empty()
    }
}

/// A `backendRef`: a Service port in the route's namespace and its share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendRef {
    /// The Service's name.
    pub service: String,
    /// The Service port.
    pub port: u16,
    /// Relative share (Gateway API default 1); 0 sends it nothing.
    pub weight: u32,
}

/// Gateway API `HTTPRouteRetry`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouteRetry {
    /// How many times a request may be retried (`None`: the service's default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// HTTP status codes that are retried (empty: the service's default).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub codes: Vec<u16>,
    /// Base backoff between attempts.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "optional_millis"
    )]
    pub backoff: Option<Duration>,
}

/// Durations in JSON as milliseconds (for `/debug/registry`).
mod optional_millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_u64(d.as_millis() as u64),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

impl HttpRoute {
    /// Whether the route is attached to port `port` of Service `service` (in the
    /// route's namespace).
    pub fn attaches_to(&self, namespace: &str, service: &str, port: u16) -> bool {
        self.namespace == namespace
            && self
                .parents
                .iter()
                .any(|p| p.service == service && p.port.is_none_or(|q| q == port))
    }
}

/// One match of one rule of one route: the unit Gateway API precedence orders.
#[derive(Debug, Clone, Copy)]
pub struct MatchedRule<'a> {
    /// The route it comes from.
    pub route: &'a HttpRoute,
    /// The rule (index into `route.rules`).
    pub rule: &'a RouteRule,
    /// The match.
    pub matcher: &'a RouteMatch,
    rule_index: usize,
    match_index: usize,
}

/// Gateway API's order between two matches, most specific first:
/// an exact path, then the longest prefix, then a method, then more headers,
/// then more query parameters; ties go to the oldest route, then to the route
/// first in alphabetical `namespace/name` order, then to rule and match order.
fn precedence(a: &MatchedRule<'_>, b: &MatchedRule<'_>) -> Ordering {
    let path_rank = |m: &RouteMatch| match &m.path {
        PathMatch::Exact(p) => (0, std::cmp::Reverse(p.len())),
        PathMatch::Prefix(p) => (1, std::cmp::Reverse(p.len())),
    };
    path_rank(a.matcher)
        .cmp(&path_rank(b.matcher))
        .then_with(|| b.matcher.method.is_some().cmp(&a.matcher.method.is_some()))
        .then_with(|| b.matcher.headers.len().cmp(&a.matcher.headers.len()))
        .then_with(|| {
            b.matcher
                .query_params
                .len()
                .cmp(&a.matcher.query_params.len())
        })
        .then_with(|| age_rank(a.route).cmp(&age_rank(b.route)))
        .then_with(|| (&a.route.namespace, &a.route.name).cmp(&(&b.route.namespace, &b.route.name)))
        .then_with(|| (a.rule_index, a.match_index).cmp(&(b.rule_index, b.match_index)))
}

/// A route with a creation time sorts before one without (whose age is unknown);
/// RFC 3339 timestamps in the API server's UTC form sort as text.
fn age_rank(route: &HttpRoute) -> (bool, &str) {
    match &route.created {
        Some(t) => (false, t.as_str()),
        None => (true, ""),
    }
}

/// Every match of every rule of `routes`, most specific first: walking the list and
/// taking the first that matches gives Gateway API's answer.
pub fn ordered_matches<'a>(routes: &[&'a HttpRoute]) -> Vec<MatchedRule<'a>> {
    let mut all: Vec<MatchedRule<'a>> = routes
        .iter()
        .flat_map(|route| {
            route
                .rules
                .iter()
                .enumerate()
                .flat_map(move |(rule_index, rule)| {
                    rule.matches
                        .iter()
                        .enumerate()
                        .map(move |(match_index, matcher)| MatchedRule {
                            route,
                            rule,
                            matcher,
                            rule_index,
                            match_index,
                        })
                })
        })
        .collect();
    all.sort_by(precedence);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(name: &str, created: Option<&str>, matches: Vec<RouteMatch>) -> HttpRoute {
        HttpRoute {
            name: name.into(),
            namespace: "shop".into(),
            created: created.map(str::to_string),
            parents: vec![RouteParent {
                service: "cat".into(),
                port: Some(80),
            }],
            rules: vec![RouteRule {
                matches,
                request_headers: HeaderModifier::default(),
                response_headers: HeaderModifier::default(),
                backends: Vec::new(),
                timeout: None,
                retry: None,
            }],
        }
    }

    fn prefix(p: &str) -> RouteMatch {
        RouteMatch {
            path: PathMatch::Prefix(p.into()),
            ..RouteMatch::any()
        }
    }

    fn describe(m: &MatchedRule<'_>) -> String {
        let path = match &m.matcher.path {
            PathMatch::Exact(p) => format!("={p}"),
            PathMatch::Prefix(p) => p.clone(),
        };
        format!(
            "{}:{path}:{}:{}h:{}q",
            m.route.name,
            m.matcher.method.as_deref().unwrap_or("-"),
            m.matcher.headers.len(),
            m.matcher.query_params.len()
        )
    }

    #[test]
    fn precedence_follows_gateway_api() {
        let with = |f: fn(&mut RouteMatch)| {
            let mut m = prefix("/api");
            f(&mut m);
            m
        };
        let a = route(
            "a",
            None,
            vec![
                prefix("/"),
                prefix("/api"),
                with(|m| m.headers = vec![("x".into(), "1".into())]),
                with(|m| {
                    m.headers = vec![("x".into(), "1".into()), ("y".into(), "2".into())];
                }),
                with(|m| m.method = Some("GET".into())),
                with(|m| m.query_params = vec![("q".into(), "1".into())]),
                RouteMatch {
                    path: PathMatch::Exact("/api".into()),
                    ..RouteMatch::any()
                },
                prefix("/api/v1"),
            ],
        );
        let order: Vec<String> = ordered_matches(&[&a]).iter().map(describe).collect();
        assert_eq!(
            order,
            [
                "a:=/api:-:0h:0q",
                "a:/api/v1:-:0h:0q",
                "a:/api:GET:0h:0q",
                "a:/api:-:2h:0q",
                "a:/api:-:1h:0q",
                "a:/api:-:0h:1q",
                "a:/api:-:0h:0q",
                "a:/:-:0h:0q",
            ]
        );
    }

    #[test]
    fn ties_go_to_the_oldest_then_alphabetical_route() {
        let young = route("a-young", Some("2026-01-02T00:00:00Z"), vec![prefix("/")]);
        let old = route("z-old", Some("2025-01-01T00:00:00Z"), vec![prefix("/")]);
        let unknown = route("b", None, vec![prefix("/")]);
        let also_unknown = route("a", None, vec![prefix("/")]);
        let order: Vec<&str> = ordered_matches(&[&unknown, &young, &also_unknown, &old])
            .iter()
            .map(|m| m.route.name.as_str())
            .collect();
        assert_eq!(order, ["z-old", "a-young", "a", "b"]);
    }

    #[test]
    fn attachment_by_service_and_port() {
        let mut r = route("a", None, vec![prefix("/")]);
        assert!(r.attaches_to("shop", "cat", 80));
        assert!(!r.attaches_to("shop", "cat", 81));
        assert!(!r.attaches_to("other", "cat", 80));
        r.parents[0].port = None;
        assert!(r.attaches_to("shop", "cat", 81));
    }
}
