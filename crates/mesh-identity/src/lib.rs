//! Workload identity for the mesh: SPIFFE X.509 certificates, the CA that signs
//! them, join tokens that authenticate a workload to the CA, and rustls
//! configurations that carry mutual TLS between sidecars.
//!
//! The controller uses [`ca`] and [`token`]; the sidecar uses [`csr`] to make its
//! key (which never leaves it) and [`tls`] for every connection; both use [`svid`]
//! to read identities out of certificates.
#![forbid(unsafe_code)]

pub mod ca;
pub mod csr;
pub mod svid;
pub mod tls;
pub mod token;

pub use ca::{CaError, CertificateAuthority, IssuedCertificate};
pub use mesh_model::Identity;
pub use svid::{CertInfo, SvidError};
pub use token::{Claims, TokenError, TokenKey};

/// Seconds since the Unix epoch, for certificate and token validity.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
