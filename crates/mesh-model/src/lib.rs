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

/// The namespace label that puts a namespace's workloads in the mesh.
pub const INJECT_LABEL: &str = "mesh.io/inject";
/// The annotation that opts one workload out of its namespace's mesh.
pub const INJECT_ANNOTATION: &str = "mesh.io/inject";
/// The annotation (on a Namespace or Workload) that sets the mTLS mode.
pub const MTLS_MODE_ANNOTATION: &str = "mesh.io/mtls-mode";
/// The default Kubernetes cluster domain used in service FQDNs.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";
/// The default SPIFFE trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "cluster.local";
