//! The controller's identity side, end to end against the real binary: `Certify`
//! on both ports, join tokens, the trust bundle, node binding on the TLS port, CA
//! persistence and root rotation.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use hyper_util::rt::TokioIo;
use mesh_identity::csr::WorkloadKey;
use mesh_identity::tls::{Credentials, client_config, mesh_server_name};
use mesh_identity::{Identity, TokenKey};
use mesh_proto::identity::v1::CertifyRequest;
use mesh_proto::identity::v1::identity_client::IdentityClient;
use mesh_xds::{ProxyNode, ResourceType, names};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use tonic::transport::{Channel, Endpoint};

const MESH: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {mesh.io/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: catalog, namespace: shop}
spec:
  selector: {app: catalog}
  ports: [{name: http, port: 8080}]
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: catalog-1, namespace: shop, labels: {app: catalog}}
spec:
  address: 127.0.1.1
  ports: [{name: http, port: 8080}]
  serviceAccount: catalog
---
apiVersion: mesh.io/v1alpha1
kind: Workload
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec:
  address: 127.0.1.2
  ports: [{name: http, port: 8080}]
  serviceAccount: web
"#;

fn free_addr() -> SocketAddr {
    mesh_tests::free_addr()
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "mesh-controller-it-{name}-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mesh.yaml"), MESH).unwrap();
    dir
}

/// A running `mesh-controller`, killed on drop.
struct Controller {
    child: Child,
    xds: SocketAddr,
    secure: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Controller {
    async fn start(dir: &Path, extra: &[&str]) -> Controller {
        Self::start_with_admin(dir, free_addr(), extra).await
    }

    async fn start_with_admin(dir: &Path, admin: SocketAddr, extra: &[&str]) -> Controller {
        let (xds, secure) = (free_addr(), free_addr());
        let log = dir.join(format!("controller-{}.log", xds.port()));
        let child = Command::new(env!("CARGO_BIN_EXE_mesh-controller"))
            .args(["--file", &dir.join("mesh.yaml").display().to_string()])
            .args(["--xds-addr", &xds.to_string()])
            .args(["--secure-xds-addr", &secure.to_string()])
            .args(["--admin-addr", &admin.to_string()])
            .args(["--ca-dir", &dir.join("ca").display().to_string()])
            .args(["--debounce-ms", "20"])
            .args(extra)
            .env("RUST_LOG", "info,mesh_controller=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("mesh-controller starts");
        let c = Controller {
            child,
            xds,
            secure,
            admin: if admin.ip().is_unspecified() {
                SocketAddr::from(([127, 0, 0, 1], admin.port()))
            } else {
                admin
            },
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok((200, _)) = http(c.admin, "GET", "/ready", None).await
                && TcpStream::connect(c.secure).await.is_ok()
            {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "controller not ready:\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn get(&self, path: &str) -> String {
        let (status, body) = http(self.admin, "GET", path, None).await.unwrap();
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    async fn json(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&self.get(path).await).unwrap()
    }

    async fn token(&self, ns: &str, sa: &str) -> String {
        let body = format!(r#"{{"namespace":"{ns}","service_account":"{sa}","ttl_seconds":600}}"#);
        let (status, body) = http(self.admin, "POST", "/tokens", Some(&body))
            .await
            .unwrap();
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    async fn issued(&self) -> f64 {
        metric(
            &self.get("/metrics").await,
            "mesh_ca_certificates_issued_total",
        )
    }

    async fn anchors(&self) -> Vec<Vec<u8>> {
        mesh_identity::tls::anchors_from_pem(&self.get("/ca/bundle").await).unwrap()
    }

    async fn plaintext(&self) -> Channel {
        Endpoint::from_shared(format!("http://{}", self.xds))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// A channel to the TLS port, presenting `creds` if given.
    async fn secure(&self, creds: Option<&Credentials>) -> Channel {
        let config = client_config(creds, &self.anchors().await, &[b"h2"]).unwrap();
        let connector = tokio_rustls::TlsConnector::from(config);
        let addr = self.secure;
        Endpoint::from_static("http://mesh-controller")
            .connect_with_connector(tower::service_fn(move |_| {
                let connector = connector.clone();
                async move {
                    let tcp = TcpStream::connect(addr).await?;
                    let tls = connector.connect(mesh_server_name(), tcp).await?;
                    Ok::<_, std::io::Error>(TokioIo::new(tls))
                }
            }))
            .await
            .unwrap()
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 client: (status, body).
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect(addr).await?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: mesh\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
}

async fn certify(
    channel: Channel,
    token: &str,
    csr: Vec<u8>,
) -> Result<Vec<Vec<u8>>, tonic::Status> {
    let r = IdentityClient::new(channel)
        .certify(CertifyRequest {
            token: token.to_string(),
            csr_der: csr,
        })
        .await?
        .into_inner();
    assert!(r.valid_until > mesh_identity::unix_now() as i64);
    Ok(r.cert_chain_der)
}

/// Credentials for `ns/sa` obtained through `Certify` on the TLS port.
async fn credentials(c: &Controller, ns: &str, sa: &str) -> Credentials {
    let key = WorkloadKey::generate().unwrap();
    let chain = certify(
        c.secure(None).await,
        &c.token(ns, sa).await,
        key.csr_der().unwrap(),
    )
    .await
    .unwrap();
    Credentials::new(chain, key.private_key_der()).unwrap()
}

fn node(workload: Option<&str>, namespace: &str) -> ProxyNode {
    ProxyNode {
        id: format!("{}.{namespace}", workload.unwrap_or("anon")),
        workload: workload.map(str::to_string),
        namespace: namespace.to_string(),
        admin_address: None,
    }
}

/// Opens a SotW stream asking for clusters; returns the first response or the
/// stream's error.
async fn first_response(
    channel: Channel,
    node: &ProxyNode,
) -> Result<DiscoveryResponse, tonic::Status> {
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: Some(node.to_node()),
        type_url: ResourceType::Cluster.type_url().to_string(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut stream = AggregatedDiscoveryServiceClient::new(channel)
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await?
        .into_inner();
    let message = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an answer within 10 s");
    drop(tx);
    message?.ok_or_else(|| tonic::Status::unknown("stream closed without a response"))
}

/// A CSR that asks for another identity, a CA bit and extra names.
fn greedy_csr() -> Vec<u8> {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
    params.subject_alt_names.push(rcgen::SanType::URI(
        "spiffe://cluster.local/ns/kube-system/sa/admin"
            .try_into()
            .unwrap(),
    ));
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.serialize_request(&key).unwrap().der().to_vec()
}

#[tokio::test]
async fn certify_signs_only_the_token_identity_and_refuses_bad_tokens() {
    let dir = temp_dir("certify");
    let c = Controller::start(&dir, &["--workload-cert-ttl", "1h"]).await;
    let expected = Identity::new("cluster.local", "shop", "catalog");
    let token = c.token("shop", "catalog").await;
    assert_eq!(c.issued().await, 0.0);

    // Plaintext port, a greedy CSR: the certificate names the token's identity only.
    let chain = certify(c.plaintext().await, &token, greedy_csr())
        .await
        .unwrap();
    assert_eq!(
        mesh_identity::svid::identity_of(&chain[0]).unwrap(),
        expected
    );
    let info = mesh_identity::svid::inspect(&chain[0]).unwrap();
    assert!(!info.is_ca, "no CA bit");
    assert!(
        info.not_after - info.not_before <= 3600 + 60,
        "the CA's own validity"
    );
    let (_, cert) = x509_parser::parse_x509_certificate(&chain[0]).unwrap();
    let sans = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(sans.value.general_names.len(), 1, "no other SANs");
    assert_eq!(c.issued().await, 1.0);

    // Expired (signed with the controller's own key), forged, garbage tokens.
    let key = TokenKey::load_or_create(&dir.join("ca")).unwrap();
    let expired = key.sign(&expected, 0);
    let forged = TokenKey::generate().sign(&expected, 600);
    let csr = WorkloadKey::generate().unwrap().csr_der().unwrap();
    for (what, bad) in [
        ("expired", expired.as_str()),
        ("forged", &forged),
        ("garbage", "garbage"),
        ("empty", ""),
    ] {
        let err = certify(c.plaintext().await, bad, csr.clone())
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{what}: {err:?}");
    }
    // A garbage CSR with a good token.
    let err = certify(c.plaintext().await, &token, b"not a csr".to_vec())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("csr"), "{}", err.message());
    assert_eq!(c.issued().await, 1.0, "refusals issue nothing");

    // Over TLS without a client certificate, Certify works too.
    let chain = certify(c.secure(None).await, &token, csr).await.unwrap();
    assert_eq!(
        mesh_identity::svid::identity_of(&chain[0]).unwrap(),
        expected
    );
    assert_eq!(c.issued().await, 2.0);
    let expiry = metric(
        &c.get("/metrics").await,
        "mesh_ca_root_expiry_timestamp_seconds",
    );
    assert!(expiry > mesh_identity::unix_now() as f64 + 86400.0 * 365.0);
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn secure_port_binds_the_node_to_the_certificate() {
    let dir = temp_dir("bind");
    let c = Controller::start(&dir, &[]).await;
    let catalog = credentials(&c, "shop", "catalog").await;

    // No client certificate: no xDS.
    let err = first_response(c.secure(None).await, &node(Some("catalog-1"), "shop"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(err.message().contains("Certify"), "{}", err.message());

    let ch = c.secure(Some(&catalog)).await;
    // Renewal: no token, the client certificate authenticates.
    let csr = WorkloadKey::generate().unwrap().csr_der().unwrap();
    let renewed = certify(ch.clone(), "", csr.clone()).await.unwrap();
    assert_eq!(
        mesh_identity::svid::identity_of(&renewed[0]).unwrap(),
        catalog.identity
    );
    let err = certify(c.secure(None).await, "", csr).await.unwrap_err();
    assert_eq!(
        err.code(),
        Code::Unauthenticated,
        "no token, no certificate: {err:?}"
    );
    // Another workload's node.
    let err = first_response(ch.clone(), &node(Some("web-1"), "shop"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    for part in [
        "web-1",
        "\"web\"",
        "spiffe://cluster.local/ns/shop/sa/catalog",
    ] {
        assert!(err.message().contains(part), "{part} in {}", err.message());
    }
    // Another namespace, and an unknown workload.
    for n in [node(None, "default"), node(Some("ghost-1"), "shop")] {
        let err = first_response(ch.clone(), &n).await.unwrap_err();
        assert_eq!(err.code(), Code::PermissionDenied, "{n:?}: {err:?}");
    }
    // Its own node, and a namespace-only node of its namespace.
    let ok = first_response(ch.clone(), &node(Some("catalog-1"), "shop"))
        .await
        .unwrap();
    assert_eq!(ok.type_url, ResourceType::Cluster.type_url());
    first_response(ch, &node(None, "shop")).await.unwrap();

    // A certificate from another CA does not even get through the handshake.
    let other =
        mesh_identity::CertificateAuthority::generate("cluster.local", Duration::from_secs(600))
            .unwrap();
    let key = WorkloadKey::generate().unwrap();
    let issued = other
        .issue(
            &key.csr_der().unwrap(),
            &Identity::new("cluster.local", "shop", "catalog"),
            Duration::from_secs(60),
        )
        .unwrap();
    let foreign = Credentials::new(issued.chain_der, key.private_key_der()).unwrap();
    let config = client_config(Some(&foreign), &c.anchors().await, &[b"h2"]).unwrap();
    let tcp = TcpStream::connect(c.secure).await.unwrap();
    let refused = async {
        let mut tls = tokio_rustls::TlsConnector::from(config)
            .connect(mesh_server_name(), tcp)
            .await?;
        // TLS 1.3: the client learns of the rejection on its first read.
        tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
        let mut buf = [0u8; 1];
        match tls.read(&mut buf).await? {
            0 => Err(std::io::Error::other("closed")),
            _ => Ok(()),
        }
    };
    assert!(
        refused.await.is_err(),
        "a foreign client certificate is refused"
    );

    // The plaintext port does not bind (development only).
    first_response(c.plaintext().await, &node(Some("web-1"), "shop"))
        .await
        .unwrap();
    let syncz = c.json("/debug/syncz").await;
    assert!(
        syncz
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["types"]["SDS"].is_object())
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn tokens_endpoint_validates_and_restarts_keep_the_root() {
    let dir = temp_dir("tokens");
    let c = Controller::start(&dir, &[]).await;
    let bundle = c.get("/ca/bundle").await;
    assert!(
        bundle.starts_with("-----BEGIN CERTIFICATE-----"),
        "{bundle}"
    );
    for (body, expect) in [
        (
            r#"{"namespace":"Shop","service_account":"web"}"#,
            "namespace",
        ),
        (
            r#"{"namespace":"shop","service_account":"a_b"}"#,
            "service_account",
        ),
        (r#"{"namespace":"shop"}"#, "service_account"),
        (
            r#"{"namespace":"shop","service_account":"web","ttl_seconds":0}"#,
            "ttl_seconds",
        ),
        (
            r#"{"namespace":"shop","service_account":"web","extra":1}"#,
            "extra",
        ),
        ("not json", "JSON"),
    ] {
        let (status, text) = http(c.admin, "POST", "/tokens", Some(body)).await.unwrap();
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(expect), "{body}: {text}");
    }
    let (status, _) = http(c.admin, "GET", "/tokens", None).await.unwrap();
    assert_eq!(status, 405);
    let (status, text) = http(
        c.admin,
        "POST",
        "/tokens",
        Some(r#"{"namespace":"shop","service_account":"web"}"#),
    )
    .await
    .unwrap();
    assert_eq!(status, 200, "{text}");
    let token: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(token["identity"], "spiffe://cluster.local/ns/shop/sa/web");
    let token = token["token"].as_str().unwrap().to_string();
    let ca = c.json("/debug/ca").await;
    assert_eq!(ca["signers"], 1);
    assert_eq!(ca["rotation"]["phase"], "idle");
    assert_eq!(ca["roots"].as_array().unwrap().len(), 1);
    drop(c);

    // Same --ca-dir: same root, and tokens from before still work.
    let c = Controller::start(&dir, &[]).await;
    assert_eq!(c.get("/ca/bundle").await, bundle);
    let csr = WorkloadKey::generate().unwrap().csr_der().unwrap();
    certify(c.plaintext().await, &token, csr).await.unwrap();
    drop(c);

    // From a non-loopback address: refused. Needs a non-loopback interface.
    let probe = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
    let local_ip = probe
        .connect("192.0.2.1:9")
        .and_then(|()| probe.local_addr())
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_loopback() && !ip.is_unspecified());
    if let Some(ip) = local_ip {
        let port = free_addr().port();
        let c =
            Controller::start_with_admin(&dir, SocketAddr::from(([0, 0, 0, 0], port)), &[]).await;
        let body = r#"{"namespace":"shop","service_account":"web"}"#;
        let (status, text) = http(SocketAddr::new(ip, port), "POST", "/tokens", Some(body))
            .await
            .unwrap();
        assert_eq!(status, 403, "{text}");
        let (status, _) = http(c.admin, "POST", "/tokens", Some(body)).await.unwrap();
        assert_eq!(status, 200);
    } else {
        eprintln!("no non-loopback interface: skipping the 403 check");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A SotW SDS client that ACKs every trust bundle push; returns the bundles seen.
fn sds_client(
    channel: Channel,
    node: ProxyNode,
) -> tokio::task::JoinHandle<Result<(), tonic::Status>> {
    tokio::spawn(async move {
        let (tx, rx) = mpsc::channel(16);
        let request = |version: String, nonce: String| DiscoveryRequest {
            node: Some(node.to_node()),
            type_url: ResourceType::Secret.type_url().to_string(),
            resource_names: vec![names::TRUST_BUNDLE.to_string()],
            version_info: version,
            response_nonce: nonce,
            ..Default::default()
        };
        tx.send(request(String::new(), String::new()))
            .await
            .unwrap();
        let mut stream = AggregatedDiscoveryServiceClient::new(channel)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await?
            .into_inner();
        while let Some(r) = stream.message().await? {
            if tx.send(request(r.version_info, r.nonce)).await.is_err() {
                break;
            }
        }
        Ok(())
    })
}

#[tokio::test]
async fn root_rotation_adds_waits_for_acks_switches_and_drops() {
    let dir = temp_dir("rotate");
    let c = Controller::start(
        &dir,
        &["--workload-cert-ttl", "3s", "--rotation-grace", "60s"],
    )
    .await;
    let old_roots = c.anchors().await;
    let catalog = credentials(&c, "shop", "catalog").await;
    let proxy = sds_client(
        c.secure(Some(&catalog)).await,
        node(Some("catalog-1"), "shop"),
    );
    // Wait until the proxy ACKed the first bundle.
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.json("/debug/syncz").await[0]["trust_bundle_version"].is_null() {
        assert!(Instant::now() < deadline, "no SDS ACK: {}", c.logs());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let started = Instant::now();
    let (status, body) = http(c.admin, "POST", "/ca/rotate", Some("")).await.unwrap();
    assert_eq!(status, 202, "{body}");
    let (status, _) = http(c.admin, "POST", "/ca/rotate", Some("")).await.unwrap();
    assert_eq!(status, 409, "one rotation at a time");

    // Phase 2 comes as soon as the proxy ACKs the two-root bundle, long before
    // the 60 s grace.
    loop {
        let ca = c.json("/debug/ca").await;
        if ca["rotation"]["phase"] == "draining" {
            assert_eq!(ca["roots"].as_array().unwrap().len(), 2, "{ca}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "stuck: {ca}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(c.anchors().await.len(), 2);
    // New certificates come from the new root, and the old credentials still work.
    let fresh = credentials(&c, "shop", "catalog").await;
    let issuer = mesh_identity::svid::inspect(&fresh.chain[0])
        .unwrap()
        .issuer;
    assert_ne!(
        issuer,
        mesh_identity::svid::inspect(&old_roots[0]).unwrap().subject
    );
    first_response(
        c.secure(Some(&catalog)).await,
        &node(Some("catalog-1"), "shop"),
    )
    .await
    .unwrap();

    // Phase 3 comes after the certificate lifetime + the 60 s grace: instead,
    // restart mid-rotation and see it persisted and resumed.
    assert!(!proxy.is_finished());
    proxy.abort();
    drop(c);
    let c = Controller::start(&dir, &[]).await;
    let ca = c.json("/debug/ca").await;
    assert_eq!(ca["signers"], 2, "the rotation's state is on disk: {ca}");
    assert_ne!(ca["rotation"]["phase"], "idle", "and it resumes: {ca}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn root_rotation_completes_and_drops_the_old_root() {
    let dir = temp_dir("rotate-fast");
    let c = Controller::start(
        &dir,
        &["--workload-cert-ttl", "2s", "--rotation-grace", "1s"],
    )
    .await;
    let old = c.get("/ca/bundle").await;
    let (status, _) = http(c.admin, "POST", "/ca/rotate", None).await.unwrap();
    assert_eq!(status, 202);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ca = c.json("/debug/ca").await;
        if ca["rotation"]["phase"] == "idle" && !ca["rotation"]["last_completed_unix"].is_null() {
            assert_eq!(ca["signers"], 1);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rotation did not finish: {ca}\n{}",
            c.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let new = c.get("/ca/bundle").await;
    assert_ne!(new, old);
    assert_eq!(mesh_identity::tls::anchors_from_pem(&new).unwrap().len(), 1);
    // The TLS port serves a certificate from the new root.
    let fresh = credentials(&c, "shop", "catalog").await;
    first_response(
        c.secure(Some(&fresh)).await,
        &node(Some("catalog-1"), "shop"),
    )
    .await
    .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
