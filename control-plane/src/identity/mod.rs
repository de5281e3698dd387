//! The controller's side of workload identity: the CA, join tokens, `Certify`, the
//! controller's own serving certificate and root rotation.
//!
//! [`Authority`] owns the CA (behind a lock: rotation mutates it while `Certify`
//! reads it) and publishes the trust bundle on a watch channel that the snapshot
//! publisher turns into the SDS `ROOTCA` secret.

pub mod certify;
pub mod kube_store;
pub mod leader;
pub mod rotation;
pub mod serving;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use mesh_identity::{
    CaError, CertificateAuthority, Identity, IssuedCertificate, TokenError, TokenKey,
};
use tokio::sync::{Notify, watch};

use crate::config::ControllerArgs;
use crate::metrics::Metrics;
pub use rotation::RotationPhase;

/// Longest join token `POST /tokens` signs: a year.
pub const MAX_TOKEN_TTL_SECS: u64 = 365 * 24 * 3600;
/// Join token lifetime when the request names none: a day.
pub const DEFAULT_TOKEN_TTL_SECS: u64 = 24 * 3600;

/// Why `Certify` refused.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    /// The token is malformed, forged, expired or for another trust domain.
    #[error("token rejected: {0}")]
    Unauthenticated(#[from] TokenError),
    /// The CSR does not parse or its signature does not verify.
    #[error("{0}")]
    BadCsr(String),
    /// Signing failed for a reason that is not the caller's.
    #[error("signing failed: {0}")]
    Internal(String),
}

/// Why a token request was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenRequestError {
    /// A namespace or service account that is not an RFC 1123 label.
    #[error("{field} {value:?} is not a valid name: {reason}")]
    BadName {
        /// Which field.
        field: &'static str,
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A lifetime of zero or beyond [`MAX_TOKEN_TTL_SECS`].
    #[error("ttl_seconds must be between 1 and {MAX_TOKEN_TTL_SECS}, got {0}")]
    BadTtl(u64),
}

/// Checks that `value` is an RFC 1123 label (what Kubernetes names and SPIFFE path
/// segments in the mesh must be).
pub fn check_label(field: &'static str, value: &str) -> Result<(), TokenRequestError> {
    let bad = |reason| {
        Err(TokenRequestError::BadName {
            field,
            value: value.to_string(),
            reason,
        })
    };
    if value.is_empty() {
        return bad("empty");
    }
    if value.len() > 63 {
        return bad("longer than 63 characters");
    }
    if !value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return bad("only lowercase letters, digits and '-' are allowed");
    }
    if value.starts_with('-') || value.ends_with('-') {
        return bad("must start and end with a letter or digit");
    }
    Ok(())
}

/// Where the CA came from, which decides what rotation may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CaSource {
    /// Self-signed root kept in `--ca-dir`.
    Directory,
    /// Self-signed root in memory only.
    Memory,
    /// The user's CA (`--ca-cert`/`--ca-key`).
    User,
    /// Self-signed root kept in a Kubernetes Secret, shared by every replica;
    /// the elected leader creates and rotates it.
    KubernetesSecret,
}

/// The CA, the token key and the trust bundle they publish.
pub struct Authority {
    ca: RwLock<CertificateAuthority>,
    tokens: TokenKey,
    trust_domain: String,
    source: CaSource,
    dir: Option<PathBuf>,
    /// Lifetime of workload (and the controller's serving) certificates.
    pub workload_ttl: Duration,
    root_ttl: Duration,
    rotation_grace: Duration,
    bundle: watch::Sender<Arc<str>>,
    phase: Mutex<RotationPhase>,
    /// Woken when the serving certificate must be re-issued now (new signer).
    serving_refresh: Notify,
    metrics: Arc<Metrics>,
    /// The Kubernetes Secret the CA is kept in, with the leader election.
    secret: Option<kube_store::SecretStore>,
}

impl std::fmt::Debug for Authority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authority")
            .field("trust_domain", &self.trust_domain)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Authority {
    /// Loads or creates the CA and token key as the flags say.
    pub fn from_args(args: &ControllerArgs, metrics: Arc<Metrics>) -> anyhow::Result<Arc<Self>> {
        let td = args.trust_domain.as_str();
        let (ca, source) = match (&args.ca_cert, &args.ca_key, &args.ca_dir) {
            (Some(cert), Some(key), _) => {
                let cert_pem = std::fs::read_to_string(cert)
                    .with_context(|| format!("cannot read --ca-cert {}", cert.display()))?;
                let key_pem = std::fs::read_to_string(key)
                    .with_context(|| format!("cannot read --ca-key {}", key.display()))?;
                let ca =
                    CertificateAuthority::from_pem(td, &cert_pem, &key_pem).with_context(|| {
                        format!("--ca-cert {} / --ca-key {}", cert.display(), key.display())
                    })?;
                tracing::info!(cert = %cert.display(), "signing with the user-provided CA");
                (ca, CaSource::User)
            }
            (_, _, Some(dir)) => {
                let ca = CertificateAuthority::load_or_create(dir, td, args.root_cert_ttl)
                    .with_context(|| format!("--ca-dir {}", dir.display()))?;
                tracing::info!(dir = %dir.display(), signers = ca.signers(), "CA loaded");
                (ca, CaSource::Directory)
            }
            _ => {
                tracing::warn!(
                    "no --ca-dir: the CA and token key live in memory and will not survive a restart \
                     (proxies will stop trusting a restarted controller)"
                );
                (
                    CertificateAuthority::generate(td, args.root_cert_ttl)?,
                    CaSource::Memory,
                )
            }
        };
        let tokens = match &args.ca_dir {
            Some(dir) => TokenKey::load_or_create(dir)
                .with_context(|| format!("token key in --ca-dir {}", dir.display()))?,
            None => {
                if source == CaSource::User {
                    tracing::warn!(
                        "no --ca-dir: the join-token key lives in memory; tokens die with this process"
                    );
                }
                TokenKey::generate()
            }
        };
        Ok(Arc::new(Self::new(
            ca,
            tokens,
            source,
            args.ca_dir
                .clone()
                .filter(|_| source == CaSource::Directory),
            args.workload_cert_ttl,
            args.root_cert_ttl,
            args.rotation_grace,
            metrics,
        )))
    }

    /// An authority over an existing CA and token key (tests, embedding).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        ca: CertificateAuthority,
        tokens: TokenKey,
        source: CaSource,
        dir: Option<PathBuf>,
        workload_ttl: Duration,
        root_ttl: Duration,
        rotation_grace: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        metrics.ca_root_expiry.set(ca.root_expiry());
        let (bundle, _) = watch::channel(Arc::from(ca.trust_bundle_pem()));
        Authority {
            trust_domain: ca.trust_domain().to_string(),
            ca: RwLock::new(ca),
            tokens,
            source,
            dir,
            workload_ttl,
            root_ttl,
            rotation_grace,
            bundle,
            phase: Mutex::new(RotationPhase::Idle {
                last_completed_unix: None,
            }),
            serving_refresh: Notify::new(),
            metrics,
            secret: None,
        }
    }

    /// The trust domain identities are issued in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Where the CA came from.
    pub fn source(&self) -> CaSource {
        self.source
    }

    /// The trust bundle (PEM), updated on every root change.
    pub fn bundle(&self) -> watch::Receiver<Arc<str>> {
        self.bundle.subscribe()
    }

    /// The current trust bundle (PEM).
    pub fn bundle_pem(&self) -> Arc<str> {
        self.bundle.borrow().clone()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, CertificateAuthority> {
        // A panic while signing cannot leave the CA half-changed: mutations are
        // whole-value replacements.
        self.ca.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, CertificateAuthority> {
        self.ca.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Authenticates `token` and signs a certificate for its identity with the key
    /// in `csr_der`. The CSR's names, CA bit and extensions are ignored.
    pub fn certify(
        &self,
        token: &str,
        csr_der: &[u8],
    ) -> Result<(Identity, IssuedCertificate), CertifyError> {
        let claims = self
            .tokens
            .verify(token, &self.trust_domain, mesh_identity::unix_now())?;
        let identity = claims.identity();
        let issued = self.sign(csr_der, &identity)?;
        Ok((identity, issued))
    }

    /// Renews a certificate for `identity`, which the caller proved by presenting
    /// a valid certificate for it on the TLS port. Lets a sidecar rotate its
    /// certificate after its join token has expired.
    pub fn renew(
        &self,
        identity: &Identity,
        csr_der: &[u8],
    ) -> Result<IssuedCertificate, CertifyError> {
        if identity.trust_domain != self.trust_domain {
            return Err(CertifyError::Unauthenticated(TokenError::WrongTrustDomain(
                identity.trust_domain.clone(),
            )));
        }
        self.sign(csr_der, identity)
    }

    fn sign(&self, csr_der: &[u8], identity: &Identity) -> Result<IssuedCertificate, CertifyError> {
        let issued = self
            .read()
            .issue(csr_der, identity, self.workload_ttl)
            .map_err(|e| match e {
                CaError::BadCsr(reason) => CertifyError::BadCsr(reason),
                other => CertifyError::Internal(other.to_string()),
            })?;
        self.metrics.ca_certificates_issued.inc();
        Ok(issued)
    }

    /// Signs a join token for `namespace`/`service_account`.
    pub fn create_token(
        &self,
        namespace: &str,
        service_account: &str,
        ttl_secs: Option<u64>,
    ) -> Result<(Identity, String), TokenRequestError> {
        check_label("namespace", namespace)?;
        check_label("service_account", service_account)?;
        let ttl = ttl_secs.unwrap_or(DEFAULT_TOKEN_TTL_SECS);
        if ttl == 0 || ttl > MAX_TOKEN_TTL_SECS {
            return Err(TokenRequestError::BadTtl(ttl));
        }
        let identity = Identity::new(&self.trust_domain, namespace, service_account);
        let token = self.tokens.sign(&identity, ttl);
        Ok((identity, token))
    }

    /// The controller's own serving identity.
    pub fn controller_identity(&self) -> Identity {
        Identity::new(&self.trust_domain, "mesh-system", "mesh-controller")
    }

    /// A fresh serving certificate and key for the controller's TLS port.
    pub fn serving_credentials(&self) -> anyhow::Result<mesh_identity::tls::Credentials> {
        let (issued, key) = self.read().issue_server(
            &self.controller_identity(),
            &[
                "mesh-controller",
                "mesh-controller.mesh-system.svc",
                "localhost",
            ],
            self.workload_ttl,
        )?;
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(key.into());
        Ok(mesh_identity::tls::Credentials::new(issued.chain_der, key)?)
    }

    /// Writes the CA to its directory or Secret (if it has one) and publishes the
    /// bundle. With a Secret, a replica that is no longer the leader (or lost a
    /// race for the Secret) fails here instead of overwriting the leader's state.
    async fn persist_and_publish(&self) -> anyhow::Result<()> {
        let json = {
            let ca = self.read();
            if let Some(dir) = &self.dir {
                ca.save(dir)?;
            }
            self.secret.as_ref().map(|_| ca.to_json())
        };
        if let (Some(store), Some(json)) = (&self.secret, json) {
            store.save(json).await?;
        }
        self.publish();
        Ok(())
    }

    /// Publishes the bundle and expiry of the CA now held.
    fn publish(&self) {
        let (bundle, expiry) = {
            let ca = self.read();
            (ca.trust_bundle_pem(), ca.root_expiry())
        };
        self.metrics.ca_root_expiry.set(expiry);
        self.bundle.send_if_modified(|current| {
            if **current == *bundle {
                false
            } else {
                *current = Arc::from(bundle);
                true
            }
        });
    }

    /// Leader election as this replica sees it; `None` without a CA Secret
    /// (a lone controller always decides alone).
    pub fn leadership(&self) -> Option<leader::Leadership> {
        self.secret.as_ref().map(|s| s.leadership())
    }

    /// What `/debug/ca` shows.
    pub fn debug(&self) -> CaDebug {
        let ca = self.read();
        let roots = ca
            .trust_anchors()
            .iter()
            .filter_map(|der| mesh_identity::svid::inspect(der).ok())
            .map(|i| RootInfo {
                subject: i.subject,
                serial: i.serial,
                not_after: i.not_after,
            })
            .collect();
        CaDebug {
            trust_domain: self.trust_domain.clone(),
            source: self.source,
            signers: ca.signers(),
            roots,
            root_expiry: ca.root_expiry(),
            workload_cert_ttl_seconds: self.workload_ttl.as_secs(),
            rotation: self.phase(),
            leader: self.leadership().map(|l| l.leader),
            holder: self.leadership().and_then(|l| l.holder),
        }
    }

    /// The rotation phase now.
    pub fn phase(&self) -> RotationPhase {
        self.phase.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_phase(&self, phase: RotationPhase) {
        tracing::info!(?phase, "CA rotation phase");
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }
}

/// One trust anchor, for operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RootInfo {
    /// Subject DN.
    pub subject: String,
    /// Serial, hex.
    pub serial: String,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

/// `/debug/ca`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CaDebug {
    /// Trust domain.
    pub trust_domain: String,
    /// Where the CA came from.
    pub source: CaSource,
    /// Signing CAs held (2 during a rotation).
    pub signers: usize,
    /// Trust anchors in the bundle.
    pub roots: Vec<RootInfo>,
    /// Earliest root expiry, Unix seconds.
    pub root_expiry: i64,
    /// Lifetime of workload certificates.
    pub workload_cert_ttl_seconds: u64,
    /// Where a root rotation stands.
    pub rotation: RotationPhase,
    /// With the CA in a Kubernetes Secret: whether this replica is the leader
    /// (the only one that creates or rotates the root).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub leader: Option<bool>,
    /// With the CA in a Kubernetes Secret: who holds the leader Lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder: Option<String>,
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mesh_identity::csr::WorkloadKey;

    pub(crate) fn authority(ttl: Duration) -> Arc<Authority> {
        let ca =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        Arc::new(Authority::new(
            ca,
            TokenKey::generate(),
            CaSource::Memory,
            None,
            ttl,
            Duration::from_secs(3600),
            Duration::from_millis(300),
            Arc::new(Metrics::default()),
        ))
    }

    #[test]
    fn labels() {
        for good in ["a", "shop", "a-1", "0"] {
            assert!(check_label("namespace", good).is_ok(), "{good}");
        }
        let long = "a".repeat(64);
        for bad in ["", "A", "a_b", "-a", "a-", "a/b", "a.b", long.as_str()] {
            assert!(check_label("namespace", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn certify_issues_the_token_identity_and_counts() {
        let a = authority(Duration::from_secs(60));
        let (id, token) = a.create_token("shop", "catalog", Some(60)).unwrap();
        let csr = WorkloadKey::generate().unwrap().csr_der().unwrap();
        let (got, issued) = a.certify(&token, &csr).unwrap();
        assert_eq!(got, id);
        assert_eq!(
            mesh_identity::svid::identity_of(&issued.chain_der[0]).unwrap(),
            id
        );
        assert_eq!(a.metrics.ca_certificates_issued.get(), 1);
        assert!(matches!(
            a.certify("garbage", &csr),
            Err(CertifyError::Unauthenticated(_))
        ));
        let forged = TokenKey::generate().sign(&id, 60);
        assert!(matches!(
            a.certify(&forged, &csr),
            Err(CertifyError::Unauthenticated(TokenError::BadSignature))
        ));
        assert!(matches!(
            a.certify(&token, b"junk"),
            Err(CertifyError::BadCsr(_))
        ));
        assert_eq!(
            a.metrics.ca_certificates_issued.get(),
            1,
            "refusals issue nothing"
        );
        assert!(matches!(
            a.create_token("shop", "catalog", Some(0)),
            Err(TokenRequestError::BadTtl(0))
        ));
        assert!(a.create_token("Shop", "catalog", None).is_err());
    }

    #[test]
    fn serving_credentials_carry_the_controller_identity() {
        let a = authority(Duration::from_secs(60));
        let creds = a.serving_credentials().unwrap();
        assert_eq!(creds.identity, a.controller_identity());
    }
}
