//! Reading and writing `TrafficPolicy` documents, strictly: unknown fields and
//! values outside the CRD's schema are errors naming the field.

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

use crate::error::ModelErrorKind;
use crate::parse::{RawDocument, check_name, invalid, spec};
use crate::traffic_policy::{
    ConnectionPool, HashKey, LoadBalancer, OutlierDetection, Retries, RetryBudget, Timeouts,
    TrafficPolicy, format_duration, parse_duration, split_retry_on,
};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSpec {
    target_ref: Option<RawTargetRef>,
    #[serde(default)]
    load_balancer: Option<RawLoadBalancer>,
    #[serde(default)]
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    retries: Option<RawRetries>,
    #[serde(default)]
    connection_pool: Option<RawConnectionPool>,
    #[serde(default)]
    outlier_detection: Option<RawOutlierDetection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTargetRef {
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    name: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawLoadBalancer {
    #[serde(default)]
    simple: Option<String>,
    #[serde(default)]
    consistent_hash: Option<RawConsistentHash>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConsistentHash {
    #[serde(default)]
    http_header_name: Option<String>,
    #[serde(default)]
    http_cookie: Option<RawCookie>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCookie {
    name: String,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    ttl: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    #[serde(default)]
    request: Option<String>,
    #[serde(default)]
    connect: Option<String>,
    #[serde(default)]
    idle: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawRetries {
    #[serde(default)]
    attempts: Option<i64>,
    #[serde(default)]
    per_try_timeout: Option<String>,
    #[serde(default)]
    retry_on: Option<Vec<String>>,
    #[serde(default)]
    budget: Option<RawBudget>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawBudget {
    #[serde(default)]
    percent: Option<i64>,
    #[serde(default)]
    min_retry_concurrency: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConnectionPool {
    #[serde(default)]
    max_connections: Option<i64>,
    #[serde(default)]
    max_pending_requests: Option<i64>,
    #[serde(default)]
    max_requests: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawOutlierDetection {
    #[serde(default, rename = "consecutive5xxErrors")]
    consecutive_5xx_errors: Option<i64>,
    #[serde(default)]
    interval: Option<String>,
    #[serde(default)]
    base_ejection_time: Option<String>,
    #[serde(default)]
    max_ejection_percent: Option<i64>,
}

/// The retry conditions the mesh accepts: Envoy's HTTP ones (each honoured by
/// `mesh-proxy`), plus status codes.
const RETRY_CONDITIONS: [&str; 7] = [
    "5xx",
    "gateway-error",
    "reset",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
];

/// An RFC 9110 token: what header and cookie names are made of.
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b))
}

fn duration(field: &str, text: Option<&str>) -> Result<Option<Duration>, ModelErrorKind> {
    text.map(|t| parse_duration(t).map_err(|e| invalid(field, e)))
        .transpose()
}

fn positive_duration(field: &str, text: Option<&str>) -> Result<Option<Duration>, ModelErrorKind> {
    match duration(field, text)? {
        Some(d) if d.is_zero() => Err(invalid(field, "must be more than 0")),
        d => Ok(d),
    }
}

fn bounded(
    field: &str,
    value: Option<i64>,
    min: i64,
    max: i64,
) -> Result<Option<u32>, ModelErrorKind> {
    match value {
        None => Ok(None),
        Some(v) if (min..=max).contains(&v) => Ok(Some(v as u32)),
        Some(v) => Err(invalid(field, format!("{v} is out of range {min}-{max}"))),
    }
}

/// Parses a `mesh.io/v1alpha1` TrafficPolicy document.
pub(crate) fn parse_traffic_policy(
    raw: &RawDocument,
    namespace: &str,
) -> Result<TrafficPolicy, ModelErrorKind> {
    check_name("metadata.name", &raw.metadata.name)?;
    check_name("metadata.namespace", namespace)?;
    let spec: RawSpec = spec(raw)?;
    let target = spec.target_ref.ok_or_else(|| {
        invalid(
            "spec.targetRef",
            "required: the Service the policy applies to",
        )
    })?;
    if target.group.as_deref().is_some_and(|g| !g.is_empty()) {
        return Err(invalid("spec.targetRef.group", "must be \"\" (core)"));
    }
    if target.kind.as_deref().is_some_and(|k| k != "Service") {
        return Err(invalid("spec.targetRef.kind", "must be Service"));
    }
    check_name("spec.targetRef.name", &target.name)?;
    Ok(TrafficPolicy {
        name: raw.metadata.name.clone(),
        namespace: namespace.to_string(),
        service: target.name,
        load_balancer: load_balancer(spec.load_balancer)?,
        timeouts: timeouts(spec.timeouts)?,
        retries: retries(spec.retries)?,
        connection_pool: connection_pool(spec.connection_pool)?,
        outlier_detection: outlier_detection(spec.outlier_detection)?,
    })
}

fn load_balancer(raw: Option<RawLoadBalancer>) -> Result<LoadBalancer, ModelErrorKind> {
    let Some(raw) = raw else {
        return Ok(LoadBalancer::default());
    };
    let hash = match raw.consistent_hash {
        None => None,
        Some(RawConsistentHash {
            http_header_name: Some(h),
            http_cookie: None,
        }) => {
            if !is_token(&h) {
                return Err(invalid(
                    "spec.loadBalancer.consistentHash.httpHeaderName",
                    format!("{h:?} is not an HTTP header name"),
                ));
            }
            Some(HashKey::Header(h.to_ascii_lowercase()))
        }
        Some(RawConsistentHash {
            http_header_name: None,
            http_cookie: Some(c),
        }) => {
            let field = "spec.loadBalancer.consistentHash.httpCookie";
            if !is_token(&c.name) {
                return Err(invalid(
                    format!("{field}.name"),
                    format!("{:?} is not a cookie name", c.name),
                ));
            }
            if let Some(p) = &c.path
                && (!p.starts_with('/') || p.bytes().any(|b| b == b';' || b.is_ascii_control()))
            {
                return Err(invalid(
                    format!("{field}.path"),
                    format!("{p:?} must start with / and hold no ';'"),
                ));
            }
            Some(HashKey::Cookie {
                name: c.name,
                path: c.path,
                ttl: positive_duration(&format!("{field}.ttl"), c.ttl.as_deref())?,
            })
        }
        Some(_) => {
            return Err(invalid(
                "spec.loadBalancer.consistentHash",
                "give exactly one of httpHeaderName and httpCookie",
            ));
        }
    };
    match (raw.simple.as_deref(), hash) {
        (None | Some("RING_HASH"), Some(key)) => Ok(LoadBalancer::RingHash(key)),
        (Some("RING_HASH"), None) => Err(invalid(
            "spec.loadBalancer.consistentHash",
            "RING_HASH needs consistentHash (what to hash)",
        )),
        (Some(other), Some(_)) => Err(invalid(
            "spec.loadBalancer.simple",
            format!("{other} does not use consistentHash; use RING_HASH"),
        )),
        (None | Some("LEAST_REQUEST"), None) => Ok(LoadBalancer::LeastRequest),
        (Some("ROUND_ROBIN"), None) => Ok(LoadBalancer::RoundRobin),
        (Some(other), None) => Err(invalid(
            "spec.loadBalancer.simple",
            format!("{other:?} must be LEAST_REQUEST, ROUND_ROBIN or RING_HASH"),
        )),
    }
}

fn timeouts(raw: Option<RawTimeouts>) -> Result<Timeouts, ModelErrorKind> {
    let Some(raw) = raw else {
        return Ok(Timeouts::default());
    };
    Ok(Timeouts {
        request: duration("spec.timeouts.request", raw.request.as_deref())?,
        connect: positive_duration("spec.timeouts.connect", raw.connect.as_deref())?,
        idle: positive_duration("spec.timeouts.idle", raw.idle.as_deref())?,
    })
}

fn retries(raw: Option<RawRetries>) -> Result<Retries, ModelErrorKind> {
    let defaults = Retries::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let (retry_on, retriable_status_codes) = match &raw.retry_on {
        None => (defaults.retry_on, defaults.retriable_status_codes),
        Some(items) => {
            for (i, item) in items.iter().enumerate() {
                let code_ok = item.parse::<u32>().is_ok_and(|c| (100..=599).contains(&c));
                if !code_ok && !RETRY_CONDITIONS.contains(&item.as_str()) {
                    return Err(invalid(
                        format!("spec.retries.retryOn[{i}]"),
                        format!(
                            "{item:?} must be a status code (100-599) or one of {}",
                            RETRY_CONDITIONS.join(", ")
                        ),
                    ));
                }
            }
            split_retry_on(items.iter().map(String::as_str))
        }
    };
    let budget = match raw.budget {
        None => RetryBudget::default(),
        Some(b) => RetryBudget {
            percent: bounded("spec.retries.budget.percent", b.percent, 0, 100)?
                .unwrap_or(defaults.budget.percent),
            min_retry_concurrency: bounded(
                "spec.retries.budget.minRetryConcurrency",
                b.min_retry_concurrency,
                0,
                i64::from(u32::MAX),
            )?
            .unwrap_or(defaults.budget.min_retry_concurrency),
        },
    };
    Ok(Retries {
        attempts: bounded("spec.retries.attempts", raw.attempts, 0, 10)?
            .unwrap_or(defaults.attempts),
        per_try_timeout: positive_duration(
            "spec.retries.perTryTimeout",
            raw.per_try_timeout.as_deref(),
        )?,
        retry_on,
        retriable_status_codes,
        budget,
    })
}

fn connection_pool(raw: Option<RawConnectionPool>) -> Result<ConnectionPool, ModelErrorKind> {
    let Some(raw) = raw else {
        return Ok(ConnectionPool::default());
    };
    let max = i64::from(u32::MAX);
    Ok(ConnectionPool {
        max_connections: bounded(
            "spec.connectionPool.maxConnections",
            raw.max_connections,
            1,
            max,
        )?,
        max_pending_requests: bounded(
            "spec.connectionPool.maxPendingRequests",
            raw.max_pending_requests,
            1,
            max,
        )?,
        max_requests: bounded("spec.connectionPool.maxRequests", raw.max_requests, 1, max)?,
    })
}

fn outlier_detection(raw: Option<RawOutlierDetection>) -> Result<OutlierDetection, ModelErrorKind> {
    let defaults = OutlierDetection::default();
    let Some(raw) = raw else {
        return Ok(defaults);
    };
    let field = "spec.outlierDetection";
    Ok(OutlierDetection {
        consecutive_5xx: bounded(
            &format!("{field}.consecutive5xxErrors"),
            raw.consecutive_5xx_errors,
            1,
            i64::from(u32::MAX),
        )?
        .unwrap_or(defaults.consecutive_5xx),
        interval: positive_duration(&format!("{field}.interval"), raw.interval.as_deref())?
            .unwrap_or(defaults.interval),
        base_ejection_time: positive_duration(
            &format!("{field}.baseEjectionTime"),
            raw.base_ejection_time.as_deref(),
        )?
        .unwrap_or(defaults.base_ejection_time),
        max_ejection_percent: bounded(
            &format!("{field}.maxEjectionPercent"),
            raw.max_ejection_percent,
            0,
            100,
        )?
        .unwrap_or(defaults.max_ejection_percent),
    })
}

/// The policy as a document that [`parse_traffic_policy`] reads back unchanged
/// (defaults are written out).
pub(crate) fn render_traffic_policy(p: &TrafficPolicy) -> serde_json::Value {
    let mut lb = json!({});
    match &p.load_balancer {
        LoadBalancer::LeastRequest => lb["simple"] = json!("LEAST_REQUEST"),
        LoadBalancer::RoundRobin => lb["simple"] = json!("ROUND_ROBIN"),
        LoadBalancer::RingHash(key) => {
            lb["simple"] = json!("RING_HASH");
            lb["consistentHash"] = match key {
                HashKey::Header(h) => json!({"httpHeaderName": h}),
                HashKey::Cookie { name, path, ttl } => {
                    let mut c = json!({"name": name});
                    if let Some(path) = path {
                        c["path"] = json!(path);
                    }
                    if let Some(ttl) = ttl {
                        c["ttl"] = json!(format_duration(*ttl));
                    }
                    json!({"httpCookie": c})
                }
            };
        }
    }
    let mut timeouts = json!({});
    for (key, value) in [
        ("request", p.timeouts.request),
        ("connect", p.timeouts.connect),
        ("idle", p.timeouts.idle),
    ] {
        if let Some(d) = value {
            timeouts[key] = json!(format_duration(d));
        }
    }
    let r = &p.retries;
    let mut retry_on: Vec<String> = r
        .retry_on
        .iter()
        .filter(|c| *c != "retriable-status-codes" || r.retriable_status_codes.is_empty())
        .cloned()
        .collect();
    retry_on.extend(r.retriable_status_codes.iter().map(u32::to_string));
    let mut retries = json!({
        "attempts": r.attempts,
        "retryOn": retry_on,
        "budget": {"percent": r.budget.percent, "minRetryConcurrency": r.budget.min_retry_concurrency},
    });
    if let Some(d) = r.per_try_timeout {
        retries["perTryTimeout"] = json!(format_duration(d));
    }
    let mut pool = json!({});
    for (key, value) in [
        ("maxConnections", p.connection_pool.max_connections),
        ("maxPendingRequests", p.connection_pool.max_pending_requests),
        ("maxRequests", p.connection_pool.max_requests),
    ] {
        if let Some(v) = value {
            pool[key] = json!(v);
        }
    }
    let o = &p.outlier_detection;
    json!({
        "apiVersion": "mesh.io/v1alpha1", "kind": "TrafficPolicy",
        "metadata": {"name": p.name, "namespace": p.namespace},
        "spec": {
            "targetRef": {"kind": "Service", "name": p.service},
            "loadBalancer": lb,
            "timeouts": timeouts,
            "retries": retries,
            "connectionPool": pool,
            "outlierDetection": {
                "consecutive5xxErrors": o.consecutive_5xx,
                "interval": format_duration(o.interval),
                "baseEjectionTime": format_duration(o.base_ejection_time),
                "maxEjectionPercent": o.max_ejection_percent,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use crate::{
        HashKey, LoadBalancer, ModelError, Object, TrafficPolicy, parse_documents, render_documents,
    };
    use std::time::Duration;

    fn doc(spec: &str) -> String {
        format!(
            "apiVersion: mesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: tp, namespace: shop}}\nspec:\n{spec}"
        )
    }

    fn parse(spec: &str) -> Result<TrafficPolicy, ModelError> {
        let objects = parse_documents(&doc(spec), "mesh.yaml")?;
        match objects.into_iter().next() {
            Some(Object::TrafficPolicy(p)) => Ok(p),
            other => panic!("not a policy: {other:?}"),
        }
    }

    const FULL: &str = r#"
  targetRef: {kind: Service, name: catalog}
  loadBalancer:
    consistentHash: {httpCookie: {name: session, path: /, ttl: 1h}}
  timeouts: {request: 3s, connect: 250ms, idle: 5m}
  retries:
    attempts: 4
    perTryTimeout: 500ms
    retryOn: [5xx, reset, "503", "429"]
    budget: {percent: 10, minRetryConcurrency: 1}
  connectionPool: {maxConnections: 10, maxPendingRequests: 5, maxRequests: 20}
  outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 34}
"#;

    #[test]
    fn full_policy_parses_and_round_trips() {
        let p = parse(FULL).unwrap();
        assert_eq!(p.service, "catalog");
        assert_eq!(
            p.load_balancer,
            LoadBalancer::RingHash(HashKey::Cookie {
                name: "session".into(),
                path: Some("/".into()),
                ttl: Some(Duration::from_secs(3600)),
            })
        );
        assert_eq!(p.timeouts.request, Some(Duration::from_secs(3)));
        assert_eq!(p.retries.attempts, 4);
        assert_eq!(
            p.retries.retry_on,
            ["5xx", "reset", "retriable-status-codes"]
        );
        assert_eq!(p.retries.retriable_status_codes, [503, 429]);
        assert_eq!(p.retries.budget.min_retry_concurrency, 1);
        assert_eq!(p.connection_pool.max_requests, Some(20));
        assert_eq!(p.outlier_detection.consecutive_5xx, 3);
        assert_eq!(p.outlier_detection.max_ejection_percent, 34);
        let objects = vec![Object::TrafficPolicy(p)];
        let again = parse_documents(&render_documents(&objects), "rendered").unwrap();
        assert_eq!(again, objects);
    }

    #[test]
    fn absent_fields_take_the_defaults() {
        let p = parse("  targetRef: {name: catalog}\n").unwrap();
        assert_eq!(p.load_balancer, LoadBalancer::LeastRequest);
        assert_eq!(p.retries, crate::Retries::default());
        assert_eq!(p.outlier_detection, crate::OutlierDetection::default());
        assert_eq!(p.connection_pool, crate::ConnectionPool::default());
        let rr = parse("  targetRef: {name: catalog}\n  loadBalancer: {simple: ROUND_ROBIN}\n");
        assert_eq!(rr.unwrap().load_balancer, LoadBalancer::RoundRobin);
        let h = parse(
            "  targetRef: {name: c}\n  loadBalancer: {simple: RING_HASH, consistentHash: {httpHeaderName: X-User}}\n",
        );
        assert_eq!(
            h.unwrap().load_balancer,
            LoadBalancer::RingHash(HashKey::Header("x-user".into()))
        );
    }

    #[test]
    fn invalid_fields_are_named() {
        for (spec, field, reason) in [
            (
                "  loadBalancer: {simple: ROUND_ROBIN}\n",
                "spec.targetRef",
                "required",
            ),
            (
                "  targetRef: {name: Catalog}\n",
                "spec.targetRef.name",
                "lowercase",
            ),
            (
                "  targetRef: {kind: Pod, name: c}\n",
                "spec.targetRef.kind",
                "Service",
            ),
            (
                "  targetRef: {name: c}\n  loadBalancer: {simple: RANDOM}\n",
                "spec.loadBalancer.simple",
                "LEAST_REQUEST",
            ),
            (
                "  targetRef: {name: c}\n  loadBalancer: {simple: RING_HASH}\n",
                "spec.loadBalancer.consistentHash",
                "needs",
            ),
            (
                "  targetRef: {name: c}\n  loadBalancer: {simple: ROUND_ROBIN, consistentHash: {httpHeaderName: x}}\n",
                "spec.loadBalancer.simple",
                "RING_HASH",
            ),
            (
                "  targetRef: {name: c}\n  loadBalancer: {consistentHash: {httpHeaderName: x, httpCookie: {name: s}}}\n",
                "spec.loadBalancer.consistentHash",
                "exactly one",
            ),
            (
                "  targetRef: {name: c}\n  loadBalancer: {consistentHash: {httpCookie: {name: s, ttl: 1y}}}\n",
                "spec.loadBalancer.consistentHash.httpCookie.ttl",
                "duration",
            ),
            (
                "  targetRef: {name: c}\n  loadBalancer: {consistentHash: {httpCookie: {name: 'a;b'}}}\n",
                "spec.loadBalancer.consistentHash.httpCookie.name",
                "cookie name",
            ),
            (
                "  targetRef: {name: c}\n  timeouts: {request: soon}\n",
                "spec.timeouts.request",
                "duration",
            ),
            (
                "  targetRef: {name: c}\n  timeouts: {connect: 0s}\n",
                "spec.timeouts.connect",
                "more than 0",
            ),
            (
                "  targetRef: {name: c}\n  retries: {attempts: 11}\n",
                "spec.retries.attempts",
                "out of range",
            ),
            (
                "  targetRef: {name: c}\n  retries: {retryOn: [sometimes]}\n",
                "spec.retries.retryOn[0]",
                "status code",
            ),
            (
                "  targetRef: {name: c}\n  retries: {retryOn: [5xx, \"600\"]}\n",
                "spec.retries.retryOn[1]",
                "status code",
            ),
            (
                "  targetRef: {name: c}\n  retries: {budget: {percent: 101}}\n",
                "spec.retries.budget.percent",
                "out of range",
            ),
            (
                "  targetRef: {name: c}\n  connectionPool: {maxRequests: 0}\n",
                "spec.connectionPool.maxRequests",
                "out of range",
            ),
            (
                "  targetRef: {name: c}\n  outlierDetection: {maxEjectionPercent: 200}\n",
                "spec.outlierDetection.maxEjectionPercent",
                "out of range",
            ),
        ] {
            let e = parse(spec).unwrap_err();
            let text = e.to_string();
            assert!(
                text.starts_with("mesh.yaml: document 1 (TrafficPolicy/shop/tp): invalid "),
                "{spec}: {text}"
            );
            assert!(
                text.contains(field) && text.contains(reason),
                "{spec}: {text}"
            );
        }
        // Typos are errors, not silently ignored settings.
        let e = parse("  targetRef: {name: c}\n  retries: {attemps: 3}\n").unwrap_err();
        assert!(e.to_string().contains("attemps"), "{e}");
        let e = parse("  targetRef: {name: c}\n  retries: {budget: {minRetriesPerSecond: 3}}\n")
            .unwrap_err();
        assert!(e.to_string().contains("minRetriesPerSecond"), "{e}");
    }

    #[test]
    fn one_policy_per_service_and_weights_checked() {
        let two = format!(
            "{}---\n{}",
            doc("  targetRef: {name: c}\n"),
            doc("  targetRef: {name: c}\n").replace("name: tp", "name: tp2")
        );
        let e = parse_documents(&two, "mesh.yaml").unwrap_err();
        assert!(
            e.to_string()
                .contains("already has TrafficPolicy/shop/tp (document 1)"),
            "{e}"
        );
        let bad = "apiVersion: mesh.io/v1alpha1\nkind: Workload\nmetadata: {name: w, annotations: {mesh.io/endpoint-weight: \"0\"}}\nspec: {}\n";
        let e = parse_documents(bad, "mesh.yaml").unwrap_err();
        assert!(e.to_string().contains("1 to 128"), "{e}");
    }
}
