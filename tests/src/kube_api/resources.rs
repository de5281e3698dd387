//! The resource types the test API server serves, and the discovery documents
//! (`/api`, `/apis`, `/api/v1`, `/apis/{group}/{version}`) built from them.

use serde_json::{Value, json};

/// One served resource type: what a real API server learns from its built-in
/// registry or from a CustomResourceDefinition.
///
/// Tests that need a type the server does not know yet can register one with
/// [`super::KubeApi::register_resource`] (or create its CRD through the API).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceType {
    /// API group; empty for the core group (`/api/v1`).
    pub group: String,
    /// Served version, such as `v1` or `v1alpha1`.
    pub version: String,
    /// Plural resource name used in URLs (`pods`).
    pub plural: String,
    /// Singular name for discovery (`pod`).
    pub singular: String,
    /// The object kind (`Pod`); lists are `<Kind>List`.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether the type has a `/status` subresource: writes to the main resource
    /// then keep the stored status, writes to `/status` keep everything else.
    pub status_subresource: bool,
    /// A custom resource: PUT without `metadata.resourceVersion` is refused,
    /// as the real server does for CRD-backed types.
    pub custom: bool,
    /// Create-only virtual resources such as TokenReview: no storage, no list.
    pub create_only: bool,
    /// Short names advertised by discovery (`svc`).
    pub short_names: Vec<String>,
}

impl ResourceType {
    /// A namespaced or cluster-scoped type with the usual verbs.
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        ResourceType {
            group: group.into(),
            version: version.into(),
            plural: plural.into(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.into(),
            namespaced,
            status_subresource: false,
            custom: false,
            create_only: false,
            short_names: Vec::new(),
        }
    }

    fn status(mut self) -> Self {
        self.status_subresource = true;
        self
    }

    fn custom(mut self) -> Self {
        self.custom = true;
        self
    }

    fn short(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// `v1` or `group/version`, as in an object's `apiVersion`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `leases.coordination.k8s.io`, as real error messages name types.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The CRD-created type described by a CustomResourceDefinition object, one
    /// per served version.
    pub fn from_crd(crd: &Value) -> Vec<ResourceType> {
        let spec = &crd["spec"];
        let (Some(group), Some(plural), Some(kind)) = (
            spec["group"].as_str(),
            spec["names"]["plural"].as_str(),
            spec["names"]["kind"].as_str(),
        ) else {
            return Vec::new();
        };
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        let singular = spec["names"]["singular"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_ascii_lowercase());
        let short: Vec<String> = spec["names"]["shortNames"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        spec["versions"]
            .as_array()
            .map(|versions| {
                versions
                    .iter()
                    .filter(|v| v["served"].as_bool().unwrap_or(true))
                    .filter_map(|v| {
                        let mut t =
                            ResourceType::new(group, v["name"].as_str()?, plural, kind, namespaced)
                                .custom();
                        t.singular = singular.clone();
                        t.short_names = short.clone();
                        t.status_subresource = v["subresources"].get("status").is_some();
                        Some(t)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The built-in types (plus the mesh's CRDs and Gateway API's HTTPRoute, served as
/// if their CRDs were installed).
pub fn builtin() -> Vec<ResourceType> {
    let core = |plural: &str, kind: &str, namespaced: bool| {
        ResourceType::new("", "v1", plural, kind, namespaced)
    };
    vec![
        core("namespaces", "Namespace", false)
            .status()
            .short(&["ns"]),
        core("nodes", "Node", false).status().short(&["no"]),
        core("services", "Service", true).status().short(&["svc"]),
        core("pods", "Pod", true).status().short(&["po"]),
        core("secrets", "Secret", true),
        core("configmaps", "ConfigMap", true).short(&["cm"]),
        core("serviceaccounts", "ServiceAccount", true).short(&["sa"]),
        core("endpoints", "Endpoints", true).short(&["ep"]),
        core("events", "Event", true).short(&["ev"]),
        ResourceType::new("apps", "v1", "deployments", "Deployment", true)
            .status()
            .short(&["deploy"]),
        ResourceType::new(
            "discovery.k8s.io",
            "v1",
            "endpointslices",
            "EndpointSlice",
            true,
        ),
        ResourceType::new("coordination.k8s.io", "v1", "leases", "Lease", true),
        ResourceType::new(
            "mesh.io",
            "v1alpha1",
            "trafficpolicies",
            "TrafficPolicy",
            true,
        )
        .custom()
        .status(),
        ResourceType::new(
            "mesh.io",
            "v1alpha1",
            "authorizationpolicies",
            "AuthorizationPolicy",
            true,
        )
        .custom()
        .status(),
        ResourceType::new(
            "gateway.networking.k8s.io",
            "v1",
            "httproutes",
            "HTTPRoute",
            true,
        )
        .custom()
        .status(),
        {
            let mut t = ResourceType::new(
                "authentication.k8s.io",
                "v1",
                "tokenreviews",
                "TokenReview",
                false,
            );
            t.create_only = true;
            t
        },
        ResourceType::new(
            "admissionregistration.k8s.io",
            "v1",
            "mutatingwebhookconfigurations",
            "MutatingWebhookConfiguration",
            false,
        ),
        ResourceType::new(
            "admissionregistration.k8s.io",
            "v1",
            "validatingwebhookconfigurations",
            "ValidatingWebhookConfiguration",
            false,
        ),
        ResourceType::new(
            "apiextensions.k8s.io",
            "v1",
            "customresourcedefinitions",
            "CustomResourceDefinition",
            false,
        )
        .status()
        .short(&["crd", "crds"]),
        ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterroles",
            "ClusterRole",
            false,
        ),
        ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "clusterrolebindings",
            "ClusterRoleBinding",
            false,
        ),
        ResourceType::new("rbac.authorization.k8s.io", "v1", "roles", "Role", true),
        ResourceType::new(
            "rbac.authorization.k8s.io",
            "v1",
            "rolebindings",
            "RoleBinding",
            true,
        ),
    ]
}

/// `GET /api`: the core group's versions.
pub fn api_versions(server: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server}],
    })
}

/// `GET /apis`: every non-core group with its versions (first registered preferred).
pub fn api_group_list(types: &[ResourceType]) -> Value {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for t in types.iter().filter(|t| !t.group.is_empty()) {
        match groups.iter_mut().find(|(g, _)| *g == t.group) {
            Some((_, versions)) => {
                if !versions.contains(&t.version) {
                    versions.push(t.version.clone());
                }
            }
            None => groups.push((t.group.clone(), vec![t.version.clone()])),
        }
    }
    let groups: Vec<Value> = groups
        .into_iter()
        .map(|(name, versions)| {
            let gv = |v: &String| json!({"groupVersion": format!("{name}/{v}"), "version": v});
            json!({
                "name": name,
                "versions": versions.iter().map(gv).collect::<Vec<_>>(),
                "preferredVersion": gv(&versions[0]),
            })
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}` for one group, or `None` if it is not served.
pub fn api_group(types: &[ResourceType], group: &str) -> Option<Value> {
    let list = api_group_list(types);
    let g = list["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == group)?
        .clone();
    let mut g = g;
    g["kind"] = json!("APIGroup");
    g["apiVersion"] = json!("v1");
    Some(g)
}

/// `GET /api/v1` or `/apis/{group}/{version}`: the APIResourceList, or `None`
/// if no type is served at that group version.
pub fn api_resource_list(types: &[ResourceType], group: &str, version: &str) -> Option<Value> {
    let served: Vec<&ResourceType> = types
        .iter()
        .filter(|t| t.group == group && t.version == version)
        .collect();
    if served.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for t in served {
        let verbs: Vec<&str> = if t.create_only {
            vec!["create"]
        } else {
            vec![
                "create",
                "delete",
                "deletecollection",
                "get",
                "list",
                "patch",
                "update",
                "watch",
            ]
        };
        let mut r = json!({
            "name": t.plural,
            "singularName": t.singular,
            "namespaced": t.namespaced,
            "kind": t.kind,
            "verbs": verbs,
        });
        if !t.short_names.is_empty() {
            r["shortNames"] = json!(t.short_names);
        }
        resources.push(r);
        if t.status_subresource {
            resources.push(json!({
                "name": format!("{}/status", t.plural),
                "singularName": "",
                "namespaced": t.namespaced,
                "kind": t.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
    }
    let gv = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": gv,
        "resources": resources,
    }))
}
