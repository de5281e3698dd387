//! A Prometheus scrape configuration for the running local mesh, written into the
//! run dir so that `prometheus --config.file=<run dir>/prometheus.yml` scrapes the
//! controller and every sidecar with the labels the Grafana dashboards expect.
//!
//! The config is deploy/prometheus/local.yml as shipped; the targets are file_sd
//! files beside it (Prometheus re-reads them when they change).

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde_json::json;

use super::plan::PlannedWorkload;

/// deploy/prometheus/local.yml: jobs `mesh-controller` and `mesh-proxy`, reading
/// `controller-targets.json` and `proxy-targets.json` from its own directory.
pub const LOCAL_CONFIG: &str = include_str!("../../../../deploy/prometheus/local.yml");

/// The file_sd target groups of the controller's admin address.
pub fn controller_targets(admin: &str) -> serde_json::Value {
    json!([{"targets": [admin], "labels": {}}])
}

/// The file_sd target groups of the sidecars: one per sidecar, labelled with its
/// namespace and workload (the Proxy resources and Workload dashboards select on them).
pub fn proxy_targets(sidecars: &[&PlannedWorkload]) -> serde_json::Value {
    sidecars
        .iter()
        .map(|w| {
            json!({
                "targets": [format!("{}:15000", w.address)],
                "labels": {"namespace": w.namespace, "workload": w.name},
            })
        })
        .collect()
}

/// Writes `prometheus.yml` and both target files into `dir`; returns the config's path.
pub fn write(dir: &Path, admin: &str, sidecars: &[&PlannedWorkload]) -> anyhow::Result<PathBuf> {
    let files = [
        ("prometheus.yml", LOCAL_CONFIG.to_string()),
        (
            "controller-targets.json",
            controller_targets(admin).to_string(),
        ),
        ("proxy-targets.json", proxy_targets(sidecars).to_string()),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(dir.join("prometheus.yml"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_the_target_files_it_is_written_with() {
        assert!(LOCAL_CONFIG.contains("job_name: mesh-controller"));
        assert!(LOCAL_CONFIG.contains("files: [controller-targets.json]"));
        assert!(LOCAL_CONFIG.contains("job_name: mesh-proxy"));
        assert!(LOCAL_CONFIG.contains("files: [proxy-targets.json]"));
        assert_eq!(
            controller_targets("127.0.0.1:15014"),
            json!([{"targets": ["127.0.0.1:15014"], "labels": {}}])
        );
    }
}
