//! Waiting for a process's `/ready` endpoint, so that dependants start in order.

use std::time::{Duration, Instant};

use crate::http_client::HttpClient;

use super::process;
use super::supervise::{State, Supervised};

/// Why a process never became ready.
#[derive(Debug, thiserror::Error)]
pub enum NotReady {
    /// The deadline passed; `last` is the last answer or error seen.
    #[error("{name} was not ready after {after:?} ({url}: {last}); see {log}{tail}")]
    Timeout {
        /// The process.
        name: String,
        /// The readiness URL.
        url: String,
        /// The time waited.
        after: Duration,
        /// The last status or error.
        last: String,
        /// Its log file.
        log: String,
        /// The log's last lines.
        tail: String,
    },
    /// The process exited for good while we waited.
    #[error("{name} exited ({how}) before it was ready; see {log}{tail}")]
    Exited {
        /// The process.
        name: String,
        /// How it exited.
        how: String,
        /// Its log file.
        log: String,
        /// The log's last lines.
        tail: String,
    },
}

/// Polls `url` every 50 ms until it answers 200, the process exits for good, or
/// `timeout` passes.
pub async fn wait_ready(
    client: &HttpClient,
    url: &str,
    process: &Supervised,
    timeout: Duration,
) -> Result<Duration, NotReady> {
    wait_until(process, url, timeout, || async {
        match client.get(url, Duration::from_millis(500)).await {
            Ok(r) if r.status.is_success() => Ok(()),
            Ok(r) => Err(format!("status {}", r.status)),
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// Polls until `addr` accepts TCP connections: an app with a port is ready to
/// serve once it listens, so its clients start only then.
pub async fn wait_listening(
    addr: std::net::SocketAddr,
    process: &Supervised,
    timeout: Duration,
) -> Result<Duration, NotReady> {
    wait_until(process, &format!("tcp://{addr}"), timeout, || async {
        tokio::net::TcpStream::connect(addr)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    })
    .await
}

async fn wait_until<F, Fut>(
    process: &Supervised,
    what: &str,
    timeout: Duration,
    mut probe: F,
) -> Result<Duration, NotReady>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let start = Instant::now();
    loop {
        if let State::Exited(how) = process.state() {
            return Err(NotReady::Exited {
                name: process.name.clone(),
                how,
                log: process.log.display().to_string(),
                tail: process::log_tail(&process.log, 5),
            });
        }
        let last = match probe().await {
            Ok(()) => return Ok(start.elapsed()),
            Err(e) => e,
        };
        if start.elapsed() >= timeout {
            return Err(NotReady::Timeout {
                name: process.name.clone(),
                url: what.to_string(),
                after: timeout,
                last,
                log: process.log.display().to_string(),
                tail: process::log_tail(&process.log, 5),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
