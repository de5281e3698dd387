//! The sidecar's settings, in one place.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

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
#[command(
    name = "mesh-proxy",
    about = "The mesh sidecar",
    version,
    after_help = "Waiting for a sidecar: mesh-proxy wait-ready [--admin-addr 127.0.0.1:15000] [--timeout 60]"
)]
pub struct ProxyArgs {
    /// The controller's xDS address. `https://host:port` connects with TLS (the
    /// controller's identity is checked against `--trust-anchors`); `http://` is
    /// plaintext, for loopback development.
    #[arg(long, env = "MESH_XDS_ADDR", default_value = "http://127.0.0.1:15010")]
    pub xds_addr: String,
    /// A mesh join token (`meshctl token create`). With a token the sidecar gets a
    /// certificate from the controller before it serves, and every hop to another
    /// sidecar is mutual TLS; without one it runs in plaintext dev mode.
    #[arg(
        long,
        env = "MESH_TOKEN",
        hide_env_values = true,
        conflicts_with = "token_file"
    )]
    pub token: Option<String>,
    /// A file holding the join token, re-read before every certificate request.
    #[arg(long, env = "MESH_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM trust bundle (the mesh roots): verifies the controller, and peers until
    /// the controller sends the bundle over SDS.
    #[arg(long, env = "MESH_TRUST_ANCHORS")]
    pub trust_anchors: Option<PathBuf>,
    /// SPIFFE trust domain; defaults to the one the trust anchors name, else
    /// `cluster.local`.
    #[arg(long, env = "MESH_TRUST_DOMAIN")]
    pub trust_domain: Option<String>,
    /// Tell the app who called: add `x-forwarded-client-cert: By=<own id>;URI=<peer
    /// id>` to inbound mutual-TLS requests (an incoming one is always removed).
    #[arg(long, env = "MESH_FORWARD_CLIENT_CERT")]
    pub forward_client_cert: bool,
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
    /// Runtime worker threads. A sidecar shares its pod's CPU with the app, so it
    /// stays small: 2 keeps one request's slow work from stalling the rest without
    /// taking cores from the app. 1 runs everything on a single thread.
    #[arg(long, env = "MESH_PROXY_CONCURRENCY", default_value_t = 2)]
    pub concurrency: usize,
    /// Seconds in-flight requests get to finish on shutdown before connections close.
    #[arg(long, default_value_t = 5)]
    pub drain_seconds: u64,
}

impl ProxyArgs {
    /// Settings with every default, for running the proxy as a library.
    pub fn new(workload: impl Into<String>, namespace: impl Into<String>) -> ProxyArgs {
        ProxyArgs {
            xds_addr: "http://127.0.0.1:15010".into(),
            token: None,
            token_file: None,
            trust_anchors: None,
            trust_domain: None,
            forward_client_cert: false,
            xds_protocol: XdsProtocol::Delta,
            workload: workload.into(),
            namespace: namespace.into(),
            node_id: None,
            ip: IpAddr::from([0, 0, 0, 0]),
            outbound_addr: None,
            inbound_addr: None,
            admin_addr: None,
            concurrency: 2,
            drain_seconds: 5,
        }
    }

    /// The xDS node id: `--node-id`, else `<workload>.<namespace>`.
    pub fn node_id(&self) -> String {
        self.node_id
            .clone()
            .unwrap_or_else(|| format!("{}.{}", self.workload, self.namespace))
    }

    /// Whether the sidecar runs with an identity (a token was given).
    pub fn identity_enabled(&self) -> bool {
        self.token.is_some() || self.token_file.is_some()
    }

    /// Where the outbound listener binds.
    pub fn outbound(&self) -> SocketAddr {
        self.outbound_addr
            .unwrap_or(SocketAddr::new(self.ip, mesh_xds::names::OUTBOUND_PORT))
    }

    /// Where the inbound listener binds.
    pub fn inbound(&self) -> SocketAddr {
        self.inbound_addr
            .unwrap_or(SocketAddr::new(self.ip, mesh_xds::names::INBOUND_PORT))
    }

    /// Where the admin listener binds.
    pub fn admin(&self) -> SocketAddr {
        self.admin_addr
            .unwrap_or(SocketAddr::new(self.ip, mesh_xds::names::ADMIN_PORT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn defaults_and_flags() {
        let a = ProxyArgs::try_parse_from([
            "mesh-proxy",
            "--workload",
            "web-1",
            "--ip",
            "127.0.0.5",
            "--xds-protocol",
            "sotw",
        ])
        .unwrap();
        assert_eq!(a.node_id(), "web-1.default");
        assert_eq!(a.outbound(), "127.0.0.5:15001".parse().unwrap());
        assert_eq!(a.inbound(), "127.0.0.5:15006".parse().unwrap());
        assert_eq!(a.admin(), "127.0.0.5:15000".parse().unwrap());
        assert_eq!(a.xds_protocol, XdsProtocol::Sotw);
        assert_eq!(a.concurrency, 2);
        assert!(!a.identity_enabled());
        let b = ProxyArgs::new("web-1", "default");
        assert_eq!(b.node_id(), a.node_id());
        let c = ProxyArgs::try_parse_from([
            "mesh-proxy",
            "--workload",
            "web-1",
            "--xds-addr",
            "https://ctl:15012",
            "--token",
            "t",
            "--trust-anchors",
            "/etc/mesh/roots.pem",
            "--forward-client-cert",
        ])
        .unwrap();
        assert!(c.identity_enabled() && c.forward_client_cert);
        assert!(
            ProxyArgs::try_parse_from([
                "mesh-proxy",
                "--workload",
                "w",
                "--token",
                "t",
                "--token-file",
                "/f",
            ])
            .is_err(),
            "one token source"
        );
    }
}
