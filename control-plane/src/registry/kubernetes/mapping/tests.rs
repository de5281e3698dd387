//! The mapping, checked against objects shaped as a real API server returns them
//! (trimmed `kubectl get -o json` output of a kind cluster).

use super::*;
use mesh_model::{Model, ModelOptions};
use serde_json::json;

fn de<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Arc<T> {
    Arc::new(serde_json::from_value(v).expect("fixture deserializes"))
}

fn shop_ns(labelled: bool) -> serde_json::Value {
    let mut labels = json!({"kubernetes.io/metadata.name": "shop"});
    if labelled {
        labels["mesh.io/inject"] = json!("enabled");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {
            "creationTimestamp": "2025-05-01T10:00:00Z",
            "labels": labels,
            "annotations": {"mesh.io/mtls-mode": "PERMISSIVE"},
            "name": "shop",
            "resourceVersion": "512",
            "uid": "1f0b6d1e-5a3c-4a47-9d1e-0c8e2f7a1b01"
        },
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"}
    })
}

fn catalog_svc() -> serde_json::Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "annotations": {
                "kubectl.kubernetes.io/last-applied-configuration": "{\"apiVersion\":\"v1\"}\n"
            },
            "creationTimestamp": "2025-05-01T10:01:00Z",
            "labels": {"app": "catalog"},
            "name": "catalog",
            "namespace": "shop",
            "resourceVersion": "640",
            "uid": "7c1f0a52-1111-4e0e-a1c2-3d4e5f607182"
        },
        "spec": {
            "clusterIP": "10.96.120.15",
            "clusterIPs": ["10.96.120.15"],
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "ports": [
                {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "web"},
                {"name": "grpc", "port": 9090, "protocol": "TCP", "targetPort": 9091, "appProtocol": "kubernetes.io/h2c"},
                {"name": "metrics-udp", "port": 9125, "protocol": "UDP", "targetPort": 9125}
            ],
            "selector": {"app": "catalog"},
            "sessionAffinity": "None",
            "type": "ClusterIP"
        },
        "status": {"loadBalancer": {}}
    })
}

fn catalog_slice() -> serde_json::Value {
    json!({
        "addressType": "IPv4",
        "apiVersion": "discovery.k8s.io/v1",
        "endpoints": [
            {
                "addresses": ["10.244.1.7"],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": "kind-worker",
                "targetRef": {"kind": "Pod", "name": "catalog-7d9f8b6c5-abcde", "namespace": "shop", "uid": "aa"}
            },
            {
                "addresses": ["10.244.2.9"],
                "conditions": {"ready": false, "serving": true, "terminating": true},
                "nodeName": "kind-worker2",
                "targetRef": {"kind": "Pod", "name": "catalog-7d9f8b6c5-fghij", "namespace": "shop", "uid": "bb"}
            },
            {
                "addresses": ["10.244.2.10"],
                "conditions": {"ready": false, "serving": false, "terminating": false},
                "nodeName": "kind-worker2",
                "targetRef": {"kind": "Pod", "name": "catalog-7d9f8b6c5-klmno", "namespace": "shop", "uid": "cc"}
            },
            {
                "addresses": ["10.244.1.12"],
                "conditions": {},
                "targetRef": {"kind": "Pod", "name": "catalog-7d9f8b6c5-pqrst", "namespace": "shop", "uid": "dd"}
            }
        ],
        "kind": "EndpointSlice",
        "metadata": {
            "creationTimestamp": "2025-05-01T10:01:00Z",
            "generateName": "catalog-",
            "generation": 7,
            "labels": {
                "app": "catalog",
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "kubernetes.io/service-name": "catalog"
            },
            "name": "catalog-x7k2p",
            "namespace": "shop",
            "ownerReferences": [{
                "apiVersion": "v1", "blockOwnerDeletion": true, "controller": true,
                "kind": "Service", "name": "catalog", "uid": "7c1f0a52-1111-4e0e-a1c2-3d4e5f607182"
            }],
            "resourceVersion": "901",
            "uid": "0d3c2b1a-2222-4e0e-a1c2-3d4e5f607182"
        },
        "ports": [
            {"name": "http", "port": 8080, "protocol": "TCP"},
            {"name": "grpc", "port": 9091, "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
            {"name": "metrics-udp", "port": 9125, "protocol": "UDP"}
        ]
    })
}

fn pod(name: &str, ip: Option<&str>, phase: &str, sa: Option<&str>) -> serde_json::Value {
    let mut spec = json!({
        "containers": [{
            "image": "ghcr.io/example/catalog:1.4.2",
            "imagePullPolicy": "IfNotPresent",
            "name": "catalog",
            "ports": [
                {"containerPort": 8080, "name": "web", "protocol": "TCP"},
                {"containerPort": 9091, "name": "grpc", "protocol": "TCP"},
                {"containerPort": 9125, "protocol": "UDP"}
            ],
            "resources": {},
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File"
        }],
        "dnsPolicy": "ClusterFirst",
        "enableServiceLinks": true,
        "nodeName": "kind-worker",
        "restartPolicy": "Always",
        "schedulerName": "default-scheduler",
        "securityContext": {},
        "terminationGracePeriodSeconds": 30
    });
    if let Some(sa) = sa {
        spec["serviceAccount"] = json!(sa);
        spec["serviceAccountName"] = json!(sa);
    }
    let mut status = json!({
        "conditions": [{"lastProbeTime": null, "lastTransitionTime": "2025-05-01T10:01:05Z", "status": "True", "type": "Ready"}],
        "hostIP": "172.18.0.3",
        "phase": phase,
        "qosClass": "BestEffort",
        "startTime": "2025-05-01T10:01:00Z"
    });
    if let Some(ip) = ip {
        status["podIP"] = json!(ip);
        status["podIPs"] = json!([{"ip": ip}]);
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "annotations": {"mesh.io/mtls-mode": "STRICT"},
            "creationTimestamp": "2025-05-01T10:01:00Z",
            "generateName": "catalog-7d9f8b6c5-",
            "labels": {"app": "catalog", "pod-template-hash": "7d9f8b6c5"},
            "managedFields": [{"apiVersion": "v1", "fieldsType": "FieldsV1", "fieldsV1": {"f:metadata": {}}, "manager": "kube-controller-manager", "operation": "Update", "time": "2025-05-01T10:01:00Z"}],
            "name": name,
            "namespace": "shop",
            "ownerReferences": [{"apiVersion": "apps/v1", "blockOwnerDeletion": true, "controller": true, "kind": "ReplicaSet", "name": "catalog-7d9f8b6c5", "uid": "ee"}],
            "resourceVersion": "880",
            "uid": "ff"
        },
        "spec": spec,
        "status": status
    })
}

fn policy(spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "mesh.io/v1alpha1",
        "kind": "AuthorizationPolicy",
        "metadata": {
            "creationTimestamp": "2025-05-01T10:05:00Z",
            "generation": 1,
            "name": "web-only",
            "namespace": "shop",
            "resourceVersion": "1200",
            "uid": "99"
        },
        "spec": spec
    })
}

fn traffic(name: &str, spec: serde_json::Value) -> serde_json::Value {
    let mut v = policy(spec);
    v["kind"] = json!("TrafficPolicy");
    v["metadata"]["name"] = json!(name);
    v
}

fn state(labelled: bool) -> ClusterState {
    ClusterState {
        namespaces: vec![de(shop_ns(labelled))],
        services: vec![de(catalog_svc())],
        endpoint_slices: vec![de(catalog_slice())],
        pods: vec![
            de(pod(
                "catalog-7d9f8b6c5-abcde",
                Some("10.244.1.7"),
                "Running",
                Some("catalog"),
            )),
            de(pod(
                "catalog-7d9f8b6c5-fghij",
                Some("10.244.2.9"),
                "Running",
                Some("catalog"),
            )),
            de(pod(
                "catalog-7d9f8b6c5-klmno",
                Some("10.244.2.10"),
                "Running",
                None,
            )),
            de(pod(
                "catalog-7d9f8b6c5-pqrst",
                Some("10.244.1.12"),
                "Running",
                Some("catalog"),
            )),
            de(pod(
                "catalog-7d9f8b6c5-nopip",
                None,
                "Pending",
                Some("catalog"),
            )),
            de(pod(
                "catalog-job-done",
                Some("10.244.1.99"),
                "Succeeded",
                Some("catalog"),
            )),
        ],
        authorization_policies: vec![de(policy(
            json!({"selector": {"matchLabels": {"app": "catalog"}}, "rules": [{"from": [{"source": {"namespaces": ["web"]}}]}]}),
        ))],
        traffic_policies: vec![de(traffic(
            "catalog",
            json!({"targetRef": {"kind": "Service", "name": "catalog"}, "loadBalancer": {"simple": "ROUND_ROBIN"}, "retries": {"attempts": 1}}),
        ))],
        http_routes: vec![de(http_route(json!({
            "parentRefs": [{"group": "", "kind": "Service", "name": "catalog", "port": 8080}],
            "rules": [{"backendRefs": [{"name": "catalog", "port": 8080}]}]
        })))],
    }
}

/// An HTTPRoute as a cluster with the Gateway API CRDs returns it.
fn http_route(spec: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {
            "creationTimestamp": "2025-05-02T08:00:00Z",
            "generation": 1,
            "name": "catalog-canary",
            "namespace": "shop",
            "resourceVersion": "1300",
            "uid": "77"
        },
        "spec": spec,
        "status": {"parents": []}
    })
}

#[test]
fn namespace_keeps_labels_and_annotations() {
    let ns = namespace(&de(shop_ns(true)));
    assert_eq!(ns.name, "shop");
    assert_eq!(ns.labels["mesh.io/inject"], "enabled");
    assert_eq!(ns.annotations["mesh.io/mtls-mode"], "PERMISSIVE");
}

#[test]
fn service_ports_target_ports_and_cluster_ip() {
    let svc: Arc<KubeService> = de(catalog_svc());
    let s = service(&svc, &[]).unwrap();
    assert_eq!(s.cluster_ip, Some("10.96.120.15".parse().unwrap()));
    assert_eq!(s.selector["app"], "catalog");
    let ports: Vec<_> = s
        .ports
        .iter()
        .map(|p| {
            (
                p.name.as_deref(),
                p.port,
                p.target_port.clone(),
                p.app_protocol.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        ports,
        [
            (Some("http"), 80, TargetPort::Name("web".into()), None),
            (
                Some("grpc"),
                9090,
                TargetPort::Number(9091),
                Some("kubernetes.io/h2c")
            ),
        ],
        "UDP ports are not the mesh's"
    );
    assert_eq!(
        s.endpoints,
        Some(vec![]),
        "no slices yet means no endpoints, not selector matching"
    );

    // Headless: no cluster IP; no targetPort: the port; numeric string target.
    let mut headless = catalog_svc();
    headless["spec"]["clusterIP"] = json!("None");
    headless["spec"]["clusterIPs"] = json!(["None"]);
    headless["spec"]["ports"] =
        json!([{"port": 80, "protocol": "TCP"}, {"port": 81, "targetPort": "8081"}]);
    let s = service(&de(headless), &[]).unwrap();
    assert_eq!(s.cluster_ip, None);
    assert_eq!(s.ports[0].target_port, TargetPort::Number(80));
    assert_eq!(s.ports[0].name, None);
    assert_eq!(s.ports[1].target_port, TargetPort::Number(8081));

    let external = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "db", "namespace": "shop"},
        "spec": {"type": "ExternalName", "externalName": "db.example.com", "ports": [{"port": 5432}]}
    });
    assert!(service(&de(external), &[]).is_none());
    let udp_only = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "dns", "namespace": "shop"},
        "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 53, "protocol": "UDP"}]}
    });
    assert!(service(&de(udp_only), &[]).is_none());
}

#[test]
fn endpoint_slice_conditions_ports_and_target_refs() {
    let slice: Arc<EndpointSlice> = de(catalog_slice());
    let eps = endpoint_slice(&slice, "shop");
    assert_eq!(eps.len(), 4);
    let first = &eps[0];
    assert_eq!(first.address, "10.244.1.7".parse::<IpAddr>().unwrap());
    assert_eq!(
        first.ports,
        [("grpc".to_string(), 9091), ("http".to_string(), 8080)]
            .into_iter()
            .collect()
    );
    assert_eq!(first.workload.as_deref(), Some("catalog-7d9f8b6c5-abcde"));
    let conds: Vec<_> = eps
        .iter()
        .map(|e| (e.ready, e.serving, e.terminating))
        .collect();
    assert_eq!(
        conds,
        [
            (true, true, false),
            (false, true, true),
            (false, false, false),
            // absent conditions: ready and serving true, terminating false
            (true, true, false),
        ]
    );

    let mut fqdn = catalog_slice();
    fqdn["addressType"] = json!("FQDN");
    assert!(endpoint_slice(&de(fqdn), "shop").is_empty());
    let mut foreign = catalog_slice();
    foreign["endpoints"][0]["targetRef"]["namespace"] = json!("other");
    foreign["endpoints"][1]["targetRef"]["kind"] = json!("Node");
    let eps = endpoint_slice(&de(foreign), "shop");
    assert_eq!(
        (eps[0].workload.as_ref(), eps[1].workload.as_ref()),
        (None, None)
    );
}

#[test]
fn pods_become_workloads() {
    let w = workload(&de(pod(
        "catalog-7d9f8b6c5-abcde",
        Some("10.244.1.7"),
        "Running",
        Some("catalog"),
    )))
    .unwrap();
    assert_eq!(w.name, "catalog-7d9f8b6c5-abcde");
    assert_eq!(w.namespace, "shop");
    assert_eq!(w.address, Some("10.244.1.7".parse().unwrap()));
    assert_eq!(w.service_account, "catalog");
    assert_eq!(w.labels["app"], "catalog");
    assert_eq!(w.annotations["mesh.io/mtls-mode"], "STRICT");
    let ports: Vec<_> = w
        .ports
        .iter()
        .map(|p| (p.name.as_deref(), p.port))
        .collect();
    assert_eq!(ports, [(Some("web"), 8080), (Some("grpc"), 9091)]);
    let no_sa = workload(&de(pod("p", Some("10.0.0.1"), "Running", None))).unwrap();
    assert_eq!(no_sa.service_account, "default");
    assert!(workload(&de(pod("p", None, "Pending", None))).is_none());
    assert!(workload(&de(pod("p", Some("10.0.0.1"), "Succeeded", None))).is_none());
    assert!(workload(&de(pod("p", Some("10.0.0.1"), "Failed", None))).is_none());
}

#[test]
fn trimming_a_pod_keeps_its_mapping() {
    let mut p: Pod = serde_json::from_value(pod(
        "catalog-7d9f8b6c5-abcde",
        Some("10.244.1.7"),
        "Running",
        Some("catalog"),
    ))
    .unwrap();
    let before = workload(&p);
    trim_pod(&mut p);
    assert_eq!(workload(&p), before);
    assert!(p.metadata.managed_fields.is_none());
    let spec = p.spec.as_ref().unwrap();
    assert!(spec.containers[0].image.is_none());
    assert!(p.status.as_ref().unwrap().conditions.is_none());

    let mut s: KubeService = serde_json::from_value(catalog_svc()).unwrap();
    trim_metadata(&mut s);
    assert!(!s.annotations().contains_key(LAST_APPLIED));
}

#[test]
fn authorization_policies_are_validated_like_files() {
    let ok = custom_object(
        &de(policy(
            json!({"action": "DENY", "rules": [{"to": [{"operation": {"paths": ["/admin*"]}}]}]}),
        )),
        AUTHORIZATION_POLICY,
    )
    .unwrap();
    let Object::AuthorizationPolicy(p) = ok else {
        panic!("{ok:?}")
    };
    assert_eq!(
        (p.namespace.as_str(), p.name.as_str()),
        ("shop", "web-only")
    );
    assert_eq!(p.action, mesh_model::AuthorizationAction::Deny);

    let err = custom_object(
        &de(policy(
            json!({"rules": [{"from": [{"source": {"principals": ["catalog"]}}]}]}),
        )),
        AUTHORIZATION_POLICY,
    )
    .unwrap_err();
    assert!(err.contains("AuthorizationPolicy/shop/web-only"), "{err}");
    assert!(err.contains("must be a SPIFFE ID"), "{err}");
}

#[test]
fn the_model_from_a_cluster() {
    let mapped = map_cluster(&state(true));
    assert!(mapped.rejected.is_empty(), "{:?}", mapped.rejected);
    let model = Model::new(mapped.objects.clone(), ModelOptions::default());
    let svc = model
        .service("shop", "catalog")
        .expect("labelled namespace");
    let http = svc.ports.iter().find(|p| p.port == 80).unwrap();
    let eps = model.endpoints(svc, http);
    let got: Vec<_> = eps
        .iter()
        .map(|e| (e.address.to_string(), e.identity.to_string(), e.draining))
        .collect();
    assert_eq!(
        got,
        [
            (
                "10.244.1.7:8080".to_string(),
                "spiffe://cluster.local/ns/shop/sa/catalog".to_string(),
                false
            ),
            (
                "10.244.2.9:8080".to_string(),
                "spiffe://cluster.local/ns/shop/sa/catalog".to_string(),
                true
            ),
            (
                "10.244.1.12:8080".to_string(),
                "spiffe://cluster.local/ns/shop/sa/catalog".to_string(),
                false
            ),
        ],
        "ready active, terminating+serving draining, not-ready-not-serving out; \
         in workload order"
    );
    let grpc = svc.ports.iter().find(|p| p.port == 9090).unwrap();
    assert_eq!(
        model.endpoints(svc, grpc)[0].address.to_string(),
        "10.244.1.7:9091"
    );
    assert_eq!(
        model.workloads().count(),
        4,
        "no IP and Succeeded pods are skipped"
    );
    let w = model.workload("shop", "catalog-7d9f8b6c5-abcde").unwrap();
    assert_eq!(model.authorization_policies(w).len(), 1);
    let tp = model
        .traffic_policy(svc)
        .expect("the TrafficPolicy CR applies");
    assert_eq!(tp.load_balancer, mesh_model::LoadBalancer::RoundRobin);
    assert_eq!(tp.retries.attempts, 1);

    // Same namespace unlabelled: nothing is meshed.
    let unmeshed = Model::new(map_cluster(&state(false)).objects, ModelOptions::default());
    assert_eq!(unmeshed.services().count(), 0);
    assert_eq!(unmeshed.workloads().count(), 0);
}

#[test]
fn store_order_does_not_change_the_mapping() {
    let a = map_cluster(&state(true));
    let mut reversed = state(true);
    reversed.pods.reverse();
    let mut second = catalog_slice();
    second["metadata"]["name"] = json!("catalog-zzzzz");
    second["endpoints"] = json!([second["endpoints"][0].clone()]);
    reversed.endpoint_slices.push(de(second));
    reversed.endpoint_slices.reverse();
    let b = map_cluster(&reversed);
    assert_eq!(
        a, b,
        "order-independent; an endpoint in two slices counts once"
    );
}

#[test]
fn http_routes_map_through_the_file_parser() {
    let mapped = map_cluster(&state(true));
    let route = mapped
        .objects
        .iter()
        .find_map(|o| match o {
            Object::HttpRoute(r) => Some(r),
            _ => None,
        })
        .expect("the route maps");
    assert_eq!(route.name, "catalog-canary");
    assert_eq!(route.created.as_deref(), Some("2025-05-02T08:00:00Z"));
    assert_eq!(route.parents[0].port, Some(8080));
    let err = custom_object(
        &de(http_route(json!({
            "parentRefs": [{"name": "a-gateway"}],
        }))),
        HTTP_ROUTE,
    )
    .unwrap_err();
    assert!(err.starts_with("HTTPRoute/shop/catalog-canary"), "{err}");
    assert!(err.contains("kind Service"), "{err}");
}

#[test]
fn a_bad_policy_is_reported_and_the_rest_maps() {
    let mut s = state(true);
    s.authorization_policies
        .push(de(policy(json!({"action": "MAYBE"}))));
    let mapped = map_cluster(&s);
    assert_eq!(mapped.rejected.len(), 1);
    assert!(
        mapped.rejected[0].contains("spec.action"),
        "{:?}",
        mapped.rejected
    );
    assert!(
        mapped
            .objects
            .iter()
            .any(|o| matches!(o, Object::Service(_)))
    );
}

#[test]
fn a_bad_traffic_policy_is_reported_like_a_file_error() {
    let mut s = state(true);
    s.traffic_policies.push(de(traffic(
        "broken",
        json!({"targetRef": {"name": "catalog"}, "retries": {"retryOn": ["sometimes"]}}),
    )));
    let mapped = map_cluster(&s);
    assert_eq!(mapped.rejected.len(), 1, "{:?}", mapped.rejected);
    let reason = &mapped.rejected[0];
    assert!(reason.starts_with("TrafficPolicy/shop/broken"), "{reason}");
    assert!(reason.contains("spec.retries.retryOn[0]"), "{reason}");
    let good = mapped
        .objects
        .iter()
        .filter(|o| matches!(o, Object::TrafficPolicy(_)))
        .count();
    assert_eq!(good, 1, "the valid policy still maps");
}
