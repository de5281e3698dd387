//! Registry sources: where the controller learns what runs.
//!
//! Every source publishes a [`RegistryState`] on a watch channel: the last good model
//! and the last error. A bad update never replaces a good model.

pub mod file;
pub mod kubernetes;

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use mesh_model::Model;
use serde::Serialize;

/// What a registry source currently knows.
#[derive(Debug, Clone, Serialize)]
pub struct RegistryState {
    /// Which source, e.g. `file:/etc/mesh.yaml` or `kubernetes`.
    pub source: String,
    /// The last model that loaded without error.
    pub model: Arc<Model>,
    /// Incremented on every accepted change.
    pub revision: u64,
    /// The last rejected update, if it is newer than the last accepted one.
    pub last_error: Option<String>,
    /// When the last change (accepted or rejected) was seen.
    #[serde(skip)]
    pub changed_at: Instant,
    /// Wall-clock time of `changed_at`, for operators.
    pub changed_at_unix: u64,
}

impl RegistryState {
    /// A state holding `model`, freshly changed.
    pub fn new(source: String, model: Arc<Model>) -> Self {
        RegistryState {
            source,
            model,
            revision: 1,
            last_error: None,
            changed_at: Instant::now(),
            changed_at_unix: unix_now(),
        }
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
