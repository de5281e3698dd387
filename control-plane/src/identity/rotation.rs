//! Root rotation without an outage, in three phases:
//!
//! 1. **distributing**: a new root joins the trust bundle (saved, published as the
//!    SDS `ROOTCA` secret); signing is unchanged. Wait until every proxy that
//!    subscribed to SDS has ACKed the bundle carrying the new root, or
//!    `--rotation-grace` passes.
//! 2. **draining**: sign with the new root (saved; the controller's serving
//!    certificate is re-issued). Certificates from the old root stay valid and
//!    trusted; wait `--workload-cert-ttl` + grace so every workload re-certifies.
//! 3. drop the old root from the bundle (saved, published): back to **idle**.

use std::sync::Arc;
use std::time::Duration;

use mesh_xds::{ProxyNode, ProxyView, ResourceType, names};
use serde::Serialize;
use tokio::sync::watch;

use super::{Authority, CaSource};
use crate::publish::Published;
use crate::xds::status::{SyncRegistry, SyncStatus};

/// How often phase 1 re-checks proxies' ACKs.
const POLL: Duration = Duration::from_millis(200);

/// Where a root rotation stands (`/debug/ca`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum RotationPhase {
    /// No rotation running.
    Idle {
        /// When the last rotation finished (Unix seconds), if any did.
        last_completed_unix: Option<u64>,
    },
    /// Phase 1: the new root is in the bundle; waiting for proxies to ACK it.
    Distributing {
        /// When the rotation started.
        started_unix: u64,
        /// When signing switches to the new root even if some proxies never ACKed.
        deadline_unix: u64,
        /// SDS version of the `ROOTCA` secret carrying the new root.
        bundle_version: Option<String>,
        /// Node ids of proxies that have not ACKed it yet.
        pending: Vec<String>,
    },
    /// Phase 2: signing with the new root; the old one stays trusted until every
    /// certificate it signed has expired.
    Draining {
        /// When signing switched.
        activated_unix: u64,
        /// When the old root leaves the bundle.
        drop_at_unix: u64,
    },
    /// A step failed; the CA is left as the failed step found it.
    Failed {
        /// What went wrong.
        error: String,
    },
}

impl RotationPhase {
    fn running(&self) -> bool {
        matches!(
            self,
            RotationPhase::Distributing { .. } | RotationPhase::Draining { .. }
        )
    }
}

/// Why a rotation was not started.
#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    /// One is already running.
    #[error("a root rotation is already running: {0}")]
    AlreadyRunning(String),
    /// The user's CA cannot be replaced by a self-signed root.
    #[error(
        "the CA is user-provided (--ca-cert/--ca-key): rotate it by restarting with the new certificate and key"
    )]
    UserCa,
    /// Only the elected leader rotates the shared root.
    #[error("this replica is not the leader (the leader is {0}); ask it to rotate")]
    NotLeader(String),
}

impl Authority {
    /// Starts a root rotation in the background; see the module docs.
    pub fn start_rotation(
        self: &Arc<Self>,
        sync: Arc<SyncRegistry>,
        snapshots: watch::Receiver<Published>,
    ) -> Result<(), RotateError> {
        self.spawn_rotation(sync, snapshots, true)
    }

    /// Finishes a rotation a restart interrupted: a CA loaded with more than one
    /// root was mid-rotation. Re-runs the phases from waiting for ACKs on (the
    /// bundle already has both roots; activating the newest again is harmless), so
    /// the old root is dropped only after a full certificate lifetime.
    pub fn resume_rotation(
        self: &Arc<Self>,
        sync: Arc<SyncRegistry>,
        snapshots: watch::Receiver<Published>,
    ) -> Result<bool, RotateError> {
        if self.read().signers() < 2 {
            return Ok(false);
        }
        tracing::warn!(
            "the CA holds several roots: resuming the root rotation a restart interrupted"
        );
        self.spawn_rotation(sync, snapshots, false).map(|()| true)
    }

    fn spawn_rotation(
        self: &Arc<Self>,
        sync: Arc<SyncRegistry>,
        snapshots: watch::Receiver<Published>,
        add_root: bool,
    ) -> Result<(), RotateError> {
        if self.source == CaSource::User {
            return Err(RotateError::UserCa);
        }
        if let Some(l) = self.leadership()
            && !l.leader
        {
            return Err(RotateError::NotLeader(
                l.holder.unwrap_or_else(|| "not elected yet".into()),
            ));
        }
        let now = mesh_identity::unix_now();
        {
            let mut phase = self.phase.lock().unwrap_or_else(|e| e.into_inner());
            if phase.running() {
                return Err(RotateError::AlreadyRunning(
                    serde_json::to_string(&*phase).unwrap_or_default(),
                ));
            }
            *phase = RotationPhase::Distributing {
                started_unix: now,
                deadline_unix: now + self.rotation_grace.as_secs(),
                bundle_version: None,
                pending: Vec::new(),
            };
        }
        let authority = self.clone();
        tokio::spawn(async move {
            if let Err(e) = authority.rotate(&sync, snapshots, add_root).await {
                tracing::error!(error = %e, "CA root rotation failed");
                authority.set_phase(RotationPhase::Failed {
                    error: e.to_string(),
                });
            }
        });
        Ok(())
    }

    async fn rotate(
        &self,
        sync: &SyncRegistry,
        mut snapshots: watch::Receiver<Published>,
        add_root: bool,
    ) -> anyhow::Result<()> {
        let started = mesh_identity::unix_now();
        let deadline = tokio::time::Instant::now() + self.rotation_grace;
        // Phase 1: trust the new root everywhere.
        if add_root {
            self.write().add_root(self.root_ttl)?;
            self.persist_and_publish().await?;
        }
        let bundle = self.bundle_pem();
        tracing::info!(
            grace = ?self.rotation_grace,
            "CA rotation: new root added to the trust bundle; waiting for proxies to ACK it"
        );
        let mut version: Option<(usize, String)> = None;
        loop {
            let published = snapshots.borrow_and_update().clone();
            let snapshot_id = Arc::as_ptr(&published.snapshot) as usize;
            if published.trust_bundle == bundle
                && version.as_ref().is_none_or(|(id, _)| *id != snapshot_id)
            {
                version = bundle_version(&published).map(|v| (snapshot_id, v));
            }
            let pending = match &version {
                Some((_, v)) => pending_proxies(sync, v),
                None => vec!["(snapshot with the new bundle not built yet)".to_string()],
            };
            self.set_phase_quiet(RotationPhase::Distributing {
                started_unix: started,
                deadline_unix: started + self.rotation_grace.as_secs(),
                bundle_version: version.as_ref().map(|(_, v)| v.clone()),
                pending: pending.clone(),
            });
            if pending.is_empty() {
                tracing::info!("CA rotation: every proxy ACKed the new trust bundle");
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    ?pending,
                    "CA rotation: grace period over; signing with the new root although these proxies have not ACKed the new bundle"
                );
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep(POLL) => {},
                _ = snapshots.changed() => {},
            }
        }
        // Phase 2: sign with the new root.
        self.write().activate_newest()?;
        self.persist_and_publish().await?;
        self.serving_refresh.notify_one();
        let drain = self.workload_ttl + self.rotation_grace;
        let activated = mesh_identity::unix_now();
        self.set_phase(RotationPhase::Draining {
            activated_unix: activated,
            drop_at_unix: activated + drain.as_secs(),
        });
        tokio::time::sleep(drain).await;
        // Phase 3: forget the old root.
        self.write().drop_inactive();
        self.persist_and_publish().await?;
        self.set_phase(RotationPhase::Idle {
            last_completed_unix: Some(mesh_identity::unix_now()),
        });
        tracing::info!("CA rotation complete: the old root left the trust bundle");
        Ok(())
    }

    fn set_phase_quiet(&self, phase: RotationPhase) {
        *self.phase.lock().unwrap_or_else(|e| e.into_inner()) = phase;
    }
}

/// The version of the `ROOTCA` secret in a published snapshot.
fn bundle_version(published: &Published) -> Option<String> {
    let node = ProxyNode {
        id: "ca-rotation".into(),
        namespace: "default".into(),
        ..ProxyNode::default()
    };
    ProxyView::new(published.snapshot.clone(), &node)
        .get(ResourceType::Secret, names::TRUST_BUNDLE)
        .map(|r| r.version.clone())
}

/// Node ids of proxies that subscribed to SDS but have not ACKed `version` of the
/// trust bundle. Proxies that never subscribed get the current bundle as their
/// first, so they are not waited for.
pub fn pending_proxies(sync: &SyncRegistry, version: &str) -> Vec<String> {
    sync.list()
        .into_iter()
        .filter(|p| {
            let subscribed = p
                .types
                .get(ResourceType::Secret.short_name())
                .is_some_and(|t| t.status != SyncStatus::NotSent);
            subscribed && p.trust_bundle_version.as_deref() != Some(version)
        })
        .map(|p| p.node_id)
        .collect()
}
