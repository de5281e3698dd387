//! Model -> Envoy v3 resources. Each function builds one resource from plain inputs,
//! so the shapes real clients insist on live in one place and are tested here.

use std::net::SocketAddr;

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
};
use envoy_types::pb::envoy::config::core::v3::CidrRange;
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, HealthStatus, Http2ProtocolOptions,
    Locality, SocketAddress, TrafficDirection, address, config_source::ConfigSourceSpecifier,
    socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::core::v3::{
    DataSource, TransportSocket, data_source, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint as EnvoyEndpoint, LbEndpoint, LocalityLbEndpoints,
    lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::{
    ApiListener, Filter, FilterChain, FilterChainMatch, Listener, filter::ConfigType,
};
use envoy_types::pb::envoy::config::listener::v3::{
    ListenerFilter, ListenerFilterChainMatchPredicate, listener_filter,
    listener_filter_chain_match_predicate as match_predicate,
};
use envoy_types::pb::envoy::config::route::v3::{
    Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost, route::Action,
    route_action::ClusterSpecifier, route_match::PathSpecifier,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::http_inspector::v3::HttpInspector;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager::CodecType,
    http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret,
    TlsParameters, common_tls_context::ValidationContextType, secret, tls_parameters::TlsProtocol,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options::ExplicitHttpConfig,
    http_protocol_options::UpstreamProtocolOptions,
    http_protocol_options::explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::envoy::r#type::v3::Int32Range;
use envoy_types::pb::google::protobuf::{BoolValue, Duration, UInt32Value};
use mesh_model::{Endpoint, MtlsMode, TrafficPolicy};

use crate::any::pack;
use crate::metadata::{self, mesh_metadata};
use crate::names;
use crate::policy::{RoutePolicy, route_policy};

/// The well-known name of Envoy's HTTP connection manager network filter.
pub const HCM_FILTER: &str = "envoy.filters.network.http_connection_manager";
/// The well-known name of Envoy's router HTTP filter.
pub const ROUTER_FILTER: &str = "envoy.filters.http.router";
/// The key of upstream HTTP protocol options in a cluster's extension options.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// Endpoint metadata field: the SPIFFE identity the endpoint's certificate carries.
pub const META_IDENTITY: &str = "identity";
/// Endpoint metadata field: the workload instance name.
pub const META_WORKLOAD: &str = "workload";
/// Endpoint metadata field: the workload's namespace.
pub const META_NAMESPACE: &str = "namespace";
/// Endpoint metadata field: the inbound port of the endpoint's sidecar (absent when
/// the workload runs without one, and callers then connect to the app directly).
pub const META_SIDECAR_PORT: &str = "sidecar_port";

/// Whether a Kubernetes `appProtocol` means HTTP/2 to the application.
pub fn is_http2(app_protocol: Option<&str>) -> bool {
    matches!(
        app_protocol,
        Some("grpc" | "h2c" | "http2" | "kubernetes.io/h2c" | "grpc-web")
    )
}

/// An ADS config source: every dependent resource comes over the same stream.
pub fn ads_config_source() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

/// A socket address.
pub fn socket_address(addr: SocketAddr) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: addr.ip().to_string(),
            port_specifier: Some(PortSpecifier::PortValue(u32::from(addr.port()))),
            ..Default::default()
        })),
    }
}

/// The router filter, with the `typed_config` gRPC clients require.
fn router_filter() -> HttpFilter {
    HttpFilter {
        name: ROUTER_FILTER.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack(
            &Router::default(),
        ))),
        ..Default::default()
    }
}

fn http_connection_manager(stat_prefix: &str, routes: RouteSpecifier) -> HttpConnectionManager {
    HttpConnectionManager {
        codec_type: CodecType::Auto as i32,
        stat_prefix: stat_prefix.into(),
        route_specifier: Some(routes),
        http_filters: vec![router_filter()],
        ..Default::default()
    }
}

fn rds(route_name: &str) -> RouteSpecifier {
    RouteSpecifier::Rds(Rds {
        config_source: Some(ads_config_source()),
        route_config_name: route_name.into(),
    })
}

fn hcm_filter(hcm: &HttpConnectionManager) -> Filter {
    Filter {
        name: HCM_FILTER.into(),
        config_type: Some(ConfigType::TypedConfig(pack(hcm))),
    }
}

/// The well-known name of Envoy's original-destination listener filter.
pub const ORIGINAL_DST_FILTER: &str = "envoy.filters.listener.original_dst";
/// The well-known name of Envoy's HTTP inspector listener filter (protocol sniffing).
pub const HTTP_INSPECTOR: &str = "envoy.filters.listener.http_inspector";
/// The well-known name of Envoy's TCP proxy network filter.
pub const TCP_PROXY_FILTER: &str = "envoy.filters.network.tcp_proxy";
/// The cluster that takes captured traffic to where the app sent it (Istio's name).
pub const PASSTHROUGH_CLUSTER: &str = "PassthroughCluster";
/// ALPN protocols the HTTP inspector reports for sniffed HTTP/1.x and HTTP/2
/// prior knowledge; the outbound HTTP chain matches on them.
pub const SNIFFED_HTTP: [&str; 2] = ["http/1.1", "h2c"];

/// A service port that outbound capture proxies as opaque TCP: traffic to
/// `cluster_ip:port` goes to `cluster`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpaqueServicePort {
    /// The service's virtual IP.
    pub cluster_ip: std::net::IpAddr,
    /// The service port.
    pub port: u16,
    /// The service port's cluster (`<fqdn>:<port>`).
    pub cluster: String,
}

fn listener_filter<M: prost::Message + prost::Name>(name: &str, config: &M) -> ListenerFilter {
    ListenerFilter {
        name: name.into(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(pack(config))),
        ..Default::default()
    }
}

/// A filter chain whose only network filter is a TCP proxy to `cluster`.
fn tcp_proxy_chain(
    name: &str,
    cluster: &str,
    filter_chain_match: Option<FilterChainMatch>,
) -> FilterChain {
    FilterChain {
        name: name.into(),
        filter_chain_match,
        filters: vec![tcp_proxy_filter(cluster)],
        ..Default::default()
    }
}

/// `envoy.filters.network.tcp_proxy` to `cluster`, its stats under the cluster name.
pub fn tcp_proxy_filter(cluster: &str) -> Filter {
    let config = TcpProxy {
        stat_prefix: cluster.into(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
        ..Default::default()
    };
    Filter {
        name: TCP_PROXY_FILTER.into(),
        config_type: Some(ConfigType::TypedConfig(pack(&config))),
    }
}

/// The sidecar's outbound listener with no opaque service ports.
pub fn outbound_listener() -> Listener {
    transparent_outbound_listener(&[])
}

/// The sidecar's outbound listener, for explicit proxy use and transparent
/// capture alike.
///
/// - Listener filters: `original_dst` (the destination before the iptables
///   redirect) and `http_inspector` (protocol sniffing), disabled for the ports
///   of `opaque` services so server-speaks-first protocols are never delayed.
/// - One TCP proxy chain per opaque service port, matched by cluster IP and port.
/// - The HTTP chain (RDS `outbound`, routed by authority) for connections
///   sniffed as HTTP.
/// - Everything else (non-HTTP to a destination that is no opaque service port)
///   passes through to its original destination: the default chain proxies to
///   the ORIGINAL_DST [`passthrough_cluster`].
pub fn transparent_outbound_listener(opaque: &[OpaqueServicePort]) -> Listener {
    let hcm = http_connection_manager(names::OUTBOUND, rds(names::OUTBOUND));
    let mut filter_chains = vec![FilterChain {
        name: names::OUTBOUND.into(),
        filter_chain_match: Some(FilterChainMatch {
            application_protocols: SNIFFED_HTTP.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }),
        filters: vec![hcm_filter(&hcm)],
        ..Default::default()
    }];
    for o in opaque {
        let prefix_len = if o.cluster_ip.is_ipv4() { 32 } else { 128 };
        filter_chains.push(tcp_proxy_chain(
            &o.cluster,
            &o.cluster,
            Some(FilterChainMatch {
                destination_port: Some(UInt32Value {
                    value: u32::from(o.port),
                }),
                prefix_ranges: vec![CidrRange {
                    address_prefix: o.cluster_ip.to_string(),
                    prefix_len: Some(UInt32Value { value: prefix_len }),
                }],
                ..Default::default()
            }),
        ));
    }
    let mut unsniffed: Vec<u16> = opaque.iter().map(|o| o.port).collect();
    unsniffed.sort_unstable();
    unsniffed.dedup();
    let mut http_inspector = listener_filter(HTTP_INSPECTOR, &HttpInspector::default());
    if !unsniffed.is_empty() {
        http_inspector.filter_disabled = Some(ListenerFilterChainMatchPredicate {
            rule: Some(match_predicate::Rule::OrMatch(match_predicate::MatchSet {
                rules: unsniffed
                    .iter()
                    .map(|&p| ListenerFilterChainMatchPredicate {
                        rule: Some(match_predicate::Rule::DestinationPortRange(Int32Range {
                            start: i32::from(p),
                            end: i32::from(p) + 1,
                        })),
                    })
                    .collect(),
            })),
        });
    }
    Listener {
        name: names::OUTBOUND.into(),
        address: Some(socket_address(SocketAddr::from((
            [0, 0, 0, 0],
            names::OUTBOUND_PORT,
        )))),
        listener_filters: vec![
            listener_filter(ORIGINAL_DST_FILTER, &OriginalDst::default()),
            http_inspector,
        ],
        filter_chains,
        default_filter_chain: Some(tcp_proxy_chain(
            PASSTHROUGH_CLUSTER,
            PASSTHROUGH_CLUSTER,
            None,
        )),
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    }
}

/// The ORIGINAL_DST cluster that connects to wherever a captured connection was
/// going (Istio's PassthroughCluster).
pub fn passthrough_cluster() -> Cluster {
    Cluster {
        name: PASSTHROUGH_CLUSTER.into(),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(
            DiscoveryType::OriginalDst as i32,
        )),
        connect_timeout: Some(Duration {
            seconds: 1,
            nanos: 0,
        }),
        lb_policy: LbPolicy::ClusterProvided as i32,
        ..Default::default()
    }
}

/// The well-known name of Envoy's TLS transport socket.
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";
/// The well-known name of Envoy's TLS inspector listener filter.
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
/// ALPN offered by the inbound side: HTTP/2 between sidecars, HTTP/1.1 otherwise.
pub const INBOUND_ALPN: [&str; 2] = ["h2", "http/1.1"];

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
        sds_config: Some(ads_config_source()),
    }
}

/// ALPN protocol of a sidecar-to-sidecar TCP connection: one mutual-TLS
/// connection per proxied TCP connection, opened by the mesh's TCP preface.
pub const ALPN_MESH_TCP: &str = "mesh-tcp";

/// Mutual TLS for the inbound side: the workload certificate and the trust bundle
/// by SDS, TLS 1.3, a client certificate required; HTTP ALPN.
pub fn inbound_tls_context() -> DownstreamTlsContext {
    tls_context_with_alpn(&INBOUND_ALPN)
}

fn tls_context_with_alpn(alpn: &[&str]) -> DownstreamTlsContext {
    DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_params: Some(TlsParameters {
                tls_minimum_protocol_version: TlsProtocol::TlSv13 as i32,
                ..Default::default()
            }),
            tls_certificate_sds_secret_configs: vec![sds(names::WORKLOAD_CERT)],
            validation_context_type: Some(ValidationContextType::ValidationContextSdsSecretConfig(
                sds(names::TRUST_BUNDLE),
            )),
            alpn_protocols: alpn.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// The trust bundle as an SDS secret (a validation context with the roots inline).
pub fn trust_bundle_secret(pem: &str) -> Secret {
    Secret {
        name: names::TRUST_BUNDLE.into(),
        r#type: Some(secret::Type::ValidationContext(
            CertificateValidationContext {
                trusted_ca: Some(DataSource {
                    specifier: Some(data_source::Specifier::InlineBytes(pem.as_bytes().to_vec())),
                    ..Default::default()
                }),
                ..Default::default()
            },
        )),
    }
}

/// One app port of a workload, as the inbound listener serves it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InboundAppPort {
    /// The port the app listens on.
    pub port: u16,
    /// Whether a service declares it opaque: proxied as TCP, not HTTP.
    pub opaque: bool,
}

/// The sidecar's inbound listener for HTTP app ports (see [`inbound_listener_for`]).
pub fn inbound_listener(app_ports: &[u16], mode: MtlsMode, rbac: &[HttpFilter]) -> Listener {
    let ports: Vec<InboundAppPort> = app_ports
        .iter()
        .map(|&port| InboundAppPort {
            port,
            opaque: false,
        })
        .collect();
    inbound_listener_for(&ports, mode, rbac, &[])
}

/// The sidecar's inbound listener: for every app port a mutual-TLS filter chain
/// and, under PERMISSIVE, a plaintext one. An HTTP port's chain is an HTTP
/// connection manager whose filters start with the workload's authorization
/// (`rbac`, from [`crate::authz::rbac_filters`]) and route everything to the
/// port's inbound cluster; an opaque port's chain is the network RBAC filters
/// (`network_rbac`, from [`crate::authz::network_rbac_filters`]) and a TCP proxy
/// to that cluster, its TLS offering ALPN `mesh-tcp` only.
pub fn inbound_listener_for(
    app_ports: &[InboundAppPort],
    mode: MtlsMode,
    rbac: &[HttpFilter],
    network_rbac: &[Filter],
) -> Listener {
    let mut filter_chains = Vec::new();
    for app in app_ports {
        let port = app.port;
        let cluster = names::inbound_cluster(port);
        let mut transports = vec![("tls", true)];
        if mode == MtlsMode::Permissive {
            transports.push(("raw_buffer", false));
        }
        for (transport, tls) in transports {
            let (filters, alpn): (Vec<Filter>, &[&str]) = if app.opaque {
                let mut filters = network_rbac.to_vec();
                filters.push(tcp_proxy_filter(&cluster));
                (filters, &[ALPN_MESH_TCP])
            } else {
                let routes = RouteSpecifier::RouteConfig(single_route(&cluster, &cluster, &["*"]));
                let mut hcm = http_connection_manager(&cluster, routes);
                hcm.http_filters.splice(0..0, rbac.iter().cloned());
                (vec![hcm_filter(&hcm)], &INBOUND_ALPN)
            };
            filter_chains.push(FilterChain {
                name: format!("{cluster}|{}", if tls { "tls" } else { "plaintext" }),
                filter_chain_match: Some(FilterChainMatch {
                    destination_port: Some(UInt32Value {
                        value: u32::from(port),
                    }),
                    transport_protocol: transport.into(),
                    ..Default::default()
                }),
                filters,
                transport_socket: tls.then(|| TransportSocket {
                    name: TLS_TRANSPORT_SOCKET.into(),
                    config_type: Some(transport_socket::ConfigType::TypedConfig(pack(
                        &tls_context_with_alpn(alpn),
                    ))),
                }),
                ..Default::default()
            });
        }
    }
    Listener {
        name: names::INBOUND.into(),
        address: Some(socket_address(SocketAddr::from((
            [0, 0, 0, 0],
            names::INBOUND_PORT,
        )))),
        listener_filters: vec![
            // Captured plaintext (PERMISSIVE) is matched by its original port.
            listener_filter(ORIGINAL_DST_FILTER, &OriginalDst::default()),
            listener_filter(TLS_INSPECTOR, &TlsInspector::default()),
        ],
        filter_chains,
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    }
}

/// The API listener a proxyless gRPC client asks for by `<fqdn>:<port>`.
pub fn api_listener(name: &str) -> Listener {
    let hcm = http_connection_manager(name, rds(name));
    Listener {
        name: name.into(),
        api_listener: Some(ApiListener {
            api_listener: Some(pack(&hcm)),
        }),
        ..Default::default()
    }
}

/// A catch-all route to `cluster`. Its timeout is explicitly none (Envoy's
/// default would be 15 s); service routes add their policy on top.
fn route_to(cluster: &str) -> Route {
    Route {
        r#match: Some(RouteMatch {
            path_specifier: Some(PathSpecifier::Prefix(String::new())),
            ..Default::default()
        }),
        action: Some(Action::Route(RouteAction {
            cluster_specifier: Some(ClusterSpecifier::Cluster(cluster.into())),
            timeout: Some(Duration::default()),
            ..Default::default()
        })),
        ..Default::default()
    }
}

/// A catch-all route to a service port's cluster with the service's policy.
pub fn service_route(cluster: &str, policy: &RoutePolicy) -> Route {
    let mut route = route_to(cluster);
    if let Some(Action::Route(action)) = route.action.as_mut() {
        policy.apply(action);
    }
    route
}

/// A route configuration with one virtual host sending everything to `cluster`.
pub fn single_route(name: &str, cluster: &str, domains: &[&str]) -> RouteConfiguration {
    route_configuration(name, domains, vec![route_to(cluster)])
}

/// A route configuration with one virtual host holding `routes`.
pub fn route_configuration(name: &str, domains: &[&str], routes: Vec<Route>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: name.into(),
            domains: domains.iter().map(|d| d.to_string()).collect(),
            routes,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// A virtual host for one service port, reachable by `domains`, sending
/// everything to the port's own cluster with the default traffic policy.
pub fn service_virtual_host(cluster: &str, domains: Vec<String>) -> VirtualHost {
    service_virtual_host_with(cluster, domains, &route_policy(None))
}

/// A virtual host for one service port without HTTPRoutes: everything to the
/// port's own cluster, with the service's route policy.
pub fn service_virtual_host_with(
    cluster: &str,
    domains: Vec<String>,
    policy: &RoutePolicy,
) -> VirtualHost {
    routed_virtual_host(cluster, domains, vec![service_route(cluster, policy)])
}

/// A virtual host for one service port whose requests `routes` decide (its
/// HTTPRoutes, see [`crate::routes::service_routes`]).
pub fn routed_virtual_host(cluster: &str, domains: Vec<String>, routes: Vec<Route>) -> VirtualHost {
    VirtualHost {
        name: cluster.into(),
        domains,
        routes,
        ..Default::default()
    }
}

fn http2_options() -> (String, envoy_types::pb::google::protobuf::Any) {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
            ExplicitHttpConfig {
                protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                    Http2ProtocolOptions::default(),
                )),
            },
        )),
        ..Default::default()
    };
    (HTTP_PROTOCOL_OPTIONS.to_string(), pack(&options))
}

fn base_cluster(name: &str, http2: bool) -> Cluster {
    Cluster {
        name: name.into(),
        connect_timeout: Some(crate::policy::duration(
            mesh_model::traffic_defaults::DEFAULT_CONNECT_TIMEOUT,
        )),
        lb_policy: LbPolicy::RoundRobin as i32,
        typed_extension_protocol_options: http2.then(http2_options).into_iter().collect(),
        ..Default::default()
    }
}

/// The EDS cluster of a service port with the default traffic policy; `http2`
/// when the app speaks HTTP/2 (gRPC).
pub fn service_cluster(name: &str, http2: bool) -> Cluster {
    service_cluster_with(name, http2, None)
}

/// The EDS cluster of a service port with the service's TrafficPolicy (see
/// [`crate::policy::apply_cluster_policy`]).
pub fn service_cluster_with(name: &str, http2: bool, policy: Option<&TrafficPolicy>) -> Cluster {
    let mut cluster = Cluster {
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads_config_source()),
            service_name: String::new(),
        }),
        ..base_cluster(name, http2)
    };
    crate::policy::apply_cluster_policy(&mut cluster, policy);
    cluster
}

/// The static cluster that delivers inbound traffic to the local app.
pub fn inbound_cluster(app: SocketAddr, http2: bool) -> Cluster {
    let name = names::inbound_cluster(app.port());
    Cluster {
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Static as i32)),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.clone(),
            endpoints: vec![locality_endpoints(vec![lb_endpoint(
                app,
                HealthStatus::Healthy,
                1,
                None,
            )])],
            ..Default::default()
        }),
        ..base_cluster(&name, http2)
    }
}

/// An endpoint; `health` DRAINING tells proxies to send it no new requests while
/// requests on open connections finish.
fn lb_endpoint(
    addr: SocketAddr,
    health: HealthStatus,
    weight: u32,
    metadata: Option<envoy_types::pb::envoy::config::core::v3::Metadata>,
) -> LbEndpoint {
    LbEndpoint {
        host_identifier: Some(HostIdentifier::Endpoint(EnvoyEndpoint {
            address: Some(socket_address(addr)),
            ..Default::default()
        })),
        health_status: health as i32,
        metadata,
        load_balancing_weight: Some(UInt32Value {
            value: weight.max(1),
        }),
    }
}

/// One locality holding every endpoint. gRPC clients drop a locality without a
/// `load_balancing_weight`, so it always has one.
fn locality_endpoints(lb_endpoints: Vec<LbEndpoint>) -> LocalityLbEndpoints {
    LocalityLbEndpoints {
        locality: Some(Locality::default()),
        lb_endpoints,
        load_balancing_weight: Some(UInt32Value { value: 1 }),
        ..Default::default()
    }
}

/// The load assignment of a service port: its endpoints with the mesh's metadata.
pub fn load_assignment(cluster: &str, endpoints: &[Endpoint]) -> ClusterLoadAssignment {
    let lb_endpoints: Vec<_> = endpoints
        .iter()
        .map(|ep| {
            let mut fields = vec![
                (META_IDENTITY, metadata::string(ep.identity.to_string())),
                (META_WORKLOAD, metadata::string(&ep.workload.name)),
                (META_NAMESPACE, metadata::string(&ep.workload.namespace)),
            ];
            if ep.sidecar {
                fields.push((
                    META_SIDECAR_PORT,
                    metadata::number(f64::from(names::INBOUND_PORT)),
                ));
            }
            let health = if ep.draining {
                HealthStatus::Draining
            } else {
                HealthStatus::Healthy
            };
            lb_endpoint(ep.address, health, ep.weight, Some(mesh_metadata(fields)))
        })
        .collect();
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: if lb_endpoints.is_empty() {
            Vec::new()
        } else {
            vec![locality_endpoints(lb_endpoints)]
        },
        ..Default::default()
    }
}
