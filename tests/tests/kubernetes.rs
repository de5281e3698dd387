//! `mesh-controller --registry kubernetes` against the test API server: the real
//! binary, a kubeconfig, fixtures shaped as a real cluster returns them, and a raw
//! ADS client on the controller's plaintext xDS port standing in for a proxy.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::HealthStatus;
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, lb_endpoint};
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_tests::TestDir;
use mesh_tests::kube_api::KubeApi;
use mesh_tests::process::Controller;
use mesh_tests::xds::Sotw;
use mesh_xds::ProxyNode;
use mesh_xds::types::ENDPOINT;
use serde_json::json;

const REVIEWS: &str = "reviews.demo.svc.cluster.local:9080";
const BILLING: &str = "billing.legacy.svc.cluster.local:8080";
/// The bound for a cluster change to reach a connected proxy.
const PROMPTLY: Duration = Duration::from_secs(1);

struct Mesh {
    api: KubeApi,
    controller: Controller,
    xds: SocketAddr,
    admin: SocketAddr,
    _dir: TestDir,
}

impl Mesh {
    /// The fixtures (`demo` labelled, `legacy` not) and a controller watching them.
    async fn start(name: &str) -> Mesh {
        let api = KubeApi::start().await;
        api.load_fixtures(&KubeApi::fixtures_dir());
        let dir = TestDir::new(name);
        let kubeconfig = dir.0.join("kubeconfig");
        api.write_kubeconfig(&kubeconfig).unwrap();
        let controller = Controller::start_kubernetes(
            &kubeconfig,
            &dir.0,
            &["--ca-dir", &dir.0.join("ca").display().to_string()],
        )
        .await;
        let (xds, admin) = (controller.xds, controller.admin);
        Mesh {
            api,
            controller,
            xds,
            admin,
            _dir: dir,
        }
    }

    /// A SotW stream of a proxy in `demo` subscribed to `names` over EDS.
    async fn eds(&self, names: &[&str]) -> Eds {
        let stream = Sotw::open(&format!("http://{}", self.xds)).await;
        stream
            .send(DiscoveryRequest {
                node: Some(demo_node()),
                type_url: ENDPOINT.into(),
                resource_names: names.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await;
        Eds {
            stream,
            names: names.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// The node of a proxy in `demo` (no workload: the namespace's view).
fn demo_node() -> envoy_types::pb::envoy::config::core::v3::Node {
    ProxyNode {
        id: "productpage-1.demo".into(),
        workload: None,
        namespace: "demo".into(),
        admin_address: None,
    }
    .to_node()
}

/// Endpoints of one load assignment: (address, DRAINING?).
type Endpoints = Vec<(String, bool)>;

struct Eds {
    stream: Sotw,
    names: Vec<String>,
}

impl Eds {
    /// The next push, ACKed, as `cluster -> endpoints`.
    async fn next(&mut self) -> std::collections::BTreeMap<String, Endpoints> {
        let r: DiscoveryResponse = self.stream.recv().await;
        self.stream
            .send(DiscoveryRequest {
                type_url: ENDPOINT.into(),
                resource_names: self.names.clone(),
                version_info: r.version_info.clone(),
                response_nonce: r.nonce.clone(),
                ..Default::default()
            })
            .await;
        r.resources
            .iter()
            .map(|any| {
                let cla: ClusterLoadAssignment = mesh_xds::any::unpack(any).unwrap();
                let eps = cla
                    .endpoints
                    .iter()
                    .flat_map(|l| &l.lb_endpoints)
                    .map(|e| {
                        let Some(lb_endpoint::HostIdentifier::Endpoint(ep)) = &e.host_identifier
                        else {
                            panic!("endpoint without address")
                        };
                        let Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)) =
                            ep.address.as_ref().and_then(|a| a.address.as_ref())
                        else {
                            panic!("not a socket address")
                        };
                        let port = match sa.port_specifier {
                            Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p,
                            _ => 0,
                        };
                        (
                            format!("{}:{port}", sa.address),
                            e.health_status == HealthStatus::Draining as i32,
                        )
                    })
                    .collect();
                (cla.cluster_name, eps)
            })
            .collect()
    }

    /// Pushes until one satisfies `want`; returns it and how long it took.
    async fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        want: impl Fn(&std::collections::BTreeMap<String, Endpoints>) -> bool,
    ) -> (std::collections::BTreeMap<String, Endpoints>, Duration) {
        let start = Instant::now();
        loop {
            let left = timeout.saturating_sub(start.elapsed());
            let got = tokio::time::timeout(left, self.next())
                .await
                .unwrap_or_else(|_| panic!("no push with {what} within {timeout:?}"));
            if want(&got) {
                return (got, start.elapsed());
            }
        }
    }
}

fn eps(list: &[(&str, bool)]) -> Endpoints {
    list.iter().map(|(a, d)| (a.to_string(), *d)).collect()
}

fn pod(name: &str, ip: &str, sa: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "labels": {"app": "reviews"}},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "reviews", "image": "reviews:1",
                 "ports": [{"containerPort": 9080, "name": "http", "protocol": "TCP"}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
    })
}

fn slice_endpoint(
    ip: &str,
    pod: &str,
    ready: bool,
    serving: bool,
    terminating: bool,
) -> serde_json::Value {
    json!({
        "addresses": [ip],
        "conditions": {"ready": ready, "serving": serving, "terminating": terminating},
        "targetRef": {"kind": "Pod", "name": pod, "namespace": "demo"}
    })
}

/// Replaces the endpoints of the fixture slice `demo/reviews-8vnqz`.
fn set_reviews_endpoints(api: &KubeApi, endpoints: Vec<serde_json::Value>) {
    api.patch(
        "discovery.k8s.io/v1",
        "EndpointSlice",
        Some("demo"),
        "reviews-8vnqz",
        json!({"endpoints": endpoints}),
    );
}

fn fixture_endpoints() -> Vec<serde_json::Value> {
    vec![
        slice_endpoint(
            "10.244.1.12",
            "reviews-v1-5c7b9f8d6-x2kqp",
            true,
            true,
            false,
        ),
        slice_endpoint(
            "10.244.2.17",
            "reviews-v2-7d9c4b6f5-m8wzt",
            false,
            true,
            true,
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_labelled_namespaces_and_labelling_at_runtime() {
    let m = Mesh::start("labels").await;
    let mut eds = m.eds(&[REVIEWS, BILLING]).await;
    let first = eds.next().await;
    assert_eq!(
        first.keys().collect::<Vec<_>>(),
        [REVIEWS],
        "legacy is not labelled: its service is not in the mesh"
    );
    assert_eq!(
        first[REVIEWS],
        eps(&[("10.244.1.12:9080", false), ("10.244.2.17:9080", true)]),
        "ready endpoint active, terminating-but-serving endpoint draining"
    );

    let t = Instant::now();
    m.api.patch(
        "v1",
        "Namespace",
        None,
        "legacy",
        json!({"metadata": {"labels": {"mesh.io/inject": "enabled"}}}),
    );
    let (got, _) = eds
        .until("billing", PROMPTLY, |g| g.contains_key(BILLING))
        .await;
    assert_eq!(got[BILLING].len(), 1, "{got:?}");
    eprintln!("labelling took {:?}", t.elapsed());

    m.api.patch(
        "v1",
        "Namespace",
        None,
        "legacy",
        json!({"metadata": {"labels": {"mesh.io/inject": null}}}),
    );
    eds.until("billing gone", PROMPTLY, |g| !g.contains_key(BILLING))
        .await;
    let registry: serde_json::Value = serde_json::from_str(
        &mesh_tests::http::get(&format!("http://{}/debug/registry", m.admin))
            .await
            .unwrap()
            .1,
    )
    .unwrap();
    assert_eq!(registry["source"], "kubernetes");
    assert!(registry["last_error"].is_null(), "{registry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_and_endpoint_slice_changes_reach_a_proxy_promptly() {
    let m = Mesh::start("changes").await;
    let mut eds = m
        .eds(&[REVIEWS, "ratings.demo.svc.cluster.local:9080"])
        .await;
    eds.next().await;

    // A scale-up: new pod, then the EndpointSlice controller lists it ready.
    m.api.create(pod("reviews-v3-1", "10.244.3.5", "reviews"));
    let mut endpoints = fixture_endpoints();
    endpoints.push(slice_endpoint(
        "10.244.3.5",
        "reviews-v3-1",
        true,
        true,
        false,
    ));
    set_reviews_endpoints(&m.api, endpoints);
    let (got, took) = eds
        .until("the new endpoint", PROMPTLY, |g| {
            g.get(REVIEWS).is_some_and(|e| e.len() == 3)
        })
        .await;
    assert!(got[REVIEWS].contains(&("10.244.3.5:9080".into(), false)));
    eprintln!("EndpointSlice change reached the proxy in {took:?}");

    // The draining endpoint stops serving: it leaves.
    let mut endpoints = fixture_endpoints();
    endpoints[1] = slice_endpoint(
        "10.244.2.17",
        "reviews-v2-7d9c4b6f5-m8wzt",
        false,
        false,
        true,
    );
    endpoints.push(slice_endpoint(
        "10.244.3.5",
        "reviews-v3-1",
        true,
        true,
        false,
    ));
    set_reviews_endpoints(&m.api, endpoints);
    let (got, _) = eds
        .until("the drained endpoint gone", PROMPTLY, |g| {
            g.get(REVIEWS)
                .is_some_and(|e| e.iter().all(|(a, _)| a != "10.244.2.17:9080"))
        })
        .await;
    assert_eq!(
        got[REVIEWS],
        eps(&[("10.244.1.12:9080", false), ("10.244.3.5:9080", false)])
    );

    // A new Service with its slice.
    m.api.create(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "ratings", "namespace": "demo"},
        "spec": {"clusterIP": "10.96.50.50", "selector": {"app": "reviews"},
                 "ports": [{"name": "http", "port": 9080, "protocol": "TCP", "targetPort": 9080}]}
    }));
    m.api.create(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
        "metadata": {"name": "ratings-abcde", "namespace": "demo",
                     "labels": {"kubernetes.io/service-name": "ratings"}},
        "ports": [{"name": "http", "port": 9080, "protocol": "TCP"}],
        "endpoints": [slice_endpoint("10.244.3.5", "reviews-v3-1", true, true, false)]
    }));
    let (_, took) = eds
        .until("the new service", PROMPTLY, |g| {
            g.contains_key("ratings.demo.svc.cluster.local:9080")
        })
        .await;
    eprintln!("Service creation reached the proxy in {took:?}");

    // Deleting the Service takes its endpoints away.
    m.api.delete("v1", "Service", Some("demo"), "ratings");
    eds.until("the deleted service gone", PROMPTLY, |g| {
        !g.contains_key("ratings.demo.svc.cluster.local:9080")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_410_relist_neither_loses_nor_duplicates_endpoints() {
    let m = Mesh::start("relist").await;
    m.api.wait_for_watches(5, Duration::from_secs(5)).await;
    let mut eds = m.eds(&[REVIEWS]).await;
    eds.next().await;

    // A change just before the compaction, one during the relist.
    m.api.create(pod("reviews-v3-1", "10.244.3.5", "reviews"));
    m.api.create(pod("reviews-v3-2", "10.244.3.6", "reviews"));
    let mut endpoints = fixture_endpoints();
    endpoints.push(slice_endpoint(
        "10.244.3.5",
        "reviews-v3-1",
        true,
        true,
        false,
    ));
    set_reviews_endpoints(&m.api, endpoints.clone());
    m.api.compact();
    endpoints.push(slice_endpoint(
        "10.244.3.6",
        "reviews-v3-2",
        true,
        true,
        false,
    ));
    set_reviews_endpoints(&m.api, endpoints);

    let want = eps(&[
        ("10.244.1.12:9080", false),
        ("10.244.2.17:9080", true),
        ("10.244.3.5:9080", false),
        ("10.244.3.6:9080", false),
    ]);
    let (got, _) = eds
        .until("all four endpoints", Duration::from_secs(5), |g| {
            g.get(REVIEWS).is_some_and(|e| e.len() >= 4)
        })
        .await;
    assert_eq!(
        got[REVIEWS], want,
        "exactly the cluster's endpoints, once each"
    );

    // The watchers really relisted (a LIST without watch after the compaction)
    // and are watching again.
    let relists = m
        .api
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/endpointslices") && !r.is_watch())
        .count();
    assert!(
        relists >= 2,
        "expected a relist of EndpointSlices, saw {relists} lists"
    );
    m.api.wait_for_watches(5, Duration::from_secs(5)).await;

    // And later changes still arrive.
    set_reviews_endpoints(&m.api, fixture_endpoints());
    let (got, _) = eds
        .until("back to two", PROMPTLY, |g| {
            g.get(REVIEWS).is_some_and(|e| e.len() == 2)
        })
        .await;
    assert_eq!(
        got[REVIEWS],
        eps(&[("10.244.1.12:9080", false), ("10.244.2.17:9080", true)])
    );
    assert!(
        m.controller.proc.log_text().contains("410 Gone"),
        "the relist is logged"
    );
}

/// `mesh.identity.v1.Identity/Certify` messages, declared here because the tests
/// crate does not depend on mesh-proto.
mod certify_pb {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CertifyRequest {
        #[prost(string, tag = "1")]
        pub token: String,
        #[prost(bytes = "vec", tag = "2")]
        pub csr_der: Vec<u8>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CertifyResponse {
        #[prost(bytes = "vec", repeated, tag = "1")]
        pub cert_chain_der: Vec<Vec<u8>>,
        #[prost(int64, tag = "2")]
        pub valid_until: i64,
    }
}

/// Calls Certify on the plaintext port; `Ok(SPIFFE ID)` or `Err(grpc-status)`.
async fn certify(xds: SocketAddr, token: &str) -> Result<String, String> {
    let key = mesh_identity::csr::WorkloadKey::generate().unwrap();
    let tcp = tokio::net::TcpStream::connect(xds).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let msg = prost::Message::encode_to_vec(&certify_pb::CertifyRequest {
        token: token.to_string(),
        csr_der: key.csr_der().unwrap(),
    });
    let mut framed = vec![0];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    let req = http::Request::post(format!("http://{xds}/mesh.identity.v1.Identity/Certify"))
        .header(http::header::CONTENT_TYPE, "application/grpc")
        .header(http::header::TE, "trailers")
        .body(Full::new(Bytes::from(framed)))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let status = collected
        .trailers()
        .and_then(|t| t.get("grpc-status"))
        .or_else(|| parts.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let data = collected.to_bytes();
    conn.abort();
    if status != "0" {
        return Err(status);
    }
    let reply = <certify_pb::CertifyResponse as prost::Message>::decode(&data[5..]).unwrap();
    Ok(mesh_identity::svid::identity_of(&reply.cert_chain_der[0])
        .unwrap()
        .to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_tokens_are_checked_with_token_review() {
    let m = Mesh::start("tokens").await;
    let good = m.api.service_account_token("demo", "reviews", &["mesh"]);
    assert_eq!(
        certify(m.xds, &good).await,
        Ok("spiffe://cluster.local/ns/demo/sa/reviews".to_string())
    );
    let wrong_audience =
        m.api
            .service_account_token("demo", "reviews", &[mesh_tests::kube_api::DEFAULT_AUDIENCE]);
    // grpc-status 16: UNAUTHENTICATED.
    assert_eq!(certify(m.xds, &wrong_audience).await, Err("16".into()));
    assert_eq!(
        certify(m.xds, "eyJhbGciOiJSUzI1NiJ9.forged.sig").await,
        Err("16".into())
    );
    m.api.token_review_revoke(&good);
    assert_eq!(certify(m.xds, &good).await, Err("16".into()), "revoked");
    let reviews = m
        .api
        .requests()
        .iter()
        .filter(|r| r.path == "/apis/authentication.k8s.io/v1/tokenreviews")
        .count();
    assert_eq!(reviews, 4);

    // Join tokens still work beside Kubernetes tokens, without a TokenReview.
    let (status, text) = mesh_tests::http::post_json(
        &format!("http://{}/tokens", m.admin),
        &json!({"namespace": "demo", "service_account": "ops"}),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let join: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(
        certify(m.xds, join["token"].as_str().unwrap()).await,
        Ok("spiffe://cluster.local/ns/demo/sa/ops".to_string())
    );
    let log = m.controller.proc.log_text();
    assert!(log.contains("Kubernetes token rejected"), "{log}");
}

/// The `outbound` routes a proxy in `demo` gets: the names of the routes in the
/// virtual host of `cluster`, and whether the last one answers 404.
async fn routes_of(m: &Mesh, cluster: &str) -> (Vec<String>, bool) {
    use envoy_types::pb::envoy::config::route::v3::{RouteConfiguration, route::Action};
    let mut stream = Sotw::open(&format!("http://{}", m.xds)).await;
    stream
        .send(DiscoveryRequest {
            node: Some(demo_node()),
            type_url: mesh_xds::types::ROUTE.into(),
            resource_names: vec!["outbound".into()],
            ..Default::default()
        })
        .await;
    let resp: DiscoveryResponse = stream.recv().await;
    let config: RouteConfiguration =
        mesh_xds::any::unpack(&resp.resources[0]).expect("a route configuration");
    let vh = config
        .virtual_hosts
        .iter()
        .find(|v| v.name == cluster)
        .expect("the service's virtual host");
    let last_404 = vh
        .routes
        .last()
        .is_some_and(|r| matches!(&r.action, Some(Action::DirectResponse(d)) if d.status == 404));
    (vh.routes.iter().map(|r| r.name.clone()).collect(), last_404)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_routes_from_the_cluster_reach_proxies_and_bad_ones_are_reported() {
    let m = Mesh::start("httproute").await;
    let (names, last_404) = routes_of(&m, REVIEWS).await;
    assert!(!last_404 && names == [""], "no route yet: {names:?}");
    m.api.create(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "reviews-canary", "namespace": "demo"},
        "spec": {
            "parentRefs": [{"group": "", "kind": "Service", "name": "reviews", "port": 9080}],
            "rules": [{
                "matches": [{"headers": [{"name": "x-canary", "value": "yes"}]}],
                "backendRefs": [{"name": "reviews", "port": 9080}]
            }]
        }
    }));
    let routes = mesh_tests::eventually("the route in RDS", Duration::from_secs(5), || async {
        let (names, last_404) = routes_of(&m, REVIEWS).await;
        (last_404 && names.contains(&"demo/reviews-canary".to_string())).then_some(names)
    })
    .await;
    assert_eq!(routes.len(), 2, "the header rule and the 404: {routes:?}");
    m.api.create(json!({
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "to-a-gateway", "namespace": "demo"},
        "spec": {"parentRefs": [{"name": "some-gateway"}]}
    }));
    let error =
        mesh_tests::eventually("the bad route reported", Duration::from_secs(5), || async {
            let (_, body) =
                mesh_tests::http::get(&format!("http://{}/debug/registry", m.admin)).await?;
            let registry: serde_json::Value = serde_json::from_str(&body).ok()?;
            registry["last_error"].as_str().map(str::to_string)
        })
        .await;
    assert!(
        error.contains("HTTPRoute/demo/to-a-gateway") && error.contains("kind Service"),
        "{error}"
    );
    let (names, _) = routes_of(&m, REVIEWS).await;
    assert_eq!(names, routes, "the good route still applies");
}
