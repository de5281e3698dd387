//! The controller's settings, in one place.

use std::net::SocketAddr;
use std::path::PathBuf;

/// Where the controller learns what runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum RegistryKind {
    /// A multi-document YAML file, watched for changes.
    File,
}

/// Command-line settings of `mesh-controller`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "mesh-controller", about = "The mesh control plane", version)]
pub struct ControllerArgs {
    /// Registry source.
    #[arg(long, value_enum, default_value = "file")]
    pub registry: RegistryKind,
    /// The mesh file (with `--registry file`).
    #[arg(long, required_if_eq("registry", "file"))]
    pub file: Option<PathBuf>,
    /// Plaintext xDS gRPC address (loopback and tests only).
    #[arg(long, default_value = "127.0.0.1:15010")]
    pub xds_addr: SocketAddr,
    /// Admin HTTP address (`/ready`, `/metrics`, `/debug/*`).
    #[arg(long, default_value = "127.0.0.1:15014")]
    pub admin_addr: SocketAddr,
    /// Quiet time after a registry change before pushing, in milliseconds.
    #[arg(long, default_value_t = 100)]
    pub debounce_ms: u64,
    /// Cluster domain used in service FQDNs.
    #[arg(long, default_value = mesh_model::DEFAULT_CLUSTER_DOMAIN)]
    pub cluster_domain: String,
}
