//! rustls configurations for mutual TLS between mesh workloads.
//!
//! Peers are verified by chain (against the mesh trust bundle) and must present a
//! SPIFFE ID; which identity is acceptable is decided by the caller after the
//! handshake (the client knows the identity its endpoint should have, the server
//! hands the client's identity to policy). TLS 1.3 only.

use std::sync::Arc;

use mesh_model::Identity;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig, SignatureScheme};

/// ALPN for HTTP/2 between sidecars.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A trust anchor is not a usable certificate.
    #[error("bad trust anchor: {0}")]
    Anchor(String),
    /// The certificate and key do not make a usable identity.
    #[error("bad certificate or key: {0}")]
    Credentials(String),
}

/// A workload's certificate chain and private key.
#[derive(Debug)]
pub struct Credentials {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key (made by the workload itself).
    pub key: PrivateKeyDer<'static>,
    /// The identity in the leaf.
    pub identity: Identity,
    /// Leaf expiry, Unix seconds.
    pub not_after: i64,
}

impl Credentials {
    /// Credentials from a chain (leaf first, DER) and key; reads the identity and
    /// expiry from the leaf.
    pub fn new(chain: Vec<Vec<u8>>, key: PrivateKeyDer<'static>) -> Result<Self, TlsError> {
        let leaf = chain
            .first()
            .ok_or_else(|| TlsError::Credentials("empty certificate chain".into()))?;
        let identity =
            crate::svid::identity_of(leaf).map_err(|e| TlsError::Credentials(e.to_string()))?;
        let not_after = crate::svid::inspect(leaf)
            .map_err(|e| TlsError::Credentials(e.to_string()))?
            .not_after;
        Ok(Credentials {
            chain: chain.into_iter().map(CertificateDer::from).collect(),
            key,
            identity,
            not_after,
        })
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses PEM trust anchors (a trust bundle) into DER.
pub fn anchors_from_pem(pem: &str) -> Result<Vec<Vec<u8>>, TlsError> {
    let mut out = Vec::new();
    for item in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let item = item.map_err(|e| TlsError::Anchor(e.to_string()))?;
        if item.label == "CERTIFICATE" {
            out.push(item.contents);
        }
    }
    if out.is_empty() {
        return Err(TlsError::Anchor("no CERTIFICATE in trust bundle".into()));
    }
    Ok(out)
}

fn root_store(anchors: &[Vec<u8>]) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for der in anchors {
        store
            .add(CertificateDer::from(der.clone()))
            .map_err(|e| TlsError::Anchor(e.to_string()))?;
    }
    Ok(store)
}

/// Whether a server asks clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Mutual TLS: no certificate, no connection.
    Required,
    /// Certificates are verified when sent (the controller's port, where a
    /// workload without a certificate yet asks for one).
    Optional,
}

/// A server configuration presenting `creds` and verifying client certificates
/// against `anchors`.
pub fn server_config(
    creds: &Credentials,
    anchors: &[Vec<u8>],
    auth: ClientAuth,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(root_store(anchors)?), provider());
    let builder = match auth {
        ClientAuth::Required => builder,
        ClientAuth::Optional => builder.allow_unauthenticated(),
    };
    let verifier = builder
        .build()
        .map_err(|e| TlsError::Anchor(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Credentials(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(creds.chain.clone(), creds.key.clone_key())
        .map_err(|e| TlsError::Credentials(e.to_string()))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration verifying the server's chain against `anchors` and that
/// it carries a SPIFFE ID; presents `creds` when given.
pub fn client_config(
    creds: Option<&Credentials>,
    anchors: &[Vec<u8>],
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = Arc::new(SpiffeServerVerifier::new(anchors)?);
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Credentials(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match creds {
        Some(c) => builder
            .with_client_auth_cert(c.chain.clone(), c.key.clone_key())
            .map_err(|e| TlsError::Credentials(e.to_string()))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// The SPIFFE identity of a peer's leaf certificate.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<Identity> {
    crate::svid::identity_of(certs?.first()?).ok()
}

/// The server name a client sends: mesh peers are checked by SPIFFE ID, not by
/// DNS name, so any stable name will do.
pub fn mesh_server_name() -> ServerName<'static> {
    ServerName::try_from("mesh.local").expect("valid DNS name")
}

/// Verifies a server by chain and SPIFFE ID presence (not by DNS name: mesh
/// certificates carry URI SANs).
#[derive(Debug)]
struct SpiffeServerVerifier {
    anchors: Vec<rustls::pki_types::TrustAnchor<'static>>,
    algs: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    fn new(anchors: &[Vec<u8>]) -> Result<Self, TlsError> {
        let anchors = anchors
            .iter()
            .map(|der| {
                webpki::anchor_from_trusted_cert(&CertificateDer::from(der.as_slice()))
                    .map(|a| a.to_owned())
                    .map_err(|e| TlsError::Anchor(format!("{e:?}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(SpiffeServerVerifier {
            anchors,
            algs: provider().signature_verification_algorithms,
        })
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| rustls::Error::General(format!("bad certificate: {e:?}")))?;
        cert.verify_for_usage(
            self.algs.all,
            &self.anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
                Arc::new(e),
            )))
        })?;
        crate::svid::identity_of(end_entity)
            .map_err(|e| rustls::Error::General(format!("peer is not a mesh workload: {e}")))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;
    use crate::csr::WorkloadKey;
    use rustls::{ClientConnection, ServerConnection};
    use std::time::Duration;

    fn creds(ca: &CertificateAuthority, sa: &str) -> Credentials {
        let key = WorkloadKey::generate().unwrap();
        let id = Identity::new("cluster.local", "shop", sa);
        let issued = ca
            .issue(&key.csr_der().unwrap(), &id, Duration::from_secs(60))
            .unwrap();
        Credentials::new(issued.chain_der, key.private_key_der()).unwrap()
    }

    /// Runs a handshake in memory; returns what each side learned of the other.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
    ) -> Result<(Option<Identity>, Option<Identity>), rustls::Error> {
        let mut c = ClientConnection::new(client, mesh_server_name()).unwrap();
        let mut s = ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                break;
            }
        }
        assert!(
            !c.is_handshaking() && !s.is_handshaking(),
            "handshake did not finish"
        );
        Ok((
            peer_identity(c.peer_certificates()),
            peer_identity(s.peer_certificates()),
        ))
    }

    fn ca() -> CertificateAuthority {
        CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap()
    }

    #[test]
    fn mutual_tls_exchanges_identities() {
        let ca = ca();
        let anchors = ca.trust_anchors();
        let (a, b) = (creds(&ca, "web"), creds(&ca, "catalog"));
        let client = client_config(Some(&a), &anchors, &[ALPN_H2]).unwrap();
        let server = server_config(&b, &anchors, ClientAuth::Required, &[ALPN_H2]).unwrap();
        let (seen_server, seen_client) = handshake(client, server).unwrap();
        assert_eq!(seen_server, Some(b.identity));
        assert_eq!(seen_client, Some(a.identity));
    }

    #[test]
    fn strangers_are_refused() {
        let (ca, other) = (ca(), self::ca());
        let anchors = ca.trust_anchors();
        let server =
            server_config(&creds(&ca, "catalog"), &anchors, ClientAuth::Required, &[]).unwrap();
        // No client certificate.
        let anonymous = client_config(None, &anchors, &[]).unwrap();
        assert!(handshake(anonymous, server.clone()).is_err());
        // A client certificate from another CA.
        let foreign = client_config(Some(&creds(&other, "web")), &anchors, &[]).unwrap();
        assert!(handshake(foreign, server).is_err());
        // A server certificate from another CA.
        let impostor = server_config(
            &creds(&other, "catalog"),
            &other.trust_anchors(),
            ClientAuth::Optional,
            &[],
        )
        .unwrap();
        let client = client_config(Some(&creds(&ca, "web")), &anchors, &[]).unwrap();
        assert!(handshake(client, impostor).is_err());
    }

    #[test]
    fn optional_client_auth_admits_anonymous_clients() {
        let ca = ca();
        let anchors = ca.trust_anchors();
        let server =
            server_config(&creds(&ca, "ctl"), &anchors, ClientAuth::Optional, &[]).unwrap();
        let (_, client_id) =
            handshake(client_config(None, &anchors, &[]).unwrap(), server).unwrap();
        assert_eq!(client_id, None);
    }

    #[test]
    fn a_bundle_with_two_roots_trusts_both() {
        let mut ca = ca();
        let old = creds(&ca, "web");
        ca.add_root(Duration::from_secs(3600)).unwrap();
        ca.activate_newest().unwrap();
        let new = creds(&ca, "catalog");
        let both = ca.trust_anchors();
        assert_eq!(both.len(), 2);
        let server = server_config(&new, &both, ClientAuth::Required, &[]).unwrap();
        assert!(handshake(client_config(Some(&old), &both, &[]).unwrap(), server).is_ok());
    }
}
