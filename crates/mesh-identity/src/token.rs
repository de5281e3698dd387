//! Mesh join tokens: how a workload outside Kubernetes proves who it is to the CA.
//!
//! A token is `mesh1.<claims>.<signature>`: base64url JSON claims (trust domain,
//! namespace, service account, expiry) signed with the controller's Ed25519 key.
//! The key never leaves the controller; `meshctl token create` asks the controller
//! for a token.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use mesh_model::Identity;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "mesh1";
/// The key's file in the CA directory.
pub const KEY_FILE: &str = "token-key.pk8";

/// What a token asserts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Trust domain the identity belongs to.
    pub td: String,
    /// Namespace.
    pub ns: String,
    /// Service account.
    pub sa: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Expires at, Unix seconds.
    pub exp: u64,
}

impl Claims {
    /// The identity the token authenticates.
    pub fn identity(&self) -> Identity {
        Identity::new(&self.td, &self.ns, &self.sa)
    }
}

/// Why a token was refused. Deliberately coarse on the wire (UNAUTHENTICATED),
/// precise in the controller's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not of the form `mesh1.<claims>.<signature>` or undecodable.
    #[error("malformed token: {0}")]
    Malformed(&'static str),
    /// The signature does not verify with this controller's key.
    #[error("token signature does not verify")]
    BadSignature,
    /// Past its expiry.
    #[error("token expired at {0}")]
    Expired(u64),
    /// For another trust domain.
    #[error("token is for trust domain {0:?}")]
    WrongTrustDomain(String),
}

/// The controller's token signing key.
pub struct TokenKey {
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey")
    }
}

impl TokenKey {
    /// A fresh key.
    pub fn generate() -> Self {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("system RNG works");
        TokenKey {
            pair: Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("freshly generated key parses"),
        }
    }

    /// Loads the key from `dir`, or creates it there (owner-only), so tokens
    /// outlive controller restarts.
    pub fn load_or_create(dir: &Path) -> std::io::Result<Self> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(KEY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Ed25519KeyPair::from_pkcs8(&bytes)
                .map(|pair| TokenKey { pair })
                .map_err(|e| std::io::Error::other(format!("{}: bad key: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(dir)?;
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
                    .map_err(|_| std::io::Error::other("RNG failed"))?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                f.write_all(pkcs8.as_ref())?;
                Self::load_or_create(dir)
            }
            Err(e) => Err(e),
        }
    }

    /// A fresh key as PKCS#8 bytes (what `token-key.pk8` holds), for stores other
    /// than a directory: ring cannot export a parsed key, so the bytes are kept
    /// from generation on.
    pub fn generate_pkcs8() -> Vec<u8> {
        Ed25519KeyPair::generate_pkcs8(&SystemRandom::new())
            .expect("system RNG works")
            .as_ref()
            .to_vec()
    }

    /// The key from PKCS#8 bytes (a `token-key.pk8` kept in a Kubernetes Secret),
    /// so every replica verifies the tokens any of them signed.
    pub fn from_pkcs8(bytes: &[u8]) -> Result<Self, String> {
        Ed25519KeyPair::from_pkcs8(bytes)
            .map(|pair| TokenKey { pair })
            .map_err(|e| format!("bad token key: {e}"))
    }

    /// A token for `identity`, valid for `ttl_secs` from now.
    pub fn sign(&self, identity: &Identity, ttl_secs: u64) -> String {
        let now = crate::unix_now();
        let claims = Claims {
            td: identity.trust_domain.clone(),
            ns: identity.namespace.clone(),
            sa: identity.service_account.clone(),
            iat: now,
            exp: now + ttl_secs,
        };
        let payload = B64.encode(serde_json::to_vec(&claims).expect("claims serialize"));
        let signed = format!("{PREFIX}.{payload}");
        let sig = self.pair.sign(signed.as_bytes());
        format!("{signed}.{}", B64.encode(sig.as_ref()))
    }

    /// Checks `token` and returns its claims if this key signed it, it is for
    /// `trust_domain`, and it has not expired at `now`.
    pub fn verify(&self, token: &str, trust_domain: &str, now: u64) -> Result<Claims, TokenError> {
        let (signed, sig) = token
            .trim()
            .rsplit_once('.')
            .ok_or(TokenError::Malformed("no signature"))?;
        let payload = signed
            .strip_prefix(PREFIX)
            .and_then(|p| p.strip_prefix('.'))
            .ok_or(TokenError::Malformed("not a mesh1 token"))?;
        let sig = B64
            .decode(sig)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        UnparsedPublicKey::new(&ED25519, self.pair.public_key().as_ref())
            .verify(signed.as_bytes(), &sig)
            .map_err(|_| TokenError::BadSignature)?;
        let bytes = B64
            .decode(payload)
            .map_err(|_| TokenError::Malformed("claims are not base64url"))?;
        let claims: Claims = serde_json::from_slice(&bytes)
            .map_err(|_| TokenError::Malformed("claims are not JSON"))?;
        if claims.td != trust_domain {
            return Err(TokenError::WrongTrustDomain(claims.td));
        }
        if claims.exp <= now {
            return Err(TokenError::Expired(claims.exp));
        }
        if claims.ns.is_empty()
            || claims.sa.is_empty()
            || claims.ns.contains('/')
            || claims.sa.contains('/')
        {
            return Err(TokenError::Malformed("bad namespace or service account"));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let key = TokenKey::generate();
        let id = Identity::new("cluster.local", "shop", "catalog");
        let token = key.sign(&id, 60);
        let now = crate::unix_now();
        assert_eq!(
            key.verify(&token, "cluster.local", now).unwrap().identity(),
            id
        );
        assert_eq!(
            key.verify(&token, "cluster.local", now + 61),
            Err(TokenError::Expired(now + 60))
        );
        assert!(matches!(
            key.verify(&token, "other.td", now),
            Err(TokenError::WrongTrustDomain(_))
        ));
        assert_eq!(
            TokenKey::generate().verify(&token, "cluster.local", now),
            Err(TokenError::BadSignature)
        );
        // Forged claims with the original signature.
        let (head, sig) = token.rsplit_once('.').unwrap();
        let forged_claims = B64.encode(
            br#"{"td":"cluster.local","ns":"kube-system","sa":"admin","iat":0,"exp":99999999999}"#,
        );
        let forged = format!("{PREFIX}.{forged_claims}.{sig}");
        assert_ne!(head, format!("{PREFIX}.{forged_claims}"));
        assert_eq!(
            key.verify(&forged, "cluster.local", now),
            Err(TokenError::BadSignature)
        );
        for garbage in ["", "garbage", "mesh1.x", "a.b.c", "mesh1.!!.!!"] {
            assert!(
                matches!(
                    key.verify(garbage, "cluster.local", now),
                    Err(TokenError::Malformed(_) | TokenError::BadSignature)
                ),
                "{garbage}"
            );
        }
    }

    #[test]
    fn key_survives_restart() {
        let dir = std::env::temp_dir().join(format!("mesh-token-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let id = Identity::new("cluster.local", "shop", "catalog");
        let token = TokenKey::load_or_create(&dir).unwrap().sign(&id, 60);
        let again = TokenKey::load_or_create(&dir).unwrap();
        assert!(
            again
                .verify(&token, "cluster.local", crate::unix_now())
                .is_ok()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
