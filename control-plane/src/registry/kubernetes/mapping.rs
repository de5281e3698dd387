//! Kubernetes objects → mesh objects. Pure functions, no I/O, so every rule here is
//! unit-tested against JSON shaped as a real API server returns it.
//!
//! Rules (also in docs/architecture.md):
//! - Namespace → [`Namespace`] with labels and annotations; the model decides which
//!   are meshed (`mesh.io/inject=enabled`), so (un)labelling is just a rebuild.
//! - Service → [`Service`]: selector, TCP ports (`name`, `port`, `targetPort` int or
//!   string, `appProtocol`), `clusterIP` unless `None`/empty. `ExternalName`
//!   services and services without a TCP port are skipped. Endpoints always come
//!   from EndpointSlices (`Some`, possibly empty): the slices are authoritative.
//! - EndpointSlice → [`ExplicitEndpoint`]s of the Service named by the label
//!   `kubernetes.io/service-name`: the first address of each endpoint (the only one
//!   Kubernetes defines), TCP ports by name, conditions with Kubernetes' defaults
//!   for absent values (ready and serving true, terminating false), and the Pod
//!   from `targetRef`. `FQDN` slices are skipped.
//! - Pod → [`Workload`]: labels, annotations, `status.podIP`, named TCP container
//!   ports, `spec.serviceAccountName` (or `default`). Pods without an IP or in phase
//!   `Succeeded`/`Failed` are skipped (and so are their endpoints).
//! - `mesh.io/v1alpha1` AuthorizationPolicy → [`mesh_model::AuthorizationPolicy`]
//!   through the file source's parser: one meaning wherever a policy is written.
//!   An invalid policy is skipped and reported; it never blocks the rest.
//! - `mesh.io/v1alpha1` TrafficPolicy → [`mesh_model::TrafficPolicy`], the same way.
//! - `gateway.networking.k8s.io/v1` HTTPRoute → [`mesh_model::HttpRoute`], the
//!   same way (with `creationTimestamp`, which decides precedence ties).

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    Container, Namespace as KubeNamespace, Pod, PodSpec, PodStatus, Service as KubeService,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;
use kube::api::DynamicObject;
use mesh_model::{
    ExplicitEndpoint, Namespace, Object, Service, ServicePort, TargetPort, Workload, WorkloadPort,
};

/// The label on an EndpointSlice naming its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// kubectl's copy of the applied manifest: large, and never read by the mesh.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Everything the watchers hold, as the reflector stores return it.
#[derive(Debug, Default, Clone)]
pub struct ClusterState {
    /// Namespaces.
    pub namespaces: Vec<Arc<KubeNamespace>>,
    /// Services.
    pub services: Vec<Arc<KubeService>>,
    /// EndpointSlices (discovery.k8s.io/v1).
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    /// Pods.
    pub pods: Vec<Arc<Pod>>,
    /// `mesh.io/v1alpha1` AuthorizationPolicies.
    pub authorization_policies: Vec<Arc<DynamicObject>>,
    /// `mesh.io/v1alpha1` TrafficPolicies.
    pub traffic_policies: Vec<Arc<DynamicObject>>,
    /// `gateway.networking.k8s.io/v1` HTTPRoutes.
    pub http_routes: Vec<Arc<DynamicObject>>,
}

/// The result of one mapping pass.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Mapped {
    /// The mesh objects, in a stable order (so an unchanged cluster maps to an
    /// equal list and nothing is republished).
    pub objects: Vec<Object>,
    /// Objects that could not be mapped, each `Kind/namespace/name: reason`.
    pub rejected: Vec<String>,
}

/// Maps the whole cluster state to mesh objects.
pub fn map_cluster(state: &ClusterState) -> Mapped {
    let mut mapped = Mapped::default();
    let mut objects = Vec::new();
    objects.extend(
        state
            .namespaces
            .iter()
            .map(|n| Object::Namespace(namespace(n))),
    );
    // Group slices by their service once: O(slices), not O(services × slices).
    let mut slices: BTreeMap<(String, String), Vec<&EndpointSlice>> = BTreeMap::new();
    for slice in &state.endpoint_slices {
        if let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) {
            slices
                .entry((slice.namespace().unwrap_or_default(), service.clone()))
                .or_default()
                .push(slice);
        }
    }
    for svc in &state.services {
        let key = (svc.namespace().unwrap_or_default(), svc.name_any());
        let own = slices.get(&key).map(Vec::as_slice).unwrap_or_default();
        if let Some(s) = service(svc, own) {
            objects.push(Object::Service(s));
        }
    }
    objects.extend(
        state
            .pods
            .iter()
            .filter_map(|p| workload(p))
            .map(Object::Workload),
    );
    let custom = [
        (&state.authorization_policies, AUTHORIZATION_POLICY),
        (&state.traffic_policies, TRAFFIC_POLICY),
        (&state.http_routes, HTTP_ROUTE),
    ];
    for (list, kind) in custom {
        for obj in list {
            match custom_object(obj, kind) {
                Ok(o) => objects.push(o),
                Err(e) => mapped.rejected.push(e),
            }
        }
    }
    objects.sort_by_cached_key(|o| (kind_rank(o), o.describe()));
    mapped.rejected.sort();
    mapped.objects = objects;
    mapped
}

fn kind_rank(o: &Object) -> u8 {
    match o {
        Object::Namespace(_) => 0,
        Object::Service(_) => 1,
        Object::Workload(_) => 2,
        Object::AuthorizationPolicy(_) => 3,
        Object::TrafficPolicy(_) => 4,
        Object::HttpRoute(_) => 5,
    }
}

/// Namespace → [`Namespace`].
pub fn namespace(ns: &KubeNamespace) -> Namespace {
    Namespace {
        name: ns.name_any(),
        labels: ns.labels().clone(),
        annotations: ns.annotations().clone(),
    }
}

/// Whether a Kubernetes `protocol` (absent means TCP) is one the mesh carries.
fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

fn port_number(n: i32) -> Option<u16> {
    u16::try_from(n).ok().filter(|p| *p != 0)
}

/// Service (+ its EndpointSlices) → [`Service`], or `None` for kinds of service
/// the mesh does not route (ExternalName, UDP-only).
pub fn service(svc: &KubeService, slices: &[&EndpointSlice]) -> Option<Service> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let mut ports: Vec<ServicePort> = Vec::new();
    for p in spec.ports.iter().flatten() {
        if !is_tcp(p.protocol.as_deref()) {
            continue;
        }
        let Some(port) = port_number(p.port) else {
            continue;
        };
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(IntOrString::Int(n)) => TargetPort::Number(port_number(*n).unwrap_or(port)),
            Some(IntOrString::String(s)) => match s.parse::<i32>() {
                Ok(n) => TargetPort::Number(port_number(n).unwrap_or(port)),
                Err(_) => TargetPort::Name(s.clone()),
            },
        };
        if ports.iter().any(|q| q.port == port) {
            continue;
        }
        ports.push(ServicePort {
            name: p.name.clone().filter(|n| !n.is_empty()),
            port,
            target_port,
            app_protocol: p.app_protocol.clone(),
        });
    }
    if ports.is_empty() {
        return None;
    }
    if let Some(value) = svc
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(mesh_model::OPAQUE_PORTS_ANNOTATION))
        && let Err(reason) = mesh_model::apply_opaque_ports(value, &mut ports)
    {
        // The Service still routes (as HTTP where sniffed); the bad annotation
        // is the user's to fix, so say which and why.
        tracing::warn!(
            service = %svc.name_any(),
            "ignoring annotation {}: {reason}",
            mesh_model::OPAQUE_PORTS_ANNOTATION
        );
    }
    let cluster_ip = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| !ip.is_empty() && *ip != "None")
        .and_then(|ip| ip.parse::<IpAddr>().ok());
    let namespace = svc.namespace().unwrap_or_default();
    let mut endpoints: Vec<ExplicitEndpoint> = slices
        .iter()
        .flat_map(|s| endpoint_slice(s, &namespace))
        .collect();
    endpoints.sort_by(|a, b| {
        (a.address, &a.workload, &a.ports).cmp(&(b.address, &b.workload, &b.ports))
    });
    endpoints.dedup();
    Some(Service {
        name: svc.name_any(),
        namespace,
        selector: spec.selector.clone().unwrap_or_default(),
        ports,
        cluster_ip,
        endpoints: Some(endpoints),
    })
}

/// The endpoints of one EndpointSlice in `namespace`.
pub fn endpoint_slice(slice: &EndpointSlice, namespace: &str) -> Vec<ExplicitEndpoint> {
    if slice.address_type != "IPv4" && slice.address_type != "IPv6" {
        return Vec::new();
    }
    let ports: BTreeMap<String, u16> = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| is_tcp(p.protocol.as_deref()))
        .filter_map(|p| Some((p.name.clone().unwrap_or_default(), port_number(p.port?)?)))
        .collect();
    slice
        .endpoints
        .iter()
        .filter_map(|ep| {
            let address: IpAddr = ep.addresses.first()?.parse().ok()?;
            let conditions = ep.conditions.clone().unwrap_or_default();
            let ready = conditions.ready.unwrap_or(true);
            let workload = ep
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .filter(|r| r.namespace.as_deref().is_none_or(|ns| ns == namespace))
                .and_then(|r| r.name.clone());
            Some(ExplicitEndpoint {
                address,
                ports: ports.clone(),
                workload,
                ready,
                serving: conditions.serving.unwrap_or(ready),
                terminating: conditions.terminating.unwrap_or(false),
            })
        })
        .collect()
}

/// Pod → [`Workload`], or `None` for a pod that cannot take traffic (no IP yet,
/// or finished).
pub fn workload(pod: &Pod) -> Option<Workload> {
    let status = pod.status.as_ref()?;
    if matches!(status.phase.as_deref(), Some("Succeeded" | "Failed")) {
        return None;
    }
    let address: IpAddr = status.pod_ip.as_deref()?.parse().ok()?;
    let spec = pod.spec.as_ref();
    let mut ports: Vec<WorkloadPort> = Vec::new();
    for c in spec.map(|s| s.containers.as_slice()).unwrap_or_default() {
        for p in c.ports.iter().flatten() {
            let Some(port) = port_number(p.container_port) else {
                continue;
            };
            if !is_tcp(p.protocol.as_deref()) || ports.iter().any(|q| q.port == port) {
                continue;
            }
            ports.push(WorkloadPort {
                name: p.name.clone().filter(|n| !n.is_empty()),
                port,
            });
        }
    }
    let service_account = spec
        .and_then(|s| s.service_account_name.clone().or(s.service_account.clone()))
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_string());
    Some(Workload {
        name: pod.name_any(),
        namespace: pod.namespace().unwrap_or_default(),
        labels: pod.labels().clone(),
        annotations: pod.annotations().clone(),
        address: Some(address),
        ports,
        service_account,
        command: Vec::new(),
        env: BTreeMap::new(),
    })
}

/// `(apiVersion, kind)` of the mesh's AuthorizationPolicy custom resource.
pub const AUTHORIZATION_POLICY: (&str, &str) = ("mesh.io/v1alpha1", "AuthorizationPolicy");
/// `(apiVersion, kind)` of the mesh's TrafficPolicy custom resource.
pub const TRAFFIC_POLICY: (&str, &str) = ("mesh.io/v1alpha1", "TrafficPolicy");
/// `(apiVersion, kind)` of Gateway API's HTTPRoute.
pub const HTTP_ROUTE: (&str, &str) = ("gateway.networking.k8s.io/v1", "HTTPRoute");

/// A custom resource of `(apiVersion, kind)` → the model's object, validated
/// exactly like the file source (one meaning wherever it is written); the error
/// names the object.
pub fn custom_object(
    obj: &DynamicObject,
    (api_version, kind): (&str, &str),
) -> Result<Object, String> {
    let namespace = obj.namespace().unwrap_or_default();
    let name = obj.name_any();
    let mut metadata = serde_json::json!({"name": name, "namespace": namespace});
    if let Some(created) = &obj.metadata.creation_timestamp {
        // As the API server writes it (RFC 3339, UTC), so ages compare as text.
        metadata["creationTimestamp"] = serde_json::to_value(created).unwrap_or_default();
    }
    let document = serde_json::json!({
        "apiVersion": api_version,
        "kind": kind,
        "metadata": metadata,
        "spec": obj.data.get("spec").cloned().unwrap_or(serde_json::Value::Null),
    });
    let origin = format!("{kind}/{namespace}/{name}");
    mesh_model::parse_document(&document, &origin).map_err(|e| e.to_string())
}

/// Drops what the mesh never reads from a stored Pod (most of its spec and
/// status, managed fields): the pod store is the controller's largest.
pub fn trim_pod(pod: &mut Pod) {
    trim_metadata(pod);
    if let Some(spec) = pod.spec.take() {
        pod.spec = Some(PodSpec {
            containers: spec
                .containers
                .into_iter()
                .map(|c| Container {
                    name: c.name,
                    ports: c.ports,
                    ..Default::default()
                })
                .collect(),
            service_account_name: spec.service_account_name,
            service_account: spec.service_account,
            ..Default::default()
        });
    }
    if let Some(status) = pod.status.take() {
        pod.status = Some(PodStatus {
            phase: status.phase,
            pod_ip: status.pod_ip,
            ..Default::default()
        });
    }
}

/// Drops managed fields and kubectl's last-applied copy from any stored object.
pub fn trim_metadata<K: kube::Resource>(obj: &mut K) {
    let meta = obj.meta_mut();
    meta.managed_fields = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
}

#[cfg(test)]
mod tests;
