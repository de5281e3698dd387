//! `mesh.identity.v1.Identity/Certify` over gRPC, served on both xDS ports.
//!
//! A request is authenticated by its token; on the TLS port, a request with an
//! empty token from a client presenting a valid mesh certificate is a renewal for
//! that certificate's identity (join tokens may expire before the workload does).
//!
//! Two kinds of token, told apart by prefix: mesh join tokens (`mesh1.…`, checked
//! here with the controller's key) and, with the Kubernetes registry, projected
//! service-account tokens (JWTs), checked by the API server through a
//! TokenReview ([`TokenReviewer`]). The mesh never parses or trusts a JWT itself:
//! the API server knows its signing keys, expiry and whether the pod still exists.

use std::sync::Arc;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};
use mesh_identity::Identity;
use mesh_proto::identity::v1::identity_server::{Identity as IdentityApi, IdentityServer};
use mesh_proto::identity::v1::{CertifyRequest, CertifyResponse};
use tonic::{Request, Response, Status};

use super::{Authority, CertifyError};

/// How join tokens start; anything else goes to the TokenReviewer, if any.
pub const JOIN_TOKEN_PREFIX: &str = "mesh1.";
/// What a service-account username looks like: `system:serviceaccount:<ns>:<sa>`.
const SERVICE_ACCOUNT_USER: &str = "system:serviceaccount:";

/// Why a Kubernetes token was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// The API server says the token is not valid (forged, expired, its pod or
    /// service account deleted, or not for our audience).
    #[error("TokenReview did not authenticate the token: {0}")]
    NotAuthenticated(String),
    /// Valid, but not for the audience the mesh requires.
    #[error("token audiences {got:?} do not include {want:?}")]
    WrongAudience {
        /// The audiences the API server reported.
        got: Vec<String>,
        /// `--token-audience`.
        want: String,
    },
    /// Valid, but for a user that is not a service account.
    #[error("token user {0:?} is not a service account (system:serviceaccount:<ns>:<sa>)")]
    NotServiceAccount(String),
    /// A namespace or service account that cannot be a SPIFFE path segment.
    #[error("{0}")]
    BadName(#[from] super::TokenRequestError),
    /// The API server could not be asked; the caller may retry.
    #[error("TokenReview request failed: {0}")]
    Unavailable(#[from] kube::Error),
}

/// Checks Kubernetes service-account tokens with the API server's TokenReview.
#[derive(Clone)]
pub struct TokenReviewer {
    api: Api<TokenReview>,
    audience: String,
    trust_domain: String,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("audience", &self.audience)
            .field("trust_domain", &self.trust_domain)
            .finish_non_exhaustive()
    }
}

impl TokenReviewer {
    /// A reviewer requiring tokens for `audience`, issuing identities in
    /// `trust_domain`. Needs RBAC `create` on `tokenreviews.authentication.k8s.io`.
    pub fn new(client: kube::Client, audience: &str, trust_domain: &str) -> Self {
        TokenReviewer {
            api: Api::all(client),
            audience: audience.to_string(),
            trust_domain: trust_domain.to_string(),
        }
    }

    /// The identity `token` proves: the API server must authenticate it, for our
    /// audience, as `system:serviceaccount:<ns>:<sa>`.
    pub async fn review(&self, token: &str) -> Result<Identity, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_string()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..Default::default()
        };
        let reviewed = self.api.create(&PostParams::default(), &review).await?;
        let status = reviewed.status.unwrap_or_default();
        if status.authenticated != Some(true) {
            return Err(ReviewError::NotAuthenticated(
                status.error.unwrap_or_else(|| "no reason given".into()),
            ));
        }
        let audiences = status.audiences.unwrap_or_default();
        if !audiences.contains(&self.audience) {
            return Err(ReviewError::WrongAudience {
                got: audiences,
                want: self.audience.clone(),
            });
        }
        let username = status.user.and_then(|u| u.username).unwrap_or_default();
        let (namespace, service_account) = username
            .strip_prefix(SERVICE_ACCOUNT_USER)
            .and_then(|rest| rest.split_once(':'))
            .ok_or_else(|| ReviewError::NotServiceAccount(username.clone()))?;
        super::check_label("namespace", namespace)?;
        super::check_label("service_account", service_account)?;
        Ok(Identity::new(
            &self.trust_domain,
            namespace,
            service_account,
        ))
    }
}

/// The `Certify` service: token in, certificate for the token's identity out.
#[derive(Debug, Clone)]
pub struct CertifyService {
    authority: Arc<Authority>,
    reviewer: Option<TokenReviewer>,
}

impl CertifyService {
    /// A service signing with `authority`, accepting join tokens.
    pub fn new(authority: Arc<Authority>) -> Self {
        CertifyService {
            authority,
            reviewer: None,
        }
    }

    /// Also accepts Kubernetes service-account tokens, checked by `reviewer`.
    pub fn with_token_review(mut self, reviewer: TokenReviewer) -> Self {
        self.reviewer = Some(reviewer);
        self
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
        let mut renewal = peer.identity.clone().filter(|_| token.is_empty());
        if renewal.is_none()
            && !token.is_empty()
            && !token.starts_with(JOIN_TOKEN_PREFIX)
            && let Some(reviewer) = &self.reviewer
        {
            match reviewer.review(&token).await {
                // The API server vouched for the identity: sign exactly as for a
                // renewal, whose proof (a mesh certificate) is equally external.
                Ok(identity) => {
                    tracing::debug!(%identity, peer = %peer, "service-account token accepted by TokenReview");
                    renewal = Some(identity);
                }
                Err(ReviewError::Unavailable(e)) => {
                    tracing::error!(peer = %peer, error = %e, "Certify: cannot reach the Kubernetes API for a TokenReview");
                    return Err(Status::unavailable(
                        "cannot check the token with the Kubernetes API now; retry",
                    ));
                }
                Err(reason) => {
                    tracing::warn!(peer = %peer, %reason, "Certify refused: Kubernetes token rejected");
                    return Err(Status::unauthenticated(
                        "token rejected: not a valid service-account token for this mesh's audience",
                    ));
                }
            }
        }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use mesh_identity::csr::WorkloadKey;
    use serde_json::json;

    use super::*;

    /// An API server that answers TokenReviews as a real one does for a few
    /// known tokens, and counts the reviews it was asked for.
    fn fake_api(calls: Arc<AtomicUsize>) -> kube::Client {
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            let calls = calls.clone();
            async move {
                assert_eq!(req.method(), http::Method::POST);
                assert_eq!(
                    req.uri().path(),
                    "/apis/authentication.k8s.io/v1/tokenreviews"
                );
                calls.fetch_add(1, Ordering::SeqCst);
                let body = req.into_body().collect().await?.to_bytes();
                let review: serde_json::Value = serde_json::from_slice(&body)?;
                assert_eq!(review["spec"]["audiences"], json!(["mesh"]));
                let sa = |user: &str, audiences: serde_json::Value| {
                    json!({"authenticated": true, "audiences": audiences,
                           "user": {"username": user, "uid": "u1",
                                    "groups": ["system:serviceaccounts", "system:authenticated"]}})
                };
                let status = match review["spec"]["token"].as_str().unwrap_or_default() {
                    "sa-token" => sa("system:serviceaccount:shop:catalog", json!(["mesh"])),
                    "api-token" => sa(
                        "system:serviceaccount:shop:catalog",
                        json!(["https://kubernetes.default.svc.cluster.local"]),
                    ),
                    "user-token" => sa("alice", json!(["mesh"])),
                    "weird-sa" => sa("system:serviceaccount:shop:Cat.Alog", json!(["mesh"])),
                    _ => {
                        json!({"authenticated": false, "error": "invalid bearer token, token lookup failed"})
                    }
                };
                let response = json!({
                    "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                    "metadata": {"creationTimestamp": null},
                    "spec": review["spec"], "status": status,
                });
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    http::Response::builder()
                        .status(201)
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(response.to_string())))
                        .unwrap(),
                )
            }
        });
        kube::Client::new(service, "default")
    }

    fn service(calls: Arc<AtomicUsize>) -> (CertifyService, Arc<Authority>) {
        let authority = crate::identity::tests::authority(Duration::from_secs(60));
        let reviewer = TokenReviewer::new(fake_api(calls), "mesh", authority.trust_domain());
        (
            CertifyService::new(authority.clone()).with_token_review(reviewer),
            authority,
        )
    }

    async fn certify(svc: &CertifyService, token: &str) -> Result<Identity, Status> {
        let csr_der = WorkloadKey::generate().unwrap().csr_der().unwrap();
        let response = svc
            .certify(Request::new(CertifyRequest {
                token: token.to_string(),
                csr_der,
            }))
            .await?;
        Ok(mesh_identity::svid::identity_of(&response.into_inner().cert_chain_der[0]).unwrap())
    }

    #[tokio::test]
    async fn service_account_tokens_are_reviewed() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (svc, _) = service(calls.clone());
        let id = certify(&svc, "sa-token").await.unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/shop/sa/catalog");
        for (token, why) in [
            ("forged", "not authenticated"),
            ("api-token", "wrong audience"),
            ("user-token", "not a service account"),
            ("weird-sa", "not a SPIFFE-safe name"),
        ] {
            let err = certify(&svc, token).await.unwrap_err();
            assert_eq!(err.code(), tonic::Code::Unauthenticated, "{why}");
        }
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn join_tokens_still_work_without_asking_the_api() {
        let calls = Arc::new(AtomicUsize::new(0));
        let (svc, authority) = service(calls.clone());
        let (want, token) = authority.create_token("web", "ui", Some(60)).unwrap();
        assert_eq!(certify(&svc, &token).await.unwrap(), want);
        let bad = certify(&svc, "mesh1.garbage.sig").await.unwrap_err();
        assert_eq!(bad.code(), tonic::Code::Unauthenticated);
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "mesh1. tokens never reach TokenReview"
        );
    }

    #[tokio::test]
    async fn an_unreachable_api_is_unavailable_not_unauthenticated() {
        let authority = crate::identity::tests::authority(Duration::from_secs(60));
        let down = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
            Err::<http::Response<Full<Bytes>>, _>(std::io::Error::other("connection refused"))
        });
        let reviewer =
            TokenReviewer::new(kube::Client::new(down, "default"), "mesh", "cluster.local");
        let svc = CertifyService::new(authority).with_token_review(reviewer);
        let err = certify(&svc, "sa-token").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn without_a_reviewer_only_join_tokens_count() {
        let authority = crate::identity::tests::authority(Duration::from_secs(60));
        let svc = CertifyService::new(authority);
        let err = certify(&svc, "sa-token").await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
    }
}
