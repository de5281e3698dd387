//! What every part of the running proxy shares.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::routing::{LocalIdentity, ProxyConfig};
use crate::tls::TlsState;
use crate::upstream::Upstreams;

/// Shared state: the published config (read lock-free per request), metrics,
/// upstream pools and the shutdown signal.
#[derive(Debug)]
pub struct ProxyState {
    /// The routing tables; replaced whole on every accepted xDS update.
    pub config: ArcSwap<ProxyConfig>,
    /// Metrics.
    pub metrics: Metrics,
    /// Own workload and namespace.
    pub me: LocalIdentity,
    /// Set once every needed resource has been received; never cleared, so a
    /// briefly incomplete update does not flap readiness.
    pub ready: AtomicBool,
    /// Pooled upstream clients.
    pub upstreams: Upstreams,
    /// Flipped to `true` to start a graceful shutdown.
    pub shutdown: watch::Sender<bool>,
    /// Certificate, trust bundle and the TLS configurations built from them.
    pub tls: Arc<TlsState>,
    /// Whether to send `x-forwarded-client-cert` to the app.
    pub forward_client_cert: bool,
}

impl ProxyState {
    /// Fresh state for `me`, with an empty config, in dev mode (no identity).
    pub fn new(me: LocalIdentity) -> ProxyState {
        ProxyState::with_tls(me, Arc::new(TlsState::new(false, None)), false)
    }

    /// Fresh state for `me` with the given TLS state.
    pub fn with_tls(
        me: LocalIdentity,
        tls: Arc<TlsState>,
        forward_client_cert: bool,
    ) -> ProxyState {
        ProxyState {
            tls,
            forward_client_cert,
            config: ArcSwap::from_pointee(ProxyConfig::default()),
            metrics: Metrics::new(),
            me,
            ready: AtomicBool::new(false),
            upstreams: Upstreams::new(),
            shutdown: watch::channel(false).0,
        }
    }

    /// Whether `/ready` may say 200: config complete and, with an identity, a
    /// certificate held.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire) && self.tls.ready()
    }

    /// Starts a graceful shutdown.
    pub fn trigger_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}
