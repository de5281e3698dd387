//! Per-proxy sync state: what each connected proxy was sent and what it accepted.
//! Served as `/debug/syncz` and read by `meshctl proxy-status`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use mesh_xds::{ProxyNode, ResourceType};
use serde::Serialize;

/// Where one resource type stands for one proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum SyncStatus {
    /// The proxy ACKed the last version sent.
    #[serde(rename = "SYNCED")]
    Synced,
    /// A version was sent and not yet ACKed.
    #[serde(rename = "STALE")]
    Stale,
    /// Nothing of this type was sent (not subscribed yet).
    #[serde(rename = "NOT SENT")]
    NotSent,
    /// The proxy NACKed the last version sent.
    #[serde(rename = "ERROR")]
    Error,
}

/// One resource type's sync state.
#[derive(Debug, Clone, Serialize)]
pub struct TypeSync {
    /// See [`SyncStatus`].
    pub status: SyncStatus,
    /// Version of the last response sent.
    pub sent_version: Option<String>,
    /// Nonce of the last response sent.
    pub sent_nonce: Option<String>,
    /// Last version the proxy ACKed.
    pub acked_version: Option<String>,
    /// The proxy's reason for its last NACK.
    pub error: Option<String>,
    /// How many resources of this type the proxy holds (as far as we know).
    pub resources: usize,
}

impl Default for TypeSync {
    fn default() -> Self {
        TypeSync {
            status: SyncStatus::NotSent,
            sent_version: None,
            sent_nonce: None,
            acked_version: None,
            error: None,
            resources: 0,
        }
    }
}

/// One connected proxy.
#[derive(Debug, Clone, Serialize)]
pub struct ProxySync {
    /// Connection number, unique for this controller's lifetime.
    pub connection: u64,
    /// xDS node id.
    pub node_id: String,
    /// Workload instance, if the proxy said.
    pub workload: Option<String>,
    /// The proxy's namespace.
    pub namespace: String,
    /// The proxy's admin address, if it said.
    pub admin_address: Option<String>,
    /// `delta` or `sotw`.
    pub protocol: &'static str,
    /// When the stream opened (Unix seconds).
    pub connected_at_unix: u64,
    /// Whether the stream came over the TLS port.
    pub secure: bool,
    /// The SPIFFE ID of the proxy's client certificate (TLS port only).
    pub identity: Option<String>,
    /// Version of the `ROOTCA` trust bundle secret the proxy last ACKed; root
    /// rotation waits for every proxy to hold the new one.
    pub trust_bundle_version: Option<String>,
    /// Per type (`SDS`, `CDS`, `EDS`, `LDS`, `RDS`).
    pub types: BTreeMap<&'static str, TypeSync>,
}

/// Sync state of every open stream.
#[derive(Debug, Default)]
pub struct SyncRegistry {
    next: AtomicU64,
    proxies: Mutex<BTreeMap<u64, ProxySync>>,
}

impl SyncRegistry {
    /// Records a new stream and returns its connection number.
    pub fn register(
        &self,
        node: &ProxyNode,
        protocol: &'static str,
        peer: &crate::secure::Peer,
    ) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let entry = ProxySync {
            connection: id,
            node_id: node.id.clone(),
            workload: node.workload.clone(),
            namespace: node.namespace.clone(),
            admin_address: node.admin_address.clone(),
            protocol,
            connected_at_unix: crate::registry::unix_now(),
            secure: peer.secure,
            identity: peer.identity.as_ref().map(ToString::to_string),
            trust_bundle_version: None,
            types: ResourceType::ALL
                .iter()
                .map(|t| (t.short_name(), TypeSync::default()))
                .collect(),
        };
        self.lock().insert(id, entry);
        id
    }

    /// Forgets a closed stream.
    pub fn unregister(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// Changes one type's state of one stream.
    pub fn update(&self, id: u64, ty: ResourceType, f: impl FnOnce(&mut TypeSync)) {
        if let Some(p) = self.lock().get_mut(&id)
            && let Some(t) = p.types.get_mut(ty.short_name())
        {
            f(t);
        }
    }

    /// Records the trust bundle version a stream ACKed.
    pub fn set_trust_bundle(&self, id: u64, version: Option<String>) {
        if let Some(p) = self.lock().get_mut(&id) {
            p.trust_bundle_version = version;
        }
    }

    /// Every open stream's state.
    pub fn list(&self) -> Vec<ProxySync> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, ProxySync>> {
        // A panic while holding this lock cannot leave the map inconsistent.
        self.proxies.lock().unwrap_or_else(|e| e.into_inner())
    }
}
