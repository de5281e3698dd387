//! The controller's own serving certificate for the TLS port, kept fresh: re-issued
//! at two thirds of its lifetime, when the trust bundle changes (so new roots'
//! client certificates verify) and when the CA starts signing with a new root.

use std::sync::Arc;
use std::time::Duration;

use mesh_identity::tls::{ALPN_H2, ClientAuth};
use rustls::ServerConfig;
use tokio::sync::watch;

use super::Authority;

/// How long to wait before retrying a failed re-issue.
const RETRY: Duration = Duration::from_secs(5);

/// A TLS configuration for the secure xDS port: the controller's certificate,
/// client certificates optional (a sidecar without one comes to `Certify`), h2.
pub fn build(authority: &Authority) -> anyhow::Result<(Arc<ServerConfig>, i64)> {
    let creds = authority.serving_credentials()?;
    let anchors = mesh_identity::tls::anchors_from_pem(&authority.bundle_pem())?;
    let config =
        mesh_identity::tls::server_config(&creds, &anchors, ClientAuth::Optional, &[ALPN_H2])?;
    Ok((config, creds.not_after))
}

/// Builds the first configuration now (an error stops the controller) and keeps
/// it current in the background.
pub fn start(authority: Arc<Authority>) -> anyhow::Result<watch::Receiver<Arc<ServerConfig>>> {
    let (config, mut not_after) = build(&authority)?;
    let (tx, rx) = watch::channel(config);
    let mut bundle = authority.bundle();
    tokio::spawn(async move {
        loop {
            let wait = refresh_in(not_after, mesh_identity::unix_now());
            let reason = tokio::select! {
                _ = tokio::time::sleep(wait) => "nearing expiry",
                _ = authority.serving_refresh.notified() => "new signing root",
                changed = bundle.changed() => {
                    if changed.is_err() { return }
                    "trust bundle changed"
                }
            };
            match build(&authority) {
                Ok((config, expiry)) => {
                    not_after = expiry;
                    tracing::info!(
                        reason,
                        not_after,
                        "re-issued the controller's serving certificate"
                    );
                    if tx.send(config).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::error!(reason, error = %e, "cannot re-issue the controller's serving certificate; retrying");
                    // Two thirds of 1.5 × RETRY: try again after RETRY.
                    not_after = mesh_identity::unix_now() as i64 + RETRY.as_secs() as i64 * 3 / 2;
                }
            }
        }
    });
    Ok(rx)
}

/// Time until a certificate expiring at `not_after` should be replaced: at two
/// thirds of what is left, at least a second from now.
fn refresh_in(not_after: i64, now: u64) -> Duration {
    let left = (not_after - now as i64).max(0) as u64;
    Duration::from_secs((left * 2 / 3).max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_before_expiry() {
        assert_eq!(refresh_in(1_000 + 90, 1_000), Duration::from_secs(60));
        assert_eq!(refresh_in(1_000, 2_000), Duration::from_secs(1));
    }

    #[tokio::test]
    async fn builds_a_tls_config_with_h2() {
        let a = crate::identity::tests::authority(Duration::from_secs(60));
        let (config, not_after) = build(&a).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"h2".to_vec()]);
        assert!(not_after > mesh_identity::unix_now() as i64);
    }
}
