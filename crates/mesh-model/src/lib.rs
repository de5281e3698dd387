//! The mesh's data model: what runs where, independent of where we learned it.
//!
//! Every registry source (file, etcd, Kubernetes) produces the same [`Object`]s; the
//! [`Model`] indexes them and answers the questions the xDS layer asks (which
//! services are meshed, which workloads back a service port). Nothing here does I/O,
//! so the same code serves the controller, `meshctl` and tests.
#![forbid(unsafe_code)]

mod error;
mod http_route;
mod identity;
mod model;
mod objects;
mod opaque;
mod parse;
mod parse_http_route;
mod parse_traffic_policy;
mod traffic_policy;

pub use error::{ModelError, ModelErrorKind};
pub use http_route::{
    BackendRef, HeaderModifier, HttpRoute, MatchedRule, PathMatch, RouteMatch, RouteParent,
    RouteRetry, RouteRule, ordered_matches,
};
pub use identity::Identity;
pub use model::{Endpoint, Model, ModelOptions, ServicePortView};
pub use objects::{
    AuthorizationAction, AuthorizationOperation, AuthorizationPolicy, AuthorizationRule,
    AuthorizationSource, ExplicitEndpoint, MtlsMode, Namespace, Object, ObjectKey, Service,
    ServicePort, TargetPort, Workload, WorkloadPort,
};
pub use opaque::{
    OPAQUE_APP_PROTOCOLS, OPAQUE_PORTS_ANNOTATION, apply_opaque_ports, is_opaque_protocol,
};
pub use parse::{parse_document, parse_documents, render_documents};
pub use traffic_policy::{
    ConnectionPool, HashKey, LoadBalancer, OutlierDetection, Retries, RetryBudget, Timeouts,
    TrafficPolicy, format_duration, parse_duration,
};

/// Defaults of every TrafficPolicy field, for translators that need them.
pub mod traffic_defaults {
    pub use crate::traffic_policy::{
        DEFAULT_BASE_EJECTION_TIME, DEFAULT_BUDGET_PERCENT, DEFAULT_CONNECT_TIMEOUT,
        DEFAULT_CONSECUTIVE_5XX, DEFAULT_MAX_EJECTION_PERCENT, DEFAULT_MIN_RETRY_CONCURRENCY,
        DEFAULT_MIN_RING_SIZE, DEFAULT_OUTLIER_INTERVAL, DEFAULT_RETRY_ATTEMPTS,
        DEFAULT_RETRY_BACKOFF, DEFAULT_RETRY_ON,
    };
}

/// The namespace label that puts a namespace's workloads in the mesh.
pub const INJECT_LABEL: &str = "mesh.io/inject";
/// The annotation that opts one workload out of its namespace's mesh.
pub const INJECT_ANNOTATION: &str = "mesh.io/inject";
/// The annotation (on a Namespace or Workload) that sets the mTLS mode.
pub const MTLS_MODE_ANNOTATION: &str = "mesh.io/mtls-mode";
/// The annotation (on a Workload or Pod) that sets its endpoints' load-balancing
/// weight, 1 to 128 (default 1).
pub const ENDPOINT_WEIGHT_ANNOTATION: &str = "mesh.io/endpoint-weight";
/// The highest endpoint weight (the range Envoy's `load_balancing_weight` and
/// gRPC handle well, and what a ring's points per endpoint allow).
pub const MAX_ENDPOINT_WEIGHT: u32 = 128;

/// Reads an endpoint weight annotation: a whole number from 1 to
/// [`MAX_ENDPOINT_WEIGHT`].
pub fn parse_endpoint_weight(value: &str) -> Option<u32> {
    value
        .trim()
        .parse::<u32>()
        .ok()
        .filter(|w| (1..=MAX_ENDPOINT_WEIGHT).contains(w))
}

/// The default Kubernetes cluster domain used in service FQDNs.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// The default SPIFFE trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
