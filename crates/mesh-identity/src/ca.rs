//! The mesh CA: signs short-lived workload certificates for authenticated
//! identities, never for what a CSR asks.
//!
//! It holds one or more signers and a trust bundle. A root rotation adds a new root
//! to the bundle, switches signing to it once every proxy trusts it, and drops the old
//! root once every certificate it signed has expired: no step breaks a connection.

use std::path::Path;
use std::time::Duration;

use mesh_model::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// Why the CA refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The CSR does not parse or its signature does not verify.
    #[error("invalid CSR: {0}")]
    BadCsr(String),
    /// A CA file or key is unusable.
    #[error("CA {what}: {reason}")]
    Config {
        /// Which file or setting.
        what: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Reading or writing the CA directory failed.
    #[error("CA storage {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Certificate generation failed.
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// A signed workload certificate.
#[derive(Debug, Clone)]
pub struct IssuedCertificate {
    /// The leaf first, then intermediates up to (not including) the root.
    pub chain_der: Vec<Vec<u8>>,
    /// Expiry, Unix seconds.
    pub not_after: i64,
}

/// One signing CA: its certificate, key and the chain above it.
#[derive(Serialize, Deserialize)]
struct Signer {
    cert_pem: String,
    key_pem: String,
    /// Certificates between this CA and the root (PEM), appended to every leaf.
    #[serde(default)]
    chain_pem: Vec<String>,
    /// The trust anchor this signer chains to (PEM).
    root_pem: String,
}

/// What is stored in the CA directory.
#[derive(Serialize, Deserialize)]
struct Stored {
    signers: Vec<Signer>,
    active: usize,
}

/// The CA's file in its storage directory.
pub const CA_FILE: &str = "ca.json";

/// The mesh certificate authority.
pub struct CertificateAuthority {
    trust_domain: String,
    stored: Stored,
    key: KeyPair,
    cert_der: Vec<u8>,
    not_after: i64,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("trust_domain", &self.trust_domain)
            .field("signers", &self.stored.signers.len())
            .field("active", &self.stored.active)
            .finish()
    }
}

fn pem_certs(pem: &str, what: &str) -> Result<Vec<Vec<u8>>, CaError> {
    let mut out = Vec::new();
    for item in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let item = item.map_err(|e| CaError::Config {
            what: what.into(),
            reason: format!("bad PEM: {e}"),
        })?;
        if item.label == "CERTIFICATE" {
            out.push(item.contents);
        }
    }
    if out.is_empty() {
        return Err(CaError::Config {
            what: what.into(),
            reason: "no CERTIFICATE block".into(),
        });
    }
    Ok(out)
}

fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system RNG works");
    bytes[0] &= 0x7f; // positive
    SerialNumber::from_slice(&bytes)
}

fn new_root(trust_domain: &str, ttl: Duration) -> Result<Signer, CaError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "mesh");
    // Distinct names per root keep old and new apart during a rotation.
    let now = OffsetDateTime::now_utc();
    let mut tag = [0u8; 4];
    ring::rand::SystemRandom::new()
        .fill(&mut tag)
        .expect("the system RNG works");
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    dn.push(
        DnType::CommonName,
        format!("mesh root CA {trust_domain} {} {tag}", now.unix_timestamp()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + ttl;
    params.serial_number = Some(random_serial());
    // A URI SAN naming the trust domain lets verifiers tell mesh roots apart.
    params.subject_alt_names = vec![SanType::URI(format!("spiffe://{trust_domain}").try_into()?)];
    let cert = params.self_signed(&key)?;
    Ok(Signer {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
        chain_pem: Vec::new(),
        root_pem: cert.pem(),
    })
}

impl CertificateAuthority {
    fn from_stored(trust_domain: &str, stored: Stored) -> Result<Self, CaError> {
        let signer = stored
            .signers
            .get(stored.active)
            .ok_or_else(|| CaError::Config {
                what: CA_FILE.into(),
                reason: "active signer missing".into(),
            })?;
        let key = KeyPair::from_pem(&signer.key_pem).map_err(|e| CaError::Config {
            what: "key".into(),
            reason: e.to_string(),
        })?;
        let cert_der = pem_certs(&signer.cert_pem, "certificate")?.remove(0);
        let info = crate::svid::inspect(&cert_der).map_err(|e| CaError::Config {
            what: "certificate".into(),
            reason: e.to_string(),
        })?;
        if !info.is_ca {
            return Err(CaError::Config {
                what: "certificate".into(),
                reason: format!("{} is not a CA certificate", info.subject),
            });
        }
        Ok(CertificateAuthority {
            trust_domain: trust_domain.to_string(),
            not_after: info.not_after,
            stored,
            key,
            cert_der,
        })
    }

    /// A new CA with a fresh self-signed root valid for `root_ttl`.
    pub fn generate(trust_domain: &str, root_ttl: Duration) -> Result<Self, CaError> {
        let stored = Stored {
            signers: vec![new_root(trust_domain, root_ttl)?],
            active: 0,
        };
        Self::from_stored(trust_domain, stored)
    }

    /// A CA signing with a user's CA certificate and key (for example an
    /// intermediate under the user's own root). `cert_chain_pem` holds the signing
    /// CA first, then its issuers; the last one is the trust anchor.
    pub fn from_pem(
        trust_domain: &str,
        cert_chain_pem: &str,
        key_pem: &str,
    ) -> Result<Self, CaError> {
        let certs = pem_certs(cert_chain_pem, "certificate")?;
        let pems: Vec<String> = certs.iter().map(|c| to_pem(c)).collect();
        let root_pem = pems
            .last()
            .cloned()
            .expect("pem_certs returns at least one");
        let chain_pem = if pems.len() > 1 {
            pems[1..pems.len() - 1].to_vec()
        } else {
            Vec::new()
        };
        let signer = Signer {
            cert_pem: pems[0].clone(),
            key_pem: key_pem.to_string(),
            chain_pem: if pems.len() > 1 {
                // The signing CA itself is an intermediate: leaves carry it.
                std::iter::once(pems[0].clone()).chain(chain_pem).collect()
            } else {
                Vec::new()
            },
            root_pem,
        };
        Self::from_stored(
            trust_domain,
            Stored {
                signers: vec![signer],
                active: 0,
            },
        )
    }

    /// Loads the CA from `dir`, or creates one there: a controller restart keeps
    /// the same root, so proxies keep trusting it.
    pub fn load_or_create(
        dir: &Path,
        trust_domain: &str,
        root_ttl: Duration,
    ) -> Result<Self, CaError> {
        let path = dir.join(CA_FILE);
        let io = |source| CaError::Io {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let stored: Stored = serde_json::from_str(&text).map_err(|e| CaError::Config {
                    what: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                Self::from_stored(trust_domain, stored)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir).map_err(io)?;
                let ca = Self::generate(trust_domain, root_ttl)?;
                ca.save(dir)?;
                tracing::info!(dir = %dir.display(), "created a new mesh root CA");
                Ok(ca)
            }
            Err(e) => Err(io(e)),
        }
    }

    /// The CA's whole state (every signer, its key and which one signs) as the JSON
    /// [`CertificateAuthority::save`] writes to `ca.json`, so other stores (a
    /// Kubernetes Secret) hold exactly what a directory would and the two stay
    /// interchangeable.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(&self.stored).expect("CA state serializes")
    }

    /// The CA from the JSON [`CertificateAuthority::to_json`] produced (or a
    /// `ca.json` file held): the same checks as loading from a directory.
    pub fn from_json(trust_domain: &str, json: &str) -> Result<Self, CaError> {
        let stored: Stored = serde_json::from_str(json).map_err(|e| CaError::Config {
            what: CA_FILE.into(),
            reason: e.to_string(),
        })?;
        Self::from_stored(trust_domain, stored)
    }

    /// Writes the CA to `dir` (owner-only permissions; the keys are in it).
    pub fn save(&self, dir: &Path) -> Result<(), CaError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(CA_FILE);
        let tmp = dir.join(format!("{CA_FILE}.tmp"));
        let io = |source| CaError::Io {
            path: path.display().to_string(),
            source,
        };
        let text = self.to_json();
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)
    }

    /// The trust domain identities are issued in.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Every trust anchor, PEM, concatenated: what proxies verify peers against.
    pub fn trust_bundle_pem(&self) -> String {
        let mut roots: Vec<&str> = Vec::new();
        for s in &self.stored.signers {
            if !roots.contains(&s.root_pem.as_str()) {
                roots.push(&s.root_pem);
            }
        }
        roots.concat()
    }

    /// Every trust anchor, DER.
    pub fn trust_anchors(&self) -> Vec<Vec<u8>> {
        pem_certs(&self.trust_bundle_pem(), "bundle").unwrap_or_default()
    }

    /// When the earliest trusted root expires (Unix seconds), for alerts.
    pub fn root_expiry(&self) -> i64 {
        self.trust_anchors()
            .iter()
            .filter_map(|c| crate::svid::inspect(c).ok())
            .map(|i| i.not_after)
            .min()
            .unwrap_or(self.not_after)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, CaError> {
        Ok(Issuer::from_ca_cert_der(
            &CertificateDer::from(self.cert_der.as_slice()),
            &self.key,
        )?)
    }

    fn chain_after_leaf(&self) -> Vec<Vec<u8>> {
        let signer = &self.stored.signers[self.stored.active];
        signer
            .chain_pem
            .iter()
            .flat_map(|p| pem_certs(p, "chain").unwrap_or_default())
            .collect()
    }

    fn leaf_params(&self, sans: Vec<SanType>, ttl: Duration) -> Result<CertificateParams, CaError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "mesh");
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        // A little backdating absorbs clock skew between machines.
        params.not_before = now - time::Duration::seconds(30);
        let ca_end = OffsetDateTime::from_unix_timestamp(self.not_after).unwrap_or(now);
        params.not_after = (now + ttl).min(ca_end);
        Ok(params)
    }

    /// Signs a certificate for `identity` with the key in `csr_der`.
    ///
    /// Everything the CSR asks for (names, CA bit, extensions, validity) is ignored:
    /// the only SAN is `identity`, the CA decides the rest. The CSR's signature is
    /// checked, so the caller proves it holds the key.
    pub fn issue(
        &self,
        csr_der: &[u8],
        identity: &Identity,
        ttl: Duration,
    ) -> Result<IssuedCertificate, CaError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| CaError::BadCsr(e.to_string()))?;
        let san = SanType::URI(
            identity
                .to_string()
                .try_into()
                .map_err(|e: rcgen::Error| CaError::BadCsr(e.to_string()))?,
        );
        let params = self.leaf_params(vec![san], ttl)?;
        let not_after = params.not_after.unix_timestamp();
        let leaf = params.signed_by(&csr.public_key, &self.issuer()?)?;
        let mut chain_der = vec![leaf.der().to_vec()];
        chain_der.extend(self.chain_after_leaf());
        Ok(IssuedCertificate {
            chain_der,
            not_after,
        })
    }

    /// A serving certificate and key for the controller itself (its gRPC and
    /// webhook ports): `identity` as URI SAN plus DNS names clients dial.
    pub fn issue_server(
        &self,
        identity: &Identity,
        dns_names: &[&str],
        ttl: Duration,
    ) -> Result<(IssuedCertificate, Vec<u8>), CaError> {
        let key = KeyPair::generate()?;
        let mut sans = vec![SanType::URI(identity.to_string().try_into()?)];
        for name in dns_names {
            sans.push(SanType::DnsName((*name).try_into()?));
        }
        let params = self.leaf_params(sans, ttl)?;
        let not_after = params.not_after.unix_timestamp();
        let leaf = params.signed_by(&key, &self.issuer()?)?;
        let mut chain_der = vec![leaf.der().to_vec()];
        chain_der.extend(self.chain_after_leaf());
        Ok((
            IssuedCertificate {
                chain_der,
                not_after,
            },
            key.serialize_der(),
        ))
    }

    /// Rotation step 1: a new root joins the trust bundle; signing is unchanged.
    pub fn add_root(&mut self, root_ttl: Duration) -> Result<(), CaError> {
        let signer = new_root(&self.trust_domain, root_ttl)?;
        self.stored.signers.push(signer);
        Ok(())
    }

    /// Rotation step 2: sign with the newest root (every proxy must trust it first).
    pub fn activate_newest(&mut self) -> Result<(), CaError> {
        let stored = Stored {
            active: self.stored.signers.len() - 1,
            signers: std::mem::take(&mut self.stored.signers),
        };
        *self = Self::from_stored(&self.trust_domain.clone(), stored)?;
        Ok(())
    }

    /// Rotation step 3: forget every root but the active one (once no certificate
    /// it signed is still valid).
    pub fn drop_inactive(&mut self) {
        let active = self.stored.signers.swap_remove(self.stored.active);
        self.stored.signers = vec![active];
        self.stored.active = 0;
    }

    /// How many signers (roots) the CA holds.
    pub fn signers(&self) -> usize {
        self.stored.signers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csr::WorkloadKey;
    use crate::svid::{identity_of, inspect};

    #[test]
    fn json_round_trip_keeps_every_signer() {
        let mut ca =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        ca.add_root(Duration::from_secs(3600)).unwrap();
        let back = CertificateAuthority::from_json("cluster.local", &ca.to_json()).unwrap();
        assert_eq!(back.signers(), 2);
        assert_eq!(back.trust_bundle_pem(), ca.trust_bundle_pem());
        assert_eq!(back.to_json(), ca.to_json());
        assert!(CertificateAuthority::from_json("cluster.local", "{}").is_err());
    }

    fn id() -> Identity {
        Identity::new("cluster.local", "shop", "catalog")
    }

    #[test]
    fn issues_only_the_authenticated_identity() {
        let ca =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        // A CSR that asks for another identity, a CA bit and extra names.
        let key = KeyPair::generate().unwrap();
        let mut evil = CertificateParams::new(vec!["evil.example".to_string()]).unwrap();
        evil.subject_alt_names.push(SanType::URI(
            "spiffe://cluster.local/ns/kube-system/sa/admin"
                .try_into()
                .unwrap(),
        ));
        evil.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let csr = evil.serialize_request(&key).unwrap();
        let issued = ca.issue(csr.der(), &id(), Duration::from_secs(60)).unwrap();
        let leaf = &issued.chain_der[0];
        assert_eq!(identity_of(leaf).unwrap(), id());
        let info = inspect(leaf).unwrap();
        assert!(!info.is_ca);
        assert!(
            info.not_after - info.not_before <= 90,
            "its own short validity"
        );
        let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
        let sans = cert.subject_alternative_name().unwrap().unwrap();
        assert_eq!(sans.value.general_names.len(), 1, "no other SANs");
    }

    #[test]
    fn garbage_and_tampered_csrs_are_refused() {
        let ca =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        assert!(matches!(
            ca.issue(b"garbage", &id(), Duration::from_secs(60)),
            Err(CaError::BadCsr(_))
        ));
        let mut csr = WorkloadKey::generate().unwrap().csr_der().unwrap();
        let last = csr.len() - 1;
        csr[last] ^= 0xff; // break the signature
        assert!(matches!(
            ca.issue(&csr, &id(), Duration::from_secs(60)),
            Err(CaError::BadCsr(_))
        ));
    }

    #[test]
    fn persists_and_rotates() {
        let dir = std::env::temp_dir().join(format!("mesh-ca-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a =
            CertificateAuthority::load_or_create(&dir, "cluster.local", Duration::from_secs(3600))
                .unwrap();
        let b =
            CertificateAuthority::load_or_create(&dir, "cluster.local", Duration::from_secs(3600))
                .unwrap();
        assert_eq!(
            a.trust_bundle_pem(),
            b.trust_bundle_pem(),
            "a restart keeps the root"
        );
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join(CA_FILE)).unwrap().permissions(),
        );
        assert_eq!(mode & 0o077, 0, "keys are private");

        let mut ca = b;
        let old = ca.trust_anchors();
        ca.add_root(Duration::from_secs(3600)).unwrap();
        assert_eq!(ca.trust_anchors().len(), 2);
        ca.activate_newest().unwrap();
        let key = WorkloadKey::generate().unwrap();
        let issued = ca
            .issue(&key.csr_der().unwrap(), &id(), Duration::from_secs(60))
            .unwrap();
        let issuer = inspect(&issued.chain_der[0]).unwrap().issuer;
        assert_ne!(
            issuer,
            inspect(&old[0]).unwrap().subject,
            "signed by the new root"
        );
        ca.drop_inactive();
        assert_eq!(ca.trust_anchors().len(), 1);
        assert_ne!(ca.trust_anchors(), old);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn user_intermediate_is_carried_in_the_chain() {
        let root =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        // Make an intermediate CA signed by `root`.
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let inter = params.signed_by(&key, &root.issuer().unwrap()).unwrap();
        let chain = format!("{}{}", inter.pem(), root.trust_bundle_pem());
        let ca =
            CertificateAuthority::from_pem("cluster.local", &chain, &key.serialize_pem()).unwrap();
        assert_eq!(
            ca.trust_bundle_pem(),
            root.trust_bundle_pem(),
            "anchored at the user's root"
        );
        let w = WorkloadKey::generate().unwrap();
        let issued = ca
            .issue(&w.csr_der().unwrap(), &id(), Duration::from_secs(60))
            .unwrap();
        assert_eq!(issued.chain_der.len(), 2, "leaf + intermediate");
        assert!(matches!(
            CertificateAuthority::from_pem("cluster.local", "not pem", "x"),
            Err(CaError::Config { .. })
        ));
    }
}
