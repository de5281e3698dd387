//! Registry objects in the shapes users write them: Kubernetes-like documents.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// `namespace/name`: how objects of one kind are told apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    /// The object's namespace.
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl ObjectKey {
    /// Key for `name` in `namespace`.
    pub fn new(namespace: &str, name: &str) -> Self {
        ObjectKey {
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One registry object of a kind the mesh understands.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Object {
    /// A namespace; its labels decide whether it is in the mesh.
    Namespace(Namespace),
    /// A service: a stable name and ports in front of a set of workloads.
    Service(Service),
    /// One running instance (a Pod in Kubernetes terms).
    Workload(Workload),
    /// Which callers may reach which workloads.
    AuthorizationPolicy(AuthorizationPolicy),
    /// How callers reach one service: balancing and resilience.
    TrafficPolicy(crate::TrafficPolicy),
    /// How requests to a service are routed (Gateway API).
    HttpRoute(crate::http_route::HttpRoute),
}

impl Object {
    /// `Kind/namespace/name`, for error messages and logs.
    pub fn describe(&self) -> String {
        match self {
            Object::Namespace(n) => format!("Namespace/{}", n.name),
            Object::Service(s) => format!("Service/{}/{}", s.namespace, s.name),
            Object::Workload(w) => format!("Workload/{}/{}", w.namespace, w.name),
            Object::AuthorizationPolicy(p) => {
                format!("AuthorizationPolicy/{}/{}", p.namespace, p.name)
            }
            Object::TrafficPolicy(p) => format!("TrafficPolicy/{}/{}", p.namespace, p.name),
            Object::HttpRoute(r) => format!("HTTPRoute/{}/{}", r.namespace, r.name),
        }
    }
}

/// A namespace and its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Namespace {
    /// The namespace's name.
    pub name: String,
    /// Its labels; `mesh.io/inject=enabled` puts it in the mesh.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its annotations; `mesh.io/mtls-mode` sets the namespace's mTLS mode.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A Kubernetes-shaped Service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// The service's name.
    pub name: String,
    /// The service's namespace.
    pub namespace: String,
    /// Labels a workload must carry to back this service; empty selects nothing.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// The ports the service exposes.
    pub ports: Vec<ServicePort>,
    /// The virtual IP that transparent capture maps back to this service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_ip: Option<IpAddr>,
    /// Endpoints a registry knows explicitly (Kubernetes EndpointSlices), which
    /// then replace selector matching: in a cluster the EndpointSlice controller,
    /// not the mesh, decides which pods back a service and whether they are ready.
    /// `None` (the file and etcd sources) means "match workloads by selector";
    /// `Some(vec![])` means "known to have no endpoints".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoints: Option<Vec<ExplicitEndpoint>>,
}

/// One endpoint of a service as the registry reports it (a Kubernetes
/// EndpointSlice entry), with the conditions that decide whether it takes traffic.
///
/// Kept close to the EndpointSlice shape so the Kubernetes source stays a plain
/// mapping; [`crate::Model::endpoints`] applies the rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplicitEndpoint {
    /// The endpoint's IP (a pod IP).
    pub address: IpAddr,
    /// Port on this endpoint per service port name (`""` for an unnamed port):
    /// the EndpointSlice controller has already resolved named target ports.
    pub ports: BTreeMap<String, u16>,
    /// The workload (pod) behind it, in the service's namespace; its service
    /// account gives the endpoint's identity. Endpoints without a known workload
    /// are left out: the mesh could not say who must answer there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload: Option<String>,
    /// Ready for new traffic.
    pub ready: bool,
    /// Able to serve (set even while terminating).
    pub serving: bool,
    /// Shutting down: a serving, terminating endpoint is drained, not cut.
    pub terminating: bool,
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicePort {
    /// Optional port name, matched by name-valued target ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port clients call.
    pub port: u16,
    /// Where the workloads listen: a number, or a workload port's name.
    pub target_port: TargetPort,
    /// The protocol spoken (`http`, `h2c`, `grpc`, `tcp`); `None` means HTTP/1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_protocol: Option<String>,
}

/// A service port's `targetPort`: a number or the name of a workload port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TargetPort {
    /// A port number on the workload.
    Number(u16),
    /// The name of one of the workload's ports.
    Name(String),
}

/// One running instance of an application, as a Pod is in Kubernetes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Workload {
    /// The instance's name, e.g. `catalog-1`.
    pub name: String,
    /// The instance's namespace.
    pub namespace: String,
    /// Labels matched by service selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations; `mesh.io/inject: disabled` opts this instance out.
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The instance's IP; the local runner assigns one when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<IpAddr>,
    /// The ports the application listens on.
    #[serde(default)]
    pub ports: Vec<WorkloadPort>,
    /// The service account, which with the namespace makes the identity.
    pub service_account: String,
    /// For the local runner: the application's argv.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// For the local runner: extra environment for the application.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
}

impl Workload {
    /// Whether this instance runs with a sidecar (unless annotated out).
    pub fn is_injected(&self) -> bool {
        self.annotations
            .get(crate::INJECT_ANNOTATION)
            .is_none_or(|v| v != "disabled")
    }

    /// The load-balancing weight of this instance's endpoints: its
    /// `mesh.io/endpoint-weight` annotation, else 1. Mesh files reject a bad value;
    /// from Kubernetes (where pods are not validated by the mesh) it counts as 1.
    pub fn endpoint_weight(&self) -> u32 {
        self.annotations
            .get(crate::ENDPOINT_WEIGHT_ANNOTATION)
            .and_then(|v| crate::parse_endpoint_weight(v))
            .unwrap_or(1)
    }

    /// The workload port a service's target port refers to, if it exists.
    pub fn resolve_target(&self, target: &TargetPort) -> Option<u16> {
        match target {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Name(name) => self
                .ports
                .iter()
                .find(|p| p.name.as_deref() == Some(name.as_str()))
                .map(|p| p.port),
        }
    }
}

/// One port a workload listens on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadPort {
    /// Optional name, referenced by service target ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port number.
    pub port: u16,
}

/// Whether a workload's inbound side accepts plaintext.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MtlsMode {
    /// Only mutual TLS from other sidecars (the default).
    Strict,
    /// Mutual TLS and plaintext, for migrating workloads into the mesh.
    Permissive,
}

impl MtlsMode {
    /// Parses `STRICT` or `PERMISSIVE` (any case).
    pub fn parse(s: &str) -> Option<MtlsMode> {
        match s.to_ascii_uppercase().as_str() {
            "STRICT" => Some(MtlsMode::Strict),
            "PERMISSIVE" => Some(MtlsMode::Permissive),
            _ => None,
        }
    }
}

/// Allow or deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AuthorizationAction {
    /// Requests matching a rule are allowed; once a workload has any ALLOW policy,
    /// requests matching none are denied.
    Allow,
    /// Requests matching a rule are denied; DENY is evaluated before ALLOW.
    Deny,
}

/// An AuthorizationPolicy (Istio's shape): which callers may reach which workloads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationPolicy {
    /// The policy's name.
    pub name: String,
    /// The namespace whose workloads it applies to.
    pub namespace: String,
    /// Labels of the workloads it applies to; empty means every workload in the
    /// namespace.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// Allow or deny what the rules match.
    pub action: AuthorizationAction,
    /// A request matches the policy if it matches any rule; no rules match nothing.
    #[serde(default)]
    pub rules: Vec<AuthorizationRule>,
}

/// One rule: a request matches if it comes from any `from` source (or `from` is
/// empty) and goes to any `to` operation (or `to` is empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthorizationRule {
    /// Who may call.
    #[serde(default)]
    pub from: Vec<AuthorizationSource>,
    /// What they may call.
    #[serde(default)]
    pub to: Vec<AuthorizationOperation>,
}

/// A caller: matches if every non-empty field matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationSource {
    /// SPIFFE IDs; a trailing `*` matches by prefix; `*` alone matches any
    /// authenticated caller.
    #[serde(default)]
    pub principals: Vec<String>,
    /// Caller namespaces (from their SPIFFE IDs).
    #[serde(default)]
    pub namespaces: Vec<String>,
}

/// An operation: matches if every non-empty field matches.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizationOperation {
    /// Paths; a trailing `*` matches by prefix.
    #[serde(default)]
    pub paths: Vec<String>,
    /// HTTP methods.
    #[serde(default)]
    pub methods: Vec<String>,
}

impl AuthorizationPolicy {
    /// Whether the policy applies to `workload`.
    pub fn selects(&self, workload: &Workload) -> bool {
        self.namespace == workload.namespace
            && self
                .selector
                .iter()
                .all(|(k, v)| workload.labels.get(k) == Some(v))
    }
}
