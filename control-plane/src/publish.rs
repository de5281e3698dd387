//! Registry state + trust bundle -> debounced snapshots.
//!
//! Registries change in bursts (a deployment rolls, a file is saved twice); building
//! and pushing once per burst keeps proxies from churning. A change is published
//! after `debounce` of quiet, or at most [`MAX_DELAY_FACTOR`] × `debounce` after the
//! first change of a burst, so a constantly changing registry still converges.
//! A trust bundle change (a root rotation step, rare) is built at once.

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
    /// The trust bundle (PEM) the snapshot's `ROOTCA` secret carries, so root
    /// rotation can tell when its bundle is out.
    pub trust_bundle: Arc<str>,
}

/// Builds the first snapshot now and a new one after every burst of registry
/// changes and after every trust bundle change.
pub fn start(
    mut registry: watch::Receiver<RegistryState>,
    mut bundle: watch::Receiver<Arc<str>>,
    debounce: Duration,
) -> watch::Receiver<Published> {
    let mut generation = 1;
    let (first, mut built_revision) = {
        let state = registry.borrow_and_update();
        let trust_bundle = bundle.borrow_and_update().clone();
        let snapshot = Snapshot::build(state.model.clone(), trust_bundle.clone(), generation, None);
        (
            Published {
                snapshot: Arc::new(snapshot),
                changed_at: state.changed_at,
                trust_bundle,
            },
            state.revision,
        )
    };
    let (tx, rx) = watch::channel(first);
    tokio::spawn(async move {
        loop {
            let registry_changed = tokio::select! {
                r = registry.changed() => { if r.is_err() { return } true }
                b = bundle.changed() => { if b.is_err() { return } false }
            };
            let mut changed_at = Instant::now();
            if registry_changed {
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
                changed_at = registry.borrow().changed_at.min(burst_start);
            }
            let (model, revision) = {
                let state = registry.borrow_and_update();
                (state.model.clone(), state.revision)
            };
            let trust_bundle = bundle.borrow_and_update().clone();
            let previous = tx.borrow().clone();
            if revision == built_revision && trust_bundle == previous.trust_bundle {
                continue; // only a registry error changed; the model is the same
            }
            built_revision = revision;
            generation += 1;
            let started = Instant::now();
            let snapshot = Snapshot::build(
                model,
                trust_bundle.clone(),
                generation,
                Some(&previous.snapshot),
            );
            tracing::info!(
                generation,
                registry_revision = revision,
                bundle_changed = trust_bundle != previous.trust_bundle,
                build_ms = started.elapsed().as_secs_f64() * 1e3,
                "built xDS snapshot"
            );
            let published = Published {
                snapshot: Arc::new(snapshot),
                changed_at,
                trust_bundle,
            };
            if tx.send(published).is_err() {
                return;
            }
        }
    });
    rx
}
