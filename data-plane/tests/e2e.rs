//! Two real sidecars (client and server) fed by in-process ADS servers, an echo app
//! behind the server sidecar, and plain TCP/HTTP clients in front.

mod fake_ads;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::cluster::v3::cluster::{ClusterDiscoveryType, DiscoveryType};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use fake_ads::FakeAds;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_proxy::{ProxyArgs, XdsProtocol};
use mesh_xds::ResourceType;
use mesh_xds::any::pack;
use mesh_xds::{metadata, names, resources};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CAT: &str = "catalog.default.svc.cluster.local:8080";
const GRPC: &str = "grpc.default.svc.cluster.local:9000";

/// An app that echoes what it received.
async fn echo_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                    let mut text = format!("{} {} {:?}\n", req.method(), req.uri(), req.version());
                    for (k, v) in req.headers() {
                        text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
                    }
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from(
                        text,
                    ))))
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

fn args(workload: &str, xds: SocketAddr, protocol: XdsProtocol) -> ProxyArgs {
    let mut a = ProxyArgs::new(workload, "default");
    a.xds_addr = format!("http://{xds}");
    a.xds_protocol = protocol;
    a.outbound_addr = Some("127.0.0.1:0".parse().unwrap());
    a.inbound_addr = Some("127.0.0.1:0".parse().unwrap());
    a.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    a.drain_seconds = 1;
    a
}

fn named<M: prost::Message + prost::Name>(name: &str, m: &M) -> (String, Any) {
    (name.to_string(), pack(m))
}

fn cla(cluster: &str, app: SocketAddr, sidecar_port: Option<u16>) -> ClusterLoadAssignment {
    let mut fields = vec![
        (resources::META_WORKLOAD, metadata::string("catalog-1")),
        (resources::META_NAMESPACE, metadata::string("default")),
        (
            resources::META_IDENTITY,
            metadata::string("spiffe://cluster.local/ns/default/sa/catalog"),
        ),
    ];
    if let Some(p) = sidecar_port {
        fields.push((resources::META_SIDECAR_PORT, metadata::number(f64::from(p))));
    }
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: vec![LbEndpoint {
                host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                    address: Some(resources::socket_address(app)),
                    ..Default::default()
                })),
                metadata: Some(metadata::mesh_metadata(fields)),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn outbound_routes() -> RouteConfiguration {
    RouteConfiguration {
        name: names::OUTBOUND.into(),
        virtual_hosts: vec![
            resources::service_virtual_host(
                CAT,
                names::service_domains(
                    "catalog",
                    "default",
                    "cluster.local",
                    8080,
                    "default",
                    None,
                ),
            ),
            resources::service_virtual_host(
                GRPC,
                names::service_domains("grpc", "default", "cluster.local", 9000, "default", None),
            ),
        ],
        ..Default::default()
    }
}

/// The inbound listener as a controller without mutual TLS would send it: one
/// plaintext chain (no transport socket) for `port`.
fn plaintext_inbound(port: u16) -> envoy_types::pb::envoy::config::listener::v3::Listener {
    let mut l = resources::inbound_listener(&[port], mesh_model::MtlsMode::Permissive, &[]);
    l.filter_chains.retain(|c| c.transport_socket.is_none());
    l
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header("host", addr.to_string())
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

async fn h2_get(addr: SocketAddr, uri: &str) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(uri)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends a raw HTTP/1.1 request and returns (status, whole response text).
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, text)
}

async fn wait_ready(admin: SocketAddr) {
    for _ in 0..200 {
        if get(admin, "/ready").await.0 == 200 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "proxy at {admin} never became ready: {:?}",
        get(admin, "/ready").await
    );
}

async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn full_path(protocol: XdsProtocol) {
    let app = echo_app().await;

    // Server side: inbound listener for the app port, static inbound cluster.
    let server_ads = FakeAds::new();
    let (server_xds, _stop_server_xds) = server_ads.serve("127.0.0.1:0".parse().unwrap()).await;
    server_ads.set(
        ResourceType::Listener,
        vec![
            named("outbound", &resources::outbound_listener()),
            named("inbound", &plaintext_inbound(app.port())),
        ],
    );
    server_ads.set(
        ResourceType::Cluster,
        vec![named(
            &names::inbound_cluster(app.port()),
            &resources::inbound_cluster(app, false),
        )],
    );
    server_ads.set(
        ResourceType::Route,
        vec![named("outbound", &outbound_routes())],
    );
    let server = mesh_proxy::start(args("catalog-1", server_xds, protocol))
        .await
        .unwrap();
    wait_ready(server.admin_addr).await;

    // Client side: the catalog service, reached through the server sidecar, and
    // an HTTP/2 service without a sidecar.
    let client_ads = FakeAds::new();
    let (client_xds, stop_client_xds) = client_ads.serve("127.0.0.1:0".parse().unwrap()).await;
    client_ads.set(
        ResourceType::Listener,
        vec![named("outbound", &resources::outbound_listener())],
    );
    client_ads.set(
        ResourceType::Cluster,
        vec![
            named(CAT, &resources::service_cluster(CAT, false)),
            named(GRPC, &resources::service_cluster(GRPC, true)),
        ],
    );
    client_ads.set(
        ResourceType::Route,
        vec![named("outbound", &outbound_routes())],
    );
    client_ads.set(
        ResourceType::Endpoint,
        vec![
            named(CAT, &cla(CAT, app, Some(server.inbound_addr.port()))),
            named(GRPC, &cla(GRPC, app, None)),
        ],
    );
    let client = mesh_proxy::start(args("web-1", client_xds, protocol))
        .await
        .unwrap();
    wait_ready(client.admin_addr).await;
    let out = client.outbound_addr;

    // Routed by Host, through both sidecars.
    let (status, body) = raw(
        out,
        "GET /hello?x=1 HTTP/1.1\r\nHost: catalog:8080\r\nConnection: close\r\nX-Custom: kept\r\nMesh-Source-Workload: spoofed\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("GET /hello?x=1"), "{body}");
    assert!(body.contains("host: catalog:8080"), "{body}");
    assert!(body.contains("x-custom: kept"), "{body}");
    assert!(
        !body.contains("mesh-"),
        "hop headers never reach the app: {body}"
    );

    // Explicit proxy form.
    let (status, body) = raw(
        out,
        "GET http://catalog.default:8080/abs HTTP/1.1\r\nHost: catalog.default:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("GET /abs HTTP/1.1"),
        "origin form upstream: {body}"
    );

    // HTTP/2 prior knowledge from the app, through both sidecars.
    let (status, body) = h2_get(out, "http://catalog:8080/h2").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("host: catalog:8080"), "{body}");
    // An HTTP/2 cluster without a sidecar: h2c straight to the app, authority kept.
    let (status, body) = h2_get(out, "http://grpc.default:9000/direct").await;
    assert_eq!(
        status,
        200,
        "{body} {}",
        get(client.admin_addr, "/config_dump").await.1
    );
    assert!(
        body.starts_with("GET http://grpc.default:9000/direct HTTP/2.0"),
        "{body}"
    );

    // Unknown host.
    let (status, body) = raw(
        out,
        "GET / HTTP/1.1\r\nHost: foo:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503);
    assert!(
        body.contains("mesh-proxy: no service matches host \"foo:8080\" (namespace default)"),
        "{body}"
    );

    // Metrics on both sides.
    let (_, metrics) = get(client.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("mesh_requests_total{reporter=\"source\",source_workload=\"web-1\",source_namespace=\"default\",source_principal=\"unknown\",destination_service=\"catalog.default.svc.cluster.local\",destination_workload=\"catalog-1\",destination_namespace=\"default\",destination_principal=\"unknown\",response_code=\"200\",grpc_status=\"\",request_protocol=\"http\",connection_security_policy=\"none\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("mesh_proxy_xds_connected 1"), "{metrics}");
    assert!(metrics.contains("mesh_tcp_connections_opened_total{reporter=\"source\","));
    let (_, metrics) = get(server.admin_addr, "/metrics").await;
    assert!(
        metrics.contains("mesh_requests_total{reporter=\"destination\",source_workload=\"web-1\",source_namespace=\"default\",source_principal=\"unknown\",destination_service=\"catalog.default.svc.cluster.local\",destination_workload=\"catalog-1\",destination_namespace=\"default\",destination_principal=\"unknown\",response_code=\"200\""),
        "{metrics}"
    );

    // Inbound directly: one port, so no header needed; a wrong port is a 404.
    let (status, _) = raw(
        server.inbound_addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let (status, body) = raw(
        server.inbound_addr,
        "GET / HTTP/1.1\r\nHost: x\r\nmesh-target-port: 1\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("does not serve port 1"), "{body}");

    // Dev mode (no token) cannot do mutual TLS: a STRICT listener still serves
    // plaintext, with its policies applied to a caller without a principal.
    server_ads.set(
        ResourceType::Listener,
        vec![
            named("outbound", &resources::outbound_listener()),
            named(
                "inbound",
                &resources::inbound_listener(&[app.port()], mesh_model::MtlsMode::Strict, &[]),
            ),
        ],
    );
    eventually("STRICT listener in dev mode", async || {
        let cfg = server.state().config.load();
        cfg.inbound.as_ref().is_some_and(|t| !t.accepts_plaintext)
    })
    .await;
    let (status, body) = raw(
        server.inbound_addr,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Config dump.
    let (status, dump) = get(client.admin_addr, "/config_dump").await;
    assert_eq!(status, 200);
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(dump["clusters"]["resources"][0]["name"], CAT);
    assert_eq!(
        dump["endpoints"]["resources"][0]["endpoints"][0]["workload"],
        "catalog-1"
    );
    assert!(
        dump["routes"]["resources"][0]["virtual_hosts"][0]["domains"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d == "catalog:8080")
    );

    // Node only in the first request; LDS/CDS wildcard; RDS/EDS by name.
    let seen = client_ads.seen();
    assert!(seen[0].has_node);
    assert!(seen[1..].iter().all(|s| !s.has_node));
    assert!(
        seen.iter()
            .any(|s| s.type_url == mesh_xds::types::ENDPOINT && s.names == [CAT, GRPC])
    );
    assert!(
        seen.iter()
            .any(|s| s.type_url == mesh_xds::types::ROUTE && s.names == ["outbound"])
    );

    // A bad cluster is NACKed with the reason, and the old config keeps working.
    let mut bad = resources::service_cluster("bad:80", false);
    bad.cluster_discovery_type = Some(ClusterDiscoveryType::Type(DiscoveryType::StrictDns as i32));
    client_ads.set(
        ResourceType::Cluster,
        vec![
            named(CAT, &resources::service_cluster(CAT, false)),
            named("bad:80", &bad),
        ],
    );
    eventually("NACK", async || {
        client_ads.seen().iter().any(|s| {
            s.error
                .as_deref()
                .is_some_and(|e| e.contains("CDS resource \"bad:80\"") && e.contains("STRICT_DNS"))
        })
    })
    .await;
    let (status, _) = raw(
        out,
        "GET / HTTP/1.1\r\nHost: catalog:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    client_ads.set(
        ResourceType::Cluster,
        vec![named(CAT, &resources::service_cluster(CAT, false))],
    );

    // Endpoints go away: 503 with a clear body.
    client_ads.set(
        ResourceType::Endpoint,
        vec![named(CAT, &resources::load_assignment(CAT, &[]))],
    );
    eventually("no endpoints", async || {
        let (s, b) = raw(
            out,
            "GET / HTTP/1.1\r\nHost: catalog:8080\r\nConnection: close\r\n\r\n",
        )
        .await;
        s == 503 && b.contains(&format!("mesh-proxy: service {CAT} has no endpoints"))
    })
    .await;
    client_ads.set(
        ResourceType::Endpoint,
        vec![named(CAT, &cla(CAT, app, Some(server.inbound_addr.port())))],
    );

    // A cluster that comes and goes is subscribed to in EDS, then unsubscribed.
    client_ads.set(
        ResourceType::Cluster,
        vec![
            named(CAT, &resources::service_cluster(CAT, false)),
            named("x:80", &resources::service_cluster("x:80", false)),
        ],
    );
    eventually("EDS subscribe x:80", async || {
        client_ads
            .seen()
            .iter()
            .any(|s| s.type_url == mesh_xds::types::ENDPOINT && s.names.iter().any(|n| n == "x:80"))
    })
    .await;
    client_ads.set(
        ResourceType::Cluster,
        vec![named(CAT, &resources::service_cluster(CAT, false))],
    );
    eventually("EDS unsubscribe x:80", async || {
        let seen = client_ads.seen();
        let last_eds = seen
            .iter()
            .rev()
            .find(|s| s.type_url == mesh_xds::types::ENDPOINT);
        match protocol {
            XdsProtocol::Delta => seen.iter().any(|s| s.unsubscribe == ["x:80"]),
            XdsProtocol::Sotw => last_eds.is_some_and(|s| s.names == [CAT]),
        }
    })
    .await;
    assert!(
        client_ads
            .seen()
            .iter()
            .any(|s| !s.nonce.is_empty() && s.error.is_none()),
        "responses are ACKed"
    );

    // Controller goes away: keep serving; reconnect when it is back.
    drop(stop_client_xds);
    client_ads.kill_streams();
    eventually("disconnected gauge", async || {
        get(client.admin_addr, "/metrics")
            .await
            .1
            .contains("mesh_proxy_xds_connected 0")
    })
    .await;
    let (status, _) = raw(
        out,
        "GET / HTTP/1.1\r\nHost: catalog:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "serves last good config while disconnected");
    let (_again, _stop_again) = client_ads.serve(client_xds).await;
    eventually("reconnect", async || {
        get(client.admin_addr, "/metrics")
            .await
            .1
            .contains("mesh_proxy_xds_connected 1")
    })
    .await;

    // An endpoint nobody listens on: 503 with the reason.
    client_ads.set(
        ResourceType::Endpoint,
        vec![named(CAT, &cla(CAT, "127.0.0.1:1".parse().unwrap(), None))],
    );
    eventually("connect failure", async || {
        let (s, b) = raw(
            out,
            "GET / HTTP/1.1\r\nHost: catalog:8080\r\nConnection: close\r\n\r\n",
        )
        .await;
        s == 503 && b.contains("upstream connect error") && b.contains("127.0.0.1:1")
    })
    .await;

    // Graceful shutdown through the admin API.
    let (status, _) = raw(
        client.admin_addr,
        "POST /shutdown HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    tokio::time::timeout(Duration::from_secs(5), client.wait())
        .await
        .expect("client shut down")
        .unwrap();
    server.shutdown();
    tokio::time::timeout(Duration::from_secs(5), server.wait())
        .await
        .expect("server shut down")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_full_path() {
    full_path(XdsProtocol::Delta).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sotw_full_path() {
    full_path(XdsProtocol::Sotw).await;
}

#[tokio::test]
async fn before_config_is_not_ready_and_503() {
    // Nothing listens on this xDS address.
    let proxy = mesh_proxy::start(args(
        "lonely",
        "127.0.0.1:9".parse().unwrap(),
        XdsProtocol::Delta,
    ))
    .await
    .unwrap();
    let (status, body) = get(proxy.admin_addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(get(proxy.admin_addr, "/live").await.0, 200);
    let (status, body) = raw(
        proxy.outbound_addr,
        "GET / HTTP/1.1\r\nHost: catalog:8080\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 503);
    assert!(body.contains("not received"), "{body}");
    let (status, _) = raw(proxy.outbound_addr, "garbage\r\n\r\n").await;
    assert_eq!(status, 400);
    proxy.shutdown();
    proxy.wait().await.unwrap();
}
