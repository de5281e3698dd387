//! Resource names: the contract between controller, proxy and xDS clients.

/// The sidecar's outbound listener and its route configuration.
pub const OUTBOUND: &str = "outbound";
/// The sidecar's inbound listener.
pub const INBOUND: &str = "inbound";
/// The SDS secret carrying the trust bundle (Istio's name for it).
pub const TRUST_BUNDLE: &str = "ROOTCA";
/// The SDS secret name of a workload's own certificate (issued through `Certify`
/// to the sidecar, never served by the controller: the key stays in the sidecar).
pub const WORKLOAD_CERT: &str = "default";
/// Port of the outbound listener (explicit proxy and transparent capture).
pub const OUTBOUND_PORT: u16 = 15001;
/// Port of the inbound listener that fronts the app.
pub const INBOUND_PORT: u16 = 15006;
/// Port of the sidecar's admin server.
pub const ADMIN_PORT: u16 = 15000;

/// The cluster and EDS name of a service port: `<fqdn>:<port>`.
///
/// Also the LDS and RDS name a proxyless gRPC client uses for the service.
pub fn service_port(fqdn: &str, port: u16) -> String {
    format!("{fqdn}:{port}")
}

/// The inbound cluster that delivers to the local app's `port`.
pub fn inbound_cluster(port: u16) -> String {
    format!("inbound|{port}")
}

/// The app port an inbound cluster name refers to.
pub fn parse_inbound_cluster(name: &str) -> Option<u16> {
    name.strip_prefix("inbound|")?.parse().ok()
}

/// The host names (`Host`/`:authority`) a client in `client_namespace` may use for
/// a service port, as Kubernetes DNS would resolve them.
///
/// Short names (`catalog`) resolve only within the client's own namespace. Port 80
/// is also reachable without a port, as HTTP clients omit it.
pub fn service_domains(
    name: &str,
    namespace: &str,
    cluster_domain: &str,
    port: u16,
    client_namespace: &str,
    cluster_ip: Option<std::net::IpAddr>,
) -> Vec<String> {
    let mut hosts = vec![
        format!("{name}.{namespace}.svc.{cluster_domain}"),
        format!("{name}.{namespace}.svc"),
        format!("{name}.{namespace}"),
    ];
    if namespace == client_namespace {
        hosts.push(name.to_string());
    }
    if let Some(ip) = cluster_ip {
        hosts.push(match ip {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
        });
    }
    let mut domains: Vec<String> = hosts.iter().map(|h| format!("{h}:{port}")).collect();
    if port == 80 {
        domains.extend(hosts);
    }
    domains
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_only_in_own_namespace() {
        let own = service_domains("cat", "shop", "cluster.local", 8080, "shop", None);
        assert!(own.contains(&"cat:8080".to_string()));
        assert!(own.contains(&"cat.shop.svc.cluster.local:8080".to_string()));
        assert!(!own.iter().any(|d| !d.ends_with(":8080")));
        let other = service_domains("cat", "shop", "cluster.local", 8080, "web", None);
        assert!(!other.contains(&"cat:8080".to_string()));
        let http = service_domains(
            "cat",
            "shop",
            "cluster.local",
            80,
            "shop",
            Some("10.0.0.1".parse().unwrap()),
        );
        assert!(http.contains(&"cat".to_string()));
        assert!(http.contains(&"10.0.0.1:80".to_string()));
        assert!(http.contains(&"10.0.0.1".to_string()));
    }

    #[test]
    fn inbound_names_round_trip() {
        assert_eq!(parse_inbound_cluster(&inbound_cluster(8080)), Some(8080));
        assert_eq!(parse_inbound_cluster("outbound"), None);
    }
}
