//! The TCP side of listeners: filter chain matches, TCP proxy chains, listener
//! filters, and choosing a chain for a connection the way Envoy does.
//!
//! The outbound listener carries `original_dst` and `http_inspector` listener
//! filters, one `tcp_proxy` chain per opaque service port (matched by cluster IP
//! and port), the HTTP chain (matched by the sniffed application protocol) and a
//! default `tcp_proxy` chain to the ORIGINAL_DST passthrough cluster. The
//! inbound listener has a `tcp_proxy` chain (with network RBAC filters in front)
//! per opaque app port. Decoding is strict: match criteria, filters and listener
//! filters the proxy does not implement are errors, so the config is NACKed
//! rather than half-honoured.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, ListenerFilter, ListenerFilterChainMatchPredicate, filter,
    filter_chain_match::ConnectionSourceType, listener_filter,
    listener_filter_chain_match_predicate::Rule,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
    TcpProxy, tcp_proxy::ClusterSpecifier,
};
use mesh_xds::any::unpack;
use mesh_xds::authz::NETWORK_RBAC_FILTER;
use mesh_xds::resources::{
    HTTP_INSPECTOR, ORIGINAL_DST_FILTER, PASSTHROUGH_CLUSTER, TCP_PROXY_FILTER, TLS_INSPECTOR,
};
use prost::Name;
use serde::Serialize;

use crate::authz::{Authz, decode_network_rbac};
use crate::decode::ListenerSpec;
use crate::routing::ClusterRt;

/// An IP prefix of a `prefix_ranges` match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Cidr {
    /// The network address.
    pub address: IpAddr,
    /// Prefix length in bits.
    pub len: u8,
}

impl Cidr {
    /// Whether `ip` is inside the prefix.
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.address, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// The `filter_chain_match` criteria the proxy implements.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChainMatch {
    /// `destination_port`.
    pub destination_port: Option<u16>,
    /// `prefix_ranges` on the destination IP.
    pub prefix_ranges: Vec<Cidr>,
    /// `transport_protocol` (`tls`, `raw_buffer`), empty for any.
    pub transport_protocol: String,
    /// `application_protocols` (sniffed `http/1.1`/`h2c`, or ALPN).
    pub application_protocols: Vec<String>,
}

/// Decodes a `filter_chain_match`; criteria the proxy cannot evaluate are errors.
pub fn chain_match(m: Option<&FilterChainMatch>, label: &str) -> Result<ChainMatch, String> {
    let Some(m) = m else {
        return Ok(ChainMatch::default());
    };
    let err = |what: &str| format!("filter chain {label}: {what} matching is not supported");
    if !m.server_names.is_empty() {
        return Err(err("server_names"));
    }
    if !m.source_prefix_ranges.is_empty() || !m.direct_source_prefix_ranges.is_empty() {
        return Err(err("source prefix"));
    }
    if !m.source_ports.is_empty() {
        return Err(err("source_ports"));
    }
    if !m.address_suffix.is_empty() || m.suffix_len.is_some() {
        return Err(err("address_suffix"));
    }
    if m.source_type != ConnectionSourceType::Any as i32 {
        return Err(err("source_type"));
    }
    if !matches!(m.transport_protocol.as_str(), "" | "tls" | "raw_buffer") {
        return Err(format!(
            "filter chain {label}: transport_protocol {:?} is not supported (tls, raw_buffer)",
            m.transport_protocol
        ));
    }
    let destination_port = m
        .destination_port
        .as_ref()
        .map(|p| {
            u16::try_from(p.value)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    format!(
                        "filter chain {label}: destination port {} is out of range",
                        p.value
                    )
                })
        })
        .transpose()?;
    let mut prefix_ranges = Vec::with_capacity(m.prefix_ranges.len());
    for r in &m.prefix_ranges {
        let address: IpAddr = r.address_prefix.parse().map_err(|_| {
            format!(
                "filter chain {label}: prefix {:?} is not an IP address",
                r.address_prefix
            )
        })?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let len = r.prefix_len.as_ref().map_or(0, |l| l.value);
        if len > max {
            return Err(format!(
                "filter chain {label}: prefix length {len} is out of range for {address}"
            ));
        }
        prefix_ranges.push(Cidr {
            address,
            // At most 128, checked above.
            len: len as u8,
        });
    }
    Ok(ChainMatch {
        destination_port,
        prefix_ranges,
        transport_protocol: m.transport_protocol.clone(),
        application_protocols: m.application_protocols.clone(),
    })
}

/// A filter chain that proxies TCP to a cluster.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TcpChainSpec {
    /// Chain name.
    pub name: String,
    /// When it applies.
    pub filter_match: ChainMatch,
    /// Whether it terminates (mutual) TLS.
    pub tls: bool,
    /// The network RBAC filters in front of the TCP proxy.
    pub authz: Arc<Authz>,
    /// The `tcp_proxy` cluster.
    pub cluster: String,
}

/// Whether `chain` is a TCP proxy chain (its last network filter is `tcp_proxy`).
pub fn is_tcp_chain(chain: &FilterChain) -> bool {
    chain.filters.last().is_some_and(|f| {
        f.name == TCP_PROXY_FILTER
            || matches!(&f.config_type, Some(filter::ConfigType::TypedConfig(a)) if a.type_url == TcpProxy::type_url())
    })
}

/// Decodes a TCP proxy chain: network RBAC filters, then one `tcp_proxy` to a
/// single named cluster. `tls` is the chain's decoded transport.
pub fn tcp_chain(chain: &FilterChain, label: &str, tls: bool) -> Result<TcpChainSpec, String> {
    let at = |e: String| format!("filter chain {label}: {e}");
    let (proxy, rbac) = chain
        .filters
        .split_last()
        .ok_or_else(|| at("no filters".into()))?;
    let mut authz = Authz::default();
    for f in rbac {
        let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else {
            return Err(at(format!(
                "network filter {:?} has no typed_config",
                f.name
            )));
        };
        if f.name != NETWORK_RBAC_FILTER {
            return Err(at(format!(
                "network filter {:?} is not supported before tcp_proxy",
                f.name
            )));
        }
        if let Some(filter) = decode_network_rbac(any).map_err(&at)? {
            authz.filters.push(filter);
        }
    }
    let Some(filter::ConfigType::TypedConfig(any)) = &proxy.config_type else {
        return Err(at("tcp_proxy has no typed_config".into()));
    };
    let config: TcpProxy = unpack(any).map_err(|e| at(format!("tcp_proxy: {e}")))?;
    let cluster = match config.cluster_specifier {
        Some(ClusterSpecifier::Cluster(c)) if !c.is_empty() => c,
        Some(ClusterSpecifier::WeightedClusters(_)) => {
            return Err(at("tcp_proxy weighted_clusters are not supported".into()));
        }
        _ => return Err(at("tcp_proxy names no cluster".into())),
    };
    Ok(TcpChainSpec {
        name: chain.name.clone(),
        filter_match: chain_match(chain.filter_chain_match.as_ref(), label)?,
        tls,
        authz: Arc::new(authz),
        cluster,
    })
}

/// What the listener filters do for this listener.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ListenerFilters {
    /// `original_dst`: chains match on the destination before the redirect.
    pub original_dst: bool,
    /// `http_inspector`: connections are sniffed for HTTP.
    pub http_inspector: bool,
    /// Destination ports the HTTP inspector is disabled for (opaque ports).
    pub unsniffed_ports: BTreeSet<u16>,
}

/// Decodes the listener filters. Unknown filters that are not optional, and
/// `filter_disabled` predicates other than destination ports, are errors.
pub fn listener_filters(filters: &[ListenerFilter]) -> Result<ListenerFilters, String> {
    let mut out = ListenerFilters::default();
    for f in filters {
        if matches!(
            f.config_type,
            Some(listener_filter::ConfigType::ConfigDiscovery(_))
        ) {
            return Err(format!(
                "listener filter {:?}: config discovery is not supported",
                f.name
            ));
        }
        let disabled = match &f.filter_disabled {
            Some(p) => Some(
                disabled_ports(p, 0).map_err(|e| format!("listener filter {:?}: {e}", f.name))?,
            ),
            None => None,
        };
        match f.name.as_str() {
            ORIGINAL_DST_FILTER => out.original_dst = true,
            TLS_INSPECTOR => {}
            HTTP_INSPECTOR => {
                out.http_inspector = true;
                out.unsniffed_ports = disabled.unwrap_or_default();
            }
            other => return Err(format!("listener filter {other:?} is not supported")),
        }
    }
    Ok(out)
}

/// The ports a `filter_disabled` predicate covers: destination port ranges,
/// possibly OR-ed.
fn disabled_ports(
    p: &ListenerFilterChainMatchPredicate,
    depth: usize,
) -> Result<BTreeSet<u16>, String> {
    if depth > 8 {
        return Err("filter_disabled nested too deeply".into());
    }
    match &p.rule {
        Some(Rule::DestinationPortRange(r)) => {
            let (Ok(start), Ok(end)) = (u16::try_from(r.start), u32::try_from(r.end)) else {
                return Err(format!("port range {}..{} is out of range", r.start, r.end));
            };
            if end > 65536 || end <= u32::from(start) {
                return Err(format!(
                    "port range {}..{} is empty or out of range",
                    r.start, r.end
                ));
            }
            // `end` is at most 65536, so every port below it fits in u16.
            Ok((u32::from(start)..end).map(|p| p as u16).collect())
        }
        Some(Rule::OrMatch(set)) => {
            let mut ports = BTreeSet::new();
            for r in &set.rules {
                ports.extend(disabled_ports(r, depth + 1)?);
            }
            Ok(ports)
        }
        _ => Err("filter_disabled supports destination_port_range and or_match only".into()),
    }
}

/// Where a TCP chain sends connections.
#[derive(Debug, Clone)]
pub struct TcpTarget {
    /// The cluster's name.
    pub cluster_name: Arc<str>,
    /// Its runtime (`None` until CDS has it).
    pub cluster: Option<Arc<ClusterRt>>,
}

impl TcpTarget {
    /// Whether this is the passthrough cluster (connect to the original destination).
    pub fn is_passthrough(&self) -> bool {
        self.cluster
            .as_ref()
            .map_or(&*self.cluster_name == PASSTHROUGH_CLUSTER, |c| {
                c.original_dst
            })
    }

    fn new(spec: &TcpChainSpec, clusters: &HashMap<String, Arc<ClusterRt>>) -> TcpTarget {
        TcpTarget {
            cluster_name: spec.cluster.as_str().into(),
            cluster: clusters.get(&spec.cluster).cloned(),
        }
    }
}

/// What a chain does with a connection.
#[derive(Debug, Clone)]
pub enum ChainAction {
    /// Serve it as HTTP (the HTTP connection manager).
    Http,
    /// Proxy it as TCP.
    Tcp(TcpTarget),
}

#[derive(Debug, Clone)]
struct Candidate {
    filter_match: ChainMatch,
    action: ChainAction,
}

/// The outbound listener's chains, ready to pick one per connection.
#[derive(Debug, Clone, Default)]
pub struct OutboundChains {
    candidates: Vec<Candidate>,
    default: Option<TcpTarget>,
    /// Its listener filters.
    pub filters: ListenerFilters,
}

impl OutboundChains {
    /// Builds the chain table: `http` are the HTTP chains' matches.
    pub fn build(
        http: impl IntoIterator<Item = ChainMatch>,
        tcp: &[TcpChainSpec],
        default: Option<&TcpChainSpec>,
        filters: &ListenerFilters,
        clusters: &HashMap<String, Arc<ClusterRt>>,
    ) -> OutboundChains {
        let mut candidates: Vec<Candidate> = http
            .into_iter()
            .map(|filter_match| Candidate {
                filter_match,
                action: ChainAction::Http,
            })
            .collect();
        candidates.extend(tcp.iter().map(|c| Candidate {
            filter_match: c.filter_match.clone(),
            action: ChainAction::Tcp(TcpTarget::new(c, clusters)),
        }));
        OutboundChains {
            candidates,
            default: default.map(|d| TcpTarget::new(d, clusters)),
            filters: filters.clone(),
        }
    }

    /// Whether a connection to `dst` is sniffed for HTTP before choosing.
    pub fn sniffs(&self, dst: Option<SocketAddr>) -> bool {
        self.filters.http_inspector
            && !dst.is_some_and(|d| self.filters.unsniffed_ports.contains(&d.port()))
    }

    /// The chain for a connection to `dst` (its original destination, if any)
    /// whose sniffed protocol is `protocol`, by Envoy's rule: prune to the chains
    /// with the most specific destination port match, then destination IP, then
    /// application protocol; no match is the default chain (or `None`: close).
    pub fn select(&self, dst: Option<SocketAddr>, protocol: Option<&str>) -> Option<ChainAction> {
        let all: Vec<&Candidate> = self
            .candidates
            .iter()
            .filter(|c| c.filter_match.transport_protocol != "tls")
            .collect();
        let port = dst.map(|d| d.port());
        let by_port: Vec<&Candidate> = match all.iter().any(|c| {
            c.filter_match.destination_port.is_some() && c.filter_match.destination_port == port
        }) {
            true => all
                .into_iter()
                .filter(|c| c.filter_match.destination_port == port)
                .collect(),
            false => all
                .into_iter()
                .filter(|c| c.filter_match.destination_port.is_none())
                .collect(),
        };
        let ip = dst.map(|d| d.ip());
        let prefix_len = |c: &Candidate| -> Option<u8> {
            let ip = ip?;
            c.filter_match
                .prefix_ranges
                .iter()
                .filter(|r| r.contains(ip))
                .map(|r| r.len)
                .max()
        };
        let best = by_port.iter().filter_map(|c| prefix_len(c)).max();
        let by_ip: Vec<&Candidate> = match best {
            Some(len) => by_port
                .into_iter()
                .filter(|c| prefix_len(c) == Some(len))
                .collect(),
            None => by_port
                .into_iter()
                .filter(|c| c.filter_match.prefix_ranges.is_empty())
                .collect(),
        };
        let named = |c: &&&Candidate| {
            protocol.is_some_and(|p| c.filter_match.application_protocols.iter().any(|a| a == p))
        };
        let chosen = by_ip
            .iter()
            .find(named)
            .or_else(|| {
                by_ip
                    .iter()
                    .find(|c| c.filter_match.application_protocols.is_empty())
            })
            .map(|c| c.action.clone());
        chosen.or_else(|| self.default.clone().map(ChainAction::Tcp))
    }
}

/// One opaque app port on the inbound side.
#[derive(Debug, Clone)]
pub struct InboundTcpPort {
    /// The inbound cluster (the local app).
    pub target: TcpTarget,
    /// Authorization for mutual-TLS callers (`None`: no TLS chain).
    pub tls: Option<Arc<Authz>>,
    /// Authorization for plaintext callers (`None`: plaintext not accepted).
    pub plaintext: Option<Arc<Authz>>,
}

/// The inbound listener's TCP chains by app port.
pub fn inbound_tcp_ports(
    chains: &[TcpChainSpec],
    clusters: &HashMap<String, Arc<ClusterRt>>,
) -> BTreeMap<u16, InboundTcpPort> {
    let mut ports: BTreeMap<u16, InboundTcpPort> = BTreeMap::new();
    for chain in chains {
        let Some(port) = chain.filter_match.destination_port else {
            continue;
        };
        let entry = ports.entry(port).or_insert_with(|| InboundTcpPort {
            target: TcpTarget::new(chain, clusters),
            tls: None,
            plaintext: None,
        });
        let slot = if chain.tls {
            &mut entry.tls
        } else {
            &mut entry.plaintext
        };
        slot.get_or_insert_with(|| chain.authz.clone());
    }
    ports
}

/// The TCP side of the proxy's listeners, rebuilt with the routing tables.
#[derive(Debug, Clone, Default)]
pub struct TcpTables {
    /// The outbound listener's chains (`None` until it arrived).
    pub outbound: Option<Arc<OutboundChains>>,
    /// Opaque app ports of the inbound listener.
    pub inbound: BTreeMap<u16, InboundTcpPort>,
}

impl TcpTables {
    /// Builds the tables from the decoded listeners and the cluster runtimes.
    pub fn build(
        outbound: Option<&ListenerSpec>,
        inbound: Option<&ListenerSpec>,
        clusters: &HashMap<String, Arc<ClusterRt>>,
    ) -> TcpTables {
        TcpTables {
            outbound: outbound.map(|l| {
                Arc::new(OutboundChains::build(
                    l.chains.iter().map(|c| c.filter_match.clone()),
                    &l.tcp_chains,
                    l.default_chain.as_ref(),
                    &l.listener_filters,
                    clusters,
                ))
            }),
            inbound: inbound
                .map(|l| inbound_tcp_ports(&l.tcp_chains, clusters))
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_xds::resources::{self, OpaqueServicePort};

    fn outbound(opaque: &[OpaqueServicePort]) -> OutboundChains {
        let l = resources::transparent_outbound_listener(opaque);
        let http = l
            .filter_chains
            .iter()
            .filter(|c| !is_tcp_chain(c))
            .map(|c| chain_match(c.filter_chain_match.as_ref(), "h").unwrap());
        let tcp: Vec<TcpChainSpec> = l
            .filter_chains
            .iter()
            .filter(|c| is_tcp_chain(c))
            .map(|c| tcp_chain(c, "t", false).unwrap())
            .collect();
        let default = tcp_chain(l.default_filter_chain.as_ref().unwrap(), "d", false).unwrap();
        let filters = listener_filters(&l.listener_filters).unwrap();
        OutboundChains::build(http, &tcp, Some(&default), &filters, &HashMap::new())
    }

    fn cluster(a: Option<ChainAction>) -> String {
        match a {
            Some(ChainAction::Http) => "http".into(),
            Some(ChainAction::Tcp(t)) => t.cluster_name.to_string(),
            None => "closed".into(),
        }
    }

    #[test]
    fn chains_are_chosen_as_envoy_would() {
        let chains = outbound(&[OpaqueServicePort {
            cluster_ip: "10.96.0.20".parse().unwrap(),
            port: 3306,
            cluster: "db.shop.svc.cluster.local:3306".into(),
        }]);
        let db: SocketAddr = "10.96.0.20:3306".parse().unwrap();
        assert!(chains.filters.original_dst);
        assert!(!chains.sniffs(Some(db)), "opaque ports are never sniffed");
        assert!(chains.sniffs(Some("10.96.0.21:80".parse().unwrap())));
        assert!(chains.sniffs(None));
        assert_eq!(
            cluster(chains.select(Some(db), None)),
            "db.shop.svc.cluster.local:3306"
        );
        // Same port, other IP: the port-specific chains win the first stage and
        // none matches the IP, so Envoy uses the default chain.
        let other_db = "10.1.2.3:3306".parse().ok();
        assert_eq!(cluster(chains.select(other_db, None)), PASSTHROUGH_CLUSTER);
        let web = "10.96.0.21:80".parse().ok();
        assert_eq!(cluster(chains.select(web, Some("http/1.1"))), "http");
        assert_eq!(cluster(chains.select(web, Some("h2c"))), "http");
        assert_eq!(cluster(chains.select(web, None)), PASSTHROUGH_CLUSTER);
        // Explicit proxy use: no original destination.
        assert_eq!(cluster(chains.select(None, Some("http/1.1"))), "http");
    }

    #[test]
    fn strict_about_what_cannot_be_honoured() {
        let m = FilterChainMatch {
            server_names: vec!["a".into()],
            ..Default::default()
        };
        assert!(
            chain_match(Some(&m), "x")
                .unwrap_err()
                .contains("server_names")
        );
        let m = FilterChainMatch {
            prefix_ranges: vec![envoy_types::pb::envoy::config::core::v3::CidrRange {
                address_prefix: "10.0.0.0".into(),
                prefix_len: Some(envoy_types::pb::google::protobuf::UInt32Value { value: 33 }),
            }],
            ..Default::default()
        };
        assert!(
            chain_match(Some(&m), "x")
                .unwrap_err()
                .contains("prefix length 33")
        );
        let unknown = ListenerFilter {
            name: "envoy.filters.listener.proxy_protocol".into(),
            ..Default::default()
        };
        assert!(
            listener_filters(&[unknown])
                .unwrap_err()
                .contains("proxy_protocol")
        );
        let cidr = Cidr {
            address: "10.96.0.0".parse().unwrap(),
            len: 12,
        };
        assert!(cidr.contains("10.100.1.1".parse().unwrap()));
        assert!(!cidr.contains("10.112.0.1".parse().unwrap()));
        let any = Cidr {
            address: "0.0.0.0".parse().unwrap(),
            len: 0,
        };
        assert!(any.contains("192.0.2.1".parse().unwrap()));
    }
}
