//! The indexed view of every registry object, and the questions xDS asks of it.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::Serialize;

use crate::http_route::{BackendRef, HttpRoute};
use crate::identity::Identity;
use crate::objects::{
    AuthorizationAction, AuthorizationPolicy, ExplicitEndpoint, MtlsMode, Namespace, Object,
    ObjectKey, Service, ServicePort, Workload,
};
use crate::traffic_policy::TrafficPolicy;

/// Settings that shape names derived from the model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ModelOptions {
    /// Cluster domain in service FQDNs (`<svc>.<ns>.svc.<domain>`).
    pub cluster_domain: String,
    /// SPIFFE trust domain of workload identities.
    pub trust_domain: String,
}

impl Default for ModelOptions {
    fn default() -> Self {
        ModelOptions {
            cluster_domain: crate::DEFAULT_CLUSTER_DOMAIN.into(),
            trust_domain: crate::DEFAULT_TRUST_DOMAIN.into(),
        }
    }
}

/// Everything a registry knows, indexed. Immutable: a change builds a new model, so
/// readers (xDS pushes in flight) never see half an update.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Model {
    /// Naming settings.
    pub options: ModelOptions,
    #[serde(serialize_with = "values")]
    namespaces: BTreeMap<String, Namespace>,
    #[serde(serialize_with = "values")]
    services: BTreeMap<ObjectKey, Service>,
    #[serde(serialize_with = "values")]
    workloads: BTreeMap<ObjectKey, Workload>,
    #[serde(serialize_with = "values")]
    authorization_policies: BTreeMap<ObjectKey, AuthorizationPolicy>,
    /// By target service (namespace, service name).
    #[serde(serialize_with = "values")]
    traffic_policies: BTreeMap<ObjectKey, TrafficPolicy>,
    #[serde(serialize_with = "values")]
    http_routes: BTreeMap<ObjectKey, HttpRoute>,
}

/// Maps serialize as lists of their values: JSON keys must be strings.
fn values<K, V: Serialize, S: serde::Serializer>(
    map: &BTreeMap<K, V>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_seq(map.values())
}

/// One backend of a service port: where to send traffic and who answers there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    /// The application's address (workload IP and resolved target port).
    pub address: SocketAddr,
    /// The workload instance behind it.
    pub workload: ObjectKey,
    /// The identity the instance's certificate carries.
    pub identity: Identity,
    /// Whether a sidecar fronts it (false when the workload opted out).
    pub sidecar: bool,
    /// Terminating but still serving: proxies send it no new requests but let
    /// requests already on its connections finish (drained, not cut).
    pub draining: bool,
    /// Load-balancing weight from the workload's `mesh.io/endpoint-weight`
    /// annotation (1 when absent or invalid).
    pub weight: u32,
}

/// One port of a meshed service with its resolved endpoints.
#[derive(Debug, Clone)]
pub struct ServicePortView<'a> {
    /// The service.
    pub service: &'a Service,
    /// The port.
    pub port: &'a ServicePort,
    /// `<name>.<namespace>.svc.<cluster-domain>`.
    pub fqdn: String,
}

impl Model {
    /// Indexes `objects`; later objects replace earlier ones with the same key.
    pub fn new(objects: impl IntoIterator<Item = Object>, options: ModelOptions) -> Model {
        let mut model = Model {
            options,
            ..Model::default()
        };
        for object in objects {
            match object {
                Object::Namespace(n) => {
                    model.namespaces.insert(n.name.clone(), n);
                }
                Object::Service(s) => {
                    model
                        .services
                        .insert(ObjectKey::new(&s.namespace, &s.name), s);
                }
                Object::Workload(w) => {
                    model
                        .workloads
                        .insert(ObjectKey::new(&w.namespace, &w.name), w);
                }
                Object::AuthorizationPolicy(p) => {
                    model
                        .authorization_policies
                        .insert(ObjectKey::new(&p.namespace, &p.name), p);
                }
                Object::TrafficPolicy(p) => {
                    // One policy per service; when a registry holds two (Kubernetes
                    // cannot forbid it), the first by name wins, deterministically.
                    let key = ObjectKey::new(&p.namespace, &p.service);
                    match model.traffic_policies.get(&key) {
                        Some(old) if old.name < p.name => {}
                        _ => {
                            model.traffic_policies.insert(key, p);
                        }
                    }
                }
                Object::HttpRoute(r) => {
                    model
                        .http_routes
                        .insert(ObjectKey::new(&r.namespace, &r.name), r);
                }
            }
        }
        model
    }

    /// Whether `namespace` is labelled into the mesh.
    pub fn is_meshed(&self, namespace: &str) -> bool {
        self.namespaces
            .get(namespace)
            .and_then(|n| n.labels.get(crate::INJECT_LABEL))
            .is_some_and(|v| v == "enabled")
    }

    /// All namespaces, meshed or not.
    pub fn namespaces(&self) -> impl Iterator<Item = &Namespace> {
        self.namespaces.values()
    }

    /// Services in meshed namespaces, in a stable order.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services
            .values()
            .filter(|s| self.is_meshed(&s.namespace))
    }

    /// Workloads in meshed namespaces, in a stable order.
    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads
            .values()
            .filter(|w| self.is_meshed(&w.namespace))
    }

    /// A meshed workload by namespace and name.
    pub fn workload(&self, namespace: &str, name: &str) -> Option<&Workload> {
        self.workloads
            .get(&ObjectKey::new(namespace, name))
            .filter(|w| self.is_meshed(&w.namespace))
    }

    /// A meshed service by namespace and name.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&ObjectKey::new(namespace, name))
            .filter(|s| self.is_meshed(&s.namespace))
    }

    /// The service's fully qualified name.
    pub fn fqdn(&self, service: &Service) -> String {
        format!(
            "{}.{}.svc.{}",
            service.name, service.namespace, self.options.cluster_domain
        )
    }

    /// Every port of every meshed service.
    pub fn service_ports(&self) -> impl Iterator<Item = ServicePortView<'_>> {
        self.services().flat_map(move |service| {
            let fqdn = self.fqdn(service);
            service.ports.iter().map(move |port| ServicePortView {
                service,
                port,
                fqdn: fqdn.clone(),
            })
        })
    }

    /// The HTTPRoutes attached to `port` of `service` (parentRef to the Service,
    /// and to this port if the parentRef names one), in name order. Empty means
    /// the port keeps the default route to its own endpoints.
    pub fn http_routes(&self, service: &Service, port: &ServicePort) -> Vec<&HttpRoute> {
        if !self.is_meshed(&service.namespace) {
            return Vec::new();
        }
        self.http_routes
            .range(ObjectKey::new(&service.namespace, "")..)
            .take_while(|(k, _)| k.namespace == service.namespace)
            .map(|(_, r)| r)
            .filter(|r| r.attaches_to(&service.namespace, &service.name, port.port))
            .collect()
    }

    /// The service port a route's backend names, if it exists in the mesh; `None`
    /// makes the backend invalid (Gateway API answers its share with 500).
    pub fn backend(&self, namespace: &str, backend: &BackendRef) -> Option<ServicePortView<'_>> {
        let service = self.service(namespace, &backend.service)?;
        let port = service.ports.iter().find(|p| p.port == backend.port)?;
        Some(ServicePortView {
            service,
            port,
            fqdn: self.fqdn(service),
        })
    }

    /// The policies that apply to `workload`, DENY first then ALLOW, each in name
    /// order: the order they are evaluated in.
    pub fn authorization_policies(&self, workload: &Workload) -> Vec<&AuthorizationPolicy> {
        let mut policies: Vec<&AuthorizationPolicy> = self
            .authorization_policies
            .range(ObjectKey::new(&workload.namespace, "")..)
            .take_while(|(k, _)| k.namespace == workload.namespace)
            .map(|(_, p)| p)
            .filter(|p| p.selects(workload))
            .collect();
        policies.sort_by_key(|p| p.action != AuthorizationAction::Deny);
        policies
    }

    /// The workload's mTLS mode: its own annotation, else its namespace's, else
    /// STRICT.
    pub fn mtls_mode(&self, workload: &Workload) -> MtlsMode {
        let from = |annotations: &BTreeMap<String, String>| {
            annotations
                .get(crate::MTLS_MODE_ANNOTATION)
                .and_then(|v| MtlsMode::parse(v))
        };
        from(&workload.annotations)
            .or_else(|| {
                self.namespaces
                    .get(&workload.namespace)
                    .and_then(|n| from(&n.annotations))
            })
            .unwrap_or(MtlsMode::Strict)
    }

    /// The TrafficPolicy that applies to `service`, if any (absent fields and
    /// a missing policy both mean the defaults).
    pub fn traffic_policy(&self, service: &Service) -> Option<&TrafficPolicy> {
        self.traffic_policies
            .get(&ObjectKey::new(&service.namespace, &service.name))
    }

    /// The identity a workload's certificate carries.
    pub fn identity(&self, workload: &Workload) -> Identity {
        Identity::new(
            &self.options.trust_domain,
            &workload.namespace,
            &workload.service_account,
        )
    }

    /// The backends of one service port.
    ///
    /// With explicit endpoints (Kubernetes EndpointSlices) those decide, see
    /// [`Model::explicit_endpoints`]. Otherwise: workloads selected by `service`
    /// that have an address and the target port. A selector with no labels
    /// selects nothing (as in Kubernetes, where such a service's endpoints are
    /// managed by hand).
    pub fn endpoints(&self, service: &Service, port: &ServicePort) -> Vec<Endpoint> {
        if !self.is_meshed(&service.namespace) {
            return Vec::new();
        }
        if let Some(explicit) = &service.endpoints {
            return self.explicit_endpoints(service, explicit, port);
        }
        if service.selector.is_empty() {
            return Vec::new();
        }
        self.workloads
            .range(ObjectKey::new(&service.namespace, "")..)
            .take_while(|(k, _)| k.namespace == service.namespace)
            .map(|(_, w)| w)
            .filter(|w| {
                service
                    .selector
                    .iter()
                    .all(|(k, v)| w.labels.get(k) == Some(v))
            })
            .filter_map(|w| {
                let ip = w.address?;
                let target = w.resolve_target(&port.target_port)?;
                Some(Endpoint {
                    address: SocketAddr::new(ip, target),
                    workload: ObjectKey::new(&w.namespace, &w.name),
                    identity: self.identity(w),
                    sidecar: w.is_injected(),
                    draining: false,
                    weight: w.endpoint_weight(),
                })
            })
            .collect()
    }

    /// Endpoints from the registry's explicit list, following Kubernetes'
    /// EndpointSlice conditions:
    /// - ready: takes new traffic;
    /// - not ready but serving and terminating: kept as draining, so requests
    ///   already on its connections finish while new ones go elsewhere;
    /// - anything else (starting, failing, terminated): left out.
    ///
    /// Identity and sidecar come from the endpoint's workload (the Pod, through
    /// the slice's `targetRef`); an endpoint whose workload the model does not hold
    /// is left out, since nobody could verify who answers there. The same address
    /// listed twice (slices overlap while the EndpointSlice controller rebalances
    /// them) counts once, as its best state.
    pub fn explicit_endpoints(
        &self,
        service: &Service,
        explicit: &[ExplicitEndpoint],
        port: &ServicePort,
    ) -> Vec<Endpoint> {
        let port_name = port.name.as_deref().unwrap_or("");
        let mut by_address: BTreeMap<SocketAddr, Endpoint> = BTreeMap::new();
        for ep in explicit {
            let draining = if ep.ready {
                false
            } else if ep.serving && ep.terminating {
                true
            } else {
                continue;
            };
            let Some(&number) = ep.ports.get(port_name) else {
                continue;
            };
            let Some(workload) = ep.workload.as_deref().and_then(|name| {
                self.workloads
                    .get(&ObjectKey::new(&service.namespace, name))
            }) else {
                continue;
            };
            let address = SocketAddr::new(ep.address, number);
            let endpoint = Endpoint {
                address,
                workload: ObjectKey::new(&workload.namespace, &workload.name),
                identity: self.identity(workload),
                sidecar: workload.is_injected(),
                draining,
                weight: workload.endpoint_weight(),
            };
            by_address
                .entry(address)
                .and_modify(|e| {
                    if e.draining && !draining {
                        *e = endpoint.clone();
                    }
                })
                .or_insert(endpoint);
        }
        let mut endpoints: Vec<Endpoint> = by_address.into_values().collect();
        // The same order as selector endpoints: by workload, then address.
        endpoints.sort_by(|a, b| (&a.workload, a.address).cmp(&(&b.workload, b.address)));
        endpoints
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::parse_documents;

    fn model(text: &str) -> Model {
        Model::new(parse_documents(text, "t").unwrap(), ModelOptions::default())
    }

    const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {mesh.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: legacy}
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {selector: {app: catalog}, ports: [{port: 80, targetPort: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: old, namespace: legacy}
spec: {selector: {app: old}, ports: [{port: 80}]}
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: catalog-1, namespace: shop, labels: {app: catalog}}
spec: {address: 127.0.1.1, ports: [{name: http, port: 8080}], serviceAccount: cat}
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: catalog-2, namespace: shop, labels: {app: catalog}, annotations: {mesh.io/inject: disabled}}
spec: {address: 127.0.1.2, ports: [{name: http, port: 8081}], serviceAccount: cat}
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: catalog-3, namespace: shop, labels: {app: catalog}}
spec: {ports: [{name: http, port: 8080}], serviceAccount: cat}
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: other, namespace: shop, labels: {app: other}}
spec: {address: 127.0.1.3, ports: [{name: http, port: 8080}], serviceAccount: cat}
"#;

    #[test]
    fn only_labelled_namespaces_are_meshed() {
        let m = model(MESH);
        let names: Vec<_> = m.services().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["catalog"]);
        assert!(m.service("legacy", "old").is_none());
        let ports: Vec<_> = m.service_ports().map(|p| p.fqdn).collect();
        assert_eq!(ports, ["catalog.shop.svc.cluster.local"]);
    }

    #[test]
    fn endpoints_follow_selector_and_named_target() {
        let m = model(MESH);
        let svc = m.service("shop", "catalog").unwrap();
        let eps = m.endpoints(svc, &svc.ports[0]);
        let addrs: Vec<_> = eps.iter().map(|e| e.address.to_string()).collect();
        // catalog-3 has no address yet; `other` is not selected.
        assert_eq!(addrs, ["127.0.1.1:8080", "127.0.1.2:8081"]);
        assert!(eps[0].sidecar);
        assert!(!eps[1].sidecar, "opted-out workload has no sidecar");
        assert_eq!(
            eps[0].identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/cat"
        );
    }

    #[test]
    fn policies_and_modes() {
        let m = model(&format!(
            "{MESH}---\napiVersion: mesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: b-allow, namespace: shop}}\nspec: {{selector: {{matchLabels: {{app: catalog}}}}, rules: [{{from: [{{source: {{namespaces: [web]}}}}]}}]}}\n---\napiVersion: mesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: z-deny, namespace: shop}}\nspec: {{action: DENY, rules: [{{to: [{{operation: {{paths: [/admin*]}}}}]}}]}}\n---\napiVersion: mesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: other, namespace: shop}}\nspec: {{selector: {{matchLabels: {{app: other}}}}}}\n"
        ));
        let w = m.workload("shop", "catalog-1").unwrap();
        let names: Vec<_> = m
            .authorization_policies(w)
            .iter()
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(
            names,
            ["z-deny", "b-allow"],
            "DENY first, selector respected"
        );
        assert_eq!(m.mtls_mode(w), MtlsMode::Strict);
        let permissive = model(&MESH.replace(
            "metadata: {name: shop, labels: {mesh.io/inject: enabled}}",
            "metadata: {name: shop, labels: {mesh.io/inject: enabled}, annotations: {mesh.io/mtls-mode: PERMISSIVE}}",
        ));
        assert_eq!(
            permissive.mtls_mode(permissive.workload("shop", "catalog-1").unwrap()),
            MtlsMode::Permissive
        );
    }

    #[test]
    fn traffic_policies_index_by_service_and_weights_reach_endpoints() {
        let mut objects = parse_documents(
            &MESH.replace(
                "metadata: {name: catalog-1, namespace: shop, labels: {app: catalog}}",
                "metadata: {name: catalog-1, namespace: shop, labels: {app: catalog}, annotations: {mesh.io/endpoint-weight: \"9\"}}",
            ),
            "t",
        )
        .unwrap();
        let policy = |name: &str, lb: &str| {
            parse_documents(
                &format!("apiVersion: mesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {{targetRef: {{name: catalog}}, loadBalancer: {{simple: {lb}}}}}\n"),
                "p",
            )
            .unwrap()
        };
        // Two policies for one service (possible in Kubernetes): first by name wins.
        objects.extend(policy("z", "ROUND_ROBIN"));
        objects.extend(policy("a", "LEAST_REQUEST"));
        let m = Model::new(objects, ModelOptions::default());
        let svc = m.service("shop", "catalog").unwrap();
        let p = m.traffic_policy(svc).expect("policy");
        assert_eq!(p.name, "a");
        assert!(
            m.traffic_policy(m.service("legacy", "old").unwrap_or(svc))
                .is_some()
        );
        let weights: Vec<u32> = m
            .endpoints(svc, &svc.ports[0])
            .iter()
            .map(|e| e.weight)
            .collect();
        assert_eq!(weights, [9, 1]);
    }

    #[test]
    fn routes_attach_by_service_and_port_and_backends_resolve() {
        let m = model(&format!(
            "{MESH}---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: r, namespace: shop}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: catalog, port: 80}}]\n  rules: [{{backendRefs: [{{name: catalog, port: 80}}, {{name: catalog, port: 81}}, {{name: ghost, port: 80}}]}}]\n---\napiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: other-port, namespace: shop}}\nspec:\n  parentRefs: [{{group: '', kind: Service, name: catalog, port: 81}}]\n"
        ));
        let svc = m.service("shop", "catalog").unwrap();
        let routes = m.http_routes(svc, &svc.ports[0]);
        let names: Vec<_> = routes.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["r"], "only the route for port 80");
        let backends = &routes[0].rules[0].backends;
        assert_eq!(
            m.backend("shop", &backends[0]).map(|v| v.fqdn),
            Some("catalog.shop.svc.cluster.local".into())
        );
        assert!(m.backend("shop", &backends[1]).is_none(), "no such port");
        assert!(m.backend("shop", &backends[2]).is_none(), "no such service");
    }

    #[test]
    fn empty_selector_selects_nothing() {
        let m = model(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: default, labels: {mesh.io/inject: enabled}}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: a}\nspec: {ports: [{port: 80}]}\n---\napiVersion: mesh.io/v1alpha1\nkind: Workload\nmetadata: {name: w}\nspec: {address: 127.0.0.2, serviceAccount: x}\n",
        );
        let svc = m.service("default", "a").unwrap();
        assert!(m.endpoints(svc, &svc.ports[0]).is_empty());
    }

    fn explicit(
        addr: &str,
        port: u16,
        pod: Option<&str>,
        conds: (bool, bool, bool),
    ) -> ExplicitEndpoint {
        ExplicitEndpoint {
            address: addr.parse().unwrap(),
            ports: [(String::new(), port)].into_iter().collect(),
            workload: pod.map(str::to_string),
            ready: conds.0,
            serving: conds.1,
            terminating: conds.2,
        }
    }

    #[test]
    fn explicit_endpoints_follow_conditions_not_selectors() {
        let mut objects = parse_documents(MESH, "t").unwrap();
        for o in &mut objects {
            if let Object::Service(s) = o
                && s.name == "catalog"
            {
                s.ports[0].name = None;
                s.endpoints = Some(vec![
                    // ready: active (pod `other` is not selected; slices decide)
                    explicit("10.0.0.3", 9000, Some("other"), (true, true, false)),
                    // terminating but serving: draining
                    explicit("10.0.0.1", 9000, Some("catalog-1"), (false, true, true)),
                    // not ready, not terminating (starting up): out
                    explicit("10.0.0.2", 9000, Some("catalog-2"), (false, true, false)),
                    // terminating and no longer serving: out
                    explicit("10.0.0.4", 9000, Some("catalog-1"), (false, false, true)),
                    // unknown pod: out
                    explicit("10.0.0.5", 9000, Some("ghost"), (true, true, false)),
                    // no targetRef: out
                    explicit("10.0.0.6", 9000, None, (true, true, false)),
                    // the same address twice (overlapping slices): once, best state
                    explicit("10.0.0.3", 9000, Some("other"), (false, true, true)),
                ]);
            }
        }
        let m = Model::new(objects, ModelOptions::default());
        let svc = m.service("shop", "catalog").unwrap();
        let eps = m.endpoints(svc, &svc.ports[0]);
        let got: Vec<_> = eps
            .iter()
            .map(|e| (e.address.to_string(), e.workload.name.as_str(), e.draining))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1:9000".to_string(), "catalog-1", true),
                ("10.0.0.3:9000".to_string(), "other", false),
            ]
        );
        assert_eq!(
            eps[0].identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/cat",
            "identity from the pod's service account"
        );
        // A port name the slice does not list has no endpoints.
        let mut named = svc.ports[0].clone();
        named.name = Some("grpc".into());
        assert!(m.endpoints(svc, &named).is_empty());
        // Explicitly empty means none, even though the selector matches workloads.
        let mut empty = svc.clone();
        empty.endpoints = Some(Vec::new());
        assert!(m.endpoints(&empty, &empty.ports[0]).is_empty());
    }
}
