//! The sidecar against an `https://` controller: TLS to a server whose SPIFFE ID
//! must be the controller's, `Certify` over gRPC without a client certificate, ADS
//! with the issued one, and rotation with short lifetimes.

mod fake_ads;

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use fake_ads::FakeAds;
use mesh_identity::tls::{ClientAuth, Credentials, peer_identity, server_config};
use mesh_identity::{CertificateAuthority, Identity};
use mesh_proto::identity::v1::identity_server::{Identity as IdentityApi, IdentityServer};
use mesh_proto::identity::v1::{CertifyRequest, CertifyResponse};
use mesh_proxy::{ProxyArgs, XdsProtocol};
use mesh_xds::ResourceType;
use mesh_xds::any::pack;
use mesh_xds::resources;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

const TD: &str = "cluster.local";

/// A TLS connection for tonic's server.
struct Conn(TlsStream<TcpStream>);

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ();
    fn connect_info(&self) {}
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// `Certify` backed by an in-process CA: one token, one identity, short lifetimes.
struct FakeCa {
    ca: Arc<CertificateAuthority>,
    issued: Arc<Mutex<u32>>,
}

#[tonic::async_trait]
impl IdentityApi for FakeCa {
    async fn certify(
        &self,
        request: tonic::Request<CertifyRequest>,
    ) -> Result<tonic::Response<CertifyResponse>, tonic::Status> {
        let r = request.into_inner();
        if r.token != "good-token" {
            return Err(tonic::Status::unauthenticated("token signature invalid"));
        }
        let issued = self
            .ca
            .issue(
                &r.csr_der,
                &Identity::new(TD, "default", "web"),
                Duration::from_secs(3),
            )
            .map_err(|e| tonic::Status::invalid_argument(e.to_string()))?;
        *self.issued.lock().unwrap() += 1;
        Ok(tonic::Response::new(CertifyResponse {
            cert_chain_der: issued.chain_der,
            valid_until: issued.not_after,
        }))
    }
}

/// A controller on TLS serving `Certify` and ADS; records each connection's
/// client identity (`None` = no client certificate).
async fn controller(
    ca: Arc<CertificateAuthority>,
    server_identity: Identity,
    ads: FakeAds,
) -> (SocketAddr, Arc<Mutex<Vec<Option<String>>>>, Arc<Mutex<u32>>) {
    let (issued, key) = ca
        .issue_server(&server_identity, &["localhost"], Duration::from_secs(3600))
        .unwrap();
    let creds = Credentials::new(
        issued.chain_der,
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
    )
    .unwrap();
    let config =
        server_config(&creds, &ca.trust_anchors(), ClientAuth::Optional, &[b"h2"]).unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Conn, io::Error>>(16);
    let seen = peers.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx, seen) = (acceptor.clone(), tx.clone(), seen.clone());
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(tcp).await {
                    let id =
                        peer_identity(tls.get_ref().1.peer_certificates()).map(|i| i.to_string());
                    seen.lock().unwrap().push(id);
                    let _ = tx.send(Ok(Conn(tls))).await;
                }
            });
        }
    });
    let count = Arc::new(Mutex::new(0));
    let svc = IdentityServer::new(FakeCa {
        ca,
        issued: count.clone(),
    });
    let ads_svc = envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer::new(ads);
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .add_service(ads_svc)
            .serve_with_incoming(ReceiverStream::new(rx))
            .await;
    });
    (addr, peers, count)
}

fn args(xds: SocketAddr, anchors: &std::path::Path, token: &str) -> ProxyArgs {
    let mut a = ProxyArgs::new("web-1", "default");
    a.xds_addr = format!("https://localhost:{}", xds.port());
    a.xds_protocol = XdsProtocol::Sotw;
    a.outbound_addr = Some("127.0.0.1:0".parse().unwrap());
    a.inbound_addr = Some("127.0.0.1:0".parse().unwrap());
    a.admin_addr = Some("127.0.0.1:0".parse().unwrap());
    a.drain_seconds = 1;
    a.token = Some(token.into());
    a.trust_anchors = Some(anchors.to_path_buf());
    a
}

fn anchors_file(ca: &CertificateAuthority, tag: &str) -> std::path::PathBuf {
    let path =
        std::env::temp_dir().join(format!("mesh-proxy-ctl-{}-{tag}.pem", std::process::id()));
    std::fs::write(&path, ca.trust_bundle_pem()).unwrap();
    path
}

async fn ready(admin: SocketAddr) -> (u16, String) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

fn ads() -> FakeAds {
    let ads = FakeAds::new();
    ads.set(
        ResourceType::Listener,
        vec![("outbound".into(), pack(&resources::outbound_listener()))],
    );
    ads.set(ResourceType::Cluster, vec![]);
    ads.set(
        ResourceType::Route,
        vec![(
            "outbound".into(),
            pack(&resources::single_route("outbound", "none", &["none"])),
        )],
    );
    ads
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certify_then_mutual_tls_ads_then_rotation() {
    let ca = Arc::new(CertificateAuthority::generate(TD, Duration::from_secs(3600)).unwrap());
    let anchors = anchors_file(&ca, "ok");
    let ads = ads();
    let controller_id = Identity::new(TD, "mesh-system", "mesh-controller");
    let (addr, peers, issued) = controller(ca.clone(), controller_id, ads.clone()).await;
    let proxy = mesh_proxy::start(args(addr, &anchors, "good-token"))
        .await
        .unwrap();
    let mut ok = false;
    for _ in 0..200 {
        if ready(proxy.admin_addr).await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(ok, "{:?}", ready(proxy.admin_addr).await);
    {
        let peers = peers.lock().unwrap();
        assert_eq!(peers[0], None, "Certify goes without a client certificate");
        assert!(
            peers.contains(&Some("spiffe://cluster.local/ns/default/sa/web".into())),
            "ADS uses the workload certificate: {peers:?}"
        );
    }
    assert!(!ads.seen().is_empty(), "ADS requests arrived");
    // Lifetime 3 s: rotated at 50-70%, so at least two more within 4.5 s.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let n = *issued.lock().unwrap();
    assert!(n >= 3, "rotations: {n}");
    assert_eq!(ready(proxy.admin_addr).await.0, 200);
    proxy.shutdown();
    proxy.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_impostor_controller_and_bad_tokens() {
    let ca = Arc::new(CertificateAuthority::generate(TD, Duration::from_secs(3600)).unwrap());
    let anchors = anchors_file(&ca, "impostor");
    // A server with a valid mesh certificate, but not the controller's identity.
    let (addr, peers, issued) =
        controller(ca.clone(), Identity::new(TD, "default", "catalog"), ads()).await;
    let proxy = mesh_proxy::start(args(addr, &anchors, "good-token"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (code, body) = ready(proxy.admin_addr).await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no workload certificate"), "{body}");
    assert_eq!(*issued.lock().unwrap(), 0, "no Certify to an impostor");
    assert!(!peers.lock().unwrap().is_empty(), "it did try");
    proxy.shutdown();
    proxy.wait().await.unwrap();

    // The real controller, a wrong token: UNAUTHENTICATED, nothing issued.
    let (addr, _, issued) = controller(
        ca.clone(),
        Identity::new(TD, "mesh-system", "mesh-controller"),
        ads(),
    )
    .await;
    let proxy = mesh_proxy::start(args(addr, &anchors, "forged"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(ready(proxy.admin_addr).await.0, 503);
    assert_eq!(*issued.lock().unwrap(), 0);
    proxy.shutdown();
    proxy.wait().await.unwrap();
}
