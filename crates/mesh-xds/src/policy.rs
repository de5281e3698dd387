//! TrafficPolicy → the Envoy fields that carry it: the Cluster's balancer,
//! circuit breakers (with the retry budget), outlier detection, connect and idle
//! timeouts, and the policy part of a RouteAction (timeout, retry policy, hash
//! policy).
//!
//! A service without a policy gets the same fields from the defaults, so Envoy,
//! proxyless gRPC and `mesh-proxy` all see one explicit configuration rather than
//! three different built-in defaults (Envoy's route timeout, for one, is 15 s;
//! the mesh's, like Istio's, is none).

use std::time::Duration as StdDuration;

use envoy_types::pb::envoy::config::cluster::v3::{
    CircuitBreakers, Cluster, LoadBalancingPolicy, OutlierDetection as EnvoyOutlierDetection,
    circuit_breakers::{Thresholds, thresholds::RetryBudget as EnvoyRetryBudget},
    cluster::{LbConfig, LbPolicy, RingHashLbConfig},
    load_balancing_policy::Policy,
};
use envoy_types::pb::envoy::config::core::v3::{
    HttpProtocolOptions as CommonHttpProtocolOptions, RoutingPriority, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::route::v3::{
    RetryPolicy, RouteAction,
    retry_policy::{RetryBackOff, RetryHostPredicate, retry_host_predicate},
    route_action::{
        HashPolicy,
        hash_policy::{Cookie, Header, PolicySpecifier},
    },
};
use envoy_types::pb::envoy::extensions::load_balancing_policies::{
    least_request::v3::LeastRequest, ring_hash::v3::RingHash, round_robin::v3::RoundRobin,
};
use envoy_types::pb::envoy::extensions::retry::host::previous_hosts::v3::PreviousHostsPredicate;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::explicit_http_config::ProtocolConfig,
    http_protocol_options::{ExplicitHttpConfig, UpstreamProtocolOptions},
};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Duration, UInt32Value, UInt64Value};
use mesh_model::traffic_defaults::{
    DEFAULT_CONNECT_TIMEOUT, DEFAULT_MIN_RING_SIZE, DEFAULT_RETRY_BACKOFF,
};
use mesh_model::{HashKey, LoadBalancer, TrafficPolicy};

use crate::any::pack;
use crate::resources::HTTP_PROTOCOL_OPTIONS;

/// Envoy's name of the retry host predicate that avoids hosts already tried.
pub const PREVIOUS_HOSTS_PREDICATE: &str = "envoy.retry_host_predicates.previous_hosts";
/// Retry back-off cap as a multiple of the base (Envoy's default: 10×).
pub const BACKOFF_MAX_FACTOR: u32 = 10;
/// How often a retry looks for a host not tried before (Istio's 5).
pub const HOST_SELECTION_ATTEMPTS: i64 = 5;

/// A protobuf duration.
pub fn duration(d: StdDuration) -> Duration {
    Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn uint32(v: u32) -> Option<UInt32Value> {
    Some(UInt32Value { value: v })
}

fn typed_policy<M: prost::Message + prost::Name>(name: &str, config: &M) -> Policy {
    Policy {
        typed_extension_config: Some(TypedExtensionConfig {
            name: name.into(),
            typed_config: Some(pack(config)),
        }),
    }
}

/// Sets a service cluster's policy fields from `policy` (defaults when `None`).
///
/// - `lb_policy`, plus `load_balancing_policy` listing the same algorithm first
///   and round robin after it: clients use the first entry they implement (gRFC
///   A52), so a gRPC client without least-request support falls back to round
///   robin instead of rejecting the cluster; Envoy and `mesh-proxy` take the first.
/// - `circuit_breakers.thresholds[0]` (DEFAULT priority): the limits, unlimited
///   (`u32::MAX`, as Istio sends) unless set, and always the retry budget.
/// - `outlier_detection`: consecutive 5xx (local-origin failures count, as with
///   Envoy's `split_external_local_origin_errors: false`); success-rate ejection,
///   on by default in Envoy, is switched off since the mesh does not do it.
/// - `connect_timeout` and the upstream idle timeout.
pub fn apply_cluster_policy(cluster: &mut Cluster, policy: Option<&TrafficPolicy>) {
    let default = TrafficPolicy::defaults();
    let p = policy.unwrap_or(&default);
    let (lb_policy, first) = match &p.load_balancer {
        LoadBalancer::LeastRequest => (
            LbPolicy::LeastRequest,
            typed_policy(
                "envoy.load_balancing_policies.least_request",
                &LeastRequest {
                    choice_count: uint32(2),
                    ..Default::default()
                },
            ),
        ),
        LoadBalancer::RoundRobin => (
            LbPolicy::RoundRobin,
            typed_policy(
                "envoy.load_balancing_policies.round_robin",
                &RoundRobin::default(),
            ),
        ),
        LoadBalancer::RingHash(_) => {
            cluster.lb_config = Some(LbConfig::RingHashLbConfig(RingHashLbConfig {
                minimum_ring_size: Some(UInt64Value {
                    value: DEFAULT_MIN_RING_SIZE,
                }),
                ..Default::default()
            }));
            (
                LbPolicy::RingHash,
                typed_policy(
                    "envoy.load_balancing_policies.ring_hash",
                    &RingHash {
                        minimum_ring_size: Some(UInt64Value {
                            value: DEFAULT_MIN_RING_SIZE,
                        }),
                        ..Default::default()
                    },
                ),
            )
        }
    };
    cluster.lb_policy = lb_policy as i32;
    let mut policies = vec![first];
    if lb_policy != LbPolicy::RoundRobin {
        policies.push(typed_policy(
            "envoy.load_balancing_policies.round_robin",
            &RoundRobin::default(),
        ));
    }
    cluster.load_balancing_policy = Some(LoadBalancingPolicy { policies });

    let limits = &p.connection_pool;
    let budget = &p.retries.budget;
    cluster.circuit_breakers = Some(CircuitBreakers {
        thresholds: vec![Thresholds {
            priority: RoutingPriority::Default as i32,
            max_connections: uint32(limits.max_connections.unwrap_or(u32::MAX)),
            max_pending_requests: uint32(limits.max_pending_requests.unwrap_or(u32::MAX)),
            max_requests: uint32(limits.max_requests.unwrap_or(u32::MAX)),
            // With a budget Envoy ignores max_retries; sent for older readers.
            max_retries: uint32(u32::MAX),
            retry_budget: Some(EnvoyRetryBudget {
                budget_percent: Some(Percent {
                    value: f64::from(budget.percent),
                }),
                min_retry_concurrency: uint32(budget.min_retry_concurrency),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    });

    let o = &p.outlier_detection;
    cluster.outlier_detection = Some(EnvoyOutlierDetection {
        consecutive_5xx: uint32(o.consecutive_5xx),
        enforcing_consecutive_5xx: uint32(100),
        interval: Some(duration(o.interval)),
        base_ejection_time: Some(duration(o.base_ejection_time)),
        max_ejection_percent: uint32(o.max_ejection_percent),
        enforcing_success_rate: uint32(0),
        ..Default::default()
    });

    cluster.connect_timeout = Some(duration(
        p.timeouts.connect.unwrap_or(DEFAULT_CONNECT_TIMEOUT),
    ));
    if let Some(idle) = p.timeouts.idle {
        set_idle_timeout(cluster, idle);
    }
}

/// Puts the idle timeout into the cluster's upstream HTTP protocol options,
/// creating them (HTTP/1.1, as without options) when the cluster has none.
fn set_idle_timeout(cluster: &mut Cluster, idle: StdDuration) {
    let mut options = cluster
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
        .and_then(|any| crate::any::unpack::<HttpProtocolOptions>(any).ok())
        .unwrap_or_else(|| HttpProtocolOptions {
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::HttpProtocolOptions(Default::default())),
                },
            )),
            ..Default::default()
        });
    options.common_http_protocol_options = Some(CommonHttpProtocolOptions {
        idle_timeout: Some(duration(idle)),
        ..Default::default()
    });
    cluster
        .typed_extension_protocol_options
        .insert(HTTP_PROTOCOL_OPTIONS.to_string(), pack(&options));
}

/// The policy part of a RouteAction for a service port: what every route to the
/// service starts from. HTTPRoute rules override `timeout`/`retry_policy` with
/// their own and keep the rest.
#[derive(Debug, Clone, PartialEq)]
pub struct RoutePolicy {
    /// Whole-request timeout; zero means none (always sent: Envoy's default is 15 s).
    pub timeout: StdDuration,
    /// Retries; `None` when the policy turns them off (attempts 0).
    pub retry_policy: Option<RetryPolicy>,
    /// What a RING_HASH cluster hashes.
    pub hash_policy: Vec<HashPolicy>,
}

impl RoutePolicy {
    /// Writes the policy into `action`.
    pub fn apply(&self, action: &mut RouteAction) {
        action.timeout = Some(duration(self.timeout));
        action.retry_policy = self.retry_policy.clone();
        action.hash_policy = self.hash_policy.clone();
    }
}

/// The RouteAction policy of a service with `policy` (defaults when `None`).
///
/// Retries follow Istio's translation: `retry_on` conditions with status codes
/// moved to `retriable_status_codes`, a 25 ms base back-off capped at 10× it,
/// and the `previous_hosts` predicate so a retry goes to another endpoint when
/// there is one.
pub fn route_policy(policy: Option<&TrafficPolicy>) -> RoutePolicy {
    let default = TrafficPolicy::defaults();
    let p = policy.unwrap_or(&default);
    let r = &p.retries;
    let retry_policy = (r.attempts > 0).then(|| RetryPolicy {
        retry_on: r.retry_on.join(","),
        num_retries: uint32(r.attempts),
        per_try_timeout: r.per_try_timeout.map(duration),
        retriable_status_codes: r.retriable_status_codes.clone(),
        retry_back_off: Some(RetryBackOff {
            base_interval: Some(duration(DEFAULT_RETRY_BACKOFF)),
            max_interval: Some(duration(DEFAULT_RETRY_BACKOFF * BACKOFF_MAX_FACTOR)),
        }),
        retry_host_predicate: vec![RetryHostPredicate {
            name: PREVIOUS_HOSTS_PREDICATE.into(),
            config_type: Some(retry_host_predicate::ConfigType::TypedConfig(pack(
                &PreviousHostsPredicate::default(),
            ))),
        }],
        host_selection_retry_max_attempts: HOST_SELECTION_ATTEMPTS,
        ..Default::default()
    });
    let hash_policy = match &p.load_balancer {
        LoadBalancer::RingHash(HashKey::Header(name)) => vec![HashPolicy {
            policy_specifier: Some(PolicySpecifier::Header(Header {
                header_name: name.clone(),
                ..Default::default()
            })),
            terminal: false,
        }],
        LoadBalancer::RingHash(HashKey::Cookie { name, path, ttl }) => vec![HashPolicy {
            policy_specifier: Some(PolicySpecifier::Cookie(Cookie {
                name: name.clone(),
                ttl: ttl.map(duration),
                path: path.clone().unwrap_or_default(),
                ..Default::default()
            })),
            terminal: false,
        }],
        _ => Vec::new(),
    };
    RoutePolicy {
        timeout: p.timeouts.request.unwrap_or_default(),
        retry_policy,
        hash_policy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
    use mesh_model::{Object, parse_documents};

    fn policy(spec: &str) -> TrafficPolicy {
        let text = format!(
            "apiVersion: mesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: p}}\nspec:\n  targetRef: {{name: s}}\n{spec}"
        );
        match parse_documents(&text, "t").unwrap().remove(0) {
            Object::TrafficPolicy(p) => p,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn defaults_are_explicit() {
        let mut c = Cluster::default();
        apply_cluster_policy(&mut c, None);
        assert_eq!(c.lb_policy, LbPolicy::LeastRequest as i32);
        let names: Vec<_> = c
            .load_balancing_policy
            .as_ref()
            .unwrap()
            .policies
            .iter()
            .map(|p| p.typed_extension_config.as_ref().unwrap().name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "envoy.load_balancing_policies.least_request",
                "envoy.load_balancing_policies.round_robin"
            ],
            "gRPC clients without least request fall back to round robin"
        );
        let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
        assert_eq!(t.max_requests.as_ref().unwrap().value, u32::MAX);
        let budget = t.retry_budget.as_ref().unwrap();
        assert_eq!(budget.budget_percent.as_ref().unwrap().value, 20.0);
        assert_eq!(budget.min_retry_concurrency.as_ref().unwrap().value, 3);
        let o = c.outlier_detection.as_ref().unwrap();
        assert_eq!(o.consecutive_5xx.as_ref().unwrap().value, 5);
        assert_eq!(o.base_ejection_time.as_ref().unwrap().seconds, 30);
        assert_eq!(o.max_ejection_percent.as_ref().unwrap().value, 50);
        assert_eq!(o.enforcing_success_rate.as_ref().unwrap().value, 0);
        assert_eq!(c.connect_timeout.as_ref().unwrap().seconds, 1);
        assert!(c.typed_extension_protocol_options.is_empty());

        let r = route_policy(None);
        assert_eq!(r.timeout, StdDuration::ZERO, "no timeout, as in Istio");
        let retry = r.retry_policy.unwrap();
        assert_eq!(
            retry.retry_on,
            "connect-failure,refused-stream,reset,retriable-status-codes"
        );
        assert_eq!(retry.retriable_status_codes, [503]);
        assert_eq!(retry.num_retries.unwrap().value, 2);
        let backoff = retry.retry_back_off.unwrap();
        assert_eq!(backoff.base_interval.unwrap().nanos, 25_000_000);
        assert_eq!(backoff.max_interval.unwrap().nanos, 250_000_000);
        assert!(r.hash_policy.is_empty());
    }

    #[test]
    fn a_policy_sets_every_field() {
        let p = policy(
            "  loadBalancer: {consistentHash: {httpCookie: {name: sid, path: /, ttl: 30s}}}\n  timeouts: {request: 1500ms, connect: 200ms, idle: 90s}\n  retries: {attempts: 3, perTryTimeout: 100ms, retryOn: [5xx, \"429\"], budget: {percent: 50, minRetryConcurrency: 0}}\n  connectionPool: {maxConnections: 1, maxPendingRequests: 2, maxRequests: 3}\n  outlierDetection: {consecutive5xxErrors: 2, interval: 1s, baseEjectionTime: 5s, maxEjectionPercent: 100}\n",
        );
        let mut c = crate::resources::service_cluster("s:80", false);
        apply_cluster_policy(&mut c, Some(&p));
        assert_eq!(c.lb_policy, LbPolicy::RingHash as i32);
        assert!(matches!(c.lb_config, Some(LbConfig::RingHashLbConfig(_))));
        let t = &c.circuit_breakers.as_ref().unwrap().thresholds[0];
        let limits: Vec<u32> = [&t.max_connections, &t.max_pending_requests, &t.max_requests]
            .iter()
            .map(|v| v.as_ref().unwrap().value)
            .collect();
        assert_eq!(limits, [1, 2, 3]);
        assert_eq!(c.connect_timeout.as_ref().unwrap().nanos, 200_000_000);
        let options: HttpProtocolOptions =
            crate::any::unpack(&c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS]).unwrap();
        let common = options.common_http_protocol_options.unwrap();
        assert_eq!(common.idle_timeout.unwrap().seconds, 90);
        assert!(matches!(
            options.upstream_protocol_options,
            Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(ProtocolConfig::HttpProtocolOptions(_))
                }
            ))
        ));

        let r = route_policy(Some(&p));
        assert_eq!(r.timeout, StdDuration::from_millis(1500));
        let retry = r.retry_policy.clone().unwrap();
        assert_eq!(retry.retry_on, "5xx,retriable-status-codes");
        assert_eq!(retry.retriable_status_codes, [429]);
        assert_eq!(retry.per_try_timeout.unwrap().nanos, 100_000_000);
        let Some(PolicySpecifier::Cookie(cookie)) = &r.hash_policy[0].policy_specifier else {
            panic!("cookie hash")
        };
        assert_eq!((cookie.name.as_str(), cookie.path.as_str()), ("sid", "/"));
        assert_eq!(cookie.ttl.unwrap().seconds, 30);
        let mut action = RouteAction::default();
        r.apply(&mut action);
        assert_eq!(action.retry_policy, Some(retry));
    }
}
