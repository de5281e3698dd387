//! Two sidecars with identities from an in-process CA, fed by fake ADS servers:
//! mutual TLS between them, STRICT and PERMISSIVE inbound, RBAC, the outbound
//! identity check, SDS trust bundles, and readiness before a certificate.

mod fake_ads;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::google::protobuf::Any;
use fake_ads::FakeAds;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use mesh_identity::{CertificateAuthority, Identity};
use mesh_model::{
    AuthorizationAction, AuthorizationOperation, AuthorizationPolicy, AuthorizationRule,
    AuthorizationSource, MtlsMode,
};
use mesh_proxy::identity::{Certifier, CertifyError, CertifyFuture};
use mesh_proxy::{ProxyArgs, XdsProtocol};
use mesh_xds::ResourceType;
use mesh_xds::any::pack;
use mesh_xds::{metadata, names, resources};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const CAT: &str = "catalog.default.svc.cluster.local:8080";
const TD: &str = "cluster.local";

fn spiffe(sa: &str) -> String {
    format!("spiffe://{TD}/ns/default/sa/{sa}")
}

/// Signs every CSR for one identity, as the controller would for a valid token.
struct TestCertifier {
    ca: Arc<CertificateAuthority>,
    identity: Identity,
    accept: bool,
}

impl Certifier for TestCertifier {
    fn certify<'a>(&'a self, _token: &'a str, csr_der: Vec<u8>) -> CertifyFuture<'a> {
        Box::pin(async move {
            if !self.accept {
                return Err(CertifyError::Unauthenticated("token expired".into()));
            }
            self.ca
                .issue(&csr_der, &self.identity, Duration::from_secs(300))
                .map(|i| i.chain_der)
                .map_err(|e| CertifyError::Other(e.to_string()))
        })
    }
}

fn anchors_file(ca: &CertificateAuthority) -> std::path::PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let path = std::env::temp_dir().join(format!(
        "mesh-proxy-mtls-{}-{}.pem",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, ca.trust_bundle_pem()).unwrap();
    path
}

fn args(workload: &str, xds: SocketAddr, anchors: &std::path::Path) -> ProxyArgs {
    let mut a = ProxyArgs::new(workload, "default");
    a.xds_addr = format!("http://{xds}");
    a.xds_protocol = XdsProtocol::Delta;
    a.outbound_addr = Some("127.0.0.1:0".parse().unwrap());
    a.inbound_addr = Some("127.0.0.1:0".parse().unwrap());
    a.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    a.drain_seconds = 1;
    a.token = Some("join-token".into());
    a.trust_anchors = Some(anchors.to_path_buf());
    a
}

async fn start(
    a: ProxyArgs,
    ca: &Arc<CertificateAuthority>,
    sa: &str,
    accept: bool,
) -> mesh_proxy::Proxy {
    let certifier = TestCertifier {
        ca: ca.clone(),
        identity: Identity::new(TD, "default", sa),
        accept,
    };
    mesh_proxy::start_with(a, Some(Arc::new(certifier)))
        .await
        .unwrap()
}

/// An app that echoes the request line and headers.
async fn echo_app() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: hyper::Request<Incoming>| async move {
                    let mut text = format!("{} {}\n", req.method(), req.uri());
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

fn named<M: prost::Message + prost::Name>(name: &str, m: &M) -> (String, Any) {
    (name.to_string(), pack(m))
}

fn cla(app: SocketAddr, sidecar_port: u16, identity: &str) -> ClusterLoadAssignment {
    let fields = vec![
        (resources::META_WORKLOAD, metadata::string("catalog-1")),
        (resources::META_NAMESPACE, metadata::string("default")),
        (resources::META_IDENTITY, metadata::string(identity)),
        (
            resources::META_SIDECAR_PORT,
            metadata::number(f64::from(sidecar_port)),
        ),
    ];
    ClusterLoadAssignment {
        cluster_name: CAT.into(),
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

fn routes() -> RouteConfiguration {
    RouteConfiguration {
        name: names::OUTBOUND.into(),
        virtual_hosts: vec![resources::service_virtual_host(
            CAT,
            names::service_domains("catalog", "default", TD, 8080, "default", None),
        )],
        ..Default::default()
    }
}

/// Allow callers from namespace `default`; deny `/admin*` to everyone.
fn policies() -> Vec<AuthorizationPolicy> {
    let rule = |from: Vec<AuthorizationSource>, to: Vec<AuthorizationOperation>| {
        vec![AuthorizationRule { from, to }]
    };
    vec![
        AuthorizationPolicy {
            name: "same-namespace".into(),
            namespace: "default".into(),
            selector: Default::default(),
            action: AuthorizationAction::Allow,
            rules: rule(
                vec![AuthorizationSource {
                    namespaces: vec!["default".into()],
                    ..Default::default()
                }],
                vec![],
            ),
        },
        AuthorizationPolicy {
            name: "no-admin".into(),
            namespace: "default".into(),
            selector: Default::default(),
            action: AuthorizationAction::Deny,
            rules: rule(
                vec![],
                vec![AuthorizationOperation {
                    paths: vec!["/admin*".into()],
                    ..Default::default()
                }],
            ),
        },
    ]
}

fn inbound(port: u16, mode: MtlsMode, with_policies: bool) -> Listener {
    let p = policies();
    let refs: Vec<&AuthorizationPolicy> = if with_policies {
        p.iter().collect()
    } else {
        Vec::new()
    };
    resources::inbound_listener(&[port], mode, &mesh_xds::authz::rbac_filters(&refs, TD))
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    raw(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// Sends a raw HTTP/1.1 request; (0, "") when the connection is closed unanswered.
async fn raw(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request.as_bytes()).await;
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

async fn catalog(out: SocketAddr, path: &str, extra: &str) -> (u16, String) {
    raw(
        out,
        &format!("GET {path} HTTP/1.1\r\nHost: catalog:8080\r\nConnection: close\r\n{extra}\r\n"),
    )
    .await
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

async fn wait_ready(admin: SocketAddr) {
    eventually("ready", async || get(admin, "/ready").await.0 == 200).await;
}

struct Mesh {
    ca: Arc<CertificateAuthority>,
    app: SocketAddr,
    server: mesh_proxy::Proxy,
    server_ads: FakeAds,
    client: mesh_proxy::Proxy,
    client_ads: FakeAds,
    _stops: Vec<tokio::sync::oneshot::Sender<()>>,
}

async fn mesh(mode: MtlsMode) -> Mesh {
    let ca = Arc::new(CertificateAuthority::generate(TD, Duration::from_secs(3600)).unwrap());
    let anchors = anchors_file(&ca);
    let app = echo_app().await;

    let server_ads = FakeAds::new();
    let (server_xds, stop1) = server_ads.serve("127.0.0.1:0".parse().unwrap()).await;
    server_ads.set(
        ResourceType::Listener,
        vec![named("inbound", &inbound(app.port(), mode, true))],
    );
    server_ads.set(
        ResourceType::Cluster,
        vec![named(
            &names::inbound_cluster(app.port()),
            &resources::inbound_cluster(app, false),
        )],
    );
    let mut a = args("catalog-1", server_xds, &anchors);
    a.forward_client_cert = true;
    let server = start(a, &ca, "catalog", true).await;
    wait_ready(server.admin_addr).await;

    let client_ads = FakeAds::new();
    let (client_xds, stop2) = client_ads.serve("127.0.0.1:0".parse().unwrap()).await;
    client_ads.set(
        ResourceType::Listener,
        vec![named("outbound", &resources::outbound_listener())],
    );
    client_ads.set(
        ResourceType::Cluster,
        vec![named(CAT, &resources::service_cluster(CAT, false))],
    );
    client_ads.set(ResourceType::Route, vec![named("outbound", &routes())]);
    client_ads.set(
        ResourceType::Endpoint,
        vec![named(
            CAT,
            &cla(app, server.inbound_addr.port(), &spiffe("catalog")),
        )],
    );
    let client = start(args("web-1", client_xds, &anchors), &ca, "web", true).await;
    wait_ready(client.admin_addr).await;
    Mesh {
        ca,
        app,
        server,
        server_ads,
        client,
        client_ads,
        _stops: vec![stop1, stop2],
    }
}

async fn metrics(admin: SocketAddr) -> String {
    get(admin, "/metrics").await.1
}

async fn config_dump(admin: SocketAddr) -> serde_json::Value {
    let (_, text) = get(admin, "/config_dump").await;
    assert!(!text.contains("PRIVATE KEY"));
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mtls_rbac_and_identity_check() {
    let m = mesh(MtlsMode::Strict).await;
    let out = m.client.outbound_addr;

    // Through both sidecars over mutual TLS; the app learns who called, and a
    // spoofed XFCC from the caller's app never arrives.
    let (status, body) = catalog(out, "/hello", "x-forwarded-client-cert: By=evil\r\n").await;
    assert_eq!(status, 200, "{body}");
    let xfcc = format!(
        "x-forwarded-client-cert: By={};URI={}",
        spiffe("catalog"),
        spiffe("web")
    );
    assert!(body.contains(&xfcc), "{body}");
    assert_eq!(body.matches("x-forwarded-client-cert").count(), 1, "{body}");

    // A DENY policy: 403 naming the policy, counted.
    let (status, body) = catalog(out, "/admin/users", "").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("default/no-admin[0]"), "{body}");
    let text = metrics(m.server.admin_addr).await;
    assert!(
        text.contains("mesh_authorization_denied_total{destination_workload=\"catalog-1\",destination_namespace=\"default\",reason=\"deny_policy\"} 1"),
        "{text}"
    );
    let web = spiffe("web");
    let cat = spiffe("catalog");
    assert!(
        text.contains(&format!("mesh_requests_total{{reporter=\"destination\",source_workload=\"web-1\",source_namespace=\"default\",source_principal=\"{web}\",destination_service=\"catalog.default.svc.cluster.local\",destination_workload=\"catalog-1\",destination_namespace=\"default\",destination_principal=\"{cat}\",response_code=\"403\",grpc_status=\"\",request_protocol=\"http\",connection_security_policy=\"mutual_tls\"}} 1")),
        "{text}"
    );
    assert!(
        text.contains("mesh_proxy_cert_expiry_timestamp_seconds "),
        "{text}"
    );
    let text = metrics(m.client.admin_addr).await;
    assert!(
        text.contains(&format!("source_principal=\"{web}\",destination_service=\"catalog.default.svc.cluster.local\",destination_workload=\"catalog-1\",destination_namespace=\"default\",destination_principal=\"{cat}\",response_code=\"200\",grpc_status=\"\",request_protocol=\"http\",connection_security_policy=\"mutual_tls\"}} 1")),
        "{text}"
    );

    // STRICT: plaintext straight to the inbound port is closed unanswered, counted.
    let (status, text) = get(m.server.inbound_addr, "/hello").await;
    assert_eq!((status, text.as_str()), (0, ""));
    assert!(
        metrics(m.server.admin_addr)
            .await
            .contains("mesh_inbound_plaintext_refused_total 1")
    );

    // A client certificate from another CA is refused by the handshake.
    let other = CertificateAuthority::generate(TD, Duration::from_secs(3600)).unwrap();
    let key = mesh_identity::csr::WorkloadKey::generate().unwrap();
    let issued = other
        .issue(
            &key.csr_der().unwrap(),
            &Identity::new(TD, "default", "web"),
            Duration::from_secs(60),
        )
        .unwrap();
    let creds =
        mesh_identity::tls::Credentials::new(issued.chain_der, key.private_key_der()).unwrap();
    let config =
        mesh_identity::tls::client_config(Some(&creds), &m.ca.trust_anchors(), &[b"h2"]).unwrap();
    let tcp = tokio::net::TcpStream::connect(m.server.inbound_addr)
        .await
        .unwrap();
    let refused = match tokio_rustls::TlsConnector::from(config)
        .connect(mesh_identity::tls::mesh_server_name(), tcp)
        .await
    {
        Err(_) => true,
        Ok(mut tls) => {
            // TLS 1.3: the client learns of the refusal on its first read.
            let _ = tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
            let mut buf = [0u8; 64];
            !matches!(tls.read(&mut buf).await, Ok(n) if n > 0)
        }
    };
    assert!(refused, "a foreign client certificate must be refused");
    eventually("handshake failure counted", async || {
        metrics(m.server.admin_addr)
            .await
            .contains("mesh_inbound_tls_handshake_failures_total 1")
    })
    .await;

    // The endpoint should be someone else: the request is not sent; 503 names both.
    m.client_ads.set(
        ResourceType::Endpoint,
        vec![named(
            CAT,
            &cla(m.app, m.server.inbound_addr.port(), &spiffe("payments")),
        )],
    );
    eventually("identity mismatch", async || {
        let (s, b) = catalog(out, "/hello", "").await;
        s == 503 && b.contains(&spiffe("payments")) && b.contains(&spiffe("catalog"))
    })
    .await;

    // Secrets in the config dump: identity and roots, never the key.
    let dump = config_dump(m.client.admin_addr).await;
    assert_eq!(dump["secrets"]["certificate"]["identity"], spiffe("web"));
    assert_eq!(dump["secrets"]["trust_bundle"]["source"], "file");
    assert_eq!(
        dump["secrets"]["trust_bundle"]["roots"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    m.client.shutdown();
    m.server.shutdown();
    m.client.wait().await.unwrap();
    m.server.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_takes_plaintext_and_sds_bundle_replaces_file() {
    let m = mesh(MtlsMode::Permissive).await;
    // Plaintext callers have no principal: the ALLOW policy (namespace default)
    // does not match them, so they get 403, not a closed connection.
    let (status, body) = get(m.server.inbound_addr, "/hello").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("no ALLOW policy"), "{body}");
    // Without policies, plaintext passes.
    m.server_ads.set(
        ResourceType::Listener,
        vec![named(
            "inbound",
            &inbound(m.app.port(), MtlsMode::Permissive, false),
        )],
    );
    eventually("policies removed", async || {
        get(m.server.inbound_addr, "/hello").await.0 == 200
    })
    .await;
    // mTLS still works alongside.
    let (status, body) = catalog(m.client.outbound_addr, "/x", "").await;
    assert_eq!(status, 200, "{body}");

    // The trust bundle arrives over SDS and replaces the file's.
    let mut bundle = m.ca.trust_bundle_pem();
    let extra = CertificateAuthority::generate(TD, Duration::from_secs(3600)).unwrap();
    bundle.push_str(&extra.trust_bundle_pem());
    m.client_ads.set(
        ResourceType::Secret,
        vec![named(
            names::TRUST_BUNDLE,
            &resources::trust_bundle_secret(&bundle),
        )],
    );
    eventually("SDS bundle", async || {
        let dump = config_dump(m.client.admin_addr).await;
        dump["secrets"]["trust_bundle"]["source"] == "sds"
            && dump["secrets"]["trust_bundle"]["roots"]
                .as_array()
                .is_some_and(|r| r.len() == 2)
    })
    .await;
    let (status, body) = catalog(m.client.outbound_addr, "/after-sds", "").await;
    assert_eq!(status, 200, "{body}");
    assert!(
        m.client_ads
            .seen()
            .iter()
            .any(|s| s.type_url == mesh_xds::types::SECRET && s.names == [names::TRUST_BUNDLE]),
        "SDS subscribed by name"
    );

    // A bundle that does not parse is NACKed and the old one stays.
    m.client_ads.set(
        ResourceType::Secret,
        vec![named(
            names::TRUST_BUNDLE,
            &resources::trust_bundle_secret("-----BEGIN CERTIFICATE-----\nnope\n"),
        )],
    );
    eventually("NACK of a bad bundle", async || {
        m.client_ads.seen().iter().any(|s| {
            s.type_url == mesh_xds::types::SECRET
                && s.error.as_deref().is_some_and(|e| e.contains("ROOTCA"))
        })
    })
    .await;
    let (status, _) = catalog(m.client.outbound_addr, "/after-nack", "").await;
    assert_eq!(status, 200);

    m.client.shutdown();
    m.server.shutdown();
    m.client.wait().await.unwrap();
    m.server.wait().await.unwrap();
}

#[tokio::test]
async fn not_ready_without_a_certificate() {
    let ca = Arc::new(CertificateAuthority::generate(TD, Duration::from_secs(3600)).unwrap());
    let anchors = anchors_file(&ca);
    let ads = FakeAds::new();
    let (xds, _stop) = ads.serve("127.0.0.1:0".parse().unwrap()).await;
    ads.set(
        ResourceType::Listener,
        vec![named("outbound", &resources::outbound_listener())],
    );
    ads.set(ResourceType::Cluster, vec![]);
    ads.set(ResourceType::Route, vec![named("outbound", &routes())]);
    let proxy = start(args("web-1", xds, &anchors), &ca, "web", false).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, body) = get(proxy.admin_addr, "/ready").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no workload certificate yet"), "{body}");
    // No xDS before the certificate.
    assert!(ads.seen().is_empty());
    // STRICT by default before any inbound config: plaintext is refused.
    assert_eq!(get(proxy.inbound_addr, "/").await.0, 0);
    proxy.shutdown();
    proxy.wait().await.unwrap();
}
