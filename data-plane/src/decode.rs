//! xDS resources -> the proxy's own, smaller config types.
//!
//! Decoding is strict: anything the proxy cannot honour (an unknown discovery type, a
//! listener without an address, a route action it does not implement) is an error, so
//! the xDS client can NACK it with a reason instead of silently misrouting traffic.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{
    ClusterDiscoveryType, DiscoveryType, LbPolicy,
};
use envoy_types::pb::envoy::config::core::v3::{
    Address, HealthStatus, TrafficDirection, address, socket_address::PortSpecifier,
};
use envoy_types::pb::envoy::config::core::v3::{data_source, transport_socket};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::config::listener::v3::{FilterChain, Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret, secret,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions, http_protocol_options::UpstreamProtocolOptions,
    http_protocol_options::explicit_http_config::ProtocolConfig,
};
use envoy_types::pb::google::protobuf::Any;
use mesh_xds::ResourceType;
use mesh_xds::any::unpack;
use mesh_xds::metadata;
use mesh_xds::resources::{
    HCM_FILTER, HTTP_PROTOCOL_OPTIONS, META_IDENTITY, META_NAMESPACE, META_SIDECAR_PORT,
    META_WORKLOAD, ROUTER_FILTER, TLS_TRANSPORT_SOCKET,
};
use prost::Name;
use serde::Serialize;

use crate::authz::{Authz, RBAC_FILTER, decode_rbac};
use crate::decode_policy::{ClusterPolicy, RoutePolicySpec, cluster_policy};
use crate::tcp_listener::{
    ChainMatch, ListenerFilters, TcpChainSpec, chain_match, is_tcp_chain, listener_filters,
    tcp_chain,
};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;

/// Why one resource was rejected; becomes the NACK's `error_detail` message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{ty} resource \"{name}\": {reason}")]
pub struct DecodeError {
    /// The resource type.
    pub ty: ResourceType,
    /// The resource name, or `?` when it could not be read.
    pub name: String,
    /// What is wrong with it.
    pub reason: String,
}

/// Which way a listener faces; decides whether it feeds the outbound or inbound table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Traffic from the app to the mesh.
    Outbound,
    /// Traffic from the mesh to the app.
    Inbound,
    /// Not stated.
    Unspecified,
}

/// A decoded listener: where it says it listens and how it routes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ListenerSpec {
    /// Resource name (`outbound`, `inbound`, ...).
    pub name: String,
    /// The address in the resource (the proxy binds its own flags; kept for the dump).
    pub address: Option<SocketAddr>,
    /// Traffic direction.
    pub direction: Direction,
    /// Whether this is a proxyless-gRPC API listener (accepted, not served).
    pub api_listener: bool,
    /// HTTP filter chains.
    pub chains: Vec<ChainSpec>,
    /// TCP proxy filter chains (opaque ports).
    pub tcp_chains: Vec<TcpChainSpec>,
    /// The chain for connections no chain matches (outbound: passthrough).
    pub default_chain: Option<TcpChainSpec>,
    /// What the listener filters do.
    pub listener_filters: ListenerFilters,
}

/// One filter chain: an optional destination port, its transport, its
/// authorization and the routes of its HCM.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChainSpec {
    /// Chain name.
    pub name: String,
    /// `filter_chain_match.destination_port`, the app port on the inbound listener.
    pub destination_port: Option<u16>,
    /// The whole `filter_chain_match` (the outbound listener picks chains by it).
    pub filter_match: ChainMatch,
    /// Whether the chain has a (mutual) TLS transport socket; chains without one
    /// take plaintext, which is how the controller expresses PERMISSIVE.
    pub tls: bool,
    /// The RBAC filters in front of the router.
    pub authz: Arc<Authz>,
    /// Where the chain's routes come from.
    pub routes: RouteSource,
}

/// Where an HTTP connection manager gets its routes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteSource {
    /// From RDS, by route configuration name.
    Rds(String),
    /// Inline in the listener.
    Inline(Arc<RouteSpec>),
}

/// A decoded route configuration.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteSpec {
    /// Resource name.
    pub name: String,
    /// Virtual hosts in order.
    pub virtual_hosts: Vec<VirtualHostSpec>,
}

/// A virtual host: domains and the rules that pick a cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VirtualHostSpec {
    /// Name (the service port's cluster for mesh routes).
    pub name: String,
    /// Host names it answers to, lowercased.
    pub domains: Vec<String>,
    /// Rules, first match wins.
    pub rules: Vec<RouteRule>,
}

/// One route: what a request must look like, what to do with it, and the header
/// edits of the rule it comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteRule {
    /// The route's name (`namespace/name` of its HTTPRoute), for logs and dumps.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// The request conditions; all must hold.
    pub matcher: RequestMatch,
    /// What a matching request gets.
    pub action: RuleAction,
    /// Edits to the request before it is sent upstream.
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub request_headers: HeaderEdits,
    /// Edits to the response before the caller gets it.
    #[serde(skip_serializing_if = "HeaderEdits::is_empty")]
    pub response_headers: HeaderEdits,
}

/// A route's conditions on the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RequestMatch {
    /// Path condition.
    pub path: PathMatch,
    /// Exact header values (`:method` is the method), names lower case.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// Exact query parameter values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub query: Vec<(String, String)>,
}

impl RequestMatch {
    /// Everything: `prefix ""`.
    pub fn any() -> RequestMatch {
        RequestMatch {
            path: PathMatch::Prefix(String::new()),
            headers: Vec::new(),
            query: Vec::new(),
        }
    }
}

/// What a route does with a matching request.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RuleAction {
    /// Send it to one of these clusters.
    Forward(ForwardSpec),
    /// Answer it directly (Envoy's `direct_response`).
    Respond {
        /// HTTP status.
        status: u16,
        /// Body text.
        body: String,
    },
}

impl RuleAction {
    /// A forward to one cluster.
    pub fn to_cluster(cluster: &str) -> RuleAction {
        RuleAction::Forward(ForwardSpec {
            clusters: vec![(cluster.to_string(), 1)],
            cluster_not_found: 503,
            policy: Default::default(),
        })
    }

    /// The first cluster it forwards to, if it forwards.
    pub fn first_cluster(&self) -> Option<&str> {
        match self {
            RuleAction::Forward(f) => f.clusters.first().map(|(c, _)| c.as_str()),
            RuleAction::Respond { .. } => None,
        }
    }
}

/// A forwarding route action.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ForwardSpec {
    /// Clusters and their weights (all weights > 0; one entry for a plain cluster).
    pub clusters: Vec<(String, u32)>,
    /// Status when the chosen cluster is unknown (`cluster_not_found_response_code`).
    pub cluster_not_found: u16,
    /// Timeout, retries and hash policy of the route (TrafficPolicy defaults
    /// and HTTPRoute rule values, as the controller merged them).
    pub policy: Arc<RoutePolicySpec>,
}

/// Header edits of a route: `set` overwrites, `append` adds a value, `remove`
/// drops; names lower case, values valid header values (checked when decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct HeaderEdits {
    /// Overwrite or add.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<(String, String)>,
    /// Append (or add).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub append: Vec<(String, String)>,
    /// Remove.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HeaderEdits {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.set.is_empty() && self.append.is_empty() && self.remove.is_empty()
    }
}

/// The path conditions the proxy supports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathMatch {
    /// Path starts with this (empty matches everything).
    Prefix(String),
    /// Path (without query) equals this.
    Exact(String),
}

impl PathMatch {
    /// Whether `path` (the request's path, without query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathMatch::Prefix(p) => path.starts_with(p.as_str()),
            PathMatch::Exact(p) => path == p,
        }
    }
}

/// A decoded cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterSpec {
    /// Resource name (`<fqdn>:<port>` or `inbound|<port>`).
    pub name: String,
    /// How its endpoints are found.
    pub discovery: Discovery,
    /// Whether the upstream speaks HTTP/2 (prior knowledge).
    pub http2: bool,
    /// Connect timeout in milliseconds.
    pub connect_timeout_ms: u64,
    /// Balancer, circuit breakers, retry budget, outlier detection.
    pub policy: ClusterPolicy,
}

/// How a cluster's endpoints are found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// From EDS under this name.
    Eds(String),
    /// Listed in the cluster itself.
    Static(Vec<EndpointSpec>),
    /// ORIGINAL_DST: wherever the connection was going (the passthrough cluster).
    #[serde(rename = "original_dst")]
    OriginalDst,
}

/// One upstream endpoint and who runs there.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct EndpointSpec {
    /// Where the app listens.
    pub address: SocketAddr,
    /// SPIFFE identity from the mesh metadata.
    pub identity: Option<String>,
    /// Workload instance name.
    pub workload: Option<String>,
    /// Workload namespace.
    pub namespace: Option<String>,
    /// Inbound port of the endpoint's sidecar; absent when it has none.
    pub sidecar_port: Option<u16>,
    /// Load-balancing weight (1 when not given).
    pub weight: u32,
}

/// A decoded EDS resource.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoadAssignment {
    /// The cluster (EDS service) name.
    pub cluster_name: String,
    /// Healthy endpoints.
    pub endpoints: Vec<EndpointSpec>,
}

/// Any decoded resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// LDS.
    Listener(Arc<ListenerSpec>),
    /// RDS.
    Route(Arc<RouteSpec>),
    /// CDS.
    Cluster(Arc<ClusterSpec>),
    /// EDS.
    Endpoint(Arc<LoadAssignment>),
    /// SDS.
    Secret(Arc<SecretSpec>),
}

/// A decoded SDS secret. Only validation contexts (trust bundles) are accepted:
/// the workload's own certificate never travels over xDS.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SecretSpec {
    /// Resource name (`ROOTCA`).
    pub name: String,
    /// The trust bundle as PEM, exactly as received.
    #[serde(skip)]
    pub pem: String,
    /// The roots, DER, parsed and checked to be usable trust anchors.
    #[serde(skip)]
    pub anchors: Vec<Vec<u8>>,
}

impl Decoded {
    /// The resource's own name.
    pub fn name(&self) -> &str {
        match self {
            Decoded::Listener(l) => &l.name,
            Decoded::Route(r) => &r.name,
            Decoded::Cluster(c) => &c.name,
            Decoded::Endpoint(e) => &e.cluster_name,
            Decoded::Secret(s) => &s.name,
        }
    }
}

/// Decodes one resource of type `ty`; `name_hint` names it in errors when the bytes
/// cannot even be read (Delta carries the name outside the body).
pub fn decode(ty: ResourceType, name_hint: &str, any: &Any) -> Result<Decoded, DecodeError> {
    let err = |name: &str, reason: String| DecodeError {
        ty,
        name: if name.is_empty() {
            "?".into()
        } else {
            name.into()
        },
        reason,
    };
    match ty {
        ResourceType::Listener => {
            let l: Listener = unpack(any).map_err(|e| err(name_hint, e.to_string()))?;
            listener(&l)
                .map(|l| Decoded::Listener(Arc::new(l)))
                .map_err(|r| err(&l.name, r))
        }
        ResourceType::Route => {
            let r: RouteConfiguration = unpack(any).map_err(|e| err(name_hint, e.to_string()))?;
            route_config(&r)
                .map(|r| Decoded::Route(Arc::new(r)))
                .map_err(|reason| err(&r.name, reason))
        }
        ResourceType::Cluster => {
            let c: Cluster = unpack(any).map_err(|e| err(name_hint, e.to_string()))?;
            cluster(&c)
                .map(|c| Decoded::Cluster(Arc::new(c)))
                .map_err(|r| err(&c.name, r))
        }
        ResourceType::Endpoint => {
            let a: ClusterLoadAssignment =
                unpack(any).map_err(|e| err(name_hint, e.to_string()))?;
            load_assignment(&a)
                .map(|a| Decoded::Endpoint(Arc::new(a)))
                .map_err(|r| err(&a.cluster_name, r))
        }
        ResourceType::Secret => {
            let s: Secret = unpack(any).map_err(|e| err(name_hint, e.to_string()))?;
            secret_spec(&s)
                .map(|s| Decoded::Secret(Arc::new(s)))
                .map_err(|r| err(&s.name, r))
        }
    }
}

fn secret_spec(s: &Secret) -> Result<SecretSpec, String> {
    if s.name.is_empty() {
        return Err("secret has no name".into());
    }
    let Some(secret::Type::ValidationContext(vc)) = &s.r#type else {
        return Err(
            "only validation-context secrets (trust bundles) are accepted; \
             the workload certificate comes from Certify"
                .into(),
        );
    };
    let pem = match vc.trusted_ca.as_ref().and_then(|d| d.specifier.as_ref()) {
        Some(data_source::Specifier::InlineBytes(b)) => String::from_utf8(b.clone())
            .map_err(|_| "trusted_ca inline_bytes is not UTF-8 PEM".to_string())?,
        Some(data_source::Specifier::InlineString(t)) => t.clone(),
        Some(_) => return Err("trusted_ca must be inline (bytes or string)".into()),
        None => return Err("validation context has no trusted_ca".into()),
    };
    let anchors = mesh_identity::tls::anchors_from_pem(&pem).map_err(|e| e.to_string())?;
    // Building a verifier parses every root as a trust anchor: a bundle that would
    // fail later is refused now, while the old one is still in use.
    mesh_identity::tls::client_config(None, &anchors, &[])
        .map_err(|e| format!("unusable trust bundle: {e}"))?;
    Ok(SecretSpec {
        name: s.name.clone(),
        pem,
        anchors,
    })
}

fn socket_addr(addr: Option<&Address>) -> Result<SocketAddr, String> {
    let Some(address::Address::SocketAddress(sa)) = addr.and_then(|a| a.address.as_ref()) else {
        return Err("no socket address".into());
    };
    let ip: IpAddr = sa
        .address
        .parse()
        .map_err(|_| format!("address {:?} is not an IP address", sa.address))?;
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => {
            u16::try_from(p).map_err(|_| format!("port {p} is out of range"))?
        }
        _ => return Err("socket address has no numeric port".into()),
    };
    Ok(SocketAddr::new(ip, port))
}

fn listener(l: &Listener) -> Result<ListenerSpec, String> {
    if l.name.is_empty() {
        return Err("listener has no name".into());
    }
    let api_listener = l.api_listener.is_some();
    let address = match (&l.address, api_listener) {
        (Some(a), _) => Some(socket_addr(Some(a)).map_err(|e| format!("bad address: {e}"))?),
        (None, true) => None,
        (None, false) => return Err("listener has no address".into()),
    };
    let direction = match TrafficDirection::try_from(l.traffic_direction) {
        Ok(TrafficDirection::Inbound) => Direction::Inbound,
        Ok(TrafficDirection::Outbound) => Direction::Outbound,
        _ => Direction::Unspecified,
    };
    let mut chains = Vec::with_capacity(l.filter_chains.len());
    let mut tcp_chains = Vec::new();
    for chain in &l.filter_chains {
        let label = if chain.name.is_empty() {
            "(unnamed)"
        } else {
            &chain.name
        };
        let filter_match = chain_match(chain.filter_chain_match.as_ref(), label)?;
        let destination_port = filter_match.destination_port;
        if is_tcp_chain(chain) {
            tcp_chains.push(tcp_chain(chain, label, chain_tls(chain, label)?)?);
            continue;
        }
        let hcm = chain
            .filters
            .iter()
            .find_map(|f| match &f.config_type {
                Some(filter::ConfigType::TypedConfig(any))
                    if f.name == HCM_FILTER
                        || any.type_url == HttpConnectionManager::type_url() =>
                {
                    Some(any)
                }
                _ => None,
            })
            .ok_or_else(|| format!("filter chain {label} has no HTTP connection manager"))?;
        let hcm: HttpConnectionManager =
            unpack(hcm).map_err(|e| format!("filter chain {label}: {e}"))?;
        let tls = chain_tls(chain, label)?;
        let authz = http_filters(&hcm).map_err(|e| format!("filter chain {label}: {e}"))?;
        chains.push(ChainSpec {
            name: chain.name.clone(),
            destination_port,
            filter_match,
            tls,
            authz: Arc::new(authz),
            routes: hcm_routes(&hcm).map_err(|e| format!("filter chain {label}: {e}"))?,
        });
    }
    let default_chain = match &l.default_filter_chain {
        Some(chain) if is_tcp_chain(chain) => Some(tcp_chain(
            chain,
            "(default)",
            chain_tls(chain, "(default)")?,
        )?),
        Some(_) => return Err("the default filter chain must be a tcp_proxy chain".into()),
        None => None,
    };
    Ok(ListenerSpec {
        name: l.name.clone(),
        address,
        direction,
        api_listener,
        chains,
        tcp_chains,
        default_chain,
        listener_filters: listener_filters(&l.listener_filters)?,
    })
}

/// Whether a chain terminates (mutual) TLS: its transport socket must be the
/// TLS one with a `DownstreamTlsContext`; no socket means plaintext.
fn chain_tls(chain: &FilterChain, label: &str) -> Result<bool, String> {
    let Some(ts) = &chain.transport_socket else {
        return Ok(false);
    };
    match &ts.config_type {
        Some(transport_socket::ConfigType::TypedConfig(any))
            if any.type_url == DownstreamTlsContext::type_url() =>
        {
            let _: DownstreamTlsContext =
                unpack(any).map_err(|e| format!("filter chain {label}: TLS context: {e}"))?;
            Ok(true)
        }
        _ if ts.name == TLS_TRANSPORT_SOCKET => Err(format!(
            "filter chain {label}: TLS transport socket without a DownstreamTlsContext"
        )),
        _ => Err(format!(
            "filter chain {label}: transport socket {:?} is not supported",
            ts.name
        )),
    }
}

/// The HTTP filters of an HCM: RBAC filters are decoded, the router is implied,
/// anything else that is not marked optional is refused.
fn http_filters(hcm: &HttpConnectionManager) -> Result<Authz, String> {
    let mut authz = Authz::default();
    for f in &hcm.http_filters {
        let any = match &f.config_type {
            Some(http_filter::ConfigType::TypedConfig(any)) => Some(any),
            _ => None,
        };
        let type_url = any.map(|a| a.type_url.as_str()).unwrap_or_default();
        if f.name == RBAC_FILTER || type_url == Rbac::type_url() {
            let any = any.ok_or_else(|| format!("HTTP filter {:?} has no config", f.name))?;
            if let Some(filter) = decode_rbac(any)? {
                authz.filters.push(filter);
            }
        } else if f.name == ROUTER_FILTER || type_url == Router::type_url() {
            // The proxy's own routing.
        } else if !f.is_optional {
            return Err(format!("HTTP filter {:?} is not supported", f.name));
        }
    }
    Ok(authz)
}

fn hcm_routes(hcm: &HttpConnectionManager) -> Result<RouteSource, String> {
    match &hcm.route_specifier {
        Some(RouteSpecifier::Rds(rds)) if !rds.route_config_name.is_empty() => {
            Ok(RouteSource::Rds(rds.route_config_name.clone()))
        }
        Some(RouteSpecifier::Rds(_)) => Err("RDS without route_config_name".into()),
        Some(RouteSpecifier::RouteConfig(rc)) => {
            Ok(RouteSource::Inline(Arc::new(route_config(rc)?)))
        }
        Some(RouteSpecifier::ScopedRoutes(_)) => Err("scoped routes are not supported".into()),
        None => Err("HTTP connection manager has no route configuration".into()),
    }
}

fn route_config(r: &RouteConfiguration) -> Result<RouteSpec, String> {
    let mut virtual_hosts = Vec::with_capacity(r.virtual_hosts.len());
    for vh in &r.virtual_hosts {
        let mut rules = Vec::with_capacity(vh.routes.len());
        for (i, route) in vh.routes.iter().enumerate() {
            let rule = crate::decode_route::route(route)
                .map_err(|e| format!("virtual host {:?} route {i}: {e}", vh.name))?;
            rules.push(rule);
        }
        virtual_hosts.push(VirtualHostSpec {
            name: vh.name.clone(),
            domains: vh.domains.iter().map(|d| d.to_ascii_lowercase()).collect(),
            rules,
        });
    }
    Ok(RouteSpec {
        name: r.name.clone(),
        virtual_hosts,
    })
}

fn cluster(c: &Cluster) -> Result<ClusterSpec, String> {
    if c.name.is_empty() {
        return Err("cluster has no name".into());
    }
    let kind = match &c.cluster_discovery_type {
        None => DiscoveryType::Static,
        Some(ClusterDiscoveryType::Type(t)) => {
            DiscoveryType::try_from(*t).map_err(|_| format!("unknown discovery type {t}"))?
        }
        Some(ClusterDiscoveryType::ClusterType(t)) => {
            return Err(format!("custom cluster type {:?} is not supported", t.name));
        }
    };
    let discovery = match kind {
        DiscoveryType::Eds => {
            let service = c
                .eds_cluster_config
                .as_ref()
                .map(|e| e.service_name.as_str())
                .filter(|s| !s.is_empty())
                .unwrap_or(&c.name);
            Discovery::Eds(service.to_string())
        }
        DiscoveryType::Static => Discovery::Static(match &c.load_assignment {
            Some(a) => load_assignment(a)?.endpoints,
            None => Vec::new(),
        }),
        DiscoveryType::OriginalDst => {
            if c.lb_policy != LbPolicy::ClusterProvided as i32 {
                return Err("an ORIGINAL_DST cluster needs lb_policy CLUSTER_PROVIDED".into());
            }
            Discovery::OriginalDst
        }
        other => {
            return Err(format!(
                "discovery type {} is not supported",
                other.as_str_name()
            ));
        }
    };
    // Older control planes still set the deprecated cluster-level field.
    #[allow(deprecated)]
    let mut http2 = c.http2_protocol_options.is_some();
    if let Some(any) = c
        .typed_extension_protocol_options
        .get(HTTP_PROTOCOL_OPTIONS)
    {
        let opts: HttpProtocolOptions =
            unpack(any).map_err(|e| format!("bad {HTTP_PROTOCOL_OPTIONS}: {e}"))?;
        if let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) =
            &opts.upstream_protocol_options
        {
            http2 = matches!(
                explicit.protocol_config,
                Some(ProtocolConfig::Http2ProtocolOptions(_))
            );
        }
    }
    let connect_timeout_ms = c
        .connect_timeout
        .as_ref()
        .map(|d| {
            let ms = d
                .seconds
                .saturating_mul(1000)
                .saturating_add(i64::from(d.nanos / 1_000_000));
            u64::try_from(ms).unwrap_or(0)
        })
        .filter(|&ms| ms > 0)
        .unwrap_or(5000);
    Ok(ClusterSpec {
        name: c.name.clone(),
        discovery,
        http2,
        connect_timeout_ms,
        policy: cluster_policy(c)?,
    })
}

fn load_assignment(a: &ClusterLoadAssignment) -> Result<LoadAssignment, String> {
    let mut endpoints = Vec::new();
    for locality in &a.endpoints {
        for lb in &locality.lb_endpoints {
            let healthy = !matches!(
                HealthStatus::try_from(lb.health_status),
                Ok(HealthStatus::Unhealthy | HealthStatus::Draining | HealthStatus::Timeout)
            );
            let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &lb.host_identifier else {
                return Err(
                    "endpoint without an address (named endpoints are not supported)".into(),
                );
            };
            let address = socket_addr(ep.address.as_ref())
                .map_err(|e| format!("bad endpoint address: {e}"))?;
            let fields = metadata::mesh_fields(lb.metadata.as_ref());
            let text = |key| {
                fields
                    .and_then(|f| metadata::get_str(f, key))
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
            };
            let sidecar_port = match fields.and_then(|f| f.fields.get(META_SIDECAR_PORT)) {
                None => None,
                Some(_) => {
                    let n = fields
                        .and_then(|f| metadata::get_number(f, META_SIDECAR_PORT))
                        .filter(|n| n.fract() == 0.0 && *n >= 1.0 && *n <= 65535.0)
                        .ok_or_else(|| format!("endpoint {address}: bad {META_SIDECAR_PORT}"))?;
                    // Checked to be an integer in 1..=65535 just above.
                    Some(n as u16)
                }
            };
            let weight = lb.load_balancing_weight.as_ref().map_or(1, |w| w.value);
            if weight == 0 {
                return Err(format!("endpoint {address}: load_balancing_weight 0"));
            }
            if healthy {
                endpoints.push(EndpointSpec {
                    address,
                    identity: text(META_IDENTITY),
                    workload: text(META_WORKLOAD),
                    namespace: text(META_NAMESPACE),
                    sidecar_port,
                    weight: weight.min(mesh_model::MAX_ENDPOINT_WEIGHT),
                });
            }
        }
    }
    Ok(LoadAssignment {
        cluster_name: a.cluster_name.clone(),
        endpoints,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_model::{Endpoint, Identity, ObjectKey};
    use mesh_xds::any::pack;
    use mesh_xds::resources;

    fn ok(ty: ResourceType, any: &Any) -> Decoded {
        decode(ty, "x", any).expect("decodes")
    }

    #[test]
    fn outbound_listener_uses_rds() {
        let Decoded::Listener(l) = ok(
            ResourceType::Listener,
            &pack(&resources::outbound_listener()),
        ) else {
            panic!("wrong kind")
        };
        assert_eq!(l.name, "outbound");
        assert_eq!(l.direction, Direction::Outbound);
        assert_eq!(l.address, Some("0.0.0.0:15001".parse().unwrap()));
        assert_eq!(l.chains[0].routes, RouteSource::Rds("outbound".into()));
    }

    #[test]
    fn inbound_listener_has_ports_and_inline_routes() {
        let Decoded::Listener(l) = ok(
            ResourceType::Listener,
            &pack(&resources::inbound_listener(
                &[8080, 9090],
                mesh_model::MtlsMode::Strict,
                &[],
            )),
        ) else {
            panic!("wrong kind")
        };
        assert_eq!(l.direction, Direction::Inbound);
        let ports: Vec<_> = l.chains.iter().map(|c| c.destination_port).collect();
        assert_eq!(ports, [Some(8080), Some(9090)]);
        assert!(l.chains.iter().all(|c| c.tls && c.authz.is_empty()));
        let RouteSource::Inline(r) = &l.chains[0].routes else {
            panic!("inline expected")
        };
        assert_eq!(r.virtual_hosts[0].domains, ["*"]);
        assert_eq!(
            r.virtual_hosts[0].rules[0].action.first_cluster(),
            Some("inbound|8080")
        );
    }

    #[test]
    fn clusters_eds_static_and_http2() {
        let Decoded::Cluster(c) = ok(
            ResourceType::Cluster,
            &pack(&resources::service_cluster(
                "a.b.svc.cluster.local:80",
                true,
            )),
        ) else {
            panic!()
        };
        assert!(c.http2);
        assert_eq!(c.connect_timeout_ms, 1000);
        assert_eq!(
            c.discovery,
            Discovery::Eds("a.b.svc.cluster.local:80".into())
        );
        let Decoded::Cluster(c) = ok(
            ResourceType::Cluster,
            &pack(&resources::inbound_cluster(
                "127.0.0.5:8080".parse().unwrap(),
                false,
            )),
        ) else {
            panic!()
        };
        assert!(!c.http2);
        assert_eq!(c.name, "inbound|8080");
        let Discovery::Static(eps) = &c.discovery else {
            panic!()
        };
        assert_eq!(eps[0].address, "127.0.0.5:8080".parse().unwrap());
    }

    #[test]
    fn endpoints_carry_mesh_metadata() {
        let eps = [
            Endpoint {
                address: "10.0.0.1:8080".parse().unwrap(),
                workload: ObjectKey::new("shop", "cat-1"),
                identity: Identity::new("cluster.local", "shop", "cat"),
                sidecar: true,
                draining: false,
                weight: 1,
            },
            Endpoint {
                address: "10.0.0.2:8080".parse().unwrap(),
                workload: ObjectKey::new("shop", "cat-2"),
                identity: Identity::new("cluster.local", "shop", "cat"),
                sidecar: false,
                draining: false,
                weight: 1,
            },
            // Terminating in Kubernetes: no new requests.
            Endpoint {
                address: "10.0.0.3:8080".parse().unwrap(),
                workload: ObjectKey::new("shop", "cat-3"),
                identity: Identity::new("cluster.local", "shop", "cat"),
                sidecar: true,
                draining: true,
                weight: 1,
            },
        ];
        let Decoded::Endpoint(a) = ok(
            ResourceType::Endpoint,
            &pack(&resources::load_assignment("c:80", &eps)),
        ) else {
            panic!()
        };
        assert_eq!(a.cluster_name, "c:80");
        assert_eq!(
            a.endpoints.len(),
            2,
            "the DRAINING endpoint takes no new requests"
        );
        assert_eq!(a.endpoints[0].sidecar_port, Some(15006));
        assert_eq!(a.endpoints[0].workload.as_deref(), Some("cat-1"));
        assert_eq!(a.endpoints[0].namespace.as_deref(), Some("shop"));
        assert_eq!(
            a.endpoints[0].identity.as_deref(),
            Some("spiffe://cluster.local/ns/shop/sa/cat")
        );
        assert_eq!(a.endpoints[1].sidecar_port, None);
        let empty = resources::load_assignment("c:80", &[]);
        let Decoded::Endpoint(a) = ok(ResourceType::Endpoint, &pack(&empty)) else {
            panic!()
        };
        assert!(a.endpoints.is_empty());
    }

    #[test]
    fn rejects_bad_resources_with_reasons() {
        // Wrong type URL.
        let e = decode(
            ResourceType::Cluster,
            "o",
            &pack(&resources::outbound_listener()),
        )
        .unwrap_err();
        assert!(e.reason.contains("expected"), "{e}");
        // Garbage bytes.
        let garbage = Any {
            type_url: Listener::type_url(),
            value: vec![0xff, 0xff, 0xff],
        };
        let e = decode(ResourceType::Listener, "junk", &garbage).unwrap_err();
        assert_eq!(e.name, "junk");
        assert!(e.to_string().starts_with("LDS resource \"junk\""), "{e}");
        // Listener without address.
        let mut l = resources::outbound_listener();
        l.address = None;
        let e = decode(ResourceType::Listener, "", &pack(&l)).unwrap_err();
        assert_eq!(e.name, "outbound");
        assert!(e.reason.contains("no address"), "{e}");
        // HCM without route.
        let hcm = HttpConnectionManager {
            route_specifier: None,
            ..Default::default()
        };
        let mut l = resources::outbound_listener();
        l.filter_chains[0].filters[0].config_type =
            Some(filter::ConfigType::TypedConfig(pack(&hcm)));
        let e = decode(ResourceType::Listener, "", &pack(&l)).unwrap_err();
        assert!(e.reason.contains("no route configuration"), "{e}");
        // Unknown and unsupported discovery types.
        let mut c = resources::service_cluster("c:80", false);
        c.cluster_discovery_type = Some(ClusterDiscoveryType::Type(42));
        let e = decode(ResourceType::Cluster, "", &pack(&c)).unwrap_err();
        assert!(e.reason.contains("unknown discovery type 42"), "{e}");
        c.cluster_discovery_type =
            Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
        let e = decode(ResourceType::Cluster, "", &pack(&c)).unwrap_err();
        assert!(e.reason.contains("STRICT_DNS"), "{e}");
    }
}
