//! The xDS resource types the mesh serves and their type URLs.

use std::fmt;

/// Type URL of `envoy.config.listener.v3.Listener` (LDS).
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Type URL of `envoy.config.route.v3.RouteConfiguration` (RDS).
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// Type URL of `envoy.config.cluster.v3.Cluster` (CDS).
pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
/// Type URL of `envoy.config.endpoint.v3.ClusterLoadAssignment` (EDS).
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
/// Type URL of `envoy.extensions.transport_sockets.tls.v3.Secret` (SDS).
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// A resource type served over ADS.
///
/// The order is Envoy's recommended push order (SDS, CDS, EDS, LDS, RDS) so that a
/// reference is never pushed before what it refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
pub enum ResourceType {
    /// Secrets: the trust bundle.
    Secret,
    /// Clusters.
    Cluster,
    /// Cluster load assignments.
    Endpoint,
    /// Listeners.
    Listener,
    /// Route configurations.
    Route,
}

impl ResourceType {
    /// Every type, in push order.
    pub const ALL: [ResourceType; 5] = [
        ResourceType::Secret,
        ResourceType::Cluster,
        ResourceType::Endpoint,
        ResourceType::Listener,
        ResourceType::Route,
    ];

    /// The type URL used on the wire.
    pub fn type_url(self) -> &'static str {
        match self {
            ResourceType::Listener => LISTENER,
            ResourceType::Route => ROUTE,
            ResourceType::Cluster => CLUSTER,
            ResourceType::Endpoint => ENDPOINT,
            ResourceType::Secret => SECRET,
        }
    }

    /// The type for a type URL, if the mesh serves it.
    pub fn from_type_url(url: &str) -> Option<Self> {
        ResourceType::ALL.into_iter().find(|t| t.type_url() == url)
    }

    /// The short xDS name (`CDS`, `EDS`, `LDS`, `RDS`), as operators know them.
    pub fn short_name(self) -> &'static str {
        match self {
            ResourceType::Listener => "LDS",
            ResourceType::Route => "RDS",
            ResourceType::Cluster => "CDS",
            ResourceType::Endpoint => "EDS",
            ResourceType::Secret => "SDS",
        }
    }

    /// Whether a client subscribes to every resource of this type by default
    /// (Envoy's wildcard types), rather than naming the ones it wants.
    pub fn is_wildcard_by_default(self) -> bool {
        matches!(self, ResourceType::Listener | ResourceType::Cluster)
    }
}

impl fmt::Display for ResourceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.short_name())
    }
}
