//! What every part of the running proxy shares.

use std::sync::atomic::AtomicBool;

use arc_swap::ArcSwap;
use tokio::sync::watch;

use crate::metrics::Metrics;
use crate::routing::{LocalIdentity, ProxyConfig};
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
}

impl ProxyState {
    /// Fresh state for `me`, with an empty config.
    pub fn new(me: LocalIdentity) -> ProxyState {
        ProxyState {
            config: ArcSwap::from_pointee(ProxyConfig::default()),
            metrics: Metrics::new(),
            me,
            ready: AtomicBool::new(false),
            upstreams: Upstreams::new(),
            shutdown: watch::channel(false).0,
        }
    }

    /// Starts a graceful shutdown.
    pub fn trigger_shutdown(&self) {
        self.shutdown.send_replace(true);
    }
}
