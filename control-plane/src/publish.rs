//! Registry state -> debounced snapshots.
//!
//! Registries change in bursts (a deployment rolls, a file is saved twice); building
//! and pushing once per burst keeps proxies from churning. A change is published
//! after `debounce` of quiet, or at most [`MAX_DELAY_FACTOR`] × `debounce` after the
//! first change of a burst, so a constantly changing registry still converges.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_xds::Snapshot;
use tokio::sync::watch;

use crate::registry::RegistryState;

/// The longest a burst may delay a push, as a multiple of the debounce.
pub const MAX_DELAY_FACTOR: u32 = 10;

/// A snapshot and when the change that produced it was first seen.
#[derive(Debug, Clone)]
pub struct Published {
    /// The resources every proxy's view is taken from.
    pub snapshot: Arc<Snapshot>,
    /// When the registry change behind it happened, for convergence metrics.
    pub changed_at: Instant,
}

/// Builds the first snapshot now and a new one after every burst of changes.
pub fn start(
    mut registry: watch::Receiver<RegistryState>,
    debounce: Duration,
) -> watch::Receiver<Published> {
    let (first, mut built_revision) = {
        let state = registry.borrow_and_update();
        let snapshot = Snapshot::build(state.model.clone(), Arc::from(""), state.revision, None);
        (
            Published {
                snapshot: Arc::new(snapshot),
                changed_at: state.changed_at,
            },
            state.revision,
        )
    };
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        while registry.changed().await.is_ok() {
            let burst_start = Instant::now();
            let deadline = burst_start + debounce * MAX_DELAY_FACTOR;
            // Wait for quiet, bounded by the deadline.
            loop {
                let quiet = tokio::time::sleep(debounce);
                let limit = tokio::time::sleep_until(deadline.into());
                tokio::select! {
                    _ = quiet => break,
                    _ = limit => break,
                    changed = registry.changed() => if changed.is_err() { return },
                }
            }
            let (model, revision, changed_at) = {
                let state = registry.borrow_and_update();
                (state.model.clone(), state.revision, state.changed_at)
            };
            if revision == built_revision {
                continue; // only an error changed; the model is the same
            }
            built_revision = revision;
            let started = Instant::now();
            let previous = tx.borrow().snapshot.clone();
            let snapshot = Snapshot::build(model, Arc::from(""), revision, Some(&previous));
            tracing::info!(
                revision,
                build_ms = started.elapsed().as_secs_f64() * 1e3,
                "built xDS snapshot"
            );
            let published = Published {
                snapshot: Arc::new(snapshot),
                changed_at: changed_at.min(burst_start),
            };
            if tx.send(published).is_err() {
                return;
            }
        }
    });
    rx
}
