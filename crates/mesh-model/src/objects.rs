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
}

impl Object {
    /// `Kind/namespace/name`, for error messages and logs.
    pub fn describe(&self) -> String {
        match self {
            Object::Namespace(n) => format!("Namespace/{}", n.name),
            Object::Service(s) => format!("Service/{}/{}", s.namespace, s.name),
            Object::Workload(w) => format!("Workload/{}/{}", w.namespace, w.name),
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
