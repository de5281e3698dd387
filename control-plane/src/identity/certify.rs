//! `mesh.identity.v1.Identity/Certify` over gRPC, served on both xDS ports.
//!
//! A request is authenticated by its token; on the TLS port, a request with an
//! empty token from a client presenting a valid mesh certificate is a renewal for
//! that certificate's identity (join tokens may expire before the workload does).

use std::sync::Arc;

use mesh_proto::identity::v1::identity_server::{Identity as IdentityApi, IdentityServer};
use mesh_proto::identity::v1::{CertifyRequest, CertifyResponse};
use tonic::{Request, Response, Status};

use super::{Authority, CertifyError};

/// The `Certify` service: token in, certificate for the token's identity out.
#[derive(Debug, Clone)]
pub struct CertifyService {
    authority: Arc<Authority>,
}

impl CertifyService {
    /// A service signing with `authority`.
    pub fn new(authority: Arc<Authority>) -> Self {
        CertifyService { authority }
    }

    /// The tonic service to mount next to ADS.
    pub fn into_service(self) -> IdentityServer<Self> {
        IdentityServer::new(self)
    }
}

#[tonic::async_trait]
impl IdentityApi for CertifyService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let peer = crate::secure::Peer::of(&request);
        let CertifyRequest { token, csr_der } = request.into_inner();
        let authority = self.authority.clone();
        // No token, but a verified client certificate on the TLS port: a renewal
        // for the certificate's identity.
        let renewal = peer.identity.clone().filter(|_| token.is_empty());
        // Signing is CPU work; keep it off the reactor threads.
        let result = tokio::task::spawn_blocking(move || match renewal {
            Some(identity) => authority
                .renew(&identity, &csr_der)
                .map(|issued| (identity, issued)),
            None => authority.certify(&token, &csr_der),
        })
        .await
        .map_err(|e| Status::internal(format!("signing task failed: {e}")))?;
        match result {
            Ok((identity, issued)) => {
                tracing::info!(%identity, peer = %peer, not_after = issued.not_after, "issued workload certificate");
                Ok(Response::new(CertifyResponse {
                    cert_chain_der: issued.chain_der,
                    valid_until: issued.not_after,
                }))
            }
            Err(CertifyError::Unauthenticated(reason)) => {
                // Precise in the log, coarse on the wire: a prober learns nothing.
                tracing::warn!(peer = %peer, %reason, "Certify refused: bad token");
                Err(Status::unauthenticated(
                    "token rejected: not a valid, unexpired mesh token for this trust domain",
                ))
            }
            Err(CertifyError::BadCsr(reason)) => {
                tracing::warn!(peer = %peer, %reason, "Certify refused: bad CSR");
                Err(Status::invalid_argument(format!(
                    "csr_der is not a valid PKCS#10 request signed by its key: {reason}"
                )))
            }
            Err(e @ CertifyError::Internal(_)) => {
                tracing::error!(peer = %peer, error = %e, "Certify failed");
                Err(Status::internal(e.to_string()))
            }
        }
    }
}
