//! The proxy's routing tables, built from the [`Store`] after every accepted update
//! and published behind an `ArcSwap`, so each request reads them without a lock.
//!
//! Routes are resolved to their cluster's runtime once, at build time; a request does
//! one hash lookup for the host, a scan of the host's rules in order (first match
//! wins; the controller emits them in Gateway API precedence), a random draw for a
//! weighted split, and an atomic increment to pick an endpoint.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::StatusCode;

use mesh_xds::names;

use crate::authz::Authz;
use crate::balancer::Balancer;
use crate::circuit_breaker::ClusterLoad;
use crate::clock::now_ns;
use crate::decode::{
    ClusterSpec, Direction, Discovery, EndpointSpec, ForwardSpec, ListenerSpec, LoadAssignment,
    RequestMatch, RouteRule, RouteSource, RouteSpec, RuleAction, VirtualHostSpec,
};
use crate::decode_policy::{ClusterPolicy, RoutePolicySpec};
use crate::endpoint_load::EndpointLoad;
use crate::metrics::{Reporter, RequestLabels, StatsCache, UNKNOWN};
use crate::outlier::{EjectedCount, EndpointHealth, Verdict};
use crate::route_match::{CompiledEdits, RequestView};
use crate::store::Store;
use crate::tcp_listener::TcpTables;

/// Who this proxy is; part of every outbound metric label set.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LocalIdentity {
    /// Own workload name.
    pub workload: String,
    /// Own namespace.
    pub namespace: String,
    /// Own SPIFFE ID once a certificate is held.
    pub principal: Option<String>,
    /// Whether hops to other sidecars are mutual TLS (the proxy has an identity).
    pub mtls: bool,
}

/// One endpoint with its cached outbound metric handles and live state.
#[derive(Debug)]
pub struct EndpointRt {
    /// The decoded endpoint.
    pub spec: EndpointSpec,
    /// Where to connect: the sidecar port on the endpoint's IP, or the app itself.
    pub connect_addr: SocketAddr,
    /// Outbound request metrics for this endpoint.
    pub stats: StatsCache,
    /// Requests in flight and latency, for least request. Kept across updates.
    pub load: Arc<EndpointLoad>,
    /// Failure streak and ejection. Kept across updates.
    pub health: Arc<EndpointHealth>,
}

/// A cluster with its endpoints and balancer.
#[derive(Debug)]
pub struct ClusterRt {
    /// Cluster name.
    pub name: Arc<str>,
    /// Service FQDN: the cluster name without `:<port>`.
    pub service: Arc<str>,
    /// Whether the upstream app speaks HTTP/2.
    pub http2: bool,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// An ORIGINAL_DST cluster: connections go where they were addressed.
    pub original_dst: bool,
    /// Endpoints (empty when none, or EDS not received yet).
    pub endpoints: Vec<Arc<EndpointRt>>,
    /// Balancer, limits, budget, outlier detection.
    pub policy: ClusterPolicy,
    balancer: Balancer,
    /// Live circuit-breaker and budget counters. Kept across updates.
    pub load: Arc<ClusterLoad>,
    /// Endpoints ejected now. Kept across updates.
    pub ejected: Arc<EjectedCount>,
    /// Outbound metrics for requests that found no endpoint.
    pub no_endpoint_stats: StatsCache,
    spec: Arc<ClusterSpec>,
    assignment: Option<Arc<LoadAssignment>>,
}

impl ClusterRt {
    /// An endpoint for a request with `hash` (ring hash), avoiding ejected
    /// endpoints and, when others remain, those in `tried` (indexes).
    pub fn pick(&self, hash: Option<u64>, tried: &[usize]) -> Option<usize> {
        let now = now_ns();
        let ejected = |i: usize| self.endpoints[i].health.is_ejected(now, &self.ejected);
        let cost = |i: usize| self.endpoints[i].load.cost(now);
        let n = self.endpoints.len();
        self.balancer
            .pick(n, hash, |i| !tried.contains(&i) && !ejected(i), cost)
            .or_else(|| self.balancer.pick(n, hash, |i| !ejected(i), cost))
            // Ejection never takes every endpoint; if racing updates did, serve.
            .or_else(|| self.balancer.pick(n, hash, |_| true, cost))
    }

    /// An endpoint for a connection or request that has no hash key and is not
    /// a retry (inbound delivery, TCP proxying).
    pub fn pick_endpoint(&self) -> Option<&Arc<EndpointRt>> {
        self.pick(None, &[]).map(|i| &self.endpoints[i])
    }

    /// Records how a request to endpoint `i` ended, for outlier detection;
    /// true when it ejected the endpoint.
    pub fn record_outcome(&self, i: usize, failure: bool) -> bool {
        let Some(ep) = self.endpoints.get(i) else {
            return false;
        };
        let Some(spec) = &self.policy.outlier else {
            return false;
        };
        if !failure {
            ep.health.success();
            return false;
        }
        match ep
            .health
            .failure(now_ns(), spec, &self.ejected, self.endpoints.len())
        {
            Verdict::Kept => false,
            Verdict::Ejected(ns) => {
                tracing::warn!(
                    cluster = %self.name,
                    endpoint = %ep.spec.address,
                    ejection_ms = ns / 1_000_000,
                    "outlier detection ejected an endpoint after consecutive failures"
                );
                true
            }
        }
    }
}

/// Where a route sends traffic, and how.
#[derive(Debug, Clone)]
pub struct Target {
    /// The cluster name the route names.
    pub cluster_name: Arc<str>,
    /// Its runtime, if the cluster is known.
    pub cluster: Option<Arc<ClusterRt>>,
    /// Timeout, retries and hash policy of the route.
    pub policy: Arc<RoutePolicySpec>,
}

/// A weighted choice among targets (one target: no draw).
#[derive(Debug)]
pub struct Split {
    /// Targets with their cumulative weight (strictly increasing).
    targets: Vec<(Target, u64)>,
    /// Status when the chosen target's cluster is unknown.
    pub cluster_not_found: StatusCode,
}

impl Split {
    fn new(spec: &ForwardSpec, clusters: &HashMap<String, Arc<ClusterRt>>) -> Split {
        let mut total = 0u64;
        let targets = spec
            .clusters
            .iter()
            .map(|(name, weight)| {
                total += u64::from(*weight);
                (
                    Target {
                        cluster_name: name.as_str().into(),
                        cluster: clusters.get(name).cloned(),
                        policy: spec.policy.clone(),
                    },
                    total,
                )
            })
            .collect();
        Split {
            targets,
            cluster_not_found: StatusCode::from_u16(spec.cluster_not_found)
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
        }
    }

    /// One target, drawn in proportion to the weights.
    pub fn pick(&self) -> &Target {
        match &self.targets[..] {
            [(only, _)] => only,
            targets => {
                let total = targets.last().map_or(1, |(_, w)| *w);
                let draw = fastrand::u64(..total);
                let i = targets.partition_point(|(_, cumulative)| *cumulative <= draw);
                &targets[i.min(targets.len() - 1)].0
            }
        }
    }

    /// Every target (for tests and the dump).
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.targets.iter().map(|(t, _)| t)
    }
}

/// What a matched rule does.
#[derive(Debug)]
pub enum ActionRt {
    /// Forward to a cluster of the split.
    Forward(Split),
    /// Answer directly.
    Respond(StatusCode, bytes::Bytes),
}

/// One route, ready for requests.
#[derive(Debug)]
pub struct RuleRt {
    /// The route's name (its HTTPRoute), for logs.
    pub name: Arc<str>,
    matcher: RequestMatch,
    /// What it does.
    pub action: ActionRt,
    /// Request header edits.
    pub request_headers: CompiledEdits,
    /// Response header edits.
    pub response_headers: CompiledEdits,
}

impl RuleRt {
    fn new(rule: &RouteRule, clusters: &HashMap<String, Arc<ClusterRt>>) -> RuleRt {
        RuleRt {
            name: rule.name.as_str().into(),
            matcher: rule.matcher.clone(),
            action: match &rule.action {
                RuleAction::Forward(f) => ActionRt::Forward(Split::new(f, clusters)),
                RuleAction::Respond { status, body } => ActionRt::Respond(
                    StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    bytes::Bytes::from(format!("{body}\n")),
                ),
            },
            request_headers: CompiledEdits::compile(&rule.request_headers),
            response_headers: CompiledEdits::compile(&rule.response_headers),
        }
    }
}

/// A virtual host: the service it stands for and its rules in order.
#[derive(Debug)]
pub struct VirtualHostRt {
    /// The service FQDN (from the virtual host's name, `<fqdn>:<port>`), for
    /// metrics of requests answered without a cluster.
    pub service: Arc<str>,
    rules: Vec<Arc<RuleRt>>,
}

impl VirtualHostRt {
    fn new(vh: &VirtualHostSpec, clusters: &HashMap<String, Arc<ClusterRt>>) -> VirtualHostRt {
        VirtualHostRt {
            service: service_of(&vh.name).into(),
            rules: vh
                .rules
                .iter()
                .map(|r| Arc::new(RuleRt::new(r, clusters)))
                .collect(),
        }
    }

    /// The first rule `req` matches.
    pub fn route(&self, req: &RequestView<'_>) -> Option<&Arc<RuleRt>> {
        self.rules.iter().find(|r| r.matcher.matches(req))
    }
}

/// Host -> virtual host, in Envoy's precedence: exact, suffix wildcard (`*.x`),
/// prefix wildcard (`x.*`), then `*`.
#[derive(Debug, Default)]
pub struct RouteTable {
    exact: HashMap<String, Arc<VirtualHostRt>>,
    suffixes: Vec<(String, Arc<VirtualHostRt>)>,
    prefixes: Vec<(String, Arc<VirtualHostRt>)>,
    any: Option<Arc<VirtualHostRt>>,
}

impl RouteTable {
    fn add(&mut self, spec: &RouteSpec, clusters: &HashMap<String, Arc<ClusterRt>>) {
        for vh in &spec.virtual_hosts {
            let rt = Arc::new(VirtualHostRt::new(vh, clusters));
            for d in &vh.domains {
                if d == "*" {
                    self.any.get_or_insert_with(|| rt.clone());
                } else if let Some(suffix) = d.strip_prefix('*') {
                    self.suffixes.push((suffix.to_string(), rt.clone()));
                } else if let Some(prefix) = d.strip_suffix('*') {
                    self.prefixes.push((prefix.to_string(), rt.clone()));
                } else {
                    self.exact.entry(d.clone()).or_insert_with(|| rt.clone());
                }
            }
        }
        // Longest wildcard wins, as in Envoy.
        self.suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        self.prefixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    }

    /// The virtual host for `host` (already lowercased).
    pub fn find(&self, host: &str) -> Option<&Arc<VirtualHostRt>> {
        self.exact
            .get(host)
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(s, _)| host.len() > s.len() && host.ends_with(s.as_str()))
                    .map(|(_, v)| v)
            })
            .or_else(|| {
                self.prefixes
                    .iter()
                    .find(|(p, _)| host.len() > p.len() && host.starts_with(p.as_str()))
                    .map(|(_, v)| v)
            })
            .or(self.any.as_ref())
    }
}

/// One app port on the inbound side: where it goes and who may call it.
#[derive(Debug, Clone)]
pub struct InboundPort {
    /// The inbound cluster.
    pub target: Target,
    /// Authorization for mutual-TLS callers (`None`: no TLS chain for this port).
    pub tls: Option<Arc<Authz>>,
    /// Authorization for plaintext callers (`None`: plaintext not accepted).
    pub plaintext: Option<Arc<Authz>>,
}

/// The inbound listener's ports and their clusters.
#[derive(Debug, Default)]
pub struct InboundTable {
    /// App port -> inbound cluster and authorization.
    pub ports: BTreeMap<u16, InboundPort>,
    /// Whether some chain takes plaintext (PERMISSIVE, or a listener from before
    /// mutual TLS).
    pub accepts_plaintext: bool,
    /// Whether some chain takes mutual TLS.
    pub accepts_tls: bool,
}

impl InboundTable {
    /// The ports, as a readable list for error messages.
    pub fn port_list(&self) -> String {
        let ports: Vec<String> = self.ports.keys().map(u16::to_string).collect();
        format!("[{}]", ports.join(", "))
    }
}

/// Everything a request needs, immutable once published.
#[derive(Debug, Default)]
pub struct ProxyConfig {
    /// Outbound routes; `None` until the outbound listener and its routes arrived.
    pub outbound: Option<RouteTable>,
    /// Inbound ports; `None` until the inbound listener arrived.
    pub inbound: Option<InboundTable>,
    /// The TCP side of both listeners (chain selection, opaque ports).
    pub tcp: TcpTables,
    /// Clusters by name.
    pub clusters: HashMap<String, Arc<ClusterRt>>,
    /// The resources this was built from (for `/config_dump`).
    pub store: Store,
}

/// The service FQDN a cluster name stands for (`<fqdn>:<port>` -> `<fqdn>`).
pub fn service_of(cluster: &str) -> &str {
    match cluster.rsplit_once(':') {
        Some((fqdn, port)) if port.parse::<u16>().is_ok() => fqdn,
        _ => cluster,
    }
}

fn pick_listener(store: &Store, name: &str, dir: Direction) -> Option<Arc<ListenerSpec>> {
    let all: Vec<&Arc<ListenerSpec>> = store.listeners().filter(|l| !l.api_listener).collect();
    all.iter()
        .find(|l| l.name == name)
        .or_else(|| all.iter().find(|l| l.direction == dir))
        .map(|l| Arc::clone(l))
}

impl ProxyConfig {
    /// Builds the tables from `store`, reusing the runtime of clusters whose
    /// resources did not change since `prev`.
    pub fn build(store: &Store, prev: &ProxyConfig, me: &LocalIdentity) -> ProxyConfig {
        let mut clusters = HashMap::new();
        for spec in store.clusters() {
            let assignment = match &spec.discovery {
                Discovery::Eds(name) => store.endpoints(name).cloned(),
                Discovery::Static(_) | Discovery::OriginalDst => None,
            };
            let reused = prev.clusters.get(&spec.name).filter(|old| {
                Arc::ptr_eq(&old.spec, spec)
                    && match (&old.assignment, &assignment) {
                        (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                        (None, None) => true,
                        _ => false,
                    }
            });
            let rt = match reused {
                Some(old) => old.clone(),
                None => Arc::new(cluster_rt(
                    spec.clone(),
                    assignment,
                    me,
                    prev.clusters.get(&spec.name).map(|c| &**c),
                )),
            };
            clusters.insert(spec.name.clone(), rt);
        }

        let outbound = pick_listener(store, names::OUTBOUND, Direction::Outbound).and_then(|l| {
            let mut table = RouteTable::default();
            for chain in &l.chains {
                match &chain.routes {
                    RouteSource::Rds(name) => table.add(store.route(name)?, &clusters),
                    RouteSource::Inline(spec) => table.add(spec, &clusters),
                }
            }
            Some(table)
        });

        let inbound = pick_listener(store, names::INBOUND, Direction::Inbound).map(|l| {
            let mut ports: BTreeMap<u16, InboundPort> = BTreeMap::new();
            let accepts_plaintext =
                l.chains.iter().any(|c| !c.tls) || l.tcp_chains.iter().any(|c| !c.tls);
            let accepts_tls = l.chains.iter().any(|c| c.tls) || l.tcp_chains.iter().any(|c| c.tls);
            for chain in &l.chains {
                let Some(port) = chain.destination_port else {
                    continue;
                };
                let inline = match &chain.routes {
                    RouteSource::Inline(spec) => spec
                        .virtual_hosts
                        .first()
                        .and_then(|vh| vh.rules.first())
                        .and_then(|r| r.action.first_cluster())
                        .map(str::to_string),
                    RouteSource::Rds(_) => None,
                };
                let name = inline.unwrap_or_else(|| names::inbound_cluster(port));
                let entry = ports.entry(port).or_insert_with(|| InboundPort {
                    target: Target {
                        cluster: clusters.get(&name).cloned(),
                        cluster_name: name.into(),
                        policy: Default::default(),
                    },
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
            InboundTable {
                ports,
                accepts_plaintext,
                accepts_tls,
            }
        });

        let tcp = TcpTables::build(
            pick_listener(store, names::OUTBOUND, Direction::Outbound).as_deref(),
            pick_listener(store, names::INBOUND, Direction::Inbound).as_deref(),
            &clusters,
        );
        ProxyConfig {
            outbound,
            inbound,
            tcp,
            clusters,
            store: store.clone(),
        }
    }
}

/// A cluster's runtime; live state (loads, ejections, breaker counters) comes
/// over from `prev`, the cluster's previous runtime, for endpoints still there.
fn cluster_rt(
    spec: Arc<ClusterSpec>,
    assignment: Option<Arc<LoadAssignment>>,
    me: &LocalIdentity,
    prev: Option<&ClusterRt>,
) -> ClusterRt {
    let previous =
        |addr: SocketAddr| prev.and_then(|p| p.endpoints.iter().find(|e| e.spec.address == addr));
    let service: Arc<str> = service_of(&spec.name).into();
    let base = RequestLabels {
        source_workload: me.workload.clone(),
        source_namespace: me.namespace.clone(),
        source_principal: me.principal.clone().unwrap_or_else(|| UNKNOWN.to_string()),
        destination_service: service.to_string(),
        ..RequestLabels::unknown(Reporter::Source)
    };
    let specs: &[EndpointSpec] = match (&spec.discovery, &assignment) {
        (Discovery::Static(eps), _) => eps,
        (Discovery::Eds(_), Some(a)) => &a.endpoints,
        (Discovery::Eds(_), None) | (Discovery::OriginalDst, _) => &[],
    };
    let endpoints = specs
        .iter()
        .map(|ep| {
            let label = |v: &Option<String>| v.clone().unwrap_or_else(|| UNKNOWN.to_string());
            Arc::new(EndpointRt {
                connect_addr: match ep.sidecar_port {
                    Some(port) => SocketAddr::new(ep.address.ip(), port),
                    None => ep.address,
                },
                stats: StatsCache::new(RequestLabels {
                    destination_workload: label(&ep.workload),
                    destination_namespace: label(&ep.namespace),
                    // A mutual-TLS hop proves the callee's identity before any
                    // request is sent, so the label is the verified one.
                    destination_principal: if me.mtls && ep.sidecar_port.is_some() {
                        label(&ep.identity)
                    } else {
                        UNKNOWN.to_string()
                    },
                    connection_security_policy: if me.mtls && ep.sidecar_port.is_some() {
                        crate::metrics::MUTUAL_TLS
                    } else {
                        "none"
                    },
                    ..base.clone()
                }),
                load: previous(ep.address).map_or_else(Default::default, |e| e.load.clone()),
                health: previous(ep.address).map_or_else(Default::default, |e| e.health.clone()),
                spec: ep.clone(),
            })
        })
        .collect::<Vec<_>>();
    let weights: Vec<u32> = endpoints.iter().map(|e| e.spec.weight).collect();
    let keys: Vec<String> = endpoints
        .iter()
        .map(|e| e.spec.address.to_string())
        .collect();
    // Ejections of endpoints that left are forgotten with them.
    let ejected = Arc::new(EjectedCount::default());
    let now = now_ns();
    for e in &endpoints {
        if e.health.is_ejected(now, &EjectedCount::default()) {
            ejected.force_add();
        }
    }
    ClusterRt {
        name: spec.name.as_str().into(),
        service,
        http2: spec.http2,
        connect_timeout: Duration::from_millis(spec.connect_timeout_ms),
        original_dst: spec.discovery == Discovery::OriginalDst,
        balancer: Balancer::new(spec.policy.lb, &weights, &keys),
        endpoints,
        policy: spec.policy.clone(),
        load: prev.map_or_else(Default::default, |p| p.load.clone()),
        ejected,
        no_endpoint_stats: StatsCache::new(base),
        spec,
        assignment,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mesh_model::{Endpoint, Identity, ObjectKey};
    use mesh_xds::ResourceType;
    use mesh_xds::any::pack;
    use mesh_xds::resources;

    use crate::decode::PathMatch;

    /// The first target of the rule a GET of `path` on `host` matches.
    pub(crate) fn find<'a>(t: &'a RouteTable, host: &str, path: &str) -> Option<&'a Target> {
        let uri: http::Uri = path.parse().unwrap();
        let headers = http::HeaderMap::new();
        let rule = t
            .find(host)?
            .route(&RequestView::new(&http::Method::GET, &uri, &headers))?;
        match &rule.action {
            ActionRt::Forward(split) => split.targets().next(),
            ActionRt::Respond(..) => None,
        }
    }

    fn rule(path: PathMatch, cluster: &str) -> RouteRule {
        RouteRule {
            name: String::new(),
            matcher: RequestMatch {
                path,
                ..RequestMatch::any()
            },
            action: RuleAction::to_cluster(cluster),
            request_headers: Default::default(),
            response_headers: Default::default(),
        }
    }

    pub(crate) fn me() -> LocalIdentity {
        LocalIdentity {
            workload: "web-1".into(),
            namespace: "default".into(),
            ..Default::default()
        }
    }

    /// A store with catalog (port 8080, two endpoints, one with a sidecar), a port-80
    /// service without endpoints, and an inbound listener for 9090.
    pub(crate) fn store() -> Store {
        let mut s = Store::default();
        let cat = "catalog.default.svc.cluster.local:8080";
        let web = "web.default.svc.cluster.local:80";
        let clusters = [
            pack(&resources::service_cluster(cat, false)),
            pack(&resources::service_cluster(web, false)),
            pack(&resources::inbound_cluster(
                "127.0.0.9:9090".parse().unwrap(),
                true,
            )),
        ];
        s.apply_sotw(ResourceType::Cluster, "1", "a", &clusters, None)
            .unwrap();
        let eps = [
            Endpoint {
                address: "10.0.0.1:8080".parse().unwrap(),
                workload: ObjectKey::new("default", "catalog-1"),
                identity: Identity::new("cluster.local", "default", "catalog"),
                sidecar: true,
                draining: false,
                weight: 1,
            },
            Endpoint {
                address: "10.0.0.2:8080".parse().unwrap(),
                workload: ObjectKey::new("default", "catalog-2"),
                identity: Identity::new("cluster.local", "default", "catalog"),
                sidecar: false,
                draining: false,
                weight: 1,
            },
        ];
        let cla = [
            pack(&resources::load_assignment(cat, &eps)),
            pack(&resources::load_assignment(web, &[])),
        ];
        s.apply_sotw(ResourceType::Endpoint, "1", "b", &cla, Some(&s.eds_names()))
            .unwrap();
        let listeners = [
            pack(&resources::outbound_listener()),
            pack(&resources::inbound_listener(
                &[9090],
                mesh_model::MtlsMode::Permissive,
                &[],
            )),
        ];
        s.apply_sotw(ResourceType::Listener, "1", "c", &listeners, None)
            .unwrap();
        let route = envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
            name: "outbound".into(),
            virtual_hosts: vec![
                resources::service_virtual_host(
                    cat,
                    mesh_xds::names::service_domains(
                        "catalog",
                        "default",
                        "cluster.local",
                        8080,
                        "default",
                        None,
                    ),
                ),
                resources::service_virtual_host(
                    web,
                    mesh_xds::names::service_domains(
                        "web",
                        "default",
                        "cluster.local",
                        80,
                        "default",
                        None,
                    ),
                ),
            ],
            ..Default::default()
        };
        s.apply_sotw(
            ResourceType::Route,
            "1",
            "d",
            &[pack(&route)],
            Some(&s.route_names()),
        )
        .unwrap();
        s
    }

    #[test]
    fn routes_by_host_with_and_without_port() {
        let cfg = ProxyConfig::build(&store(), &ProxyConfig::default(), &me());
        let out = cfg.outbound.as_ref().expect("outbound table");
        let t = find(out, "catalog:8080", "/").unwrap();
        assert_eq!(&*t.cluster_name, "catalog.default.svc.cluster.local:8080");
        assert!(find(out, "catalog.default.svc.cluster.local:8080", "/x").is_some());
        assert!(
            find(out, "catalog", "/").is_none(),
            "bare host only for port 80"
        );
        assert!(find(out, "catalog:9999", "/").is_none());
        let w = find(out, "web.default", "/").unwrap();
        assert_eq!(&*w.cluster_name, "web.default.svc.cluster.local:80");
        assert!(find(out, "web:80", "/").is_some());
        assert!(find(out, "nope", "/").is_none());
    }

    #[test]
    fn clusters_endpoints_and_inbound() {
        let cfg = ProxyConfig::build(&store(), &ProxyConfig::default(), &me());
        let out = cfg.outbound.as_ref().unwrap();
        let cat = find(out, "catalog:8080", "/")
            .unwrap()
            .cluster
            .clone()
            .unwrap();
        assert_eq!(&*cat.service, "catalog.default.svc.cluster.local");
        assert_eq!(cat.endpoints.len(), 2);
        assert_eq!(
            cat.endpoints[0].connect_addr,
            "10.0.0.1:15006".parse().unwrap()
        );
        assert_eq!(
            cat.endpoints[1].connect_addr,
            "10.0.0.2:8080".parse().unwrap()
        );
        let a = cat.pick(None, &[]).unwrap();
        let b = cat.pick(None, &[a]).unwrap();
        assert_ne!(a, b, "a retry avoids the endpoint tried");
        let web = find(out, "web", "/").unwrap().cluster.clone().unwrap();
        assert!(web.pick(None, &[]).is_none());
        let inbound = cfg.inbound.as_ref().unwrap();
        assert!(inbound.accepts_plaintext && inbound.accepts_tls);
        let p = inbound.ports.get(&9090).unwrap();
        assert!(p.tls.is_some() && p.plaintext.is_some());
        let c = p.target.cluster.as_ref().unwrap();
        assert!(c.http2);
        assert_eq!(
            c.endpoints[0].spec.address,
            "127.0.0.9:9090".parse().unwrap()
        );
        assert_eq!(inbound.port_list(), "[9090]");
    }

    #[test]
    fn rebuild_reuses_unchanged_clusters() {
        let s = store();
        let first = ProxyConfig::build(&s, &ProxyConfig::default(), &me());
        let second = ProxyConfig::build(&s, &first, &me());
        let name = "catalog.default.svc.cluster.local:8080";
        assert!(Arc::ptr_eq(&first.clusters[name], &second.clusters[name]));
    }

    #[test]
    fn weighted_split_draws_by_weight_and_keeps_unknown_clusters() {
        let known = Arc::new(cluster_rt(
            Arc::new(ClusterSpec {
                name: "v1:80".into(),
                discovery: Discovery::Static(Vec::new()),
                http2: false,
                connect_timeout_ms: 1000,
                policy: crate::decode_policy::cluster_policy(&Default::default()).unwrap(),
            }),
            None,
            &me(),
            None,
        ));
        let clusters: HashMap<String, Arc<ClusterRt>> = [("v1:80".to_string(), known)].into();
        let split = Split::new(
            &ForwardSpec {
                clusters: vec![("v1:80".into(), 90), ("ghost:80".into(), 10)],
                cluster_not_found: 500,
                policy: Arc::new(RoutePolicySpec {
                    timeout: Some(Duration::from_secs(2)),
                    ..Default::default()
                }),
            },
            &clusters,
        );
        assert_eq!(split.cluster_not_found, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            split
                .targets()
                .all(|t| t.policy.timeout == Some(Duration::from_secs(2))),
            "every target carries the rule's route policy"
        );
        fastrand::seed(7);
        let ghost = (0..10_000)
            .filter(|_| split.pick().cluster.is_none())
            .count();
        assert!(
            (700..=1300).contains(&ghost),
            "10% to the unknown backend: {ghost}"
        );
    }

    #[test]
    fn wildcard_domains() {
        let mut t = RouteTable::default();
        let spec = RouteSpec {
            name: "r".into(),
            virtual_hosts: vec![
                crate::decode::VirtualHostSpec {
                    name: "a".into(),
                    domains: vec!["*.example.com".into()],
                    rules: vec![rule(PathMatch::Exact("/only".into()), "a")],
                },
                crate::decode::VirtualHostSpec {
                    name: "b".into(),
                    domains: vec!["*".into()],
                    rules: vec![rule(PathMatch::Prefix(String::new()), "b")],
                },
            ],
        };
        t.add(&spec, &HashMap::new());
        assert_eq!(
            &*find(&t, "x.example.com", "/only").unwrap().cluster_name,
            "a"
        );
        assert!(find(&t, "x.example.com", "/other").is_none());
        assert_eq!(&*find(&t, "other", "/").unwrap().cluster_name, "b");
        assert_eq!(service_of("a.b.svc:80"), "a.b.svc");
        assert_eq!(service_of("inbound|80"), "inbound|80");
    }
}
