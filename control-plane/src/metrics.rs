//! The controller's Prometheus metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Label set of per-type xDS counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TypeLabel {
    /// `CDS`, `EDS`, `LDS` or `RDS`.
    pub r#type: String,
}

/// Label set of registry event counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RegistryLabel {
    /// The source, e.g. `file:/etc/mesh.yaml`.
    pub source: String,
    /// `applied` or `rejected`.
    pub result: String,
}

/// Buckets from 100 µs to ~30 s: pushes are fast, convergence can be slow.
fn latency_buckets() -> impl Iterator<Item = f64> {
    [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0, 30.0,
    ]
    .into_iter()
}

/// Every metric the controller exports, registered once at start.
pub struct Metrics {
    /// The registry `/metrics` encodes: the `mesh_` metrics and the process's own.
    pub registry: Registry,
    /// Open ADS streams.
    pub connected_proxies: Gauge,
    /// Responses sent, by type.
    pub pushes: Family<TypeLabel, Counter>,
    /// Time to build and send one response.
    pub push_duration: Histogram,
    /// Time from a registry change to a proxy's ACK of the resulting push.
    pub convergence: Histogram,
    /// NACKs received, by type.
    pub rejects: Family<TypeLabel, Counter>,
    /// Registry updates applied or rejected.
    pub registry_events: Family<RegistryLabel, Counter>,
    /// Workload certificates signed through `Certify`.
    pub ca_certificates_issued: Counter,
    /// When the earliest trusted root expires (Unix seconds), for alerts.
    pub ca_root_expiry: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut root = Registry::default();
        root.register_collector(Box::new(mesh_metrics::ProcessCollector));
        let registry = root.sub_registry_with_prefix("mesh");
        let connected_proxies = Gauge::default();
        let pushes = Family::<TypeLabel, Counter>::default();
        let push_duration = Histogram::new(latency_buckets());
        let convergence = Histogram::new(latency_buckets());
        let rejects = Family::<TypeLabel, Counter>::default();
        let registry_events = Family::<RegistryLabel, Counter>::default();
        let ca_certificates_issued = Counter::default();
        let ca_root_expiry = Gauge::default();
        registry.register(
            "xds_connected_proxies",
            "Proxies with an open ADS stream",
            connected_proxies.clone(),
        );
        registry.register("xds_pushes", "xDS responses sent, by type", pushes.clone());
        registry.register(
            "xds_push_duration_seconds",
            "Time to build and send one xDS response",
            push_duration.clone(),
        );
        registry.register(
            "xds_convergence_seconds",
            "Time from a registry change to the proxy's ACK of the push it caused",
            convergence.clone(),
        );
        registry.register(
            "xds_rejects",
            "xDS NACKs received, by type",
            rejects.clone(),
        );
        registry.register(
            "registry_events",
            "Registry updates, applied or rejected",
            registry_events.clone(),
        );
        registry.register(
            "ca_certificates_issued",
            "Workload certificates signed through Certify",
            ca_certificates_issued.clone(),
        );
        registry.register(
            "ca_root_expiry_timestamp_seconds",
            "When the earliest trusted root CA certificate expires, Unix seconds",
            ca_root_expiry.clone(),
        );
        Metrics {
            registry: root,
            connected_proxies,
            pushes,
            push_duration,
            convergence,
            rejects,
            registry_events,
            ca_certificates_issued,
            ca_root_expiry,
        }
    }
}

impl Metrics {
    /// Counts one registry update.
    pub fn registry_event(&self, source: &str, applied: bool) {
        self.registry_events
            .get_or_create(&RegistryLabel {
                source: source.to_string(),
                result: if applied { "applied" } else { "rejected" }.to_string(),
            })
            .inc();
    }

    /// The label for a resource type.
    pub fn type_label(ty: mesh_xds::ResourceType) -> TypeLabel {
        TypeLabel {
            r#type: ty.short_name().to_string(),
        }
    }

    /// Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
