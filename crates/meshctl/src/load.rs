//! `meshctl demo-load`: steady traffic for the demo, so the live table has numbers.
//!
//! Runs as an ordinary workload: its requests go through `http_proxy` (its own
//! sidecar), so the mesh sees them exactly as app traffic.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::Semaphore;
use tokio::time::MissedTickBehavior;

use crate::cli::DemoLoadArgs;
use crate::http_client::HttpClient;

/// Running totals, reported periodically.
#[derive(Default, Debug)]
struct Counters {
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Sends GETs to the target at the configured rate until SIGINT or SIGTERM.
pub async fn run(args: DemoLoadArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.rps.is_finite() && args.rps > 0.0,
        "--rps must be a positive number"
    );
    anyhow::ensure!(args.concurrency > 0, "--concurrency must be at least 1");
    let client = HttpClient::from_env().context("bad http_proxy")?;
    let timeout = Duration::from_millis(args.timeout_ms);
    tracing::info!(
        target_url = %args.target, rps = args.rps, concurrency = args.concurrency,
        proxied = client.is_proxied(), "load generator starting"
    );
    let counters = Arc::new(Counters::default());
    let permits = Arc::new(Semaphore::new(args.concurrency));
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / args.rps));
    ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut report = tokio::time::interval(Duration::from_secs(args.report_every.max(1)));
    report.tick().await;
    let shutdown = crate::signals::shutdown();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            reason = &mut shutdown => {
                tracing::info!("stopping on {reason}");
                summary(&counters);
                return Ok(());
            }
            _ = report.tick() => summary(&counters),
            _ = ticks.tick() => {
                let permit = tokio::select! {
                    p = permits.clone().acquire_owned() => p.expect("semaphore is never closed"),
                    reason = &mut shutdown => {
                        tracing::info!("stopping on {reason}");
                        summary(&counters);
                        return Ok(());
                    }
                };
                let (client, counters, url) = (client.clone(), counters.clone(), args.target.clone());
                tokio::spawn(async move {
                    counters.sent.fetch_add(1, Ordering::Relaxed);
                    match client.get(&url, timeout).await {
                        Ok(r) if r.status.is_success() => {
                            counters.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            counters.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(status = %r.status, "request failed");
                        }
                        Err(e) => {
                            counters.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("request failed: {e}");
                        }
                    }
                    drop(permit);
                });
            }
        }
    }
}

fn summary(c: &Counters) {
    tracing::info!(
        sent = c.sent.load(Ordering::Relaxed),
        ok = c.ok.load(Ordering::Relaxed),
        failed = c.failed.load(Ordering::Relaxed),
        "load so far"
    );
}
