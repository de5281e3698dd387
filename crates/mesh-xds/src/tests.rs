//! The per-proxy rule, checked on a small model.

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use mesh_model::{Model, ModelOptions, parse_documents};

use crate::any::unpack;
use crate::{ProxyNode, ProxyView, ResourceType, Snapshot};

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {mesh.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: web, labels: {mesh.io/inject: enabled}}
---
apiVersion: v1
kind: Namespace
metadata: {name: outside}
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec: {selector: {app: catalog}, ports: [{port: 8080, appProtocol: grpc}]}
---
apiVersion: v1
kind: Service
metadata: {name: hidden, namespace: outside}
spec: {selector: {app: hidden}, ports: [{port: 80}]}
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: catalog-1, namespace: shop, labels: {app: catalog}}
spec: {address: 127.0.1.1, ports: [{port: 8080}], serviceAccount: catalog}
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: ui-1, namespace: web, labels: {app: ui}}
spec: {address: 127.0.1.2, ports: [{port: 3000}, {port: 3001}], serviceAccount: ui}
"#;

fn view(workload: Option<&str>, namespace: &str) -> ProxyView {
    let model = Model::new(parse_documents(MESH, "t").unwrap(), ModelOptions::default());
    let snapshot = Arc::new(Snapshot::build(Arc::new(model), 1, None));
    ProxyView::new(
        snapshot,
        &ProxyNode {
            id: "n".into(),
            workload: workload.map(str::to_string),
            namespace: namespace.into(),
            admin_address: None,
        },
    )
}

fn names(view: &ProxyView, ty: ResourceType) -> Vec<String> {
    view.wildcard(ty).iter().map(|r| r.name.clone()).collect()
}

#[test]
fn a_proxy_gets_meshed_services_and_only_its_own_inbound() {
    let ui = view(Some("ui-1"), "web");
    assert_eq!(names(&ui, ResourceType::Listener), ["outbound", "inbound"]);
    assert_eq!(
        names(&ui, ResourceType::Cluster),
        [
            "catalog.shop.svc.cluster.local:8080",
            "inbound|3000",
            "inbound|3001"
        ]
    );
    assert_eq!(
        names(&ui, ResourceType::Endpoint),
        ["catalog.shop.svc.cluster.local:8080"]
    );
    assert!(
        ui.get(ResourceType::Cluster, "inbound|8080").is_none(),
        "another workload's inbound"
    );
    assert!(
        ui.get(ResourceType::Cluster, "hidden.outside.svc.cluster.local:80")
            .is_none()
    );
}

#[test]
fn unknown_nodes_get_the_outbound_view_only() {
    let anon = view(None, "default");
    assert_eq!(names(&anon, ResourceType::Listener), ["outbound"]);
    assert_eq!(
        names(&anon, ResourceType::Cluster),
        ["catalog.shop.svc.cluster.local:8080"]
    );
    assert!(
        anon.get(
            ResourceType::Listener,
            "catalog.shop.svc.cluster.local:8080"
        )
        .is_some()
    );
}

#[test]
fn short_names_depend_on_the_proxy_namespace() {
    let domains = |v: &ProxyView| -> Vec<String> {
        let r = v.get(ResourceType::Route, "outbound").unwrap();
        let rc: RouteConfiguration = unpack(&r.body).unwrap();
        rc.virtual_hosts
            .into_iter()
            .flat_map(|vh| vh.domains)
            .collect()
    };
    assert!(domains(&view(None, "shop")).contains(&"catalog:8080".to_string()));
    assert!(!domains(&view(None, "web")).contains(&"catalog:8080".to_string()));
}

#[test]
fn grpc_ports_get_http2_clusters_and_versions_are_content_hashes() {
    let a = view(Some("catalog-1"), "shop");
    let inbound: Cluster =
        unpack(&a.get(ResourceType::Cluster, "inbound|8080").unwrap().body).unwrap();
    assert!(
        inbound
            .typed_extension_protocol_options
            .contains_key(crate::resources::HTTP_PROTOCOL_OPTIONS)
    );
    let b = view(Some("catalog-1"), "shop");
    let (ra, rb) = (
        a.get(ResourceType::Cluster, "inbound|8080").unwrap(),
        b.get(ResourceType::Cluster, "inbound|8080").unwrap(),
    );
    assert_eq!(
        ra.version, rb.version,
        "same content, same version across builds"
    );
}

#[test]
fn rebuilding_an_unchanged_model_keeps_every_version() {
    // Endpoint metadata is a protobuf Struct (a hash map): its encoding order varies
    // between builds, so stability comes from reusing equal resources.
    let model = Arc::new(Model::new(
        parse_documents(MESH, "t").unwrap(),
        ModelOptions::default(),
    ));
    let mut previous = Arc::new(Snapshot::build(model.clone(), 1, None));
    let node = ProxyNode::default();
    for generation in 2..20 {
        let next = Arc::new(Snapshot::build(model.clone(), generation, Some(&previous)));
        let (a, b) = (
            ProxyView::new(previous.clone(), &node),
            ProxyView::new(next.clone(), &node),
        );
        for ty in ResourceType::ALL {
            let va: Vec<_> = a.wildcard(ty).iter().map(|r| r.version.clone()).collect();
            let vb: Vec<_> = b.wildcard(ty).iter().map(|r| r.version.clone()).collect();
            assert_eq!(va, vb, "{ty} versions changed without a model change");
        }
        previous = next;
    }
}
