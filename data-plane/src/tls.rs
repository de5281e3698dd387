//! The sidecar's TLS material: its own certificate (from `Certify`), the trust
//! bundle (the `--trust-anchors` file until SDS `ROOTCA` arrives), and the rustls
//! configurations built from both.
//!
//! Everything is swapped atomically (`ArcSwap`): a rotation or a bundle change
//! builds new configurations and publishes them in one store, so connections
//! already open keep the configuration they were made with and new connections use
//! the new one. A bundle or certificate that cannot be turned into a configuration
//! is refused and the old material stays in use.

use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use mesh_identity::tls::{ALPN_H2, ClientAuth, Credentials, client_config, server_config};
use mesh_identity::{CertInfo, Identity, svid};
use rustls::{ClientConfig, ServerConfig};
use serde::Serialize;
use tokio::sync::watch;

/// ALPN of a proxied TCP connection between sidecars.
pub const ALPN_MESH_TCP: &[u8] = mesh_xds::resources::ALPN_MESH_TCP.as_bytes();
/// ALPN of HTTP/1.1 (an Upgrade request between sidecars).
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// ALPN the inbound side offers: HTTP/2 between sidecars, HTTP/1.1 for others
/// (and Upgrade requests), `mesh-tcp` for proxied TCP connections.
pub const INBOUND_ALPN: [&[u8]; 3] = [ALPN_H2, ALPN_HTTP1, ALPN_MESH_TCP];

/// Where the trust bundle in use came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BundleSource {
    /// No bundle (dev mode without `--trust-anchors`).
    None,
    /// The `--trust-anchors` file.
    File,
    /// SDS secret `ROOTCA`.
    Sds,
}

/// A set of trust anchors.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// The roots, DER.
    pub anchors: Vec<Vec<u8>>,
    /// Where they came from.
    pub source: BundleSource,
}

/// Configurations built from the current certificate and bundle.
#[derive(Debug)]
pub struct TlsConfigs {
    /// Outbound to other sidecars: presents our certificate, verifies theirs
    /// (ALPN `h2`, the pooled HTTP connections).
    pub client: Arc<ClientConfig>,
    /// The same, with ALPN `mesh-tcp`: one connection per proxied TCP connection.
    pub client_tcp: Arc<ClientConfig>,
    /// The same, with ALPN `http/1.1`: one connection per Upgrade request.
    pub client_http1: Arc<ClientConfig>,
    /// Inbound from other sidecars: client certificates required.
    pub server: Arc<ServerConfig>,
    /// Our identity (from the certificate).
    pub identity: Identity,
    /// Our identity as a string (SPIFFE ID), for headers and metrics.
    pub spiffe_id: Arc<str>,
}

/// The TLS state of one sidecar.
#[derive(Debug)]
pub struct TlsState {
    /// Whether this sidecar runs with an identity (a token was given). Without one
    /// it is in dev mode: plaintext between sidecars, as before mTLS existed.
    enabled: bool,
    creds: ArcSwapOption<Credentials>,
    bundle: ArcSwap<Bundle>,
    configs: ArcSwapOption<TlsConfigs>,
    /// Serialises rebuilds so a certificate swap and a bundle swap cannot race
    /// each other into publishing a configuration built from stale parts.
    rebuild: Mutex<()>,
    /// Bumped whenever new credentials are installed; lets tasks wait for the first.
    generation: watch::Sender<u64>,
}

impl TlsState {
    /// TLS state with identity on or off and the initial (file) trust anchors.
    pub fn new(enabled: bool, anchors: Option<Vec<Vec<u8>>>) -> TlsState {
        let bundle = match anchors {
            Some(anchors) => Bundle {
                anchors,
                source: BundleSource::File,
            },
            None => Bundle {
                anchors: Vec::new(),
                source: BundleSource::None,
            },
        };
        TlsState {
            enabled,
            creds: ArcSwapOption::empty(),
            bundle: ArcSwap::from_pointee(bundle),
            configs: ArcSwapOption::empty(),
            rebuild: Mutex::new(()),
            generation: watch::channel(0).0,
        }
    }

    /// Whether the sidecar has an identity (mutual TLS between sidecars).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether the sidecar can serve: always in dev mode, else once it holds a
    /// certificate.
    pub fn ready(&self) -> bool {
        !self.enabled || self.configs.load().is_some()
    }

    /// The current configurations (none until the first certificate).
    pub fn configs(&self) -> Option<Arc<TlsConfigs>> {
        self.configs.load_full()
    }

    /// The current credentials.
    pub fn credentials(&self) -> Option<Arc<Credentials>> {
        self.creds.load_full()
    }

    /// The current trust bundle.
    pub fn bundle(&self) -> Arc<Bundle> {
        self.bundle.load_full()
    }

    /// Waits until credentials are installed (returns at once if they are).
    pub async fn wait_for_credentials(&self) {
        let mut rx = self.generation.subscribe();
        let _ = rx.wait_for(|g| *g > 0).await;
    }

    fn build(creds: &Credentials, bundle: &Bundle) -> Result<TlsConfigs, String> {
        if bundle.anchors.is_empty() {
            return Err("no trust anchors (give --trust-anchors or wait for SDS ROOTCA)".into());
        }
        let client =
            client_config(Some(creds), &bundle.anchors, &[ALPN_H2]).map_err(|e| e.to_string())?;
        let with_alpn = |alpn: &[u8]| {
            let mut config = (*client).clone();
            config.alpn_protocols = vec![alpn.to_vec()];
            Arc::new(config)
        };
        let client_tcp = with_alpn(ALPN_MESH_TCP);
        let client_http1 = with_alpn(ALPN_HTTP1);
        let server = server_config(creds, &bundle.anchors, ClientAuth::Required, &INBOUND_ALPN)
            .map_err(|e| e.to_string())?;
        Ok(TlsConfigs {
            client,
            client_tcp,
            client_http1,
            server,
            identity: creds.identity.clone(),
            spiffe_id: creds.identity.to_string().into(),
        })
    }

    /// Installs new credentials (after `Certify`), rebuilding the configurations.
    pub fn set_credentials(&self, creds: Credentials) -> Result<(), String> {
        let _guard = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let configs = Self::build(&creds, &self.bundle.load())?;
        self.creds.store(Some(Arc::new(creds)));
        self.configs.store(Some(Arc::new(configs)));
        self.generation.send_modify(|g| *g += 1);
        Ok(())
    }

    /// Installs a new trust bundle, rebuilding the configurations if a certificate
    /// is held. On error nothing changes.
    pub fn set_bundle(&self, anchors: Vec<Vec<u8>>, source: BundleSource) -> Result<(), String> {
        let _guard = self.rebuild.lock().unwrap_or_else(|p| p.into_inner());
        let bundle = Bundle { anchors, source };
        if let Some(creds) = self.creds.load_full() {
            let configs = Self::build(&creds, &bundle)?;
            self.configs.store(Some(Arc::new(configs)));
        } else if bundle.anchors.is_empty() {
            return Err("empty trust bundle".into());
        }
        self.bundle.store(Arc::new(bundle));
        Ok(())
    }

    /// The `secrets` section of `/config_dump`: the certificate chain and the
    /// roots, never the key.
    pub fn dump(&self) -> serde_json::Value {
        let describe = |der: &[u8]| -> serde_json::Value {
            match svid::inspect(der) {
                Ok(info) => serde_json::to_value(info).unwrap_or_default(),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            }
        };
        let certificate = self.creds.load_full().map(|c| {
            let leaf: Option<CertInfo> = c.chain.first().and_then(|d| svid::inspect(d).ok());
            serde_json::json!({
                "identity": c.identity.to_string(),
                "serial": leaf.as_ref().map(|l| l.serial.clone()),
                "not_before": leaf.as_ref().map(|l| l.not_before),
                "not_after": c.not_after,
                "chain": c.chain.iter().map(|d| describe(d)).collect::<Vec<_>>(),
            })
        });
        let bundle = self.bundle.load();
        let roots: Vec<serde_json::Value> = bundle
            .anchors
            .iter()
            .map(|der| match svid::inspect(der) {
                Ok(info) => serde_json::json!({
                    "subject": info.subject,
                    "serial": info.serial,
                    "not_after": info.not_after,
                }),
                Err(e) => serde_json::json!({ "error": e.to_string() }),
            })
            .collect();
        serde_json::json!({
            "identity_enabled": self.enabled,
            "certificate": certificate,
            "trust_bundle": { "source": bundle.source, "roots": roots },
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use mesh_identity::CertificateAuthority;
    use mesh_identity::csr::WorkloadKey;
    use std::time::Duration;

    /// Credentials for `ns/sa` signed by `ca`.
    pub(crate) fn creds(ca: &CertificateAuthority, ns: &str, sa: &str) -> Credentials {
        let key = WorkloadKey::generate().unwrap();
        let id = Identity::new(ca.trust_domain(), ns, sa);
        let issued = ca
            .issue(&key.csr_der().unwrap(), &id, Duration::from_secs(300))
            .unwrap();
        Credentials::new(issued.chain_der, key.private_key_der()).unwrap()
    }

    #[test]
    fn rebuilds_on_certificate_and_bundle() {
        let ca =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let tls = TlsState::new(true, Some(ca.trust_anchors()));
        assert!(!tls.ready());
        tls.set_credentials(creds(&ca, "shop", "web")).unwrap();
        assert!(tls.ready());
        let first = tls.configs().unwrap();
        assert_eq!(&*first.spiffe_id, "spiffe://cluster.local/ns/shop/sa/web");
        let other =
            CertificateAuthority::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let mut both = ca.trust_anchors();
        both.extend(other.trust_anchors());
        tls.set_bundle(both, BundleSource::Sds).unwrap();
        assert!(!Arc::ptr_eq(&first, &tls.configs().unwrap()));
        assert_eq!(tls.bundle().source, BundleSource::Sds);
        // A broken bundle changes nothing.
        assert!(
            tls.set_bundle(vec![vec![1, 2, 3]], BundleSource::Sds)
                .is_err()
        );
        assert_eq!(tls.bundle().anchors.len(), 2);
        let dump = tls.dump();
        assert_eq!(
            dump["certificate"]["identity"],
            "spiffe://cluster.local/ns/shop/sa/web"
        );
        assert_eq!(dump["trust_bundle"]["roots"].as_array().unwrap().len(), 2);
        assert!(!dump.to_string().contains("PRIVATE"), "never the key");
    }

    #[test]
    fn dev_mode_is_ready_without_certificate() {
        let tls = TlsState::new(false, None);
        assert!(tls.ready());
        assert!(tls.configs().is_none());
    }
}
