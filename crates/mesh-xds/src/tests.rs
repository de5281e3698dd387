//! The per-proxy rule, checked on a small model.

use std::sync::Arc;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::config::rbac::v3::rbac::Action;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{Secret, secret};
use mesh_model::{Model, ModelOptions, parse_documents};

use crate::any::unpack;
use crate::{ProxyNode, ProxyView, ResourceType, Snapshot};

/// Any PEM text: the snapshot carries it without parsing.
const BUNDLE: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

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
---
apiVersion: mesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: shop-only, namespace: web}
spec:
  rules:
  - from: [{source: {namespaces: [shop]}}]
  - from: [{source: {principals: ["spiffe://cluster.local/ns/ops/sa/*"]}}]
    to: [{operation: {paths: [/admin*], methods: [GET]}}]
---
apiVersion: mesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: web}
spec: {action: DENY, rules: [{to: [{operation: {methods: [DELETE]}}]}]}
"#;

fn view(workload: Option<&str>, namespace: &str) -> ProxyView {
    let model = Model::new(parse_documents(MESH, "t").unwrap(), ModelOptions::default());
    let snapshot = Arc::new(Snapshot::build(Arc::new(model), Arc::from(BUNDLE), 1, None));
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
            "PassthroughCluster",
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
        ["PassthroughCluster", "catalog.shop.svc.cluster.local:8080"]
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
    let mut previous = Arc::new(Snapshot::build(model.clone(), Arc::from(BUNDLE), 1, None));
    let node = ProxyNode::default();
    for generation in 2..20 {
        let next = Arc::new(Snapshot::build(
            model.clone(),
            Arc::from(BUNDLE),
            generation,
            Some(&previous),
        ));
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

fn inbound(view: &ProxyView) -> Listener {
    unpack(&view.get(ResourceType::Listener, "inbound").unwrap().body).unwrap()
}

fn hcm(chain: &envoy_types::pb::envoy::config::listener::v3::FilterChain) -> HttpConnectionManager {
    match chain.filters[0].config_type.as_ref().unwrap() {
        ConfigType::TypedConfig(any) => unpack(any).unwrap(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn inbound_is_mutual_tls_by_default_and_permissive_adds_plaintext() {
    let strict = inbound(&view(Some("ui-1"), "web"));
    let chains: Vec<(&str, &str, bool)> = strict
        .filter_chains
        .iter()
        .map(|c| {
            let m = c.filter_chain_match.as_ref().unwrap();
            (
                c.name.as_str(),
                m.transport_protocol.as_str(),
                c.transport_socket.is_some(),
            )
        })
        .collect();
    assert_eq!(
        chains,
        [
            ("inbound|3000|tls", "tls", true),
            ("inbound|3001|tls", "tls", true)
        ]
    );
    assert_eq!(
        strict.listener_filters[1].name,
        crate::resources::TLS_INSPECTOR
    );

    let permissive_mesh = MESH.replace(
        "metadata: {name: web, labels: {mesh.io/inject: enabled}}",
        "metadata: {name: web, labels: {mesh.io/inject: enabled}, annotations: {mesh.io/mtls-mode: PERMISSIVE}}",
    );
    assert_ne!(permissive_mesh, MESH);
    let model = Model::new(
        parse_documents(&permissive_mesh, "t").unwrap(),
        ModelOptions::default(),
    );
    let snapshot = Arc::new(Snapshot::build(Arc::new(model), Arc::from(BUNDLE), 1, None));
    let node = ProxyNode {
        id: "n".into(),
        workload: Some("ui-1".into()),
        namespace: "web".into(),
        admin_address: None,
    };
    let permissive = inbound(&ProxyView::new(snapshot, &node));
    let plaintext: Vec<_> = permissive
        .filter_chains
        .iter()
        .filter(|c| c.transport_socket.is_none())
        .map(|c| {
            c.filter_chain_match
                .as_ref()
                .unwrap()
                .transport_protocol
                .as_str()
        })
        .collect();
    assert_eq!(plaintext, ["raw_buffer", "raw_buffer"]);
}

#[test]
fn authorization_becomes_deny_then_allow_rbac_filters() {
    let listener = inbound(&view(Some("ui-1"), "web"));
    let filters = &hcm(&listener.filter_chains[0]).http_filters;
    let names: Vec<&str> = filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "envoy.filters.http.rbac",
            "envoy.filters.http.rbac",
            "envoy.filters.http.router"
        ]
    );
    let rbac = |i: usize| -> Rbac {
        match filters[i].config_type.as_ref().unwrap() {
            http_filter::ConfigType::TypedConfig(any) => unpack(any).unwrap(),
            other => panic!("{other:?}"),
        }
    };
    let deny = rbac(0).rules.unwrap();
    assert_eq!(deny.action, Action::Deny as i32);
    assert_eq!(
        deny.policies.keys().collect::<Vec<_>>(),
        ["web/no-delete[0]"]
    );
    let allow = rbac(1).rules.unwrap();
    assert_eq!(allow.action, Action::Allow as i32);
    let mut keys: Vec<_> = allow.policies.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, ["web/shop-only[0]", "web/shop-only[1]"]);
    // catalog-1 (namespace shop) has no policy: no RBAC filter at all.
    let catalog = inbound(&view(Some("catalog-1"), "shop"));
    assert_eq!(hcm(&catalog.filter_chains[0]).http_filters.len(), 1);
}

#[test]
fn the_trust_bundle_is_an_sds_secret() {
    let v = view(None, "default");
    let r = v
        .get(ResourceType::Secret, "ROOTCA")
        .expect("ROOTCA served");
    let s: Secret = unpack(&r.body).unwrap();
    let Some(secret::Type::ValidationContext(vc)) = s.r#type else {
        panic!("not a validation context")
    };
    let Some(envoy_types::pb::envoy::config::core::v3::data_source::Specifier::InlineBytes(pem)) =
        vc.trusted_ca.unwrap().specifier
    else {
        panic!("not inline")
    };
    assert_eq!(pem, BUNDLE.as_bytes());
    assert!(
        v.get(ResourceType::Secret, "default").is_none(),
        "workload keys are never served"
    );
}

#[test]
fn draining_endpoints_are_marked_draining() {
    use envoy_types::pb::envoy::config::core::v3::HealthStatus;
    use mesh_model::{Endpoint, Identity, ObjectKey};
    let ep = |addr: &str, draining| Endpoint {
        address: addr.parse().unwrap(),
        workload: ObjectKey::new("shop", "catalog-1"),
        identity: Identity::new("cluster.local", "shop", "catalog"),
        sidecar: true,
        draining,
        weight: 1,
    };
    let cla = crate::resources::load_assignment(
        "c",
        &[ep("10.0.0.1:80", false), ep("10.0.0.2:80", true)],
    );
    let health: Vec<_> = cla.endpoints[0]
        .lb_endpoints
        .iter()
        .map(|e| HealthStatus::try_from(e.health_status).unwrap())
        .collect();
    assert_eq!(health, [HealthStatus::Healthy, HealthStatus::Draining]);
}

/// A mesh with an opaque MySQL-like service (appProtocol) and a Service whose
/// annotation makes one port opaque, both with cluster IPs.
const OPAQUE_MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {mesh.io/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: shop}
spec: {clusterIP: 10.96.0.20, selector: {app: db}, ports: [{port: 3306, appProtocol: mysql}]}
---
apiVersion: v1
kind: Service
metadata: {name: cache, namespace: shop, annotations: {mesh.io/opaque-ports: "6379"}}
spec: {clusterIP: 10.96.0.21, selector: {app: cache}, ports: [{port: 6379}, {port: 80}]}
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: db-1, namespace: shop, labels: {app: db}}
spec: {address: 127.0.1.1, ports: [{port: 3306}], serviceAccount: db}
---
apiVersion: mesh.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-only, namespace: shop}
spec:
  rules:
  - from: [{source: {namespaces: [web]}}]
  - from: [{source: {namespaces: [ops]}}]
    to: [{operation: {paths: [/admin]}}]
"#;

#[test]
fn opaque_ports_get_tcp_proxy_chains_out_and_in() {
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        TcpProxy, tcp_proxy::ClusterSpecifier,
    };
    let model = Model::new(
        parse_documents(OPAQUE_MESH, "t").unwrap(),
        ModelOptions::default(),
    );
    let snapshot = Arc::new(Snapshot::build(Arc::new(model), Arc::from(BUNDLE), 1, None));
    let view = ProxyView::new(
        snapshot,
        &ProxyNode {
            id: "n".into(),
            workload: Some("db-1".into()),
            namespace: "shop".into(),
            admin_address: None,
        },
    );
    let out: Listener =
        unpack(&view.get(ResourceType::Listener, "outbound").unwrap().body).unwrap();
    let filters: Vec<&str> = out
        .listener_filters
        .iter()
        .map(|f| f.name.as_str())
        .collect();
    assert_eq!(
        filters,
        [
            crate::resources::ORIGINAL_DST_FILTER,
            crate::resources::HTTP_INSPECTOR
        ]
    );
    assert!(
        out.listener_filters[1].filter_disabled.is_some(),
        "opaque ports are never sniffed"
    );
    let tcp: Vec<(String, String, u32, String)> = out
        .filter_chains
        .iter()
        .filter_map(|c| {
            let m = c.filter_chain_match.as_ref()?;
            let range = m.prefix_ranges.first()?;
            let Some(ConfigType::TypedConfig(any)) = &c.filters[0].config_type else {
                return None;
            };
            let proxy: TcpProxy = unpack(any).ok()?;
            let Some(ClusterSpecifier::Cluster(cluster)) = proxy.cluster_specifier else {
                return None;
            };
            Some((
                range.address_prefix.clone(),
                format!("/{}", range.prefix_len.as_ref()?.value),
                m.destination_port.as_ref()?.value,
                cluster,
            ))
        })
        .collect();
    assert_eq!(
        tcp,
        [
            (
                "10.96.0.21".into(),
                "/32".into(),
                6379,
                "cache.shop.svc.cluster.local:6379".into()
            ),
            (
                "10.96.0.20".into(),
                "/32".into(),
                3306,
                "db.shop.svc.cluster.local:3306".into()
            ),
        ]
    );
    let default = out
        .default_filter_chain
        .as_ref()
        .expect("passthrough chain");
    let Some(ConfigType::TypedConfig(any)) = &default.filters[0].config_type else {
        panic!("typed config")
    };
    let proxy: TcpProxy = unpack(any).unwrap();
    assert_eq!(
        proxy.cluster_specifier,
        Some(ClusterSpecifier::Cluster("PassthroughCluster".into()))
    );
    let passthrough: Cluster = unpack(
        &view
            .get(ResourceType::Cluster, "PassthroughCluster")
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(
        passthrough.lb_policy,
        envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy::ClusterProvided as i32
    );

    // Inbound: the opaque port's chain is network RBAC + tcp_proxy, ALPN mesh-tcp.
    let inbound: Listener =
        unpack(&view.get(ResourceType::Listener, "inbound").unwrap().body).unwrap();
    let chain = &inbound.filter_chains[0];
    let names: Vec<&str> = chain.filters.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(
        names,
        [
            crate::authz::NETWORK_RBAC_FILTER,
            crate::resources::TCP_PROXY_FILTER
        ]
    );
    let Some(ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
        panic!("typed config")
    };
    let rbac: NetworkRbac = unpack(any).unwrap();
    let rules = rbac.rules.unwrap();
    assert_eq!(rules.action, Action::Allow as i32);
    // The rule with a path cannot apply to TCP: left out of the ALLOW filter.
    let mut policies: Vec<&String> = rules.policies.keys().collect();
    policies.sort();
    assert_eq!(policies, ["shop/web-only[0]"]);
    assert!(!rbac.stat_prefix.is_empty(), "Envoy requires a stat_prefix");
}

#[test]
fn traffic_policies_reach_the_cluster_and_both_routes() {
    use envoy_types::pb::envoy::config::cluster::v3::cluster::LbPolicy;
    use envoy_types::pb::envoy::config::route::v3::route::Action;
    use envoy_types::pb::envoy::config::route::v3::route_action::hash_policy::PolicySpecifier;
    let text = format!(
        "{MESH}---\napiVersion: mesh.io/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: cat, namespace: shop}}\nspec:\n  targetRef: {{name: catalog}}\n  loadBalancer: {{consistentHash: {{httpHeaderName: x-user}}}}\n  timeouts: {{request: 2s}}\n  retries: {{attempts: 0}}\n  connectionPool: {{maxRequests: 7}}\n"
    )
    .replace(
        "metadata: {name: catalog-1, namespace: shop, labels: {app: catalog}}",
        "metadata: {name: catalog-1, namespace: shop, labels: {app: catalog}, annotations: {mesh.io/endpoint-weight: \"5\"}}",
    );
    let model = Model::new(
        parse_documents(&text, "t").unwrap(),
        ModelOptions::default(),
    );
    let snapshot = Arc::new(Snapshot::build(Arc::new(model), Arc::from(BUNDLE), 1, None));
    let node = ProxyNode {
        id: "n".into(),
        workload: None,
        namespace: "shop".into(),
        admin_address: None,
    };
    let view = ProxyView::new(snapshot, &node);
    let name = "catalog.shop.svc.cluster.local:8080";
    let cluster: Cluster = unpack(&view.get(ResourceType::Cluster, name).unwrap().body).unwrap();
    assert_eq!(cluster.lb_policy, LbPolicy::RingHash as i32);
    let limits = &cluster.circuit_breakers.as_ref().unwrap().thresholds[0];
    assert_eq!(limits.max_requests.as_ref().unwrap().value, 7);
    assert_eq!(limits.max_connections.as_ref().unwrap().value, u32::MAX);
    let cla: envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment =
        unpack(&view.get(ResourceType::Endpoint, name).unwrap().body).unwrap();
    let weight = cla.endpoints[0].lb_endpoints[0]
        .load_balancing_weight
        .as_ref();
    assert_eq!(weight.unwrap().value, 5);
    for route_name in ["outbound", name] {
        let routes: RouteConfiguration =
            unpack(&view.get(ResourceType::Route, route_name).unwrap().body).unwrap();
        let vh = routes
            .virtual_hosts
            .iter()
            .find(|vh| vh.name == name)
            .unwrap_or(&routes.virtual_hosts[0]);
        let Some(Action::Route(action)) = &vh.routes[0].action else {
            panic!("route action")
        };
        assert_eq!(action.timeout.as_ref().unwrap().seconds, 2, "{route_name}");
        assert!(action.retry_policy.is_none(), "attempts 0: no retries");
        assert!(matches!(
            &action.hash_policy[0].policy_specifier,
            Some(PolicySpecifier::Header(h)) if h.header_name == "x-user"
        ));
    }
}
