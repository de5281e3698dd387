//! The sidecar's identity: the connection to the controller (TLS with the
//! controller's SPIFFE ID checked), `Certify`, and certificate rotation.
//!
//! Flow: make a key in memory (it never leaves the process) and a CSR, send it with
//! the join token to `mesh.identity.v1.Identity/Certify` over TLS without a client
//! certificate, check that what comes back chains to the trust anchors and names
//! our namespace, install it ([`TlsState::set_credentials`]), then renew at a random
//! point between 50% and 70% of its lifetime with a fresh key. Failures are retried
//! with jittered backoff; the old certificate stays in use meanwhile. The xDS stream
//! starts only once a certificate is held and then uses it (mutual TLS).

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use hyper_util::rt::TokioIo;
use mesh_identity::csr::WorkloadKey;
use mesh_identity::tls::{ALPN_H2, Credentials, client_config, mesh_server_name, peer_identity};
use mesh_identity::{Identity, svid};
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::codegen::Service;
use tonic::codegen::http::Uri;
use tonic::transport::Channel;

use crate::tls::TlsState;
use crate::xds_client::Backoff;
use prometheus_client::metrics::gauge::Gauge;

/// The namespace and service account of the controller, whose SPIFFE ID the
/// sidecar insists on when it talks TLS to the controller.
pub const CONTROLLER_NAMESPACE: &str = "mesh-system";
/// See [`CONTROLLER_NAMESPACE`].
pub const CONTROLLER_SERVICE_ACCOUNT: &str = "mesh-controller";

/// The trust domain a root certificate names (`spiffe://<td>` URI SAN), if any.
pub fn trust_domain_of_anchors(anchors: &[Vec<u8>]) -> Option<String> {
    anchors.iter().find_map(|der| {
        let id = svid::inspect(der).ok()?.identity?;
        let td = id.strip_prefix("spiffe://")?.trim_end_matches('/');
        (!td.is_empty() && !td.contains('/')).then(|| td.to_string())
    })
}

/// How to reach the controller: its URI (always `http://` towards tonic, TLS is
/// done by our own connector) and, for `https://`, the identity it must prove.
#[derive(Debug, Clone)]
pub struct Controller {
    /// What the operator gave, for logs.
    pub display: String,
    uri: String,
    secure: bool,
    expected: Arc<str>,
    tls: Arc<TlsState>,
}

impl Controller {
    /// A controller at `addr` (`http://`, `https://` or bare `host:port`).
    pub fn new(addr: &str, tls: Arc<TlsState>, trust_domain: &str) -> anyhow::Result<Controller> {
        let (secure, rest) = if let Some(r) = addr.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = addr.strip_prefix("http://") {
            (false, r)
        } else if addr.contains("://") {
            anyhow::bail!("xDS address {addr:?}: only http:// and https:// are supported");
        } else {
            (false, addr)
        };
        let uri = format!("http://{}", rest.trim_end_matches('/'));
        uri.parse::<Uri>()
            .with_context(|| format!("bad xDS address {addr:?}"))?;
        if secure && tls.bundle().anchors.is_empty() {
            anyhow::bail!(
                "xDS address {addr} is https:// but no trust anchors were given (--trust-anchors)"
            );
        }
        let expected = Identity::new(
            trust_domain,
            CONTROLLER_NAMESPACE,
            CONTROLLER_SERVICE_ACCOUNT,
        )
        .to_string();
        Ok(Controller {
            display: addr.to_string(),
            uri,
            secure,
            expected: expected.into(),
            tls,
        })
    }

    /// Whether the controller is reached over TLS.
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// A gRPC channel to the controller. Over TLS, the client certificate is
    /// presented when `client_cert` is set and one is held (xDS); `Certify` goes
    /// without one.
    pub async fn channel(&self, client_cert: bool) -> anyhow::Result<Channel> {
        let endpoint = tonic::transport::Endpoint::from_shared(self.uri.clone())
            .with_context(|| format!("bad xDS address {:?}", self.display))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = if self.secure {
            endpoint
                .connect_with_connector(ControllerConnector {
                    tls: self.tls.clone(),
                    expected: self.expected.clone(),
                    client_cert,
                })
                .await
        } else {
            endpoint.connect().await
        };
        channel.with_context(|| format!("cannot connect to {}", self.display))
    }
}

/// Connects to the controller over TLS 1.3 and checks its SPIFFE ID.
#[derive(Clone)]
struct ControllerConnector {
    tls: Arc<TlsState>,
    expected: Arc<str>,
    client_cert: bool,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Service<Uri> for ControllerConnector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let host = uri.host().ok_or("xDS address has no host")?.to_string();
            let port = uri.port_u16().unwrap_or(443);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let tcp = TcpStream::connect((host, port)).await?;
            let _ = tcp.set_nodelay(true);
            let creds = if this.client_cert {
                this.tls.credentials()
            } else {
                None
            };
            let config = client_config(creds.as_deref(), &this.tls.bundle().anchors, &[ALPN_H2])?;
            let stream = TlsConnector::from(config)
                .connect(mesh_server_name(), tcp)
                .await
                .map_err(|e| format!("TLS handshake with the controller: {e}"))?;
            let seen = peer_identity(stream.get_ref().1.peer_certificates());
            match seen {
                Some(id) if id.to_string() == *this.expected => Ok(TokioIo::new(stream)),
                other => Err(format!(
                    "the controller at {host}:{port} is {}, expected {}",
                    other.map_or("a peer without a mesh identity".to_string(), |i| i
                        .to_string()),
                    this.expected
                )
                .into()),
            }
        })
    }
}

/// Why `Certify` failed.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// The controller refused the token.
    #[error("the controller refused the token: {0}")]
    Unauthenticated(String),
    /// Anything else (connection, server error, bad reply).
    #[error("{0}")]
    Other(String),
}

/// What [`Certifier::certify`] returns: the chain (DER, leaf first) or why not.
pub type CertifyFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Vec<u8>>, CertifyError>> + Send + 'a>>;

/// Something that signs CSRs: the controller's `Certify` over gRPC, or an
/// in-process CA in tests.
pub trait Certifier: Send + Sync + 'static {
    /// Trades `token` and `csr_der` for a certificate chain (DER, leaf first).
    fn certify<'a>(&'a self, token: &'a str, csr_der: Vec<u8>) -> CertifyFuture<'a>;
}

/// `mesh.identity.v1.Identity/Certify` on the controller.
pub struct GrpcCertifier {
    controller: Controller,
}

impl GrpcCertifier {
    /// A certifier talking to `controller`.
    pub fn new(controller: Controller) -> GrpcCertifier {
        GrpcCertifier { controller }
    }
}

impl Certifier for GrpcCertifier {
    fn certify<'a>(&'a self, token: &'a str, csr_der: Vec<u8>) -> CertifyFuture<'a> {
        use mesh_proto::identity::v1::CertifyRequest;
        use mesh_proto::identity::v1::identity_client::IdentityClient;
        Box::pin(async move {
            let channel = self
                .controller
                .channel(false)
                .await
                .map_err(|e| CertifyError::Other(format!("{e:#}")))?;
            let reply = IdentityClient::new(channel)
                .certify(CertifyRequest {
                    token: token.to_string(),
                    csr_der,
                })
                .await;
            match reply {
                Ok(r) => Ok(r.into_inner().cert_chain_der),
                Err(s) if s.code() == tonic::Code::Unauthenticated => {
                    Err(CertifyError::Unauthenticated(s.message().to_string()))
                }
                Err(s) => Err(CertifyError::Other(format!(
                    "Certify failed: {:?}: {}",
                    s.code(),
                    s.message()
                ))),
            }
        })
    }
}

/// Where the join token comes from.
#[derive(Debug, Clone)]
pub enum TokenSource {
    /// Given on the command line or in `MESH_TOKEN`.
    Inline(String),
    /// Read from a file before every `Certify` (tokens may be rotated on disk).
    File(PathBuf),
}

impl TokenSource {
    async fn read(&self) -> Result<String, CertifyError> {
        match self {
            TokenSource::Inline(t) => Ok(t.trim().to_string()),
            TokenSource::File(p) => tokio::fs::read_to_string(p)
                .await
                .map(|t| t.trim().to_string())
                .map_err(|e| CertifyError::Other(format!("cannot read {}: {e}", p.display()))),
        }
    }
}

/// Obtains and rotates the sidecar's certificate.
pub struct IdentityManager {
    /// Where certificates are installed.
    pub tls: Arc<TlsState>,
    /// Who signs them.
    pub certifier: Arc<dyn Certifier>,
    /// The join token.
    pub token: TokenSource,
    /// The namespace the certificate must name.
    pub namespace: String,
    /// The trust domain the certificate must name.
    pub trust_domain: String,
    /// `mesh_proxy_cert_expiry_timestamp_seconds` (a shared handle).
    pub cert_expiry: Gauge,
}

/// Checks a freshly issued certificate: it chains to our anchors (as a client
/// certificate: that is how peers will check it) and names our namespace and
/// trust domain.
fn check(
    creds: &Credentials,
    anchors: &[Vec<u8>],
    namespace: &str,
    trust_domain: &str,
) -> Result<(), String> {
    let id = &creds.identity;
    if id.namespace != namespace || id.trust_domain != trust_domain {
        return Err(format!(
            "the controller issued a certificate for {id}, but this sidecar runs in namespace \
             {namespace:?} of trust domain {trust_domain:?}"
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for der in anchors {
        roots
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| format!("bad trust anchor: {e}"))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        Arc::new(rustls::crypto::ring::default_provider()),
    )
    .build()
    .map_err(|e| e.to_string())?;
    let (leaf, rest) = creds.chain.split_first().ok_or("empty chain")?;
    verifier
        .verify_client_cert(leaf, rest, UnixTime::now())
        .map_err(|e| format!("the issued certificate does not chain to the trust anchors: {e}"))?;
    Ok(())
}

impl IdentityManager {
    /// One `Certify` round: fresh key, CSR, call, checks.
    pub async fn obtain(&self) -> Result<Credentials, CertifyError> {
        let token = self.token.read().await?;
        if token.is_empty() {
            return Err(CertifyError::Other("the join token is empty".into()));
        }
        let key = WorkloadKey::generate()
            .map_err(|e| CertifyError::Other(format!("cannot make a key: {e}")))?;
        let csr = key
            .csr_der()
            .map_err(|e| CertifyError::Other(format!("cannot make a CSR: {e}")))?;
        let chain = self.certifier.certify(&token, csr).await?;
        let creds = Credentials::new(chain, key.private_key_der())
            .map_err(|e| CertifyError::Other(format!("unusable certificate: {e}")))?;
        check(
            &creds,
            &self.tls.bundle().anchors,
            &self.namespace,
            &self.trust_domain,
        )
        .map_err(CertifyError::Other)?;
        Ok(creds)
    }

    /// Keeps a valid certificate installed until `shutdown` flips.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        let mut failures = 0u32;
        loop {
            let result = tokio::select! {
                r = self.obtain() => r,
                _ = crate::server::stopped(&mut shutdown) => return,
            };
            let wait = match result {
                Ok(creds) => {
                    failures = 0;
                    backoff.reset();
                    let now = mesh_identity::unix_now() as f64;
                    let lifetime = (creds.not_after as f64 - now).max(1.0);
                    let renew_in = lifetime * (0.5 + 0.2 * fastrand::f64());
                    let serial = creds
                        .chain
                        .first()
                        .and_then(|d| svid::inspect(d).ok())
                        .map(|i| i.serial)
                        .unwrap_or_default();
                    let identity = creds.identity.to_string();
                    let not_after = creds.not_after;
                    match self.tls.set_credentials(creds) {
                        Ok(()) => {
                            self.cert_expiry.set(not_after);
                            tracing::info!(
                                %identity,
                                %serial,
                                not_after,
                                renew_in_secs = format!("{renew_in:.1}"),
                                "workload certificate installed"
                            );
                            Duration::from_secs_f64(renew_in)
                        }
                        Err(e) => {
                            tracing::error!(%identity, "cannot use the issued certificate: {e}");
                            backoff.next_delay()
                        }
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let loud = failures == 1 || failures.is_multiple_of(10);
                    match &e {
                        CertifyError::Unauthenticated(msg) => tracing::error!(
                            namespace = %self.namespace,
                            failures,
                            "Certify: UNAUTHENTICATED: {msg}"
                        ),
                        CertifyError::Other(msg) if loud => {
                            tracing::warn!(failures, "Certify failed: {msg}; retrying")
                        }
                        CertifyError::Other(msg) => tracing::debug!("Certify failed: {msg}"),
                    }
                    // With a certificate about to expire, retry well within what is
                    // left of it rather than at the full backoff.
                    let mut delay = backoff.next_delay().max(Duration::from_millis(50));
                    if let Some(creds) = self.tls.credentials() {
                        let left = creds.not_after as f64 - mesh_identity::unix_now() as f64;
                        let cap = Duration::from_secs_f64((left / 4.0).max(0.1));
                        delay = delay.min(cap);
                    }
                    delay
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = crate::server::stopped(&mut shutdown) => return,
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mesh_identity::CertificateAuthority;
    use std::sync::Mutex;

    /// An in-process CA that signs every CSR for a fixed identity.
    pub(crate) struct CaCertifier {
        pub ca: Mutex<CertificateAuthority>,
        pub identity: Identity,
        pub ttl: Duration,
        pub token: String,
    }

    impl Certifier for CaCertifier {
        fn certify<'a>(&'a self, token: &'a str, csr_der: Vec<u8>) -> CertifyFuture<'a> {
            Box::pin(async move {
                if token != self.token {
                    return Err(CertifyError::Unauthenticated("bad token".into()));
                }
                let ca = self.ca.lock().unwrap();
                ca.issue(&csr_der, &self.identity, self.ttl)
                    .map(|i| i.chain_der)
                    .map_err(|e| CertifyError::Other(e.to_string()))
            })
        }
    }

    fn manager(ca: CertificateAuthority, ns: &str, token: &str) -> IdentityManager {
        let anchors = ca.trust_anchors();
        IdentityManager {
            tls: Arc::new(TlsState::new(true, Some(anchors))),
            certifier: Arc::new(CaCertifier {
                identity: Identity::new("cluster.local", "shop", "web"),
                ca: Mutex::new(ca),
                ttl: Duration::from_secs(4),
                token: "good".into(),
            }),
            token: TokenSource::Inline(token.into()),
            namespace: ns.into(),
            trust_domain: "cluster.local".into(),
            cert_expiry: Gauge::default(),
        }
    }

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap()
    }

    #[tokio::test]
    async fn obtains_checks_namespace_and_token() {
        let m = manager(ca(), "shop", "good");
        let creds = m.obtain().await.unwrap();
        assert_eq!(
            creds.identity.to_string(),
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        let m = manager(ca(), "other", "good");
        let e = m.obtain().await.unwrap_err();
        assert!(e.to_string().contains("namespace \"other\""), "{e}");
        let m = manager(ca(), "shop", "bad");
        assert!(matches!(
            m.obtain().await.unwrap_err(),
            CertifyError::Unauthenticated(_)
        ));
    }

    #[tokio::test]
    async fn refuses_certificates_from_another_ca() {
        let mut m = manager(ca(), "shop", "good");
        // Anchors of a different CA than the one that signs.
        m.tls = Arc::new(TlsState::new(true, Some(ca().trust_anchors())));
        let e = m.obtain().await.unwrap_err();
        assert!(e.to_string().contains("does not chain"), "{e}");
    }

    #[tokio::test]
    async fn rotates_before_expiry_with_fresh_keys() {
        let m = manager(ca(), "shop", "good");
        let tls = m.tls.clone();
        let (stop, rx) = watch::channel(false);
        let task = tokio::spawn(m.run(rx));
        tls.wait_for_credentials().await;
        let first = tls.credentials().unwrap();
        // Lifetime 4 s (plus the CA's back-dating): renewed within ~3 s.
        let mut renewed = None;
        for _ in 0..80 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let now = tls.credentials().unwrap();
            if !Arc::ptr_eq(&now, &first) {
                renewed = Some(now);
                break;
            }
        }
        let renewed = renewed.expect("rotated within 4 s");
        assert_ne!(renewed.chain[0], first.chain[0]);
        assert_ne!(
            renewed.key.secret_der(),
            first.key.secret_der(),
            "a fresh key each time"
        );
        stop.send_replace(true);
        task.await.unwrap();
    }

    #[test]
    fn trust_domain_from_root() {
        let ca = CertificateAuthority::generate("example.org", Duration::from_secs(60)).unwrap();
        assert_eq!(
            trust_domain_of_anchors(&ca.trust_anchors()).as_deref(),
            Some("example.org")
        );
    }
}
