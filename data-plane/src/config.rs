//! The sidecar's settings, in one place.

use std::net::{IpAddr, SocketAddr};

/// Which ADS variant the sidecar speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum XdsProtocol {
    /// Incremental xDS (`DeltaAggregatedResources`), the default.
    Delta,
    /// State of the World (`StreamAggregatedResources`).
    Sotw,
}

/// Command-line settings of `mesh-proxy`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "mesh-proxy", about = "The mesh sidecar", version)]
pub struct ProxyArgs {
    /// The controller's xDS address.
    #[arg(long, env = "MESH_XDS_ADDR", default_value = "http://127.0.0.1:15010")]
    pub xds_addr: String,
    /// ADS variant to use.
    #[arg(long, value_enum, default_value = "delta")]
    pub xds_protocol: XdsProtocol,
    /// The workload instance this sidecar fronts.
    #[arg(long, env = "MESH_WORKLOAD")]
    pub workload: String,
    /// The workload's namespace.
    #[arg(long, env = "MESH_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// xDS node id; defaults to `<workload>.<namespace>`.
    #[arg(long)]
    pub node_id: Option<String>,
    /// The IP all listeners bind to at their standard ports (15001, 15006, 15000).
    #[arg(long, env = "MESH_PROXY_IP", default_value = "0.0.0.0")]
    pub ip: IpAddr,
    /// Override the outbound listener address.
    #[arg(long)]
    pub outbound_addr: Option<SocketAddr>,
    /// Override the inbound listener address.
    #[arg(long)]
    pub inbound_addr: Option<SocketAddr>,
    /// Override the admin listener address.
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
}
