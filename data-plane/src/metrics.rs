//! Prometheus metrics of the sidecar, in the mesh's standard names and labels.
//!
//! Request metrics are recorded through [`StatsCache`]: the label set of a route or
//! endpoint is built once and the counter/histogram handles are kept per response
//! code, so the per-request cost is a read lock, a short scan and two atomic updates
//! instead of hashing nine label strings.

use std::sync::RwLock;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Request-duration buckets, in seconds (the mesh's standard set).
pub const DURATION_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Label value for an unknown peer or service.
pub const UNKNOWN: &str = "unknown";

/// Which side of the call recorded a metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    /// The caller's sidecar (outbound).
    Source,
    /// The callee's sidecar (inbound).
    Destination,
}

impl Reporter {
    /// The `reporter` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reporter::Source => "source",
            Reporter::Destination => "destination",
        }
    }
}

/// Labels of `mesh_requests_total` and `mesh_request_duration_seconds`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    /// `source` or `destination`.
    pub reporter: &'static str,
    /// Calling workload.
    pub source_workload: String,
    /// Calling workload's namespace.
    pub source_namespace: String,
    /// Caller's SPIFFE ID, as verified by mutual TLS (`unknown` without it).
    pub source_principal: String,
    /// Called service FQDN (no port).
    pub destination_service: String,
    /// Called workload.
    pub destination_workload: String,
    /// Called workload's namespace.
    pub destination_namespace: String,
    /// Callee's SPIFFE ID, as verified by mutual TLS (`unknown` without it).
    pub destination_principal: String,
    /// HTTP status returned downstream.
    pub response_code: u16,
    /// The gRPC status code (`0`..`16`) of a gRPC response, from its trailers or
    /// trailers-only headers; `unknown` when a gRPC response carried none; empty
    /// for other protocols.
    pub grpc_status: &'static str,
    /// Always `http` for now.
    pub request_protocol: &'static str,
    /// `mutual_tls` when the hop between sidecars was mutual TLS, else `none`.
    pub connection_security_policy: &'static str,
}

impl RequestLabels {
    /// A label set with every peer field `unknown`.
    pub fn unknown(reporter: Reporter) -> RequestLabels {
        RequestLabels {
            reporter: reporter.as_str(),
            source_workload: UNKNOWN.into(),
            source_namespace: UNKNOWN.into(),
            source_principal: UNKNOWN.into(),
            destination_service: UNKNOWN.into(),
            destination_workload: UNKNOWN.into(),
            destination_namespace: UNKNOWN.into(),
            destination_principal: UNKNOWN.into(),
            response_code: 0,
            grpc_status: crate::grpc::NOT_GRPC,
            request_protocol: "http",
            connection_security_policy: "none",
        }
    }
}

/// `connection_security_policy` of a mutual-TLS hop.
pub const MUTUAL_TLS: &str = "mutual_tls";

/// Labels of `mesh_authorization_denied_total`: few values each, on purpose.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DeniedLabels {
    /// This workload.
    pub destination_workload: String,
    /// This workload's namespace.
    pub destination_namespace: String,
    /// `deny_policy` or `no_allow_policy`.
    pub reason: &'static str,
}

/// Labels of the resilience counters: the service and what happened.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ResilienceLabels {
    /// Called service FQDN.
    pub destination_service: String,
    /// The limit that refused a request, or the retry outcome.
    pub reason: &'static str,
}

/// A resilience event of an outbound request (rare by nature, so counted
/// without cached handles).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResilienceEvent {
    /// Refused by a circuit-breaker limit (its Envoy name).
    Overflow(&'static str),
    /// A retry was sent.
    Retried,
    /// A retry was due but the budget was spent.
    BudgetExhausted,
    /// An endpoint was ejected.
    Ejected,
    /// The route timeout expired (504).
    Timeout,
}

/// Labels of the `mesh_tcp_*` metrics: the request labels without the
/// per-request ones (`response_code`, `grpc_status`).
///
/// Connections served as HTTP are counted with their peers `unknown` (one
/// connection carries many requests; `mesh_requests_total` has the detail) and
/// `request_protocol="http"`; proxied TCP connections with every label known and
/// `request_protocol="tcp"`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TcpLabels {
    /// `source` or `destination`.
    pub reporter: &'static str,
    /// Calling workload.
    pub source_workload: String,
    /// Calling workload's namespace.
    pub source_namespace: String,
    /// Caller's SPIFFE ID, as verified by mutual TLS (`unknown` without it).
    pub source_principal: String,
    /// Called service FQDN (`unknown` for passthrough).
    pub destination_service: String,
    /// Called workload.
    pub destination_workload: String,
    /// Called workload's namespace.
    pub destination_namespace: String,
    /// Callee's SPIFFE ID, as verified by mutual TLS (`unknown` without it).
    pub destination_principal: String,
    /// `tcp` for proxied connections, `http` for connections served as HTTP.
    pub request_protocol: &'static str,
    /// `mutual_tls` when the hop between sidecars was mutual TLS, else `none`.
    pub connection_security_policy: &'static str,
}

impl TcpLabels {
    /// The label set of a connection whose peers are not (yet) known.
    pub fn unknown(reporter: Reporter, request_protocol: &'static str) -> TcpLabels {
        TcpLabels {
            reporter: reporter.as_str(),
            source_workload: UNKNOWN.into(),
            source_namespace: UNKNOWN.into(),
            source_principal: UNKNOWN.into(),
            destination_service: UNKNOWN.into(),
            destination_workload: UNKNOWN.into(),
            destination_namespace: UNKNOWN.into(),
            destination_principal: UNKNOWN.into(),
            request_protocol,
            connection_security_policy: "none",
        }
    }
}

/// The counters of one proxied TCP connection's label set.
#[derive(Debug, Clone)]
pub struct TcpStats {
    /// `mesh_tcp_connections_opened_total`.
    pub opened: Counter,
    /// `mesh_tcp_connections_closed_total`.
    pub closed: Counter,
    /// `mesh_tcp_sent_bytes_total`: bytes towards the caller (responses).
    pub sent: Counter,
    /// `mesh_tcp_received_bytes_total`: bytes from the caller (requests).
    pub received: Counter,
}

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

/// Every metric of the sidecar and the registry that renders them.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    durations: Family<RequestLabels, Histogram, fn() -> Histogram>,
    opened: Family<TcpLabels, Counter>,
    closed: Family<TcpLabels, Counter>,
    sent_bytes: Family<TcpLabels, Counter>,
    received_bytes: Family<TcpLabels, Counter>,
    /// `mesh_proxy_xds_connected`: 1 while an ADS stream is up.
    pub xds_connected: Gauge,
    /// `mesh_proxy_cert_expiry_timestamp_seconds`: when the workload certificate
    /// expires (0 without one).
    pub cert_expiry: Gauge,
    /// `mesh_authorization_denied_total`.
    pub authz_denied: Family<DeniedLabels, Counter>,
    /// `mesh_inbound_plaintext_refused_total`: plaintext connections closed because
    /// the inbound listener only takes mutual TLS (STRICT).
    pub plaintext_refused: Counter,
    /// `mesh_inbound_tls_handshake_failures_total`: inbound TLS handshakes that
    /// failed (no or untrusted client certificate, timeouts).
    pub tls_handshake_failures: Counter,
    /// `mesh_circuit_breaker_rejections_total{destination_service,reason}`.
    overflows: Family<ResilienceLabels, Counter>,
    /// `mesh_retries_total{destination_service,reason}` (`retried`, `budget_exhausted`).
    retries: Family<ResilienceLabels, Counter>,
    /// `mesh_outlier_ejections_total{destination_service,reason}`.
    ejections: Family<ResilienceLabels, Counter>,
    /// `mesh_request_timeouts_total{destination_service,reason}`.
    timeouts: Family<ResilienceLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        // The standard process metrics, unprefixed, as the controller has them.
        registry.register_collector(Box::new(mesh_metrics::ProcessCollector));
        let requests = Family::<RequestLabels, Counter>::default();
        let durations = Family::<RequestLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram,
        );
        let opened = Family::<TcpLabels, Counter>::default();
        let closed = Family::<TcpLabels, Counter>::default();
        let sent_bytes = Family::<TcpLabels, Counter>::default();
        let received_bytes = Family::<TcpLabels, Counter>::default();
        let xds_connected = Gauge::default();
        let cert_expiry = Gauge::default();
        let authz_denied = Family::<DeniedLabels, Counter>::default();
        let plaintext_refused = Counter::default();
        let tls_handshake_failures = Counter::default();
        registry.register(
            "mesh_proxy_cert_expiry_timestamp_seconds",
            "Expiry of the workload certificate, Unix seconds",
            cert_expiry.clone(),
        );
        registry.register(
            "mesh_authorization_denied",
            "Inbound requests denied by authorization policy",
            authz_denied.clone(),
        );
        registry.register(
            "mesh_inbound_plaintext_refused",
            "Inbound plaintext connections refused (mutual TLS required)",
            plaintext_refused.clone(),
        );
        registry.register(
            "mesh_inbound_tls_handshake_failures",
            "Inbound TLS handshakes that failed",
            tls_handshake_failures.clone(),
        );
        let overflows = Family::<ResilienceLabels, Counter>::default();
        let retries = Family::<ResilienceLabels, Counter>::default();
        let ejections = Family::<ResilienceLabels, Counter>::default();
        let timeouts = Family::<ResilienceLabels, Counter>::default();
        registry.register(
            "mesh_circuit_breaker_rejections",
            "Outbound requests refused by a circuit-breaker limit",
            overflows.clone(),
        );
        registry.register(
            "mesh_retries",
            "Outbound retries sent, or not sent because the retry budget was spent",
            retries.clone(),
        );
        registry.register(
            "mesh_outlier_ejections",
            "Endpoints ejected by outlier detection",
            ejections.clone(),
        );
        registry.register(
            "mesh_request_timeouts",
            "Outbound requests answered 504 by the route timeout",
            timeouts.clone(),
        );
        registry.register("mesh_requests", "Requests handled", requests.clone());
        registry.register(
            "mesh_request_duration_seconds",
            "Time until the response headers, in seconds",
            durations.clone(),
        );
        registry.register(
            "mesh_tcp_connections_opened",
            "Downstream connections accepted",
            opened.clone(),
        );
        registry.register(
            "mesh_tcp_connections_closed",
            "Downstream connections closed",
            closed.clone(),
        );
        registry.register(
            "mesh_tcp_sent_bytes",
            "Bytes sent towards the caller on proxied TCP connections",
            sent_bytes.clone(),
        );
        registry.register(
            "mesh_tcp_received_bytes",
            "Bytes received from the caller on proxied TCP connections",
            received_bytes.clone(),
        );
        registry.register(
            "mesh_proxy_xds_connected",
            "Whether the ADS stream to the controller is up",
            xds_connected.clone(),
        );
        Metrics {
            registry,
            requests,
            durations,
            opened,
            closed,
            sent_bytes,
            received_bytes,
            xds_connected,
            cert_expiry,
            authz_denied,
            plaintext_refused,
            tls_handshake_failures,
            overflows,
            retries,
            ejections,
            timeouts,
        }
    }

    /// Counts one resilience event for `service`.
    pub fn resilience(&self, service: &str, event: ResilienceEvent) {
        let (family, reason) = match event {
            ResilienceEvent::Overflow(limit) => (&self.overflows, limit),
            ResilienceEvent::Retried => (&self.retries, "retried"),
            ResilienceEvent::BudgetExhausted => (&self.retries, "budget_exhausted"),
            ResilienceEvent::Ejected => (&self.ejections, "consecutive_5xx"),
            ResilienceEvent::Timeout => (&self.timeouts, "route_timeout"),
        };
        family
            .get_or_create(&ResilienceLabels {
                destination_service: service.to_string(),
                reason,
            })
            .inc();
    }

    /// Counts an accepted downstream connection.
    /// Counts an accepted downstream connection served as HTTP (or refused).
    pub fn connection_opened(&self, reporter: Reporter) {
        self.opened
            .get_or_create(&TcpLabels::unknown(reporter, "http"))
            .inc();
    }

    /// Counts a closed downstream connection served as HTTP (or refused).
    pub fn connection_closed(&self, reporter: Reporter) {
        self.closed
            .get_or_create(&TcpLabels::unknown(reporter, "http"))
            .inc();
    }

    /// Counts one request or connection denied by authorization policy at
    /// `workload.namespace`.
    pub fn count_denied(&self, workload: &str, namespace: &str, reason: &'static str) {
        self.authz_denied
            .get_or_create(&DeniedLabels {
                destination_workload: workload.to_string(),
                destination_namespace: namespace.to_string(),
                reason,
            })
            .inc();
    }

    /// The TCP counters of one label set.
    pub fn tcp(&self, labels: &TcpLabels) -> TcpStats {
        TcpStats {
            opened: self.opened.get_or_create(labels).clone(),
            closed: self.closed.get_or_create(labels).clone(),
            sent: self.sent_bytes.get_or_create(labels).clone(),
            received: self.received_bytes.get_or_create(labels).clone(),
        }
    }

    /// The handles for one complete label set.
    pub fn handles(&self, labels: &RequestLabels) -> RequestStats {
        RequestStats {
            count: self.requests.get_or_create(labels).clone(),
            duration: self.durations.get_or_create(labels).clone(),
        }
    }

    /// Records one request with an ad-hoc label set (uncached; for rare paths).
    pub fn record(&self, labels: &RequestLabels, seconds: f64) {
        self.handles(labels).record(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(4096);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Counter and histogram of one label set.
#[derive(Debug, Clone)]
pub struct RequestStats {
    count: Counter,
    duration: Histogram,
}

impl RequestStats {
    /// Counts one request that took `seconds`.
    pub fn record(&self, seconds: f64) {
        self.count.inc();
        self.duration.observe(seconds);
    }
}

/// A label set fixed except for the response code and gRPC status, with handles
/// cached per pair.
#[derive(Debug)]
pub struct StatsCache {
    base: RequestLabels,
    by_code: RwLock<Vec<((u16, &'static str), RequestStats)>>,
}

impl StatsCache {
    /// A cache for `base` (its `response_code` is ignored).
    pub fn new(base: RequestLabels) -> StatsCache {
        StatsCache {
            base,
            by_code: RwLock::new(Vec::new()),
        }
    }

    /// Records one non-gRPC request answered with `code` after `seconds`.
    pub fn record(&self, metrics: &Metrics, code: u16, seconds: f64) {
        self.record_grpc(metrics, code, crate::grpc::NOT_GRPC, seconds);
    }

    /// Records one request answered with `code` and gRPC status `grpc` (a
    /// [`crate::grpc::status_label`]) after `seconds`.
    pub fn record_grpc(&self, metrics: &Metrics, code: u16, grpc: &'static str, seconds: f64) {
        let key = (code, grpc);
        if let Ok(cached) = self.by_code.read()
            && let Some((_, stats)) = cached.iter().find(|(k, _)| *k == key)
        {
            stats.record(seconds);
            return;
        }
        let stats = metrics.handles(&RequestLabels {
            response_code: code,
            grpc_status: grpc,
            ..self.base.clone()
        });
        stats.record(seconds);
        if let Ok(mut cached) = self.by_code.write()
            && !cached.iter().any(|(k, _)| *k == key)
            && cached.len() < 32
        {
            cached.push((key, stats));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_cache() {
        let m = Metrics::new();
        let mut base = RequestLabels::unknown(Reporter::Source);
        base.destination_service = "cat.shop.svc.cluster.local".into();
        let cache = StatsCache::new(base);
        cache.record(&m, 200, 0.003);
        cache.record(&m, 200, 0.003);
        cache.record(&m, 503, 0.2);
        cache.record_grpc(&m, 200, "5", 0.01);
        m.connection_opened(Reporter::Destination);
        m.xds_connected.set(1);
        let text = m.encode();
        assert!(text.contains("mesh_requests_total{reporter=\"source\",source_workload=\"unknown\",source_namespace=\"unknown\",source_principal=\"unknown\",destination_service=\"cat.shop.svc.cluster.local\",destination_workload=\"unknown\",destination_namespace=\"unknown\",destination_principal=\"unknown\",response_code=\"200\",grpc_status=\"\",request_protocol=\"http\",connection_security_policy=\"none\"} 2"), "{text}");
        assert!(text.contains("response_code=\"503\""));
        assert!(
            text.contains("response_code=\"200\",grpc_status=\"5\","),
            "{text}"
        );
        assert!(text.contains("mesh_request_duration_seconds_bucket{"));
        assert!(text.contains("le=\"0.0025\""));
        assert!(text.contains("mesh_tcp_connections_opened_total{reporter=\"destination\",source_workload=\"unknown\",source_namespace=\"unknown\",source_principal=\"unknown\",destination_service=\"unknown\",destination_workload=\"unknown\",destination_namespace=\"unknown\",destination_principal=\"unknown\",request_protocol=\"http\",connection_security_policy=\"none\"} 1"), "{text}");
        let tcp = m.tcp(&TcpLabels {
            destination_service: "db.shop.svc.cluster.local".into(),
            ..TcpLabels::unknown(Reporter::Source, "tcp")
        });
        tcp.opened.inc();
        tcp.sent.inc_by(42);
        let text = m.encode();
        assert!(text.contains("mesh_tcp_sent_bytes_total{reporter=\"source\",source_workload=\"unknown\",source_namespace=\"unknown\",source_principal=\"unknown\",destination_service=\"db.shop.svc.cluster.local\",destination_workload=\"unknown\",destination_namespace=\"unknown\",destination_principal=\"unknown\",request_protocol=\"tcp\",connection_security_policy=\"none\"} 42"), "{text}");
        assert!(text.contains("mesh_proxy_xds_connected 1"));
    }
}
