//! The file source: a multi-document YAML file, watched for changes.
//!
//! Polls the file's metadata every [`POLL_INTERVAL`]: cheap for one file, and unlike
//! inotify it follows editors that replace the file by rename and files that are
//! deleted and recreated.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use mesh_model::{Model, ModelOptions};
use tokio::sync::watch;

use super::{RegistryState, unix_now};
use crate::metrics::Metrics;

/// How often the file's metadata is checked.
pub const POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Identifies a version of the file without reading it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
    ctime: i64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
        ctime: m.ctime_nsec() + m.ctime() * 1_000_000_000,
    })
}

/// Reads and parses the mesh file into a model.
pub fn load(path: &Path, options: &ModelOptions) -> anyhow::Result<Model> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read mesh file {}", path.display()))?;
    let objects = mesh_model::parse_documents(&text, &path.display().to_string())?;
    Ok(Model::new(objects, options.clone()))
}

/// Loads `path` once (failing if it is bad: a controller must not start from a
/// broken file) and then watches it, publishing every change.
pub fn start(
    path: PathBuf,
    options: ModelOptions,
    metrics: Arc<Metrics>,
) -> anyhow::Result<watch::Receiver<RegistryState>> {
    let first_stamp = stamp(&path).ok();
    let model = load(&path, &options)?;
    let source = format!("file:{}", path.display());
    metrics.registry_event(&source, true);
    let (tx, rx) = watch::channel(RegistryState::new(source.clone(), Arc::new(model)));
    tokio::spawn(async move {
        let mut last = first_stamp;
        let mut interval = tokio::time::interval(POLL_INTERVAL);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            if tx.is_closed() {
                return;
            }
            let now = stamp(&path).ok();
            if now == last {
                continue;
            }
            last = now;
            let result = load(&path, &options);
            let accepted = result.is_ok();
            metrics.registry_event(&source, accepted);
            tx.send_modify(|state| {
                state.changed_at = Instant::now();
                state.changed_at_unix = unix_now();
                match result {
                    Ok(model) => {
                        tracing::info!(file = %path.display(), "mesh file changed; applying");
                        state.model = Arc::new(model);
                        state.revision += 1;
                        state.last_error = None;
                    }
                    Err(e) => {
                        let msg = format!("{e:#}");
                        tracing::error!(file = %path.display(), error = %msg, "rejected mesh file; keeping the last good state");
                        state.last_error = Some(msg);
                    }
                }
            });
        }
    });
    Ok(rx)
}
