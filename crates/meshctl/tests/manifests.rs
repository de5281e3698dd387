//! Every manifest in deploy/kubernetes/ (what `meshctl install` prints) is checked
//! strictly against the Kubernetes schema: each document deserializes into its
//! k8s-openapi type and serializes back without losing a field (a lost field is
//! one the schema does not have). The CRDs' OpenAPI schemas are then used to
//! validate mesh-shaped samples, and the pieces that must agree with each other
//! and with the code (names, ports, selectors, RBAC scope) are cross-checked.

use std::collections::BTreeMap;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use mesh_tests::strict::strict;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------
// The strict round-trip check.

/// Every document of the install stream, as JSON, with its origin.
fn documents() -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (file, text) in meshctl::install::MANIFESTS {
        for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let yaml = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)
                .unwrap_or_else(|e| panic!("{file} document {}: {e}", i + 1));
            if yaml.is_null() {
                continue;
            }
            let json: Value = serde_json::to_value(yaml).unwrap();
            let origin = format!(
                "{file} #{} {}/{}",
                i + 1,
                json["kind"].as_str().unwrap_or("?"),
                json["metadata"]["name"].as_str().unwrap_or("?")
            );
            out.push((origin, json));
        }
    }
    out
}

/// The typed objects, by kind.
#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    services: Vec<Service>,
    deployments: Vec<Deployment>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    webhooks: Vec<MutatingWebhookConfiguration>,
    crds: Vec<CustomResourceDefinition>,
    pdbs: Vec<PodDisruptionBudget>,
}

fn objects() -> Objects {
    let mut o = Objects::default();
    for (origin, v) in documents() {
        let api = v["apiVersion"].as_str().unwrap_or("");
        let kind = v["kind"].as_str().unwrap_or("");
        match (api, kind) {
            ("v1", "Namespace") => o.namespaces.push(strict(&v, &origin)),
            ("v1", "ServiceAccount") => o.service_accounts.push(strict(&v, &origin)),
            ("v1", "Service") => o.services.push(strict(&v, &origin)),
            ("apps/v1", "Deployment") => o.deployments.push(strict(&v, &origin)),
            ("policy/v1", "PodDisruptionBudget") => o.pdbs.push(strict(&v, &origin)),
            ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
                o.cluster_roles.push(strict(&v, &origin))
            }
            ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
                o.cluster_role_bindings.push(strict(&v, &origin))
            }
            ("rbac.authorization.k8s.io/v1", "Role") => o.roles.push(strict(&v, &origin)),
            ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
                o.role_bindings.push(strict(&v, &origin))
            }
            ("admissionregistration.k8s.io/v1", "MutatingWebhookConfiguration") => {
                o.webhooks.push(strict(&v, &origin))
            }
            ("apiextensions.k8s.io/v1", "CustomResourceDefinition") => {
                o.crds.push(strict(&v, &origin))
            }
            other => panic!("{origin}: no schema check for {other:?}; add one"),
        }
    }
    o
}

#[test]
fn every_file_in_deploy_kubernetes_is_installed() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/kubernetes");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml") || n.ends_with(".yml"))
        .collect();
    files.sort();
    let installed: Vec<_> = meshctl::install::MANIFESTS
        .iter()
        .map(|(n, _)| n.to_string())
        .collect();
    assert_eq!(
        files, installed,
        "meshctl install must print every manifest, in order"
    );
}

#[test]
fn every_manifest_validates_strictly() {
    let o = objects();
    assert_eq!(o.namespaces.len(), 1);
    assert_eq!(o.crds.len(), 2);
    assert_eq!(o.deployments.len(), 1);
    assert_eq!(o.webhooks.len(), 1);
    // And the rendered stream (what users pipe to kubectl) is the same documents.
    let rendered = meshctl::install::render("example.org/x", "t");
    let count = serde_yaml::Deserializer::from_str(&rendered)
        .map(|d| <serde_yaml::Value as serde::Deserialize>::deserialize(d).unwrap())
        .filter(|v| !v.is_null())
        .count();
    assert_eq!(count, documents().len());
}

#[test]
fn the_pieces_agree() {
    let o = objects();
    let ns = o.namespaces[0].metadata.name.clone().unwrap();
    assert_eq!(
        ns, "mesh-system",
        "the controller's identity and certificate name mesh-system"
    );

    // The controller runs as the service account its SPIFFE identity names.
    let sa = &o.service_accounts[0];
    assert_eq!(sa.metadata.name.as_deref(), Some("mesh-controller"));
    let d = &o.deployments[0];
    let spec = d.spec.as_ref().unwrap();
    assert_eq!(spec.replicas, Some(2));
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.service_account_name.as_deref(), Some("mesh-controller"));
    let psc = pod.security_context.as_ref().unwrap();
    assert_eq!(psc.run_as_non_root, Some(true));
    let c = &pod.containers[0];
    let args = c.args.clone().unwrap();
    let flag = |name: &str| {
        let i = args
            .iter()
            .position(|a| a == name)
            .unwrap_or_else(|| panic!("no {name}"));
        args[i + 1].clone()
    };
    assert_eq!(flag("--registry"), "kubernetes");
    assert_eq!(flag("--secure-xds-addr"), "0.0.0.0:15012");
    assert_eq!(flag("--webhook-addr"), "0.0.0.0:15017");
    assert_eq!(flag("--xds-addr"), "", "no plaintext xDS in a cluster");
    let ready = c
        .readiness_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(ready.path.as_deref(), Some("/ready"));
    assert_eq!(
        ready.port,
        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15014)
    );
    let sc = c.security_context.as_ref().unwrap();
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert!(c.resources.as_ref().unwrap().limits.is_some());

    // The Service selects the controller's pods; its name is the DNS name in the
    // serving certificate (mesh-controller.mesh-system.svc).
    let svc = &o.services[0];
    assert_eq!(svc.metadata.name.as_deref(), Some("mesh-controller"));
    let selector = svc.spec.as_ref().unwrap().selector.clone().unwrap();
    let labels = spec
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .clone()
        .unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    let ports: BTreeMap<i32, _> = svc
        .spec
        .as_ref()
        .unwrap()
        .ports
        .clone()
        .unwrap()
        .into_iter()
        .map(|p| (p.port, p))
        .collect();
    assert!(ports.contains_key(&15012) && ports.contains_key(&15017));

    // The webhook: cannot take the cluster down, only labelled namespaces, never
    // the control plane's own.
    let cfg = &o.webhooks[0];
    assert_eq!(
        cfg.metadata.name.as_deref(),
        Some(mesh_controller::webhook::WEBHOOK_CONFIGURATION)
    );
    let hooks = cfg.webhooks.as_ref().unwrap();
    assert_eq!(hooks.len(), 1);
    let hook = &hooks[0];
    assert_eq!(hook.name, mesh_controller::webhook::WEBHOOK_NAME);
    assert_eq!(hook.failure_policy.as_deref(), Some("Ignore"));
    assert_eq!(hook.side_effects, "None");
    assert_eq!(hook.timeout_seconds, Some(5));
    assert_eq!(hook.admission_review_versions, ["v1"]);
    assert!(
        hook.client_config.ca_bundle.is_none(),
        "the controller sets caBundle"
    );
    let target = hook.client_config.service.as_ref().unwrap();
    assert_eq!(target.name, "mesh-controller");
    assert_eq!(target.namespace, ns);
    assert_eq!(
        target.path.as_deref(),
        Some(mesh_controller::webhook::INJECT_PATH)
    );
    assert!(ports.contains_key(&target.port.unwrap()));
    let exprs = hook
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .clone()
        .unwrap();
    assert!(exprs.iter().any(|e| e.key == "mesh.io/inject"
        && e.operator == "In"
        && e.values.as_deref() == Some(&["enabled".to_string()][..])));
    assert!(exprs.iter().any(|e| e.key == "kubernetes.io/metadata.name"
        && e.operator == "NotIn"
        && e.values.as_ref().unwrap().contains(&ns)));
    let rule = &hook.rules.as_ref().unwrap()[0];
    assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]));
    assert_eq!(
        rule.operations.as_deref(),
        Some(&["CREATE".to_string()][..])
    );
}

fn grants(rules: &[PolicyRule], group: &str, resource: &str, verb: &str) -> Vec<PolicyRule> {
    rules
        .iter()
        .filter(|r| {
            r.api_groups
                .as_ref()
                .is_some_and(|g| g.iter().any(|g| g == group))
                && r.resources
                    .as_ref()
                    .is_some_and(|x| x.iter().any(|x| x == resource))
                && r.verbs.iter().any(|v| v == verb)
        })
        .cloned()
        .collect()
}

#[test]
fn rbac_is_least_privilege() {
    let o = objects();
    let cluster = o.cluster_roles[0].rules.clone().unwrap();
    let role = o.roles[0].rules.clone().unwrap();
    assert_eq!(
        o.roles[0].metadata.namespace.as_deref(),
        Some("mesh-system")
    );
    for r in cluster.iter().chain(&role) {
        for v in &r.verbs {
            assert_ne!(v, "*", "no wildcard verbs: {r:?}");
            assert_ne!(v, "delete", "the controller deletes nothing: {r:?}");
        }
        assert!(
            !r.resources.as_ref().unwrap().iter().any(|x| x == "*"),
            "no wildcard resources: {r:?}"
        );
    }
    for (group, resource) in [
        ("", "namespaces"),
        ("", "services"),
        ("", "pods"),
        ("discovery.k8s.io", "endpointslices"),
        ("mesh.io", "trafficpolicies"),
        ("mesh.io", "authorizationpolicies"),
        ("gateway.networking.k8s.io", "httproutes"),
    ] {
        for verb in ["get", "list", "watch"] {
            assert!(
                !grants(&cluster, group, resource, verb).is_empty(),
                "{verb} {group}/{resource}"
            );
        }
        for verb in ["create", "update", "patch"] {
            assert!(
                grants(&cluster, group, resource, verb).is_empty(),
                "read only: {resource}"
            );
        }
    }
    assert!(!grants(&cluster, "authentication.k8s.io", "tokenreviews", "create").is_empty());
    // Secrets and Leases: only in mesh-system.
    for (group, resource) in [("", "secrets"), ("coordination.k8s.io", "leases")] {
        for verb in ["get", "create", "update"] {
            assert!(grants(&cluster, group, resource, verb).is_empty());
            assert!(
                !grants(&role, group, resource, verb).is_empty(),
                "{verb} {resource}"
            );
        }
        assert!(grants(&role, group, resource, "list").is_empty());
    }
    // Our own webhook configuration only, by name.
    let patch = grants(
        &cluster,
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
        "patch",
    );
    assert_eq!(patch.len(), 1);
    assert_eq!(
        patch[0].resource_names.as_deref(),
        Some(&[mesh_controller::webhook::WEBHOOK_CONFIGURATION.to_string()][..])
    );
    // Trust-anchor ConfigMaps: update only by name.
    for r in grants(&cluster, "", "configmaps", "update") {
        assert_eq!(
            r.resource_names.as_deref(),
            Some(&[mesh_controller::inject::TRUST_VOLUME.to_string()][..])
        );
    }
    assert!(grants(&cluster, "", "configmaps", "list").is_empty());
    // The bindings bind these roles to the controller's service account.
    for subjects in o
        .cluster_role_bindings
        .iter()
        .map(|b| b.subjects.clone().unwrap())
        .chain(o.role_bindings.iter().map(|b| b.subjects.clone().unwrap()))
    {
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].name, "mesh-controller");
        assert_eq!(subjects[0].namespace.as_deref(), Some("mesh-system"));
    }
}

// ---------------------------------------------------------------------------
// A small validator for CRD structural schemas.

fn validate(schema: &JSONSchemaProps, value: &Value, path: &str, errors: &mut Vec<String>) {
    let mut err = |m: String| errors.push(format!("{path}: {m}"));
    if let Some(allowed) = &schema.enum_
        && !allowed.iter().any(|a| a.0 == *value)
    {
        err(format!(
            "{value} is not one of {:?}",
            allowed.iter().map(|a| &a.0).collect::<Vec<_>>()
        ));
    }
    let ty = schema.type_.as_deref().unwrap_or("");
    match (ty, value) {
        ("object", Value::Object(map)) => {
            for key in schema.required.iter().flatten() {
                if !map.contains_key(key) {
                    err(format!("{key} is required"));
                }
            }
            if let Some(min) = schema.min_properties
                && (map.len() as i64) < min
            {
                err(format!("needs at least {min} properties"));
            }
            if let Some(max) = schema.max_properties
                && (map.len() as i64) > max
            {
                err(format!("allows at most {max} properties"));
            }
            let preserve = schema.x_kubernetes_preserve_unknown_fields == Some(true);
            for (k, v) in map {
                let sub = format!("{path}.{k}");
                if let Some(p) = schema.properties.as_ref().and_then(|p| p.get(k)) {
                    validate(p, v, &sub, errors);
                } else if let Some(JSONSchemaPropsOrBool::Schema(extra)) =
                    &schema.additional_properties
                {
                    validate(extra, v, &sub, errors);
                } else if !preserve && (schema.properties.is_some() || path.is_empty()) {
                    errors.push(format!(
                        "{sub}: unknown field (the API server would prune it)"
                    ));
                }
            }
        }
        ("array", Value::Array(items)) => {
            if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
                for (i, v) in items.iter().enumerate() {
                    validate(item, v, &format!("{path}[{i}]"), errors);
                }
            }
        }
        ("string", Value::String(s)) => {
            if let Some(p) = &schema.pattern
                && !regex::Regex::new(p).unwrap().is_match(s)
            {
                err(format!("{s:?} does not match {p}"));
            }
            if let Some(min) = schema.min_length
                && (s.chars().count() as i64) < min
            {
                err(format!("shorter than {min}"));
            }
        }
        ("integer", Value::Number(n)) if n.is_i64() || n.is_u64() => {
            let x = n.as_f64().unwrap();
            if schema.minimum.is_some_and(|m| x < m) || schema.maximum.is_some_and(|m| x > m) {
                err(format!("{x} is out of range"));
            }
        }
        ("number", Value::Number(_)) | ("boolean", Value::Bool(_)) => {}
        (ty, v) => err(format!("expected {ty}, got {v}")),
    }
}

/// Structural: every node has a type, and defaults are valid.
fn check_structural(schema: &JSONSchemaProps, path: &str, errors: &mut Vec<String>) {
    if schema.type_.is_none() && schema.x_kubernetes_int_or_string != Some(true) {
        errors.push(format!("{path}: no type (not a structural schema)"));
    }
    if let Some(d) = &schema.default {
        validate(schema, &d.0, path, errors);
    }
    for (k, p) in schema.properties.iter().flatten() {
        check_structural(p, &format!("{path}.{k}"), errors);
    }
    if let Some(JSONSchemaPropsOrArray::Schema(item)) = &schema.items {
        check_structural(item, &format!("{path}[]"), errors);
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = &schema.additional_properties {
        check_structural(extra, &format!("{path}{{}}"), errors);
    }
}

fn crd_schema(kind: &str) -> JSONSchemaProps {
    let o = objects();
    let crd = o
        .crds
        .iter()
        .find(|c| c.spec.names.kind == kind)
        .unwrap_or_else(|| panic!("no CRD for {kind}"));
    assert_eq!(crd.spec.group, "mesh.io");
    assert_eq!(crd.spec.scope, "Namespaced");
    assert_eq!(
        crd.metadata.name.as_deref(),
        Some(format!("{}.mesh.io", crd.spec.names.plural).as_str())
    );
    let version = &crd.spec.versions[0];
    assert_eq!(version.name, "v1alpha1");
    assert!(version.served && version.storage);
    version
        .schema
        .as_ref()
        .unwrap()
        .open_api_v3_schema
        .clone()
        .unwrap()
}

fn errors_of(kind: &str, object: &Value) -> Vec<String> {
    let schema = crd_schema(kind);
    let mut errors = Vec::new();
    validate(&schema, object, "", &mut errors);
    errors
}

const AUTHZ_SAMPLE: &str = r#"
apiVersion: mesh.io/v1alpha1
kind: AuthorizationPolicy
metadata:
  name: orders-from-frontend
  namespace: shop
spec:
  selector:
    matchLabels:
      app: orders
  action: ALLOW
  rules:
    - from:
        - source:
            principals: ["spiffe://cluster.local/ns/shop/sa/frontend", "spiffe://cluster.local/ns/ops/*"]
        - source:
            namespaces: ["monitoring"]
      to:
        - operation:
            paths: ["/orders", "/orders/*"]
            methods: ["GET", "POST"]
"#;

#[test]
fn crd_schemas_are_structural() {
    for kind in ["AuthorizationPolicy", "TrafficPolicy"] {
        let mut errors = Vec::new();
        check_structural(&crd_schema(kind), "", &mut errors);
        assert!(errors.is_empty(), "{kind}: {errors:#?}");
    }
}

#[test]
fn authorization_policy_schema_matches_the_mesh_shape() {
    let sample: Value = serde_yaml::from_str(AUTHZ_SAMPLE).unwrap();
    assert_eq!(
        errors_of("AuthorizationPolicy", &sample),
        Vec::<String>::new()
    );
    // The mesh's own parser accepts the same document (what the file and
    // Kubernetes registries read).
    mesh_model::parse_documents(AUTHZ_SAMPLE, "sample.yaml").expect("the mesh parses the sample");

    let bad = |edit: &dyn Fn(&mut Value)| {
        let mut v = sample.clone();
        edit(&mut v);
        errors_of("AuthorizationPolicy", &v)
    };
    assert!(!bad(&|v| v["spec"]["action"] = json!("MAYBE")).is_empty());
    assert!(!bad(&|v| v["spec"]["rules"][0]["when"] = json!([])).is_empty());
    assert!(
        !bad(&|v| v["spec"]["rules"][0]["from"][0]["source"]["principals"] = json!(["frontend"]))
            .is_empty()
    );
    assert!(
        !bad(&|v| v["spec"]["rules"][0]["to"][0]["operation"]["paths"] = json!(["orders"]))
            .is_empty()
    );
    assert!(
        !bad(&|v| v["spec"]["rules"][0]["to"][0]["operation"]["methods"] = json!(["get"]))
            .is_empty()
    );
    assert!(!bad(&|v| v["spec"]["selector"]["matchLabels"]["app"] = json!(3)).is_empty());
    assert!(!bad(&|v| v["spec"]["rules"][0]["from"][0] = json!({"principals": ["*"]})).is_empty());
}

#[test]
fn traffic_policy_schema_accepts_the_documented_fields() {
    let sample = json!({
        "apiVersion": "mesh.io/v1alpha1",
        "kind": "TrafficPolicy",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": {
            "targetRef": {"group": "", "kind": "Service", "name": "orders"},
            "loadBalancer": {"simple": "RING_HASH", "consistentHash": {"httpCookie": {"name": "session", "ttl": "1h"}}},
            "timeouts": {"request": "15s", "connect": "1s", "idle": "5m"},
            "retries": {"attempts": 3, "perTryTimeout": "500ms", "retryOn": ["5xx", "connect-failure"],
                        "budget": {"percent": 20, "minRetryConcurrency": 3}},
            "connectionPool": {"maxConnections": 100, "maxPendingRequests": 50, "maxRequests": 1000},
            "outlierDetection": {"consecutive5xxErrors": 5, "interval": "10s", "baseEjectionTime": "30s", "maxEjectionPercent": 50},
        }
    });
    assert_eq!(errors_of("TrafficPolicy", &sample), Vec::<String>::new());
    // What the schema accepts, the mesh's parser accepts too.
    mesh_model::parse_document(&sample, "sample").expect("the mesh parser accepts the sample");
    let bad = |edit: &dyn Fn(&mut Value)| {
        let mut v = sample.clone();
        edit(&mut v);
        errors_of("TrafficPolicy", &v)
    };
    assert!(!bad(&|v| v["spec"]["loadBalancer"]["simple"] = json!("RANDOM")).is_empty());
    assert!(
        !bad(&|v| v["spec"]["loadBalancer"]["consistentHash"]["httpHeaderName"] = json!("x-user"))
            .is_empty(),
        "one hash key"
    );
    assert!(!bad(&|v| v["spec"]["timeouts"]["request"] = json!("soon")).is_empty());
    assert!(!bad(&|v| v["spec"]["retries"]["attempts"] = json!(-1)).is_empty());
    assert!(!bad(&|v| v["spec"]["outlierDetection"]["maxEjectionPercent"] = json!(101)).is_empty());
    assert!(!bad(&|v| v["spec"]["targetRef"]["kind"] = json!("Deployment")).is_empty());
    assert!(
        !bad(&|v| v["spec"]
            .as_object_mut()
            .unwrap()
            .remove("targetRef")
            .map(drop)
            .unwrap_or(()))
        .is_empty()
    );
    assert!(!bad(&|v| v["spec"]["connectionPool"]["maxConections"] = json!(1)).is_empty());
}
