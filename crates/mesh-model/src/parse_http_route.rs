//! Reading and validating `HTTPRoute` documents (gateway.networking.k8s.io/v1).
//!
//! Strict: a field the mesh cannot honour is an error naming the field, never
//! silently dropped, because a route that half applies misroutes traffic. The
//! shapes follow the Gateway API CRD; defaults are the CRD's defaults.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::error::ModelErrorKind;
use crate::http_route::{
    BackendRef, HeaderModifier, HttpRoute, PathMatch, RouteMatch, RouteParent, RouteRetry,
    RouteRule,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    #[serde(default)]
    parent_refs: Vec<RawParentRef>,
    /// Ignored for Service parents, as the Gateway API mesh profile says.
    #[serde(default)]
    #[allow(dead_code)]
    hostnames: Vec<String>,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawParentRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    name: String,
    #[serde(default)]
    section_name: Option<String>,
    #[serde(default)]
    port: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRule {
    #[serde(default)]
    #[allow(dead_code)]
    name: Option<String>,
    #[serde(default)]
    matches: Vec<RawMatch>,
    #[serde(default)]
    filters: Vec<RawFilter>,
    #[serde(default)]
    backend_refs: Vec<RawBackendRef>,
    #[serde(default)]
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    retry: Option<RawRetry>,
    #[serde(default)]
    session_persistence: Option<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    path: Option<RawPath>,
    #[serde(default)]
    headers: Vec<RawNameValue>,
    #[serde(default)]
    query_params: Vec<RawNameValue>,
    #[serde(default)]
    method: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPath {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    value: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNameValue {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    name: String,
    value: String,
}

/// Not `deny_unknown_fields`: `other` collects the configs of filter types the
/// mesh does not support, so the error can name the type rather than a field.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawFilter {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    request_header_modifier: Option<RawHeaderModifier>,
    #[serde(default)]
    response_header_modifier: Option<RawHeaderModifier>,
    #[serde(flatten)]
    other: serde_yaml::Mapping,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawHeaderModifier {
    #[serde(default)]
    set: Vec<RawHeader>,
    #[serde(default)]
    add: Vec<RawHeader>,
    #[serde(default)]
    remove: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHeader {
    name: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawBackendRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<i64>,
    #[serde(default)]
    weight: Option<i64>,
    #[serde(default)]
    filters: Vec<serde_yaml::Value>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawTimeouts {
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    backend_request: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetry {
    #[serde(default)]
    attempts: Option<i64>,
    #[serde(default)]
    codes: Vec<i64>,
    #[serde(default)]
    backoff: Option<String>,
}

type Checked<T> = Result<T, ModelErrorKind>;

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ModelErrorKind {
    ModelErrorKind::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Validates an HTTPRoute's `spec` (already deserialized from the document) into
/// the model's [`HttpRoute`].
pub(crate) fn http_route(
    name: &str,
    namespace: &str,
    created: Option<String>,
    spec: serde_yaml::Value,
) -> Checked<HttpRoute> {
    let spec: RawSpec = serde_yaml::from_value(spec).map_err(|e| invalid("spec", e.to_string()))?;
    if spec.parent_refs.is_empty() {
        return Err(invalid(
            "spec.parentRefs",
            "a mesh route needs at least one parentRef of kind Service",
        ));
    }
    let parents = spec
        .parent_refs
        .iter()
        .enumerate()
        .map(|(i, p)| parent(&format!("spec.parentRefs[{i}]"), p, namespace))
        .collect::<Checked<Vec<_>>>()?;
    let rules = if spec.rules.is_empty() {
        // The CRD's default: one rule matching everything, with no backends.
        vec![RouteRule {
            matches: vec![RouteMatch::any()],
            request_headers: HeaderModifier::default(),
            response_headers: HeaderModifier::default(),
            backends: Vec::new(),
            timeout: None,
            retry: None,
        }]
    } else {
        spec.rules
            .into_iter()
            .enumerate()
            .map(|(i, r)| rule(&format!("spec.rules[{i}]"), r, namespace))
            .collect::<Checked<Vec<_>>>()?
    };
    Ok(HttpRoute {
        name: name.to_string(),
        namespace: namespace.to_string(),
        created,
        parents,
        rules,
    })
}

/// The core API group: written `""` or, by some tools, `core`.
fn is_core_group(group: Option<&str>) -> bool {
    matches!(group, Some("" | "core"))
}

fn parent(at: &str, p: &RawParentRef, namespace: &str) -> Checked<RouteParent> {
    // Gateway API defaults a parentRef to a Gateway; a mesh route must say Service.
    if p.kind.as_deref() != Some("Service") || !is_core_group(p.group.as_deref()) {
        return Err(invalid(
            at,
            format!(
                "only parentRefs with group \"\" and kind Service are supported (got group {:?}, kind {:?}; Gateway API defaults them to a Gateway)",
                p.group.as_deref().unwrap_or("gateway.networking.k8s.io"),
                p.kind.as_deref().unwrap_or("Gateway"),
            ),
        ));
    }
    if let Some(ns) = p.namespace.as_deref().filter(|ns| *ns != namespace) {
        return Err(invalid(
            format!("{at}.namespace"),
            format!(
                "{ns:?}: routes for a Service in another namespace (consumer routes) are not supported; create the route in namespace {ns:?}"
            ),
        ));
    }
    if p.section_name.is_some() {
        return Err(invalid(
            format!("{at}.sectionName"),
            "is not supported for Service parents; use port",
        ));
    }
    crate::parse::check_name(&format!("{at}.name"), &p.name)?;
    let port = p
        .port
        .map(|n| crate::parse::check_port(&format!("{at}.port"), n))
        .transpose()?;
    Ok(RouteParent {
        service: p.name.clone(),
        port,
    })
}

fn rule(at: &str, r: RawRule, namespace: &str) -> Checked<RouteRule> {
    if r.session_persistence.is_some() {
        return Err(invalid(
            format!("{at}.sessionPersistence"),
            "is not supported; use a TrafficPolicy with consistent hashing",
        ));
    }
    let matches = if r.matches.is_empty() {
        vec![RouteMatch::any()]
    } else {
        r.matches
            .iter()
            .enumerate()
            .map(|(i, m)| route_match(&format!("{at}.matches[{i}]"), m))
            .collect::<Checked<Vec<_>>>()?
    };
    let mut request_headers = HeaderModifier::default();
    let mut response_headers = HeaderModifier::default();
    let mut seen_filters = HashSet::new();
    for (i, f) in r.filters.into_iter().enumerate() {
        let fat = format!("{at}.filters[{i}]");
        if !seen_filters.insert(f.kind.clone()) {
            return Err(invalid(
                format!("{fat}.type"),
                format!("{} is listed twice in one rule", f.kind),
            ));
        }
        let (slot, config, field) = match f.kind.as_str() {
            "RequestHeaderModifier" => (
                &mut request_headers,
                f.request_header_modifier,
                "requestHeaderModifier",
            ),
            "ResponseHeaderModifier" => (
                &mut response_headers,
                f.response_header_modifier,
                "responseHeaderModifier",
            ),
            other => {
                return Err(invalid(
                    format!("{fat}.type"),
                    format!(
                        "filter {other} is not supported (supported: RequestHeaderModifier, ResponseHeaderModifier)"
                    ),
                ));
            }
        };
        if let Some(key) = f.other.keys().next() {
            return Err(invalid(
                &fat,
                format!(
                    "{} does not belong to a {} filter",
                    key.as_str().unwrap_or("a field"),
                    f.kind
                ),
            ));
        }
        let config = config.ok_or_else(|| invalid(format!("{fat}.{field}"), "is required"))?;
        *slot = header_modifier(&format!("{fat}.{field}"), config)?;
    }
    let backends = r
        .backend_refs
        .iter()
        .enumerate()
        .map(|(i, b)| backend(&format!("{at}.backendRefs[{i}]"), b, namespace))
        .collect::<Checked<Vec<_>>>()?;
    let timeout = match r.timeouts {
        None => None,
        Some(t) => {
            if t.backend_request.is_some() {
                return Err(invalid(
                    format!("{at}.timeouts.backendRequest"),
                    "is not supported; set timeouts.request (and the per-try timeout in a TrafficPolicy)",
                ));
            }
            t.request
                .map(|d| duration(&format!("{at}.timeouts.request"), &d))
                .transpose()?
        }
    };
    let retry = r
        .retry
        .map(|raw| retry(&format!("{at}.retry"), raw))
        .transpose()?;
    Ok(RouteRule {
        matches,
        request_headers,
        response_headers,
        backends,
        timeout,
        retry,
    })
}

fn route_match(at: &str, m: &RawMatch) -> Checked<RouteMatch> {
    let path = match &m.path {
        None => PathMatch::Prefix("/".into()),
        Some(p) => {
            let value = p.value.clone().unwrap_or_else(|| "/".into());
            if !value.starts_with('/') {
                return Err(invalid(
                    format!("{at}.path.value"),
                    format!("{value:?} must start with /"),
                ));
            }
            if value.contains(['?', '#']) || value.contains("//") {
                return Err(invalid(
                    format!("{at}.path.value"),
                    format!("{value:?} must be a plain path (no '?', '#' or '//')"),
                ));
            }
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "PathPrefix" => {
                    let trimmed = value.trim_end_matches('/');
                    PathMatch::Prefix(if trimmed.is_empty() {
                        "/".into()
                    } else {
                        trimmed.into()
                    })
                }
                "Exact" => PathMatch::Exact(value),
                "RegularExpression" => {
                    return Err(invalid(
                        format!("{at}.path.type"),
                        "RegularExpression is not supported; use PathPrefix or Exact",
                    ));
                }
                other => {
                    return Err(invalid(
                        format!("{at}.path.type"),
                        format!("{other:?} must be PathPrefix or Exact"),
                    ));
                }
            }
        }
    };
    let method = match m.method.as_deref() {
        None => None,
        Some(
            method @ ("GET" | "HEAD" | "POST" | "PUT" | "DELETE" | "CONNECT" | "OPTIONS" | "TRACE"
            | "PATCH"),
        ) => Some(method.to_string()),
        Some(other) => {
            return Err(invalid(
                format!("{at}.method"),
                format!(
                    "{other:?} must be one of GET HEAD POST PUT DELETE CONNECT OPTIONS TRACE PATCH"
                ),
            ));
        }
    };
    let headers = exact_pairs(&format!("{at}.headers"), &m.headers, true)?;
    let query_params = exact_pairs(&format!("{at}.queryParams"), &m.query_params, false)?;
    Ok(RouteMatch {
        path,
        method,
        headers,
        query_params,
    })
}

/// Header or query parameter matches: type Exact only, names unique (header
/// names compared case-insensitively and stored lower case).
fn exact_pairs(at: &str, raw: &[RawNameValue], headers: bool) -> Checked<Vec<(String, String)>> {
    let mut out: Vec<(String, String)> = Vec::with_capacity(raw.len());
    for (i, nv) in raw.iter().enumerate() {
        let kind = nv.kind.as_deref().unwrap_or("Exact");
        if kind != "Exact" {
            return Err(invalid(
                format!("{at}[{i}].type"),
                format!("{kind} is not supported; only Exact"),
            ));
        }
        let name = if headers {
            header_name(&format!("{at}[{i}].name"), &nv.name)?
        } else if nv.name.is_empty() {
            return Err(invalid(format!("{at}[{i}].name"), "must not be empty"));
        } else {
            nv.name.clone()
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(invalid(
                format!("{at}[{i}].name"),
                format!("{name:?} is matched twice"),
            ));
        }
        out.push((name, nv.value.clone()));
    }
    Ok(out)
}

/// A valid HTTP header name (an RFC 9110 token), lower-cased; pseudo-headers and
/// the mesh's own hop headers are refused.
fn header_name(at: &str, name: &str) -> Checked<String> {
    let token = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if !token {
        return Err(invalid(
            at,
            format!("{name:?} is not a valid HTTP header name"),
        ));
    }
    let lower = name.to_ascii_lowercase();
    if lower.starts_with("mesh-") {
        return Err(invalid(
            at,
            format!("{name:?}: headers starting with mesh- belong to the mesh's sidecars"),
        ));
    }
    Ok(lower)
}

fn header_modifier(at: &str, raw: RawHeaderModifier) -> Checked<HeaderModifier> {
    let mut seen = HashSet::new();
    let mut pairs = |list: Vec<RawHeader>, field: &str| -> Checked<Vec<(String, String)>> {
        list.into_iter()
            .enumerate()
            .map(|(i, h)| {
                let name = header_name(&format!("{at}.{field}[{i}].name"), &h.name)?;
                if !seen.insert(name.clone()) {
                    return Err(invalid(
                        format!("{at}.{field}[{i}].name"),
                        format!("{name:?} appears more than once in this filter"),
                    ));
                }
                Ok((name, h.value))
            })
            .collect()
    };
    let set = pairs(raw.set, "set")?;
    let add = pairs(raw.add, "add")?;
    let remove = raw
        .remove
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let name = header_name(&format!("{at}.remove[{i}]"), n)?;
            if !seen.insert(name.clone()) {
                return Err(invalid(
                    format!("{at}.remove[{i}]"),
                    format!("{name:?} appears more than once in this filter"),
                ));
            }
            Ok(name)
        })
        .collect::<Checked<Vec<_>>>()?;
    Ok(HeaderModifier { set, add, remove })
}

fn backend(at: &str, b: &RawBackendRef, namespace: &str) -> Checked<BackendRef> {
    let group_ok = b.group.is_none() || is_core_group(b.group.as_deref());
    if !group_ok || b.kind.as_deref().is_some_and(|k| k != "Service") {
        return Err(invalid(
            at,
            format!(
                "only Service backends are supported (got group {:?}, kind {:?})",
                b.group.as_deref().unwrap_or(""),
                b.kind.as_deref().unwrap_or("Service")
            ),
        ));
    }
    if let Some(ns) = b.namespace.as_deref().filter(|ns| *ns != namespace) {
        return Err(invalid(
            format!("{at}.namespace"),
            format!(
                "{ns:?}: a backend in another namespace needs a ReferenceGrant, which is not supported; use a Service in namespace {namespace:?}"
            ),
        ));
    }
    if !b.filters.is_empty() {
        return Err(invalid(
            format!("{at}.filters"),
            "per-backend filters are not supported; put filters on the rule",
        ));
    }
    crate::parse::check_name(&format!("{at}.name"), &b.name)?;
    let port = b
        .port
        .ok_or_else(|| invalid(format!("{at}.port"), "is required for a Service backend"))
        .and_then(|p| crate::parse::check_port(&format!("{at}.port"), p))?;
    let weight = match b.weight {
        None => 1,
        Some(w) if (0..=1_000_000).contains(&w) => w as u32,
        Some(w) => {
            return Err(invalid(
                format!("{at}.weight"),
                format!("{w} is out of range 0-1000000"),
            ));
        }
    };
    Ok(BackendRef {
        service: b.name.clone(),
        port,
        weight,
    })
}

fn retry(at: &str, raw: RawRetry) -> Checked<RouteRetry> {
    let attempts = raw
        .attempts
        .map(|a| {
            u32::try_from(a).ok().filter(|a| *a <= 100).ok_or_else(|| {
                invalid(
                    format!("{at}.attempts"),
                    format!("{a} is out of range 0-100"),
                )
            })
        })
        .transpose()?;
    let codes = raw
        .codes
        .iter()
        .enumerate()
        .map(|(i, &c)| {
            u16::try_from(c)
                .ok()
                .filter(|c| (400..=599).contains(c))
                .ok_or_else(|| {
                    invalid(
                        format!("{at}.codes[{i}]"),
                        format!("{c} must be an HTTP status in 400-599"),
                    )
                })
        })
        .collect::<Checked<Vec<_>>>()?;
    let backoff = raw
        .backoff
        .map(|d| duration(&format!("{at}.backoff"), &d))
        .transpose()?;
    Ok(RouteRetry {
        attempts,
        codes,
        backoff,
    })
}

/// A Gateway API duration: 1-4 groups of up to five digits and a unit
/// (`h`, `m`, `s`, `ms`), e.g. `1h30m` or `500ms`.
pub(crate) fn duration(at: &str, text: &str) -> Checked<Duration> {
    let bad = || {
        invalid(
            at,
            format!("{text:?} is not a Gateway API duration (e.g. 10s, 500ms, 1m30s)"),
        )
    };
    let mut total = Duration::ZERO;
    let mut rest = text;
    let mut groups = 0;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += unit * n as u32;
        groups += 1;
    }
    if groups == 0 || groups > 4 {
        return Err(bad());
    }
    Ok(total)
}

/// Formats a duration the way [`duration`] reads it back.
fn render_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

fn render_modifier(m: &HeaderModifier) -> serde_json::Value {
    let pairs = |l: &[(String, String)]| {
        l.iter()
            .map(|(n, v)| json!({"name": n, "value": v}))
            .collect::<Vec<_>>()
    };
    json!({"set": pairs(&m.set), "add": pairs(&m.add), "remove": m.remove})
}

/// An [`HttpRoute`] as the Kubernetes-shaped document it was read from.
pub(crate) fn render(r: &HttpRoute) -> serde_json::Value {
    let pairs = |l: &[(String, String)]| {
        l.iter()
            .map(|(n, v)| json!({"type": "Exact", "name": n, "value": v}))
            .collect::<Vec<_>>()
    };
    let rules: Vec<_> = r
        .rules
        .iter()
        .map(|rule| {
            let matches: Vec<_> = rule
                .matches
                .iter()
                .map(|m| {
                    let (kind, value) = match &m.path {
                        PathMatch::Prefix(p) => ("PathPrefix", p),
                        PathMatch::Exact(p) => ("Exact", p),
                    };
                    let mut v = json!({
                        "path": {"type": kind, "value": value},
                        "headers": pairs(&m.headers),
                        "queryParams": pairs(&m.query_params),
                    });
                    if let Some(method) = &m.method {
                        v["method"] = json!(method);
                    }
                    v
                })
                .collect();
            let mut filters = Vec::new();
            if !rule.request_headers.is_empty() {
                filters.push(json!({"type": "RequestHeaderModifier", "requestHeaderModifier": render_modifier(&rule.request_headers)}));
            }
            if !rule.response_headers.is_empty() {
                filters.push(json!({"type": "ResponseHeaderModifier", "responseHeaderModifier": render_modifier(&rule.response_headers)}));
            }
            let backends: Vec<_> = rule
                .backends
                .iter()
                .map(|b| json!({"kind": "Service", "name": b.service, "port": b.port, "weight": b.weight}))
                .collect();
            let mut v = json!({"matches": matches, "filters": filters, "backendRefs": backends});
            if let Some(t) = rule.timeout {
                v["timeouts"] = json!({"request": render_duration(t)});
            }
            if let Some(retry) = &rule.retry {
                let mut rv = json!({"codes": retry.codes});
                if let Some(a) = retry.attempts {
                    rv["attempts"] = json!(a);
                }
                if let Some(b) = retry.backoff {
                    rv["backoff"] = json!(render_duration(b));
                }
                v["retry"] = rv;
            }
            v
        })
        .collect();
    let parents: Vec<_> = r
        .parents
        .iter()
        .map(|p| {
            let mut v = json!({"group": "", "kind": "Service", "name": p.service});
            if let Some(port) = p.port {
                v["port"] = json!(port);
            }
            v
        })
        .collect();
    let mut metadata = json!({"name": r.name, "namespace": r.namespace});
    if let Some(created) = &r.created {
        metadata["creationTimestamp"] = json!(created);
    }
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": metadata,
        "spec": {"parentRefs": parents, "rules": rules},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Object, parse_documents, render_documents};

    const ROUTE: &str = r#"
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: catalog, namespace: shop, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: catalog, port: 8080}]
  hostnames: [ignored.example]
  rules:
  - matches:
    - path: {type: PathPrefix, value: /api/}
      method: GET
      headers: [{name: X-Canary, value: "yes"}]
      queryParams: [{name: debug, value: "1"}]
    - path: {type: Exact, value: /health}
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-route, value: canary}]
        add: [{name: x-added, value: a}]
        remove: [x-secret]
    - type: ResponseHeaderModifier
      responseHeaderModifier: {remove: [server]}
    backendRefs:
    - {name: catalog-v1, port: 8080, weight: 90}
    - {kind: Service, name: catalog-v2, port: 8080, weight: 10}
    timeouts: {request: 1m30s}
    retry: {attempts: 3, codes: [502, 503], backoff: 100ms}
  - backendRefs: [{name: catalog, port: 8080}]
"#;

    fn route_err(spec: &str) -> String {
        let text = format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: shop}}
spec:
{spec}"
        );
        parse_documents(&text, "routes.yaml")
            .unwrap_err()
            .to_string()
    }

    const PARENT: &str = "  parentRefs: [{group: \"\", kind: Service, name: catalog}]\n";

    #[test]
    fn parses_validates_and_round_trips() {
        let objects = parse_documents(ROUTE, "routes.yaml").unwrap();
        let Object::HttpRoute(r) = &objects[0] else {
            panic!("not a route")
        };
        assert_eq!(r.created.as_deref(), Some("2026-01-01T00:00:00Z"));
        assert_eq!(r.parents[0].port, Some(8080));
        let rule = &r.rules[0];
        assert_eq!(rule.matches[0].path, PathMatch::Prefix("/api".into()));
        assert_eq!(
            rule.matches[0].headers,
            [("x-canary".to_string(), "yes".to_string())]
        );
        assert_eq!(rule.matches[1].path, PathMatch::Exact("/health".into()));
        assert_eq!(rule.request_headers.remove, ["x-secret"]);
        assert_eq!(rule.response_headers.remove, ["server"]);
        assert_eq!(rule.backends[1].weight, 10);
        assert_eq!(rule.timeout, Some(Duration::from_secs(90)));
        let retry = rule.retry.as_ref().unwrap();
        assert_eq!(retry.attempts, Some(3));
        assert_eq!(retry.codes, [502, 503]);
        assert_eq!(retry.backoff, Some(Duration::from_millis(100)));
        assert_eq!(r.rules[1].matches, [RouteMatch::any()]);
        assert_eq!(r.rules[1].backends[0].weight, 1);
        let again = parse_documents(&render_documents(&objects), "rendered").unwrap();
        assert_eq!(again, objects);
    }

    #[test]
    fn refuses_what_it_cannot_honour_naming_the_field() {
        for (spec, expect) in [
            (
                "  rules: []\n",
                "spec.parentRefs: a mesh route needs at least one parentRef",
            ),
            (
                "  parentRefs: [{name: gw}]\n",
                "spec.parentRefs[0]: only parentRefs with group \"\" and kind Service",
            ),
            (
                "  parentRefs: [{group: \"\", kind: Service, name: c, namespace: other}]\n",
                "consumer routes",
            ),
            (
                &format!(
                    "{PARENT}  rules: [{{matches: [{{path: {{type: RegularExpression, value: /a.*}}}}]}}]\n"
                ),
                "spec.rules[0].matches[0].path.type: RegularExpression is not supported",
            ),
            (
                &format!("{PARENT}  rules: [{{matches: [{{path: {{value: api}}}}]}}]\n"),
                "must start with /",
            ),
            (
                &format!(
                    "{PARENT}  rules: [{{matches: [{{headers: [{{type: RegularExpression, name: a, value: b}}]}}]}}]\n"
                ),
                "spec.rules[0].matches[0].headers[0].type: RegularExpression is not supported",
            ),
            (
                &format!(
                    "{PARENT}  rules: [{{matches: [{{queryParams: [{{type: RegularExpression, name: a, value: b}}]}}]}}]\n"
                ),
                "queryParams[0].type",
            ),
            (
                &format!("{PARENT}  rules: [{{matches: [{{method: get}}]}}]\n"),
                "spec.rules[0].matches[0].method",
            ),
            (
                &format!(
                    "{PARENT}  rules: [{{filters: [{{type: URLRewrite, urlRewrite: {{}}}}]}}]\n"
                ),
                "spec.rules[0].filters[0].type: filter URLRewrite is not supported",
            ),
            (
                &format!("{PARENT}  rules: [{{filters: [{{type: RequestHeaderModifier}}]}}]\n"),
                "requestHeaderModifier: is required",
            ),
            (
                &format!(
                    "{PARENT}  rules: [{{filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: a, value: b}}], remove: [A]}}}}]}}]\n"
                ),
                "appears more than once",
            ),
            (
                &format!(
                    "{PARENT}  rules: [{{filters: [{{type: RequestHeaderModifier, requestHeaderModifier: {{set: [{{name: mesh-target-port, value: '1'}}]}}}}]}}]\n"
                ),
                "belong to the mesh",
            ),
            (
                &format!(
                    "{PARENT}  rules: [{{backendRefs: [{{name: c, port: 80, namespace: other}}]}}]\n"
                ),
                "ReferenceGrant",
            ),
            (
                &format!("{PARENT}  rules: [{{backendRefs: [{{name: c}}]}}]\n"),
                "spec.rules[0].backendRefs[0].port: is required",
            ),
            (
                &format!(
                    "{PARENT}  rules: [{{backendRefs: [{{name: c, port: 80, weight: -1}}]}}]\n"
                ),
                "weight: -1 is out of range",
            ),
            (
                &format!(
                    "{PARENT}  rules: [{{backendRefs: [{{kind: Pod, name: c, port: 80}}]}}]\n"
                ),
                "only Service backends",
            ),
            (
                &format!("{PARENT}  rules: [{{timeouts: {{request: 10x}}}}]\n"),
                "spec.rules[0].timeouts.request",
            ),
            (
                &format!("{PARENT}  rules: [{{timeouts: {{backendRequest: 1s}}}}]\n"),
                "backendRequest: is not supported",
            ),
            (
                &format!("{PARENT}  rules: [{{retry: {{codes: [200]}}}}]\n"),
                "spec.rules[0].retry.codes[0]",
            ),
            (&format!("{PARENT}  rules: [{{matchez: []}}]\n"), "matchez"),
        ] {
            let e = route_err(spec);
            assert!(
                e.starts_with("routes.yaml: document 1 (HTTPRoute/shop/r): "),
                "{e}"
            );
            assert!(e.contains(expect), "{spec}: expected {expect:?} in: {e}");
        }
    }

    #[test]
    fn durations() {
        let d = |t| duration("x", t);
        assert_eq!(d("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(d("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(d("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(d("0s").unwrap(), Duration::ZERO);
        assert_eq!(d("1h1m1s1ms").unwrap(), Duration::from_millis(3_661_001));
        for bad in [
            "",
            "10",
            "s",
            "1.5s",
            "100000s",
            "1h1m1s1ms1s",
            "-1s",
            "10 s",
        ] {
            assert!(d(bad).is_err(), "{bad:?} should be refused");
        }
    }
}
