//! Reading SPIFFE identities (X.509 SVIDs) out of certificates.

use mesh_model::Identity;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// Why a certificate does not carry a usable mesh identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// The bytes are not an X.509 certificate.
    #[error("not an X.509 certificate: {0}")]
    Malformed(String),
    /// No URI SAN, or one that is not `spiffe://<td>/ns/<ns>/sa/<sa>`.
    #[error("certificate has no mesh SPIFFE ID (URI SANs: {0:?})")]
    NoIdentity(Vec<String>),
    /// More than one URI SAN: an SVID names exactly one identity.
    #[error("certificate names several identities: {0:?}")]
    SeveralIdentities(Vec<String>),
}

/// What operators want to know about a certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertInfo {
    /// The SPIFFE ID, if the certificate is an SVID.
    pub identity: Option<String>,
    /// Serial number, hex.
    pub serial: String,
    /// Subject distinguished name.
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// Validity start, Unix seconds.
    pub not_before: i64,
    /// Validity end, Unix seconds.
    pub not_after: i64,
    /// Whether it is a CA certificate.
    pub is_ca: bool,
}

fn parse(der: &[u8]) -> Result<X509Certificate<'_>, SvidError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|e| SvidError::Malformed(e.to_string()))
}

fn uri_sans(cert: &X509Certificate<'_>) -> Vec<String> {
    cert.subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The one mesh identity a certificate carries.
pub fn identity_of(der: &[u8]) -> Result<Identity, SvidError> {
    let cert = parse(der)?;
    let uris = uri_sans(&cert);
    match uris.as_slice() {
        [one] => Identity::parse_spiffe(one).ok_or(SvidError::NoIdentity(uris)),
        [] => Err(SvidError::NoIdentity(uris)),
        _ => Err(SvidError::SeveralIdentities(uris)),
    }
}

/// Describes a certificate for `proxy-config secrets` and `check`.
pub fn inspect(der: &[u8]) -> Result<CertInfo, SvidError> {
    let cert = parse(der)?;
    let uris = uri_sans(&cert);
    Ok(CertInfo {
        identity: uris.into_iter().find(|u| u.starts_with("spiffe://")),
        serial: cert.tbs_certificate.raw_serial_as_string().replace(':', ""),
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        is_ca: cert.is_ca(),
    })
}
