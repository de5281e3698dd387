//! The controller's ADS server, driven step by step by a raw client: both variants,
//! ACK/NACK, subscriptions, pushes on registry change, and resources that decode
//! with everything real clients (Envoy, proxyless gRPC) require.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster, cluster::ClusterDiscoveryType, cluster::DiscoveryType,
};
use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier, http_filter,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use mesh_tests::process::Controller;
use mesh_tests::xds::{Delta, Sotw, node};
use mesh_tests::{mesh_yaml, unique_ip};
use mesh_xds::any::unpack;
use mesh_xds::types::{CLUSTER, ENDPOINT, LISTENER, ROUTE};

const CATALOG: &str = "catalog.default.svc.cluster.local:8080";

struct Mesh {
    dir: tempdir::Dir,
    controller: Controller,
    ips: Vec<IpAddr>,
}

mod tempdir {
    /// A temp directory removed on drop.
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!(
                "mesh-test-{tag}-{}-{}",
                std::process::id(),
                mesh_tests::free_port()
            ));
            std::fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            if !std::thread::panicking() {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }
}

fn catalog_yaml(ips: &[IpAddr], catalog_instances: usize) -> String {
    let mut workloads = vec![("frontend-1".to_string(), "frontend", ips[0])];
    for i in 0..catalog_instances {
        workloads.push((format!("catalog-{}", i + 1), "catalog", ips[i + 1]));
    }
    let w: Vec<_> = workloads
        .iter()
        .map(|(n, a, ip)| (n.as_str(), *a, *ip, 8080))
        .collect();
    mesh_yaml(&[("frontend", 8080), ("catalog", 8080)], &w)
}

async fn mesh(tag: &str, catalog_instances: usize) -> Mesh {
    let dir = tempdir::Dir::new(tag);
    let ips: Vec<IpAddr> = (0..4).map(|_| unique_ip()).collect();
    let file = dir.0.join("mesh.yaml");
    std::fs::write(&file, catalog_yaml(&ips, catalog_instances)).unwrap();
    let controller = Controller::start(&file, &dir.0).await;
    Mesh {
        dir,
        controller,
        ips,
    }
}

impl Mesh {
    fn write(&self, text: &str) {
        // Write-then-rename, as editors do.
        let tmp = self.dir.0.join("mesh.yaml.tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.dir.0.join("mesh.yaml")).unwrap();
    }

    async fn syncz_type(&self, node_id: &str, ty: &str) -> serde_json::Value {
        let syncz = self.controller.admin_json("/debug/syncz").await;
        let proxy = syncz
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["node_id"] == node_id)
            .unwrap_or_else(|| panic!("{node_id} not in syncz: {syncz}"))
            .clone();
        proxy["types"][ty].clone()
    }
}

fn sotw_request(
    type_url: &str,
    names: &[&str],
    ack: Option<&DiscoveryResponse>,
) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        resource_names: names.iter().map(|s| s.to_string()).collect(),
        version_info: ack.map(|r| r.version_info.clone()).unwrap_or_default(),
        response_nonce: ack.map(|r| r.nonce.clone()).unwrap_or_default(),
        ..Default::default()
    }
}

fn decode_all<M: prost::Message + prost::Name + Default>(resp: &DiscoveryResponse) -> Vec<M> {
    resp.resources
        .iter()
        .map(|a| unpack::<M>(a).expect("every resource decodes as its type"))
        .collect()
}

fn hcm_of(listener: &Listener) -> HttpConnectionManager {
    if let Some(api) = &listener.api_listener {
        return unpack(api.api_listener.as_ref().expect("api_listener set")).expect("HCM");
    }
    let filter = &listener.filter_chains[0].filters[0];
    match filter.config_type.as_ref().expect("filter typed_config") {
        ConfigType::TypedConfig(any) => unpack(any).expect("HCM"),
        other => panic!("unexpected filter config {other:?}"),
    }
}

fn assert_router_filter(hcm: &HttpConnectionManager) {
    let last = hcm.http_filters.last().expect("http filters");
    assert_eq!(last.name, "envoy.filters.http.router");
    match last
        .config_type
        .as_ref()
        .expect("router needs typed_config (gRPC requires it)")
    {
        http_filter::ConfigType::TypedConfig(any) => assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
        ),
        other => panic!("unexpected {other:?}"),
    }
    assert!(!hcm.stat_prefix.is_empty(), "Envoy requires a stat_prefix");
}

#[tokio::test]
async fn sotw_serves_valid_resources_and_pure_acks_get_no_answer() {
    let m = mesh("sotw", 2).await;
    let mut s = Sotw::open(&m.controller.xds_url()).await;
    let mut first = sotw_request(CLUSTER, &[], None);
    first.node = Some(node("frontend-1"));
    s.send(first).await;
    let cds = s.recv().await;
    assert_eq!(cds.type_url, CLUSTER);
    let clusters: Vec<Cluster> = decode_all(&cds);
    let names: Vec<&str> = clusters.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "PassthroughCluster",
            CATALOG,
            "frontend.default.svc.cluster.local:8080",
            "inbound|8080"
        ]
    );
    let catalog = &clusters[1];
    assert_eq!(
        catalog.cluster_discovery_type,
        Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
    );
    let eds = catalog
        .eds_cluster_config
        .as_ref()
        .expect("EDS clusters need eds_cluster_config");
    assert!(matches!(
        eds.eds_config
            .as_ref()
            .and_then(|c| c.config_source_specifier.as_ref()),
        Some(ConfigSourceSpecifier::Ads(_))
    ));

    // ACK: no new response, and the proxy shows as SYNCED.
    s.send(sotw_request(CLUSTER, &[], Some(&cds))).await;
    assert!(
        s.is_quiet(Duration::from_millis(400)).await,
        "a pure ACK was answered"
    );
    let cds_sync = m.syncz_type("frontend-1.default", "CDS").await;
    assert_eq!(cds_sync["status"], "SYNCED", "{cds_sync}");
    assert_eq!(
        cds_sync["acked_version"],
        serde_json::json!(cds.version_info)
    );
    assert_eq!(
        m.syncz_type("frontend-1.default", "LDS").await["status"],
        "NOT SENT"
    );

    // Listeners: outbound + inbound, each an HCM ending in the router.
    s.send(sotw_request(LISTENER, &[], None)).await;
    let lds = s.recv().await;
    let listeners: Vec<Listener> = decode_all(&lds);
    let names: Vec<&str> = listeners.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["inbound", "outbound"]);
    for l in &listeners {
        assert!(l.address.is_some(), "listener {} needs an address", l.name);
        assert_router_filter(&hcm_of(l));
    }
    match hcm_of(&listeners[1]).route_specifier {
        Some(RouteSpecifier::Rds(rds)) => assert_eq!(rds.route_config_name, "outbound"),
        other => panic!("outbound HCM should use RDS, got {other:?}"),
    }
    s.send(sotw_request(LISTENER, &[], Some(&lds))).await;

    // Routes: short names resolve in the proxy's namespace.
    s.send(sotw_request(ROUTE, &["outbound"], None)).await;
    let rds = s.recv().await;
    let routes: Vec<RouteConfiguration> = decode_all(&rds);
    assert_eq!(routes.len(), 1);
    let vhost = routes[0]
        .virtual_hosts
        .iter()
        .find(|v| v.name == CATALOG)
        .expect("catalog virtual host");
    for d in [
        "catalog:8080",
        "catalog.default:8080",
        "catalog.default.svc.cluster.local:8080",
    ] {
        assert!(
            vhost.domains.iter().any(|x| x == d),
            "{d} missing in {:?}",
            vhost.domains
        );
    }

    // Endpoints: one weighted locality with both catalog instances and their identity.
    s.send(sotw_request(ENDPOINT, &[CATALOG], None)).await;
    let eds = s.recv().await;
    let cla: Vec<ClusterLoadAssignment> = decode_all(&eds);
    assert_eq!(cla.len(), 1);
    assert_eq!(cla[0].cluster_name, CATALOG);
    let locality = &cla[0].endpoints[0];
    assert_eq!(
        locality.load_balancing_weight.as_ref().map(|w| w.value),
        Some(1),
        "gRPC drops localities without a weight"
    );
    assert_eq!(locality.lb_endpoints.len(), 2);
    let meta = mesh_xds::metadata::mesh_fields(locality.lb_endpoints[0].metadata.as_ref())
        .expect("mesh metadata");
    assert_eq!(
        mesh_xds::metadata::get_str(meta, "identity"),
        Some("spiffe://cluster.local/ns/default/sa/catalog")
    );
}

#[tokio::test]
async fn nack_shows_error_with_reason_and_a_change_is_pushed() {
    let m = mesh("nack", 1).await;
    let mut s = Sotw::open(&m.controller.xds_url()).await;
    let mut first = sotw_request(ENDPOINT, &[CATALOG], None);
    first.node = Some(node("frontend-1"));
    s.send(first).await;
    let eds = s.recv().await;
    let mut nack = sotw_request(ENDPOINT, &[CATALOG], None);
    nack.response_nonce = eds.nonce.clone();
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "endpoint 1 is unacceptable".into(),
        details: vec![],
    });
    s.send(nack).await;
    assert!(
        s.is_quiet(Duration::from_millis(300)).await,
        "a NACK was answered with the same config"
    );
    let eds_sync = m.syncz_type("frontend-1.default", "EDS").await;
    assert_eq!(eds_sync["status"], "ERROR", "{eds_sync}");
    assert_eq!(eds_sync["error"], "endpoint 1 is unacceptable");

    // A registry change produces a new push with the new endpoint.
    m.write(&catalog_yaml(&m.ips, 2));
    let update = s.recv().await;
    let cla: Vec<ClusterLoadAssignment> = decode_all(&update);
    assert_eq!(cla[0].endpoints[0].lb_endpoints.len(), 2);
    assert_ne!(update.version_info, eds.version_info);
    s.send(sotw_request(ENDPOINT, &[CATALOG], Some(&update)))
        .await;
    mesh_tests::eventually("EDS synced after ACK", Duration::from_secs(5), || async {
        (m.syncz_type("frontend-1.default", "EDS").await["status"] == "SYNCED").then_some(())
    })
    .await;
}

#[tokio::test]
async fn stale_nonces_are_ignored() {
    let m = mesh("stale", 1).await;
    let mut s = Sotw::open(&m.controller.xds_url()).await;
    let mut first = sotw_request(CLUSTER, &[], None);
    first.node = Some(node("frontend-1"));
    s.send(first).await;
    let cds = s.recv().await;
    let mut stale = sotw_request(CLUSTER, &[], Some(&cds));
    stale.response_nonce = "not-a-nonce-we-sent".into();
    s.send(stale).await;
    assert!(s.is_quiet(Duration::from_millis(300)).await);
    assert_eq!(
        m.syncz_type("frontend-1.default", "CDS").await["status"],
        "STALE"
    );
}

#[tokio::test]
async fn proxyless_grpc_client_gets_an_api_listener_by_name() {
    let m = mesh("grpc", 2).await;
    let mut s = Sotw::open(&m.controller.xds_url()).await;
    // gRPC sends a bare node (no mesh metadata) in the first request only.
    let mut first = sotw_request(LISTENER, &[CATALOG], None);
    first.node = Some(envoy_types::pb::envoy::config::core::v3::Node {
        id: "grpc-client-1".into(),
        ..Default::default()
    });
    s.send(first).await;
    let lds = s.recv().await;
    let listeners: Vec<Listener> = decode_all(&lds);
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0].name, CATALOG);
    let hcm = hcm_of(&listeners[0]);
    assert_router_filter(&hcm);
    let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
        panic!("API listener should use RDS")
    };
    s.send(sotw_request(LISTENER, &[CATALOG], Some(&lds))).await;
    s.send(sotw_request(ROUTE, &[&rds.route_config_name], None))
        .await;
    let routes: Vec<RouteConfiguration> = decode_all(&s.recv().await);
    assert!(
        routes[0].virtual_hosts[0]
            .domains
            .iter()
            .any(|d| d == CATALOG)
    );
    s.send(sotw_request(CLUSTER, &[CATALOG], None)).await;
    let clusters: Vec<Cluster> = decode_all(&s.recv().await);
    assert_eq!(clusters.len(), 1, "named CDS returns only what was asked");
    s.send(sotw_request(ENDPOINT, &[CATALOG], None)).await;
    let cla: Vec<ClusterLoadAssignment> = decode_all(&s.recv().await);
    assert_eq!(cla[0].endpoints[0].lb_endpoints.len(), 2);
}

#[tokio::test]
async fn first_request_without_node_is_refused() {
    let m = mesh("nonode", 1).await;
    let mut s = Sotw::open(&m.controller.xds_url()).await;
    s.send(sotw_request(CLUSTER, &[], None)).await;
    let status = s.recv_error().await.expect("stream refused");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(status.message().contains("node"), "{status}");
}

fn delta_request(type_url: &str, subscribe: &[&str]) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn delta_sends_changes_and_removals_only() {
    let m = mesh("delta", 2).await;
    let mut d = Delta::open(&m.controller.xds_url()).await;
    let mut first = delta_request(CLUSTER, &["*"]);
    first.node = Some(node("frontend-1"));
    d.send(first).await;
    let cds = d.recv().await;
    let names: Vec<&str> = cds.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "PassthroughCluster",
            CATALOG,
            "frontend.default.svc.cluster.local:8080",
            "inbound|8080"
        ]
    );
    let versions: HashMap<String, String> = cds
        .resources
        .iter()
        .map(|r| (r.name.clone(), r.version.clone()))
        .collect();
    d.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        response_nonce: cds.nonce.clone(),
        ..Default::default()
    })
    .await;
    assert!(
        d.is_quiet(Duration::from_millis(300)).await,
        "a pure ACK was answered"
    );

    // EDS by name; then removing the catalog service removes its cluster and EDS.
    d.send(delta_request(ENDPOINT, &[CATALOG])).await;
    let eds = d.recv().await;
    assert_eq!(eds.resources.len(), 1);
    d.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        response_nonce: eds.nonce.clone(),
        ..Default::default()
    })
    .await;
    let w = [("frontend-1", "frontend", m.ips[0], 8080)];
    m.write(&mesh_yaml(&[("frontend", 8080)], &w));
    let mut removed = Vec::new();
    for _ in 0..2 {
        let r = d.recv().await;
        assert!(
            r.resources.is_empty(),
            "only removals expected: {:?}",
            r.resources
        );
        removed.push((r.type_url.clone(), r.removed_resources.clone()));
        d.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await;
    }
    removed.sort();
    assert_eq!(
        removed,
        [
            (CLUSTER.to_string(), vec![CATALOG.to_string()]),
            (ENDPOINT.to_string(), vec![CATALOG.to_string()]),
        ]
    );

    // Reconnecting with what it has: unchanged resources are not sent again.
    m.write(&catalog_yaml(&m.ips, 2));
    let mut d2 = Delta::open(&m.controller.xds_url()).await;
    let mut again = delta_request(CLUSTER, &["*"]);
    again.node = Some(node("frontend-1"));
    again.initial_resource_versions = versions;
    // Wait for the controller to pick up the file again before reconnecting.
    mesh_tests::eventually(
        "catalog back in registry",
        Duration::from_secs(5),
        || async {
            let reg = m.controller.admin_json("/debug/registry").await;
            (reg["model"]["services"].as_array().map(|s| s.len()) == Some(2)).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    d2.send(again).await;
    let resumed = d2.recv().await;
    assert!(
        resumed.resources.is_empty() && resumed.removed_resources.is_empty(),
        "a proxy that already has every cluster is sent nothing new: {:?}",
        resumed
            .resources
            .iter()
            .map(|r| &r.name)
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn delta_unsubscribe_stops_updates() {
    let m = mesh("unsub", 1).await;
    let mut d = Delta::open(&m.controller.xds_url()).await;
    let mut first = delta_request(ENDPOINT, &[CATALOG]);
    first.node = Some(node("frontend-1"));
    d.send(first).await;
    let eds = d.recv().await;
    assert_eq!(eds.resources.len(), 1);
    d.send(DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        response_nonce: eds.nonce.clone(),
        resource_names_unsubscribe: vec![CATALOG.into()],
        ..Default::default()
    })
    .await;
    m.write(&catalog_yaml(&m.ips, 2));
    assert!(
        d.is_quiet(Duration::from_millis(800)).await,
        "an unsubscribed resource was pushed"
    );
}

#[tokio::test]
async fn delta_reports_missing_names_and_resends_on_resubscribe() {
    let m = mesh("missing", 1).await;
    let mut d = Delta::open(&m.controller.xds_url()).await;
    let mut first = delta_request(ENDPOINT, &[CATALOG, "nosuch.default.svc.cluster.local:80"]);
    first.node = Some(node("frontend-1"));
    d.send(first).await;
    let eds = d.recv().await;
    assert_eq!(eds.resources.len(), 1);
    assert_eq!(
        eds.removed_resources,
        ["nosuch.default.svc.cluster.local:80"],
        "a missing name is reported"
    );
    let ack = |nonce: &str| DeltaDiscoveryRequest {
        type_url: ENDPOINT.into(),
        response_nonce: nonce.into(),
        ..Default::default()
    };
    d.send(ack(&eds.nonce)).await;
    assert!(
        d.is_quiet(Duration::from_millis(300)).await,
        "the report is sent once"
    );
    // Subscribing again to a name the proxy has must send it again.
    let mut again = ack(&eds.nonce);
    again.resource_names_subscribe = vec![CATALOG.into()];
    d.send(again).await;
    let resent = d.recv().await;
    assert_eq!(resent.resources.len(), 1);
    assert_eq!(resent.resources[0].name, CATALOG);
}

#[tokio::test]
async fn delta_unsubscribing_under_wildcard_is_answered() {
    let m = mesh("rewild", 1).await;
    let mut d = Delta::open(&m.controller.xds_url()).await;
    let mut first = delta_request(CLUSTER, &["*", CATALOG]);
    first.node = Some(node("frontend-1"));
    d.send(first).await;
    let cds = d.recv().await;
    d.send(DeltaDiscoveryRequest {
        type_url: CLUSTER.into(),
        response_nonce: cds.nonce.clone(),
        resource_names_unsubscribe: vec![CATALOG.into()],
        ..Default::default()
    })
    .await;
    let answer = d.recv().await;
    let names: Vec<&str> = answer.resources.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(
        names,
        [CATALOG],
        "the wildcard still covers it, so it is sent again"
    );
}

#[tokio::test]
async fn sotw_empty_list_after_names_is_not_a_wildcard() {
    let m = mesh("unnamed", 1).await;
    let mut s = Sotw::open(&m.controller.xds_url()).await;
    let mut first = sotw_request(CLUSTER, &[CATALOG], None);
    first.node = Some(node("grpc-like"));
    s.send(first).await;
    let named = s.recv().await;
    assert_eq!(named.resources.len(), 1);
    s.send(sotw_request(CLUSTER, &[], Some(&named))).await;
    let cleared = s.recv().await;
    assert!(
        cleared.resources.is_empty(),
        "clearing the names unsubscribes from all"
    );
}

#[tokio::test]
async fn a_changed_cluster_is_followed_by_its_endpoints_even_if_unchanged() {
    let m = mesh("warming", 1).await;
    let mut s = Sotw::open(&m.controller.xds_url()).await;
    let mut first = sotw_request(CLUSTER, &[], None);
    first.node = Some(node("frontend-1"));
    s.send(first).await;
    let cds = s.recv().await;
    s.send(sotw_request(CLUSTER, &[], Some(&cds))).await;
    s.send(sotw_request(ENDPOINT, &[CATALOG], None)).await;
    let eds = s.recv().await;
    s.send(sotw_request(ENDPOINT, &[CATALOG], Some(&eds))).await;
    // Switch catalog to gRPC: the cluster changes, its endpoints do not.
    let yaml = catalog_yaml(&m.ips, 1).replace(
        "metadata: {name: catalog, namespace: default}\nspec: {selector: {app: catalog}, ports: [{name: http, port: 8080}]}",
        "metadata: {name: catalog, namespace: default}\nspec: {selector: {app: catalog}, ports: [{name: http, port: 8080, appProtocol: grpc}]}",
    );
    assert_ne!(
        yaml,
        catalog_yaml(&m.ips, 1),
        "the test edits the catalog port"
    );
    m.write(&yaml);
    let cds2 = s.recv().await;
    assert_eq!(cds2.type_url, CLUSTER);
    let eds2 = s.recv().await;
    assert_eq!(
        eds2.type_url, ENDPOINT,
        "Envoy keeps a changed cluster warming until EDS arrives"
    );
    assert_eq!(eds2.version_info, eds.version_info, "same endpoints");
}
