//! Immutable sets of built resources, and each proxy's view of them.
//!
//! A [`Snapshot`] is built once per model change and shared by every connected proxy;
//! resources common to many proxies (clusters, endpoints, per-namespace routes) are
//! encoded once. A [`ProxyView`] adds what is specific to one proxy (its inbound
//! listener and clusters) and answers "what does this proxy get?".
//!
//! The rule for what a proxy gets:
//! - LDS: its `outbound` listener, its `inbound` listener if it fronts a known workload,
//!   and, by name only, the API listener `<fqdn>:<port>` of any meshed service port.
//! - RDS: the `outbound` routes for its namespace (short names resolve there), and by
//!   name the `<fqdn>:<port>` route of an API listener. A service port with
//!   HTTPRoutes attached gets their rules in its virtual host ([`crate::routes`]).
//! - CDS: one EDS cluster per meshed service port, the ORIGINAL_DST
//!   `PassthroughCluster` (captured traffic to destinations outside the mesh), plus
//!   `inbound|<port>` clusters for its own workload's ports.
//! - EDS: the load assignment of each meshed service port.
//! - SDS: the trust bundle `ROOTCA` (its own certificate a sidecar gets through
//!   `Certify`; the controller never holds workload keys).
//!
//! Nothing from a namespace outside the mesh is ever sent.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use envoy_types::pb::google::protobuf::Any;
use mesh_model::{Model, ObjectKey};
use prost::{Message, Name};

use crate::node::ProxyNode;
use crate::routes::{self, RouteClient};
use crate::types::ResourceType;
use crate::{names, policy, resources, version};

/// One encoded resource with its content version.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// The resource's name.
    pub name: String,
    /// A hash of its encoded bytes.
    pub version: String,
    /// The resource, packed.
    pub body: Any,
}

impl Resource {
    /// Encodes `message` once; the result is shared by every proxy that gets it.
    pub fn new<M: Message + Name>(name: impl Into<String>, message: &M) -> Arc<Resource> {
        let body = crate::any::pack(message);
        Arc::new(Resource {
            name: name.into(),
            version: version::of_bytes(&body.value),
            body,
        })
    }

    /// Like [`Resource::new`], but returns `previous` when it holds the same message.
    ///
    /// Protobuf maps (endpoint metadata is a `Struct`) encode in hash-map order, which
    /// differs between builds, so equal resources can encode to different bytes. Reusing
    /// the previous encoding keeps the version of an unchanged resource stable, and an
    /// unchanged resource is then never pushed again.
    pub fn reuse<M: Message + Name + Default + PartialEq>(
        name: &str,
        message: &M,
        previous: Option<&Arc<Resource>>,
    ) -> Arc<Resource> {
        let fresh = Resource::new(name, message);
        match previous {
            Some(old)
                if old.body.value == fresh.body.value
                    || old.body.type_url == fresh.body.type_url
                        && M::decode(old.body.value.as_slice()).is_ok_and(|m| &m == message) =>
            {
                old.clone()
            }
            _ => fresh,
        }
    }
}

type ByName = BTreeMap<String, Arc<Resource>>;

/// A workload's own inbound resources, shared by every proxy of that workload.
#[derive(Debug, Clone)]
struct Inbound {
    listener: Arc<Resource>,
    clusters: ByName,
}

/// Every shared resource built from one model.
#[derive(Debug)]
pub struct Snapshot {
    /// Increases with every build; for logs and debugging.
    pub generation: u64,
    /// The model the resources were built from.
    pub model: Arc<Model>,
    clusters: ByName,
    endpoints: ByName,
    api_listeners: ByName,
    api_routes: ByName,
    outbound_listener: Arc<Resource>,
    outbound_routes: HashMap<String, Arc<Resource>>,
    inbound: HashMap<ObjectKey, Inbound>,
    trust_bundle: Arc<Resource>,
}

impl Snapshot {
    /// Builds every shared resource of `model`, reusing `previous`'s encodings of
    /// resources that did not change (see [`Resource::reuse`]).
    pub fn build(
        model: Arc<Model>,
        trust_bundle_pem: Arc<str>,
        generation: u64,
        previous: Option<&Snapshot>,
    ) -> Snapshot {
        let prev = |map: fn(&Snapshot) -> &ByName, name: &str| -> Option<Arc<Resource>> {
            previous.and_then(|p| map(p).get(name).cloned())
        };
        let mut clusters = ByName::new();
        let mut endpoints = ByName::new();
        let mut api_listeners = ByName::new();
        let mut api_routes = ByName::new();
        for view in model.service_ports() {
            let name = names::service_port(&view.fqdn, view.port.port);
            let http2 = resources::is_http2(view.port.app_protocol.as_deref());
            let traffic = model.traffic_policy(view.service);
            clusters.insert(
                name.clone(),
                Resource::reuse(
                    &name,
                    &resources::service_cluster_with(&name, http2, traffic),
                    prev(|p| &p.clusters, &name).as_ref(),
                ),
            );
            let eps = model.endpoints(view.service, view.port);
            endpoints.insert(
                name.clone(),
                Resource::reuse(
                    &name,
                    &resources::load_assignment(&name, &eps),
                    prev(|p| &p.endpoints, &name).as_ref(),
                ),
            );
            api_listeners.insert(
                name.clone(),
                Resource::new(&name, &resources::api_listener(&name)),
            );
            let domains = [name.as_str(), view.fqdn.as_str()];
            let route_policy = policy::route_policy(traffic);
            let rules = routes::service_routes(&model, &view, RouteClient::Grpc)
                .unwrap_or_else(|| vec![resources::service_route(&name, &route_policy)]);
            let config = resources::route_configuration(&name, &domains, rules);
            api_routes.insert(name.clone(), Resource::new(&name, &config));
        }
        clusters.insert(
            resources::PASSTHROUGH_CLUSTER.into(),
            Resource::new(
                resources::PASSTHROUGH_CLUSTER,
                &resources::passthrough_cluster(),
            ),
        );
        let mut namespaces: Vec<String> = model.namespaces().map(|n| n.name.clone()).collect();
        namespaces.push("default".into());
        let outbound_routes = namespaces
            .into_iter()
            .map(|ns| {
                let routes = outbound_routes(&model, &ns);
                (ns, routes)
            })
            .collect();
        let inbound = model
            .workloads()
            // Envoy rejects a listener without filter chains: no ports, no inbound.
            .filter(|w| w.address.is_some() && !w.ports.is_empty() && w.is_injected())
            .map(|w| {
                let key = ObjectKey::new(&w.namespace, &w.name);
                let prev = previous.and_then(|p| p.inbound.get(&key));
                (key, inbound_resources(&model, w, prev))
            })
            .collect();
        Snapshot {
            generation,
            inbound,
            trust_bundle: Resource::new(
                names::TRUST_BUNDLE,
                &resources::trust_bundle_secret(&trust_bundle_pem),
            ),
            clusters,
            endpoints,
            api_listeners,
            api_routes,
            outbound_listener: Resource::new(
                names::OUTBOUND,
                &resources::transparent_outbound_listener(&opaque_service_ports(&model)),
            ),
            outbound_routes,
            model,
        }
    }
}

/// Every opaque service port with a cluster IP, for the outbound listener's TCP
/// chains. A cluster IP two services claim goes to the first (as for routes).
fn opaque_service_ports(model: &Model) -> Vec<resources::OpaqueServicePort> {
    let mut seen = std::collections::HashSet::new();
    model
        .service_ports()
        .filter(|view| view.port.is_opaque())
        .filter_map(|view| {
            let cluster_ip = view.service.cluster_ip?;
            seen.insert((cluster_ip, view.port.port))
                .then(|| resources::OpaqueServicePort {
                    cluster_ip,
                    port: view.port.port,
                    cluster: names::service_port(&view.fqdn, view.port.port),
                })
        })
        .collect()
}

fn outbound_routes(model: &Model, client_namespace: &str) -> Arc<Resource> {
    // Envoy rejects a whole route configuration with a duplicate domain, so a name
    // two services claim (e.g. a shared cluster IP) goes to the first only.
    let mut seen = std::collections::HashSet::new();
    let virtual_hosts = model
        .service_ports()
        .map(|view| {
            let cluster = names::service_port(&view.fqdn, view.port.port);
            let domains = names::service_domains(
                &view.service.name,
                &view.service.namespace,
                &model.options.cluster_domain,
                view.port.port,
                client_namespace,
                view.service.cluster_ip,
            )
            .into_iter()
            .filter(|d| seen.insert(d.clone()))
            .collect();
            match routes::service_routes(model, &view, RouteClient::Sidecar) {
                Some(rules) => resources::routed_virtual_host(&cluster, domains, rules),
                None => {
                    let policy = policy::route_policy(model.traffic_policy(view.service));
                    resources::service_virtual_host_with(&cluster, domains, &policy)
                }
            }
        })
        .collect();
    let config = envoy_types::pb::envoy::config::route::v3::RouteConfiguration {
        name: names::OUTBOUND.into(),
        virtual_hosts,
        ..Default::default()
    };
    Resource::new(names::OUTBOUND, &config)
}

/// One proxy's view of a snapshot.
#[derive(Debug, Clone)]
pub struct ProxyView {
    snapshot: Arc<Snapshot>,
    outbound_routes: Arc<Resource>,
    inbound: Option<Inbound>,
}

impl ProxyView {
    /// What `node` gets from `snapshot`.
    pub fn new(snapshot: Arc<Snapshot>, node: &ProxyNode) -> ProxyView {
        let model = &snapshot.model;
        let outbound_routes = snapshot
            .outbound_routes
            .get(&node.namespace)
            .cloned()
            .unwrap_or_else(|| outbound_routes(model, &node.namespace));
        let inbound = node
            .workload
            .as_deref()
            .and_then(|w| snapshot.inbound.get(&ObjectKey::new(&node.namespace, w)))
            .cloned();
        ProxyView {
            snapshot,
            outbound_routes,
            inbound,
        }
    }

    /// The snapshot this view was taken from.
    pub fn snapshot(&self) -> &Arc<Snapshot> {
        &self.snapshot
    }

    /// Everything of type `ty` this proxy gets when it subscribes to all (wildcard).
    pub fn wildcard(&self, ty: ResourceType) -> Vec<Arc<Resource>> {
        let s = &self.snapshot;
        match ty {
            ResourceType::Listener => std::iter::once(s.outbound_listener.clone())
                .chain(self.inbound.as_ref().map(|i| i.listener.clone()))
                .collect(),
            ResourceType::Route => vec![self.outbound_routes.clone()],
            ResourceType::Cluster => s
                .clusters
                .values()
                .chain(self.inbound.iter().flat_map(|i| i.clusters.values()))
                .cloned()
                .collect(),
            ResourceType::Endpoint => s.endpoints.values().cloned().collect(),
            ResourceType::Secret => vec![s.trust_bundle.clone()],
        }
    }

    /// The resource of type `ty` called `name`, if this proxy may have it.
    pub fn get(&self, ty: ResourceType, name: &str) -> Option<Arc<Resource>> {
        let s = &self.snapshot;
        match ty {
            ResourceType::Listener => match name {
                names::OUTBOUND => Some(s.outbound_listener.clone()),
                names::INBOUND => self.inbound.as_ref().map(|i| i.listener.clone()),
                _ => s.api_listeners.get(name).cloned(),
            },
            ResourceType::Route => match name {
                names::OUTBOUND => Some(self.outbound_routes.clone()),
                _ => s.api_routes.get(name).cloned(),
            },
            ResourceType::Cluster => s
                .clusters
                .get(name)
                .or_else(|| self.inbound.as_ref().and_then(|i| i.clusters.get(name)))
                .cloned(),
            ResourceType::Endpoint => s.endpoints.get(name).cloned(),
            ResourceType::Secret => (name == names::TRUST_BUNDLE).then(|| s.trust_bundle.clone()),
        }
    }
}

/// A workload's inbound listener (mTLS mode, authorization) and the clusters that
/// deliver to its app, reusing `previous` where unchanged (RBAC policies are a
/// protobuf map, whose encoding order varies).
fn inbound_resources(
    model: &Model,
    w: &mesh_model::Workload,
    previous: Option<&Inbound>,
) -> Inbound {
    let ip = w.address.expect("filtered on address");
    let mut ports = Vec::new();
    let mut clusters = ByName::new();
    for wp in &w.ports {
        let port = wp.port;
        let service_ports: Vec<&mesh_model::ServicePort> = model
            .services()
            .filter(|s| s.namespace == w.namespace && !s.selector.is_empty())
            .filter(|s| s.selector.iter().all(|(k, v)| w.labels.get(k) == Some(v)))
            .flat_map(|s| s.ports.iter())
            .filter(|p| w.resolve_target(&p.target_port) == Some(port))
            .collect();
        let http2 = service_ports
            .iter()
            .any(|p| resources::is_http2(p.app_protocol.as_deref()));
        ports.push(resources::InboundAppPort {
            port,
            opaque: service_ports.iter().any(|p| p.is_opaque()),
        });
        let cluster = resources::inbound_cluster(SocketAddr::new(ip, port), http2);
        let prev = previous.and_then(|p| p.clusters.get(&cluster.name));
        clusters.insert(
            cluster.name.clone(),
            Resource::reuse(&cluster.name, &cluster, prev),
        );
    }
    let policies = model.authorization_policies(w);
    let td = &model.options.trust_domain;
    let rbac = crate::authz::rbac_filters(&policies, td);
    let network_rbac = crate::authz::network_rbac_filters(&policies, td);
    let listener =
        resources::inbound_listener_for(&ports, model.mtls_mode(w), &rbac, &network_rbac);
    Inbound {
        listener: Resource::reuse(names::INBOUND, &listener, previous.map(|p| &p.listener)),
        clusters,
    }
}
