//! A real Prometheus server for tests: the Debian package's binary, started on a
//! free loopback port with a generated config and its own temporary TSDB.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::process::Proc;

/// The Prometheus binary: `$MESH_PROMETHEUS`, else `prometheus` from the Debian
/// package; `None` when neither exists (the caller skips, saying so).
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("MESH_PROMETHEUS") {
        return Some(PathBuf::from(path));
    }
    let path = PathBuf::from("/usr/bin/prometheus");
    path.exists().then_some(path)
}

/// A running Prometheus.
#[derive(Debug)]
pub struct Prometheus {
    /// The process.
    pub proc: Proc,
    /// `http://127.0.0.1:<port>`.
    pub url: String,
}

impl Prometheus {
    /// Starts `binary` with `config` (a `prometheus.yml` in `dir`, whose relative
    /// `file_sd` paths resolve against `dir`), storing its TSDB in `dir/tsdb`, and
    /// waits until it is ready.
    pub async fn start(binary: &Path, config: &Path, dir: &Path) -> Prometheus {
        let addr = crate::free_addr();
        let args = vec![
            format!("--config.file={}", config.display()),
            format!("--storage.tsdb.path={}", dir.join("tsdb").display()),
            format!("--web.listen-address={addr}"),
            "--log.level=warn".into(),
        ];
        let proc = Proc::start("prometheus", binary, &args, dir);
        let url = format!("http://{addr}");
        let ready = format!("{url}/-/ready");
        let log = proc.log.clone();
        crate::eventually(
            &format!("prometheus ready (log {})", log.display()),
            Duration::from_secs(30),
            || {
                let ready = ready.clone();
                async move { crate::http::get_status(&ready).await.filter(|s| *s == 200) }
            },
        )
        .await;
        Prometheus { proc, url }
    }

    /// Evaluates `query` now; the result vector (`data.result`), or the error
    /// Prometheus gave.
    pub async fn query(&self, query: &str) -> Result<Vec<serde_json::Value>, String> {
        let url = format!("{}/api/v1/query?query={}", self.url, encode(query));
        let (status, body) = crate::http::get(&url)
            .await
            .ok_or_else(|| format!("no answer from {url}"))?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| format!("status {status}: {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!("status {status}: {}", v["error"]));
        }
        v["data"]["result"]
            .as_array()
            .cloned()
            .ok_or_else(|| format!("no result array: {body}"))
    }

    /// The value of a single-series query as a number, `None` when empty.
    pub async fn scalar(&self, query: &str) -> Option<f64> {
        let result = self.query(query).await.ok()?;
        result.first()?["value"][1].as_str()?.parse().ok()
    }
}

/// Percent-encodes a query parameter.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
