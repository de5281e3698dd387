//! The policy fields of Clusters and RouteActions → what the proxy enforces.
//!
//! Strict like the rest of decoding: a balancer, retry condition, host predicate
//! or hash policy the proxy does not implement is an error (the resource is
//! NACKed with the reason). Absent fields mean what they mean to Envoy (1024 for
//! each circuit breaker, a 15 s route timeout, one retry), so a control plane
//! other than ours gets Envoy's behaviour, not a surprise.

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{LbConfig, LbPolicy};
use envoy_types::pb::envoy::config::core::v3::RoutingPriority;
use envoy_types::pb::envoy::config::route::v3::RouteAction;
use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
use envoy_types::pb::envoy::extensions::load_balancing_policies::{
    least_request::v3::LeastRequest, ring_hash::v3::RingHash, round_robin::v3::RoundRobin,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::Duration as PbDuration;
use mesh_xds::policy::PREVIOUS_HOSTS_PREDICATE;
use mesh_xds::resources::HTTP_PROTOCOL_OPTIONS;
use prost::Name;
use serde::Serialize;

/// Envoy's default for each circuit-breaker limit.
const ENVOY_DEFAULT_LIMIT: u32 = 1024;
/// Envoy's default concurrent retries when no budget is given.
const ENVOY_DEFAULT_MAX_RETRIES: u32 = 3;
/// Envoy's default route timeout when a route does not set one.
const ENVOY_DEFAULT_ROUTE_TIMEOUT: Duration = Duration::from_secs(15);
/// Envoy's default first back-off.
const ENVOY_DEFAULT_BACKOFF: Duration = Duration::from_millis(25);
/// Envoy's ring size bounds.
const RING_SIZE_BOUNDS: (u64, u64) = (1024, 8 * 1024 * 1024);

/// How a cluster picks endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LbKind {
    /// Power of two choices over peak-EWMA latency × requests in flight.
    LeastRequest,
    /// Weighted round robin.
    RoundRobin,
    /// The cluster decides the endpoint itself (ORIGINAL_DST: the connection's
    /// original destination); no balancer picks.
    ClusterProvided,
    /// Consistent hashing on the route's hash policy.
    RingHash {
        /// Fewest points on the ring.
        min_ring_size: u64,
    },
}

/// Circuit-breaking limits of one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Upstream connections (enforced for HTTP/1.1 upstreams, where each request
    /// in flight holds one).
    pub max_connections: u32,
    /// Requests waiting for a connection.
    pub max_pending_requests: u32,
    /// Requests in flight.
    pub max_requests: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: ENVOY_DEFAULT_LIMIT,
            max_pending_requests: ENVOY_DEFAULT_LIMIT,
            max_requests: ENVOY_DEFAULT_LIMIT,
        }
    }
}

/// Envoy's retry budget: retries in flight ≤ max(`min_concurrency`,
/// `percent` % of requests in flight). Without a budget, Envoy's `max_retries`
/// is the plain cap: `percent` 0 and `min_concurrency` = max_retries.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RetryBudget {
    /// Share of requests in flight that may be retries, in percent.
    pub percent: f64,
    /// Retries in flight always allowed.
    pub min_concurrency: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: 0.0,
            min_concurrency: ENVOY_DEFAULT_MAX_RETRIES,
        }
    }
}

/// Consecutive-5xx outlier detection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutlierSpec {
    /// Consecutive failures (5xx, connect failures, resets) that eject.
    pub consecutive_5xx: u32,
    /// Percent chance an ejection is enforced when due (Envoy's
    /// `enforcing_consecutive_5xx`).
    pub enforcing_percent: u32,
    /// A healthy interval lowers an endpoint's ejection count by one.
    pub interval: Duration,
    /// First ejection time; the n-th ejection lasts n × this.
    pub base_ejection_time: Duration,
    /// Longest ejection.
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, in percent (at least one, never all).
    pub max_ejection_percent: u32,
}

/// The policy half of a decoded cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterPolicy {
    /// Balancer.
    pub lb: LbKind,
    /// Circuit breakers.
    pub limits: Limits,
    /// Retry budget.
    pub retry_budget: RetryBudget,
    /// Outlier detection; `None` when off.
    pub outlier: Option<OutlierSpec>,
    /// Idle timeout of upstream connections, when set.
    pub idle_timeout: Option<Duration>,
}

fn std_duration(d: &PbDuration) -> Duration {
    if d.seconds < 0 || d.nanos < 0 {
        return Duration::ZERO;
    }
    Duration::new(d.seconds as u64, d.nanos as u32)
}

fn lb_from_extension(
    any: &envoy_types::pb::google::protobuf::Any,
) -> Option<Result<LbKind, String>> {
    let url = any.type_url.as_str();
    if url == LeastRequest::type_url() {
        let lr: LeastRequest = match mesh_xds::any::unpack(any) {
            Ok(lr) => lr,
            Err(e) => return Some(Err(e.to_string())),
        };
        if lr.choice_count.is_some_and(|c| c.value != 2) {
            return Some(Err(
                "least_request choice_count other than 2 is not supported".into(),
            ));
        }
        Some(Ok(LbKind::LeastRequest))
    } else if url == RoundRobin::type_url() {
        Some(Ok(LbKind::RoundRobin))
    } else if url == RingHash::type_url() {
        let rh: RingHash = match mesh_xds::any::unpack(any) {
            Ok(rh) => rh,
            Err(e) => return Some(Err(e.to_string())),
        };
        Some(ring_size(rh.minimum_ring_size.map(|v| v.value)))
    } else {
        None
    }
}

fn ring_size(min: Option<u64>) -> Result<LbKind, String> {
    let min = min.unwrap_or(RING_SIZE_BOUNDS.0);
    if min > RING_SIZE_BOUNDS.1 {
        return Err(format!(
            "ring minimum_ring_size {min} is over {}",
            RING_SIZE_BOUNDS.1
        ));
    }
    Ok(LbKind::RingHash { min_ring_size: min })
}

/// Decodes the policy fields of `c`.
pub fn cluster_policy(c: &Cluster) -> Result<ClusterPolicy, String> {
    // The typed list wins when present (as in Envoy and gRPC): its first entry
    // the proxy implements.
    let lb = match &c.load_balancing_policy {
        Some(list) if !list.policies.is_empty() => list
            .policies
            .iter()
            .filter_map(|p| p.typed_extension_config.as_ref()?.typed_config.as_ref())
            .find_map(lb_from_extension)
            .unwrap_or_else(|| Err("no load_balancing_policy entry is supported".into()))?,
        _ => match LbPolicy::try_from(c.lb_policy) {
            Ok(LbPolicy::LeastRequest) => LbKind::LeastRequest,
            Ok(LbPolicy::RoundRobin) => LbKind::RoundRobin,
            Ok(LbPolicy::ClusterProvided) => LbKind::ClusterProvided,
            Ok(LbPolicy::RingHash) => ring_size(match &c.lb_config {
                Some(LbConfig::RingHashLbConfig(r)) => r.minimum_ring_size.map(|v| v.value),
                _ => None,
            })?,
            Ok(other) => {
                return Err(format!(
                    "lb_policy {} is not supported",
                    other.as_str_name()
                ));
            }
            Err(_) => return Err(format!("unknown lb_policy {}", c.lb_policy)),
        },
    };
    let mut limits = Limits::default();
    let mut retry_budget = RetryBudget::default();
    if let Some(cb) = &c.circuit_breakers {
        // Requests have no priority here: the DEFAULT thresholds are the limits.
        if let Some(t) = cb
            .thresholds
            .iter()
            .find(|t| t.priority == RoutingPriority::Default as i32)
        {
            let get = |v: &Option<envoy_types::pb::google::protobuf::UInt32Value>| {
                v.as_ref().map_or(ENVOY_DEFAULT_LIMIT, |v| v.value)
            };
            limits = Limits {
                max_connections: get(&t.max_connections),
                max_pending_requests: get(&t.max_pending_requests),
                max_requests: get(&t.max_requests),
            };
            retry_budget = match &t.retry_budget {
                Some(b) => RetryBudget {
                    // Envoy's defaults when the budget message is empty: 20% and 3.
                    percent: b.budget_percent.as_ref().map_or(20.0, |p| p.value),
                    min_concurrency: b.min_retry_concurrency.as_ref().map_or(3, |v| v.value),
                },
                None => RetryBudget {
                    percent: 0.0,
                    min_concurrency: t
                        .max_retries
                        .as_ref()
                        .map_or(ENVOY_DEFAULT_MAX_RETRIES, |v| v.value),
                },
            };
            if !(0.0..=100.0).contains(&retry_budget.percent) {
                return Err(format!(
                    "retry budget percent {} is outside 0-100",
                    retry_budget.percent
                ));
            }
        }
    }
    let outlier = match &c.outlier_detection {
        None => None,
        Some(o) => {
            if o.split_external_local_origin_errors {
                return Err(
                    "outlier detection with split local-origin errors is not supported".into(),
                );
            }
            let d = |v: &Option<PbDuration>, default: Duration| {
                v.as_ref().map_or(default, std_duration)
            };
            let base = d(&o.base_ejection_time, Duration::from_secs(30));
            Some(OutlierSpec {
                consecutive_5xx: o.consecutive_5xx.as_ref().map_or(5, |v| v.value.max(1)),
                enforcing_percent: o
                    .enforcing_consecutive_5xx
                    .as_ref()
                    .map_or(100, |v| v.value.min(100)),
                interval: d(&o.interval, Duration::from_secs(10)).max(Duration::from_millis(1)),
                base_ejection_time: base,
                max_ejection_time: d(&o.max_ejection_time, Duration::from_secs(300)).max(base),
                max_ejection_percent: o
                    .max_ejection_percent
                    .as_ref()
                    .map_or(10, |v| v.value.min(100)),
            })
        }
    };
    let idle_timeout = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        .and_then(|any| mesh_xds::any::unpack::<HttpProtocolOptions>(any).ok())
        .and_then(|o| o.common_http_protocol_options)
        .and_then(|o| o.idle_timeout)
        .map(|d| std_duration(&d));
    Ok(ClusterPolicy {
        lb,
        limits,
        retry_budget,
        outlier,
        idle_timeout,
    })
}

/// Retry conditions (Envoy's `retry_on` names).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetryOn {
    /// Any 5xx, and also connect failures, resets and per-try timeouts.
    pub five_xx: bool,
    /// 502, 503, 504, and also connect failures and resets.
    pub gateway_error: bool,
    /// The connection or stream broke before a response.
    pub reset: bool,
    /// No connection could be made.
    pub connect_failure: bool,
    /// The peer refused the HTTP/2 stream (nothing was processed).
    pub refused_stream: bool,
    /// 409.
    pub retriable_4xx: bool,
    /// The listed status codes.
    pub status_codes: bool,
}

/// A route's retry policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RetrySpec {
    /// Conditions.
    pub on: RetryOn,
    /// Codes for `retriable-status-codes`.
    pub codes: Vec<u16>,
    /// Retries after the first attempt.
    pub num_retries: u32,
    /// Timeout of each attempt.
    pub per_try_timeout: Option<Duration>,
    /// First back-off.
    pub backoff_base: Duration,
    /// Longest back-off.
    pub backoff_max: Duration,
    /// Whether a retry should avoid endpoints already tried.
    pub avoid_previous_hosts: bool,
}

/// What a consistent-hash balancer hashes for a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HashOn {
    /// A request header (lowercase name).
    Header(String),
    /// A cookie; with `ttl`, generated when the request has none.
    Cookie {
        /// Cookie name.
        name: String,
        /// Lifetime of a generated cookie.
        ttl: Option<Duration>,
        /// Path attribute of a generated cookie.
        path: String,
    },
}

/// One hash policy entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HashPolicySpec {
    /// What to hash.
    pub on: HashOn,
    /// Stop at this entry when it produced a hash.
    pub terminal: bool,
}

/// The policy half of a route.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct RoutePolicySpec {
    /// Whole-request timeout; `None`: none.
    pub timeout: Option<Duration>,
    /// Retries; `None`: none.
    pub retry: Option<RetrySpec>,
    /// Hash policies, in order.
    pub hash: Vec<HashPolicySpec>,
}

fn retry_on(text: &str) -> Result<RetryOn, String> {
    let mut on = RetryOn::default();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match item {
            "5xx" => on.five_xx = true,
            "gateway-error" => on.gateway_error = true,
            "reset" => on.reset = true,
            "connect-failure" => on.connect_failure = true,
            "refused-stream" => on.refused_stream = true,
            "retriable-4xx" => on.retriable_4xx = true,
            "retriable-status-codes" => on.status_codes = true,
            other => return Err(format!("retry condition {other:?} is not supported")),
        }
    }
    Ok(on)
}

/// Decodes the policy fields of a route's action.
pub fn route_policy(a: &RouteAction) -> Result<RoutePolicySpec, String> {
    let timeout = match &a.timeout {
        None => Some(ENVOY_DEFAULT_ROUTE_TIMEOUT),
        Some(d) => Some(std_duration(d)).filter(|d| !d.is_zero()),
    };
    let retry = match &a.retry_policy {
        None => None,
        Some(r) => {
            if r.retry_priority.is_some()
                || !r.retriable_headers.is_empty()
                || !r.retriable_request_headers.is_empty()
                || r.rate_limited_retry_back_off.is_some()
                || !r.retry_options_predicates.is_empty()
            {
                return Err("retry priorities, header conditions and rate-limited back-off are not supported".into());
            }
            for p in &r.retry_host_predicate {
                if p.name != PREVIOUS_HOSTS_PREDICATE {
                    return Err(format!(
                        "retry host predicate {:?} is not supported",
                        p.name
                    ));
                }
            }
            let base = r
                .retry_back_off
                .as_ref()
                .and_then(|b| b.base_interval.as_ref())
                .map_or(ENVOY_DEFAULT_BACKOFF, std_duration);
            if base.is_zero() {
                return Err("retry back-off base_interval must be more than 0".into());
            }
            let max = r
                .retry_back_off
                .as_ref()
                .and_then(|b| b.max_interval.as_ref())
                .map_or(base * 10, std_duration);
            if max < base {
                return Err("retry back-off max_interval is below base_interval".into());
            }
            let mut codes = Vec::with_capacity(r.retriable_status_codes.len());
            for &c in &r.retriable_status_codes {
                codes.push(
                    u16::try_from(c)
                        .ok()
                        .filter(|c| (100..=599).contains(c))
                        .ok_or_else(|| {
                            format!("retriable status code {c} is not an HTTP status")
                        })?,
                );
            }
            Some(RetrySpec {
                on: retry_on(&r.retry_on)?,
                codes,
                num_retries: r.num_retries.as_ref().map_or(1, |n| n.value),
                per_try_timeout: r
                    .per_try_timeout
                    .as_ref()
                    .map(std_duration)
                    .filter(|d| !d.is_zero()),
                backoff_base: base,
                backoff_max: max,
                avoid_previous_hosts: !r.retry_host_predicate.is_empty(),
            })
        }
    };
    let mut hash = Vec::with_capacity(a.hash_policy.len());
    for h in &a.hash_policy {
        let on = match &h.policy_specifier {
            Some(PolicySpecifier::Header(header)) => {
                if header.regex_rewrite.is_some() {
                    return Err("hash policy header regex_rewrite is not supported".into());
                }
                HashOn::Header(header.header_name.to_ascii_lowercase())
            }
            Some(PolicySpecifier::Cookie(c)) => {
                if !c.attributes.is_empty() {
                    return Err("hash policy cookie attributes are not supported".into());
                }
                HashOn::Cookie {
                    name: c.name.clone(),
                    ttl: c.ttl.as_ref().map(std_duration),
                    path: c.path.clone(),
                }
            }
            _ => return Err("only header and cookie hash policies are supported".into()),
        };
        hash.push(HashPolicySpec {
            on,
            terminal: h.terminal,
        });
    }
    Ok(RoutePolicySpec {
        timeout,
        retry,
        hash,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_xds::policy::{apply_cluster_policy, route_policy as xds_route_policy};

    #[test]
    fn what_the_controller_sends_decodes_to_the_same_meaning() {
        let mut c = Cluster::default();
        apply_cluster_policy(&mut c, None);
        let p = cluster_policy(&c).unwrap();
        assert_eq!(p.lb, LbKind::LeastRequest);
        assert_eq!(p.limits.max_requests, u32::MAX);
        assert_eq!(p.retry_budget.percent, 20.0);
        assert_eq!(p.retry_budget.min_concurrency, 3);
        let o = p.outlier.unwrap();
        assert_eq!((o.consecutive_5xx, o.max_ejection_percent), (5, 50));
        assert_eq!(o.base_ejection_time, Duration::from_secs(30));

        let mut a = RouteAction::default();
        xds_route_policy(None).apply(&mut a);
        let r = route_policy(&a).unwrap();
        assert_eq!(r.timeout, None, "0s is no timeout");
        let retry = r.retry.unwrap();
        assert!(retry.on.connect_failure && retry.on.refused_stream && retry.on.reset);
        assert!(retry.on.status_codes && !retry.on.five_xx);
        assert_eq!(retry.codes, [503]);
        assert_eq!(retry.num_retries, 2);
        assert!(retry.avoid_previous_hosts);
    }

    #[test]
    fn envoy_defaults_fill_absent_fields() {
        let c = Cluster {
            lb_policy: LbPolicy::RoundRobin as i32,
            ..Default::default()
        };
        let p = cluster_policy(&c).unwrap();
        assert_eq!(p.lb, LbKind::RoundRobin);
        assert_eq!(p.limits, Limits::default());
        assert_eq!(p.retry_budget.min_concurrency, 3);
        assert!(p.outlier.is_none());
        let r = route_policy(&RouteAction::default()).unwrap();
        assert_eq!(r.timeout, Some(Duration::from_secs(15)), "Envoy's default");
        let passthrough = Cluster {
            lb_policy: LbPolicy::ClusterProvided as i32,
            ..Default::default()
        };
        assert_eq!(
            cluster_policy(&passthrough).unwrap().lb,
            LbKind::ClusterProvided
        );
    }

    #[test]
    fn what_the_proxy_cannot_honour_is_refused() {
        let c = Cluster {
            lb_policy: LbPolicy::Maglev as i32,
            ..Default::default()
        };
        assert!(cluster_policy(&c).unwrap_err().contains("MAGLEV"));
        let mut a = RouteAction::default();
        xds_route_policy(None).apply(&mut a);
        a.retry_policy.as_mut().unwrap().retry_on = "5xx,envoy-ratelimited".into();
        assert!(route_policy(&a).unwrap_err().contains("envoy-ratelimited"));
        let mut a = RouteAction::default();
        a.hash_policy.push(Default::default());
        assert!(route_policy(&a).unwrap_err().contains("header and cookie"));
    }
}
