//! `TrafficPolicy` (mesh.io/v1alpha1): how callers reach one Service — load
//! balancing, timeouts, retries, circuit breaking and outlier detection.
//!
//! The shape follows the CRD in `deploy/kubernetes/10-crds.yaml`; the meaning of
//! every field is Envoy's (Istio's DestinationRule/VirtualService translate to the
//! same Cluster and RouteAction fields), so a policy means the same to Envoy, to
//! proxyless gRPC and to `mesh-proxy`. Absent fields take the defaults below,
//! which are also what a service without any policy gets.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default connect timeout to an endpoint.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default number of retries (Istio's default: 2).
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;
/// Default retry conditions (Istio's default set, with status 503).
pub const DEFAULT_RETRY_ON: [&str; 5] = [
    "connect-failure",
    "refused-stream",
    "reset",
    "retriable-status-codes",
    "503",
];
/// Default first retry back-off (Envoy's 25 ms).
pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_millis(25);
/// Default retry budget: retries may be at most this percent of requests in flight.
pub const DEFAULT_BUDGET_PERCENT: u32 = 20;
/// Default retry budget floor: this many concurrent retries are always allowed.
pub const DEFAULT_MIN_RETRY_CONCURRENCY: u32 = 3;
/// Default consecutive 5xx (or connect failures) that eject an endpoint.
pub const DEFAULT_CONSECUTIVE_5XX: u32 = 5;
/// Default outlier detection interval.
pub const DEFAULT_OUTLIER_INTERVAL: Duration = Duration::from_secs(10);
/// Default base ejection time (multiplied by the number of ejections).
pub const DEFAULT_BASE_EJECTION_TIME: Duration = Duration::from_secs(30);
/// Default share of a cluster's endpoints that may be ejected at once.
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;
/// Default minimum number of points on a hash ring (Envoy's 1024).
pub const DEFAULT_MIN_RING_SIZE: u64 = 1024;

/// A TrafficPolicy for one Service in the policy's namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrafficPolicy {
    /// The policy's name.
    pub name: String,
    /// Its namespace, which is also the target Service's.
    pub namespace: String,
    /// The Service it applies to (`spec.targetRef.name`).
    pub service: String,
    /// How endpoints are picked.
    #[serde(default)]
    pub load_balancer: LoadBalancer,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Retries (absent: [`Retries::default`]).
    #[serde(default)]
    pub retries: Retries,
    /// Circuit-breaking limits per cluster.
    #[serde(default)]
    pub connection_pool: ConnectionPool,
    /// Ejection of failing endpoints.
    #[serde(default)]
    pub outlier_detection: OutlierDetection,
}

impl TrafficPolicy {
    /// What a service without a policy gets: every field at its default.
    pub fn defaults() -> TrafficPolicy {
        TrafficPolicy {
            name: String::new(),
            namespace: String::new(),
            service: String::new(),
            load_balancer: LoadBalancer::default(),
            timeouts: Timeouts::default(),
            retries: Retries::default(),
            connection_pool: ConnectionPool::default(),
            outlier_detection: OutlierDetection::default(),
        }
    }
}

/// The load-balancing algorithm.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalancer {
    /// Power of two choices over peak-EWMA latency × requests in flight.
    #[default]
    LeastRequest,
    /// Weighted round robin.
    RoundRobin,
    /// Consistent hashing on a request attribute.
    RingHash(HashKey),
}

/// What a consistent-hash balancer hashes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HashKey {
    /// The value of this request header.
    Header(String),
    /// A cookie: sticky sessions. With a `ttl`, the proxy sets the cookie on
    /// responses to requests that had none.
    Cookie {
        /// Cookie name.
        name: String,
        /// Cookie path attribute.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<String>,
        /// Cookie lifetime; `None`: never generated, only read.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl: Option<Duration>,
    },
}

/// Timeouts; `None` takes the default.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// The whole request, retries included; `None` or zero: no timeout (as in
    /// Istio, rather than Envoy's 15 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Duration>,
    /// TCP connect to an endpoint ([`DEFAULT_CONNECT_TIMEOUT`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect: Option<Duration>,
    /// How long an idle upstream connection is kept (Envoy's default, 1 h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<Duration>,
}

/// Retries of failed requests.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retries {
    /// Retries after the first attempt (0 turns retries off).
    pub attempts: u32,
    /// Timeout of each attempt; `None`: only the request timeout applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<Duration>,
    /// Envoy retry conditions (`5xx`, `gateway-error`, `reset`, `connect-failure`,
    /// `refused-stream`, `retriable-4xx`, `retriable-status-codes`).
    pub retry_on: Vec<String>,
    /// Status codes retried (Envoy's `retriable_status_codes`).
    pub retriable_status_codes: Vec<u32>,
    /// The retry budget.
    pub budget: RetryBudget,
}

impl Default for Retries {
    fn default() -> Self {
        let (retry_on, codes) = split_retry_on(DEFAULT_RETRY_ON.iter().copied());
        Retries {
            attempts: DEFAULT_RETRY_ATTEMPTS,
            per_try_timeout: None,
            retry_on,
            retriable_status_codes: codes,
            budget: RetryBudget::default(),
        }
    }
}

/// Splits user-facing retry conditions into Envoy's `retry_on` names and status
/// codes; a code implies `retriable-status-codes`, as in Istio.
pub fn split_retry_on<'a>(items: impl IntoIterator<Item = &'a str>) -> (Vec<String>, Vec<u32>) {
    let mut on: Vec<String> = Vec::new();
    let mut codes = Vec::new();
    for item in items {
        match item.parse::<u32>() {
            Ok(code) => {
                if !codes.contains(&code) {
                    codes.push(code);
                }
                if !on.iter().any(|c| c == "retriable-status-codes") {
                    on.push("retriable-status-codes".into());
                }
            }
            Err(_) if !on.iter().any(|c| c == item) => on.push(item.to_string()),
            Err(_) => {}
        }
    }
    (on, codes)
}

/// Envoy's retry budget: retries in flight ≤ max(`min_retry_concurrency`,
/// `percent` % of requests in flight), so retries can add at most that much load
/// to a failing service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryBudget {
    /// Share of requests in flight that may be retries.
    pub percent: u32,
    /// Concurrent retries always allowed, so low traffic can still retry.
    pub min_retry_concurrency: u32,
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget {
            percent: DEFAULT_BUDGET_PERCENT,
            min_retry_concurrency: DEFAULT_MIN_RETRY_CONCURRENCY,
        }
    }
}

/// Circuit-breaking limits per cluster; `None` is unlimited (Istio's default).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionPool {
    /// Upstream connections.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
}

/// Outlier detection: consecutive 5xx responses (connect failures and resets
/// count as 5xx) eject an endpoint for `base_ejection_time` × its ejection count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutlierDetection {
    /// Consecutive failures that eject.
    pub consecutive_5xx: u32,
    /// How often ejections are reviewed; an endpoint healthy for an interval
    /// has its ejection count lowered by one.
    pub interval: Duration,
    /// Ejection time of the first ejection.
    pub base_ejection_time: Duration,
    /// Most endpoints of a cluster ejected at once, in percent (never all).
    pub max_ejection_percent: u32,
}

impl Default for OutlierDetection {
    fn default() -> Self {
        OutlierDetection {
            consecutive_5xx: DEFAULT_CONSECUTIVE_5XX,
            interval: DEFAULT_OUTLIER_INTERVAL,
            base_ejection_time: DEFAULT_BASE_EJECTION_TIME,
            max_ejection_percent: DEFAULT_MAX_EJECTION_PERCENT,
        }
    }
}

/// Parses a Kubernetes-style duration: one or more `<number><unit>` with units
/// `ms`, `s`, `m`, `h` (e.g. `250ms`, `1.5s`, `1h30m`), as the CRD's pattern allows.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("{text:?} is not a duration like 250ms, 1.5s, 2m or 1h30m");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (number, tail) = rest.split_at(digits);
        let (unit, next) = if let Some(t) = tail.strip_prefix("ms") {
            (0.001, t)
        } else if let Some(t) = tail.strip_prefix('s') {
            (1.0, t)
        } else if let Some(t) = tail.strip_prefix('m') {
            (60.0, t)
        } else if let Some(t) = tail.strip_prefix('h') {
            (3600.0, t)
        } else {
            return Err(bad());
        };
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return Err(bad());
        }
        let value: f64 = number.parse().map_err(|_| bad())?;
        total += Duration::try_from_secs_f64(value * unit).map_err(|_| bad())?;
        rest = next;
    }
    Ok(total)
}

/// Renders a duration so that [`parse_duration`] reads it back exactly.
pub fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 || d.as_secs() == 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_the_crd_pattern() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "10", "s", "1x", "1.s", ".5s", "-1s", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        for d in [
            Duration::ZERO,
            Duration::from_millis(250),
            Duration::from_secs(90),
            Duration::from_millis(1500),
        ] {
            assert_eq!(parse_duration(&format_duration(d)), Ok(d));
        }
    }

    #[test]
    fn retry_codes_imply_retriable_status_codes() {
        let (on, codes) = split_retry_on(["5xx", "503", "reset", "504", "503"]);
        assert_eq!(on, ["5xx", "retriable-status-codes", "reset"]);
        assert_eq!(codes, [503, 504]);
        let d = Retries::default();
        assert_eq!(d.retriable_status_codes, [503]);
        assert_eq!(d.attempts, 2);
    }
}
