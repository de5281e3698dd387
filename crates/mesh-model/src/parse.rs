//! Reading and writing registry documents (multi-document YAML or JSON).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

use serde::Deserialize;
use serde_json::json;

use crate::error::{ModelError, ModelErrorKind};
use crate::objects::{
    AuthorizationAction, AuthorizationOperation, AuthorizationPolicy, AuthorizationRule,
    AuthorizationSource, MtlsMode, Namespace, Object, Service, ServicePort, TargetPort, Workload,
    WorkloadPort,
};
use crate::parse_traffic_policy::{parse_traffic_policy, render_traffic_policy};

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawDocument {
    #[serde(default)]
    pub(crate) api_version: String,
    #[serde(default)]
    pub(crate) kind: String,
    #[serde(default)]
    pub(crate) metadata: RawMetadata,
    #[serde(default)]
    pub(crate) spec: serde_yaml::Value,
}

#[derive(Deserialize, Default)]
pub(crate) struct RawMetadata {
    #[serde(default)]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) namespace: Option<String>,
    #[serde(default)]
    pub(crate) labels: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) annotations: BTreeMap<String, String>,
    #[serde(default, rename = "creationTimestamp")]
    pub(crate) creation_timestamp: Option<String>,
}

/// A Kubernetes ServiceSpec; fields the mesh does not use are tolerated so that real
/// manifests can be applied as they are.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawServiceSpec {
    #[serde(default)]
    selector: BTreeMap<String, String>,
    #[serde(default)]
    ports: Vec<RawServicePort>,
    #[serde(default, rename = "clusterIP")]
    cluster_ip: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawServicePort {
    #[serde(default)]
    name: Option<String>,
    port: i64,
    #[serde(default)]
    target_port: Option<RawTargetPort>,
    #[serde(default)]
    app_protocol: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RawTargetPort {
    Number(i64),
    Name(String),
}

/// The mesh's own Workload kind: strict, since a typo here is always a mistake.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawWorkloadSpec {
    #[serde(default)]
    address: Option<IpAddr>,
    #[serde(default)]
    ports: Vec<RawWorkloadPort>,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    env: RawEnv,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorkloadPort {
    #[serde(default)]
    name: Option<String>,
    port: i64,
}

/// `env` as a map, or as Kubernetes' list of `{name, value}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawEnv {
    Map(BTreeMap<String, String>),
    List(Vec<RawEnvVar>),
}

impl Default for RawEnv {
    fn default() -> Self {
        RawEnv::Map(BTreeMap::new())
    }
}

#[derive(Deserialize)]
struct RawEnvVar {
    name: String,
    #[serde(default)]
    value: String,
}

/// Parses a stream of YAML (or JSON) documents into objects.
///
/// `origin` names the source in errors. Empty documents are skipped. The whole stream
/// is rejected on the first bad document, so that a half-valid file never replaces a
/// good state: callers keep what they had.
pub fn parse_documents(text: &str, origin: &str) -> Result<Vec<Object>, ModelError> {
    let mut objects = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut cluster_ips: HashMap<IpAddr, (String, usize)> = HashMap::new();
    let mut policy_targets: HashMap<(String, String), (String, usize)> = HashMap::new();
    for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let doc_no = index + 1;
        let value = serde_yaml::Value::deserialize(document).map_err(|e| {
            ModelError::new(
                origin,
                Some(doc_no),
                ModelErrorKind::Malformed(e.to_string()),
            )
        })?;
        if value.is_null() {
            continue;
        }
        let object = parse_object(value).map_err(|(kind, object)| {
            let err = ModelError::new(origin, Some(doc_no), kind);
            match object {
                Some(o) => err.with_object(o),
                None => err,
            }
        })?;
        let described = object.describe();
        if let Object::Service(Service {
            cluster_ip: Some(ip),
            ..
        }) = &object
            && let Some((owner, doc)) = cluster_ips.insert(*ip, (described.clone(), doc_no))
        {
            return Err(ModelError::new(
                origin,
                Some(doc_no),
                ModelErrorKind::Invalid {
                    field: "spec.clusterIP".into(),
                    reason: format!("{ip} is already the cluster IP of {owner} (document {doc})"),
                },
            )
            .with_object(described));
        }
        if let Object::TrafficPolicy(p) = &object
            && let Some((owner, doc)) = policy_targets.insert(
                (p.namespace.clone(), p.service.clone()),
                (described.clone(), doc_no),
            )
        {
            return Err(ModelError::new(
                origin,
                Some(doc_no),
                ModelErrorKind::Invalid {
                    field: "spec.targetRef.name".into(),
                    reason: format!(
                        "Service {}/{} already has {owner} (document {doc}); one TrafficPolicy per Service",
                        p.namespace, p.service
                    ),
                },
            )
            .with_object(described));
        }
        if let Some(first) = seen.insert(described.clone(), doc_no) {
            return Err(ModelError::new(
                origin,
                Some(doc_no),
                ModelErrorKind::Duplicate(described.clone(), first),
            )
            .with_object(described));
        }
        objects.push(object);
    }
    Ok(objects)
}

/// Parses one document given as JSON, as an API server returns it.
///
/// For registries that hold objects one by one (Kubernetes custom resources,
/// etcd keys): each object is checked with exactly the rules of the file source,
/// so a policy means the same wherever it was written. `origin` names the object's
/// source in the error.
pub fn parse_document(value: &serde_json::Value, origin: &str) -> Result<Object, ModelError> {
    let value = serde_yaml::to_value(value)
        .map_err(|e| ModelError::new(origin, None, ModelErrorKind::Malformed(e.to_string())))?;
    parse_object(value).map_err(|(kind, object)| {
        let err = ModelError::new(origin, None, kind);
        match object {
            Some(o) => err.with_object(o),
            None => err,
        }
    })
}

type ParseFailure = (ModelErrorKind, Option<String>);

fn parse_object(value: serde_yaml::Value) -> Result<Object, ParseFailure> {
    if !value.is_mapping() {
        return Err((
            ModelErrorKind::Malformed(
                "a document must be a mapping with apiVersion and kind".into(),
            ),
            None,
        ));
    }
    let raw: RawDocument = serde_yaml::from_value(value)
        .map_err(|e| (ModelErrorKind::Malformed(e.to_string()), None))?;
    let described = |ns: &str| {
        if ns.is_empty() {
            format!("{}/{}", raw.kind, raw.metadata.name)
        } else {
            format!("{}/{}/{}", raw.kind, ns, raw.metadata.name)
        }
    };
    let namespace = raw
        .metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".to_string());
    let fail = |kind: ModelErrorKind, ns: &str| (kind, Some(described(ns)));
    match (raw.api_version.as_str(), raw.kind.as_str()) {
        ("v1", "Namespace") => {
            check_name("metadata.name", &raw.metadata.name).map_err(|k| fail(k, ""))?;
            check_mtls_annotation(&raw.metadata.annotations).map_err(|k| fail(k, ""))?;
            Ok(Object::Namespace(Namespace {
                name: raw.metadata.name.clone(),
                labels: raw.metadata.labels.clone(),
                annotations: raw.metadata.annotations.clone(),
            }))
        }
        ("v1", "Service") => parse_service(&raw, &namespace).map_err(|k| fail(k, &namespace)),
        ("mesh.io/v1alpha1", "Workload") => {
            parse_workload(&raw, &namespace).map_err(|k| fail(k, &namespace))
        }
        ("mesh.io/v1alpha1", "AuthorizationPolicy") => {
            parse_authorization_policy(&raw, &namespace).map_err(|k| fail(k, &namespace))
        }
        ("mesh.io/v1alpha1", "TrafficPolicy") => parse_traffic_policy(&raw, &namespace)
            .map(Object::TrafficPolicy)
            .map_err(|k| fail(k, &namespace)),
        ("gateway.networking.k8s.io/v1", "HTTPRoute") => {
            parse_http_route(&raw, &namespace).map_err(|k| fail(k, &namespace))
        }
        _ => Err(fail(
            ModelErrorKind::UnknownKind {
                kind: raw.kind.clone(),
                api_version: raw.api_version.clone(),
            },
            &namespace,
        )),
    }
}

pub(crate) fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ModelErrorKind {
    ModelErrorKind::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Names must be RFC 1123 labels: they end up in DNS names and SPIFFE IDs.
pub(crate) fn check_name(field: &str, name: &str) -> Result<(), ModelErrorKind> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "{name:?} must be 1-63 lowercase letters, digits or '-', not starting or ending with '-'"
            ),
        ))
    }
}

pub(crate) fn check_port(field: &str, port: i64) -> Result<u16, ModelErrorKind> {
    u16::try_from(port)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| invalid(field, format!("port {port} is out of range 1-65535")))
}

pub(crate) fn spec<T: serde::de::DeserializeOwned>(raw: &RawDocument) -> Result<T, ModelErrorKind> {
    let spec = if raw.spec.is_null() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        raw.spec.clone()
    };
    serde_yaml::from_value(spec).map_err(|e| invalid("spec", e.to_string()))
}

fn parse_http_route(raw: &RawDocument, namespace: &str) -> Result<Object, ModelErrorKind> {
    check_name("metadata.name", &raw.metadata.name)?;
    check_name("metadata.namespace", namespace)?;
    let spec = if raw.spec.is_null() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        raw.spec.clone()
    };
    crate::parse_http_route::http_route(
        &raw.metadata.name,
        namespace,
        raw.metadata.creation_timestamp.clone(),
        spec,
    )
    .map(Object::HttpRoute)
}

fn parse_service(raw: &RawDocument, namespace: &str) -> Result<Object, ModelErrorKind> {
    check_name("metadata.name", &raw.metadata.name)?;
    check_name("metadata.namespace", namespace)?;
    let spec: RawServiceSpec = spec(raw)?;
    if spec.ports.is_empty() {
        return Err(invalid("spec.ports", "a service needs at least one port"));
    }
    let mut ports = Vec::with_capacity(spec.ports.len());
    for (i, p) in spec.ports.iter().enumerate() {
        let port = check_port(&format!("spec.ports[{i}].port"), p.port)?;
        let target_port = match &p.target_port {
            None => TargetPort::Number(port),
            Some(RawTargetPort::Number(n)) => {
                TargetPort::Number(check_port(&format!("spec.ports[{i}].targetPort"), *n)?)
            }
            Some(RawTargetPort::Name(n)) => match n.parse::<i64>() {
                Ok(n) => TargetPort::Number(check_port(&format!("spec.ports[{i}].targetPort"), n)?),
                Err(_) => TargetPort::Name(n.clone()),
            },
        };
        if ports.iter().any(|q: &ServicePort| q.port == port) {
            return Err(invalid(
                format!("spec.ports[{i}].port"),
                format!("port {port} is listed twice"),
            ));
        }
        ports.push(ServicePort {
            name: p.name.clone(),
            port,
            target_port,
            app_protocol: p.app_protocol.clone(),
        });
    }
    if let Some(value) = raw.metadata.annotations.get(crate::OPAQUE_PORTS_ANNOTATION) {
        crate::apply_opaque_ports(value, &mut ports).map_err(|reason| {
            invalid(
                format!("metadata.annotations[{}]", crate::OPAQUE_PORTS_ANNOTATION),
                reason,
            )
        })?;
    }
    let cluster_ip = match spec.cluster_ip.as_deref() {
        None | Some("") | Some("None") => None,
        Some(ip) => Some(
            ip.parse()
                .map_err(|_| invalid("spec.clusterIP", format!("{ip:?} is not an IP address")))?,
        ),
    };
    Ok(Object::Service(Service {
        name: raw.metadata.name.clone(),
        namespace: namespace.to_string(),
        selector: spec.selector,
        ports,
        cluster_ip,
        endpoints: None,
    }))
}

fn parse_workload(raw: &RawDocument, namespace: &str) -> Result<Object, ModelErrorKind> {
    check_name("metadata.name", &raw.metadata.name)?;
    check_name("metadata.namespace", namespace)?;
    let spec: RawWorkloadSpec = spec(raw)?;
    let mut ports: Vec<WorkloadPort> = Vec::with_capacity(spec.ports.len());
    for (i, p) in spec.ports.iter().enumerate() {
        let port = check_port(&format!("spec.ports[{i}].port"), p.port)?;
        if ports.iter().any(|q| q.port == port) {
            return Err(invalid(
                format!("spec.ports[{i}].port"),
                format!("port {port} is listed twice"),
            ));
        }
        ports.push(WorkloadPort {
            name: p.name.clone(),
            port,
        });
    }
    check_mtls_annotation(&raw.metadata.annotations)?;
    if let Some(v) = raw
        .metadata
        .annotations
        .get(crate::ENDPOINT_WEIGHT_ANNOTATION)
        && crate::parse_endpoint_weight(v).is_none()
    {
        return Err(invalid(
            format!(
                "metadata.annotations[{}]",
                crate::ENDPOINT_WEIGHT_ANNOTATION
            ),
            format!("{v:?} must be a whole number from 1 to 128"),
        ));
    }
    let service_account = spec.service_account.unwrap_or_else(|| "default".into());
    check_name("spec.serviceAccount", &service_account)?;
    let env = match spec.env {
        RawEnv::Map(m) => m,
        RawEnv::List(l) => l.into_iter().map(|v| (v.name, v.value)).collect(),
    };
    Ok(Object::Workload(Workload {
        name: raw.metadata.name.clone(),
        namespace: namespace.to_string(),
        labels: raw.metadata.labels.clone(),
        annotations: raw.metadata.annotations.clone(),
        address: spec.address,
        ports,
        service_account,
        command: spec.command,
        env,
    }))
}

fn check_mtls_annotation(annotations: &BTreeMap<String, String>) -> Result<(), ModelErrorKind> {
    match annotations.get(crate::MTLS_MODE_ANNOTATION) {
        Some(v) if MtlsMode::parse(v).is_none() => Err(invalid(
            format!("metadata.annotations[{}]", crate::MTLS_MODE_ANNOTATION),
            format!("{v:?} must be STRICT or PERMISSIVE"),
        )),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawPolicySpec {
    #[serde(default)]
    selector: Option<RawSelector>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    rules: Vec<AuthorizationRuleRaw>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawSelector {
    #[serde(default)]
    match_labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthorizationRuleRaw {
    #[serde(default)]
    from: Vec<RawFrom>,
    #[serde(default)]
    to: Vec<RawTo>,
}

/// Istio nests sources under `source:` and operations under `operation:`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFrom {
    source: AuthorizationSource,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTo {
    operation: AuthorizationOperation,
}

fn parse_authorization_policy(
    raw: &RawDocument,
    namespace: &str,
) -> Result<Object, ModelErrorKind> {
    check_name("metadata.name", &raw.metadata.name)?;
    check_name("metadata.namespace", namespace)?;
    let spec: RawPolicySpec = spec(raw)?;
    let action = match spec
        .action
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None | Some("ALLOW") => AuthorizationAction::Allow,
        Some("DENY") => AuthorizationAction::Deny,
        Some(other) => {
            return Err(invalid(
                "spec.action",
                format!("{other:?} must be ALLOW or DENY"),
            ));
        }
    };
    let mut rules = Vec::with_capacity(spec.rules.len());
    for (i, rule) in spec.rules.into_iter().enumerate() {
        let from: Vec<AuthorizationSource> = rule.from.into_iter().map(|f| f.source).collect();
        let to: Vec<AuthorizationOperation> = rule.to.into_iter().map(|t| t.operation).collect();
        for (j, source) in from.iter().enumerate() {
            for p in &source.principals {
                if p != "*" && !p.starts_with("spiffe://") {
                    return Err(invalid(
                        format!("spec.rules[{i}].from[{j}].source.principals"),
                        format!(
                            "{p:?} must be a SPIFFE ID (spiffe://...), optionally ending in *, or *"
                        ),
                    ));
                }
            }
            for ns in &source.namespaces {
                if ns != "*" {
                    check_name(&format!("spec.rules[{i}].from[{j}].source.namespaces"), ns)?;
                }
            }
        }
        for (j, op) in to.iter().enumerate() {
            for path in &op.paths {
                if !path.starts_with('/') && path != "*" {
                    return Err(invalid(
                        format!("spec.rules[{i}].to[{j}].operation.paths"),
                        format!("{path:?} must start with /"),
                    ));
                }
            }
            for m in &op.methods {
                if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(invalid(
                        format!("spec.rules[{i}].to[{j}].operation.methods"),
                        format!("{m:?} must be an upper-case HTTP method"),
                    ));
                }
            }
        }
        rules.push(AuthorizationRule { from, to });
    }
    Ok(Object::AuthorizationPolicy(AuthorizationPolicy {
        name: raw.metadata.name.clone(),
        namespace: namespace.to_string(),
        selector: spec.selector.map(|s| s.match_labels).unwrap_or_default(),
        action,
        rules,
    }))
}

/// Writes objects back as Kubernetes-shaped YAML documents that
/// [`parse_documents`] reads again unchanged.
pub fn render_documents(objects: &[Object]) -> String {
    let mut out = String::new();
    for object in objects {
        let doc = match object {
            Object::Namespace(n) => json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": n.name, "labels": n.labels, "annotations": n.annotations},
            }),
            Object::AuthorizationPolicy(p) => {
                let rules: Vec<_> = p
                    .rules
                    .iter()
                    .map(|r| {
                        json!({
                            "from": r.from.iter().map(|s| json!({"source": s})).collect::<Vec<_>>(),
                            "to": r.to.iter().map(|o| json!({"operation": o})).collect::<Vec<_>>(),
                        })
                    })
                    .collect();
                json!({
                    "apiVersion": "mesh.io/v1alpha1", "kind": "AuthorizationPolicy",
                    "metadata": {"name": p.name, "namespace": p.namespace},
                    "spec": {
                        "selector": {"matchLabels": p.selector},
                        "action": p.action,
                        "rules": rules,
                    },
                })
            }
            Object::TrafficPolicy(p) => render_traffic_policy(p),
            Object::Service(s) => {
                let ports: Vec<_> = s
                    .ports
                    .iter()
                    .map(|p| {
                        let mut v = json!({"port": p.port, "targetPort": p.target_port});
                        if let Some(name) = &p.name {
                            v["name"] = json!(name);
                        }
                        if let Some(proto) = &p.app_protocol {
                            v["appProtocol"] = json!(proto);
                        }
                        v
                    })
                    .collect();
                let mut spec = json!({"selector": s.selector, "ports": ports});
                if let Some(ip) = s.cluster_ip {
                    spec["clusterIP"] = json!(ip.to_string());
                }
                json!({
                    "apiVersion": "v1", "kind": "Service",
                    "metadata": {"name": s.name, "namespace": s.namespace},
                    "spec": spec,
                })
            }
            Object::HttpRoute(r) => crate::parse_http_route::render(r),
            Object::Workload(w) => {
                let mut spec = json!({"ports": w.ports, "serviceAccount": w.service_account});
                if let Some(addr) = w.address {
                    spec["address"] = json!(addr.to_string());
                }
                if !w.command.is_empty() {
                    spec["command"] = json!(w.command);
                }
                if !w.env.is_empty() {
                    spec["env"] = json!(w.env);
                }
                json!({
                    "apiVersion": "mesh.io/v1alpha1", "kind": "Workload",
                    "metadata": {
                        "name": w.name, "namespace": w.namespace,
                        "labels": w.labels, "annotations": w.annotations,
                    },
                    "spec": spec,
                })
            }
        };
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&doc).expect("JSON values always render as YAML"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: default, labels: {mesh.io/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: default}
spec:
  selector: {app: catalog}
  ports: [{name: http, port: 8080, targetPort: web}]
  type: ClusterIP
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: catalog-1, labels: {app: catalog}}
spec:
  address: 127.0.1.1
  ports: [{name: web, port: 9090}]
  serviceAccount: catalog
  env: [{name: A, value: b}]
"#;

    fn err(text: &str) -> ModelError {
        parse_documents(text, "mesh.yaml").unwrap_err()
    }

    #[test]
    fn parses_all_kinds_and_round_trips() {
        let objects = parse_documents(GOOD, "mesh.yaml").unwrap();
        assert_eq!(objects.len(), 3);
        let Object::Service(svc) = &objects[1] else {
            panic!("not a service")
        };
        assert_eq!(svc.ports[0].target_port, TargetPort::Name("web".into()));
        let Object::Workload(w) = &objects[2] else {
            panic!("not a workload")
        };
        assert_eq!(w.namespace, "default");
        assert_eq!(w.env.get("A").map(String::as_str), Some("b"));
        let again = parse_documents(&render_documents(&objects), "rendered").unwrap();
        assert_eq!(again, objects);
    }

    #[test]
    fn malformed_yaml_names_file_and_document() {
        let e = err("apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [unclosed\n");
        assert!(matches!(e.kind, ModelErrorKind::Malformed(_)), "{e}");
        assert_eq!(e.document, Some(2));
        assert!(e.to_string().starts_with("mesh.yaml: document 2"), "{e}");
    }

    #[test]
    fn unknown_kinds() {
        let e = err("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n");
        assert!(matches!(e.kind, ModelErrorKind::UnknownKind { .. }), "{e}");
    }

    #[test]
    fn duplicates_name_both_documents() {
        let doc = "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n";
        let e = err(&format!("{doc}---\n{doc}"));
        assert_eq!(e.kind, ModelErrorKind::Duplicate("Namespace/a".into(), 1));
        assert_eq!(e.document, Some(2));
    }

    #[test]
    fn ports_out_of_range() {
        for port in ["0", "65536", "-1"] {
            let text = format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: a}}\nspec: {{ports: [{{port: {port}}}]}}\n"
            );
            let e = err(&text);
            assert!(
                matches!(&e.kind, ModelErrorKind::Invalid { field, .. } if field == "spec.ports[0].port"),
                "{e}"
            );
            assert!(e.to_string().contains("out of range"), "{e}");
        }
    }

    #[test]
    fn workload_typos_are_errors() {
        let e = err(
            "apiVersion: mesh.io/v1alpha1\nkind: Workload\nmetadata: {name: a}\nspec: {adress: 127.0.0.1}\n",
        );
        assert!(e.to_string().contains("adress"), "{e}");
    }

    #[test]
    fn cluster_ips_are_unique() {
        let svc = |name: &str| {
            format!(
                "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}}}\nspec: {{clusterIP: 10.0.0.1, ports: [{{port: 80}}]}}\n"
            )
        };
        let e = err(&format!("{}---\n{}", svc("a"), svc("b")));
        assert!(
            e.to_string()
                .contains("already the cluster IP of Service/default/a"),
            "{e}"
        );
    }

    #[test]
    fn authorization_policies_parse_and_validate() {
        let ok = "apiVersion: mesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {principals: [\"spiffe://cluster.local/ns/web/*\"]}}]\n    to: [{operation: {paths: [/admin*], methods: [POST]}}]\n";
        let objects = parse_documents(ok, "p.yaml").unwrap();
        let again = parse_documents(&render_documents(&objects), "rendered").unwrap();
        assert_eq!(again, objects);
        for (bad, expect) in [
            ("spec: {action: MAYBE}", "ALLOW or DENY"),
            (
                "spec: {rules: [{from: [{source: {principals: [web]}}]}]}",
                "SPIFFE ID",
            ),
            (
                "spec: {rules: [{to: [{operation: {paths: [admin]}}]}]}",
                "must start with /",
            ),
            (
                "spec: {rules: [{to: [{operation: {methods: [get]}}]}]}",
                "upper-case",
            ),
            (
                "spec: {rules: [{from: [{source: {principal: [x]}}]}]}",
                "principal",
            ),
        ] {
            let text = format!(
                "apiVersion: mesh.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p}}\n{bad}\n"
            );
            let e = err(&text);
            assert!(e.to_string().contains(expect), "{bad}: {e}");
        }
        let e = err(
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a, annotations: {mesh.io/mtls-mode: sometimes}}\n",
        );
        assert!(e.to_string().contains("STRICT or PERMISSIVE"), "{e}");
    }

    #[test]
    fn bad_names() {
        let e = err("apiVersion: v1\nkind: Namespace\nmetadata: {name: Bad_Name}\n");
        assert!(matches!(e.kind, ModelErrorKind::Invalid { .. }), "{e}");
    }
}
