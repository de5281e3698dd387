//! Sidecar injection: what a meshed Pod gains, as pure functions over the Pod's
//! JSON (no I/O), so the admission webhook ([`crate::webhook`]) and `meshctl
//! inject` produce exactly the same pods.
//!
//! A Pod gets, in front of its own init containers:
//! - `mesh-init`, which installs the traffic-capture rules (outbound to 15001,
//!   inbound to 15006, the sidecar's UID 1337 and the admin port 15000 excluded);
//! - `mesh-proxy` as a native sidecar (an init container with `restartPolicy:
//!   Always`, Kubernetes ≥ 1.29): it starts before the app, the app's containers
//!   wait for its startup probe (`/ready`), and it stops after them;
//! - a projected service-account token (audience `mesh`) the sidecar trades for
//!   its certificate, and the trust anchors from the `mesh-trust-anchors`
//!   ConfigMap the controller keeps in every meshed namespace;
//! - the annotation `mesh.io/injected: "true"`.
//!
//! The Pod is handled as JSON rather than as `k8s_openapi` types on purpose: a
//! typed round trip would silently drop fields this build does not know (newer
//! Kubernetes versions), and a webhook must never lose part of a user's pod.

use serde_json::{Map, Value, json};

/// The namespace label that switches the mesh on.
pub const NAMESPACE_LABEL: &str = "mesh.io/inject";
/// The value of [`NAMESPACE_LABEL`] that switches the mesh on.
pub const NAMESPACE_LABEL_ENABLED: &str = "enabled";
/// The Pod annotation that opts one workload out (`mesh.io/inject: disabled`).
pub const INJECT_ANNOTATION: &str = "mesh.io/inject";
/// The annotation injection leaves behind, so a second pass changes nothing.
pub const INJECTED_ANNOTATION: &str = "mesh.io/injected";
/// The init container that installs the capture rules.
pub const INIT_CONTAINER: &str = "mesh-init";
/// The sidecar container.
pub const PROXY_CONTAINER: &str = "mesh-proxy";
/// The projected service-account token volume.
pub const TOKEN_VOLUME: &str = "mesh-token";
/// The trust anchors volume (and the ConfigMap it comes from, by default).
pub const TRUST_VOLUME: &str = "mesh-trust-anchors";
/// Where the token is mounted; the file is `token` inside.
pub const TOKEN_DIR: &str = "/var/run/secrets/mesh";
/// Where the trust anchors are mounted; the file is `ca.pem` inside.
pub const TRUST_DIR: &str = "/var/run/mesh/trust";
/// The UID the sidecar runs as: the capture rules let this UID's traffic through.
pub const PROXY_UID: i64 = 1337;

/// What injection puts into a Pod. The defaults match the manifests in
/// `deploy/kubernetes/`; the controller takes them from its flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InjectSettings {
    /// Image of the `mesh-proxy` sidecar.
    pub proxy_image: String,
    /// Image of `mesh-init` (the same image ships both binaries by default).
    pub init_image: String,
    /// `imagePullPolicy` of both containers; Kubernetes' default when `None`.
    pub image_pull_policy: Option<String>,
    /// The controller's TLS xDS + identity address the sidecar dials.
    pub xds_addr: String,
    /// The ConfigMap (in the pod's namespace) holding `ca.pem`, the mesh roots.
    pub trust_anchors_configmap: String,
    /// Audience of the projected token; the controller's TokenReview asks for it.
    pub token_audience: String,
    /// Lifetime of the projected token; the kubelet refreshes it at 80 %.
    pub token_expiration_seconds: i64,
    /// Sidecar CPU request.
    pub cpu_request: String,
    /// Sidecar memory request.
    pub memory_request: String,
    /// Sidecar CPU limit.
    pub cpu_limit: String,
    /// Sidecar memory limit.
    pub memory_limit: String,
}

/// The image repository both default images live in.
pub const DEFAULT_HUB: &str = "ghcr.io/mesh";

impl Default for InjectSettings {
    fn default() -> Self {
        let image = format!("{DEFAULT_HUB}/mesh-proxy:{}", env!("CARGO_PKG_VERSION"));
        InjectSettings {
            proxy_image: image.clone(),
            init_image: image,
            image_pull_policy: None,
            xds_addr: "https://mesh-controller.mesh-system.svc:15012".into(),
            trust_anchors_configmap: TRUST_VOLUME.into(),
            token_audience: "mesh".into(),
            token_expiration_seconds: 3600,
            cpu_request: "10m".into(),
            memory_request: "16Mi".into(),
            cpu_limit: "1".into(),
            memory_limit: "64Mi".into(),
        }
    }
}

/// Command-line flags for [`InjectSettings`], shared by `mesh-controller` and
/// `meshctl inject` so both inject the same sidecar.
#[derive(Debug, Clone, clap::Args)]
pub struct InjectFlags {
    /// Image of the injected `mesh-proxy` sidecar (and of `mesh-init`, unless
    /// `--init-image` is given).
    #[arg(long, value_name = "IMAGE")]
    pub proxy_image: Option<String>,
    /// Image of the injected `mesh-init` container.
    #[arg(long, value_name = "IMAGE")]
    pub init_image: Option<String>,
    /// `imagePullPolicy` of the injected containers (Always, IfNotPresent, Never).
    #[arg(long, value_name = "POLICY")]
    pub image_pull_policy: Option<String>,
    /// The controller address injected sidecars dial for xDS and certificates.
    #[arg(
        long = "injected-xds-addr",
        value_name = "URL",
        default_value = "https://mesh-controller.mesh-system.svc:15012"
    )]
    pub injected_xds_addr: String,
}

impl InjectFlags {
    /// The settings these flags describe (defaults for everything else).
    pub fn settings(&self) -> InjectSettings {
        let mut s = InjectSettings::default();
        if let Some(image) = &self.proxy_image {
            s.proxy_image = image.clone();
            s.init_image = image.clone();
        }
        if let Some(image) = &self.init_image {
            s.init_image = image.clone();
        }
        s.image_pull_policy = self.image_pull_policy.clone();
        s.xds_addr = self.injected_xds_addr.clone();
        s
    }
}

/// Why a Pod is left as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Skip {
    /// Its namespace is not labelled `mesh.io/inject=enabled`.
    NamespaceNotMeshed,
    /// Annotated `mesh.io/inject: disabled` (or any value but enabled/true).
    OptedOut,
    /// Already carries the sidecar (annotation or containers): injection is idempotent.
    AlreadyInjected,
    /// `hostNetwork: true`: capture rules would rewrite the node's own traffic.
    HostNetwork,
}

impl std::fmt::Display for Skip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Skip::NamespaceNotMeshed => "namespace is not labelled mesh.io/inject=enabled",
            Skip::OptedOut => "pod is annotated mesh.io/inject: disabled",
            Skip::AlreadyInjected => "pod already has the mesh sidecar",
            Skip::HostNetwork => "pod uses the host network",
        })
    }
}

/// A Pod that cannot be injected: its JSON is not the shape of a Pod, or it
/// already uses a name injection needs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InjectError {
    /// A field has the wrong JSON type (e.g. `spec.initContainers` not a list).
    #[error("{field}: {reason}")]
    Shape {
        /// JSON path of the field, e.g. `spec.volumes`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The pod already has a container or volume with a name injection adds.
    #[error("{field} already has an entry named {name:?}, which the mesh sidecar needs")]
    NameTaken {
        /// Where, e.g. `spec.volumes`.
        field: String,
        /// The name.
        name: String,
    },
}

/// What injection does to one Pod.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The pod gains the sidecar: the mutated pod, and the RFC 6902 patch that
    /// turns the original into it.
    Injected {
        /// The pod with the sidecar.
        pod: Value,
        /// JSONPatch operations against the original pod.
        patch: Vec<Value>,
    },
    /// Nothing to do, and why.
    Skipped(Skip),
}

/// Whether a Namespace object's labels switch the mesh on.
pub fn namespace_is_meshed(labels: Option<&Map<String, Value>>) -> bool {
    labels
        .and_then(|l| l.get(NAMESPACE_LABEL))
        .and_then(Value::as_str)
        == Some(NAMESPACE_LABEL_ENABLED)
}

/// Decides whether `pod` (a Pod, or a pod template: `metadata` + `spec`) in a
/// namespace that is (`namespace_meshed`) or is not labelled should be injected.
pub fn should_inject(pod: &Value, namespace_meshed: bool) -> Result<(), Skip> {
    if !namespace_meshed {
        return Err(Skip::NamespaceNotMeshed);
    }
    let annotations = pod.pointer("/metadata/annotations");
    let annotation = |key: &str| annotations.and_then(|a| a.get(key)).and_then(Value::as_str);
    if annotation(INJECTED_ANNOTATION).is_some() || has_mesh_container(pod) {
        return Err(Skip::AlreadyInjected);
    }
    if let Some(v) = annotation(INJECT_ANNOTATION) {
        // Anything but an explicit yes opts out: a typo must not mesh a pod its
        // owner tried to keep out.
        if !matches!(v.to_ascii_lowercase().as_str(), "enabled" | "true") {
            return Err(Skip::OptedOut);
        }
    }
    if pod.pointer("/spec/hostNetwork").and_then(Value::as_bool) == Some(true) {
        return Err(Skip::HostNetwork);
    }
    Ok(())
}

fn has_mesh_container(pod: &Value) -> bool {
    ["/spec/containers", "/spec/initContainers"]
        .iter()
        .filter_map(|p| pod.pointer(p).and_then(Value::as_array))
        .flatten()
        .filter_map(|c| c.get("name").and_then(Value::as_str))
        .any(|n| n == INIT_CONTAINER || n == PROXY_CONTAINER)
}

/// Injects `pod` (see [`should_inject`] for when), returning the mutated pod and
/// the JSONPatch against the original, which is what the webhook answers.
pub fn inject_pod(
    pod: &Value,
    namespace_meshed: bool,
    settings: &InjectSettings,
) -> Result<Outcome, InjectError> {
    if let Err(skip) = should_inject(pod, namespace_meshed) {
        return Ok(Outcome::Skipped(skip));
    }
    check_shape(pod)?;
    let patch = patch_ops(pod, settings);
    let mut out = pod.clone();
    mutate(&mut out, settings);
    Ok(Outcome::Injected { pod: out, patch })
}

/// Rejects pods whose fields injection touches have the wrong type, or that
/// already use one of the names injection adds.
fn check_shape(pod: &Value) -> Result<(), InjectError> {
    let shape = |field: &str, reason: &str| InjectError::Shape {
        field: field.into(),
        reason: reason.into(),
    };
    if !pod.is_object() {
        return Err(shape("", "a pod must be a JSON object"));
    }
    match pod.get("metadata") {
        None | Some(Value::Object(_)) => {}
        Some(_) => return Err(shape("metadata", "must be an object")),
    }
    match pod.pointer("/metadata/annotations") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(_) => return Err(shape("metadata.annotations", "must be an object")),
    }
    if !pod.get("spec").is_some_and(Value::is_object) {
        return Err(shape("spec", "a pod needs a spec object"));
    }
    for (field, pointer, names) in [
        (
            "spec.initContainers",
            "/spec/initContainers",
            &[INIT_CONTAINER, PROXY_CONTAINER][..],
        ),
        (
            "spec.volumes",
            "/spec/volumes",
            &[TOKEN_VOLUME, TRUST_VOLUME][..],
        ),
    ] {
        match pod.pointer(pointer) {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    if let Some(name) = item.get("name").and_then(Value::as_str)
                        && names.contains(&name)
                    {
                        return Err(InjectError::NameTaken {
                            field: field.into(),
                            name: name.into(),
                        });
                    }
                }
            }
            Some(_) => return Err(shape(field, "must be a list")),
        }
    }
    Ok(())
}

/// Applies the injection to `pod` in place (after [`check_shape`]).
fn mutate(pod: &mut Value, settings: &InjectSettings) {
    let root = pod.as_object_mut().expect("checked: object");
    let metadata = root
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    let annotations = metadata
        .as_object_mut()
        .expect("checked: object")
        .entry("annotations")
        .or_insert(Value::Null);
    if annotations.is_null() {
        *annotations = Value::Object(Map::new());
    }
    annotations
        .as_object_mut()
        .expect("checked: object")
        .insert(INJECTED_ANNOTATION.into(), json!("true"));

    let spec = root
        .get_mut("spec")
        .and_then(Value::as_object_mut)
        .expect("checked: object");
    let init = spec.entry("initContainers").or_insert(Value::Null);
    if init.is_null() {
        *init = json!([]);
    }
    let init = init.as_array_mut().expect("checked: list");
    init.insert(0, proxy_container(settings));
    init.insert(0, init_container(settings));
    let volumes = spec.entry("volumes").or_insert(Value::Null);
    if volumes.is_null() {
        *volumes = json!([]);
    }
    volumes
        .as_array_mut()
        .expect("checked: list")
        .extend(mesh_volumes(settings));
}

/// RFC 6902 operations that turn the original `pod` into the injected one. Each
/// `add` targets a path that exists at that point: a missing (or null)
/// `initContainers`, `volumes` or `annotations` is added whole; otherwise
/// entries are inserted by index (containers go first) or appended (`-`).
fn patch_ops(pod: &Value, settings: &InjectSettings) -> Vec<Value> {
    let mut ops = Vec::new();
    let present = |p: &str| pod.pointer(p).is_some_and(|v| !v.is_null());
    if !present("/metadata") {
        ops.push(json!({"op": "add", "path": "/metadata", "value": {
            "annotations": {INJECTED_ANNOTATION: "true"}
        }}));
    } else if !present("/metadata/annotations") {
        ops.push(
            json!({"op": "add", "path": "/metadata/annotations", "value": {
                INJECTED_ANNOTATION: "true"
            }}),
        );
    } else {
        ops.push(json!({
            "op": "add",
            "path": format!("/metadata/annotations/{}", escape_pointer(INJECTED_ANNOTATION)),
            "value": "true",
        }));
    }
    if !present("/spec/initContainers") {
        ops.push(
            json!({"op": "add", "path": "/spec/initContainers", "value": [
                init_container(settings), proxy_container(settings)
            ]}),
        );
    } else {
        ops.push(json!({"op": "add", "path": "/spec/initContainers/0", "value": init_container(settings)}));
        ops.push(json!({"op": "add", "path": "/spec/initContainers/1", "value": proxy_container(settings)}));
    }
    if !present("/spec/volumes") {
        ops.push(json!({"op": "add", "path": "/spec/volumes", "value": mesh_volumes(settings)}));
    } else {
        for v in mesh_volumes(settings) {
            ops.push(json!({"op": "add", "path": "/spec/volumes/-", "value": v}));
        }
    }
    ops
}

/// Escapes a key for a JSON Pointer (RFC 6901): `~` → `~0`, `/` → `~1`.
pub fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

fn pull_policy(c: &mut Value, settings: &InjectSettings) {
    if let Some(p) = &settings.image_pull_policy {
        c["imagePullPolicy"] = json!(p);
    }
}

/// `mesh-init`: root with NET_ADMIN/NET_RAW for iptables, for a few milliseconds,
/// before anything else in the pod runs.
fn init_container(settings: &InjectSettings) -> Value {
    let mut c = json!({
        "name": INIT_CONTAINER,
        "image": settings.init_image,
        "command": ["mesh-init"],
        "args": [
            "--outbound-port", "15001",
            "--inbound-port", "15006",
            "--proxy-uid", PROXY_UID.to_string(),
            "--exclude-inbound-ports", "15000",
        ],
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "32Mi"},
        },
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
    });
    pull_policy(&mut c, settings);
    c
}

fn http_probe(path: &str, period: i64, failures: i64) -> Value {
    json!({
        "httpGet": {"path": path, "port": 15000},
        "periodSeconds": period,
        "timeoutSeconds": 1,
        "failureThreshold": failures,
    })
}

/// `mesh-proxy` as a native sidecar. Its startup probe gates the app's start
/// (Kubernetes starts the next container only once it passes); readiness keeps
/// the pod out of Service endpoints while the sidecar has no config.
fn proxy_container(settings: &InjectSettings) -> Value {
    let field = |path: &str| json!({"fieldRef": {"apiVersion": "v1", "fieldPath": path}});
    let mut c = json!({
        "name": PROXY_CONTAINER,
        "image": settings.proxy_image,
        "command": ["mesh-proxy"],
        "restartPolicy": "Always",
        "ports": [
            {"name": "mesh-admin", "containerPort": 15000, "protocol": "TCP"},
            {"name": "mesh-outbound", "containerPort": 15001, "protocol": "TCP"},
            {"name": "mesh-inbound", "containerPort": 15006, "protocol": "TCP"},
        ],
        "env": [
            {"name": "MESH_WORKLOAD", "valueFrom": field("metadata.name")},
            {"name": "MESH_NAMESPACE", "valueFrom": field("metadata.namespace")},
            // Listeners bind every address: capture redirects to loopback (outbound)
            // and to the pod IP (inbound), so neither alone would do.
            {"name": "MESH_PROXY_IP", "value": "0.0.0.0"},
            {"name": "MESH_XDS_ADDR", "value": settings.xds_addr},
            {"name": "MESH_TRUST_ANCHORS", "value": format!("{TRUST_DIR}/ca.pem")},
            {"name": "MESH_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")},
        ],
        "resources": {
            "requests": {"cpu": settings.cpu_request, "memory": settings.memory_request},
            "limits": {"cpu": settings.cpu_limit, "memory": settings.memory_limit},
        },
        // Up to 2 minutes to get a certificate and config; then Kubernetes restarts it.
        "startupProbe": http_probe("/ready", 1, 120),
        "readinessProbe": http_probe("/ready", 5, 3),
        "livenessProbe": http_probe("/live", 10, 3),
        "securityContext": {
            "runAsUser": PROXY_UID,
            "runAsGroup": PROXY_UID,
            "runAsNonRoot": true,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true},
            {"name": TRUST_VOLUME, "mountPath": TRUST_DIR, "readOnly": true},
        ],
    });
    pull_policy(&mut c, settings);
    c
}

fn mesh_volumes(settings: &InjectSettings) -> Vec<Value> {
    vec![
        json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": settings.token_audience,
                "expirationSeconds": settings.token_expiration_seconds,
                "path": "token",
            }}]},
        }),
        json!({
            "name": TRUST_VOLUME,
            "configMap": {
                "name": settings.trust_anchors_configmap,
                "items": [{"key": "ca.pem", "path": "ca.pem"}],
            },
        }),
    ]
}

/// Kinds whose `spec.template` is a pod template that [`inject_object`] injects.
pub const TEMPLATE_KINDS: &[&str] = &[
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Job",
    "ReplicationController",
];

/// What [`inject_object`] did to one manifest object.
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectOutcome {
    /// A Pod or pod template was injected.
    Injected,
    /// A Pod or pod template was left alone, and why.
    Skipped(Skip),
    /// Not a kind that holds a pod.
    NotAPod,
}

/// Injects a manifest object in place, the client-side counterpart of the
/// webhook (`meshctl inject`): Pods, the pod templates of Deployments,
/// StatefulSets, DaemonSets, ReplicaSets, Jobs and ReplicationControllers, and
/// CronJobs' job templates. The namespace label is not known here: whoever runs
/// `meshctl inject` asks for injection, so only the pod's own opt-out counts.
pub fn inject_object(
    object: &mut Value,
    settings: &InjectSettings,
) -> Result<ObjectOutcome, InjectError> {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    let pointer = match kind.as_str() {
        "Pod" => "",
        "CronJob" => "/spec/jobTemplate/spec/template",
        k if TEMPLATE_KINDS.contains(&k) => "/spec/template",
        _ => return Ok(ObjectOutcome::NotAPod),
    };
    let Some(target) = object.pointer_mut(pointer) else {
        return Err(InjectError::Shape {
            field: pointer.trim_start_matches('/').replace('/', "."),
            reason: format!("a {kind} needs a pod template here"),
        });
    };
    match inject_pod(target, true, settings)? {
        Outcome::Injected { pod, .. } => {
            *target = pod;
            Ok(ObjectOutcome::Injected)
        }
        Outcome::Skipped(s) => Ok(ObjectOutcome::Skipped(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod() -> Value {
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web", "namespace": "shop"},
            "spec": {"containers": [{"name": "app", "image": "web:1"}]},
        })
    }

    #[test]
    fn decisions() {
        assert_eq!(should_inject(&pod(), false), Err(Skip::NamespaceNotMeshed));
        assert_eq!(should_inject(&pod(), true), Ok(()));
        let mut p = pod();
        p["metadata"]["annotations"] = json!({"mesh.io/inject": "disabled"});
        assert_eq!(should_inject(&p, true), Err(Skip::OptedOut));
        p["metadata"]["annotations"] = json!({"mesh.io/inject": "enabled"});
        assert_eq!(should_inject(&p, true), Ok(()));
        p["spec"]["hostNetwork"] = json!(true);
        assert_eq!(should_inject(&p, true), Err(Skip::HostNetwork));
    }

    #[test]
    fn injected_pod_is_recognised() {
        let Outcome::Injected { pod: out, patch } =
            inject_pod(&pod(), true, &InjectSettings::default()).unwrap()
        else {
            panic!("not injected")
        };
        assert_eq!(patch.len(), 3, "{patch:#?}");
        assert_eq!(
            inject_pod(&out, true, &InjectSettings::default()).unwrap(),
            Outcome::Skipped(Skip::AlreadyInjected)
        );
        let names: Vec<_> = out["spec"]["initContainers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["mesh-init", "mesh-proxy"]);
    }

    #[test]
    fn bad_shapes_and_taken_names() {
        let mut p = pod();
        p["spec"]["volumes"] = json!({"not": "a list"});
        assert!(matches!(
            inject_pod(&p, true, &InjectSettings::default()),
            Err(InjectError::Shape { .. })
        ));
        let mut p = pod();
        p["spec"]["volumes"] = json!([{"name": "mesh-token", "emptyDir": {}}]);
        assert!(matches!(
            inject_pod(&p, true, &InjectSettings::default()),
            Err(InjectError::NameTaken { .. })
        ));
    }

    #[test]
    fn pointer_escaping() {
        assert_eq!(escape_pointer("mesh.io/injected"), "mesh.io~1injected");
        assert_eq!(escape_pointer("a~b/c"), "a~0b~1c");
    }
}
